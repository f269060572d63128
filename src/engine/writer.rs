//! The per-shard store writer: one task that persists a shard's ticks in order.
//!
//! A shard hands each tick's writes over as one [`WriteJob`]: every match's
//! append batch, the snapshots that fell due, the matches that ended. The
//! writer sends the batches in one `append` call, retries with exponential
//! backoff while the store is unavailable (jobs queue up behind it, bounded
//! by the channel), then stores snapshots and end marks. A batch the store
//! refuses for good (a conflict) is reported back so the shard pauses that
//! match instead of forking or dropping its log.
//!
//! **Repair.** Redis with `appendfsync everysec` can come back from a crash
//! holding less than it acknowledged. The writer keeps every match's
//! acknowledged events since the snapshot before its latest one; when a
//! batch finds the stored head *below* where it starts (or the match gone),
//! the writer re-appends the missing tail from memory, logs it, and goes
//! on. So a store crash loses nothing while the engine lives.
//!
//! **Trimming.** With [`EventRetention::TrimBelowSnapshot`], each stored
//! snapshot is followed by a trim of the events below it. The store never
//! trims past its stored snapshot, and a store that comes back holding an
//! older prefix of its writes (everysec) holds the older trim with it, so
//! repair still finds every event it needs from the stored head on.

use std::collections::{HashMap, VecDeque};
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
    pub snapshots: Vec<(MatchKey, Snapshot)>,
    pub finished: Vec<MatchKey>,
    /// Matches whose game code failed, with the reason.
    pub failed: Vec<(MatchKey, String)>,
    /// Encoded setups of matches hosted since the last job (kept for repair).
    pub setups: Vec<(MatchKey, Arc<[u8]>)>,
    /// Fired once the job is stored (sync durability, shutdown).
    pub ack: Option<oneshot::Sender<()>>,
}

impl WriteJob {
    pub(crate) fn is_empty(&self) -> bool {
        self.batches.is_empty()
            && self.snapshots.is_empty()
            && self.finished.is_empty()
            && self.failed.is_empty()
            && self.ack.is_none()
    }

