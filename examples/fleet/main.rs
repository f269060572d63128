//! A fleet of tickforge nodes on one Redis, under bots, losing one node to
//! SIGKILL and draining another: takeover, live migration and an audit.
//!
//! ```text
//! cargo run --release --example fleet -- --nodes 3 --seconds 30
//! cargo run --release --example fleet -- --nodes 3 --seconds 30 --matches 100 --players 8
//! ```
//!
//! It starts `--nodes` server processes (this example re-run as a node,
//! serving the arena exactly as `tickforge serve` does; `--node-binary`
//! runs a `tickforge` binary instead) on one Redis (`REDIS_URL`, else a `redis-server` child of
//! its own), all with one secret and one certificate, `[fleet]` leases of
//! `--lease-ttl-ms` and sync durability. `--matches` x `--players` arena
//! bots join through different nodes (joins for a match another node owns
//! are redirected), each a QUIC session that knows every node. A third of
//! the way in, node-1 gets SIGKILL: its leases expire and the others take
//! its matches over, while its players resume on any node. Two thirds in,
//! node-2 gets SIGTERM: it hands each match to a live node and redirects
//! its players. Meanwhile every match's lease and head in Redis is read
//! every 20 ms.
//!
//! A progress line appears every second. At the end the nodes are drained
//! and Redis audited: every event log gap-free from 0 to its head, and
//! every event a client saw stored under its sequence exactly as seen. The
//! last line is
//!
//! ```text
//! summary: nodes=3 killed=1 drained=1 matches=.. takeovers=.. takeover_p50_ms=..
//! takeover_p99_ms=.. takeover_max_ms=.. migrations=.. migration_pause_p50_ms=..
//! migration_pause_p99_ms=.. migration_pause_max_ms=.. sessions_lost=.. events_lost=.. log_gaps=..
//! ```
//!
//! (on one line). Takeover time is from the kill until the match's head
//! tick advances in Redis or a client receives a newer state; the pause is
//! a player's longest gap between two states around the migration. The
//! exit code is non-zero when a session, an event or a match was lost.

mod audit;
mod bots;
mod measure;
mod nodes;
#[allow(dead_code)]
#[path = "../bench/redis_server.rs"]
mod redis_server;
mod report;
#[allow(dead_code)]
#[path = "../bench/sys.rs"]
mod sys;
mod watcher;

use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

use bots::{Bots, BotsSpec};
use nodes::{Fate, Fleet, FleetSpec, NodeProgram};
use redis_server::RedisTarget;
use report::{Summary, now_ms, progress};
use tickforge::arena::Arena;
use tickforge::config::Config;
use watcher::Watcher;

