//! CPU demand: the time the process's threads ran plus the time they were
//! ready to run but waited for a CPU, from Linux's per-thread `schedstat`.
//!
//! A process alone on its cores waits for almost nothing, and its demand is
//! its CPU time. A process that shares its cores (a noisy neighbour, a
//! container's CPU quota) waits: beside one busy loop at the same priority
//! it waits about as long as it runs, whatever its load, so its demand is
//! twice its CPU time and reaches 100 % exactly when it gets no more than
//! its share. Its CPU time alone stops at that share, and its runtime's
//! busy time (measured while a worker is awake, not while it waits to be
//! woken) stays near it until the node is already saturated.

use std::collections::HashMap;
use std::time::Duration;

/// Where the process's threads are listed.
const TASKS: &str = "/proc/self/task";

/// One thread's cumulative times, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadTimes {
    /// Time on a CPU.
    pub running: u64,
    /// Time ready to run, waiting on a run queue.
    pub waiting: u64,
}

impl ThreadTimes {
    /// Parses a `schedstat` line: running and waiting nanoseconds, then
    /// the number of time slices.
    pub fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split_whitespace().map(str::parse::<u64>);
        let running = fields.next()?.ok()?;
        let waiting = fields.next()?.ok()?;
        Some(Self { running, waiting })
    }

    fn since(self, before: Self) -> u64 {
        self.running.saturating_sub(before.running) + self.waiting.saturating_sub(before.waiting)
    }
}

/// Reads the process's CPU demand since the last reading.
#[derive(Debug, Default)]
pub struct DemandMeter {
    threads: HashMap<u32, ThreadTimes>,
}

impl DemandMeter {
    /// Starts from the threads' times now; `None` where they cannot be read
    /// (not Linux, or `/proc` hidden), and then demand is not measured.
    pub fn start() -> Option<Self> {
        let threads = read_threads()?;
        (!threads.is_empty()).then_some(Self { threads })
    }

    /// Running plus waiting time of every thread since the last reading
    /// (a thread started since counts from its start; one that ended since
    /// loses its last moments), or `None` if the threads cannot be read.
    pub fn advance(&mut self) -> Option<Duration> {
        let now = read_threads()?;
        Some(Duration::from_nanos(self.advance_to(now)))
    }

    /// [`advance`](Self::advance) on threads already read: nanoseconds.
    pub fn advance_to(&mut self, now: HashMap<u32, ThreadTimes>) -> u64 {
        let demand = now
            .iter()
            .map(|(tid, times)| times.since(self.threads.get(tid).copied().unwrap_or_default()))
            .sum();
        self.threads = now;
        demand
    }
}

/// Every thread's times, by thread id.
fn read_threads() -> Option<HashMap<u32, ThreadTimes>> {
    let mut threads = HashMap::new();
    for entry in std::fs::read_dir(TASKS).ok()? {
        let Ok(entry) = entry else { continue };
        let Some(tid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // A thread may end between the listing and the read.
        let Ok(line) = std::fs::read_to_string(entry.path().join("schedstat")) else {
            continue;
        };
        if let Some(times) = ThreadTimes::parse(&line) {
            threads.insert(tid, times);
        }
    }
    Some(threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedstat_line_gives_running_and_waiting_time() {
        assert_eq!(
            ThreadTimes::parse("1234567 89012 345\n"),
            Some(ThreadTimes {
                running: 1_234_567,
                waiting: 89_012
            })
        );
        assert_eq!(ThreadTimes::parse("12 x 3"), None);
        assert_eq!(ThreadTimes::parse("12"), None);
        assert_eq!(ThreadTimes::parse(""), None);
    }

    #[test]
    fn demand_sums_each_threads_running_and_waiting_since_the_last_reading() {
        let times = |running, waiting| ThreadTimes { running, waiting };
        let mut meter = DemandMeter {
            threads: HashMap::from([(1, times(100, 50)), (2, times(10, 0)), (3, times(7, 7))]),
        };
        // Thread 1 ran 40 and waited 20; thread 2 ran 5; thread 3 ended;
        // thread 4 started and ran 30 and waited 3.
        let now = HashMap::from([(1, times(140, 70)), (2, times(15, 0)), (4, times(30, 3))]);
        assert_eq!(meter.advance_to(now), 40 + 20 + 5 + 33);
        // Nothing since.
        let same = meter.threads.clone();
        assert_eq!(meter.advance_to(same), 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_demand_grows_while_it_spins() {
        let mut meter = DemandMeter::start().expect("Linux lists its threads in /proc/self/task");
        let spin_until = std::time::Instant::now() + Duration::from_millis(30);
        while std::time::Instant::now() < spin_until {
            std::hint::spin_loop();
        }
        let demand = meter.advance().expect("threads readable");
        // At least the spinning thread's running time (the scheduler's
        // accounting may lag by a tick, hence the margin).
        assert!(demand >= Duration::from_millis(15), "demand {demand:?}");
    }
}
