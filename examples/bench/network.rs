//! Benchmark 4, network: 100, 500 and 1,000 QUIC clients on loopback
//! against a server in the same process (as the demo wires them): the
//! engine with the memory store, the QUIC server, and
//! `tickforge::play::load` bots, each its own QUIC connection.
//!
//! Measured over a window after every client joined and a warm-up:
//! command-to-update latency (from handing a command to the session until
//! the first state at or after the tick it was applied on), state bytes
//! per client per second, and the size of the state deltas the server sent
//! against the full state they replace (`NetStats::delta_bytes` and
//! `delta_full_bytes`). Each client count runs in a fresh child process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tickforge::arena::Arena;
use tickforge::client::ClientConfig;
use tickforge::engine::{Engine, EngineSettings};
use tickforge::net::server::Server;
use tickforge::net::{NetConfig, TlsSource};
use tickforge::play::load::{LoadConfig, LoadStats, run_load};
use tickforge::store::MemoryStore;

use crate::report::{self, Outcome, Table, Target, ms, num, progress, si};
use crate::sys::{CpuMeter, MachineMeter, rss_bytes, threads_cpu_seconds};

/// Latency histogram bins in the results, µs.
pub const BIN_US: u64 = 500;
/// Bins kept (up to 200 ms); later samples count as overflow.
const BINS: usize = 400;
/// Logarithmic bins for the picture: this many per decade from 1 ms.
pub const LOG_BINS_PER_DECADE: f64 = 40.0;
/// Logarithmic bins kept (1 ms to 100 s).
const LOG_BINS: usize = 200;
/// Name of the clients' runtime threads.
const CLIENT_THREADS: &str = "load-client";
/// Longest time given to the clients to join.
const JOIN_BUDGET: Duration = Duration::from_secs(45);
/// The targets.
const TARGET_EXTRA_MS: f64 = 2.0;
const TARGET_DELTA_SHARE: f64 = 0.25;

