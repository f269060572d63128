//! Admission by headroom: whether a new connection is taken, or answered
//! at once with [`CloseCode::ServerFull`](super::CloseCode::ServerFull) and a
//! retry hint instead of being left to time out.
//!
//! Four limits, each from the `[net]` table ([`AdmissionLimits`]):
//! the connections open (`max_connections`), the CPU the process uses of
//! the cores it may run on (`admit_max_cpu_percent`), the share of the
//! tick budget the engine's shards use (`admit_max_tick_load_percent`), and
//! the scheduling lag of the runtime that sends every state
//! (`admit_max_lag_ms`): when the server has more to send than its threads
//! can keep up with, a timer fires late.
//!
//! The decision ([`AdmissionLimits::verdict`]) is pure: it takes a [`Load`]
//! sample. [`Headroom`] holds the latest sample for the accept path to
//! read without waiting, and [`sample`] keeps it current: it measures the
//! lag with a short periodic timer and reads the shards' tick durations
//! from [`Engine::stats`] every [`SAMPLE_EVERY`]. The listener in
//! [`server`](super::server) applies the verdict.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::engine::Engine;
use crate::game::Game;
use crate::store::Store;

/// How often the load sample is renewed.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Period of the lag probe's timer.
const PROBE_EVERY: Duration = Duration::from_millis(10);

/// The limits new connections are admitted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Connections open at once, at most.
    pub max_connections: usize,
    /// Refuse while the process uses more than this percentage of the
    /// cores it may run on (0 = no limit).
    pub max_cpu_percent: u32,
    /// Refuse while the shards' ticks use more than this percentage of
    /// their budget (0 = no limit).
    pub max_tick_load_percent: u32,
    /// Refuse while the runtime's timers fire later than this on average
    /// (zero = no limit).
    pub max_lag: Duration,
    /// The wait a refusal asks the client for.
    pub retry_after: Duration,
}

/// One measurement of how busy the server is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Connections open (admitted or being admitted).
    pub connections: usize,
    /// Connections open when the CPU was sampled.
    pub sampled_connections: usize,
    /// CPU the process used over the last sample, in percent of the cores
    /// it may run on.
    pub cpu_percent: u32,
    /// Share of the tick budget the shards used over the last sample, in
    /// percent (time spent ticking over wall time, summed over shards).
    pub tick_load_percent: u32,
    /// How late the runtime's timers fired, on average over the last sample.
    pub lag: Duration,
}

/// Why a connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    /// Every connection place is taken.
    #[error("server full: {open} connections open, the limit is {limit}")]
    Connections {
        /// Connections open.
        open: usize,
        /// `max_connections`.
        limit: usize,
    },
    /// The process uses too much of its cores.
    #[error(
        "server busy: {percent}% of its CPU in use with the connections open now, the limit is {limit}%"
    )]
    Cpu {
        /// Measured, and projected over the connections admitted since
        /// (see [`Load::projected_cpu_percent`]).
        percent: u32,
        /// `admit_max_cpu_percent`.
        limit: u32,
    },
    /// The shards use too much of their tick budget.
    #[error("server busy: ticks use {percent}% of their budget, the limit is {limit}%")]
    TickLoad {
        /// Measured.
        percent: u32,
        /// `admit_max_tick_load_percent`.
        limit: u32,
    },
    /// The runtime is behind: states go out late.
    #[error("server busy: sends run {lag_ms} ms late, the limit is {limit_ms} ms")]
    Lag {
        /// Measured, in milliseconds.
        lag_ms: u128,
        /// `admit_max_lag_ms`.
        limit_ms: u128,
    },
}

impl Load {
    /// The CPU the connections open now will use: the sample, scaled by
    /// how many more connections are open than when it was taken. A
    /// connection admitted just now costs nothing yet in the sample; without
    /// this, every client of a join storm that arrives within one sample
    /// would be admitted on the same low figure, and together they would
    /// overshoot the limit.
    pub fn projected_cpu_percent(&self) -> u32 {
        if self.sampled_connections == 0 || self.connections <= self.sampled_connections {
            return self.cpu_percent;
        }
        let scaled =
            u64::from(self.cpu_percent) * self.connections as u64 / self.sampled_connections as u64;
        u32::try_from(scaled).unwrap_or(u32::MAX)
    }
}

impl AdmissionLimits {
    /// Whether any limit needs the load sampled (all but the connection cap).
    pub fn measures_headroom(&self) -> bool {
        self.max_cpu_percent > 0 || self.max_tick_load_percent > 0 || !self.max_lag.is_zero()
    }

