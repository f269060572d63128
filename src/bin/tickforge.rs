//! The `tickforge` command: run the engine as a server, inspect stored
//! matches, check a configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tickforge::arena::autoplay::{AutoplayCounters, play_match, play_slot};
use tickforge::arena::{Arena, ArenaEvent};
use tickforge::codec;
use tickforge::config::Config;
use tickforge::engine::{Engine, EventEnvelope};
use tickforge::game::{Game, PlayerId};
use tickforge::net::server::Server;
use tickforge::projection::catch_up;
use tickforge::projection::leaderboard::Leaderboard;
use tickforge::store::{AnyStore, EventStore, MatchKey, RedisStore, Store, StoreError};

/// Prints a line on stdout. A reader that went away (`tickforge inspect m1
/// | head`) ends the program quietly, as with other command-line tools.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(error) = writeln!(std::io::stdout(), $($arg)*) {
            if error.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("error: cannot write to stdout: {error}");
            std::process::exit(74);
        }
    }};
}

#[derive(Debug, Parser)]
#[command(
    name = "tickforge",
    version,
    about = "Authoritative game-server state engine"
)]
struct Cli {
    /// Configuration file (default: the built-in defaults).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the game server: restore every live match from the store, host
    /// it, accept players over QUIC, and run until Ctrl-C (then snapshot and
    /// flush every match).
    Serve {
        /// Keep this many arena matches busy with in-process bots (restored
        /// matches are played by bots too when this is set).
        #[arg(long, default_value_t = 0)]
        bots: usize,
        /// Bots per match.
        #[arg(long, default_value_t = 8)]
        players: u32,
    },
    /// Mint an admission ticket for a player (what a matchmaker does).
    Ticket {
        /// The match id.
        #[arg(long = "match")]
        root: String,
        /// The player id.
        #[arg(long)]
        player: u32,
        /// Seconds the ticket stays valid.
        #[arg(long, default_value_t = 300)]
        ttl: u64,
    },
    /// Print a stored match: head, snapshot, event count, last events.
    Inspect {
        /// The match id (root).
        #[arg(name = "match")]
        root: String,
        /// How many of the last events to print.
        #[arg(long, default_value_t = 10)]
        last: u64,
    },
    /// Run the arena leaderboard projection (Redis): catch up every live
    /// match, or one, and print its standings; `--watch` keeps following.
    Leaderboard {
        /// Only this match (default: every live match).
        #[arg(name = "match")]
        root: Option<String>,
        /// Catch up again every this many seconds until Ctrl-C.
        #[arg(long)]
        watch: Option<u64>,
    },
    /// Print a match's events live as they are appended, from another
    /// process (Redis pub/sub, gaps backfilled from the log).
    Follow {
        /// The match id.
        #[arg(name = "match")]
        root: String,
        /// Start at this sequence (default: only new events).
        #[arg(long)]
        from: Option<u64>,
    },
    /// Validate a configuration and print what it resolves to.
    CheckConfig,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(70);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            // Configuration problems are usage errors (EX_CONFIG); the rest are runtime failures.
            if error
                .chain()
                .any(|e| e.is::<tickforge::config::ConfigError>())
            {
                ExitCode::from(78)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref()).context("loading configuration")?;
    let store = AnyStore::open(&config.storage)
        .await
        .with_context(|| format!("opening the {:?} store", config.storage))?;
    dispatch(cli.command, &config, store).await
}

