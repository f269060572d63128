//! The engine: sans-IO match core plus the shard loops that drive it.
//!
//! - [`core`]: one match as a state machine (commands in, tick outputs out).
//! - [`replay`]: rebuilding a match from a snapshot and its log, whole or
//!   tick by tick ([`TickReplayer`], for replays).
//! - [`schedule`]: drift-free tick pacing as a pure calculation.
//! - `shard` and `writer`: the async shell. A fixed number of shards each
//!   tick all their matches; each shard's writer persists its ticks in order.
//!
//! [`Engine`] is the handle the rest of the program holds: it creates and
//! restores matches, routes commands to the owning shard through bounded
//! queues, hands out state and event feeds, and shuts everything down
//! cleanly (final snapshots, everything flushed).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use dashmap::DashMap;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub mod core;
mod envelope;
mod ledger;
mod ownership;
pub mod replay;
pub mod schedule;
mod shard;
mod stats;
mod writer;

pub(crate) use self::core::guard as guard_game;
pub use self::core::{CommandOutcome, MatchCore, MatchPolicy, QueueFull, TickOutput};
pub use envelope::{EventEnvelope, ReadError, decode_event, decode_state};
pub use ledger::{InputAcks, InputLedger, InputReply};
pub use ownership::HandedOver;
pub use replay::{Replayed, Replayer, RestoreError, TickReplayer, TickStep};
pub use stats::{EngineStats, ShardStats};

use crate::admin::metrics as names;
use crate::codec;
use crate::game::{Game, MatchSetup, PlayerId, Rejection, Tick, match_seed};
use crate::store::{EventStore, Head, KeyError, MatchKey, SnapshotStore, Store, StoreError};
use shard::{Shard, ShardMsg};

/// Events read from the store per round trip during a restore.
const RESTORE_PAGE: usize = 10_000;

/// Events a match keeps for subscribers that fall behind (allocated up front).
const EVENT_FEED_CAPACITY: usize = 1024;

/// When a client may see a state relative to its events being stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// States go out at once; events are stored within the tick. A crash
    /// loses at most the writes still queued (one tick when the store keeps up).
    #[default]
    Async,
    /// No state goes out before the store acknowledged the events behind it.
    Sync,
}

/// Which events the store keeps once a snapshot covers them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EventRetention {
    /// Keep every event: replays and rebuilds from sequence 0 always work.
    #[default]
    Full,
    /// After each stored snapshot, remove the events below it (see
    /// [`EventStore::trim`]). Restores are unaffected; a rebuild from
    /// sequence 0, or a projection or follower reading below what was
    /// kept, fails with [`StoreError::Trimmed`](crate::store::StoreError).
    TrimBelowSnapshot {
        /// Handlers (projections) whose stored positions hold trimming
        /// back: events they have not processed stay, and a handler that
        /// never ran for a match keeps all of its events.
        keep_for: Vec<String>,
    },
}

/// How the engine runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSettings {
    /// Ticks per second.
    pub tick_hz: u32,
    /// Phases of a tick: each shard spreads its matches over this many
    /// evenly spaced steps per tick period, so their states do not all go
    /// out at the same moment. Every match still ticks `tick_hz` times a
    /// second; 1 ticks them all together. Default 4.
    pub tick_phases: u32,
    /// Number of shard tasks.
    pub shards: usize,
    /// Messages waiting for one shard, at most.
    pub shard_queue: usize,
    /// Ticks of writes a shard may have queued for the store before its
    /// matches pause (the outage buffer).
    pub write_queue_ticks: usize,
    /// Encoded bytes (events and snapshot states) a shard may have queued
    /// for the store before its matches pause, whichever of this and
    /// `write_queue_ticks` comes first. One job larger than this still
    /// goes out when nothing else is queued.
    pub write_queue_bytes: u64,
    /// Per-match limits and snapshot policy.
    pub policy: MatchPolicy,
    /// Sync or async persistence.
    pub durability: Durability,
    /// Whether events below stored snapshots are removed.
    pub retention: EventRetention,
    /// Ownership of matches through leases, for a node of a fleet
    /// ([`LeaseSettings`]); `None` (a single node) writes unfenced.
    pub lease: Option<LeaseSettings>,
}

