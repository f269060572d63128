//! The per-shard store writer: one task that persists a shard's ticks in order.
//!
//! A shard hands each tick's writes over as one [`WriteJob`]: every match's
//! append batch, the snapshots that fell due, the matches that ended. The
//! writer sends the batches in one `append` call, retries with exponential
//! backoff while the error is transient (jobs queue up behind it, bounded
//! in jobs by the channel and in bytes by the shard), then stores snapshots
//! and end marks.
//!
//! **Permanent errors** ([`StoreError::class`]): a batch the store refuses
//! for good (a conflict, a script error, out of memory, …) is reported back
//! once so the shard pauses that match, with the store's message, instead
//! of forking or dropping its log; the match's writes still queued are
//! dropped unsent, and the other matches go on. When a whole call of
//! several matches fails for good, its batches are sent one by one to find
//! the matches concerned. A snapshot or end mark refused for good is logged
//! and given up. Every such refusal counts in `permanent_errors`.
//!
//! **Repair.** Redis with `appendfsync everysec` can come back from a crash
//! holding less than it acknowledged. The writer keeps every match's
//! acknowledged events since the snapshot before its latest one; when a
//! batch finds the stored head *below* where it starts (or the match gone),
//! the writer re-appends the missing tail from memory, logs it, and goes
//! on; a snapshot that finds the match gone (the store restarted empty
//! between a tick's append and its snapshot) rebuilds it the same way
//! first. So a store crash loses nothing while the engine lives.
//!
//! **Trimming.** With [`EventRetention::TrimBelowSnapshot`], each stored
//! snapshot is followed by a trim of the events below it. The store never
//! trims past its stored snapshot, and a store that comes back holding an
//! older prefix of its writes (everysec) holds the older trim with it, so
//! repair still finds every event it needs from the stored head on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::admin::metrics as names;
use crate::engine::EventRetention;
use crate::engine::stats::ShardStats;
use crate::game::Tick;
use crate::store::{AppendBatch, Head, MatchKey, RecordedEvent, Snapshot, Store, StoreError};

/// Backoff bounds while the store is unavailable.
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Everything one shard tick asks the store to do.
#[derive(Debug, Default)]
pub(crate) struct WriteJob {
    pub tick: Tick,
    pub batches: Vec<AppendBatch>,
    pub snapshots: Vec<SnapshotWrite>,
    pub finished: Vec<MatchKey>,
    /// Matches handed over to another node after this job's writes.
    pub released: Vec<MatchKey>,
    /// Matches whose game code failed, with the reason.
    pub failed: Vec<(MatchKey, String)>,
    /// Encoded setups of matches hosted since the last job (kept for repair).
    pub setups: Vec<(MatchKey, Arc<[u8]>)>,
    /// The encoded bytes this job holds ([`WriteJob::seal`]): counted in
    /// [`ShardStats::queued_bytes`] while the writer has it.
    pub bytes: u64,
    /// Fired once the job is handled (sync durability, shutdown), with the
    /// matches whose writes the store refused. Dropped unfired only if the
    /// writer stopped.
    pub ack: Option<oneshot::Sender<Vec<MatchKey>>>,
}

impl WriteJob {
    pub(crate) fn is_empty(&self) -> bool {
        self.batches.is_empty()
            && self.snapshots.is_empty()
            && self.finished.is_empty()
            && self.failed.is_empty()
            && self.ack.is_none()
    }

    /// Counts the job's encoded bytes (event payloads and snapshot states)
    /// into [`WriteJob::bytes`]; call once, when the job is complete.
    pub(crate) fn seal(&mut self) {
        let events: usize = self
            .batches
            .iter()
            .flat_map(|batch| &batch.events)
            .map(|event| event.payload.len())
            .sum();
        let states: usize = self.snapshots.iter().map(|w| w.snapshot.state.len()).sum();
        self.bytes = (events + states) as u64;
    }
}

/// A snapshot to store, under the match's lease epoch (fleets only).
#[derive(Debug)]
pub(crate) struct SnapshotWrite {
    pub key: MatchKey,
    pub snapshot: Snapshot,
    pub epoch: Option<u64>,
}

/// A match whose writes the store refused for good.
#[derive(Debug)]
pub(crate) struct WriteFailure {
    pub key: MatchKey,
    pub error: StoreError,
}

/// The acknowledged events of one match the writer can still re-append.
#[derive(Debug, Default)]
struct RetainedLog {
    events: VecDeque<RecordedEvent>,
    /// The match's encoded setup, to re-create a match the store lost.
    setup: Arc<[u8]>,
    /// Sequences of the last two acknowledged snapshots (older first).
    snapshots: [u64; 2],
}

