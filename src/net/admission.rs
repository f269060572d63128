//! Admission by headroom: whether a new connection is taken, or answered
//! at once with [`CloseCode::ServerFull`](super::CloseCode::ServerFull) and a
//! retry hint instead of being left to time out.
//!
//! Four limits, each from the `[net]` table ([`AdmissionLimits`]):
//! the connections open (`max_connections`), the CPU the process uses of
//! the cores it may run on, or the share of time its runtime's workers are
//! busy where that is higher (`admit_max_cpu_percent`), the share of the
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
/// While headroom is measured, the connections admitted within a second
/// are at most the connections open a second ago over this, and at least
/// [`RAMP_MIN`]: a connection costs little until its session runs, so a
/// join storm admitted on one sample would overshoot the limits before the
/// samples could show it.
pub const RAMP_DIVISOR: usize = 8;
/// Connections admitted within a second, at least (see [`RAMP_DIVISOR`]).
pub const RAMP_MIN: usize = 32;
/// The CPU and busy figures published are the highest of this many samples
/// (the last second): joins and bursts make a single quarter second swing
/// widely, and admitting on a trough overshoots.
const PEAK_OF: usize = 4;
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
    /// Connections open at the start of the sampled window (a second ago,
    /// see [`PEAK_OF`]): the CPU of those admitted since hardly shows yet.
    pub sampled_connections: usize,
    /// CPU the process used, in percent of the cores it may run on: the
    /// highest of the last second's samples.
    pub cpu_percent: u32,
    /// Share of the time the runtime's workers were busy (polling tasks,
    /// not parked), in percent of the workers: the highest of the last
    /// second's samples. Wall time: a worker
    /// preempted by other work on its core stays busy, so this reaches 100
    /// when the server's cores are shared and it gets less CPU than it
    /// wants, where `cpu_percent` stops at its share.
    pub busy_percent: u32,
    /// Share of the tick budget the shards used over the last sample, in
    /// percent (time spent ticking over wall time, summed over shards).
    pub tick_load_percent: u32,
    /// How late the runtime's timers fired, on average over the last sample.
    pub lag: Duration,
    /// The connections the node admits up to after it found itself over a
    /// headroom limit (see [`Ceiling`]); `None` until then.
    pub ceiling: Option<usize>,
}

/// What the node learned about its own capacity: when the samples of a
/// whole second find it over a headroom limit, it admits no more than seven eighths of the
/// connections then open (at least [`RAMP_MIN`]); each calm sample after
/// that raises the ceiling by one connection (four a second).
///
/// Projections cannot see everything: a node that shares its cores with
/// other work gets its full share of CPU until it nears that share, so its
/// busy figure stays low and then jumps. Admitting again as soon as it
/// dips (when refused clients stop knocking, say) would overload it again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ceiling(Option<usize>);

impl Ceiling {
    /// The connections admitted up to, if the node has been overloaded.
    pub fn get(self) -> Option<usize> {
        self.0
    }

    /// The ceiling after a sample with `connections` open that was
    /// `overloaded` (over a headroom limit) or not.
    pub fn after_sample(self, connections: usize, overloaded: bool) -> Self {
        match (self.0, overloaded) {
            (current, true) => {
                let lowered = (connections - connections / RAMP_DIVISOR).max(RAMP_MIN);
                Self(Some(current.map_or(lowered, |c| c.min(lowered))))
            }
            (Some(current), false) => Self(Some(current.saturating_add(1))),
            (None, false) => Self(None),
        }
    }
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
    /// The process uses too much of its cores, or its runtime is busy too
    /// much of the time (its cores are shared and it gets less than it wants).
    #[error(
        "server busy: {percent}% of its CPU in use (or its workers busy) with the connections open now, the limit is {limit}%"
    )]
    Cpu {
        /// Measured, and projected over the connections admitted since
        /// (see [`Load::projected_cpu_percent`]).
        percent: u32,
        /// `admit_max_cpu_percent`.
        limit: u32,
    },
    /// More connections arrived within the sampled second than may be
    /// admitted before the samples show what they cost.
    #[error(
        "server busy: {admitted} connections admitted within the last second, at most {ramp} until the load shows what they cost"
    )]
    Ramp {
        /// Connections open now over those open at the sample.
        admitted: usize,
        /// How many may be, [`RAMP_MIN`] or the sampled count over [`RAMP_DIVISOR`].
        ramp: usize,
    },
    /// The node was over a headroom limit with more connections open
    /// than this, and has not yet had room long enough to take more.
    #[error(
        "server busy: it was overloaded lately and admits up to {ceiling} connections for now, {open} are open"
    )]
    Ceiling {
        /// Connections open.
        open: usize,
        /// The [`Ceiling`].
        ceiling: usize,
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

impl Full {
    /// The `reason` label of the refusal counter.
    pub fn reason(&self) -> &'static str {
        match self {
            Full::Connections { .. } => "connections",
            Full::Ramp { .. } => "ramp",
            Full::Ceiling { .. } => "ceiling",
            Full::Cpu { .. } => "cpu",
            Full::TickLoad { .. } => "tick_load",
            Full::Lag { .. } => "lag",
        }
    }
}