#[derive(Debug, Clone, Serialize)]
pub struct NetworkConfig {
    pub clients: Vec<usize>,
    pub players: u32,
    pub tick_hz: u32,
    pub warmup_s: f64,
    pub measure_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepSpec {
    clients: usize,
    players: u32,
    tick_hz: u32,
    warmup_s: f64,
    measure_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepResult {
    pub clients: usize,
    pub matches: usize,
    pub players: u32,
    pub connected: u64,
    pub join_errors: u64,
    pub window_s: f64,
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Latency counts per `BIN_US` bin from 0, then the overflow.
    pub bins: Vec<u64>,
    pub overflow: u64,
    /// Latency counts per logarithmic bin: bin i holds latencies from
    /// 1 ms x 10^(i / LOG_BINS_PER_DECADE) (the first also everything below).
    pub log_bins: Vec<u64>,
    pub p001_ms: f64,
    pub updates_per_client_s: f64,
    pub commands_per_s: f64,
    pub rejected: u64,
    pub errors: u64,
    /// Payload bytes the clients received (states and frames), per client per s.
    pub bytes_in_per_client_s: f64,
    /// Payload bytes the server sent, per client per s.
    pub bytes_out_per_client_s: f64,
    /// States sent as deltas over all states sent.
    pub delta_share: f64,
    pub mean_delta_bytes: f64,
    /// How many ticks behind the state its delta's baseline was, on average.
    pub mean_baseline_age_ticks: f64,
    pub mean_full_bytes: f64,
    /// Delta datagram bytes over the full states they replaced.
    pub delta_to_full: f64,
    pub stream_states: u64,
    pub tick_p99_ms: f64,
    pub cpu_percent: Option<f64>,
    /// The server side (engine, QUIC server), % of one core.
    pub server_cpu_percent: Option<f64>,
    /// The client side (client library, bots), % of one core.
    pub client_cpu_percent: Option<f64>,
    /// Everything else on the machine meanwhile, % of one core.
    pub others_cpu_percent: Option<f64>,
    pub rss_mib: Option<f64>,
}

pub async fn run(config: &NetworkConfig) -> anyhow::Result<(Outcome, Vec<StepResult>)> {
    let period_ms = 1000.0 / f64::from(config.tick_hz);
    let mut results: Vec<StepResult> = Vec::new();
    for &clients in &config.clients {
        let spec = StepSpec {
            clients,
            players: config.players,
            tick_hz: config.tick_hz,
            warmup_s: config.warmup_s,
            measure_s: config.measure_s,
        };
        progress(format!(
            "network: {clients} QUIC clients ({} matches x {} players) on loopback",
            clients.div_ceil(config.players as usize),
            config.players
        ));
        let result: StepResult = crate::child::run("network", &spec).await?;
        progress(format!(
            "network {clients} clients ({} connected): p50 {} ms, p99 {} ms, {} B/s per client, \
             deltas {}% of full state, CPU server {}% + clients {}%, others {}%",
            result.connected,
            num(result.p50_ms, 2),
            num(result.p99_ms, 2),
            num(result.bytes_in_per_client_s, 0),
            num(result.delta_to_full * 100.0, 1),
            report::opt(result.server_cpu_percent, 0),
            report::opt(result.client_cpu_percent, 0),
            report::opt(result.others_cpu_percent, 0),
        ));
        results.push(result);
    }

    let mut table = Table::new(
        format!(
            "network: QUIC on loopback, {} players per match, {} Hz, server and clients in one process",
            config.players, config.tick_hz
        ),
        &[
            "clients",
            "connected",
            "latency p50 ms",
            "p99 ms",
            "p99.9 ms",
            "samples",
            "updates/s/client",
            "B/s/client",
            "delta B",
            "full state B",
            "delta/full",
            "baseline age",
            "deltas sent",
            "tick p99 ms",
            "server CPU %",
            "client CPU %",
            "others CPU %",
        ],
    );
    let mut targets = Vec::new();
    for r in &results {
        table.row(vec![
            r.clients.to_string(),
            r.connected.to_string(),
            num(r.p50_ms, 2),
            num(r.p99_ms, 2),
            num(r.p999_ms, 2),
            si(r.samples as f64),
            num(r.updates_per_client_s, 1),
            num(r.bytes_in_per_client_s, 0),
            num(r.mean_delta_bytes, 0),
            num(r.mean_full_bytes, 0),
            format!("{}%", num(r.delta_to_full * 100.0, 1)),
            num(r.mean_baseline_age_ticks, 2),
            format!("{}%", num(r.delta_share * 100.0, 0)),
            num(r.tick_p99_ms, 2),
            report::opt(r.server_cpu_percent, 0),
            report::opt(r.client_cpu_percent, 0),
            report::opt(r.others_cpu_percent, 0),
        ]);
    }
    table.note(format!(
        "latency: command handed to the client library -> first state at or after its tick \
         (tick period {period_ms:.1} ms). B/s/client: state and event payload bytes received \
         (no QUIC/UDP headers). delta/full: delta datagram bytes over the full states they replaced."
    ));
    if let Some(largest) = results.iter().max_by_key(|r| r.clients) {
        let goal = period_ms + TARGET_EXTRA_MS;
        targets.push(Target::new(
            "network",
            format!(
                "latency p99 at {} clients ({} connected)",
                largest.clients, largest.connected
            ),
            format!("< {goal:.1} ms"),
            format!("{:.2} ms", largest.p99_ms),
            Some(largest.p99_ms < goal),
        ));
        targets.push(Target::new(
            "network",
            format!("delta size vs full state at {} clients", largest.clients),
            format!("< {:.0}%", TARGET_DELTA_SHARE * 100.0),
            format!("{:.1}%", largest.delta_to_full * 100.0),
            Some(largest.delta_to_full < TARGET_DELTA_SHARE),
        ));
    }
    let outcome = Outcome {
        name: "network",
        skipped: None,
        tables: vec![table],
        targets,
        results: serde_json::json!({ "config": config, "bin_us": BIN_US, "steps": results }),
    };
    Ok((outcome, results))
}

/// The child process side: one client count.
pub async fn step(spec: StepSpec) -> anyhow::Result<()> {
    crate::child::watchdog(Duration::from_secs_f64(
        spec.warmup_s + spec.measure_s + 180.0,
    ));
    let matches = spec.clients.div_ceil(spec.players.max(1) as usize);
    let settings = EngineSettings {
        tick_hz: spec.tick_hz,
        ..EngineSettings::default()
    };
    let engine = Arc::new(Engine::start(
        Arena::default(),
        MemoryStore::new(),
        settings,
        "bench",
    ));
    // A certificate of our own: the default path is shared with other runs.
    let tls_dir = tempfile::tempdir().context("creating a directory for the certificate")?;
    let net = NetConfig {
        listen: "127.0.0.1:0".parse().context("loopback address")?,
        open_mode: true,
        // Joins under load are slow; the figures are about the steady state.
        hello_timeout: Duration::from_secs(30),
        tls: TlsSource::Dev {
            cert: tls_dir.path().join("cert.der"),
            key: tls_dir.path().join("key.der"),
        },
        ..NetConfig::default()
    };
    let server = Server::bind(engine.clone(), net).context("starting the QUIC server")?;
    let net_stats = server.stats();
    let client = ClientConfig::new(server.local_addr(), vec![server.certificate().clone()]);
    let (server_stop, server_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(server.run(async {
        let _ = server_stop_rx.await;
    }));
    // The clients run on a runtime of their own (same process, as in the
    // demo) so that their CPU time can be told apart from the server's.
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .thread_name(CLIENT_THREADS)
        .enable_all()
        .build()
        .context("starting the clients' runtime")?;
    // Clients join in waves of about 100: a thousand handshakes at once
    // on two cores overrun the server's Hello timeout, and a bot whose
    // join fails moves on to another match. Joining is bounded; the
    // window then measures whoever is connected (reported).
    let stats = Arc::new(LoadStats::default());
    let (load_stop, load_stop_rx) = tokio::sync::watch::channel(false);
    let wave = (100 / spec.players.max(1) as usize).max(1);
    let clients = (matches * spec.players as usize) as u64;
    let joining = Instant::now();
    let mut load_tasks = Vec::new();
    for (index, first) in (0..matches).step_by(wave).enumerate() {
        let count = wave.min(matches - first);
        let mut load = LoadConfig::new(client.clone(), count, spec.players);
        load.match_prefix = format!("net{index}");
        load.endpoints = 1;
        let mut stop = load_stop_rx.clone();
        load_tasks.push(
            client_runtime.spawn(run_load(load, stats.clone(), async move {
                let _ = stop.wait_for(|stop| *stop).await;
            })),
        );
        let expected = ((first + count) * spec.players as usize) as u64;
        let wave_started = Instant::now();
        while stats.snapshot().connected < expected
            && wave_started.elapsed() < Duration::from_secs(10)
            && joining.elapsed() < JOIN_BUDGET
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        progress(format!(
            "network {}: {}/{clients} clients joined ({} join errors)",
            spec.clients,
            stats.snapshot().connected,
            stats.snapshot().join_errors
        ));
    }
    progress(format!(
        "network {}: {}/{clients} clients joined in {:.1} s; warming up",
        spec.clients,
        stats.snapshot().connected,
        joining.elapsed().as_secs_f64()
    ));
    tokio::time::sleep(Duration::from_secs_f64(spec.warmup_s)).await;

    let load_before = stats.snapshot();
    let latency_before = stats.latency_histogram();
    let net_before = NetCounters::read(&net_stats);
    let engine_before = engine.stats();
    let cpu = CpuMeter::start(None);
    let clients_cpu = threads_cpu_seconds(CLIENT_THREADS);
    let machine_cpu = MachineMeter::start();
    let started = Instant::now();
    let mut previous = load_before;
    let mut previous_at = started;
    while started.elapsed().as_secs_f64() < spec.measure_s {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = stats.snapshot();
        progress(format!(
            "network {}: {}",
            spec.clients,
            now.progress_line(&previous, previous_at.elapsed(), clients)
        ));
        previous = now;
        previous_at = Instant::now();
    }
    let window_s = started.elapsed().as_secs_f64();
    let load_after = stats.snapshot();
    let latency = report::window(&stats.latency_histogram(), &latency_before);
    let net_after = NetCounters::read(&net_stats);
    let engine_after = engine.stats();
    let cpu_percent = cpu.percent();
    let client_cpu_percent = match (clients_cpu, threads_cpu_seconds(CLIENT_THREADS)) {
        (Some(a), Some(b)) => Some((b - a) / window_s * 100.0),
        _ => None,
    };
    let others_cpu_percent = machine_cpu
        .percent()
        .map(|all| (all - cpu_percent.unwrap_or(0.0)).max(0.0));
    let rss = rss_bytes();
    let _ = load_stop.send(true);
    let _ = server_stop.send(());

    let mut bins = vec![0u64; BINS];
    let mut overflow = 0;
    for v in latency.iter_recorded() {
        let micros = v.value_iterated_to();
        match bins.get_mut((micros / BIN_US) as usize) {
            Some(count) => *count += v.count_at_value(),
            None => overflow += v.count_at_value(),
        }
    }
    let log_bins = log_bins(&latency);
    let per_client_s = |a: u64, b: u64| a.saturating_sub(b) as f64 / window_s / clients as f64;
    let deltas = net_after.deltas - net_before.deltas;
    let delta_bytes = net_after.delta_bytes - net_before.delta_bytes;
    let full_bytes = net_after.delta_full_bytes - net_before.delta_full_bytes;
    let ticks = report::window(&engine_after.tick_micros, &engine_before.tick_micros);
    let result = StepResult {
        clients: spec.clients,
        matches,
        players: spec.players,
        connected: load_after.connected,
        join_errors: load_after.join_errors,
        window_s,
        samples: latency.len(),
        p50_ms: ms(&latency, 0.5),
        p90_ms: ms(&latency, 0.9),
        p99_ms: ms(&latency, 0.99),
        p999_ms: ms(&latency, 0.999),
        max_ms: report::max_ms(&latency),
        bins,
        overflow,
        log_bins,
        p001_ms: ms(&latency, 0.001),
        updates_per_client_s: per_client_s(load_after.updates, load_before.updates),
        commands_per_s: (load_after.commands - load_before.commands) as f64 / window_s,
        rejected: load_after.rejected - load_before.rejected,
        errors: load_after.errors - load_before.errors,
        bytes_in_per_client_s: per_client_s(load_after.bytes_in, load_before.bytes_in),
        bytes_out_per_client_s: per_client_s(net_after.bytes_out, net_before.bytes_out),
        delta_share: deltas as f64 / (net_after.states - net_before.states).max(1) as f64,
        mean_delta_bytes: delta_bytes as f64 / deltas.max(1) as f64,
        mean_baseline_age_ticks: (net_after.delta_baseline_ticks - net_before.delta_baseline_ticks)
            as f64
            / deltas.max(1) as f64,
        mean_full_bytes: full_bytes as f64 / deltas.max(1) as f64,
        delta_to_full: delta_bytes as f64 / full_bytes.max(1) as f64,
        stream_states: net_after.stream_states - net_before.stream_states,
        tick_p99_ms: ms(&ticks, 0.99),
        cpu_percent,
        server_cpu_percent: match (cpu_percent, client_cpu_percent) {
            (Some(all), Some(clients)) => Some((all - clients).max(0.0)),
            _ => None,
        },
        client_cpu_percent,
        others_cpu_percent,
        rss_mib: rss.map(|r| r as f64 / 1024.0 / 1024.0),
    };
    // Stopping is bounded by the library; the result does not wait for it.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        for task in load_tasks {
            let _ = task.await;
        }
        let _ = server_task.await;
    })
    .await;
    client_runtime.shutdown_background();
    crate::child::emit(&result)
}

