//! Fixed-rate tick pacing without drift, as a pure calculation.
//!
//! Tick `n` is due at `start + n · period`. The driver asks
//! [`TickSchedule::poll`] with the time elapsed since start; the answer is
//! either "run the next tick now" or "wait until this offset". A driver
//! that fell behind (a stalled step, a busy machine) gets tick after tick
//! with no wait until it has caught up, and every tick that started a full
//! period or more after it was due is counted as late.

use std::time::Duration;

use crate::game::Tick;

/// What the driver should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Run tick `tick` now; `late` if it is a period or more behind.
    Run {
        /// The tick to run.
        tick: Tick,
        /// Whether this run is a catch-up.
        late: bool,
    },
    /// Nothing is due before this offset from the start.
    WaitUntil(Duration),
}

/// Pacing state of one tick loop.
#[derive(Debug, Clone)]
pub struct TickSchedule {
    period: Duration,
    /// How far past its due time a step counts as late.
    late_after: Duration,
    next: Tick,
    late: u64,
}

impl TickSchedule {
    /// A schedule at `hz` ticks per second whose first tick is tick 1.
    pub fn new(hz: u32) -> Self {
        Self::phased(hz, 1)
    }

    /// A schedule of `phases` evenly spaced steps per tick at `hz` ticks
    /// per second (step 1 first). A step counts as late when it starts a
    /// whole tick period or more after it was due.
    pub fn phased(hz: u32, phases: u32) -> Self {
        let hz = hz.max(1);
        Self {
            period: Duration::from_secs(1) / hz.saturating_mul(phases.max(1)),
            late_after: Duration::from_secs(1) / hz,
            next: 1,
            late: 0,
        }
    }

    /// The time between two steps (ticks, or phases of a tick).
    pub fn period(&self) -> Duration {
        self.period
    }

    /// When tick `tick` is due, as an offset from the start.
    pub fn due_at(&self, tick: Tick) -> Duration {
        // In u128 nanoseconds: a u32 multiplier saturated after 2^32 ticks
        // (50 days at 1000 Hz), and from then on every tick looked due.
        let nanos = self.period.as_nanos().saturating_mul(u128::from(tick));
        let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
        Duration::new(secs, (nanos % 1_000_000_000) as u32)
    }

    /// Ticks that were due by `elapsed` (the count a drift-free loop has run).
    pub fn due_by(&self, elapsed: Duration) -> Tick {
        (elapsed.as_nanos() / self.period.as_nanos().max(1)) as Tick
    }

    /// Decides the next step at `elapsed` since start. A `Run` answer
    /// consumes that tick.
    pub fn poll(&mut self, elapsed: Duration) -> Due {
        let due = self.due_at(self.next);
        if elapsed < due {
            return Due::WaitUntil(due);
        }
        let tick = self.next;
        let late = elapsed >= due + self.late_after;
        if late {
            self.late += 1;
        }
        self.next += 1;
        Due::Run { tick, late }
    }

    /// Ticks run so far.
    pub fn ticks_run(&self) -> Tick {
        self.next - 1
    }

    /// Ticks that started a period or more after they were due.
    pub fn late_ticks(&self) -> u64 {
        self.late
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn run_until(schedule: &mut TickSchedule, elapsed: Duration) -> Vec<(Tick, bool)> {
        let mut ran = Vec::new();
        while let Due::Run { tick, late } = schedule.poll(elapsed) {
            ran.push((tick, late));
        }
        ran
    }

    #[test]
    fn on_time_ticks_wait_for_their_due_time() {
        let mut s = TickSchedule::new(50); // 20 ms
        assert_eq!(s.poll(Duration::ZERO), Due::WaitUntil(20 * MS));
        assert_eq!(
            s.poll(20 * MS),
            Due::Run {
                tick: 1,
                late: false
            }
        );
        assert_eq!(s.poll(21 * MS), Due::WaitUntil(40 * MS));
        assert_eq!(s.late_ticks(), 0);
    }

    #[test]
    fn a_stall_is_caught_up_and_counted_without_drift() {
        let mut s = TickSchedule::new(50);
        for n in 1..=5 {
            assert_eq!(run_until(&mut s, n * 20 * MS), vec![(u64::from(n), false)]);
        }
        // A step stalls for 210 ms: at 310 ms ticks 6..=15 are due.
        let caught_up = run_until(&mut s, 310 * MS);
        assert_eq!(caught_up.first(), Some(&(6, true)));
        assert_eq!(caught_up.len(), 10);
        // Ticks 6..=14 were a period or more behind; tick 15 was due at 300 ms.
        assert_eq!(s.late_ticks(), 9);
        assert_eq!(s.ticks_run(), s.due_by(310 * MS));
        // The next tick is still on the original grid.
        assert_eq!(s.poll(310 * MS), Due::WaitUntil(320 * MS));
    }

    #[test]
    fn phases_split_each_tick_evenly_and_lateness_is_judged_per_tick() {
        let mut s = TickSchedule::phased(50, 4); // 20 ms ticks, a phase every 5 ms
        assert_eq!(s.poll(Duration::ZERO), Due::WaitUntil(5 * MS));
        assert_eq!(run_until(&mut s, 20 * MS).len(), 4);
        // Three phases behind (15 ms) is less than a tick: not late.
        let behind = run_until(&mut s, 40 * MS);
        assert_eq!(behind.len(), 4);
        assert!(behind.iter().all(|(_, late)| !late));
        // A 30 ms stall makes the steps due a whole tick earlier late.
        let stalled = run_until(&mut s, 70 * MS);
        assert_eq!(stalled.len(), 6);
        assert_eq!(stalled.iter().filter(|(_, late)| *late).count(), 2);
        assert_eq!(s.ticks_run(), s.due_by(70 * MS));
    }

    #[test]
    fn tick_count_matches_elapsed_time_over_a_long_run() {
        let mut s = TickSchedule::new(30);
        let mut elapsed = Duration::ZERO;
        // Poll at an irregular 7 ms cadence for 10 simulated seconds.
        while elapsed < Duration::from_secs(10) {
            run_until(&mut s, elapsed);
            elapsed += 7 * MS;
        }
        run_until(&mut s, elapsed);
        assert_eq!(s.ticks_run(), s.due_by(elapsed));
        assert_eq!(s.late_ticks(), 0);
    }
}
