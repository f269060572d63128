//! Headless network load: arena bots playing on any tickforge server over QUIC.
//!
//! ```text
//! cargo run --release --example bots -- --server 127.0.0.1:4433 --matches 12 --players 8 --seconds 20
//! ```
//!
//! Each bot is its own QUIC connection. Without `--secret-file` the bots
//! join in open mode (the server must have `net.open_mode = true`); with it
//! they mint tickets as a matchmaker would. The server certificate is
//! verified against `--cert` (the development certificate the server wrote
//! by default). A progress line appears every second; the last line starts
//! with `summary:` and gives updates, p50_ms/p99_ms command-to-update
//! latency and bytes per client per second.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tickforge::client::ClientConfig;
use tickforge::net::ServerSecret;
use tickforge::play::load::{LoadConfig, LoadStats, run_load};

#[derive(Debug, Parser)]
#[command(about = "Arena bots over QUIC against a tickforge server")]
struct Args {
    /// The server's UDP address.
    #[arg(long, default_value = "127.0.0.1:4433")]
    server: SocketAddr,
    /// Matches to play at once.
    #[arg(long, default_value_t = 10)]
    matches: usize,
    /// Bots per match (the arena holds 16).
    #[arg(long, default_value_t = 8)]
    players: u32,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
    /// The server certificate to trust (DER or PEM).
    #[arg(long, default_value = tickforge::net::DEFAULT_DEV_CERT)]
    cert: PathBuf,
    /// The server name the certificate must carry.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Mint tickets with the secret in this file (else join in open mode).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// QUIC endpoints (UDP sockets) the bots share.
    #[arg(long, default_value_t = 4)]
    endpoints: usize,
    /// Match ids are `{prefix}-{slot}-{round}` (default: `bots-{unix ms}`).
    #[arg(long)]
    prefix: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    anyhow::ensure!(args.matches > 0, "--matches must be at least 1");
    anyhow::ensure!(
        (1..=16).contains(&args.players),
        "--players must be 1 to 16"
    );
    let mut client = ClientConfig::trusting_file(args.server, &args.cert)
        .with_context(|| format!("reading the server certificate {}", args.cert.display()))?;
    client.server_name = args.server_name.clone();
    let mut config = LoadConfig::new(client, args.matches, args.players);
    config.endpoints = args.endpoints;
    if let Some(prefix) = &args.prefix {
        config.match_prefix = prefix.clone();
    }
    if let Some(path) = &args.secret_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        config.secret = Some(ServerSecret::new(text.trim().as_bytes())?);
    }
    let clients = args.matches as u64 * u64::from(args.players);
    eprintln!(
        "tickforge bots: {} matches x {} players = {clients} QUIC clients against {} ({}), matches {}-<slot>-<round>{}",
        args.matches,
        args.players,
        args.server,
        if config.secret.is_some() {
            "tickets"
        } else {
            "open mode"
        },
        config.match_prefix,
        args.seconds
            .map_or_else(|| ", until Ctrl-C".to_owned(), |s| format!(", {s} s")),
    );

    let stats = Arc::new(LoadStats::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let load = tokio::spawn(run_load(config, stats.clone(), async {
        let _ = stop_rx.await;
    }));
    let started = Instant::now();
    let mut previous = stats.snapshot();
    let mut last = started;
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.tick().await;
    loop {
        tokio::select! {
            _ = progress.tick() => {
                let now = stats.snapshot();
                eprintln!(
                    "[{:>4}s] {}",
                    started.elapsed().as_secs(),
                    now.progress_line(&previous, last.elapsed(), clients)
                );
                previous = now;
                last = Instant::now();
                if args.seconds.is_some_and(|s| started.elapsed() >= Duration::from_secs(s)) {
                    break;
                }
            }
            _ = tokio::signal::ctrl_c() => {
                eprintln!("stopped by Ctrl-C");
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    let _ = stop_tx.send(());
    load.await.context("the load task panicked")??;
    let summary = stats.snapshot();
    println!(
        "summary: seconds={:.1} server={} matches={} players={} {}",
        elapsed.as_secs_f64(),
        args.server,
        args.matches,
        args.players,
        summary.summary_fields(elapsed, clients),
    );
    Ok(())
}
