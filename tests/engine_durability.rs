//! Durability against a store that fails or is slow: async states keep
//! flowing through an outage and nothing is lost after it; a full write
//! buffer pauses matches with a reason and they resume; sync durability
//! publishes no state before the store acknowledged it.
//!
//! The write buffer is bounded in ticks and in bytes. A writer task that
//! dies (a store that panics) pauses every match with the reason, never
//! passes for success.
//!
//! The store is the memory store behind a switch (down: every write is
//! `Unavailable`), a gate (closed: appends wait) and a fault (appends
//! panic). Tokio's clock is paused; tests await updates and replies, never
//! sleep.

mod engine_support;

use engine_support::{Update, update_at};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tickforge::arena::bot::Bot;
use tickforge::arena::{Arena, ArenaCommand, ArenaEvent, ArenaState, Dir};
use tickforge::codec;
use tickforge::engine::{
    self, CommandOutcome, CommandReply, Durability, Engine, EngineSettings, EventEnvelope,
    EventRetention, MatchFeed, MatchPolicy, ReplyTo,
};
use tickforge::game::PlayerId;
use tickforge::store::{
    AppendBatch, EventStore, Head, Lease, LeaseStore, MatchKey, MemoryStore, NodeDirectory,
    NodeInfo, PositionStore, RecordedEvent, Snapshot, SnapshotStore, StoreError, Trimmed,
};
use tokio::sync::{broadcast, mpsc, watch};

/// The memory store behind an outage switch and an append gate; its data
/// can be swapped for what a restarted server would hold.
#[derive(Debug, Clone)]
struct FlakyStore {
    data: Arc<Mutex<MemoryStore>>,
    down: Arc<AtomicBool>,
    gate: Arc<watch::Sender<bool>>,
    /// Appends panic (a bug in a store): the writer task dies.
    panics: Arc<AtomicBool>,
    /// Snapshot writes fail as unavailable (appends still pass), counted
    /// in `snapshots_refused`: a store lost between the two.
    snapshots_down: Arc<AtomicBool>,
    snapshots_refused: Arc<AtomicU64>,
}

impl FlakyStore {
    fn new() -> Self {
        Self {
            data: Arc::new(Mutex::new(MemoryStore::new())),
            down: Arc::new(AtomicBool::new(false)),
            gate: Arc::new(watch::channel(true).0),
            panics: Arc::new(AtomicBool::new(false)),
            snapshots_down: Arc::new(AtomicBool::new(false)),
            snapshots_refused: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The data now (clones of a memory store share it).
    fn inner(&self) -> MemoryStore {
        self.data.lock().unwrap().clone()
    }

    /// A crash that loses acknowledged writes: from now on the store holds
    /// only the first `keep` events of match `key` (no snapshot), or, with
    /// `None`, nothing at all.
    async fn crash_keeping(&self, key: &MatchKey, keep: Option<u64>) {
        let old = self.inner();
        let fresh = MemoryStore::new();
        if let Some(keep) = keep {
            let events = old.read(key, 0, keep as usize).await.unwrap();
            assert_eq!(events.len() as u64, keep);
            fresh.create(key, &[]).await.unwrap();
            let batch = AppendBatch {
                key: key.clone(),
                first_sequence: 0,
                head_tick: events.last().map_or(0, |e| e.tick),
                events,
                epoch: None,
                renew_lease: None,
            };
            fresh
                .append(&[batch])
                .await
                .unwrap()
                .pop()
                .unwrap()
                .unwrap();
        }
        *self.data.lock().unwrap() = fresh;
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, SeqCst);
    }

    fn set_gate_open(&self, open: bool) {
        self.gate.send_replace(open);
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(SeqCst) {
            return Err(StoreError::Unavailable("switched off by the test".into()));
        }
        Ok(())
    }
}

impl EventStore for FlakyStore {
    async fn append(
        &self,
        batches: &[AppendBatch],
    ) -> Result<Vec<Result<Head, StoreError>>, StoreError> {
        let mut open = self.gate.subscribe();
        let _ = open.wait_for(|open| *open).await;
        assert!(
            !self.panics.load(SeqCst),
            "a store bug (injected by the test)"
        );
        self.check()?;
        self.inner().append(batches).await
    }

