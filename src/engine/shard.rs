//! A shard: one task that ticks many matches at the configured rate.
//!
//! Per tick, in order: take in queued messages (bounded), pause matches the
//! store refused, run every live match's tick (commands, then step), answer
//! each command, then hand the tick's writes to the shard's writer as one
//! job and publish states and events (after the store acknowledged them in
//! sync durability). Pacing comes from [`TickSchedule`]: no drift, late
//! ticks caught up and counted. A full queue anywhere rejects work; it
//! never blocks the tick.

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
use crate::engine::writer::{WriteFailure, WriteJob};
use crate::engine::{
    CommandReply, Durability, EngineSettings, EventEnvelope, MatchUpdate, ReplyTo, Route,
    UpdateSender,
};
use crate::game::{Game, PlayerId, Rejection};

/// How many inbox messages a shard takes in per pass before ticking.
const INBOX_BUDGET: usize = 65_536;

pub(crate) type Core<G> = MatchCore<G, Option<ReplyTo>>;

/// What reaches a shard.
pub(crate) enum ShardMsg<G: Game> {
    /// Start ticking a new or restored match.
    Host {
        core: Box<Core<G>>,
        updates: UpdateSender<G::State>,
        events: broadcast::Sender<Arc<EventEnvelope<G::Event>>>,
    },
    /// A player's command for a hosted match.
    Command {
        root: Arc<str>,
        player: PlayerId,
        command: G::Command,
        reply: Option<ReplyTo>,
    },
    /// Fail a hosted match on its next tick.
    Fail { root: Arc<str>, reason: String },
    /// Snapshot every match, flush, stop.
    Shutdown { done: oneshot::Sender<()> },
}

struct Hosted<G: Game> {
    core: Core<G>,
    updates: UpdateSender<G::State>,
    events: broadcast::Sender<Arc<EventEnvelope<G::Event>>>,
    paused: Option<String>,
}

/// Publications held back until the tick's writes are acknowledged.
struct Publication<G: Game> {
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
    writer_task: JoinHandle<()>,
    failures: mpsc::Receiver<WriteFailure>,
    stats: Arc<ShardStats>,
    routes: Arc<DashMap<Arc<str>, Route<G>>>,
    matches: HashMap<Arc<str>, Hosted<G>>,
    /// A job the writer queue had no room for; while set, matches pause.
    backlog: Option<WriteJob>,
    /// Setups of matches hosted since the last job, for the writer's repair.
    setups: Vec<(crate::store::MatchKey, Arc<[u8]>)>,
}