impl Load {
    /// The CPU the connections open now will use: the higher of the CPU and
    /// busy samples, scaled by how many more connections are open than when
    /// it was taken. A
    /// connection admitted just now costs nothing yet in the sample; without
    /// this, every client of a join storm that arrives within one sample
    /// would be admitted on the same low figure, and together they would
    /// overshoot the limit.
    pub fn projected_cpu_percent(&self) -> u32 {
        let sampled = self.cpu_percent.max(self.busy_percent);
        if self.sampled_connections == 0 || self.connections <= self.sampled_connections {
            return sampled;
        }
        let scaled = u64::from(sampled) * self.connections as u64 / self.sampled_connections as u64;
        u32::try_from(scaled).unwrap_or(u32::MAX)
    }
}

impl AdmissionLimits {
    /// Whether any limit needs the load sampled (all but the connection cap).
    pub fn measures_headroom(&self) -> bool {
        self.max_cpu_percent > 0 || self.max_tick_load_percent > 0 || !self.max_lag.is_zero()
    }

    /// `None` to admit, else why not. With headroom measured, a join storm
    /// is also admitted in steps: at most [`RAMP_MIN`] or an eighth of the
    /// connections open a second before within that second; and no more than the
    /// [`Ceiling`] the node learned when it was last overloaded.
    pub fn verdict(&self, load: &Load) -> Option<Full> {
        if load.connections >= self.max_connections {
            return Some(Full::Connections {
                open: load.connections,
                limit: self.max_connections,
            });
        }
        if self.measures_headroom() {
            let admitted = load.connections.saturating_sub(load.sampled_connections);
            let ramp = (load.sampled_connections / RAMP_DIVISOR).max(RAMP_MIN);
            if admitted >= ramp {
                return Some(Full::Ramp { admitted, ramp });
            }
            if let Some(ceiling) = load.ceiling.filter(|c| load.connections >= *c) {
                return Some(Full::Ceiling {
                    open: load.connections,
                    ceiling,
                });
            }
        }
        self.over_headroom(load)
    }