impl RetainedLog {
    fn retain(&mut self, events: &[RecordedEvent]) {
        self.events.extend(events.iter().cloned());
    }

    /// Keeps events from the snapshot before `sequence` on: enough to
    /// rebuild even if the store also lost its newest snapshot.
    fn snapshot_stored(&mut self, sequence: u64) {
        if sequence <= self.snapshots[1] {
            return;
        }
        self.snapshots = [self.snapshots[1], sequence];
        let keep_from = self.snapshots[0];
        while self.events.front().is_some_and(|e| e.sequence < keep_from) {
            self.events.pop_front();
        }
    }

    /// The retained events `from..to`, if all of them are still held.
    fn range(&self, from: u64, to: u64) -> Option<Vec<RecordedEvent>> {
        let first = self.events.front().map_or(to, |e| e.sequence);
        if from < first && from < to {
            return None;
        }
        Some(
            self.events
                .iter()
                .filter(|e| (from..to).contains(&e.sequence))
                .cloned()
                .collect(),
        )
    }
}

/// Runs until every sender of `jobs` is dropped and the queue is drained.
pub(crate) async fn run_writer<S: Store>(
    store: S,
    mut jobs: mpsc::Receiver<WriteJob>,
    failures: mpsc::UnboundedSender<WriteFailure>,
    stats: Arc<ShardStats>,
    retention: EventRetention,
) {
    let mut writer = Writer {
        store,
        failures,
        stats,
        retention,
        retained: HashMap::new(),
        refused: HashSet::new(),
    };
    while let Some(mut job) = jobs.recv().await {
        writer.stats.set_backlog(jobs.len());
        let ack = job.ack.take();
        let bytes = job.bytes;
        let refused = writer.write(job).await;
        writer.stats.queued_bytes.fetch_sub(bytes, Relaxed);
        writer.stats.publish_backlog_bytes();
        if let Some(ack) = ack {
            let _ = ack.send(refused);
        }
    }
}

/// The writer's state across jobs.
struct Writer<S: Store> {
    store: S,
    failures: mpsc::UnboundedSender<WriteFailure>,
    stats: Arc<ShardStats>,
    retention: EventRetention,
    /// Per match, the acknowledged events it can still re-append.
    retained: HashMap<MatchKey, RetainedLog>,
    /// Matches whose writes the store refused for good: the shard pauses
    /// them; writes of theirs still queued are dropped unsent.
    refused: HashSet<MatchKey>,
}

impl<S: Store> Writer<S> {
    /// Stores one job; returns the matches whose batches it did not store.
    async fn write(&mut self, job: WriteJob) -> Vec<MatchKey> {
        for (key, setup) in &job.setups {
            // Hosted (again): a refusal of an earlier hosting no longer holds.
            self.refused.remove(key);
            self.retained.entry(key.clone()).or_default().setup = setup.clone();
        }
        // A refused match's writes still queued are not stored either.
        let (skipped, batches): (Vec<AppendBatch>, Vec<AppendBatch>) = job
            .batches
            .into_iter()
            .partition(|batch| self.refused.contains(&batch.key));
        let mut refused_now: Vec<MatchKey> = skipped.into_iter().map(|b| b.key).collect();
        if !batches.is_empty() {
            let results = append_each(&self.store, &batches, &self.stats).await;
            for (batch, result) in batches.iter().zip(results) {
                let result = match result {
                    Err(error @ (StoreError::Conflict { .. } | StoreError::UnknownMatch(_))) => {
                        let retained = self.retained.get(&batch.key);
                        repair(&self.store, batch, error, retained, &self.stats).await
                    }
                    other => other,
                };
                match result {
                    Ok(_) => {
                        self.stats
                            .persisted_events
                            .fetch_add(batch.events.len() as u64, Relaxed);
                        metrics::counter!(names::EVENTS_APPENDED)
                            .increment(batch.events.len() as u64);
                        self.retained
                            .entry(batch.key.clone())
                            .or_default()
                            .retain(&batch.events);
                    }
                    Err(error @ StoreError::Fenced { .. }) => {
                        tracing::warn!(key = %batch.key, %error, tick = job.tick,
                            "write fenced: another node holds the match's lease now");
                        self.refuse(&batch.key, error);
                        refused_now.push(batch.key.clone());
                    }
                    Err(error) => {
                        tracing::error!(key = %batch.key, %error, class = %error.class(), tick = job.tick,
                            "store refused the match's writes; pausing the match");
                        self.refuse(&batch.key, error);
                        refused_now.push(batch.key.clone());
                    }
                }
            }
        }
        // Matches created together snapshot on the same tick: their
        // snapshots (and trims) go out concurrently, not one round trip each.
        let due: Vec<&SnapshotWrite> = job
            .snapshots
            .iter()
            .filter(|write| !self.refused.contains(&write.key))
            .collect();
        let (store, stats, retained) = (&self.store, &self.stats, &self.retained);
        let saved = join_all(due.iter().map(|write| async move {
            let log = retained.get(&write.key);
            retry_transient(stats, "snapshot", &write.key, || {
                save_or_rebuild(store, write, log, stats)
            })
            .await
        }))
        .await;
        let stored: Vec<&SnapshotWrite> = due
            .into_iter()
            .zip(saved)
            .filter_map(|(entry, saved)| saved.then_some(entry))
            .collect();
        for write in &stored {
            if let Some(log) = self.retained.get_mut(&write.key) {
                log.snapshot_stored(write.snapshot.sequence);
            }
        }
        if let EventRetention::TrimBelowSnapshot { keep_for } = &self.retention {
            join_all(
                stored
                    .iter()
                    .map(|write| trim(store, write, keep_for, stats)),
            )
            .await;
        }
        for key in &job.released {
            self.retained.remove(key);
        }
        for key in &job.finished {
            self.retained.remove(key);
            if !self.refused.contains(key) {
                retry_transient(stats, "end mark", key, || store.finish(key)).await;
            }
        }
        for (key, reason) in &job.failed {
            self.retained.remove(key);
            retry_transient(stats, "failure mark", key, || store.fail(key, reason)).await;
        }
        refused_now
    }