impl<G: Game> Shard<G> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        game: Arc<G>,
        settings: EngineSettings,
        inbox: mpsc::Receiver<ShardMsg<G>>,
        writer: mpsc::Sender<WriteJob>,
        writer_task: JoinHandle<()>,
        failures: mpsc::Receiver<WriteFailure>,
        stats: Arc<ShardStats>,
        routes: Arc<DashMap<Arc<str>, Route<G>>>,
    ) -> Self {
        Self {
            game,
            settings,
            inbox,
            writer: Some(writer),
            writer_task,
            failures,
            stats,
            routes,
            matches: HashMap::new(),
            backlog: None,
            setups: Vec::new(),
        }
    }

    /// The shard loop; returns after a shutdown message or when the engine is dropped.
    pub(crate) async fn run(mut self) {
        let mut schedule = TickSchedule::new(self.settings.tick_hz);
        let start = Instant::now();
        loop {
            match schedule.poll(start.elapsed()) {
                Due::Run { late, .. } => {
                    if let Some(done) = self.take_inbox() {
                        return self.shut_down(done).await;
                    }
                    if late {
                        self.stats.late_ticks.fetch_add(1, Relaxed);
                        metrics::counter!(names::LATE_TICKS, "shard" => self.stats.shard_label())
                            .increment(1);
                    }
                    self.run_tick().await;
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
            } => {
                let root: Arc<str> = core.key().root().into();
                self.setups.push((core.key().clone(), core.setup().clone()));
                self.matches.insert(
                    root,
                    Hosted {
                        core: *core,
                        updates,
                        events,
                        paused: None,
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
            ShardMsg::Shutdown { .. } => unreachable!("shutdown is handled by the loop"),
        }
    }

    fn pause_refused_matches(&mut self) {
        while let Ok(WriteFailure { key, error }) = self.failures.try_recv() {
            let root: Arc<str> = key.root().into();
            if let Some(hosted) = self.matches.get_mut(&root)
                && hosted.paused.is_none()
            {
                let reason = format!("its log could not be stored: {error}");
                // Queued commands will never run now: answer them.
                let refusal = Rejection::new(format!("match paused: {reason}"));
                reject_pending(&mut hosted.core, &root, &refusal, &self.stats);
                hosted.paused = Some(reason);
                self.stats.paused_matches.fetch_add(1, Relaxed);
                metrics::counter!(names::MATCHES_PAUSED).increment(1);
            }
        }
    }

    async fn run_tick(&mut self) {
        let started = Instant::now();
        self.pause_refused_matches();
        if let Some(job) = self.backlog.take() {
            // Still no room: the shard's matches stay paused this tick.
            if !self.dispatch(job).await {
                self.stats.ticks.fetch_add(1, Relaxed);
                return;
            }
            tracing::info!("store writer has room again; matches resume");
        }
        let mut job = WriteJob {
            setups: std::mem::take(&mut self.setups),
            ..WriteJob::default()
        };
        let mut publications = Vec::with_capacity(self.matches.len());
        let mut ended = Vec::new();
        let (mut match_ticks, mut events, mut rejected, mut decided) = (0u64, 0u64, 0u64, 0u64);
        for (root, hosted) in &mut self.matches {
            if hosted.paused.is_some() {
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
                if let Some(batch) = hosted.core.poll_batch() {
                    // Events of earlier ticks not handed out yet are still good.
                    job.batches.push(batch);
                }
                job.failed.push((hosted.core.key().clone(), reason.clone()));
                publications.push(Publication::<G> {
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
            if let Some(batch) = hosted.core.poll_batch() {
                job.batches.push(batch);
            }
            if let Some(snapshot) = out.snapshot {
                job.snapshots.push((hosted.core.key().clone(), snapshot));
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
                })
            });
            publications.push(Publication::<G> {
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

        let acked = match self.settings.durability {
            Durability::Sync if !job.is_empty() => {
                let (tx, rx) = oneshot::channel();
                job.ack = Some(tx);
                Some(rx)
            }
            _ => None,
        };
        if !job.is_empty() && !self.dispatch(job).await {
            tracing::warn!("store writer queue full; pausing this shard's matches until it drains");
        }
        if let Some(acked) = acked {
            // The writer only drops the sender if it stopped; publish anyway then.
            let _ = acked.await;
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
        self.stats.ticks.fetch_add(1, Relaxed);
        self.stats.record_tick(started.elapsed());
    }

    /// Hands a job to the writer without waiting for room. Returns false
    /// (keeping the job as backlog) when the writer queue is full.
    async fn dispatch(&mut self, job: WriteJob) -> bool {
        let Some(writer) = &self.writer else {
            return true;
        };
        let bytes = job.payload_bytes();
        match writer.try_send(job) {
            Ok(()) => {
                self.stats
                    .write_queued(bytes, writer.max_capacity() - writer.capacity());
                true
            }
            Err(mpsc::error::TrySendError::Full(job)) => {
                self.backlog = Some(job);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("store writer stopped; writes of this tick are lost");
                true
            }
        }
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
                ShardMsg::Fail { .. } => {}
            }
        }
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
                if let Some(batch) = hosted.core.poll_batch() {
                    final_job.batches.push(batch);
                }
                match hosted.core.snapshot() {
                    Ok(snapshot) => final_job
                        .snapshots
                        .push((hosted.core.key().clone(), snapshot)),
                    Err(error) => {
                        tracing::error!(key = %hosted.core.key(), %error, "final snapshot not stored; restore replays from the last one")
                    }
                }
            }
            // Waiting for room is right here: nothing ticks any more.
            if let Some(backlog) = self.backlog.take() {
                let bytes = backlog.payload_bytes();
                if writer.send(backlog).await.is_ok() {
                    self.stats
                        .write_queued(bytes, writer.max_capacity() - writer.capacity());
                }
            }
            let bytes = final_job.payload_bytes();
            if writer.send(final_job).await.is_ok() {
                self.stats
                    .write_queued(bytes, writer.max_capacity() - writer.capacity());
            }
        }
        if let Err(error) = (&mut self.writer_task).await {
            tracing::error!(%error, "store writer task failed");
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
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
    })
}

fn send_reply(reply: &ReplyTo, root: &Arc<str>, outcome: CommandOutcome) {
    // A client that does not read its replies loses them; the network layer
    // closes such clients. The tick never waits here.
    let _ = reply.tx.try_send(CommandReply {
        root: root.clone(),
        client_seq: reply.client_seq,
        outcome,
    });
}
