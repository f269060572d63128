//! Counters the shards keep and the demo, `serve` and benchmarks read.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hdrhistogram::Histogram;
use metrics::SharedString;

use crate::admin::metrics as names;
use crate::store::StoreError;

/// Live counters of one shard; cheap to update from its loop.
#[derive(Debug)]
pub struct ShardStats {
    pub(crate) matches: AtomicU64,
    pub(crate) ticks: AtomicU64,
    pub(crate) late_ticks: AtomicU64,
    pub(crate) match_ticks: AtomicU64,
    pub(crate) commands: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) events: AtomicU64,
    pub(crate) paused_matches: AtomicU64,
    pub(crate) failed_matches: AtomicU64,
    pub(crate) relocated_matches: AtomicU64,
    pub(crate) appends: AtomicU64,
    pub(crate) persisted_events: AtomicU64,
    pub(crate) append_failures: AtomicU64,
    pub(crate) backlog_jobs: AtomicU64,
    pub(crate) repaired_events: AtomicU64,
    pub(crate) trimmed_events: AtomicU64,
    /// Store writes refused for good (per match append, snapshot, end mark).
    pub(crate) permanent_errors: AtomicU64,
    /// Encoded bytes of the jobs handed to the writer and not yet stored.
    pub(crate) queued_bytes: AtomicU64,
    /// Encoded bytes of the job the shard holds back (no room in the queue).
    pub(crate) held_bytes: AtomicU64,
    /// 1 once the shard's writer task stopped (it panicked): nothing more
    /// is stored and every match of the shard is paused.
    pub(crate) writer_stopped: AtomicU64,
    /// Failed store calls since the last one that worked.
    pub(crate) store_failure_streak: AtomicU64,
    /// This shard's `shard` label in metrics.
    shard: SharedString,
    /// Tick durations in microseconds.
    tick_micros: Mutex<Histogram<u64>>,
    /// Store append round trips in microseconds.
    append_micros: Mutex<Histogram<u64>>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits; these bounds are valid.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds")
}

fn record(h: &Mutex<Histogram<u64>>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    h.lock()
        .unwrap_or_else(|e| e.into_inner())
        .saturating_record(micros.max(1));
}

impl Default for ShardStats {
    fn default() -> Self {
        Self {
            matches: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            late_ticks: AtomicU64::new(0),
            match_ticks: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            events: AtomicU64::new(0),
            paused_matches: AtomicU64::new(0),
            relocated_matches: AtomicU64::new(0),
            failed_matches: AtomicU64::new(0),
            appends: AtomicU64::new(0),
            persisted_events: AtomicU64::new(0),
            append_failures: AtomicU64::new(0),
            backlog_jobs: AtomicU64::new(0),
            repaired_events: AtomicU64::new(0),
            trimmed_events: AtomicU64::new(0),
            permanent_errors: AtomicU64::new(0),
            queued_bytes: AtomicU64::new(0),
            held_bytes: AtomicU64::new(0),
            writer_stopped: AtomicU64::new(0),
            store_failure_streak: AtomicU64::new(0),
            shard: SharedString::const_str("0"),
            tick_micros: Mutex::new(histogram()),
            append_micros: Mutex::new(histogram()),
        }
    }
}

impl ShardStats {
    /// Counters of shard `index` (its `shard` label in metrics).
    pub(crate) fn for_shard(index: usize) -> Self {
        Self {
            shard: SharedString::from(std::sync::Arc::<str>::from(index.to_string())),
            ..Self::default()
        }
    }

    /// This shard's `shard` label value.
    pub(crate) fn shard_label(&self) -> SharedString {
        self.shard.clone()
    }

    pub(crate) fn record_tick(&self, took: Duration) {
        record(&self.tick_micros, took);
        metrics::histogram!(names::TICK_DURATION, "shard" => self.shard_label())
            .record(took.as_secs_f64());
        metrics::gauge!(names::MATCHES_LIVE, "shard" => self.shard_label())
            .set(self.matches.load(Relaxed) as f64);
    }

    pub(crate) fn record_append(&self, took: Duration) {
        record(&self.append_micros, took);
        metrics::histogram!(names::APPEND_DURATION).record(took.as_secs_f64());
    }

    /// A store call failed and will be retried: the writer's failure streak grows.
    pub(crate) fn store_retrying(&self, error: &StoreError) {
        self.store_failure_streak.fetch_add(1, Relaxed);
        self.store_error(error);
    }

    /// A store call failed for good (counted, no streak: the store answered).
    pub(crate) fn store_error(&self, error: &StoreError) {
        metrics::counter!(names::STORE_ERRORS, "class" => names::store_error_class(error))
            .increment(1);
    }

    /// A store call worked: any failure streak is over.
    pub(crate) fn store_reachable(&self) {
        self.store_failure_streak.store(0, Relaxed);
    }

    /// Publishes the bytes waiting for the store (queued for the writer
    /// plus the job the shard holds back) as the backlog gauge.
    pub(crate) fn publish_backlog_bytes(&self) {
        let bytes = self.queued_bytes.load(Relaxed) + self.held_bytes.load(Relaxed);
        metrics::gauge!(names::WRITER_BACKLOG_BYTES, "shard" => self.shard_label())
            .set(bytes as f64);
    }

