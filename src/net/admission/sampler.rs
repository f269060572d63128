//! The sampler: measures the lag, the tick load, the process's CPU and CPU
//! demand, the runtime's busy time and the states' send delay every [`SAMPLE_EVERY`]
//! and publishes them, through a [`Window`], to the [`Headroom`] the
//! accept path reads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::cpu_demand::DemandMeter;
use super::{AdmissionLimits, Headroom, Load, Reading, SAMPLE_EVERY, Sample, SendDelays, Window};
use crate::engine::Engine;
use crate::game::Game;
use crate::net::receive_queue::ReceiveQueue;
use crate::store::Store;

/// What the server's network side measures for the sampler.
#[derive(Debug, Clone)]
pub struct NetworkMeasures {
    /// How late the fan-outs send each tick's states.
    pub send_delays: Arc<SendDelays>,
    /// The endpoint socket's receive queue, where the platform shows it.
    pub receive_queue: Option<ReceiveQueue>,
}

/// Period of the lag probe's timer.
const PROBE_EVERY: Duration = Duration::from_millis(10);

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

/// Publishes `load` on the metrics.
fn record(load: &Load) {
    use crate::admin::metrics as names;
    for (measure, percent) in [
        ("cpu", load.cpu_percent),
        ("busy", load.busy_percent),
        ("demand", load.demand_percent),
        ("tick_load", load.tick_load_percent),
    ] {
        metrics::gauge!(names::ADMISSION_LOAD, "measure" => measure).set(f64::from(percent));
    }
    metrics::gauge!(names::ADMISSION_SEND_DELAY).set(load.send_delay.as_secs_f64());
    metrics::gauge!(names::ADMISSION_RECEIVE_QUEUE).set(load.receive_queue_bytes as f64);
    if let Some(ceiling) = load.ceiling {
        metrics::gauge!(names::ADMISSION_CEILING).set(ceiling as f64);
    }
}

/// Keeps `headroom` current until `stop` is told: a timer every
/// `PROBE_EVERY` (10 ms) measures the lag, and every [`SAMPLE_EVERY`] the
/// mean lag and the tick load since the last sample, and the highest CPU
/// and busy shares, send delay and receive queue (from `network`) of the
/// last second's samples, are published with the connections `open` then. After two seconds over a limit, `shed` is asked
/// to close that many of the newest sessions (see [`Reading::shed`]). Runs
/// on the runtime that serves the connections (whose workers it measures).
pub async fn sample<G: Game, S: Store>(
    engine: Arc<Engine<G, S>>,
    limits: AdmissionLimits,
    headroom: Arc<Headroom>,
    network: NetworkMeasures,
    open: impl Fn() -> usize,
    shed: impl Fn(usize),
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let shards = engine.settings().shards;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cpu_before = process_cpu_seconds();
    let (mut busy_before, _) = runtime_busy();
    let mut demand_meter = DemandMeter::start();
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
            let wall = now.saturating_duration_since(window_start);
            let cpu_now = process_cpu_seconds();
            let cpu = match (cpu_before, cpu_now) {
                (Some(before), Some(after)) => cpu_percent(after - before, wall, cores),
                _ => 0,
            };
            cpu_before = cpu_now;
            let (busy_now, workers) = runtime_busy();
            let busy = cpu_percent(
                busy_now.saturating_sub(busy_before).as_secs_f64(),
                wall,
                workers,
            );
            busy_before = busy_now;
            let demand = demand_meter
                .as_mut()
                .and_then(DemandMeter::advance)
                .map_or(0, |demand| cpu_percent(demand.as_secs_f64(), wall, cores));
            let Reading {
                load,
                over,
                shed: beyond,
            } = window.push(
                Sample {
                    connections: open(),
                    cpu_percent: cpu,
                    busy_percent: busy,
                    demand_percent: demand,
                    tick_load_percent: tick_load,
                    lag: lag_sum / probes.max(1),
                    send_delay: network.send_delays.take_p99(),
                    receive_queue_bytes: network
                        .receive_queue
                        .and_then(|queue| queue.bytes())
                        .unwrap_or(0),
                },
                &limits,
            );
            tracing::debug!(?load, "load sampled");
            record(&load);
            headroom.publish(&load);
            if let Some(over) = over {
                tracing::warn!(
                    %over,
                    connections = load.connections,
                    ceiling = ?load.ceiling,
                    shedding = beyond,
                    "over a headroom limit for two seconds"
                );
            }
            if beyond > 0 {
                shed(beyond);
            }
            lag_sum = Duration::ZERO;
            probes = 0;
            window_start = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
