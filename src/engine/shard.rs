//! A shard: one task that ticks many matches at the configured rate.
//!
//! Per tick, in order: take in queued messages (bounded), pause matches the
//! store refused, run every live match's tick (commands, then step), answer
//! each command, then hand the tick's writes to the shard's writer as one
//! job and publish states and events (after the store acknowledged them in
//! sync durability). Pacing comes from [`TickSchedule`]: no drift, late
//! ticks caught up and counted. A full queue anywhere rejects work; it
//! never blocks the tick.
//!
//! The writer queue is bounded in jobs (`write_queue_ticks`) and in
//! encoded bytes (`write_queue_bytes`): past either bound the shard keeps
//! the tick's job as backlog and its matches pause until there is room.
//! A writer task that stopped (it panicked) is an error, never success:
//! every match of the shard pauses with the reason, and it is logged and
//! counted (`dead_writers`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use dashmap::DashMap;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::admin::metrics::{self as names, rejected as why};
use crate::engine::core::{CommandOutcome, MatchCore};
use crate::engine::schedule::{Due, TickSchedule};
use crate::engine::stats::ShardStats;
use crate::engine::writer::{SnapshotWrite, WriteFailure, WriteJob};
use crate::engine::{
    Durability, EngineError, EngineSettings, EventEnvelope, HandedOver, MatchUpdate, Reply, Route,
    UpdateSender,
};
use crate::game::{Game, PlayerId, Rejection};
use crate::store::{AppendBatch, MatchKey, StoreError};
use std::time::Duration;

/// How many inbox messages a shard takes in per pass before ticking.
const INBOX_BUDGET: usize = 65_536;

pub(crate) type Core<G> = MatchCore<G, Option<Reply>>;

/// What reaches a shard.
pub(crate) enum ShardMsg<G: Game> {
    /// Start ticking a new or restored match.
    Host {
        core: Box<Core<G>>,
        updates: UpdateSender<G::State>,
        events: broadcast::Sender<Arc<EventEnvelope<G::Event>>>,
        /// The lease epoch its writes carry (fleets only).
        epoch: Option<u64>,
    },
    /// A player's command for a hosted match.
    Command {
        root: Arc<str>,
        player: PlayerId,
        command: G::Command,
        reply: Option<Reply>,
    },
    /// Fail a hosted match on its next tick.
    Fail { root: Arc<str>, reason: String },
    /// Stop hosting a match whose lease moved on, writing nothing more.
    Relocate { root: Arc<str>, reason: String },
    /// Store a match's last events and a snapshot, then stop hosting it.
    HandOver {
        root: Arc<str>,
        done: oneshot::Sender<Result<HandedOver<G::State>, EngineError>>,
    },
    /// Snapshot every match, flush, stop.
    Shutdown { done: oneshot::Sender<()> },
}

struct Hosted<G: Game> {
    core: Core<G>,
    updates: UpdateSender<G::State>,
    events: broadcast::Sender<Arc<EventEnvelope<G::Event>>>,
    paused: Option<String>,
    /// The lease epoch its writes carry (fleets only).
    epoch: Option<u64>,
    /// The phase of the tick period it ticks in.
    phase: u32,
}

impl<G: Game> Hosted<G> {
    /// The events and tick not handed out yet, as a batch written under
    /// the match's lease (renewing it by `lease_ttl`).
    fn poll_batch(&mut self, lease_ttl: Option<Duration>) -> Option<AppendBatch> {
        let mut batch = self.core.poll_batch()?;
        batch.epoch = self.epoch;
        batch.renew_lease = self.epoch.and(lease_ttl);
        Some(batch)
    }

    /// The current state as a snapshot write, under the match's lease.
    fn snapshot_write(&self) -> Result<SnapshotWrite, crate::codec::EncodeError> {
        Ok(SnapshotWrite {
            key: self.core.key().clone(),
            snapshot: self.core.snapshot()?,
            epoch: self.epoch,
        })
    }
}

