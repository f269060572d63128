//! The tickforge demo: a game server and its players in one process.
//!
//! ```text
//! cargo run --release --example demo -- --seconds 20 --matches 12 --players 8
//! ```
//!
//! By default it starts the engine and a QUIC server on loopback (open
//! mode, a development certificate) and connects `matches x players` bots
//! to it, each its own QUIC connection: commands go over reliable streams,
//! states come back as datagram deltas. `--transport local` skips the
//! network and drives the engine in-process, for engine loads of thousands
//! of matches. A progress line appears every second; at the end one
//! machine-readable line starts with `summary:`. Without `--seconds` it runs
//! until Ctrl-C. Storage is the embedded memory store unless `REDIS_URL` is
//! set (or `--config` says otherwise).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use tickforge::arena::Arena;
use tickforge::client::ClientConfig;
use tickforge::config::Config;
use tickforge::engine::{Engine, EngineStats};
use tickforge::net::server::Server;
use tickforge::play::autoplay::{AutoplayCounters, play_slot};
use tickforge::play::load::{LoadConfig, LoadSnapshot, LoadStats, run_load};
use tickforge::store::{AnyStore, Store};

/// glibc's malloc and free took about 15 % of a node's CPU at 400 clients
/// (per-packet allocations); mimalloc's thread-local free lists cost a
/// fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    /// Bots are QUIC clients of a server on loopback.
    Quic,
    /// Bots call the engine directly (no network).
    Local,
}

#[derive(Debug, Parser)]
#[command(about = "Host arena matches full of bots and show the engine live")]
struct Args {
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
    /// Matches played at once; a match that ends is replaced.
    #[arg(long, default_value_t = 12)]
    matches: usize,
    /// Bots per match (the arena holds 16).
    #[arg(long, default_value_t = 8)]
    players: u32,
    /// How the bots reach the engine.
    #[arg(long, value_enum, default_value_t = Transport::Quic)]
    transport: Transport,
    /// Configuration file (default: the built-in defaults).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    anyhow::ensure!(args.matches > 0, "--matches must be at least 1");
    anyhow::ensure!(
        (1..=16).contains(&args.players),
        "--players must be 1 to 16 (the arena's limit)"
    );
    let config = Config::load(args.config.as_deref()).context("loading configuration")?;
    let store = AnyStore::open(&config.storage)
        .await
        .with_context(|| format!("opening the {:?} store", config.storage))?;
    let name = store.name();
    run(store, name, &config, &args).await
}

/// What the players side reports, whichever transport carries it.
enum Players {
    Quic {
        stats: Arc<LoadStats>,
        stop: tokio::sync::oneshot::Sender<()>,
        load: tokio::task::JoinHandle<Result<(), tickforge::client::ClientError>>,
        server_stop: tokio::sync::oneshot::Sender<()>,
        server: tokio::task::JoinHandle<()>,
        net: Arc<tickforge::net::NetStats>,
    },
    Local {
        counters: Arc<AutoplayCounters>,
        drivers: tokio::task::JoinSet<Result<(), tickforge::engine::EngineError>>,
    },
}

async fn run<S: Store>(
    store: S,
    store_name: &str,
    config: &Config,
    args: &Args,
) -> anyhow::Result<()> {
    let engine = Arc::new(Engine::start(
        Arena::default(),
        store,
        config.engine.clone(),
        &config.edition,
    ));
    // Unique match ids per run, so a persistent store never sees a clash.
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let prefix = format!("demo-{run_id}");
    let clients = args.matches as u64 * u64::from(args.players);
    let mut players = match args.transport {
        Transport::Quic => start_quic(&engine, config, args, &prefix).await?,
        Transport::Local => start_local(&engine, args, &prefix),
    };
    eprintln!(
        "tickforge demo: {} matches x {} players over {}, {} Hz on {} shards, {} store{}",
        args.matches,
        args.players,
        match args.transport {
            Transport::Quic => "QUIC on loopback",
            Transport::Local => "in-process calls",
        },
        config.engine.tick_hz,
        config.engine.shards,
        store_name,
        args.seconds
            .map_or_else(|| ", until Ctrl-C".to_owned(), |s| format!(", {s} s")),
    );

    let started = Instant::now();
    let deadline = args.seconds.map(Duration::from_secs);
    let mut previous = engine.stats();
    // Shards tick from `Engine::start`; rates count from here, after set-up.
    let ticks_at_start = previous.ticks;
    let mut previous_net = net_snapshot(&players);
    let mut last_report = started;
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.tick().await;
    loop {
        tokio::select! {
            _ = progress.tick() => {
                let now = Instant::now();
                let stats = engine.stats();
                let net = net_snapshot(&players);
                let net_line = match (&net, &previous_net) {
                    (Some(n), Some(p)) => n.progress_line(p, now - last_report, clients),
                    _ => String::new(),
                };
                print_progress(started, now - last_report, &previous, &stats, config.engine.shards, &net_line);
                previous = stats;
                previous_net = net;
                last_report = now;
                if deadline.is_some_and(|d| started.elapsed() >= d) {
                    break;
                }
            }
            _ = tokio::signal::ctrl_c() => {
                eprintln!("stopped by Ctrl-C");
                break;
            }
            Some(result) = next_driver_exit(&mut players) => {
                // An in-process driver only returns on an engine error.
                result.context("match driver panicked")??;
            }
        }
    }
    let elapsed = started.elapsed();
    let ticks_in_window = engine.stats().ticks.saturating_sub(ticks_at_start);
    let (net_fields, finished) = match players {
        Players::Quic {
            stats,
            stop,
            load,
            server_stop,
            server,
            net,
        } => {
            let _ = stop.send(());
            load.await.context("the bots task panicked")??;
            let _ = server_stop.send(());
            server.await.context("the server task panicked")?;
            let snapshot = stats.snapshot();
            // Views are encoded once per distinct view and tick, state
            // messages once per (view, baseline): compare with states sent.
            let views = format!(
                " states_sent={} views_encoded={} state_messages_built={}",
                net.states.load(Relaxed),
                net.views_encoded.load(Relaxed),
                net.state_messages_built.load(Relaxed)
            );
            (
                format!(
                    " {}{views}",
                    net_fields(&snapshot.summary_fields(elapsed, clients))
                ),
                snapshot.finished,
            )
        }
        Players::Local {
            counters,
            mut drivers,
        } => {
            drivers.abort_all();
            while drivers.join_next().await.is_some() {}
            (String::new(), counters.finished.load(Relaxed))
        }
    };
    engine.shutdown_reporting(Duration::from_secs(5)).await;
    let stats = engine.stats();
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "summary: seconds={secs:.1} transport={} store={store_name} shards={} tick_hz={} matches={} players={} \
         clients={clients} finished={finished} ticks={} match_ticks={} ticks_per_s={:.1} events={} \
         events_per_s={:.0} commands={} rejected={} dropped={} late_ticks={} p50_tick_ms={:.3} \
         p99_tick_ms={:.3} max_tick_ms={:.3} persisted_events={} appends={} p99_append_ms={:.3} \
         trimmed_events={}{net_fields}",
        match args.transport {
            Transport::Quic => "quic",
            Transport::Local => "local",
        },
        config.engine.shards,
        config.engine.tick_hz,
        args.matches,
        args.players,
        stats.ticks,
        stats.match_ticks,
        ticks_in_window as f64 / secs / config.engine.shards.max(1) as f64,
        stats.events,
        stats.events as f64 / secs,
        stats.commands,
        stats.rejected,
        stats.dropped,
        stats.late_ticks,
        stats.tick_ms(0.5),
        stats.tick_ms(0.99),
        stats.tick_micros.max() as f64 / 1000.0,
        stats.persisted_events,
        stats.appends,
        stats.append_ms(0.99),
        stats.trimmed_events,
    );
    Ok(())
}