/// How a node of a fleet owns its matches: it claims each match's lease
/// ([`LeaseStore`](crate::store::LeaseStore)) before hosting it, every
/// write carries the lease's epoch (a write under a lost lease is refused
/// as [`StoreError::Fenced`] and the match stops here), and each stored
/// batch renews the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// This node's id.
    pub node: String,
    /// How long a lease lasts unrenewed.
    pub ttl: std::time::Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            tick_hz: 30,
            tick_phases: 4,
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            shard_queue: 65_536,
            write_queue_ticks: 1_800,
            write_queue_bytes: 256 * 1024 * 1024,
            policy: MatchPolicy::default(),
            durability: Durability::Async,
            retention: EventRetention::Full,
            lease: None,
        }
    }
}

/// The state of a match after a tick, as published to subscribers.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchUpdate<S> {
    /// The tick just completed.
    pub tick: Tick,
    /// The sequence the next event will have.
    pub next_sequence: u64,
    /// The state after that tick.
    pub state: S,
    /// Whether the match has ended (finished, or failed).
    pub over: bool,
    /// Set when the match failed because its game code broke: the reason.
    /// The state is the last good one; the match will not tick again.
    pub failure: Option<Arc<str>>,
    /// When the shard published it: how late a state leaves is measured
    /// from here.
    pub published: std::time::Instant,
}

/// Where a command's outcome goes, with the client's own command number.
#[derive(Debug, Clone)]
pub struct ReplyTo {
    /// The client's reply queue; a full queue loses the reply, never blocks.
    pub tx: mpsc::Sender<CommandReply>,
    /// The client's sequence number for this command.
    pub client_seq: u64,
}

/// Where a command's outcome goes: a reply channel, or (a player input)
/// a ledger that only rejections leave.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// A command answered through its reply queue.
    Command(ReplyTo),
    /// An input acknowledged in its connection's ledger.
    Input(InputReply),
}

impl Reply {
    /// Hands `outcome` of a command of match `root` on. Never waits.
    pub(crate) fn deliver(&self, root: &Arc<str>, outcome: CommandOutcome) {
        match self {
            // A client that does not read its replies loses them; the
            // network layer closes such clients. The tick never waits here.
            Reply::Command(reply) => {
                let _ = reply.tx.try_send(CommandReply {
                    root: root.clone(),
                    client_seq: reply.client_seq,
                    kind: ReplyKind::Command,
                    outcome,
                });
            }
            Reply::Input(input) => input.deliver(root, outcome),
        }
    }
}

/// What a [`CommandReply`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// A command submitted with a [`ReplyTo`]; `client_seq` is its number.
    Command,
    /// A rejected input submitted with an [`InputReply`]; `client_seq` is
    /// its input sequence.
    Input,
}

/// The answer to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandReply {
    /// The match the command was for.
    pub root: Arc<str>,
    /// The client's sequence number for the command.
    pub client_seq: u64,
    /// Whether it answers a command or an input.
    pub kind: ReplyKind,
    /// Accepted (with its events) or rejected (with the reason).
    pub outcome: CommandOutcome,
}

/// A subscription to one match: its latest state and its events in order.
#[derive(Debug)]
pub struct MatchFeed<G: Game> {
    /// The latest published state (`None` until the first tick after subscribing).
    pub updates: watch::Receiver<Option<Arc<MatchUpdate<G::State>>>>,
    /// Every event from now on; a lagging receiver learns how many it missed.
    pub events: broadcast::Receiver<Arc<EventEnvelope<G::Event>>>,
}