/// Publications held back until the tick's writes are acknowledged.
struct Publication<G: Game> {
    root: Arc<str>,
    updates: UpdateSender<G::State>,
    update: Option<Arc<MatchUpdate<G::State>>>,
    events: broadcast::Sender<Arc<EventEnvelope<G::Event>>>,
    new_events: Vec<EventEnvelope<G::Event>>,
}

impl<G: Game> Publication<G> {
    fn publish(self) {
        for event in self.new_events {
            // No receivers is fine: nobody follows this match right now.
            let _ = self.events.send(Arc::new(event));
        }
        if let Some(update) = self.update {
            self.updates.send_replace(Some(update));
        }
    }
}

pub(crate) struct Shard<G: Game> {
    game: Arc<G>,
    settings: EngineSettings,
    inbox: mpsc::Receiver<ShardMsg<G>>,
    writer: Option<mpsc::Sender<WriteJob>>,
    /// Taken when the writer is awaited (it stopped, or at shutdown).
    writer_task: Option<JoinHandle<()>>,
    /// Why nothing can be stored any more, once the writer stopped.
    writer_stopped: Option<String>,
    failures: mpsc::UnboundedReceiver<WriteFailure>,
    stats: Arc<ShardStats>,
    routes: Arc<DashMap<Arc<str>, Route<G>>>,
    matches: HashMap<Arc<str>, Hosted<G>>,
    /// A job the writer queue had no room for; while set, matches pause.
    backlog: Option<WriteJob>,
    /// Setups of matches hosted since the last job, for the writer's repair.
    setups: Vec<(crate::store::MatchKey, Arc<[u8]>)>,
    /// Hand-overs asked for, done at the start of the next tick.
    handing_over: Vec<(Arc<str>, HandOverDone<G>)>,
}

/// Where a hand-over's outcome goes.
type HandOverDone<G> = oneshot::Sender<Result<HandedOver<<G as Game>::State>, EngineError>>;

/// A hand-over whose writes are on their way to the store.
struct PendingHandOver<G: Game> {
    handed: HandedOver<G::State>,
    done: HandOverDone<G>,
}