    /// The writer took a job off its queue; `queued` jobs wait behind it.
    pub(crate) fn set_backlog(&self, queued: usize) {
        self.backlog_jobs.store(queued as u64, Relaxed);
        metrics::gauge!(names::WRITER_BACKLOG_TICKS, "shard" => self.shard_label())
            .set(queued as f64);
    }
}

/// A point-in-time sum over all shards.
#[derive(Debug, Clone)]
pub struct EngineStats {
    /// Matches hosted now.
    pub matches: u64,
    /// Shard ticks run (each shard ticks all its matches once per tick).
    pub ticks: u64,
    /// Shard ticks that started a period or more after they were due.
    pub late_ticks: u64,
    /// Match ticks run (one per match per shard tick).
    pub match_ticks: u64,
    /// Commands that reached a match.
    pub commands: u64,
    /// Commands the game refused.
    pub rejected: u64,
    /// Commands dropped because a queue was full.
    pub dropped: u64,
    /// Events applied.
    pub events: u64,
    /// Matches paused because their writes could not be stored (refused
    /// for good, or their shard's writer stopped); they stay paused.
    pub paused_matches: u64,
    /// Matches ended because their game code failed (a panic).
    pub failed_matches: u64,
    /// Matches no longer hosted because another node took their lease
    /// over (a write or renewal was fenced).
    pub relocated_matches: u64,
    /// Store writes refused for good ([`ErrorClass::Permanent`](crate::store::ErrorClass)):
    /// per match append, snapshot or end mark.
    pub permanent_errors: u64,
    /// Shards whose store writer stopped (panicked): their matches are
    /// paused and nothing of theirs is stored any more. Not ready.
    pub dead_writers: u64,
    /// Store append calls that succeeded.
    pub appends: u64,
    /// Events the store acknowledged.
    pub persisted_events: u64,
    /// Store append calls that failed and were retried.
    pub append_failures: u64,
    /// Write jobs waiting for the store.
    pub backlog_jobs: u64,
    /// Encoded bytes (events and snapshot states) waiting for the store,
    /// bounded per shard by `write_queue_bytes`.
    pub backlog_bytes: u64,
    /// Events re-appended because the store had lost them.
    pub repaired_events: u64,
    /// Events removed from the store below snapshots
    /// ([`EventRetention::TrimBelowSnapshot`](crate::engine::EventRetention)).
    pub trimmed_events: u64,
    /// Tick durations (µs), merged over shards.
    pub tick_micros: Histogram<u64>,
    /// Append round trips (µs), merged over shards.
    pub append_micros: Histogram<u64>,
}

impl EngineStats {
    pub(crate) fn sum<'a>(shards: impl IntoIterator<Item = &'a ShardStats>) -> Self {
        let mut total = Self {
            matches: 0,
            ticks: 0,
            late_ticks: 0,
            match_ticks: 0,
            commands: 0,
            rejected: 0,
            dropped: 0,
            events: 0,
            paused_matches: 0,
            relocated_matches: 0,
            failed_matches: 0,
            permanent_errors: 0,
            dead_writers: 0,
            appends: 0,
            persisted_events: 0,
            append_failures: 0,
            backlog_jobs: 0,
            backlog_bytes: 0,
            repaired_events: 0,
            trimmed_events: 0,
            tick_micros: histogram(),
            append_micros: histogram(),
        };
        for s in shards {
            total.matches += s.matches.load(Relaxed);
            total.ticks += s.ticks.load(Relaxed);
            total.late_ticks += s.late_ticks.load(Relaxed);
            total.match_ticks += s.match_ticks.load(Relaxed);
            total.commands += s.commands.load(Relaxed);
            total.rejected += s.rejected.load(Relaxed);
            total.dropped += s.dropped.load(Relaxed);
            total.events += s.events.load(Relaxed);
            total.paused_matches += s.paused_matches.load(Relaxed);
            total.relocated_matches += s.relocated_matches.load(Relaxed);
            total.failed_matches += s.failed_matches.load(Relaxed);
            total.permanent_errors += s.permanent_errors.load(Relaxed);
            total.dead_writers += s.writer_stopped.load(Relaxed);
            total.appends += s.appends.load(Relaxed);
            total.persisted_events += s.persisted_events.load(Relaxed);
            total.append_failures += s.append_failures.load(Relaxed);
            total.backlog_jobs += s.backlog_jobs.load(Relaxed);
            total.backlog_bytes += s.queued_bytes.load(Relaxed) + s.held_bytes.load(Relaxed);
            total.repaired_events += s.repaired_events.load(Relaxed);
            total.trimmed_events += s.trimmed_events.load(Relaxed);
            for (into, from) in [
                (&mut total.tick_micros, &s.tick_micros),
                (&mut total.append_micros, &s.append_micros),
            ] {
                let from = from.lock().unwrap_or_else(|e| e.into_inner());
                // Same bounds on both sides, so adding cannot fail.
                let _ = into.add(&*from);
            }
        }
        total
    }

    /// A tick-time percentile in milliseconds.
    pub fn tick_ms(&self, quantile: f64) -> f64 {
        self.tick_micros.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// An append-latency percentile in milliseconds.
    pub fn append_ms(&self, quantile: f64) -> f64 {
        self.append_micros.value_at_quantile(quantile) as f64 / 1000.0
    }
}