/// What [`Engine::restore_all`] did.
#[derive(Debug, Default)]
pub struct RestoreReport {
    /// Matches restored and hosted.
    pub restored: usize,
    /// Events replayed on top of their snapshots, over all of them.
    pub events_replayed: u64,
    /// The matches that could not be restored, with why.
    pub failed: Vec<EngineError>,
    /// Live matches left alone because another node holds their lease.
    pub owned_elsewhere: usize,
}

/// Why an engine call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// No match with this id is hosted here.
    #[error("no match {0:?} on this server")]
    UnknownMatch(String),
    /// A match with this id is already hosted.
    #[error("match {0:?} already exists")]
    MatchExists(String),
    /// The owning shard's queue is full; the command was not queued.
    #[error("the queue of the shard hosting {0:?} is full")]
    QueueFull(String),
    /// The stored match has already ended; it is not hosted again.
    #[error("match {0:?} has ended")]
    MatchOver(String),
    /// The game refused the parameters of a new match.
    #[error("match {root:?} not created: {rejection}")]
    Setup {
        /// The match.
        root: String,
        /// The game's reason.
        rejection: Rejection,
    },

    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The match id is not a valid key part.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored log could not be replayed.
    #[error("cannot restore {key}: {source}")]
    Restore {
        /// The match.
        key: String,
        /// Why.
        source: RestoreError,
    },
}

/// The sending side of a match's state feed, shared by its shard and route.
pub(crate) type UpdateSender<S> = Arc<watch::Sender<Option<Arc<MatchUpdate<S>>>>>;

pub(crate) struct Route<G: Game> {
    shard: usize,
    /// The lease epoch the match is written under (fleets only).
    epoch: Option<u64>,
    updates: UpdateSender<G::State>,
    events: broadcast::Sender<Arc<EventEnvelope<G::Event>>>,
}

struct ShardHandle<G: Game> {
    inbox: mpsc::Sender<ShardMsg<G>>,
    /// Taken by the first `shutdown`.
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// The running engine. Clone the `Arc` to share it.
pub struct Engine<G: Game, S: Store> {
    game: Arc<G>,
    store: S,
    settings: EngineSettings,
    edition: String,
    shards: Vec<ShardHandle<G>>,
    stats: Vec<Arc<ShardStats>>,
    routes: Arc<DashMap<Arc<str>, Route<G>>>,
}

impl<G: Game, S: Store> std::fmt::Debug for Engine<G, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("settings", &self.settings)
            .field("edition", &self.edition)
            .field("matches", &self.routes.len())
            .finish()
    }
}

impl<G: Game, S: Store> Engine<G, S> {
    /// Starts the shards on the current tokio runtime.
    pub fn start(game: G, store: S, settings: EngineSettings, edition: &str) -> Self {
        let game = Arc::new(game);
        let routes = Arc::new(DashMap::new());
        let mut shards = Vec::with_capacity(settings.shards.max(1));
        let mut all_stats = Vec::with_capacity(settings.shards.max(1));
        for index in 0..settings.shards.max(1) {
            let stats = Arc::new(ShardStats::for_shard(index));
            let (inbox_tx, inbox_rx) = mpsc::channel(settings.shard_queue.max(1));
            let (jobs_tx, jobs_rx) = mpsc::channel(settings.write_queue_ticks.max(1));
            // Unbounded, yet at most one failure per match: the writer
            // never waits on a shard that may be waiting for its ack.
            let (failures_tx, failures_rx) = mpsc::unbounded_channel();
            let writer_task = tokio::spawn(writer::run_writer(
                store.clone(),
                jobs_rx,
                failures_tx,
                stats.clone(),
                settings.retention.clone(),
            ));
            let shard = Shard::new(
                game.clone(),
                settings.clone(),
                inbox_rx,
                jobs_tx,
                writer_task,
                failures_rx,
                stats.clone(),
                routes.clone(),
            );
            let task = tokio::spawn(async move {
                tracing::debug!(shard = index, "shard started");
                shard.run().await;
            });
            shards.push(ShardHandle {
                inbox: inbox_tx,
                task: std::sync::Mutex::new(Some(task)),
            });
            all_stats.push(stats);
        }
        Self {
            game,
            store,
            settings,
            edition: edition.to_owned(),
            shards,
            stats: all_stats,
            routes,
        }
    }