    /// Records that the store refused `key`'s writes for good and tells
    /// the shard (once per match).
    fn refuse(&mut self, key: &MatchKey, error: StoreError) {
        // Fenced is a fleet at work (the match moved), not a store fault.
        if !matches!(error, StoreError::Fenced { .. }) {
            self.stats.permanent_errors.fetch_add(1, Relaxed);
            self.stats.store_error(&error);
        }
        self.retained.remove(key);
        if self.refused.insert(key.clone()) {
            // The shard outlives its writer; if it is gone, nobody listens.
            let _ = self.failures.send(WriteFailure {
                key: key.clone(),
                error,
            });
        }
    }
}

/// Handles a batch the store refused. If the store is *behind* (it lost
/// acknowledged events, or the whole match), re-appends the missing tail
/// from the retained log plus the batch; a store *ahead* of the batch means
/// another writer, which is never overridden.
async fn repair<S: Store>(
    store: &S,
    batch: &AppendBatch,
    error: StoreError,
    retained: Option<&RetainedLog>,
    stats: &ShardStats,
) -> Result<Head, StoreError> {
    let stored_head = match &error {
        StoreError::Conflict {
            expected, found, ..
        } if expected < found => *expected,
        StoreError::UnknownMatch(_) => 0,
        _ => return Err(error),
    };
    let empty = RetainedLog::default();
    let Some(mut events) = retained
        .unwrap_or(&empty)
        .range(stored_head, batch.first_sequence)
    else {
        tracing::error!(key = %batch.key, stored_head, expected = batch.first_sequence,
            "store lost more acknowledged events than the engine retains");
        return Err(error);
    };
    if matches!(error, StoreError::UnknownMatch(_)) {
        let setup = retained.map(|log| log.setup.clone()).unwrap_or_default();
        match store.create(&batch.key, &setup).await {
            Ok(()) | Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let missing = events.len();
    events.extend(batch.events.iter().cloned());
    let repaired = AppendBatch {
        key: batch.key.clone(),
        first_sequence: stored_head,
        events,
        head_tick: batch.head_tick,
        epoch: batch.epoch,
        renew_lease: batch.renew_lease,
    };
    let result = append_each(store, std::slice::from_ref(&repaired), stats)
        .await
        .pop()
        .unwrap_or_else(|| {
            Err(StoreError::Corrupt {
                key: batch.key.to_string(),
                reason: "the store answered no result for the repaired batch".to_owned(),
            })
        });
    if result.is_ok() {
        stats.repaired_events.fetch_add(missing as u64, Relaxed);
        tracing::warn!(key = %batch.key, stored_head, missing,
            "store held less than it acknowledged; re-appended the missing events from memory");
    }
    result
}

/// Stores a snapshot. A store that lost the whole match (a restart
/// without persistence, a flush) answers [`StoreError::UnknownMatch`]:
/// the match is rebuilt from the retained log first, as an append would
/// ([`repair`]), and the snapshot saved on it. Without that, a snapshot
/// retried across such a restart would be given up as refused even
/// though the next append repairs the match.
async fn save_or_rebuild<S: Store>(
    store: &S,
    write: &SnapshotWrite,
    retained: Option<&RetainedLog>,
    stats: &ShardStats,
) -> Result<bool, StoreError> {
    let save = || store.save_fenced_snapshot(&write.key, &write.snapshot, write.epoch);
    match save().await {
        Err(error @ StoreError::UnknownMatch(_)) => {
            // The snapshot follows this job's append: the log it needs
            // ends at its sequence, so the rebuild appends nothing new.
            let head = AppendBatch {
                key: write.key.clone(),
                first_sequence: write.snapshot.sequence,
                events: Vec::new(),
                head_tick: write.snapshot.tick,
                epoch: write.epoch,
                renew_lease: None,
            };
            repair(store, &head, error, retained, stats).await?;
            save().await
        }
        other => other,
    }
}

/// Trims below a stored snapshot. Housekeeping: a failure is logged and
/// the next snapshot's trim covers these events too.
async fn trim<S: Store>(store: &S, write: &SnapshotWrite, keep_for: &[String], stats: &ShardStats) {
    let (key, below) = (&write.key, write.snapshot.sequence);
    match store.trim_fenced(key, below, keep_for, write.epoch).await {
        Ok(trimmed) => {
            stats.trimmed_events.fetch_add(trimmed.removed, Relaxed);
            if trimmed.retained_from < below {
                tracing::debug!(%key, below, retained_from = trimmed.retained_from,
                    "trimming held back by the snapshot or a handler's position");
            }
        }
        Err(error) => {
            stats.store_error(&error);
            tracing::warn!(%key, %error, "trimming events below the snapshot failed");
        }
    }
}

/// Appends `batches`, retrying transient failures. A permanent failure
/// of the whole call (say one match's key holding the wrong type fails the
/// whole script) is narrowed down: each batch is then sent on its own, so
/// only the matches concerned are refused. Batches a failed call stored
/// before stopping are found stored and succeed.
async fn append_each<S: Store>(
    store: &S,
    batches: &[AppendBatch],
    stats: &ShardStats,
) -> Vec<Result<Head, StoreError>> {
    match append_with_retry(store, batches, stats).await {
        Ok(results) => results,
        Err(error) if batches.len() == 1 => vec![Err(error)],
        Err(error) => {
            tracing::warn!(%error, batches = batches.len(),
                "store refused an append of several matches; sending their batches one by one");
            join_all(batches.iter().map(|batch| async move {
                let one = std::slice::from_ref(batch);
                match append_with_retry(store, one, stats).await {
                    Ok(mut results) if results.len() == 1 => results.remove(0),
                    Ok(results) => Err(StoreError::Corrupt {
                        key: batch.key.to_string(),
                        reason: format!("the store answered {} results for 1 batch", results.len()),
                    }),
                    Err(error) => Err(error),
                }
            }))
            .await
        }
    }
}

/// Sends one append call, retrying it with backoff while the error is
/// transient (the shard's write buffer bounds how long that can last
/// before its matches pause). Returns a permanent error.
async fn append_with_retry<S: Store>(
    store: &S,
    batches: &[AppendBatch],
    stats: &ShardStats,
) -> Result<Vec<Result<Head, StoreError>>, StoreError> {
    let mut backoff = FIRST_BACKOFF;
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        match store.append(batches).await {
            Ok(results) => {
                stats.record_append(started.elapsed());
                stats.appends.fetch_add(1, Relaxed);
                stats.store_reachable();
                if failures > 0 {
                    tracing::info!(failures, "store reachable again; backlog flushing in order");
                }
                return Ok(results);
            }
            Err(error) if error.is_transient() => {
                stats.append_failures.fetch_add(1, Relaxed);
                stats.store_retrying(&error);
                if failures == 0 || failures.is_power_of_two() {
                    tracing::warn!(%error, failures, ?backoff, "store append failed; retrying");
                }
                failures += 1;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(error) => {
                stats.append_failures.fetch_add(1, Relaxed);
                return Err(error);
            }
        }
    }
}

/// Retries a snapshot or end-mark write while the error is transient; a
/// permanent one is logged, counted and the write given up (both are
/// re-derivable: the next snapshot supersedes it, restore replays from the
/// log). Returns whether the write succeeded.
async fn retry_transient<T, F, Fut>(
    stats: &ShardStats,
    what: &str,
    key: &MatchKey,
    mut write: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        match write().await {
            Ok(_) => {
                stats.store_reachable();
                return true;
            }
            Err(error) if error.is_transient() => {
                stats.append_failures.fetch_add(1, Relaxed);
                stats.store_retrying(&error);
                tracing::warn!(%key, %error, ?backoff, "store write of a {what} failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(error) => {
                stats.permanent_errors.fetch_add(1, Relaxed);
                stats.store_error(&error);
                tracing::error!(%key, %error, class = %error.class(), "store refused a {what}; given up");
                return false;
            }
        }
    }
}