    /// Bytes of the events and snapshots this job stores.
    pub(crate) fn payload_bytes(&self) -> u64 {
        let events = self.batches.iter().flat_map(|b| &b.events);
        let snapshots = self.snapshots.iter().map(|(_, s)| s.state.len());
        (events.map(|e| e.payload.len()).sum::<usize>() + snapshots.sum::<usize>()) as u64
    }
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
    failures: mpsc::Sender<WriteFailure>,
    stats: Arc<ShardStats>,
    retention: EventRetention,
) {
    let mut retained: HashMap<MatchKey, RetainedLog> = HashMap::new();
    while let Some(job) = jobs.recv().await {
        stats.set_backlog(jobs.len());
        let job_bytes = job.payload_bytes();
        for (key, setup) in &job.setups {
            retained.entry(key.clone()).or_default().setup = setup.clone();
        }
        let mut refused: Vec<MatchKey> = Vec::new();
        if !job.batches.is_empty() {
            let results = append_with_retry(&store, &job.batches, &stats).await;
            for (batch, result) in job.batches.iter().zip(results) {
                let result = match result {
                    Err(error @ (StoreError::Conflict { .. } | StoreError::UnknownMatch(_))) => {
                        repair(&store, batch, error, retained.get(&batch.key), &stats).await
                    }
                    other => other,
                };
                match result {
                    Ok(_) => {
                        stats
                            .persisted_events
                            .fetch_add(batch.events.len() as u64, Relaxed);
                        metrics::counter!(names::EVENTS_APPENDED)
                            .increment(batch.events.len() as u64);
                        retained
                            .entry(batch.key.clone())
                            .or_default()
                            .retain(&batch.events);
                    }
                    Err(error) => {
                        tracing::error!(key = %batch.key, %error, tick = job.tick, "store refused a batch; pausing the match");
                        stats.store_error(&error);
                        refused.push(batch.key.clone());
                        let _ = failures
                            .send(WriteFailure {
                                key: batch.key.clone(),
                                error,
                            })
                            .await;
                    }
                }
            }
        }
        // Matches created together snapshot on the same tick: their
        // snapshots (and trims) go out concurrently, not one round trip each.
        let due: Vec<&(MatchKey, Snapshot)> = job
            .snapshots
            .iter()
            .filter(|(key, _)| !refused.contains(key))
            .collect();
        let first_tries = join_all(
            due.iter()
                .map(|(key, snapshot)| store.save_snapshot(key, snapshot)),
        )
        .await;
        let mut stored = Vec::with_capacity(due.len());
        for (entry, first_try) in due.into_iter().zip(first_tries) {
            let (key, snapshot) = entry;
            let saved = match first_try {
                Ok(_) => true,
                // The store is down: retry these one by one, with backoff.
                Err(StoreError::Unavailable(_)) => {
                    retry_unavailable(&stats, || store.save_snapshot(key, snapshot)).await
                }
                Err(error) => {
                    tracing::error!(%key, %error, "store refused a snapshot");
                    stats.store_error(&error);
                    false
                }
            };
            if saved {
                stored.push(entry);
            }
        }
        for (key, snapshot) in &stored {
            if let Some(log) = retained.get_mut(key) {
                log.snapshot_stored(snapshot.sequence);
            }
        }
        if let EventRetention::TrimBelowSnapshot { keep_for } = &retention {
            join_all(
                stored
                    .iter()
                    .map(|(key, snapshot)| trim(&store, key, snapshot.sequence, keep_for, &stats)),
            )
            .await;
        }
        for key in &job.finished {
            retained.remove(key);
            if !refused.contains(key) {
                retry_unavailable(&stats, || store.finish(key)).await;
            }
        }
        for (key, reason) in &job.failed {
            retained.remove(key);
            retry_unavailable(&stats, || store.fail(key, reason)).await;
        }
        if let Some(ack) = job.ack {
            let _ = ack.send(());
        }
        stats.write_done(job_bytes);
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
    };
    let result = append_with_retry(store, std::slice::from_ref(&repaired), stats)
        .await
        .pop()
        .unwrap_or_else(|| Err(StoreError::Unavailable("empty append reply".into())));
    if result.is_ok() {
        stats.repaired_events.fetch_add(missing as u64, Relaxed);
        tracing::warn!(key = %batch.key, stored_head, missing,
            "store held less than it acknowledged; re-appended the missing events from memory");
    }
    result
}

/// Trims below a stored snapshot. Housekeeping: a failure is logged and
/// the next snapshot's trim covers these events too.
async fn trim<S: Store>(
    store: &S,
    key: &MatchKey,
    below: u64,
    keep_for: &[String],
    stats: &ShardStats,
) {
    match store.trim(key, below, keep_for).await {
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

async fn append_with_retry<S: Store>(
    store: &S,
    batches: &[AppendBatch],
    stats: &ShardStats,
) -> Vec<Result<crate::store::Head, StoreError>> {
    let mut backoff = FIRST_BACKOFF;
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        match store.append(batches.to_vec()).await {
            Ok(results) => {
                stats.record_append(started.elapsed());
                stats.appends.fetch_add(1, Relaxed);
                stats.store_reachable();
                if failures > 0 {
                    tracing::info!(failures, "store reachable again; backlog flushing in order");
                }
                return results;
            }
            Err(error) => {
                stats.append_failures.fetch_add(1, Relaxed);
                stats.store_retrying(&error);
                if failures == 0 || failures.is_power_of_two() {
                    tracing::warn!(%error, failures, ?backoff, "store append failed; retrying");
                }
                failures += 1;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Retries a snapshot or end-mark write while the store is unavailable;
/// any other error is logged and the write given up (both are re-derivable:
/// the next snapshot supersedes it, restore replays from the log).
/// Returns whether the write succeeded.
async fn retry_unavailable<T, F, Fut>(stats: &ShardStats, mut write: F) -> bool
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
            Err(error @ StoreError::Unavailable(_)) => {
                stats.append_failures.fetch_add(1, Relaxed);
                stats.store_retrying(&error);
                tracing::warn!(%error, ?backoff, "store write failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(error) => {
                stats.store_error(&error);
                tracing::error!(%error, "store write refused");
                return false;
            }
        }
    }
}