    /// `None` to admit, else why not.
    pub fn verdict(&self, load: &Load) -> Option<Full> {
        if load.connections >= self.max_connections {
            return Some(Full::Connections {
                open: load.connections,
                limit: self.max_connections,
            });
        }
        let cpu_percent = load.projected_cpu_percent();
        if self.max_cpu_percent > 0 && cpu_percent > self.max_cpu_percent {
            return Some(Full::Cpu {
                percent: cpu_percent,
                limit: self.max_cpu_percent,
            });
        }
        if self.max_tick_load_percent > 0 && load.tick_load_percent > self.max_tick_load_percent {
            return Some(Full::TickLoad {
                percent: load.tick_load_percent,
                limit: self.max_tick_load_percent,
            });
        }
        if !self.max_lag.is_zero() && load.lag > self.max_lag {
            return Some(Full::Lag {
                lag_ms: load.lag.as_millis(),
                limit_ms: self.max_lag.as_millis(),
            });
        }
        None
    }
}

/// The latest load sample, shared by the sampler and the accept path.
#[derive(Debug, Default)]
pub struct Headroom {
    cpu_percent: AtomicU64,
    sampled_connections: AtomicU64,
    tick_load_percent: AtomicU64,
    lag_micros: AtomicU64,
}

impl Headroom {
    /// The latest sample, with `connections` open now.
    pub fn load(&self, connections: usize) -> Load {
        Load {
            connections,
            sampled_connections: usize::try_from(self.sampled_connections.load(Relaxed))
                .unwrap_or(usize::MAX),
            cpu_percent: u32::try_from(self.cpu_percent.load(Relaxed)).unwrap_or(u32::MAX),
            tick_load_percent: u32::try_from(self.tick_load_percent.load(Relaxed))
                .unwrap_or(u32::MAX),
            lag: Duration::from_micros(self.lag_micros.load(Relaxed)),
        }
    }

