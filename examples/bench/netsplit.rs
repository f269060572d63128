//! Benchmark `network-split`: the QUIC server in one process and its
//! clients in another, each optionally pinned to CPUs, so the server's CPU
//! time per client is measured on its own (from `/proc/<pid>/stat`).
//!
//! Each step starts a fresh server process (`netsplit_server`) and a fresh
//! client process (`netsplit_clients`) with N clients, 8 to a match, on the
//! fixed-schedule load (one Move per tick from a random phase) or the
//! reply-driven bots. After the joins and a warm-up, the window is measured
//! on both sides. Steps double from 100 until p99 exceeds one tick + 5 ms
//! or a client fails to join, then bisect between the last two
//! (`--network-refine` rounds, in whole matches); the largest count that
//! holds is reported.
//! `--network-compare-cores` runs the search twice: the server on its
//! CPUs, then on every CPU of the two lists (the clients keep theirs).
//! `--network-neighbours N` puts N spinning processes beside the server on
//! each of its CPUs: the server then saturates before its clients do, which
//! shows what overload does to admission and handshakes.

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::child::LineChild;
use crate::netsplit_clients::{ClientsResult, ClientsSpec, LoadKind};
use crate::netsplit_server::{ServerCounters, ServerSpec};
use crate::report::{self, Outcome, Table, Target, num, progress};
use crate::sys::{CpuMeter, MachineMeter, cpus_label};
use tickforge::net::server::TransportTotals;

/// p99 may exceed the tick period by this much.
const TARGET_EXTRA_MS: f64 = 5.0;
/// The ceiling for server CPU per client-second, µs.
const TARGET_US_PER_CLIENT_S: f64 = 500.0;

#[derive(Debug, Clone, Serialize)]
pub struct SplitConfig {
    /// Client counts, in order.
    pub steps: Vec<usize>,
    /// Stop at the first step that does not hold.
    pub search: bool,
    /// How long a client's join retries refusals (the client library's
    /// `retry_for`; 0 counts the first refusal).
    pub join_retry_s: f64,
    /// Bisection rounds between the largest count that held and the
    /// smallest that failed (search only).
    pub refine: u32,
    pub players: u32,
    pub tick_hz: u32,
    pub warmup_s: f64,
    pub measure_s: f64,
    pub load: LoadKind,
    pub server_cpus: Option<Vec<usize>>,
    pub client_cpus: Option<Vec<usize>>,
    pub compare_cores: bool,
    pub admission: bool,
    /// The server's `admit_max_cpu_percent` while `admission` is on.
    pub admit_cpu_percent: u32,
    /// The server's `admit_max_send_delay_ms` while `admission` is on.
    pub admit_send_delay_ms: u64,
    /// The server's `admit_max_receive_queue_kib` while `admission` is on.
    pub admit_receive_queue_kib: u64,
    /// The server's `socket_buffer_bytes`, in KiB (`None`: its default).
    pub socket_buffer_kib: Option<usize>,
    /// Phases of the server's tick (`engine.tick_phases`).
    pub tick_phases: u32,
    /// The server's `net.batch_sends`.
    pub batch_sends: bool,
    /// Scheduling priority of both processes (0 = normal).
    pub nice: i32,
    /// Busy-looping processes pinned to each server CPU (noisy neighbours).
    pub neighbours: u32,
}

/// One step as both processes measured it.
#[derive(Debug, Clone, Serialize)]
pub struct SplitStep {
    pub server_cpus: String,
    pub client_cpus: String,
    pub clients: ClientsResult,
    pub server_cpu_percent: Option<f64>,
    /// Server CPU time per connected client per second of window, µs.
    pub server_us_per_client_s: Option<f64>,
    pub client_cpu_percent: Option<f64>,
    /// The rest of the machine meanwhile (other builds), % of one core.
    pub others_cpu_percent: Option<f64>,
    pub server_bytes_out_per_client_s: f64,
    /// Delta datagram bytes over the full states they replaced.
    pub delta_to_full: f64,
    pub server_shards: usize,
    pub late_ticks: u64,
    pub refused_by_server: u64,
    pub server_rss_mib: f64,
    /// Transmits per `sendmmsg` over the window (batch_sends only).
    pub transmits_per_send_call: Option<f64>,
    /// What QUIC sent and received over (nearly all of) the window.
    pub transport: TransportWindow,
    pub holds: bool,
}

