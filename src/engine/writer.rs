//! The per-shard store writer: one task that persists a shard's ticks in order.
//!
//! A shard hands each tick's writes over as one [`WriteJob`]: every match's
//! append batch, the snapshots that fell due, the matches that ended. The
//! writer sends the batches in one `append` call, retries with exponential
//! backoff while the store is unavailable (jobs queue up behind it, bounded
//! by the channel), then stores snapshots and end marks. A batch the store
//! refuses for good (a conflict) is reported back so the shard pauses that
//! match instead of forking or dropping its log.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::engine::stats::ShardStats;
use crate::game::Tick;
use crate::store::{AppendBatch, MatchKey, Snapshot, Store, StoreError};

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
    /// Fired once the job is stored (sync durability, shutdown).
    pub ack: Option<oneshot::Sender<()>>,
}

impl WriteJob {
    pub(crate) fn is_empty(&self) -> bool {
        self.batches.is_empty()
            && self.snapshots.is_empty()
            && self.finished.is_empty()
            && self.ack.is_none()
    }
}

/// A match whose writes the store refused for good.
#[derive(Debug)]
pub(crate) struct WriteFailure {
    pub key: MatchKey,
    pub error: StoreError,
}

/// Runs until every sender of `jobs` is dropped and the queue is drained.
pub(crate) async fn run_writer<S: Store>(
    store: S,
    mut jobs: mpsc::Receiver<WriteJob>,
    failures: mpsc::Sender<WriteFailure>,
    stats: Arc<ShardStats>,
) {
    while let Some(job) = jobs.recv().await {
        stats.backlog_jobs.store(jobs.len() as u64, Relaxed);
        let mut refused: Vec<MatchKey> = Vec::new();
        if !job.batches.is_empty() {
            let results = append_with_retry(&store, &job.batches, &stats).await;
            for (batch, result) in job.batches.iter().zip(results) {
                match result {
                    Ok(_) => {
                        stats
                            .persisted_events
                            .fetch_add(batch.events.len() as u64, Relaxed);
                    }
                    Err(error) => {
                        tracing::error!(key = %batch.key, %error, tick = job.tick, "store refused a batch; pausing the match");
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
        for (key, snapshot) in &job.snapshots {
            if refused.contains(key) {
                continue;
            }
            retry_unavailable(&stats, || store.save_snapshot(key, snapshot)).await;
        }
        for key in &job.finished {
            if !refused.contains(key) {
                retry_unavailable(&stats, || store.finish(key)).await;
            }
        }
        if let Some(ack) = job.ack {
            let _ = ack.send(());
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
                if failures > 0 {
                    tracing::info!(failures, "store reachable again; backlog flushing in order");
                }
                return results;
            }
            Err(error) => {
                stats.append_failures.fetch_add(1, Relaxed);
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
async fn retry_unavailable<T, F, Fut>(stats: &ShardStats, mut write: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        match write().await {
            Ok(_) => return,
            Err(StoreError::Unavailable(error)) => {
                stats.append_failures.fetch_add(1, Relaxed);
                tracing::warn!(%error, ?backoff, "store write failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(error) => {
                tracing::error!(%error, "store write refused");
                return;
            }
        }
    }
}