    /// The game this engine hosts.
    pub fn game(&self) -> &G {
        &self.game
    }

    /// The store this engine writes to.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The edition (timeline) the engine stores its matches under.
    pub fn edition(&self) -> &str {
        &self.edition
    }

    /// The settings the engine runs with.
    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// The key of match `root` in this engine's domain and edition.
    pub fn key(&self, root: &str) -> Result<MatchKey, KeyError> {
        MatchKey::new(self.game.domain(), &self.edition, root)
    }

    /// Whether match `root` is hosted here.
    pub fn is_hosted(&self, root: &str) -> bool {
        self.routes.contains_key(root)
    }

    /// The ids of the matches hosted now.
    pub fn hosted_matches(&self) -> Vec<String> {
        self.routes.iter().map(|r| r.key().to_string()).collect()
    }

    /// Creates a new match with the game's default parameters and starts
    /// ticking it.
    pub async fn create_match(&self, root: &str) -> Result<(), EngineError> {
        self.create_match_with(root, G::Params::default()).await
    }

    /// Creates a new match with `params` and starts ticking it. The game's
    /// [`setup`](Game::setup) runs first (refused parameters create
    /// nothing); the parameters and the seed are stored with the match so
    /// restores and replays rebuild the same match.
    pub async fn create_match_with(
        &self,
        root: &str,
        params: G::Params,
    ) -> Result<(), EngineError> {
        let key = self.key(root)?;
        if self.is_hosted(root) {
            return Err(EngineError::MatchExists(root.to_owned()));
        }
        let setup = MatchSetup {
            params,
            seed: match_seed(key.domain(), key.root()),
        };
        let core = MatchCore::new(&*self.game, key.clone(), self.settings.policy, &setup).map_err(
            |rejection| EngineError::Setup {
                root: root.to_owned(),
                rejection,
            },
        )?;
        // The lease first: another node's takeover scan must never find the
        // new match without an owner.
        let lease = self.claim(&key).await?;
        let created = self.store.create(&key, core.setup()).await;
        if let Err(error) = created {
            self.give_up(&key, lease).await;
            return Err(match error {
                StoreError::Conflict { .. } => EngineError::MatchExists(root.to_owned()),
                other => EngineError::Store(other),
            });
        }
        self.host(core, lease.map(|l| l.epoch)).await?;
        metrics::counter!(names::MATCHES_CREATED).increment(1);
        Ok(())
    }

    /// Loads match `root` from the store (latest snapshot plus the events
    /// after it, stepped up to the stored head tick) and starts ticking it.
    pub async fn restore_match(&self, root: &str) -> Result<Replayed<G::State>, EngineError> {
        let key = self.key(root)?;
        if self.is_hosted(root) {
            return Err(EngineError::MatchExists(root.to_owned()));
        }
        // Claimed before reading: the previous owner's writes are fenced
        // from here on, so the log read below is the whole of it.
        let lease = self.claim(&key).await?;
        let loaded = async {
            let replayed = restore(&*self.game, &self.store, &key).await?;
            if self.game.is_over(&replayed.state) {
                return Err(EngineError::MatchOver(root.to_owned()));
            }
            let setup = self.store.load_setup(&key).await?.unwrap_or_default();
            Ok((replayed, setup))
        }
        .await;
        let (replayed, setup) = match loaded {
            Ok(loaded) => loaded,
            Err(error) => {
                self.give_up(&key, lease).await;
                return Err(error);
            }
        };
        let core = MatchCore::restored(
            &*self.game,
            key,
            self.settings.policy,
            replayed.clone(),
            setup.into(),
        );
        self.host(core, lease.map(|l| l.epoch)).await?;
        metrics::counter!(names::MATCHES_RESTORED).increment(1);
        Ok(replayed)
    }