pub async fn run(config: &SplitConfig) -> anyhow::Result<(Outcome, Vec<crate::svg::Series>)> {
    let period_ms = 1000.0 / f64::from(config.tick_hz);
    let goal_ms = period_ms + TARGET_EXTRA_MS;
    let mut setups = vec![config.server_cpus.clone()];
    if config.compare_cores {
        let mut all: Vec<usize> = config
            .server_cpus
            .iter()
            .chain(config.client_cpus.iter())
            .flatten()
            .copied()
            .collect();
        if all.len() < 2 {
            all = (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        }
        all.sort_unstable();
        all.dedup();
        setups = vec![Some(vec![all[0]]), Some(all)];
    }
    let mut steps: Vec<SplitStep> = Vec::new();
    let mut held: Vec<(String, Option<usize>)> = Vec::new();
    for (setup_index, server_cpus) in setups.iter().enumerate() {
        let label = cpus_label(server_cpus.as_deref());
        let cpus = server_cpus.as_deref();
        let mut largest = None;
        let mut smallest_failed = None;
        for (index, &clients) in config.steps.iter().enumerate() {
            let tag = format!("s{setup_index}x{index}");
            let step = measure(config, cpus, clients, tag, goal_ms).await?;
            if step.holds {
                largest = Some(clients);
            } else {
                smallest_failed.get_or_insert(clients);
            }
            steps.push(step);
            if config.search && smallest_failed.is_some() {
                break;
            }
        }
        // Bisect between the largest count that held and the smallest that
        // failed, in whole matches.
        let players = config.players.max(1) as usize;
        for round in 0..if config.search { config.refine } else { 0 } {
            let (Some(held), Some(failed)) = (largest, smallest_failed) else {
                break;
            };
            let mid = (held + failed) / 2 / players * players;
            if mid <= held || mid >= failed {
                break;
            }
            let tag = format!("s{setup_index}r{round}");
            let step = measure(config, cpus, mid, tag, goal_ms).await?;
            if step.holds {
                largest = Some(mid);
            } else {
                smallest_failed = Some(mid);
            }
            steps.push(step);
        }
        held.push((label, largest));
    }
    steps.sort_by(|a, b| {
        (setups_index(&setups, &a.server_cpus), a.clients.clients)
            .cmp(&(setups_index(&setups, &b.server_cpus), b.clients.clients))
    });

    let mut table = Table::new(
        format!(
            "network-split: server and clients in separate processes, QUIC on loopback, {} players per match, {} Hz, {:?} load, batch_sends {}",
            config.players, config.tick_hz, config.load, config.batch_sends
        ),
        &[
            "server CPUs",
            "clients",
            "joined",
            "refused",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "states/s/client",
            "B/s/client",
            "server CPU %",
            "server µs/client-s",
            "client CPU %",
            "sends skipped",
            "others CPU %",
            "holds",
        ],
    );
    for s in &steps {
        let c = &s.clients;
        table.row(vec![
            s.server_cpus.clone(),
            c.clients.to_string(),
            c.joined.to_string(),
            refused_cell(c),
            num(c.p50_ms, 1),
            num(c.p90_ms, 1),
            num(c.p99_ms, 1),
            num(c.max_ms, 0),
            num(c.states_per_client_s, 1),
            num(c.bytes_per_client_s, 0),
            report::opt(s.server_cpu_percent, 0),
            report::opt(s.server_us_per_client_s, 0),
            report::opt(s.client_cpu_percent, 0),
            c.skipped_sends.to_string(),
            report::opt(s.others_cpu_percent, 0),
            if s.holds { "yes" } else { "no" }.to_owned(),
        ]);
    }
    table.note(format!(
        "clients on CPUs {}; latency: command handed to the client library -> first state at or after \
         the tick it was applied on; holds: p99 <= {goal_ms:.1} ms and every client joined and stayed. \
         refused: still refused with ServerFull after retrying for {} s (retries: how many the joined \
         clients needed). \
         B/s/client: state and frame payload received (no QUIC/UDP headers). Server CPU from \
         /proc/<pid>/stat over the window; sends skipped: scheduled Moves the client process was \
         a whole period late for (the clients, not the server, were short of CPU); others: the \
         rest of the machine meanwhile, with the time the hypervisor stole from this VM (% of one \
         core); both processes at nice {}.{}",
        cpus_label(config.client_cpus.as_deref()),
        config.join_retry_s,
        config.nice,
        if config.neighbours > 0 {
            format!(
                " Noisy neighbours: {} busy-looping process(es) on each server CPU at the same \
                 priority (counted in others), so the server gets about 1/{} of its cores.",
                config.neighbours,
                config.neighbours + 1
            )
        } else {
            String::new()
        }
    ));
    let mut targets = Vec::new();
    for (label, largest) in &held {
        targets.push(Target::new(
            "network-split",
            format!("largest client count at p99 <= {goal_ms:.1} ms, server on CPUs {label}"),
            "reported",
            largest.map_or("none".to_owned(), |n| n.to_string()),
            None,
        ));
        let at_largest = largest.and_then(|n| {
            steps
                .iter()
                .find(|s| &s.server_cpus == label && s.clients.clients == n)
        });
        if let Some(step) = at_largest {
            targets.push(Target::new(
                "network-split",
                format!(
                    "server CPU per client-second at {} clients (CPUs {label})",
                    step.clients.clients
                ),
                format!("<= {TARGET_US_PER_CLIENT_S:.0} µs"),
                report::opt(step.server_us_per_client_s, 0) + " µs",
                step.server_us_per_client_s
                    .map(|us| us <= TARGET_US_PER_CLIENT_S),
            ));
        }
    }
    if let [(_, Some(one)), (_, Some(two))] = held.as_slice() {
        let ratio = *two as f64 / *one as f64;
        targets.push(Target::new(
            "network-split",
            "clients held, server on 2 cores vs 1",
            ">= 1.8x",
            format!("{ratio:.2}x"),
            Some(ratio >= 1.8),
        ));
    }
    let series = steps
        .iter()
        .filter(|s| s.server_cpus == held[0].0)
        .map(|s| crate::svg::Series {
            label: format!("{} clients", s.clients.clients),
            log_bins: s.clients.log_bins.clone(),
            p001_ms: s.clients.p001_ms,
            p50_ms: s.clients.p50_ms,
            p99_ms: s.clients.p99_ms,
            p999_ms: s.clients.p999_ms,
        })
        .collect();
    let outcome = Outcome {
        name: "network-split",
        skipped: None,
        tables: vec![table],
        targets,
        results: serde_json::json!({ "config": config, "steps": steps }),
    };
    Ok((outcome, series))
}

/// `config.neighbours` spinning processes on each of the server's CPUs, at
/// the server's priority (none when the server is not pinned).
fn spawn_neighbours(
    config: &SplitConfig,
    server_cpus: Option<&[usize]>,
) -> anyhow::Result<Vec<LineChild>> {
    let mut neighbours = Vec::new();
    for &cpu in server_cpus.unwrap_or_default() {
        for _ in 0..config.neighbours {
            neighbours.push(LineChild::spawn("spin", &(), Some(&[cpu]), config.nice)?);
        }
    }
    Ok(neighbours)
}

/// Clients still refused after their retries, those whose joins failed
/// otherwise, the retries the joined ones needed, and sessions that ended
/// during the run (closed by the server, shed, or lost).
fn refused_cell(c: &ClientsResult) -> String {
    let mut cell = c.refused.to_string();
    if c.join_errors > 0 {
        cell += &format!(" (+{} failed)", c.join_errors);
    }
    if c.join_retries > 0 {
        cell += &format!(", {} retries", c.join_retries);
    }
    if c.ended > 0 {
        cell += &format!(", {} ended", c.ended);
    }
    cell
}

/// The order of the setup whose CPUs are `label`, for sorting steps.
fn setups_index(setups: &[Option<Vec<usize>>], label: &str) -> usize {
    setups
        .iter()
        .position(|cpus| cpus_label(cpus.as_deref()) == label)
        .unwrap_or(usize::MAX)
}

/// Runs one step with progress lines before and after.
async fn measure(
    config: &SplitConfig,
    server_cpus: Option<&[usize]>,
    clients: usize,
    tag: String,
    goal_ms: f64,
) -> anyhow::Result<SplitStep> {
    let label = cpus_label(server_cpus);
    progress(format!(
        "network-split: {clients} clients, server on CPUs {label}, clients on CPUs {}, {:?} load",
        cpus_label(config.client_cpus.as_deref()),
        config.load
    ));
    let step = step(config, server_cpus, clients, tag, goal_ms).await?;
    let c = &step.clients;
    progress(format!(
        "network-split {clients} (server CPUs {label}): joined {}/{}, refused {}, p50 {} p99 {} ms, \
         {} states/s and {} B/s per client, server CPU {}% ({} µs per client-s), clients {}%, others {}%{} -> {}",
        c.joined,
        c.clients,
        c.refused,
        num(c.p50_ms, 1),
        num(c.p99_ms, 1),
        num(c.states_per_client_s, 1),
        num(c.bytes_per_client_s, 0),
        report::opt(step.server_cpu_percent, 0),
        report::opt(step.server_us_per_client_s, 0),
        report::opt(step.client_cpu_percent, 0),
        report::opt(step.others_cpu_percent, 0),
        step.transmits_per_send_call
            .map_or(String::new(), |n| format!(
                ", {n:.1} datagrams per sendmmsg"
            )),
        if step.holds { "holds" } else { "does not hold" }
    ));
    Ok(step)
}

/// One client count: a fresh server process and a fresh client process.
async fn step(
    config: &SplitConfig,
    server_cpus: Option<&[usize]>,
    clients: usize,
    prefix: String,
    goal_ms: f64,
) -> anyhow::Result<SplitStep> {
    let tls = tempfile::tempdir().context("creating a directory for the certificate")?;
    let cert = tls.path().join("cert.der");
    let server_spec = ServerSpec {
        tick_hz: config.tick_hz,
        cert: cert.clone(),
        key: tls.path().join("key.der"),
        admission: config.admission,
        admit_cpu_percent: config.admit_cpu_percent,
        admit_send_delay_ms: config.admit_send_delay_ms,
        admit_receive_queue_kib: config.admit_receive_queue_kib,
        socket_buffer_kib: config.socket_buffer_kib,
        tick_phases: config.tick_phases,
        batch_sends: config.batch_sends,
    };
    let neighbours = spawn_neighbours(config, server_cpus)?;
    let mut server = LineChild::spawn("net-server", &server_spec, server_cpus, config.nice)?;
    let addr = server
        .expect("READY", Duration::from_secs(60))
        .await?
        .parse()
        .context("the server's address")?;
    let spec = ClientsSpec {
        server: addr,
        cert,
        clients,
        players: config.players,
        tick_hz: config.tick_hz,
        load: config.load,
        warmup_s: config.warmup_s,
        measure_s: config.measure_s,
        prefix,
        join_retry_s: config.join_retry_s,
    };
    let mut load = LineChild::spawn(
        "net-clients",
        &spec,
        config.client_cpus.as_deref(),
        config.nice,
    )?;
    // Joins come in waves of 100, each bounded at 20 s.
    let join_limit =
        Duration::from_secs_f64(60.0 + 20.0 * clients.div_ceil(100) as f64 + config.warmup_s);
    load.expect("WINDOW-START", join_limit).await?;
    let server_cpu = CpuMeter::start(Some(server.pid));
    let client_cpu = CpuMeter::start(Some(load.pid));
    let machine = MachineMeter::start();
    let before = server_counters(&mut server).await?;
    let window_started = std::time::Instant::now();
    // quinn's counters live with the connections, which close when the
    // window ends: read them a second before.
    tokio::time::sleep(Duration::from_secs_f64((config.measure_s - 1.0).max(0.5))).await;
    let late = server_counters(&mut server).await?;
    let transport = TransportWindow::between(&before, &late, window_started.elapsed());
    load.expect(
        "WINDOW-END",
        Duration::from_secs_f64(config.measure_s + 60.0),
    )
    .await?;
    let server_seconds = server_cpu.seconds();
    let server_cpu_percent = server_cpu.percent();
    let client_cpu_percent = client_cpu.percent();
    let machine_percent = machine.percent();
    let after = server_counters(&mut server).await?;
    let result: ClientsResult =
        serde_json::from_str(&load.expect("STEP-RESULT", Duration::from_secs(60)).await?)
            .context("the clients' result")?;
    load.finish(Duration::from_secs(10)).await;
    server.finish(Duration::from_secs(10)).await;
    for neighbour in neighbours {
        neighbour.finish(Duration::from_secs(2)).await;
    }

    let connected = result.joined.saturating_sub(result.ended).max(1) as f64;
    let window_s = result.window_s.max(1e-9);
    progress(format!(
        "network-split {}: {}",
        result.clients,
        transport.line()
    ));
    let delta_bytes = after.delta_bytes.saturating_sub(before.delta_bytes);
    let full_bytes = after
        .delta_full_bytes
        .saturating_sub(before.delta_full_bytes);
    let holds = result.p99_ms <= goal_ms
        && result.joined == result.clients as u64
        && result.ended == 0
        && result.samples > 0;
    Ok(SplitStep {
        server_cpus: cpus_label(server_cpus),
        client_cpus: cpus_label(config.client_cpus.as_deref()),
        server_cpu_percent,
        server_us_per_client_s: server_seconds.map(|s| s * 1e6 / window_s / connected),
        client_cpu_percent,
        others_cpu_percent: match (machine_percent, server_cpu_percent, client_cpu_percent) {
            (Some(all), Some(server), Some(clients)) => Some((all - server - clients).max(0.0)),
            _ => None,
        },
        server_bytes_out_per_client_s: after.bytes_out.saturating_sub(before.bytes_out) as f64
            / window_s
            / connected,
        delta_to_full: delta_bytes as f64 / full_bytes.max(1) as f64,
        server_shards: after.shards,
        late_ticks: after.late_ticks.saturating_sub(before.late_ticks),
        refused_by_server: after.refused_full + after.refused_unanswered,
        server_rss_mib: after.rss_bytes as f64 / 1024.0 / 1024.0,
        transmits_per_send_call: config.batch_sends.then(|| {
            after.send_transmits.saturating_sub(before.send_transmits) as f64
                / after.send_calls.saturating_sub(before.send_calls).max(1) as f64
        }),
        transport,
        holds,
        clients: result,
    })
}

/// Asks the server process for its counters and reads them.
async fn server_counters(server: &mut LineChild) -> anyhow::Result<ServerCounters> {
    server.send("stats")?;
    serde_json::from_str(&server.expect("STATS", Duration::from_secs(30)).await?)
        .context("the server's counters")
}

/// quinn's counters over a window: what the connections open at its end
/// sent and received, and for how long.
#[derive(Debug, Clone, Serialize)]
pub struct TransportWindow {
    pub totals: TransportTotals,
    pub seconds: f64,
}

impl TransportWindow {
    fn between(before: &ServerCounters, after: &ServerCounters, took: Duration) -> Self {
        Self {
            totals: after.transport.since(&before.transport),
            seconds: took.as_secs_f64(),
        }
    }

    /// One line: the server's packets each way per client-second, and
    /// what they carried.
    fn line(&self) -> String {
        let t = &self.totals;
        let client_seconds = (self.seconds * t.connections as f64).max(1e-9);
        let rate = |count: u64| count as f64 / client_seconds;
        format!(
            "server packets per client-second: out {:.1} ({:.1} states, {:.1} ACK frames, {:.2} pings, {:.2} stream frames), \
             in {:.1} ({:.1} inputs, {:.1} ACK frames, {:.2} pings, {:.2} stream frames), {:.3} lost",
            rate(t.udp_sent),
            rate(t.datagram_frames_sent),
            rate(t.ack_frames_sent),
            rate(t.pings_sent),
            rate(t.stream_frames_sent),
            rate(t.udp_received),
            rate(t.datagram_frames_received),
            rate(t.ack_frames_received),
            rate(t.pings_received),
            rate(t.stream_frames_received),
            rate(t.lost_packets),
        )
    }
}
