//! Per-connection rate limits: a token bucket, pure (the caller passes `now`).

use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, at most `capacity` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling `rate` per second up to `capacity`.
    pub fn new(rate: u32, capacity: u32, now: Instant) -> Self {
        let capacity = f64::from(capacity.max(1));
        Self {
            capacity,
            rate: f64::from(rate.max(1)),
            tokens: capacity,
            last: now,
        }
    }

    /// Takes one token; `false` when the bucket is empty (over the limit).
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until one token is available.
    pub fn wait_time(&self) -> Duration {
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_empties_the_bucket_and_time_refills_it() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10, 5, t0);
        assert!((0..5).all(|_| bucket.take(t0)));
        assert!(!bucket.take(t0));
        assert!(bucket.wait_time() > Duration::ZERO);
        assert!(bucket.take(t0 + Duration::from_millis(100)));
        assert!(!bucket.take(t0 + Duration::from_millis(100)));
        // Never more than the capacity, however long it waited.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| bucket.take(later)).count(), 5);
    }

    #[test]
    fn a_steady_rate_under_the_limit_always_passes() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(30, 30, t0);
        for i in 0..1000u64 {
            assert!(bucket.take(t0 + Duration::from_millis(i * 34)));
        }
    }
}
