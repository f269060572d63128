//! The wait a `ServerFull` refusal asks for: long enough that the clients
//! refused lately come back at no more than [`KNOCKS_PER_SECOND`] together.
//!
//! Every refused client comes back, and turning one away costs the node a
//! whole QUIC and TLS handshake. With a fixed wait, a node full for good
//! is knocked on by every client it refused, once per wait: beside a busy
//! loop on its core, 250 clients knocking every few seconds took a tenth of
//! the CPU a node of about 450 sessions had, pushed it into overload and
//! made it shed sessions it could have kept. So the wait grows with the
//! refusals: a client refused now is asked to wait the refusals of the last
//! wait over the knock budget (at least the configured wait, at most
//! [`MAX_RETRY_AFTER`], the protocol's longest). When `K` clients keep knocking, that settles at
//! `K / KNOCKS_PER_SECOND` seconds; once they stop, the wait falls back
//! within one wait.

use std::time::{Duration, Instant};

use crate::net::protocol::MAX_RETRY_AFTER;

/// Refusals per second the asked waits aim at, together.
pub const KNOCKS_PER_SECOND: u32 = 32;
/// Seconds of refusals remembered (one more than the longest wait).
const HISTORY_SECONDS: usize = MAX_RETRY_AFTER.as_secs() as usize + 1;

/// Counts refusals per second and turns them into the wait to ask for.
#[derive(Debug, Clone)]
pub struct RetryPacer {
    /// The shortest wait (`net.full_retry_ms`).
    base: Duration,
    start: Instant,
    /// Refusals per second, a ring indexed by second since `start`.
    counts: [u32; HISTORY_SECONDS],
    /// The second the newest count belongs to.
    newest: u64,
    /// The wait asked last.
    wait: Duration,
}

impl RetryPacer {
    /// A pacer that asks for at least `base`, counting from `start`.
    pub fn new(base: Duration, start: Instant) -> Self {
        Self {
            base,
            start,
            counts: [0; HISTORY_SECONDS],
            newest: 0,
            wait: base,
        }
    }

    /// Records one refusal at `now` and returns the wait it asks for.
    pub fn refuse(&mut self, now: Instant) -> Duration {
        self.advance(now);
        let slot = (self.newest % HISTORY_SECONDS as u64) as usize;
        self.counts[slot] = self.counts[slot].saturating_add(1);
        // The clients refused within the last wait come back within the
        // next one: spread them at the budget.
        let seconds = (self.wait.as_secs_f64().ceil() as usize).clamp(1, HISTORY_SECONDS);
        let recent: u64 = (0..seconds)
            .map(|back| {
                let second = (self.newest + HISTORY_SECONDS as u64 - back as u64) as usize;
                u64::from(self.counts[second % HISTORY_SECONDS])
            })
            .sum();
        let spread = Duration::from_secs_f64(recent as f64 / f64::from(KNOCKS_PER_SECOND));
        self.wait = spread.clamp(self.base, MAX_RETRY_AFTER.max(self.base));
        self.wait
    }

    /// Moves the ring to `now`'s second, clearing the seconds passed.
    fn advance(&mut self, now: Instant) {
        let second = now.saturating_duration_since(self.start).as_secs();
        if second <= self.newest {
            return;
        }
        let passed = (second - self.newest).min(HISTORY_SECONDS as u64);
        for step in 1..=passed {
            self.counts[((self.newest + step) % HISTORY_SECONDS as u64) as usize] = 0;
        }
        self.newest = second;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(2);

    fn at(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    #[test]
    fn a_few_refusals_ask_for_the_configured_wait() {
        let start = Instant::now();
        let mut pacer = RetryPacer::new(BASE, start);
        for i in 0..KNOCKS_PER_SECOND {
            assert_eq!(pacer.refuse(at(start, u64::from(i))), BASE);
        }
    }

    #[test]
    fn a_crowd_that_keeps_knocking_comes_back_at_about_the_budget() {
        let start = Instant::now();
        let mut pacer = RetryPacer::new(BASE, start);
        // 320 clients refused within the first second, each coming back
        // when asked, for two minutes of a node that stays full.
        let mut returns: std::collections::BinaryHeap<std::cmp::Reverse<u64>> =
            (0..320).map(|i| std::cmp::Reverse(i * 3)).collect();
        let mut knocks_per_second = vec![0u32; 120];
        let mut waits = Vec::new();
        while let Some(std::cmp::Reverse(millis)) = returns.pop() {
            if millis >= 120_000 {
                break;
            }
            let wait = pacer.refuse(at(start, millis));
            knocks_per_second[(millis / 1000) as usize] += 1;
            waits.push((millis, wait));
            returns.push(std::cmp::Reverse(millis + wait.as_millis() as u64));
        }
        // The first second asks the crowd to spread over ten seconds.
        assert_eq!(
            waits.iter().rev().find(|(m, _)| *m < 1000).map(|(_, w)| *w),
            Some(Duration::from_secs(10))
        );
        // From then on they come back at about the budget, not at 320 per
        // configured wait (160 a second).
        let settled = &knocks_per_second[30..];
        let mean = settled.iter().sum::<u32>() as f64 / settled.len() as f64;
        assert!(
            (f64::from(KNOCKS_PER_SECOND) * 0.5..=f64::from(KNOCKS_PER_SECOND) * 1.5)
                .contains(&mean),
            "{mean} knocks a second: {knocks_per_second:?}"
        );
        let busiest = settled.iter().max().copied().unwrap_or(0);
        assert!(busiest <= 3 * KNOCKS_PER_SECOND, "{knocks_per_second:?}");
    }

    #[test]
    fn the_wait_is_capped_and_falls_back_once_the_knocking_stops() {
        let start = Instant::now();
        let mut pacer = RetryPacer::new(BASE, start);
        let mut wait = BASE;
        for i in 0..10_000 {
            wait = pacer.refuse(at(start, i / 20));
        }
        assert_eq!(wait, MAX_RETRY_AFTER);
        // A refusal after a quiet spell as long as the wait asks for the
        // configured wait again.
        assert_eq!(pacer.refuse(at(start, 31_000)), BASE);
    }

    #[test]
    fn a_configured_wait_above_the_cap_is_kept() {
        let start = Instant::now();
        let long = Duration::from_secs(45);
        let mut pacer = RetryPacer::new(long, start);
        assert_eq!(pacer.refuse(start), long);
    }
}
