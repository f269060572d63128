//! The server process of the `network-split` benchmark: the engine (memory
//! store) and the QUIC server in open mode, alone in its process so that
//! its CPU time is its own. It installs the Prometheus recorder as a node
//! with its admin endpoint does, so the metrics' cost is measured too. It
//! prints `READY <addr>` once bound, answers each `stats` line on stdin
//! with a `STATS <json>` line of its counters, and stops when stdin closes.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tickforge::arena::Arena;
use tickforge::engine::{Engine, EngineSettings};
use tickforge::net::server::{Server, TransportTotals};
use tickforge::net::{NetConfig, TlsSource};
use tickforge::store::MemoryStore;

/// What the server process is asked to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerSpec {
    pub tick_hz: u32,
    /// Where the development certificate is written (the clients trust it).
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// Refuse new connections past `admit_cpu_percent` CPU, 90 % tick
    /// load, 50 ms of scheduling lag, `admit_send_delay_ms` of send delay or
    /// `admit_receive_queue_kib` of receive queue; `false` keeps only the
    /// connection cap.
    pub admission: bool,
    /// `admit_max_cpu_percent` while `admission` is on.
    #[serde(default = "default_cpu_percent")]
    pub admit_cpu_percent: u32,
    /// `admit_max_send_delay_ms` while `admission` is on (0 = off).
    #[serde(default)]
    pub admit_send_delay_ms: u64,
    /// `admit_max_receive_queue_kib` while `admission` is on (0 = off).
    #[serde(default)]
    pub admit_receive_queue_kib: u64,
    /// `socket_buffer_bytes` in KiB (`None`: the default).
    #[serde(default)]
    pub socket_buffer_kib: Option<usize>,
    /// Phases of the tick (`EngineSettings::tick_phases`).
    #[serde(default = "default_phases")]
    pub tick_phases: u32,
    /// The server's `net.batch_sends`.
    pub batch_sends: bool,
}

fn default_phases() -> u32 {
    EngineSettings::default().tick_phases
}

fn default_cpu_percent() -> u32 {
    85
}

/// The server's counters at one moment (cumulative).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ServerCounters {
    pub states: u64,
    pub deltas: u64,
    pub delta_bytes: u64,
    pub delta_full_bytes: u64,
    pub bytes_out: u64,
    pub admitted: u64,
    pub refused_full: u64,
    pub refused_unanswered: u64,
    pub open: u64,
    pub ticks: u64,
    pub late_ticks: u64,
    pub shards: usize,
    pub rss_bytes: u64,
    /// `sendmmsg` calls and the transmits they sent (batch_sends only).
    pub send_calls: u64,
    pub send_transmits: u64,
    /// quinn's counters summed over the open connections.
    pub transport: TransportTotals,
}

pub async fn run(spec: ServerSpec) -> anyhow::Result<()> {
    tickforge::admin::metrics::install().context("installing the metrics recorder")?;
    let settings = EngineSettings {
        tick_hz: spec.tick_hz,
        tick_phases: spec.tick_phases,
        ..EngineSettings::default()
    };
    let shards = settings.shards;
    let engine = Arc::new(Engine::start(
        Arena::default(),
        MemoryStore::new(),
        settings,
        "bench",
    ));
    let defaults = NetConfig::default();
    let net = NetConfig {
        listen: "127.0.0.1:0".parse().context("loopback address")?,
        open_mode: true,
        tls: TlsSource::Dev {
            cert: spec.cert.clone(),
            key: spec.key.clone(),
        },
        admit_max_cpu_percent: if spec.admission {
            spec.admit_cpu_percent
        } else {
            0
        },
        socket_buffer_bytes: spec
            .socket_buffer_kib
            .map_or(defaults.socket_buffer_bytes, |kib| kib * 1024),
        admit_max_receive_queue_bytes: if spec.admission {
            spec.admit_receive_queue_kib * 1024
        } else {
            0
        },
        admit_max_send_delay: if spec.admission {
            Duration::from_millis(spec.admit_send_delay_ms)
        } else {
            Duration::ZERO
        },
        admit_max_tick_load_percent: if spec.admission { 90 } else { 0 },
        admit_max_lag: if spec.admission {
            Duration::from_millis(50)
        } else {
            Duration::ZERO
        },
        batch_sends: spec.batch_sends,
        ..defaults
    };
    let server = Server::bind(engine.clone(), net).context("starting the QUIC server")?;
    let stats = server.stats();
    let send_batches = server.send_batch_stats();
    let transport = server.transport_probe();
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    println!("READY {addr}");

    // Stdin is read on a thread of its own; each line comes back here.
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = lines.recv().await {
        if line.trim() == "stats" {
            let engine_stats = engine.stats();
            let counters = ServerCounters {
                states: stats.states.load(Relaxed),
                deltas: stats.deltas.load(Relaxed),
                delta_bytes: stats.delta_bytes.load(Relaxed),
                delta_full_bytes: stats.delta_full_bytes.load(Relaxed),
                bytes_out: stats.bytes_out.load(Relaxed),
                admitted: stats.admitted.load(Relaxed),
                refused_full: stats.refused_full.load(Relaxed),
                refused_unanswered: stats.refused_unanswered.load(Relaxed),
                open: stats.open.load(Relaxed),
                ticks: engine_stats.ticks,
                late_ticks: engine_stats.late_ticks,
                shards,
                rss_bytes: crate::sys::rss_bytes().unwrap_or(0),
                send_calls: send_batches
                    .as_ref()
                    .map_or(0, |b| b.system_calls.load(Relaxed)),
                send_transmits: send_batches
                    .as_ref()
                    .map_or(0, |b| b.transmits_sent.load(Relaxed)),
                transport: transport.totals(),
            };
            println!(
                "STATS {}",
                serde_json::to_string(&counters).context("encoding the counters")?
            );
        }
    }
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), engine.shutdown()).await;
    Ok(())
}