    /// Restores every live match of this domain and edition that is not
    /// hosted yet (with leases: that no other node owns; those are counted
    /// in [`RestoreReport::owned_elsewhere`]).
    pub async fn restore_all(&self) -> Result<RestoreReport, EngineError> {
        let keys = self
            .store
            .live_matches(self.game.domain(), &self.edition)
            .await?;
        let mut report = RestoreReport::default();
        for key in keys {
            if self.is_hosted(key.root()) {
                continue;
            }
            match self.restore_match(key.root()).await {
                Ok(replayed) => {
                    report.restored += 1;
                    report.events_replayed += replayed.events_replayed;
                }
                Err(EngineError::Store(StoreError::Owned { .. })) => report.owned_elsewhere += 1,
                Err(e) => {
                    tracing::error!(key = %key, error = %e, "match not restored");
                    report.failed.push(e);
                }
            }
        }
        Ok(report)
    }

    async fn host(&self, core: shard::Core<G>, epoch: Option<u64>) -> Result<(), EngineError> {
        let root: Arc<str> = core.key().root().into();
        let shard_index = (0..self.shards.len())
            .min_by_key(|&i| self.stats[i].matches.load(Relaxed))
            .ok_or(EngineError::ShuttingDown)?;
        let shard = &self.shards[shard_index];
        let (updates, _) = watch::channel(None);
        let updates = Arc::new(updates);
        // 1024 events is seconds of play for a game like the arena; a subscriber
        // further behind learns how many it missed and repairs from the store.
        let (events, _) = broadcast::channel(EVENT_FEED_CAPACITY);
        match self.routes.entry(root.clone()) {
            dashmap::Entry::Occupied(_) => return Err(EngineError::MatchExists(root.to_string())),
            dashmap::Entry::Vacant(slot) => {
                slot.insert(Route {
                    shard: shard_index,
                    epoch,
                    updates: updates.clone(),
                    events: events.clone(),
                });
            }
        }
        // Counted before the shard sees it, so that a burst of creations spreads out.
        self.stats[shard_index].matches.fetch_add(1, Relaxed);
        let key = core.key().clone();
        let msg = ShardMsg::Host {
            core: Box::new(core),
            updates,
            events,
            epoch,
        };
        if shard.inbox.send(msg).await.is_err() {
            self.stats[shard_index].matches.fetch_sub(1, Relaxed);
            self.routes.remove(&root);
            self.give_up(&key, epoch.map(|epoch| self.lease_of(epoch)))
                .await;
            return Err(EngineError::ShuttingDown);
        }
        Ok(())
    }

    /// Queues `command` from `player` for the next tick of match `root`.
    ///
    /// Never waits: a full shard queue is [`EngineError::QueueFull`]. The
    /// outcome (accepted or rejected with a reason) goes to `reply`.
    pub fn submit(
        &self,
        root: &str,
        player: PlayerId,
        command: G::Command,
        reply: Option<ReplyTo>,
    ) -> Result<(), EngineError> {
        self.route_command(root, player, command, reply.map(Reply::Command))
    }

    /// Queues a player input for the next tick of match `root`, like
    /// [`Engine::submit`], but acknowledged without waking anyone: when
    /// applied it is only recorded in `reply.ledger`; a rejection is also
    /// counted there and sent to `reply.tx`.
    pub fn submit_input(
        &self,
        root: &str,
        player: PlayerId,
        command: G::Command,
        reply: InputReply,
    ) -> Result<(), EngineError> {
        self.route_command(root, player, command, Some(Reply::Input(reply)))
    }