    async fn read(
        &self,
        key: &MatchKey,
        from: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner().read(key, from, limit).await
    }

    async fn head(&self, key: &MatchKey) -> Result<Option<Head>, StoreError> {
        self.inner().head(key).await
    }

    async fn create(&self, key: &MatchKey, setup: &[u8]) -> Result<(), StoreError> {
        self.check()?;
        self.inner().create(key, setup).await
    }

    async fn load_setup(&self, key: &MatchKey) -> Result<Option<Vec<u8>>, StoreError> {
        self.check()?;
        self.inner().load_setup(key).await
    }

    async fn finish(&self, key: &MatchKey) -> Result<(), StoreError> {
        self.check()?;
        self.inner().finish(key).await
    }

    async fn fail(&self, key: &MatchKey, reason: &str) -> Result<(), StoreError> {
        self.check()?;
        self.inner().fail(key, reason).await
    }

    async fn failure(&self, key: &MatchKey) -> Result<Option<String>, StoreError> {
        self.check()?;
        self.inner().failure(key).await
    }

    async fn live_matches(&self, domain: &str, edition: &str) -> Result<Vec<MatchKey>, StoreError> {
        self.inner().live_matches(domain, edition).await
    }

    async fn trim_fenced(
        &self,
        key: &MatchKey,
        below: u64,
        keep_for: &[String],
        epoch: Option<u64>,
    ) -> Result<Trimmed, StoreError> {
        self.check()?;
        self.inner().trim_fenced(key, below, keep_for, epoch).await
    }
}

impl SnapshotStore for FlakyStore {
    async fn save_fenced_snapshot(
        &self,
        key: &MatchKey,
        snapshot: &Snapshot,
        epoch: Option<u64>,
    ) -> Result<bool, StoreError> {
        self.check()?;
        if self.snapshots_down.load(SeqCst) {
            self.snapshots_refused.fetch_add(1, SeqCst);
            return Err(StoreError::Unavailable(
                "snapshots switched off by the test".into(),
            ));
        }
        self.inner()
            .save_fenced_snapshot(key, snapshot, epoch)
            .await
    }

    async fn load_snapshot(&self, key: &MatchKey) -> Result<Option<Snapshot>, StoreError> {
        self.inner().load_snapshot(key).await
    }
}

impl PositionStore for FlakyStore {
    async fn load_position(&self, handler: &str, key: &MatchKey) -> Result<u64, StoreError> {
        self.inner().load_position(handler, key).await
    }

    async fn advance_position(
        &self,
        handler: &str,
        key: &MatchKey,
        to: u64,
    ) -> Result<u64, StoreError> {
        self.check()?;
        self.inner().advance_position(handler, key, to).await
    }
}

impl LeaseStore for FlakyStore {
    async fn claim(&self, key: &MatchKey, node: &str, ttl: Duration) -> Result<Lease, StoreError> {
        self.inner().claim(key, node, ttl).await
    }

    async fn renew(
        &self,
        key: &MatchKey,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        self.inner().renew(key, lease, ttl).await
    }

    async fn release(&self, key: &MatchKey, lease: &Lease) -> Result<(), StoreError> {
        self.inner().release(key, lease).await
    }

    async fn transfer(
        &self,
        key: &MatchKey,
        lease: &Lease,
        to: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        self.inner().transfer(key, lease, to, ttl).await
    }

    async fn lease(&self, key: &MatchKey) -> Result<Option<Lease>, StoreError> {
        self.inner().lease(key).await
    }
}

impl NodeDirectory for FlakyStore {
    async fn register(
        &self,
        domain: &str,
        edition: &str,
        node: &NodeInfo,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.inner().register(domain, edition, node, ttl).await
    }