    fn publish(&self, cpu_percent: u32, connections: usize, tick_load_percent: u32, lag: Duration) {
        self.cpu_percent.store(u64::from(cpu_percent), Relaxed);
        self.sampled_connections.store(connections as u64, Relaxed);
        self.tick_load_percent
            .store(u64::from(tick_load_percent), Relaxed);
        self.lag_micros
            .store(u64::try_from(lag.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }
}

/// The tick budget used between two readings of the engine's cumulative
/// tick-duration histogram.
#[derive(Debug, Clone)]
pub struct TickLoadMeter {
    ticks: Histogram<u64>,
    at: Instant,
}

impl TickLoadMeter {
    /// Starts from the tick-duration histogram (µs) read at `at`.
    pub fn new(ticks: Histogram<u64>, at: Instant) -> Self {
        Self { ticks, at }
    }

    /// The percentage of `shards` shards' time spent ticking between the
    /// last reading and this one (`ticks` read at `at`); this one becomes
    /// the last.
    pub fn advance(&mut self, ticks: Histogram<u64>, at: Instant, shards: usize) -> u32 {
        let wall = at.saturating_duration_since(self.at).as_secs_f64();
        let mut window = ticks.clone();
        let busy_micros = match window.subtract(&self.ticks) {
            Ok(()) => window.mean() * window.len() as f64,
            Err(_) => 0.0,
        };
        *self = Self::new(ticks, at);
        if wall <= 0.0 {
            return 0;
        }
        let percent = busy_micros / (wall * 1e6 * shards.max(1) as f64) * 100.0;
        percent.round().min(f64::from(u32::MAX)) as u32
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on
/// every Linux architecture tickforge builds for).
const USER_HZ: f64 = 100.0;

/// User plus system CPU seconds this process has used, from
/// `/proc/self/stat`; `None` where it cannot be read (then the CPU limit
/// never refuses).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th of the whole line.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// The percentage of `cores` cores that `used` CPU seconds fill in `wall`.
pub fn cpu_percent(used: f64, wall: Duration, cores: usize) -> u32 {
    let capacity = wall.as_secs_f64() * cores.max(1) as f64;
    if capacity <= 0.0 {
        return 0;
    }
    (used.max(0.0) / capacity * 100.0)
        .round()
        .min(f64::from(u32::MAX)) as u32
}

/// Keeps `headroom` current until `stop` is told: a timer every
/// [`PROBE_EVERY`] measures the lag, and every [`SAMPLE_EVERY`] the mean
/// lag, the tick load and the CPU since the last sample are published, with
/// the connections `open` then.
pub async fn sample<G: Game, S: Store>(
    engine: Arc<Engine<G, S>>,
    headroom: Arc<Headroom>,
    open: impl Fn() -> usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let shards = engine.settings().shards;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cpu_before = process_cpu_seconds();
    let stats = engine.stats();
    let mut meter = TickLoadMeter::new(stats.tick_micros, Instant::now());
    let mut lag_sum = Duration::ZERO;
    let mut probes = 0u32;
    let mut window_start = Instant::now();
    loop {
        let asked = Instant::now();
        tokio::select! {
            _ = tokio::time::sleep(PROBE_EVERY) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        lag_sum += asked.elapsed().saturating_sub(PROBE_EVERY);
        probes += 1;
        if window_start.elapsed() >= SAMPLE_EVERY {
            let stats = engine.stats();
            let now = Instant::now();
            let tick_load = meter.advance(stats.tick_micros, now, shards);
            let cpu_now = process_cpu_seconds();
            let cpu = match (cpu_before, cpu_now) {
                (Some(before), Some(after)) => cpu_percent(
                    after - before,
                    now.saturating_duration_since(window_start),
                    cores,
                ),
                _ => 0,
            };
            cpu_before = cpu_now;
            headroom.publish(cpu, open(), tick_load, lag_sum / probes.max(1));
            lag_sum = Duration::ZERO;
            probes = 0;
            window_start = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AdmissionLimits {
        AdmissionLimits {
            max_connections: 10,
            max_cpu_percent: 85,
            max_tick_load_percent: 80,
            max_lag: Duration::from_millis(15),
            retry_after: Duration::from_secs(1),
        }
    }

    #[test]
    fn each_limit_refuses_on_its_own_and_zero_turns_it_off() {
        let calm = Load {
            connections: 9,
            sampled_connections: 9,
            cpu_percent: 85,
            tick_load_percent: 80,
            lag: Duration::from_millis(15),
        };
        assert_eq!(limits().verdict(&calm), None);
        let full = Load {
            connections: 10,
            ..calm
        };
        assert_eq!(
            limits().verdict(&full),
            Some(Full::Connections {
                open: 10,
                limit: 10
            })
        );
        let busy = Load {
            tick_load_percent: 81,
            ..calm
        };
        assert!(matches!(
            limits().verdict(&busy),
            Some(Full::TickLoad { percent: 81, .. })
        ));
        let hot = Load {
            cpu_percent: 86,
            ..calm
        };
        assert_eq!(
            limits().verdict(&hot),
            Some(Full::Cpu {
                percent: 86,
                limit: 85
            })
        );
        let late = Load {
            lag: Duration::from_millis(16),
            ..calm
        };
        assert!(matches!(
            limits().verdict(&late),
            Some(Full::Lag { lag_ms: 16, .. })
        ));
        let off = AdmissionLimits {
            max_cpu_percent: 0,
            max_tick_load_percent: 0,
            max_lag: Duration::ZERO,
            ..limits()
        };
        let swamped = Load {
            connections: 0,
            sampled_connections: 0,
            cpu_percent: 400,
            tick_load_percent: 500,
            lag: Duration::from_secs(1),
        };
        assert_eq!(off.verdict(&swamped), None);
        assert!(limits().measures_headroom());
        assert!(!off.measures_headroom());
    }

    #[test]
    fn cpu_is_projected_over_connections_admitted_since_the_sample() {
        let limits = AdmissionLimits {
            max_connections: 1000,
            ..limits()
        };
        // 60 % with 300 open; 100 more arrived within the sample: 80 %.
        let storm = Load {
            connections: 400,
            sampled_connections: 300,
            cpu_percent: 60,
            ..Load::default()
        };
        assert_eq!(storm.projected_cpu_percent(), 80);
        assert_eq!(limits.verdict(&storm), None);
        // 130 more: 86 %, over the limit of 85 though the sample says 60.
        let more = Load {
            connections: 430,
            ..storm
        };
        assert_eq!(
            limits.verdict(&more),
            Some(Full::Cpu {
                percent: 86,
                limit: 85
            })
        );
        // Fewer open than sampled, or nothing sampled yet: the sample as it is.
        let left = Load {
            connections: 100,
            ..storm
        };
        assert_eq!(left.projected_cpu_percent(), 60);
        let first = Load {
            sampled_connections: 0,
            ..storm
        };
        assert_eq!(first.projected_cpu_percent(), 60);
    }

    #[test]
    fn cpu_is_a_share_of_the_cores_the_process_may_use() {
        assert_eq!(cpu_percent(0.2, Duration::from_millis(250), 1), 80);
        assert_eq!(cpu_percent(0.2, Duration::from_millis(250), 2), 40);
        assert_eq!(cpu_percent(0.0, Duration::ZERO, 2), 0);
        assert!(
            process_cpu_seconds().is_some(),
            "/proc/self/stat is readable on Linux"
        );
    }

    fn histogram(ticks: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 60_000_000, 3).unwrap();
        for &t in ticks {
            h.record(t).unwrap();
        }
        h
    }

    #[test]
    fn tick_load_is_the_busy_share_of_the_window_over_all_shards() {
        let start = Instant::now();
        let mut meter = TickLoadMeter::new(histogram(&[5_000]), start);
        // Two shards, one second: 30 ticks of 10 ms and 30 of ~0 ms more
        // = 300 ms busy of 2 s.
        let mut after: Vec<u64> = vec![5_000];
        after.extend(std::iter::repeat_n(10_000, 30));
        after.extend(std::iter::repeat_n(1, 30));
        let percent = meter.advance(histogram(&after), start + Duration::from_secs(1), 2);
        assert_eq!(percent, 15);
        // Nothing ticked in the next second.
        let percent = meter.advance(histogram(&after), start + Duration::from_secs(2), 2);
        assert_eq!(percent, 0);
    }
}