    fn route_command(
        &self,
        root: &str,
        player: PlayerId,
        command: G::Command,
        reply: Option<Reply>,
    ) -> Result<(), EngineError> {
        let (root, shard) = {
            let route = self
                .routes
                .get(root)
                .ok_or_else(|| EngineError::UnknownMatch(root.to_owned()))?;
            (route.key().clone(), route.shard)
        };
        let msg = ShardMsg::Command {
            root: root.clone(),
            player,
            command,
            reply,
        };
        self.shards[shard].inbox.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                self.stats[shard].dropped.fetch_add(1, Relaxed);
                metrics::counter!(names::COMMANDS_REJECTED, "reason" => names::rejected::QUEUE_FULL).increment(1);
                EngineError::QueueFull(root.to_string())
            }
            mpsc::error::TrySendError::Closed(_) => EngineError::ShuttingDown,
        })
    }

    /// Fails match `root` on its next tick with `reason` (game code that
    /// broke outside the tick, e.g. the view sent to a client): it ends
    /// with that reason recorded, and its subscribers are told.
    pub fn fail_match(&self, root: &str, reason: String) -> Result<(), EngineError> {
        let (root, shard) = {
            let route = self
                .routes
                .get(root)
                .ok_or_else(|| EngineError::UnknownMatch(root.to_owned()))?;
            (route.key().clone(), route.shard)
        };
        self.shards[shard]
            .inbox
            .try_send(ShardMsg::Fail { root, reason })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(msg) => match msg {
                    ShardMsg::Fail { root, .. } => EngineError::QueueFull(root.to_string()),
                    _ => EngineError::ShuttingDown,
                },
                mpsc::error::TrySendError::Closed(_) => EngineError::ShuttingDown,
            })
    }

    /// Follows match `root`: its state after every tick and its events.
    pub fn subscribe(&self, root: &str) -> Result<MatchFeed<G>, EngineError> {
        let route = self
            .routes
            .get(root)
            .ok_or_else(|| EngineError::UnknownMatch(root.to_owned()))?;
        Ok(MatchFeed {
            updates: route.updates.subscribe(),
            events: route.events.subscribe(),
        })
    }

    /// Each shard's own counters, in shard order.
    pub(crate) fn shard_stats(&self) -> &[Arc<ShardStats>] {
        &self.stats
    }

    /// Counters summed over all shards.
    pub fn stats(&self) -> EngineStats {
        EngineStats::sum(self.stats.iter().map(|s| &**s))
    }

    /// Stops every shard after its current tick: each takes a final
    /// snapshot of its matches and flushes all writes before this returns.
    /// Later calls return at once; [`Engine::stats`] stays readable.
    pub async fn shutdown(&self) {
        let mut waits = Vec::new();
        for shard in &self.shards {
            let (done, wait) = oneshot::channel();
            if shard.inbox.send(ShardMsg::Shutdown { done }).await.is_ok() {
                waits.push(wait);
            }
        }
        for wait in waits {
            let _ = wait.await;
        }
        for shard in &self.shards {
            let task = shard.task.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(task) = task {
                let _ = task.await;
            }
        }
    }

    /// [`Engine::shutdown`], logging every `every` that writes are still
    /// waiting for the store (a store that is down keeps the flush waiting,
    /// retrying with backoff) with the backlog and failed attempts so far.
    pub async fn shutdown_reporting(&self, every: std::time::Duration) {
        let shutdown = self.shutdown();
        tokio::pin!(shutdown);
        let mut report = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = report.tick() => {
                    let stats = self.stats();
                    tracing::warn!(
                        backlog_jobs = stats.backlog_jobs,
                        backlog_bytes = stats.backlog_bytes,
                        append_failures = stats.append_failures,
                        persisted_events = stats.persisted_events,
                        "still flushing writes to the store"
                    );
                }
            }
        }
    }
}