/// A fleet of nodes under bots: one killed, one drained.
#[derive(Debug, Parser)]
struct Args {
    /// Server processes (at least 3: one is killed, one drained).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seconds of play after every bot joined; the kill comes at a third,
    /// the drain at two thirds.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Matches played at once.
    #[arg(long, default_value_t = 30)]
    matches: usize,
    /// Bots per match (1 to 16).
    #[arg(long, default_value_t = 4)]
    players: u32,
    /// How long a node's leases last unrenewed.
    #[arg(long, default_value_t = 2000)]
    lease_ttl_ms: u64,
    /// Matches a node hosts at most (default: all of them, so the last
    /// node standing can hold every match).
    #[arg(long)]
    max_matches: Option<usize>,
    /// Shard tasks per node.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Spread the players' joins over this many milliseconds (default:
    /// 20 per match).
    #[arg(long)]
    join_ramp_ms: Option<u64>,
    /// A client connection silent this long is dropped (then resumed).
    #[arg(long, default_value_t = 1500)]
    idle_timeout_ms: u64,
    /// Run this `tickforge` binary (`serve --config`) as the nodes,
    /// instead of this example's own executable serving the arena the
    /// same way.
    #[arg(long)]
    node_binary: Option<std::path::PathBuf>,
    /// Internal: serve as one node with this configuration (how the
    /// example starts its nodes).
    #[arg(long, hide = true)]
    serve_node: Option<std::path::PathBuf>,
    /// Keep the nodes' configurations and logs (their directory is
    /// printed); they are always kept when something was lost.
    #[arg(long)]
    keep: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(config) = &args.serve_node {
        tickforge::cli::init_logging();
        return tickforge::cli::block_on(async {
            let config = Config::load(Some(config)).context("loading the node's configuration")?;
            tickforge::cli::serve(Arena::default(), config).await
        });
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// The whole run; `Ok(false)` when something was lost.
async fn run(args: Args) -> anyhow::Result<bool> {
    if args.nodes < 3 {
        bail!("--nodes must be at least 3 (one is killed, one drained, one survives)");
    }
    if !(1..=16).contains(&args.players) {
        bail!("--players must be 1 to 16");
    }
    if args.seconds < 9 || args.matches == 0 {
        bail!("--seconds must be at least 9 and --matches at least 1");
    }
    report::start_clock();
    let program = match args.node_binary.clone() {
        Some(binary) => NodeProgram::Binary(binary),
        None => NodeProgram::this_example()?,
    };
    let Some(redis) = RedisTarget::open().await? else {
        bail!("no Redis: set REDIS_URL or install redis-server");
    };
    let dir = tempfile::Builder::new()
        .prefix("tickforge-fleet-")
        .tempdir()
        .context("creating the run's directory")?;
    let edition = format!(
        "fleet-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let lease_ttl = Duration::from_millis(args.lease_ttl_ms);
    let spec = FleetSpec {
        redis_url: redis.url.clone(),
        edition: edition.clone(),
        lease_ttl,
        max_matches: args.max_matches.unwrap_or(args.matches),
        shards: args.shards,
    };
    let mut fleet = Fleet::prepare(dir.path(), program, args.nodes, &spec)?;
    fleet.start_all().await?;
    progress(format!(
        "{} nodes ready ({}), edition {edition}, logs in {}",
        fleet.nodes.len(),
        fleet
            .nodes
            .iter()
            .map(|n| format!("{} {}", n.id, n.quic))
            .collect::<Vec<_>>()
            .join(", "),
        dir.path().display()
    ));
    let watcher = Watcher::start(&redis.url, &edition).await?;
    let bots = Bots::start(BotsSpec {
        nodes: fleet.addresses(),
        trusted: fleet.trusted.clone(),
        matches: args.matches,
        players: args.players,
        prefix: "m".into(),
        idle_timeout: Duration::from_millis(args.idle_timeout_ms),
        retry_for: lease_ttl * 3 + Duration::from_secs(10),
        join_ramp: Duration::from_millis(args.join_ramp_ms.unwrap_or(20 * args.matches as u64)),
    })?;

    // Everyone joins first; the clock of the scenario starts then.
    let seats = args.matches as u64 * u64::from(args.players);
    let joined_by = now_ms() + 30_000 + args.join_ramp_ms.unwrap_or(20 * args.matches as u64);
    while bots.live.connected.load(Relaxed) < seats && now_ms() < joined_by {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress(format!(
        "{}/{seats} players joined",
        bots.live.connected.load(Relaxed)
    ));
    let start = now_ms();
    let total = args.seconds * 1000;
    let kill_at = start + total / 3;
    let drain_at = start + total * 2 / 3;
    let (killed, drained) = (0usize, 1usize);
    let mut kill_time = None;
    let mut drain_time = None;
    let mut last_states = bots.live.states.load(Relaxed);
    let mut last_at = now_ms();
    let mut next_line = start + 1000;
    // Each node's fleet counters as last read (a killed node's stay).
    let mut counters = vec![nodes::NodeMetrics::default(); fleet.nodes.len()];
    loop {
        let now = now_ms();
        if kill_time.is_none() && now >= kill_at {
            fleet.kill(killed)?;
            kill_time = Some(now_ms());
            progress(format!("SIGKILL {}", fleet.nodes[killed].id));
        }
        if drain_time.is_none() && now >= drain_at {
            fleet.terminate(drained)?;
            drain_time = Some(now_ms());
            progress(format!("SIGTERM {} (drain)", fleet.nodes[drained].id));
        }
        if let Fate::Drained(None) = fleet.nodes[drained].fate
            && let Some(status) = fleet.wait_drained(drained, Duration::ZERO).await
        {
            progress(format!("{} exited: {status}", fleet.nodes[drained].id));
        }
        if now >= start + total {
            break;
        }
        if now >= next_line {
            let states = bots.live.states.load(Relaxed);
            let rate = (states - last_states) as f64 * 1000.0 / (now - last_at).max(1) as f64;
            (last_states, last_at) = (states, now);
            let leases = watcher
                .seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .matches_per_node();
            let mut parts = Vec::new();
            for (node, last) in fleet.nodes.iter().zip(counters.iter_mut()) {
                let held = leases.get(&node.id).copied().unwrap_or(0);
                let metrics = node.metrics().await;
                if let Some(m) = metrics {
                    *last = m;
                }
                parts.push(match (node.fate, metrics) {
                    (Fate::Killed, _) => format!("{} killed leases={held}", node.id),
                    (Fate::Drained(None), Some(m)) => format!(
                        "{} draining matches={} leases={held} handed_over={}",
                        node.id, m.matches, m.handovers
                    ),
                    (Fate::Drained(_), _) => format!("{} drained leases={held}", node.id),
                    (Fate::Running, Some(m)) => format!(
                        "{} matches={} leases={held} sessions={}",
                        node.id, m.matches, m.sessions
                    ),
                    (Fate::Running, None) => format!("{} (no metrics) leases={held}", node.id),
                });
            }
            progress(format!(
                "{} | players={}/{seats} states/s={rate:.0} resumes={} lost={}",
                parts.join(" | "),
                bots.live.connected.load(Relaxed),
                bots.live.resumes.load(Relaxed),
                bots.live.lost.load(Relaxed),
            ));
            next_line += 1000;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let end = now_ms();
    let seen_events = bots.seen.clone();
    let sessions = bots.stop().await;
    let drain_status = fleet.wait_drained(drained, Duration::from_secs(30)).await;
    let watcher_errors = watcher.errors.load(Relaxed);
    let history = watcher.stop().await;
    let regressions_seen = history_regressions(&history);
    fleet.stop_all().await;
    let client_events = seen_events.take();
    let findings = audit::audit(&redis.url, &edition, &client_events).await?;

    let (kill_time, drain_time) = (
        kill_time.context("the run ended before the kill")?,
        drain_time.context("the run ended before the drain")?,
    );
    let takeovers = measure::takeovers(&history, &sessions, &fleet.nodes[killed].id, kill_time);
    let migrations = measure::migrations(&history, &sessions, &fleet.nodes[drained].id, drain_time);
    let lost = measure::lost_sessions(&sessions, end, 5_000);
    let conflicts = seen_events.conflicts.load(Relaxed);
    let total = |f: fn(&nodes::NodeMetrics) -> u64| counters.iter().map(f).sum::<u64>();
    let summary = Summary {
        nodes: args.nodes,
        killed: 1,
        drained: 1,
        matches: measure::matches_played(&sessions),
        takeovers: takeovers.moved,
        takeover: takeovers.times.clone(),
        migrations: migrations.moved,
        migration_pause: migrations.pauses.clone(),
        sessions_lost: lost.len(),
        events_lost: findings.events_lost + conflicts,
        log_gaps: findings.log_gaps,
    };
    for line in lost.iter().take(10) {
        progress(format!("lost session: {line}"));
    }
    for (pause, root, seat, began) in &migrations.longest {
        progress(format!(
            "longest migration pause: {pause} ms, {root} seat {seat}, from {began} ms"
        ));
    }
    for note in &findings.notes {
        progress(format!("audit: {note}"));
    }
    let drain_ok = drain_status.is_some_and(|s| s.success());
    progress(format!(
        "details: orphaned={} takeovers={} stalled={} held_at_drain={} migrations={} stayed={} \
         drain_exit={} sessions={} logs={} events_stored={} events_seen={} client_conflicts={} \
         undecodable={} head_regressions={} watcher_errors={} node_takeovers={} node_handovers={} \
         node_fenced={} node_redirects={}",
        takeovers.orphaned,
        takeovers.moved,
        takeovers.stalled.len(),
        migrations.held,
        migrations.moved,
        migrations.stayed.len(),
        drain_status.map_or("none (still running)".to_owned(), |s| s.to_string()),
        sessions.len(),
        findings.logs,
        findings.events,
        client_events.values().map(|m| m.len()).sum::<usize>(),
        conflicts,
        findings.undecodable,
        regressions_seen,
        watcher_errors,
        total(|m| m.takeovers),
        total(|m| m.handovers),
        total(|m| m.fenced),
        total(|m| m.redirects),
    ));
    let clean = summary.sessions_lost == 0
        && summary.events_lost == 0
        && summary.log_gaps == 0
        && findings.undecodable == 0
        && takeovers.stalled.is_empty()
        && takeovers.moved == takeovers.orphaned
        && migrations.stayed.is_empty()
        && regressions_seen == 0
        && drain_ok;
    if clean && !args.keep {
        drop(dir);
    } else {
        let kept = dir.keep();
        progress(format!("node logs kept in {}", kept.display()));
    }
    println!("{}", summary.line());
    Ok(clean)
}

/// Heads, ticks or epochs that moved backwards in the history.
fn history_regressions(seen: &watcher::Seen) -> usize {
    seen.history
        .values()
        .flat_map(|h| h.windows(2))
        .filter(|w| {
            let (a, b) = (&w[0], &w[1]);
            let emptied = b.head == 0 && b.tick == 0 && b.node.is_empty();
            !emptied && (b.head < a.head || b.tick < a.tick || b.epoch < a.epoch)
        })
        .count()
}