async fn start_quic<S: Store>(
    engine: &Arc<Engine<Arena, S>>,
    config: &Config,
    args: &Args,
    prefix: &str,
) -> anyhow::Result<Players> {
    let mut net = config.net.clone();
    net.listen = "127.0.0.1:0".parse().context("loopback address")?;
    net.open_mode = true;
    let server = Server::bind(engine.clone(), net).context("starting the QUIC server")?;
    let net_stats = server.stats();
    let client = ClientConfig::new(server.local_addr(), vec![server.certificate().clone()]);
    let (server_stop, server_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server.run(async {
        let _ = server_stop_rx.await;
    }));
    let mut load_config = LoadConfig::new(client, args.matches, args.players);
    load_config.match_prefix = prefix.to_owned();
    let stats = Arc::new(LoadStats::default());
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let load = tokio::spawn(run_load(load_config, stats.clone(), async {
        let _ = stop_rx.await;
    }));
    Ok(Players::Quic {
        stats,
        stop,
        load,
        server_stop,
        server,
        net: net_stats,
    })
}

fn start_local<S: Store>(engine: &Arc<Engine<Arena, S>>, args: &Args, prefix: &str) -> Players {
    let counters = Arc::new(AutoplayCounters::default());
    let mut drivers = tokio::task::JoinSet::new();
    for slot in 0..args.matches {
        drivers.spawn(play_slot(
            engine.clone(),
            counters.clone(),
            prefix.to_owned(),
            slot,
            args.players,
        ));
    }
    Players::Local { counters, drivers }
}

fn net_snapshot(players: &Players) -> Option<LoadSnapshot> {
    match players {
        Players::Quic { stats, .. } => Some(stats.snapshot()),
        Players::Local { .. } => None,
    }
}

/// Resolves when an in-process driver ends; never for QUIC bots.
async fn next_driver_exit(
    players: &mut Players,
) -> Option<Result<Result<(), tickforge::engine::EngineError>, tokio::task::JoinError>> {
    match players {
        Players::Local { drivers, .. } if !drivers.is_empty() => drivers.join_next().await,
        _ => std::future::pending().await,
    }
}

/// The bots' summary fields, renamed where the engine's line has the same key.
fn net_fields(fields: &str) -> String {
    fields
        .split_whitespace()
        .filter(|field| !field.starts_with("clients="))
        .map(|field| match field.split_once('=') {
            Some((key @ ("commands" | "rejected" | "events"), value)) => {
                format!("net_{key}={value}")
            }
            _ => field.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn per_second(now: u64, before: u64, window: Duration) -> f64 {
    now.saturating_sub(before) as f64 / window.as_secs_f64().max(1e-9)
}

fn print_progress(
    started: Instant,
    window: Duration,
    before: &EngineStats,
    now: &EngineStats,
    shards: usize,
    net_line: &str,
) {
    let store_state = if now.backlog_jobs > 0 {
        format!(" STORE UNAVAILABLE backlog={} jobs", now.backlog_jobs)
    } else {
        String::new()
    };
    eprintln!(
        "[{:>4}s] matches={} ticks/s={:.0} events/s={:.0} commands/s={:.0} rejected={} \
         tick_p99={:.2}ms late={} persisted={}{store_state} | {net_line}",
        started.elapsed().as_secs(),
        now.matches,
        per_second(now.ticks, before.ticks, window) / shards.max(1) as f64,
        per_second(now.events, before.events, window),
        per_second(now.commands, before.commands, window),
        now.rejected,
        now.tick_ms(0.99),
        now.late_ticks,
        now.persisted_events,
    );
}