    /// Which headroom limit `load` is over (the CPU projected over the
    /// connections open now), if any.
    fn over_headroom(&self, load: &Load) -> Option<Full> {
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
#[derive(Debug)]
pub struct Headroom {
    cpu_percent: AtomicU64,
    busy_percent: AtomicU64,
    sampled_connections: AtomicU64,
    /// `u64::MAX` for none.
    ceiling: AtomicU64,
    tick_load_percent: AtomicU64,
    lag_micros: AtomicU64,
}

impl Default for Headroom {
    fn default() -> Self {
        Self {
            cpu_percent: AtomicU64::new(0),
            busy_percent: AtomicU64::new(0),
            sampled_connections: AtomicU64::new(0),
            ceiling: AtomicU64::new(u64::MAX),
            tick_load_percent: AtomicU64::new(0),
            lag_micros: AtomicU64::new(0),
        }
    }
}

impl Headroom {
    /// The latest sample, with `connections` open now.
    pub fn load(&self, connections: usize) -> Load {
        Load {
            connections,
            sampled_connections: usize::try_from(self.sampled_connections.load(Relaxed))
                .unwrap_or(usize::MAX),
            cpu_percent: u32::try_from(self.cpu_percent.load(Relaxed)).unwrap_or(u32::MAX),
            busy_percent: u32::try_from(self.busy_percent.load(Relaxed)).unwrap_or(u32::MAX),
            tick_load_percent: u32::try_from(self.tick_load_percent.load(Relaxed))
                .unwrap_or(u32::MAX),
            lag: Duration::from_micros(self.lag_micros.load(Relaxed)),
            ceiling: match self.ceiling.load(Relaxed) {
                u64::MAX => None,
                c => Some(usize::try_from(c).unwrap_or(usize::MAX)),
            },
        }
    }

    fn publish(&self, sample: &Load) {
        let Load {
            cpu_percent,
            busy_percent,
            sampled_connections,
            tick_load_percent,
            lag,
            ceiling,
            ..
        } = *sample;
        self.ceiling
            .store(ceiling.map_or(u64::MAX, |c| c as u64), Relaxed);
        self.cpu_percent.store(u64::from(cpu_percent), Relaxed);
        self.busy_percent.store(u64::from(busy_percent), Relaxed);
        self.sampled_connections
            .store(sampled_connections as u64, Relaxed);
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

/// Publishes `load` on the metrics.
fn record(load: &Load) {
    use crate::admin::metrics as names;
    for (measure, percent) in [
        ("cpu", load.cpu_percent),
        ("busy", load.busy_percent),
        ("tick_load", load.tick_load_percent),
    ] {
        metrics::gauge!(names::ADMISSION_LOAD, "measure" => measure).set(f64::from(percent));
    }
    if let Some(ceiling) = load.ceiling {
        metrics::gauge!(names::ADMISSION_CEILING).set(ceiling as f64);
    }
}

/// One quarter second's measurements (see [`SAMPLE_EVERY`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Connections open at the end of it.
    pub connections: usize,
    /// CPU the process used, in percent of the cores it may run on.
    pub cpu_percent: u32,
    /// Share of it the runtime's workers were busy, in percent.
    pub busy_percent: u32,
    /// Share of the tick budget the shards used, in percent.
    pub tick_load_percent: u32,
    /// How late the runtime's timers fired, on average.
    pub lag: Duration,
}

/// The last second of samples ([`PEAK_OF`]) and the [`Ceiling`]: turns
/// each new sample into the [`Load`] the accept path judges.
#[derive(Debug, Default)]
pub struct Window {
    recent: std::collections::VecDeque<Sample>,
    ceiling: Ceiling,
}

impl Window {
    /// Adds `sample` and returns the load to publish: the highest CPU and
    /// busy shares of the window, the connections open at its start, the
    /// ceiling; and the limit the node is over if the whole window was over
    /// it (which lowers the ceiling), not just a join's burst.
    pub fn push(&mut self, sample: Sample, limits: &AdmissionLimits) -> (Load, Option<Full>) {
        if self.recent.len() == PEAK_OF {
            self.recent.pop_front();
        }
        // Connections a second ago: the CPU of ones admitted since hardly
        // shows yet.
        let window_connections = self
            .recent
            .front()
            .map_or(sample.connections, |r| r.connections);
        self.recent.push_back(sample);
        let highest = |share: fn(&Sample) -> u32| self.recent.iter().map(share).max();
        let lowest = |share: fn(&Sample) -> u32| self.recent.iter().map(share).min();
        let mut load = Load {
            connections: sample.connections,
            sampled_connections: window_connections,
            cpu_percent: highest(|s| s.cpu_percent).unwrap_or(sample.cpu_percent),
            busy_percent: highest(|s| s.busy_percent).unwrap_or(sample.busy_percent),
            tick_load_percent: sample.tick_load_percent,
            lag: sample.lag,
            ceiling: None,
        };
        let sustained = Load {
            sampled_connections: sample.connections,
            cpu_percent: lowest(|s| s.cpu_percent).unwrap_or(sample.cpu_percent),
            busy_percent: lowest(|s| s.busy_percent).unwrap_or(sample.busy_percent),
            ..load
        };
        let over = limits.over_headroom(&sustained);
        self.ceiling = self
            .ceiling
            .after_sample(sample.connections, over.is_some());
        load.ceiling = self.ceiling.get();
        (load, over)
    }
}

/// Time the current runtime's workers have spent busy (not parked) since
/// it started, summed over workers, and how many workers it has.
fn runtime_busy() -> (Duration, usize) {
    let metrics = tokio::runtime::Handle::current().metrics();
    let workers = metrics.num_workers();
    let busy = (0..workers)
        .map(|worker| metrics.worker_total_busy_duration(worker))
        .sum();
    (busy, workers)
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
/// lag and the tick load since the last sample, and the highest CPU and
/// busy shares of the last [`PEAK_OF`] samples, are published with the
/// connections `open` then. Runs on the
/// runtime that serves the connections (whose workers it measures).
pub async fn sample<G: Game, S: Store>(
    engine: Arc<Engine<G, S>>,
    limits: AdmissionLimits,
    headroom: Arc<Headroom>,
    open: impl Fn() -> usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let shards = engine.settings().shards;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cpu_before = process_cpu_seconds();
    let (mut busy_before, _) = runtime_busy();
    let stats = engine.stats();
    let mut meter = TickLoadMeter::new(stats.tick_micros, Instant::now());
    let mut lag_sum = Duration::ZERO;
    let mut probes = 0u32;
    let mut window_start = Instant::now();
    let mut window = Window::default();
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
            let (busy_now, workers) = runtime_busy();
            let busy = cpu_percent(
                busy_now.saturating_sub(busy_before).as_secs_f64(),
                now.saturating_duration_since(window_start),
                workers,
            );
            busy_before = busy_now;
            let (load, over) = window.push(
                Sample {
                    connections: open(),
                    cpu_percent: cpu,
                    busy_percent: busy,
                    tick_load_percent: tick_load,
                    lag: lag_sum / probes.max(1),
                },
                &limits,
            );
            tracing::debug!(?load, "load sampled");
            record(&load);
            if let Some(over) = over {
                tracing::debug!(%over, "over a headroom limit for a second");
            }
            headroom.publish(&load);
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
            busy_percent: 85,
            tick_load_percent: 80,
            lag: Duration::from_millis(15),
            ceiling: None,
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
            busy_percent: 400,
            tick_load_percent: 500,
            lag: Duration::from_secs(1),
            ceiling: None,
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
        // Within the ramp (160 / 8 = 20 more): 80 % with 160 open, 10 more
        // make 85 %, which is admitted; 12 more make 86 %, over the limit
        // of 85 though the sample says 80.
        let busy = Load {
            connections: 170,
            sampled_connections: 160,
            cpu_percent: 80,
            ..Load::default()
        };
        assert_eq!(limits.verdict(&busy), None);
        let more = Load {
            connections: 172,
            ..busy
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
    fn a_join_storm_is_admitted_a_step_per_sample() {
        let limits = AdmissionLimits {
            max_connections: 10_000,
            ..limits()
        };
        let sampled = Load {
            connections: 400,
            sampled_connections: 400,
            cpu_percent: 20,
            busy_percent: 20,
            ..Load::default()
        };
        // An eighth of 400 = 50 more before the next sample.
        let joining = Load {
            connections: 449,
            ..sampled
        };
        assert_eq!(limits.verdict(&joining), None);
        let storm = Load {
            connections: 450,
            ..sampled
        };
        assert_eq!(
            limits.verdict(&storm),
            Some(Full::Ramp {
                admitted: 50,
                ramp: 50
            })
        );
        // A quiet server (or the first sample) still takes RAMP_MIN at once.
        let fresh = Load {
            connections: RAMP_MIN - 1,
            sampled_connections: 0,
            ..Load::default()
        };
        assert_eq!(limits.verdict(&fresh), None);
        let fresh_storm = Load {
            connections: RAMP_MIN,
            ..fresh
        };
        assert!(matches!(
            limits.verdict(&fresh_storm),
            Some(Full::Ramp { .. })
        ));
        // Without headroom limits only the connection cap applies.
        let capped_only = AdmissionLimits {
            max_cpu_percent: 0,
            max_tick_load_percent: 0,
            max_lag: Duration::ZERO,
            ..limits
        };
        assert_eq!(capped_only.verdict(&storm), None);
    }

    #[test]
    fn an_overload_sets_a_ceiling_that_calm_raises_slowly() {
        let none = Ceiling::default();
        assert_eq!(none.after_sample(400, false), none);
        // Overloaded at 400: admit up to 350.
        let lowered = none.after_sample(400, true);
        assert_eq!(lowered.get(), Some(350));
        // Overloaded again with more open: the lower ceiling stays.
        assert_eq!(lowered.after_sample(440, true).get(), Some(350));
        // ... and with fewer, it goes lower; never below RAMP_MIN.
        assert_eq!(lowered.after_sample(320, true).get(), Some(280));
        assert_eq!(lowered.after_sample(3, true).get(), Some(RAMP_MIN));
        // A calm sample raises it by one.
        assert_eq!(lowered.after_sample(340, false).get(), Some(351));

        let limits = AdmissionLimits {
            max_connections: 10_000,
            ..limits()
        };
        let calm_below = Load {
            connections: 349,
            sampled_connections: 349,
            cpu_percent: 40,
            busy_percent: 40,
            ceiling: lowered.get(),
            ..Load::default()
        };
        assert_eq!(limits.verdict(&calm_below), None);
        let at_ceiling = Load {
            connections: 350,
            ..calm_below
        };
        assert_eq!(
            limits.verdict(&at_ceiling),
            Some(Full::Ceiling {
                open: 350,
                ceiling: 350
            })
        );
    }

    #[test]
    fn the_window_publishes_its_peaks_and_lowers_the_ceiling_on_sustained_overload() {
        let limits = limits();
        let mut window = Window::default();
        let calm = Sample {
            connections: 100,
            cpu_percent: 40,
            busy_percent: 40,
            ..Sample::default()
        };
        let (load, over) = window.push(calm, &limits);
        assert_eq!(
            (load.cpu_percent, load.sampled_connections, over),
            (40, 100, None)
        );
        // A join's burst: the peak is published for a second, no ceiling.
        let burst = Sample {
            connections: 140,
            busy_percent: 95,
            ..calm
        };
        let (load, over) = window.push(burst, &limits);
        assert_eq!((load.busy_percent, load.sampled_connections), (95, 100));
        assert_eq!((over, load.ceiling), (None, None));
        for _ in 0..PEAK_OF - 1 {
            let (load, _) = window.push(
                Sample {
                    connections: 140,
                    ..calm
                },
                &limits,
            );
            assert_eq!(load.busy_percent, 95, "the burst stays in the window");
        }
        let (load, _) = window.push(
            Sample {
                connections: 140,
                ..calm
            },
            &limits,
        );
        assert_eq!((load.busy_percent, load.sampled_connections), (40, 140));
        // A whole second over the limit lowers the ceiling.
        let hot = Sample {
            connections: 160,
            busy_percent: 99,
            ..calm
        };
        for _ in 0..PEAK_OF - 1 {
            let (load, over) = window.push(hot, &limits);
            assert_eq!((over, load.ceiling), (None, None));
        }
        let (load, over) = window.push(hot, &limits);
        assert!(matches!(over, Some(Full::Cpu { percent: 99, .. })));
        assert_eq!(load.ceiling, Some(140));
    }

    #[test]
    fn busy_workers_fill_the_cpu_limit_when_the_cores_are_shared() {
        // A neighbour takes half the core: the process gets 50 % of it, but
        // its workers never rest.
        let shared_core = Load {
            connections: 5,
            sampled_connections: 5,
            cpu_percent: 50,
            busy_percent: 97,
            ..Load::default()
        };
        assert_eq!(shared_core.projected_cpu_percent(), 97);
        assert_eq!(
            limits().verdict(&shared_core),
            Some(Full::Cpu {
                percent: 97,
                limit: 85
            })
        );
        // Busy share scales over new connections like the CPU does.
        let joining = Load {
            connections: 6,
            busy_percent: 75,
            ..shared_core
        };
        assert_eq!(joining.projected_cpu_percent(), 90);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runtime_busy_counts_every_worker() {
        let (before, workers) = runtime_busy();
        assert_eq!(workers, 2);
        // A task that keeps its worker busy without parking.
        tokio::spawn(async {
            let until = Instant::now() + Duration::from_millis(30);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        })
        .await
        .expect("the spinning task");
        // A worker publishes its busy time when it parks or every few dozen
        // polls, so poll the figure (nothing signals its update) until it
        // shows the spin, within a generous bound.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let grown = runtime_busy().0.saturating_sub(before);
            if grown >= Duration::from_millis(30) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "busy grew by only {grown:?} after a 30 ms spin"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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
