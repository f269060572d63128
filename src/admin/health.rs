//! Liveness and readiness of a node, as `/healthz` and `/readyz` report them.
//!
//! [`Health`] is a cheap handle over the engine's shard counters and two
//! flags the server sets: [`Health::set_restored`] once the live matches
//! are restored, [`Health::set_draining`] when shutdown begins. It owns no
//! task: the counters are sampled when a probe asks (and by the admin
//! listener once a second, so that "moved within the last seconds" holds
//! between probes).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::engine::{Engine, ShardStats};
use crate::game::Game;
use crate::store::Store;

/// How long the tick counters may stand still before `/healthz` fails.
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(5);

/// Failed store calls in a row after which a writer counts as cut off
/// from the store (its backoff has then waited 20 + 40 ms: a blip is not a
/// streak).
pub const STORE_FAILURE_STREAK: u64 = 3;

/// The outcome of a probe: empty when healthy, else one line per failed
/// condition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// What is wrong, one human-readable line each.
    pub failures: Vec<String>,
}

impl Verdict {
    /// Whether every condition held.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Liveness and readiness of one engine; clone it freely.
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shards: Vec<ShardProgress>,
    write_queue_ticks: u64,
    restored: AtomicBool,
    draining: AtomicBool,
    stall_after_ms: AtomicU64,
    /// What "now" is measured from.
    epoch: Instant,
}

/// One shard's counters and when its tick counter last moved.
#[derive(Debug)]
struct ShardProgress {
    stats: Arc<ShardStats>,
    seen_ticks: AtomicU64,
    moved_at_ms: AtomicU64,
}

/// What readiness is decided from, per shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WriterView {
    failure_streak: u64,
    backlog_ticks: u64,
    /// The shard's writer task stopped: nothing of it is stored any more.
    stopped: bool,
    /// Writes the store refused for good (their matches are paused).
    refused: u64,
}

impl Health {
    /// Health of `engine`: not restored, not draining, ticking as of now.
    pub fn new<G: Game, S: Store>(engine: &Engine<G, S>) -> Self {
        let write_queue_ticks = engine.settings().write_queue_ticks.max(1) as u64;
        Self::over_shards(engine.shard_stats().to_vec(), write_queue_ticks)
    }

    pub(crate) fn over_shards(shards: Vec<Arc<ShardStats>>, write_queue_ticks: u64) -> Self {
        let shards = shards
            .into_iter()
            .map(|stats| ShardProgress {
                seen_ticks: AtomicU64::new(stats.ticks.load(Relaxed)),
                moved_at_ms: AtomicU64::new(0),
                stats,
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                shards,
                write_queue_ticks,
                restored: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                stall_after_ms: AtomicU64::new(DEFAULT_STALL_AFTER.as_millis() as u64),
                epoch: Instant::now(),
            }),
        }
    }

    /// Marks the node restored: every live match it found is hosted.
    pub fn set_restored(&self) {
        self.inner.restored.store(true, Relaxed);
    }

    /// Marks the node draining: it is shutting down and takes no new work.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Relaxed);
        metrics::gauge!(super::metrics::DRAINING).set(1.0);
    }

    /// Whether [`Health::set_draining`] was called.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Relaxed)
    }

    /// Changes how long the tick counters may stand still before the node
    /// counts as not ticking (default [`DEFAULT_STALL_AFTER`]).
    pub fn set_stall_after(&self, after: Duration) {
        let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        self.inner.stall_after_ms.store(ms, Relaxed);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Notes which shards ticked since the last sample.
    pub fn sample(&self) {
        let now = self.now_ms();
        for shard in &self.inner.shards {
            let ticks = shard.stats.ticks.load(Relaxed);
            if shard.seen_ticks.swap(ticks, Relaxed) != ticks {
                shard.moved_at_ms.store(now, Relaxed);
            }
        }
    }

    /// Liveness: every shard's tick counter moved within the stall bound.
    /// A draining node counts as live: its shards stop on purpose, and a
    /// restart would cut its final flush short.
    pub fn live(&self) -> Verdict {
        self.sample();
        if self.is_draining() {
            return Verdict::default();
        }
        let now = self.now_ms();
        let stall_after = self.inner.stall_after_ms.load(Relaxed);
        let failures = self
            .inner
            .shards
            .iter()
            .enumerate()
            .filter_map(|(index, shard)| {
                let still_for = now.saturating_sub(shard.moved_at_ms.load(Relaxed));
                (still_for > stall_after).then(|| {
                    format!(
                        "shard {index} has not ticked for {:.1} s",
                        still_for as f64 / 1000.0
                    )
                })
            })
            .collect();
        Verdict { failures }
    }

    /// Readiness: restored, the store reachable (no writer in a failure
    /// streak), every write backlog under its bound, not draining.
    pub fn ready(&self) -> Verdict {
        let writers: Vec<WriterView> = self
            .inner
            .shards
            .iter()
            .map(|shard| WriterView {
                failure_streak: shard.stats.store_failure_streak.load(Relaxed),
                backlog_ticks: shard.stats.backlog_jobs.load(Relaxed),
                stopped: shard.stats.writer_stopped.load(Relaxed) > 0,
                refused: shard.stats.permanent_errors.load(Relaxed),
            })
            .collect();
        readiness(
            self.inner.restored.load(Relaxed),
            self.inner.draining.load(Relaxed),
            &writers,
            self.inner.write_queue_ticks,
        )
    }
}

