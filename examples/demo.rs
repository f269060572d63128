//! The tickforge demo: hosts arena matches full of simulated players and
//! shows the engine working live.
//!
//! ```text
//! cargo run --release --example demo -- --seconds 20 --matches 200 --players 8
//! ```
//!
//! Every player sends one command per tick (move, turn or fire, chosen by
//! [`tickforge::arena::bot::Bot`] from the state it last saw). A progress
//! line appears every second; at the end one machine-readable line starts
//! with `summary:`. With no `--seconds` it runs until Ctrl-C. Storage is the
//! embedded memory store unless `REDIS_URL` is set (or `--config` says so).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tickforge::arena::Arena;
use tickforge::arena::autoplay::{AutoplayCounters, play_slot};
use tickforge::config::Config;
use tickforge::engine::{Engine, EngineStats};
use tickforge::store::{AnyStore, Store};

#[derive(Debug, Parser)]
#[command(about = "Host arena matches full of bots and show the engine live")]
struct Args {
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
    /// Matches hosted at once; a match that ends is replaced.
    #[arg(long, default_value_t = 100)]
    matches: usize,
    /// Simulated players per match.
    #[arg(long, default_value_t = 8)]
    players: u32,
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

async fn run<S: Store>(
    store: S,
    store_name: &str,
    config: &Config,
    args: &Args,
) -> anyhow::Result<()> {
    let engine = Arc::new(Engine::start(
        Arena::default(),
        store,
        config.engine,
        &config.edition,
    ));
    let counters = Arc::new(AutoplayCounters::default());
    // Unique match ids per run, so a persistent store never sees a clash.
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    eprintln!(
        "tickforge demo: {} matches x {} players at {} Hz on {} shards, {} store{}",
        args.matches,
        args.players,
        config.engine.tick_hz,
        config.engine.shards,
        store_name,
        args.seconds
            .map_or_else(|| ", until Ctrl-C".to_owned(), |s| format!(", {s} s")),
    );
    let mut drivers = tokio::task::JoinSet::new();
    for slot in 0..args.matches {
        let engine = engine.clone();
        let counters = counters.clone();
        let players = args.players;
        let prefix = format!("demo-{run_id}");
        drivers.spawn(play_slot(engine, counters, prefix, slot, players));
    }

    let started = Instant::now();
    let deadline = args.seconds.map(Duration::from_secs);
    let mut previous = engine.stats();
    let mut last_report = started;
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.tick().await;
    let stopped_by_user = loop {
        tokio::select! {
            _ = progress.tick() => {
                let now = Instant::now();
                let stats = engine.stats();
                print_progress(started, now - last_report, &previous, &stats, &counters, config.engine.shards);
                previous = stats;
                last_report = now;
                if deadline.is_some_and(|d| started.elapsed() >= d) {
                    break false;
                }
            }
            _ = tokio::signal::ctrl_c() => break true,
            Some(result) = drivers.join_next() => {
                // A driver only returns on an engine error.
                result.context("match driver panicked")??;
            }
        }
    };
    let elapsed = started.elapsed();
    drivers.abort_all();
    while drivers.join_next().await.is_some() {}
    engine.shutdown().await;
    let stats = engine.stats();
    if stopped_by_user {
        eprintln!("stopped by Ctrl-C");
    }
    print_summary(elapsed, &stats, &counters, store_name, config, args);
    Ok(())
}

fn per_second(now: u64, before: u64, window: Duration) -> f64 {
    now.saturating_sub(before) as f64 / window.as_secs_f64().max(1e-9)
}

fn print_progress(
    started: Instant,
    window: Duration,
    before: &EngineStats,
    now: &EngineStats,
    counters: &AutoplayCounters,
    shards: usize,
) {
    eprintln!(
        "[{:>4}s] matches={} ticks/s={:.0} match_ticks/s={:.0} events/s={:.0} commands/s={:.0} rejected={} \
         tick_p50={:.2}ms tick_p99={:.2}ms late_ticks={} finished={} store_backlog={}",
        started.elapsed().as_secs(),
        now.matches,
        per_second(now.ticks, before.ticks, window) / shards.max(1) as f64,
        per_second(now.match_ticks, before.match_ticks, window),
        per_second(now.events, before.events, window),
        per_second(now.commands, before.commands, window),
        now.rejected,
        now.tick_ms(0.5),
        now.tick_ms(0.99),
        now.late_ticks,
        counters.finished.load(Relaxed),
        now.backlog_jobs,
    );
}

fn print_summary(
    elapsed: Duration,
    stats: &EngineStats,
    counters: &AutoplayCounters,
    store_name: &str,
    config: &Config,
    args: &Args,
) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "summary: seconds={:.1} store={} shards={} tick_hz={} matches={} players={} finished={} ticks={} \
         match_ticks={} ticks_per_s={:.1} events={} events_per_s={:.0} commands={} rejected={} dropped={} \
         late_ticks={} p50_tick_ms={:.3} p99_tick_ms={:.3} max_tick_ms={:.3} persisted_events={} appends={} \
         p99_append_ms={:.3}",
        secs,
        store_name,
        config.engine.shards,
        config.engine.tick_hz,
        counters.created.load(Relaxed),
        args.players,
        counters.finished.load(Relaxed),
        stats.ticks,
        stats.match_ticks,
        stats.ticks as f64 / secs / config.engine.shards as f64,
        stats.events,
        stats.events as f64 / secs,
        stats.commands,
        stats.rejected,
        stats.dropped + counters.submit_errors.load(Relaxed),
        stats.late_ticks,
        stats.tick_ms(0.5),
        stats.tick_ms(0.99),
        stats.tick_micros.max() as f64 / 1000.0,
        stats.persisted_events,
        stats.appends,
        stats.append_ms(0.99),
    );
}