impl<G: Game> Shard<G> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        game: Arc<G>,
        settings: EngineSettings,
        inbox: mpsc::Receiver<ShardMsg<G>>,
        writer: mpsc::Sender<WriteJob>,
        writer_task: JoinHandle<()>,
        failures: mpsc::UnboundedReceiver<WriteFailure>,
        stats: Arc<ShardStats>,
        routes: Arc<DashMap<Arc<str>, Route<G>>>,
    ) -> Self {
        Self {
            game,
            settings,
            inbox,
            writer: Some(writer),
            writer_task: Some(writer_task),
            writer_stopped: None,
            failures,
            stats,
            routes,
            matches: HashMap::new(),
            backlog: None,
            setups: Vec::new(),
            handing_over: Vec::new(),
        }
    }

    /// Steps per tick period (`EngineSettings::tick_phases`, at least 1).
    fn phases(&self) -> u32 {
        self.settings.tick_phases.max(1)
    }

    /// The phase with the fewest matches (the first of them on a tie), so
    /// matches that end or move leave no phase crowded.
    fn quietest_phase(&self) -> u32 {
        let mut counts = vec![0usize; self.phases() as usize];
        for hosted in self.matches.values() {
            if let Some(count) = counts.get_mut(hosted.phase as usize) {
                *count += 1;
            }
        }
        (0..self.phases())
            .min_by_key(|&phase| counts[phase as usize])
            .unwrap_or(0)
    }

    /// The shard loop; returns after a shutdown message or when the engine is dropped.
    pub(crate) async fn run(mut self) {
        let phases = self.phases();
        let mut schedule = TickSchedule::phased(self.settings.tick_hz, phases);
        let start = Instant::now();
        loop {
            match schedule.poll(start.elapsed()) {
                Due::Run { tick: step, late } => {
                    if let Some(done) = self.take_inbox() {
                        return self.shut_down(done).await;
                    }
                    let phase = ((step - 1) % u64::from(phases)) as u32;
                    // A stall makes every phase late: count it once per tick.
                    if late && phase == 0 {
                        self.stats.late_ticks.fetch_add(1, Relaxed);
                        metrics::counter!(names::LATE_TICKS, "shard" => self.stats.shard_label())
                            .increment(1);
                    }
                    self.run_tick(phase).await;
                    if late {
                        // Catching up: let the writer and the network run
                        // between back-to-back ticks.
                        tokio::task::yield_now().await;
                    }
                }
                Due::WaitUntil(offset) => {
                    tokio::select! {
                        biased;
                        msg = self.inbox.recv() => match msg {
                            Some(ShardMsg::Shutdown { done }) => return self.shut_down(Some(done)).await,
                            Some(msg) => self.handle(msg),
                            None => return self.shut_down(None).await,
                        },
                        _ = tokio::time::sleep_until(start + offset) => {}
                    }
                }
            }
        }
    }

    /// Takes in up to a budget of queued messages. Returns `Some` when the
    /// shard must stop (with the shutdown's completion sender, if any).
    fn take_inbox(&mut self) -> Option<Option<oneshot::Sender<()>>> {
        for _ in 0..INBOX_BUDGET {
            match self.inbox.try_recv() {
                Ok(ShardMsg::Shutdown { done }) => return Some(Some(done)),
                Ok(msg) => self.handle(msg),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return Some(None),
            }
        }
        None
    }

    fn handle(&mut self, msg: ShardMsg<G>) {
        match msg {
            ShardMsg::Host {
                core,
                updates,
                events,
                epoch,
            } => {
                let root: Arc<str> = core.key().root().into();
                self.setups.push((core.key().clone(), core.setup().clone()));
                // Nothing of a match can be stored once the writer stopped.
                let paused = self.writer_stopped.clone();
                if paused.is_some() {
                    self.stats.paused_matches.fetch_add(1, Relaxed);
                }
                let phase = self.quietest_phase();
                self.matches.insert(
                    root,
                    Hosted {
                        core: *core,
                        updates,
                        events,
                        paused,
                        epoch,
                        phase,
                    },
                );
            }
            ShardMsg::Command {
                root,
                player,
                command,
                reply,
            } => {
                self.stats.commands.fetch_add(1, Relaxed);
                let refusal = match self.matches.get_mut(&root) {
                    None => Some("no such match on this server".to_owned()),
                    Some(_) if self.backlog.is_some() => Some(
                        "match paused: the store is unavailable and the write buffer is full"
                            .to_owned(),
                    ),
                    Some(hosted) => match &hosted.paused {
                        Some(reason) => Some(format!("match paused: {reason}")),
                        None => match hosted.core.handle_command(player, command, reply) {
                            Ok(()) => return,
                            Err(full) => {
                                self.stats.dropped.fetch_add(1, Relaxed);
                                metrics::counter!(names::COMMANDS_REJECTED, "reason" => why::QUEUE_FULL).increment(1);
                                if let Some(reply) = full.0 {
                                    send_reply(
                                        &reply,
                                        &root,
                                        CommandOutcome::Rejected(Rejection::new(
                                            "command queue of this match is full",
                                        )),
                                    );
                                }
                                return;
                            }
                        },
                    },
                };
                self.stats.rejected.fetch_add(1, Relaxed);
                let class = if self.matches.contains_key(&root) {
                    why::PAUSED
                } else {
                    why::UNKNOWN_MATCH
                };
                metrics::counter!(names::COMMANDS_REJECTED, "reason" => class).increment(1);
                if let (Some(reason), Some(reply)) = (refusal, reply) {
                    send_reply(
                        &reply,
                        &root,
                        CommandOutcome::Rejected(Rejection::new(reason)),
                    );
                }
            }
            ShardMsg::Fail { root, reason } => {
                if let Some(hosted) = self.matches.get_mut(&root) {
                    hosted.core.abort(reason);
                }
            }
            ShardMsg::Relocate { root, reason } => self.relocate(&root, &reason),
            ShardMsg::HandOver { root, done } => self.handing_over.push((root, done)),
            ShardMsg::Shutdown { .. } => unreachable!("shutdown is handled by the loop"),
        }
    }

    fn pause_refused_matches(&mut self) {
        while let Ok(WriteFailure { key, error }) = self.failures.try_recv() {
            let root: Arc<str> = key.root().into();
            if let StoreError::Fenced { .. } = error {
                self.relocate(
                    &root,
                    &format!("another node took the match over ({error})"),
                );
                continue;
            }
            if let Some(hosted) = self.matches.get_mut(&root) {
                pause(
                    hosted,
                    &root,
                    format!("its log could not be stored: {error}"),
                    &self.stats,
                );
            }
        }
    }

    /// The writer task ended: pauses every match (nothing can be stored),
    /// once, with the reason, and marks the shard in the stats.
    async fn on_writer_stopped(&mut self) {
        if self.writer_stopped.is_some() {
            return;
        }
        // The queue closes as the task's future is dropped: it is ending.
        let how = match self.writer_task.take() {
            Some(task) => match task.await {
                Ok(()) => "stopped".to_owned(),
                Err(error) if error.is_panic() => {
                    format!("panicked: {}", panic_message(error.into_panic()))
                }
                Err(error) => format!("was cancelled: {error}"),
            },
            None => "stopped".to_owned(),
        };
        let reason = format!("the store writer of its shard {how}; nothing can be stored");
        tracing::error!(matches = self.matches.len(), %reason, "pausing every match of the shard");
        self.stats.writer_stopped.store(1, Relaxed);
        for (root, hosted) in &mut self.matches {
            pause(hosted, root, reason.clone(), &self.stats);
        }
        self.writer_stopped = Some(reason);
    }

    /// The lease renewal each stored batch carries (fleets only).
    fn lease_ttl(&self) -> Option<Duration> {
        self.settings.lease.as_ref().map(|lease| lease.ttl)
    }

    /// Stops hosting `root` at once, writing nothing more of it: its lease
    /// moved to another node. Subscribers see the feed close.
    fn relocate(&mut self, root: &Arc<str>, reason: &str) {
        let Some(mut hosted) = self.matches.remove(root) else {
            return;
        };
        tracing::warn!(key = %hosted.core.key(), %reason, "match no longer hosted here");
        let refusal = Rejection::new(format!("the match moved to another node: {reason}"));
        reject_pending(&mut hosted.core, root, &refusal, &self.stats);
        if hosted.paused.is_some() {
            self.stats.paused_matches.fetch_sub(1, Relaxed);
        }
        self.routes.remove(root);
        self.stats.matches.fetch_sub(1, Relaxed);
        self.stats.relocated_matches.fetch_add(1, Relaxed);
    }

    /// Takes the matches asked to be handed over out of the shard, putting
    /// their last events and a snapshot into `job`.
    fn take_handovers(&mut self, job: &mut WriteJob) -> Vec<PendingHandOver<G>> {
        let lease_ttl = self.lease_ttl();
        let mut handed = Vec::new();
        for (root, done) in std::mem::take(&mut self.handing_over) {
            // Checked before the match leaves: one that cannot be handed
            // over stays hosted here (a drain snapshots it).
            let snapshot = match self.matches.get(&root) {
                None => Err(EngineError::UnknownMatch(root.to_string())),
                Some(hosted) => handover_snapshot(&root, hosted),
            };
            let (snapshot, epoch) = match snapshot {
                Ok(checked) => checked,
                Err(error) => {
                    let _ = done.send(Err(error));
                    continue;
                }
            };
            let Some(mut hosted) = self.matches.remove(&root) else {
                continue;
            };
            self.routes.remove(&root);
            self.stats.matches.fetch_sub(1, Relaxed);
            let refusal =
                Rejection::new("the match is moving to another node; send it again there");
            reject_pending(&mut hosted.core, &root, &refusal, &self.stats);
            if let Some(batch) = hosted.poll_batch(lease_ttl) {
                job.batches.push(batch);
            }
            let key = hosted.core.key().clone();
            job.released.push(key.clone());
            handed.push(PendingHandOver {
                handed: HandedOver {
                    key,
                    tick: snapshot.snapshot.tick,
                    next_sequence: snapshot.snapshot.sequence,
                    epoch,
                    _updates: hosted.updates.clone(),
                },
                done,
            });
            job.snapshots.push(snapshot);
        }
        handed
    }

    /// Ticks the matches of `phase`; the shard's tick count moves on after
    /// the last phase of the period.
    async fn run_tick(&mut self, phase: u32) {
        let started = Instant::now();
        let period_done = phase + 1 == self.phases();
        self.pause_refused_matches();
        if self.writer.as_ref().is_some_and(mpsc::Sender::is_closed) {
            self.on_writer_stopped().await;
        }
        if let Some(job) = self.backlog.take() {
            // Still no room: the shard's matches stay paused this tick.
            if !self.dispatch(job).await {
                if period_done {
                    self.stats.ticks.fetch_add(1, Relaxed);
                }
                return;
            }
            tracing::info!("store writer has room again; matches resume");
        }
        let lease_ttl = self.lease_ttl();
        let mut job = WriteJob {
            setups: std::mem::take(&mut self.setups),
            ..WriteJob::default()
        };
        let mut handed = self.take_handovers(&mut job);
        let mut publications = Vec::with_capacity(self.matches.len());
        let mut ended = Vec::new();
        let (mut match_ticks, mut events, mut rejected, mut decided) = (0u64, 0u64, 0u64, 0u64);
        for (root, hosted) in &mut self.matches {
            if hosted.paused.is_some() || hosted.phase != phase {
                continue;
            }
            let out = hosted.core.run_tick(&self.game);
            match_ticks += 1;
            if let Some(reason) = out.failure {
                self.stats.failed_matches.fetch_add(1, Relaxed);
                metrics::counter!(names::MATCHES_FAILED).increment(1);
                tracing::error!(key = %hosted.core.key(), %reason, "game code failed; the match ends with this reason");
                for (reply, outcome) in out.outcomes {
                    decided += 1;
                    rejected += 1;
                    if let Some(reply) = reply {
                        send_reply(&reply, root, outcome);
                    }
                }
                if let Some(batch) = hosted.poll_batch(lease_ttl) {
                    // Events of earlier ticks not handed out yet are still good.
                    job.batches.push(batch);
                }
                job.failed.push((hosted.core.key().clone(), reason.clone()));
                publications.push(Publication::<G> {
                    root: root.clone(),
                    updates: hosted.updates.clone(),
                    update: Some(failed_update(&hosted.updates, hosted.core.state(), &reason)),
                    events: hosted.events.clone(),
                    new_events: Vec::new(),
                });
                ended.push(root.clone());
                continue;
            }
            events += out.events.len() as u64;
            job.tick = job.tick.max(out.tick);
            for (reply, outcome) in out.outcomes {
                decided += 1;
                if matches!(outcome, CommandOutcome::Rejected(_)) {
                    rejected += 1;
                }
                if let Some(reply) = reply {
                    send_reply(&reply, root, outcome);
                }
            }
            if let Some(batch) = hosted.poll_batch(lease_ttl) {
                job.batches.push(batch);
            }
            if let Some(snapshot) = out.snapshot {
                job.snapshots.push(SnapshotWrite {
                    key: hosted.core.key().clone(),
                    snapshot,
                    epoch: hosted.epoch,
                });
            }
            if out.ended {
                job.finished.push(hosted.core.key().clone());
                ended.push(root.clone());
            }
            let update = (hosted.updates.receiver_count() > 0).then(|| {
                Arc::new(MatchUpdate {
                    tick: out.tick,
                    next_sequence: hosted.core.next_sequence(),
                    state: hosted.core.state().clone(),
                    over: hosted.core.is_over(),
                    failure: None,
                    published: std::time::Instant::now(),
                })
            });
            publications.push(Publication::<G> {
                root: root.clone(),
                updates: hosted.updates.clone(),
                update,
                events: hosted.events.clone(),
                new_events: out.events,
            });
        }
        self.stats.match_ticks.fetch_add(match_ticks, Relaxed);
        self.stats.events.fetch_add(events, Relaxed);
        self.stats.rejected.fetch_add(rejected, Relaxed);
        metrics::counter!(names::COMMANDS_ACCEPTED).increment(decided.saturating_sub(rejected));
        metrics::counter!(names::COMMANDS_REJECTED, "reason" => why::GAME).increment(rejected);

        let sync = self.settings.durability == Durability::Sync;
        let mut acked = if (sync && !job.is_empty()) || !handed.is_empty() {
            let (tx, rx) = oneshot::channel();
            job.ack = Some(tx);
            Some(rx)
        } else {
            None
        };
        job.seal();
        if !job.is_empty() && !self.dispatch(job).await {
            tracing::warn!(
                "store writer queue full (in ticks or bytes); pausing this shard's matches until it drains"
            );
            if acked.take().is_some() {
                // Not reached in sync durability (one job in flight at a
                // time, so neither bound is ever hit); were it, nothing
                // unstored goes out, and its ack is not awaited here.
                if sync {
                    publications.clear();
                }
                finish_handovers(std::mem::take(&mut handed), None);
            }
        }
        if !sync && let Some(acked) = acked.take() {
            // Hand-overs only: their callers wait, the shard does not.
            tokio::spawn(async move {
                let refused = acked.await.ok();
                finish_handovers(handed, refused.as_deref());
            });
        } else if let Some(acked) = acked {
            let refused = acked.await.ok();
            finish_handovers(handed, refused.as_deref());
            match refused.ok_or(()) {
                // Refused matches pause next tick; their state was not stored.
                Ok(refused) => {
                    publications.retain(|p| !refused.iter().any(|key| key.root() == &*p.root))
                }
                // The writer stopped: this tick was not stored.
                Err(_) => {
                    publications.clear();
                    self.on_writer_stopped().await;
                }
            }
        }
        for publication in publications {
            publication.publish();
        }
        metrics::counter!(names::MATCHES_ENDED).increment(ended.len() as u64);
        for root in ended {
            self.matches.remove(&root);
            self.routes.remove(&root);
            self.stats.matches.fetch_sub(1, Relaxed);
        }
        if period_done {
            self.stats.ticks.fetch_add(1, Relaxed);
        }
        self.stats.record_tick(started.elapsed());
    }

    /// Hands a (sealed) job to the writer without waiting for room.
    /// Returns false, keeping the job as backlog, when the writer queue is
    /// full in jobs or would pass `write_queue_bytes` (a job goes out
    /// whatever its size when nothing is queued). A stopped writer pauses
    /// every match (the job is lost, and logged).
    async fn dispatch(&mut self, job: WriteJob) -> bool {
        let Some(writer) = &self.writer else {
            return true;
        };
        if self.writer_stopped.is_some() {
            return true;
        }
        let queued = &self.stats.queued_bytes;
        let before = queued.load(Relaxed);
        if before > 0 && before.saturating_add(job.bytes) > self.settings.write_queue_bytes {
            self.hold(job);
            return false;
        }
        // Counted before the writer can finish it (and subtract).
        queued.fetch_add(job.bytes, Relaxed);
        match writer.try_send(job) {
            Ok(()) => {
                self.stats.held_bytes.store(0, Relaxed);
                self.stats.publish_backlog_bytes();
                true
            }
            Err(mpsc::error::TrySendError::Full(job)) => {
                queued.fetch_sub(job.bytes, Relaxed);
                self.hold(job);
                false
            }
            Err(mpsc::error::TrySendError::Closed(job)) => {
                queued.fetch_sub(job.bytes, Relaxed);
                let events: usize = job.batches.iter().map(|b| b.events.len()).sum();
                tracing::error!(
                    tick = job.tick,
                    events,
                    "store writer stopped; the writes of this tick are lost"
                );
                self.stats.held_bytes.store(0, Relaxed);
                self.on_writer_stopped().await;
                true
            }
        }
    }

    /// Keeps `job` until the writer has room; the shard's matches pause.
    fn hold(&mut self, job: WriteJob) {
        self.stats.held_bytes.store(job.bytes, Relaxed);
        self.stats.publish_backlog_bytes();
        self.backlog = Some(job);
    }

    /// Final snapshot of every match, flush everything, stop the writer.
    async fn shut_down(mut self, done: Option<oneshot::Sender<()>>) {
        // No more messages: commands still queued are answered below.
        self.inbox.close();
        while let Ok(msg) = self.inbox.try_recv() {
            match msg {
                ShardMsg::Host { core, .. } => {
                    self.stats.matches.fetch_sub(1, Relaxed);
                    tracing::warn!(key = %core.key(), "match arrived during shutdown; not hosted");
                }
                ShardMsg::Command { root, reply, .. } => {
                    self.stats.rejected.fetch_add(1, Relaxed);
                    metrics::counter!(names::COMMANDS_REJECTED, "reason" => why::SHUTDOWN)
                        .increment(1);
                    if let Some(reply) = reply {
                        let refusal = Rejection::new("the server is shutting down");
                        send_reply(&reply, &root, CommandOutcome::Rejected(refusal));
                    }
                }
                ShardMsg::Shutdown { done } => {
                    let _ = done.send(());
                }
                ShardMsg::Fail { .. } | ShardMsg::Relocate { .. } => {}
                ShardMsg::HandOver { done, .. } => {
                    let _ = done.send(Err(EngineError::ShuttingDown));
                }
            }
        }
        let lease_ttl = self.lease_ttl();
        if let Some(writer) = self.writer.take() {
            let mut final_job = WriteJob {
                setups: std::mem::take(&mut self.setups),
                ..WriteJob::default()
            };
            let refusal = Rejection::new("the server is shutting down");
            for (root, hosted) in &mut self.matches {
                // Commands that arrived after the last tick never run.
                reject_pending(&mut hosted.core, root, &refusal, &self.stats);
                if hosted.paused.is_some() || hosted.core.failure().is_some() {
                    continue;
                }
                if let Some(batch) = hosted.poll_batch(lease_ttl) {
                    final_job.batches.push(batch);
                }
                match hosted.snapshot_write() {
                    Ok(write) => final_job.snapshots.push(write),
                    Err(error) => {
                        tracing::error!(key = %hosted.core.key(), %error, "final snapshot not stored; restore replays from the last one")
                    }
                }
            }
            final_job.seal();
            // Waiting for room is right here: nothing ticks any more.
            let jobs = self.backlog.take().into_iter().chain([final_job]);
            for job in jobs {
                if self.writer_stopped.is_some() {
                    break;
                }
                self.stats.queued_bytes.fetch_add(job.bytes, Relaxed);
                if let Err(mpsc::error::SendError(job)) = writer.send(job).await {
                    self.stats.queued_bytes.fetch_sub(job.bytes, Relaxed);
                    tracing::error!(
                        tick = job.tick,
                        "store writer stopped; the final writes are lost"
                    );
                    break;
                }
            }
            self.stats.held_bytes.store(0, Relaxed);
        }
        if let Some(task) = self.writer_task.take()
            && let Err(error) = task.await
        {
            tracing::error!(%error, "store writer task failed");
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
    }
}