async fn dispatch(command: Command, config: &Config, store: AnyStore) -> anyhow::Result<()> {
    match command {
        Command::Follow { root, from } => {
            let AnyStore::Redis(redis) = store else {
                anyhow::bail!(
                    "following needs the Redis backend: set REDIS_URL or [storage] backend = \"redis\""
                );
            };
            follow(config, redis, &root, from).await
        }
        Command::Leaderboard { root, watch } => {
            let AnyStore::Redis(redis) = store else {
                anyhow::bail!(
                    "the leaderboard projection lives in Redis: set REDIS_URL or [storage] backend = \"redis\""
                );
            };
            leaderboard(config, redis, root, watch).await
        }
        Command::Serve { bots, players } => serve(config, store, bots, players).await,
        Command::Inspect { root, last } => inspect(config, &store, &root, last).await,
        Command::Ticket { root, player, ttl } => {
            let secret = config.net.secret.as_ref().context(
                "minting a ticket needs the server secret: net.secret, net.secret_file or TICKFORGE_SECRET",
            )?;
            let expires = tickforge::net::tickets::unix_now().saturating_add(ttl);
            out!(
                "{}",
                tickforge::net::mint_ticket(secret, &root, PlayerId(player), expires)
            );
            Ok(())
        }
        Command::CheckConfig => {
            out!("{config:#?}");
            Ok(())
        }
    }
}

async fn serve<S: Store>(
    config: &Config,
    store: S,
    bots: usize,
    players: u32,
) -> anyhow::Result<()> {
    anyhow::ensure!((1..=16).contains(&players), "--players must be 1 to 16");
    let engine = Arc::new(Engine::start(
        Arena::default(),
        store,
        config.engine.clone(),
        &config.edition,
    ));
    let (restored, failed) = engine
        .restore_all()
        .await
        .context("listing live matches to restore")?;
    let restored_matches = engine.hosted_matches();
    tracing::info!(
        restored,
        failed = failed.len(),
        shards = config.engine.shards,
        tick_hz = config.engine.tick_hz,
        "tickforge serving; Ctrl-C stops after snapshotting every match"
    );
    let counters = Arc::new(AutoplayCounters::default());
    let mut players_tasks = tokio::task::JoinSet::new();
    if bots > 0 {
        for root in engine.hosted_matches() {
            let (engine, counters) = (engine.clone(), counters.clone());
            players_tasks.spawn(async move {
                play_match(&engine, &counters, &root, players, 0)
                    .await
                    .map(|_| ())
            });
        }
        let run_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        for slot in 0..bots {
            let prefix = format!("serve-{run_id}");
            players_tasks.spawn(play_slot(
                engine.clone(),
                counters.clone(),
                prefix,
                slot,
                players,
            ));
        }
        tracing::info!(bots, players, "in-process bots playing");
    }
    let server = Server::bind(engine.clone(), config.net.clone())
        .with_context(|| format!("starting the QUIC server on {}", config.net.listen))?;
    if bots == 0 {
        // Their players were network clients of the previous process: each
        // gets the grace window to resume. (With --bots, bots play them.)
        server.adopt_players_of(restored_matches);
    }
    tracing::info!(listen = %server.local_addr(), open_mode = config.net.open_mode, "accepting players over QUIC");
    let (server_stop, server_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server.run(async {
        let _ = server_stop_rx.await;
    }));
    let mut report = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = report.tick() => {
                let s = engine.stats();
                tracing::info!(matches = s.matches, ticks = s.ticks, late_ticks = s.late_ticks,
                    events = s.events, persisted = s.persisted_events, p99_tick_ms = s.tick_ms(0.99),
                    backlog = s.backlog_jobs, repaired = s.repaired_events, trimmed = s.trimmed_events, "status");
            }
            Some(joined) = players_tasks.join_next() => {
                if let Err(error) = joined.context("bot task panicked")? {
                    tracing::warn!(%error, "bots stopped playing a match");
                }
            }
            signal = tokio::signal::ctrl_c() => {
                signal.context("listening for Ctrl-C")?;
                break;
            }
        }
    }
    tracing::info!(
        "stopping: closing connections, final snapshots and flush (Ctrl-C again to give up waiting for the store)"
    );
    let _ = server_stop.send(());
    server.await.context("the QUIC server task panicked")?;
    players_tasks.abort_all();
    // Flushing waits for the store; a second Ctrl-C gives up on it.
    tokio::select! {
        () = engine.shutdown_reporting(Duration::from_secs(5)) => Ok(()),
        _ = tokio::signal::ctrl_c() => {
            let backlog = engine.stats().backlog_jobs;
            anyhow::bail!("stopped before every write was stored ({backlog} tick jobs still queued); restore resumes from the last stored tick")
        }
    }
}