    async fn nodes(&self, domain: &str, edition: &str) -> Result<Vec<NodeInfo>, StoreError> {
        self.inner().nodes(domain, edition).await
    }

    async fn deregister(
        &self,
        domain: &str,
        edition: &str,
        node_id: &str,
    ) -> Result<bool, StoreError> {
        self.inner().deregister(domain, edition, node_id).await
    }
}

type Events = Vec<Arc<EventEnvelope<ArenaEvent>>>;

const ROOT: &str = "m";

fn key() -> MatchKey {
    MatchKey::new("arena", "main", ROOT).unwrap()
}

fn bytes(state: &ArenaState) -> Vec<u8> {
    codec::encode(state).unwrap()
}

fn settings(durability: Durability, write_queue_ticks: usize) -> EngineSettings {
    EngineSettings {
        tick_hz: 30,
        shards: 1,
        write_queue_ticks,
        durability,
        policy: MatchPolicy {
            max_pending: 1024,
            snapshot_every_ticks: 5,
        },
        ..EngineSettings::default()
    }
}

fn drain_events(feed: &mut MatchFeed<Arena>, into: &mut Events) {
    loop {
        match feed.events.try_recv() {
            Ok(event) => {
                assert_eq!(event.sequence, into.len() as u64, "feed out of order");
                into.push(event);
            }
            Err(broadcast::error::TryRecvError::Lagged(n)) => panic!("feed lagged by {n}"),
            Err(_) => return,
        }
    }
}

/// One round of the bots' commands against the state they last saw.
fn play(engine: &Engine<Arena, FlakyStore>, bots: &mut [Bot], state: &ArenaState) {
    for bot in bots {
        if let Some(command) = bot.next_command(engine.game(), state) {
            engine.submit(ROOT, bot.player(), command, None).unwrap();
        }
    }
}

/// After shutdown: the store holds exactly the events the feed published,
/// and restoring gives exactly the last published state.
async fn assert_stored_as_published(store: &FlakyStore, events: &Events, last: &Update) {
    let key = key();
    let stored = store.inner().read(&key, 0, usize::MAX).await.unwrap();
    assert_eq!(stored.len(), events.len(), "stored events");
    for (record, event) in stored.iter().zip(events) {
        assert_eq!(record.sequence, event.sequence);
        assert_eq!(record.payload, codec::encode(&**event).unwrap());
    }
    let head = store.inner().head(&key).await.unwrap().unwrap();
    assert_eq!(
        (head.next_sequence, head.tick),
        (last.next_sequence, last.tick)
    );
    let restored = engine::restore(&Arena::default(), &store.inner(), &key)
        .await
        .unwrap();
    assert_eq!(bytes(&restored.state), bytes(&last.state));
    assert_eq!(restored.next_sequence, last.next_sequence);
}

async fn start(
    settings: EngineSettings,
) -> (
    Engine<Arena, FlakyStore>,
    FlakyStore,
    MatchFeed<Arena>,
    Vec<Bot>,
) {
    let store = FlakyStore::new();
    let engine = Engine::start(Arena::default(), store.clone(), settings, "main");
    engine.create_match(ROOT).await.unwrap();
    let feed = engine.subscribe(ROOT).unwrap();
    let bots = (1..=3).map(|p| Bot::new(PlayerId(p), p.into())).collect();
    (engine, store, feed, bots)
}

/// Async durability: while the store is down, states still go out every
/// tick and the writer retries; once it is back, every event reaches it.
#[tokio::test(start_paused = true)]
async fn an_outage_delays_writes_but_loses_nothing() {
    let (engine, store, mut feed, mut bots) = start(settings(Durability::Async, 1800)).await;
    let mut events = Events::new();
    let mut state = tickforge::arena::ArenaState::default();
    let mut last = None;
    for round in 0..60 {
        match round {
            10 => store.set_down(true),
            40 => store.set_down(false),
            _ => {}
        }
        play(&engine, &mut bots, &state);
        let update = update_at(&mut feed, round + 1).await;
        assert_eq!(update.tick, round + 1, "states keep flowing");
        state = update.state.clone();
        drain_events(&mut feed, &mut events);
        if round == 39 {
            let head = store.inner().head(&key()).await.unwrap().unwrap();
            assert!(head.tick <= 11, "nothing stored during the outage");
            assert!(engine.stats().append_failures > 0);
        }
        last = Some(update);
    }
    let last = last.unwrap();
    assert!(last.next_sequence > 30, "the bots played");
    // The writer catches up on its own (its backoff is at most a second).
    let mut tick = last.tick;
    loop {
        let head = store.inner().head(&key()).await.unwrap().unwrap();
        if head.tick >= last.tick {
            break;
        }
        tick += 1;
        assert!(tick < last.tick + 90, "the writer did not catch up");
        update_at(&mut feed, tick).await;
    }
    engine.shutdown().await;
    drain_events(&mut feed, &mut events);
    let last = feed.updates.borrow().clone().unwrap();
    assert_stored_as_published(&store, &events, &last).await;
}

async fn send_and_wait(
    engine: &Engine<Arena, FlakyStore>,
    command: ArenaCommand,
    tx: &mpsc::Sender<CommandReply>,
    rx: &mut mpsc::Receiver<CommandReply>,
) -> CommandOutcome {
    let reply = Some(ReplyTo {
        tx: tx.clone(),
        client_seq: 0,
    });
    engine.submit(ROOT, PlayerId(1), command, reply).unwrap();
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("a reply within 60 s")
        .expect("reply channel open")
        .outcome
}

/// A store down for longer than the write buffer holds pauses the shard's
/// matches: commands are refused with the reason and no state goes out.
/// When the store returns, the buffer drains, the matches resume, and the
/// log has no gap.
#[tokio::test(start_paused = true)]
async fn a_full_write_buffer_pauses_matches_until_the_store_returns() {
    let (engine, store, mut feed, _) = start(settings(Durability::Async, 2)).await;
    let (tx, mut rx) = mpsc::channel(16);
    let join = ArenaCommand::Join { name: "ada".into() };
    let mut events = Events::new();
    assert!(matches!(
        send_and_wait(&engine, join, &tx, &mut rx).await,
        CommandOutcome::Accepted { .. }
    ));
    store.set_down(true);
    let paused = "match paused: the store is unavailable and the write buffer is full";
    let mut accepted_while_down = 0;
    let refusal = loop {
        let turn = ArenaCommand::Turn(Dir::ALL[accepted_while_down % 4]);
        match send_and_wait(&engine, turn, &tx, &mut rx).await {
            CommandOutcome::Accepted { .. } => accepted_while_down += 1,
            CommandOutcome::Rejected(rejection) => break rejection,
        }
        assert!(accepted_while_down < 50, "the match never paused");
        drain_events(&mut feed, &mut events);
    };
    assert_eq!(refusal.reason, paused);
    // The writer holds one job and its queue two more; the shard one: a
    // few ticks' worth, then the pause.
    assert!(
        (2..=6).contains(&accepted_while_down),
        "{accepted_while_down}"
    );
    let frozen = feed.updates.borrow().clone().unwrap();
    // Time passes; the paused match publishes nothing and refuses commands.
    tokio::time::advance(Duration::from_secs(2)).await;
    let outcome = send_and_wait(&engine, ArenaCommand::Fire, &tx, &mut rx).await;
    assert_eq!(outcome, CommandOutcome::Rejected(refusal.clone()));
    assert_eq!(feed.updates.borrow().as_ref().unwrap().tick, frozen.tick);

    store.set_down(false);
    let mut tries = 0;
    let first_sequence = loop {
        // Let the writer's backoff run out, a tick at a time (a burst of
        // catch-up ticks would refill a two-job buffer at once), then try.
        tokio::time::advance(Duration::from_secs(1) / 30).await;
        let outcome = send_and_wait(&engine, ArenaCommand::Turn(Dir::North), &tx, &mut rx).await;
        if let CommandOutcome::Accepted { first_sequence, .. } = outcome {
            break first_sequence;
        }
        assert_eq!(outcome, CommandOutcome::Rejected(refusal.clone()));
        tries += 1;
        assert!(tries < 300, "the match never resumed");
    };
    // The log goes on exactly where it paused.
    assert_eq!(first_sequence, frozen.next_sequence);
    let resumed = update_at(&mut feed, frozen.tick + 1).await;
    assert!(resumed.tick > frozen.tick);
    drain_events(&mut feed, &mut events);
    engine.shutdown().await;
    drain_events(&mut feed, &mut events);
    let last = feed.updates.borrow().clone().unwrap();
    assert_eq!(last.next_sequence, 2 + accepted_while_down as u64);
    assert_stored_as_published(&store, &events, &last).await;
}

/// The write buffer is bounded in bytes too: with room for 1,800 ticks
/// but only 300 bytes, an outage pauses the match after a few ticks of
/// events; the held bytes show in the stats; the match resumes when the
/// store returns, with no gap.
#[tokio::test(start_paused = true)]
async fn a_write_buffer_full_in_bytes_pauses_matches_until_the_store_returns() {
    let settings = EngineSettings {
        write_queue_bytes: 300,
        ..settings(Durability::Async, 1800)
    };
    let (engine, store, mut feed, _) = start(settings).await;
    let (tx, mut rx) = mpsc::channel(16);
    let join = ArenaCommand::Join { name: "ada".into() };
    let mut events = Events::new();
    assert!(matches!(
        send_and_wait(&engine, join, &tx, &mut rx).await,
        CommandOutcome::Accepted { .. }
    ));
    store.set_down(true);
    let mut accepted_while_down = 0;
    let refusal = loop {
        let turn = ArenaCommand::Turn(Dir::ALL[accepted_while_down % 4]);
        match send_and_wait(&engine, turn, &tx, &mut rx).await {
            CommandOutcome::Accepted { .. } => accepted_while_down += 1,
            CommandOutcome::Rejected(rejection) => break rejection,
        }
        assert!(accepted_while_down < 100, "the match never paused");
        drain_events(&mut feed, &mut events);
    };
    assert_eq!(
        refusal.reason,
        "match paused: the store is unavailable and the write buffer is full"
    );
    let stats = engine.stats();
    assert!(stats.backlog_bytes > 0, "{stats:?}");
    // Far below the 1,800 ticks the queue has room for.
    assert!(stats.backlog_jobs < 100, "{stats:?}");
    let frozen = feed.updates.borrow().clone().unwrap();

    store.set_down(false);
    let mut tries = 0;
    let first_sequence = loop {
        tokio::time::advance(Duration::from_secs(1) / 30).await;
        let outcome = send_and_wait(&engine, ArenaCommand::Turn(Dir::North), &tx, &mut rx).await;
        if let CommandOutcome::Accepted { first_sequence, .. } = outcome {
            break first_sequence;
        }
        assert_eq!(outcome, CommandOutcome::Rejected(refusal.clone()));
        tries += 1;
        assert!(tries < 300, "the match never resumed");
    };
    assert_eq!(first_sequence, frozen.next_sequence);
    engine.shutdown().await;
    drain_events(&mut feed, &mut events);
    assert_eq!(engine.stats().backlog_bytes, 0, "everything written");
    let last = feed.updates.borrow().clone().unwrap();
    assert_stored_as_published(&store, &events, &last).await;
}

/// A writer task that dies (the store panicked) is an error: in sync
/// durability the tick it was writing is not published, every match
/// pauses with the reason, the stats count a dead writer, and shutdown
/// still completes.
#[tokio::test(start_paused = true)]
async fn a_dead_writer_pauses_every_match() {
    let (engine, store, mut feed, _) = start(settings(Durability::Sync, 1800)).await;
    let (tx, mut rx) = mpsc::channel(16);
    let join = ArenaCommand::Join { name: "ada".into() };
    assert!(matches!(
        send_and_wait(&engine, join, &tx, &mut rx).await,
        CommandOutcome::Accepted { .. }
    ));
    let before = update_at(&mut feed, 2).await;

    store.panics.store(true, SeqCst);
    // The next tick's append panics; commands of the ticks before it run.
    let mut accepted = 0;
    let refusal = loop {
        match send_and_wait(&engine, ArenaCommand::Turn(Dir::North), &tx, &mut rx).await {
            CommandOutcome::Accepted { .. } => accepted += 1,
            CommandOutcome::Rejected(rejection) => break rejection,
        }
        assert!(
            accepted < 10,
            "a match of a shard without writer kept taking commands"
        );
    };
    assert!(
        refusal.reason.contains("match paused") && refusal.reason.contains("panicked"),
        "{}",
        refusal.reason
    );
    // Nothing after the last stored tick went out.
    let published = feed.updates.borrow().clone().unwrap();
    let head = store.inner().head(&key()).await.unwrap().unwrap();
    assert!(published.tick >= before.tick);
    assert!(
        published.tick <= head.tick,
        "tick {} published but only {} stored",
        published.tick,
        head.tick
    );
    let stats = engine.stats();
    assert_eq!(
        (stats.dead_writers, stats.paused_matches),
        (1, 1),
        "{stats:?}"
    );
    tokio::time::timeout(Duration::from_secs(60), engine.shutdown())
        .await
        .expect("shutdown completes without a writer");
}

/// Sync durability: no state goes out before the store acknowledged the
/// events behind it, checked at every update and with a withheld append.
#[tokio::test(start_paused = true)]
async fn sync_durability_publishes_only_acknowledged_states() {
    let (engine, store, mut feed, mut bots) = start(settings(Durability::Sync, 1800)).await;
    let mut state = tickforge::arena::ArenaState::default();
    let mut events = Events::new();
    for round in 0..20 {
        play(&engine, &mut bots, &state);
        let update = update_at(&mut feed, round + 1).await;
        let head = store.inner().head(&key()).await.unwrap().unwrap();
        assert!(
            head.next_sequence >= update.next_sequence && head.tick >= update.tick,
            "tick {}: state published before its events were stored",
            update.tick
        );
        state = update.state.clone();
        drain_events(&mut feed, &mut events);
    }
    let before = feed.updates.borrow().clone().unwrap();

    // The store withholds its acknowledgement: nothing is published.
    store.set_gate_open(false);
    play(&engine, &mut bots, &state);
    let withheld = tokio::time::timeout(
        Duration::from_secs(2),
        update_at(&mut feed, before.tick + 1),
    );
    assert!(
        withheld.await.is_err(),
        "a state went out before its append was acknowledged"
    );
    drain_events(&mut feed, &mut events);
    assert_eq!(
        events.len() as u64,
        before.next_sequence,
        "no events went out either"
    );

    store.set_gate_open(true);
    let after = update_at(&mut feed, before.tick + 1).await;
    let head = store.inner().head(&key()).await.unwrap().unwrap();
    assert!(head.next_sequence >= after.next_sequence && head.tick >= after.tick);
    engine.shutdown().await;
    drain_events(&mut feed, &mut events);
    let last = feed.updates.borrow().clone().unwrap();
    assert_stored_as_published(&store, &events, &last).await;
}

/// A store that restarts having lost its last acknowledged events (Redis
/// with `appendfsync everysec` can): the writer re-appends the lost tail
/// from memory, and the log ends up whole.
#[tokio::test(start_paused = true)]
async fn a_store_that_lost_acknowledged_events_is_repaired() {
    let (engine, store, mut feed, mut bots) = start(settings(Durability::Async, 1800)).await;
    let mut events = Events::new();
    let mut state = tickforge::arena::ArenaState::default();
    let mut lost = 0;
    for round in 0..40 {
        play(&engine, &mut bots, &state);
        let update = update_at(&mut feed, round + 1).await;
        state = update.state.clone();
        drain_events(&mut feed, &mut events);
        if round == 25 {
            // Keep what was stored up to three ticks ago (snapshots come
            // every 5 ticks, so the engine still holds the rest).
            let head = store.inner().head(&key()).await.unwrap().unwrap();
            let keep = events.iter().filter(|e| e.tick + 3 <= update.tick).count() as u64;
            let keep = keep.min(head.next_sequence);
            lost = head.next_sequence - keep;
            assert!(lost > 0, "the bots made no events lately");
            store.crash_keeping(&key(), Some(keep)).await;
        }
    }
    let last = feed.updates.borrow().clone().unwrap();
    let mut tick = last.tick;
    loop {
        let head = store.inner().head(&key()).await.unwrap().unwrap();
        if head.tick >= last.tick {
            break;
        }
        tick += 1;
        assert!(tick < last.tick + 30, "the writer did not catch up");
        update_at(&mut feed, tick).await;
    }
    assert_eq!(engine.stats().repaired_events, lost);
    assert_eq!(engine.stats().paused_matches, 0);
    engine.shutdown().await;
    drain_events(&mut feed, &mut events);
    let last = feed.updates.borrow().clone().unwrap();
    assert_stored_as_published(&store, &events, &last).await;
}

/// A store that restarts empty (Redis without persistence) between a
/// tick's append and its snapshot: the snapshot, retried across the
/// restart, meets a store that no longer knows the match. It rebuilds the
/// match from the engine's retained log and is stored, instead of being
/// given up as refused (a permanent error that kept `/readyz` failing).
#[tokio::test(start_paused = true)]
async fn a_snapshot_retried_across_a_store_restart_rebuilds_the_lost_match() {
    let every_tick = EngineSettings {
        policy: MatchPolicy {
            max_pending: 1024,
            snapshot_every_ticks: 1,
        },
        ..settings(Durability::Async, 1800)
    };
    let (engine, store, mut feed, mut bots) = start(every_tick).await;
    let state = tickforge::arena::ArenaState::default();
    play(&engine, &mut bots, &state);
    let played = update_at(&mut feed, 1).await;
    assert!(played.next_sequence > 0, "the bots made no events");

    store.snapshots_down.store(true, SeqCst);
    let mut tick = played.tick;
    while store.snapshots_refused.load(SeqCst) == 0 {
        tick += 1;
        assert!(tick < played.tick + 30, "no snapshot was attempted");
        update_at(&mut feed, tick).await;
    }
    let head = store.inner().head(&key()).await.unwrap().unwrap();
    assert_eq!(
        head.next_sequence, played.next_sequence,
        "the events were stored"
    );
    store.crash_keeping(&key(), None).await;
    store.snapshots_down.store(false, SeqCst);

    let lost_at = tick;
    loop {
        tick += 1;
        assert!(tick < lost_at + 30, "the lost match was never rebuilt");
        update_at(&mut feed, tick).await;
        let snapshot = store.inner().load_snapshot(&key()).await.unwrap();
        if snapshot.is_some_and(|s| s.tick > lost_at) {
            break;
        }
    }
    let stats = engine.stats();
    assert_eq!(stats.permanent_errors, 0, "a snapshot was given up");
    assert_eq!(stats.paused_matches, 0);
    assert_eq!(stats.repaired_events, played.next_sequence);
    let mut events = Events::new();
    drain_events(&mut feed, &mut events);
    engine.shutdown().await;
    let last = feed.updates.borrow().clone().unwrap();
    assert_stored_as_published(&store, &events, &last).await;
}

/// A store that lost a match entirely, further back than the engine keeps
/// events, cannot be repaired: the match pauses with the reason, loudly,
/// and the store is not given a log with a hole in it.
#[tokio::test(start_paused = true)]
async fn a_store_that_lost_more_than_the_engine_retains_pauses_the_match() {
    let (engine, store, mut feed, mut bots) = start(settings(Durability::Async, 1800)).await;
    let mut state = tickforge::arena::ArenaState::default();
    for round in 0..20 {
        play(&engine, &mut bots, &state);
        state = update_at(&mut feed, round + 1).await.state.clone();
    }
    store.crash_keeping(&key(), None).await;
    let (tx, mut rx) = mpsc::channel(16);
    let mut tries = 0;
    let refusal = loop {
        let turn = ArenaCommand::Turn(Dir::ALL[tries % 4]);
        if let CommandOutcome::Rejected(rejection) =
            send_and_wait(&engine, turn, &tx, &mut rx).await
            && rejection.reason.starts_with("match paused")
        {
            break rejection.reason;
        }
        tries += 1;
        assert!(tries < 100, "the match never paused");
    };
    assert!(
        refusal.starts_with("match paused: its log could not be stored"),
        "{refusal}"
    );
    assert!(
        refusal.contains("arena:main:m"),
        "the reason names the match: {refusal}"
    );
    assert_eq!(engine.stats().paused_matches, 1);
    assert!(
        store.inner().head(&key()).await.unwrap().is_none(),
        "no partial log was written"
    );
    engine.shutdown().await;
    assert!(store.inner().head(&key()).await.unwrap().is_none());
}

/// Trimming below snapshots keeps the store's log short while the match
/// plays (the memory store, the default backend, stops growing without
/// bound), restores still give exactly the live state, and a rebuild from
/// sequence 0 is refused rather than wrong.
#[tokio::test(start_paused = true)]
async fn trimming_keeps_the_log_short_and_restores_exactly() {
    let trim = EngineSettings {
        retention: EventRetention::TrimBelowSnapshot {
            keep_for: Vec::new(),
        },
        ..settings(Durability::Async, 1800)
    };
    let (engine, store, mut feed, mut bots) = start(trim).await;
    let mut events = Events::new();
    let mut state = tickforge::arena::ArenaState::default();
    let mut sequence_at = Vec::new();
    for round in 0..60 {
        play(&engine, &mut bots, &state);
        let update = update_at(&mut feed, round + 1).await;
        state = update.state.clone();
        sequence_at.push(update.next_sequence);
        drain_events(&mut feed, &mut events);
    }
    // Snapshots every 5 ticks: by tick 60 nothing from before tick 50 is
    // needed, and the writer is at most a couple of ticks behind.
    let floor = match store.inner().read(&key(), 0, 1).await {
        Err(StoreError::Trimmed { retained_from, .. }) => retained_from,
        other => panic!("expected a trimmed log, got {other:?}"),
    };
    assert!(
        floor >= sequence_at[45] && sequence_at[45] > 0,
        "log kept from {floor}; the match was at {} by tick 46",
        sequence_at[45]
    );
    let kept = store.inner().read(&key(), floor, usize::MAX).await.unwrap();
    for (record, event) in kept.iter().zip(&events[floor as usize..]) {
        assert_eq!(record.payload, codec::encode(&**event).unwrap());
    }

    engine.shutdown().await;
    drain_events(&mut feed, &mut events);
    let last = feed.updates.borrow().clone().unwrap();
    assert!(engine.stats().trimmed_events >= floor);
    let restored = engine::restore(&Arena::default(), &store.inner(), &key())
        .await
        .unwrap();
    assert_eq!(bytes(&restored.state), bytes(&last.state));
    assert_eq!(restored.next_sequence, last.next_sequence);
    let rebuild = engine::rebuild_from_start(&Arena::default(), &store.inner(), &key()).await;
    assert!(
        matches!(
            rebuild,
            Err(engine::EngineError::Store(StoreError::Trimmed { .. }))
        ),
        "{rebuild:?}"
    );
}
