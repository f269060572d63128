//! How late states leave: the time from a tick's publication until its
//! fan-out handed the state to the last connection of the match, collected
//! without locks by the fan-outs and read by the sampler.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Buckets of one millisecond; the last one holds everything from
/// `BUCKETS - 1` ms up.
const BUCKETS: usize = 64;

/// The send delays of the fan-out passes since the last [`SendDelays::take_p99`].
#[derive(Debug)]
pub struct SendDelays {
    /// Passes per whole millisecond of delay.
    buckets: [AtomicU64; BUCKETS],
}

impl Default for SendDelays {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl SendDelays {
    /// Records one fan-out pass that finished `delay` after its tick was
    /// published.
    pub fn record(&self, delay: Duration) {
        let millis = usize::try_from(delay.as_millis()).unwrap_or(usize::MAX);
        self.buckets[millis.min(BUCKETS - 1)].fetch_add(1, Relaxed);
    }

    /// The 99th percentile of the passes recorded since the last call, as
    /// the upper bound of its millisecond (`Duration::ZERO` when none were),
    /// and starts counting afresh.
    pub fn take_p99(&self) -> Duration {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.swap(0, Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Duration::ZERO;
        }
        // The smallest delay at or under which 99 % of the passes finished.
        let wanted = total - total / 100;
        let mut seen = 0;
        for (millis, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= wanted {
                return Duration::from_millis(millis as u64 + 1);
            }
        }
        Duration::from_millis(BUCKETS as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_the_upper_bound_of_the_millisecond_most_passes_finish_in() {
        let delays = SendDelays::default();
        assert_eq!(delays.take_p99(), Duration::ZERO, "no pass, no delay");
        for _ in 0..99 {
            delays.record(Duration::from_micros(1_500));
        }
        delays.record(Duration::from_millis(40));
        assert_eq!(delays.take_p99(), Duration::from_millis(2));
        // Taken: the next window starts empty.
        assert_eq!(delays.take_p99(), Duration::ZERO);
        // Two late passes of a hundred are past the 99th percentile.
        for _ in 0..98 {
            delays.record(Duration::from_micros(300));
        }
        delays.record(Duration::from_millis(12));
        delays.record(Duration::from_secs(3));
        assert_eq!(delays.take_p99(), Duration::from_millis(13));
        // Beyond the last bucket, the delay reads as its bound.
        delays.record(Duration::from_secs(3));
        assert_eq!(delays.take_p99(), Duration::from_millis(BUCKETS as u64));
    }
}