fn readiness(
    restored: bool,
    draining: bool,
    writers: &[WriterView],
    write_queue_ticks: u64,
) -> Verdict {
    let mut failures = Vec::new();
    if !restored {
        failures.push("not restored: live matches are still being restored".to_owned());
    }
    let cut_off: Vec<String> = writers
        .iter()
        .enumerate()
        .filter(|(_, w)| w.failure_streak >= STORE_FAILURE_STREAK)
        .map(|(i, w)| format!("shard {i} ({} failures in a row)", w.failure_streak))
        .collect();
    if !cut_off.is_empty() {
        failures.push(format!("store unreachable: {}", cut_off.join(", ")));
    }
    let full: Vec<String> = writers
        .iter()
        .enumerate()
        .filter(|(_, w)| w.backlog_ticks >= write_queue_ticks)
        .map(|(i, w)| format!("shard {i} ({} ticks)", w.backlog_ticks))
        .collect();
    if !full.is_empty() {
        failures.push(format!(
            "write backlog at its bound of {write_queue_ticks} ticks: {}",
            full.join(", ")
        ));
    }
    let stopped: Vec<String> = writers
        .iter()
        .enumerate()
        .filter(|(_, w)| w.stopped)
        .map(|(i, _)| format!("shard {i}"))
        .collect();
    if !stopped.is_empty() {
        failures.push(format!(
            "store writer stopped (its matches are paused): {}",
            stopped.join(", ")
        ));
    }
    let refused: u64 = writers.iter().map(|w| w.refused).sum();
    if refused > 0 {
        failures.push(format!(
            "the store refused {refused} writes for good (permanent errors; their matches are \
             paused, the log names the Redis error)"
        ));
    }
    if draining {
        failures.push("draining: the node is shutting down".to_owned());
    }
    Verdict { failures }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FINE: WriterView = WriterView {
        failure_streak: 0,
        backlog_ticks: 0,
        stopped: false,
        refused: 0,
    };

    #[test]
    fn ready_when_restored_reachable_under_bound_and_not_draining() {
        assert!(readiness(true, false, &[FINE, FINE], 10).is_ok());
    }

    #[test]
    fn every_failed_condition_is_listed() {
        let streak = WriterView {
            failure_streak: STORE_FAILURE_STREAK,
            ..FINE
        };
        let full = WriterView {
            backlog_ticks: 10,
            ..FINE
        };
        let broken = WriterView {
            stopped: true,
            refused: 2,
            ..FINE
        };
        let verdict = readiness(false, true, &[streak, full, broken], 10);
        let text = verdict.failures.join("\n");
        assert_eq!(verdict.failures.len(), 6, "{text}");
        assert!(text.contains("not restored"), "{text}");
        assert!(text.contains("store unreachable: shard 0"), "{text}");
        assert!(text.contains("bound of 10 ticks: shard 1"), "{text}");
        assert!(
            text.contains("store writer stopped (its matches are paused): shard 2"),
            "{text}"
        );
        assert!(text.contains("refused 2 writes for good"), "{text}");
        assert!(text.contains("draining"), "{text}");
    }

    #[test]
    fn a_short_blip_or_a_backlog_under_the_bound_is_still_ready() {
        let blip = WriterView {
            failure_streak: STORE_FAILURE_STREAK - 1,
            backlog_ticks: 9,
            ..FINE
        };
        assert!(readiness(true, false, &[blip], 10).is_ok());
    }

    #[test]
    fn a_shard_whose_ticks_stand_still_is_not_live() {
        let stats = Arc::new(ShardStats::default());
        let health = Health::over_shards(vec![stats.clone()], 10);
        assert!(health.live().is_ok(), "live at first");
        health.set_stall_after(Duration::ZERO);
        // Moving ticks keep it live even with no slack at all.
        stats.ticks.fetch_add(1, Relaxed);
        assert!(health.live().is_ok());
        // Wait until the clock has moved past the last sample.
        let sampled = health.now_ms();
        while health.now_ms() == sampled {
            std::thread::yield_now();
        }
        let verdict = health.live();
        assert_eq!(verdict.failures.len(), 1, "{verdict:?}");
        assert!(verdict.failures[0].starts_with("shard 0 has not ticked"));
        health.set_draining();
        assert!(health.live().is_ok(), "draining shards stop on purpose");
    }
}