/// The final snapshot of a match about to be handed over and its lease
/// epoch, or why it cannot be: paused or failed (nothing more of it can be
/// stored), held by no lease, or not encodable.
fn handover_snapshot<G: Game>(
    root: &str,
    hosted: &Hosted<G>,
) -> Result<(SnapshotWrite, u64), EngineError> {
    let refused = |why: String| {
        EngineError::Store(StoreError::Unavailable(format!(
            "match {root} cannot be handed over: {why}"
        )))
    };
    if let Some(reason) = hosted.paused.as_deref().or(hosted.core.failure()) {
        return Err(refused(reason.to_owned()));
    }
    let Some(epoch) = hosted.epoch else {
        return Err(refused("it is not held by a lease".to_owned()));
    };
    let snapshot = hosted
        .snapshot_write()
        .map_err(|error| refused(format!("final snapshot: {error}")))?;
    Ok((snapshot, epoch))
}

/// Tells each hand-over's caller how its writes went: `refused` lists the
/// matches whose writes the store refused; `None` means the writes were
/// not (known to be) stored.
fn finish_handovers<G: Game>(handed: Vec<PendingHandOver<G>>, refused: Option<&[MatchKey]>) {
    for PendingHandOver { handed, done } in handed {
        let outcome = match refused {
            Some(refused) if !refused.contains(&handed.key) => Ok(handed),
            Some(_) => Err(EngineError::Store(StoreError::Unavailable(format!(
                "the store refused the final writes of {}",
                handed.key
            )))),
            None => Err(EngineError::Store(StoreError::Unavailable(format!(
                "the final writes of {} were not stored in time",
                handed.key
            )))),
        };
        let _ = done.send(outcome);
    }
}