/// Latency counts of a microsecond histogram per logarithmic bin: bin i
/// holds latencies from 1 ms x 10^(i / LOG_BINS_PER_DECADE) (the first also
/// everything below).
pub fn log_bins(latency: &hdrhistogram::Histogram<u64>) -> Vec<u64> {
    let mut log_bins = vec![0u64; LOG_BINS];
    for v in latency.iter_recorded() {
        let micros = v.value_iterated_to();
        let log = (micros.max(1) as f64 / 1000.0).log10() * LOG_BINS_PER_DECADE;
        let index = (log.max(0.0) as usize).min(LOG_BINS - 1);
        log_bins[index] += v.count_at_value();
    }
    log_bins
}

/// One series of the latency picture.
impl StepResult {
    pub fn series(&self) -> crate::svg::Series {
        crate::svg::Series {
            label: format!("{} clients", self.clients),
            log_bins: self.log_bins.clone(),
            p001_ms: self.p001_ms,
            p50_ms: self.p50_ms,
            p99_ms: self.p99_ms,
            p999_ms: self.p999_ms,
        }
    }
}

/// The server counters a window needs.
#[derive(Debug, Clone, Copy)]
struct NetCounters {
    states: u64,
    deltas: u64,
    delta_bytes: u64,
    delta_full_bytes: u64,
    delta_baseline_ticks: u64,
    bytes_out: u64,
    stream_states: u64,
}

impl NetCounters {
    fn read(stats: &tickforge::net::NetStats) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        Self {
            states: stats.states.load(Relaxed),
            deltas: stats.deltas.load(Relaxed),
            delta_bytes: stats.delta_bytes.load(Relaxed),
            delta_full_bytes: stats.delta_full_bytes.load(Relaxed),
            delta_baseline_ticks: stats.delta_baseline_ticks.load(Relaxed),
            bytes_out: stats.bytes_out.load(Relaxed),
            stream_states: stats.stream_states.load(Relaxed),
        }
    }
}