/// Rebuilds match `key` from its latest snapshot and the events after it,
/// stepped up to the stored head tick. The snapshot's bytes are checked
/// against its hash first.
pub async fn restore<G: Game, S: EventStore + SnapshotStore>(
    game: &G,
    store: &S,
    key: &MatchKey,
) -> Result<Replayed<G::State>, EngineError> {
    let started = std::time::Instant::now();
    let head = stored_head(store, key).await?;
    let replayer = match store.load_snapshot(key).await? {
        Some(snapshot) => Replayer::from_snapshot(game, &snapshot),
        None => Replayer::from_start(game, &load_setup::<G, S>(store, key).await?),
    };
    let replayer = replayer.map_err(|source| EngineError::Restore {
        key: key.to_string(),
        source,
    })?;
    let loaded = std::time::Instant::now();
    metrics::histogram!(names::RESTORE_DURATION, "phase" => "snapshot_read")
        .record((loaded - started).as_secs_f64());
    let replayed = replay_rest(store, key, replayer, head.tick).await?;
    metrics::histogram!(names::RESTORE_DURATION, "phase" => "tail_replay")
        .record(loaded.elapsed().as_secs_f64());
    metrics::counter!(names::RESTORE_EVENTS_REPLAYED).increment(replayed.events_replayed);
    Ok(replayed)
}

/// Rebuilds match `key` from sequence 0, ignoring snapshots for the start,
/// up to the stored head tick: the independent check of a restore. When
/// the replay reaches the stored snapshot's tick, its state must hash to
/// the snapshot's hash, else [`RestoreError::Diverged`] names that tick.
pub async fn rebuild_from_start<G: Game, S: EventStore + SnapshotStore>(
    game: &G,
    store: &S,
    key: &MatchKey,
) -> Result<Replayed<G::State>, EngineError> {
    let head = stored_head(store, key).await?;
    let mut replayer =
        Replayer::from_start(game, &load_setup::<G, S>(store, key).await?).map_err(|source| {
            EngineError::Restore {
                key: key.to_string(),
                source,
            }
        })?;
    if let Some(snapshot) = store.load_snapshot(key).await? {
        replayer.check_against(&snapshot);
    }
    replay_rest(store, key, replayer, head.tick).await
}

/// The setup match `key` was created with: its stored parameters and seed
/// (a match stored without them gets the default parameters and the seed
/// of its key).
pub async fn load_setup<G: Game, S: EventStore>(
    store: &S,
    key: &MatchKey,
) -> Result<MatchSetup<G::Params>, EngineError> {
    let bytes = store
        .load_setup(key)
        .await?
        .ok_or_else(|| EngineError::UnknownMatch(key.root().to_owned()))?;
    if bytes.is_empty() {
        return Ok(MatchSetup {
            params: G::Params::default(),
            seed: match_seed(key.domain(), key.root()),
        });
    }
    codec::decode(&bytes).map_err(|e| {
        EngineError::Store(StoreError::Corrupt {
            key: key.meta_key(),
            reason: format!("stored setup does not decode: {e}"),
        })
    })
}

async fn stored_head<S: EventStore>(store: &S, key: &MatchKey) -> Result<Head, EngineError> {
    store
        .head(key)
        .await?
        .ok_or_else(|| EngineError::UnknownMatch(key.root().to_owned()))
}

async fn replay_rest<G: Game, S: EventStore>(
    store: &S,
    key: &MatchKey,
    mut replayer: Replayer<'_, G>,
    head_tick: Tick,
) -> Result<Replayed<G::State>, EngineError> {
    let restore_error = |source| EngineError::Restore {
        key: key.to_string(),
        source,
    };
    loop {
        let page = store
            .read(key, replayer.next_sequence(), RESTORE_PAGE)
            .await?;
        for record in &page {
            replayer.apply(record).map_err(restore_error)?;
        }
        if page.len() < RESTORE_PAGE {
            break;
        }
    }
    replayer.finish(head_tick).map_err(restore_error)
}