async fn follow(
    config: &Config,
    store: RedisStore,
    root: &str,
    from: Option<u64>,
) -> anyhow::Result<()> {
    let (key, head) = stored_match(config, &store, root).await?;
    let start = from.unwrap_or(head.next_sequence);
    let mut follower = store
        .follow(&key, start)
        .await
        .with_context(|| format!("following {key}"))?;
    eprintln!("following {key} from sequence {start} (Ctrl-C stops)");
    loop {
        let record = tokio::select! {
            record = follower.next() => record.with_context(|| format!("following {key}"))?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        print_event(&record);
    }
}

fn print_event(record: &tickforge::store::RecordedEvent) {
    match codec::decode::<EventEnvelope<ArenaEvent>>(&record.payload) {
        Ok(e) => out!(
            "  #{:<8} tick {:<8} {} {:?}",
            e.sequence,
            e.tick,
            e.player,
            e.event
        ),
        Err(error) => out!(
            "  #{:<8} tick {:<8} undecodable: {error}",
            record.sequence,
            record.tick
        ),
    }
}

async fn leaderboard(
    config: &Config,
    store: RedisStore,
    root: Option<String>,
    watch: Option<u64>,
) -> anyhow::Result<()> {
    let arena = Arena::default();
    let board = Leaderboard::new(store.clone());
    loop {
        let keys = match &root {
            Some(root) => {
                vec![MatchKey::new(arena.domain(), &config.edition, root).context("match id")?]
            }
            None => store
                .live_matches(arena.domain(), &config.edition)
                .await
                .context("listing live matches")?,
        };
        for key in &keys {
            let position = catch_up(&store, &board, key, usize::MAX)
                .await
                .with_context(|| format!("projecting {key}"))?;
            let standings = board.standings(key).await.context("reading the board")?;
            let line: Vec<String> = standings
                .iter()
                .map(|(p, tags)| format!("{p}={tags}"))
                .collect();
            out!("{key} @{position}: {}", line.join(" "));
        }
        let Some(every) = watch else { return Ok(()) };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(every.max(1))) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// The key and stored head of match `root`, or why there is none.
async fn stored_match<S: Store>(
    config: &Config,
    store: &S,
    root: &str,
) -> anyhow::Result<(MatchKey, tickforge::store::Head)> {
    let key =
        MatchKey::new(Arena::default().domain(), &config.edition, root).context("match id")?;
    let head = store
        .head(&key)
        .await
        .with_context(|| format!("reading the head of {key}"))?
        .with_context(|| format!("no match {key} in the store"))?;
    Ok((key, head))
}

async fn inspect<S: Store>(
    config: &Config,
    store: &S,
    root: &str,
    last: u64,
) -> anyhow::Result<()> {
    let (key, head) = stored_match(config, store, root).await?;
    out!("match:        {key}");
    out!("status:       {:?}", head.status);
    // Reading from 0 says where a trimmed log starts.
    let retained_from = match store.read(&key, 0, 1).await {
        Ok(_) => 0,
        Err(StoreError::Trimmed { retained_from, .. }) => retained_from,
        Err(error) => return Err(error).context("reading the first event"),
    };
    out!(
        "head:         next sequence {}, tick {}",
        head.next_sequence,
        head.tick
    );
    if retained_from == 0 {
        out!("events:       {} stored", head.next_sequence);
    } else {
        out!(
            "events:       {} stored, from sequence {retained_from} (the ones below were trimmed)",
            head.next_sequence - retained_from
        );
    }
    match store
        .load_snapshot(&key)
        .await
        .context("reading the snapshot")?
    {
        Some(s) => out!(
            "snapshot:     sequence {}, tick {}, {} state bytes",
            s.sequence,
            s.tick,
            s.state.len()
        ),
        None => out!("snapshot:     none"),
    }
    let from = head.next_sequence.saturating_sub(last).max(retained_from);
    let events = store
        .read(&key, from, last as usize)
        .await
        .context("reading the last events")?;
    out!("last {} events:", events.len());
    for record in &events {
        print_event(record);
    }
    Ok(())
}