/// Pauses a match for good (unless it is already): its queued commands
/// are answered with the reason, later ones refused with it.
fn pause<G: Game>(hosted: &mut Hosted<G>, root: &Arc<str>, reason: String, stats: &ShardStats) {
    if hosted.paused.is_some() {
        return;
    }
    let refusal = Rejection::new(format!("match paused: {reason}"));
    reject_pending(&mut hosted.core, root, &refusal, stats);
    hosted.paused = Some(reason);
    stats.paused_matches.fetch_add(1, Relaxed);
    metrics::counter!(names::MATCHES_PAUSED).increment(1);
}

/// The text of a panic payload, when it is one.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map_or_else(|| "(no message)".to_owned(), |text| (*text).to_owned()),
    }
}

/// Answers every command queued for a match that will not tick again.
fn reject_pending<G: Game>(
    core: &mut Core<G>,
    root: &Arc<str>,
    refusal: &Rejection,
    stats: &ShardStats,
) {
    for (reply, outcome) in core.reject_pending(refusal) {
        stats.rejected.fetch_add(1, Relaxed);
        metrics::counter!(names::COMMANDS_REJECTED, "reason" => why::STOPPED).increment(1);
        if let Some(reply) = reply {
            send_reply(&reply, root, outcome);
        }
    }
}

/// The last published update of a failed match, marked failed (the
/// current state only if nothing was published yet).
fn failed_update<S: Clone>(
    updates: &UpdateSender<S>,
    state: &S,
    reason: &str,
) -> Arc<MatchUpdate<S>> {
    let last = updates.borrow().clone();
    let (tick, next_sequence, state) = match last {
        Some(last) => (last.tick, last.next_sequence, last.state.clone()),
        None => (0, 0, state.clone()),
    };
    Arc::new(MatchUpdate {
        tick,
        next_sequence,
        state,
        over: true,
        failure: Some(reason.into()),
        published: std::time::Instant::now(),
    })
}

fn send_reply(reply: &Reply, root: &Arc<str>, outcome: CommandOutcome) {
    reply.deliver(root, outcome);
}
