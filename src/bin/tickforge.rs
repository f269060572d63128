//! The `tickforge` command: the arena's game server (through the same
//! builder any game uses), the arena leaderboard, and the tools that
//! inspect stored matches.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tickforge::arena::Arena;
use tickforge::cli::{Tool, block_on, init_logging, open_store, print_line, run_tool};
use tickforge::config::Config;
use tickforge::game::Game;
use tickforge::play::autoplay::{AutoplayCounters, play_match, play_slot};
use tickforge::projection::catch_up;
use tickforge::projection::leaderboard::Leaderboard;
use tickforge::server::Server;
use tickforge::store::{AnyStore, EventStore, MatchKey, RedisStore};

/// glibc's malloc and free took about 15 % of a node's CPU at 400 clients
/// (per-packet allocations); mimalloc's thread-local free lists cost a
/// fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Run the arena game server: restore every live match from the store,
    /// host it, accept players over QUIC, and run until SIGTERM or SIGINT
    /// (then drain: final snapshot of every match, every write flushed).
    Serve {
        /// Keep this many arena matches busy with in-process bots (restored
        /// matches are played by bots too when this is set).
        #[arg(long, default_value_t = 0)]
        bots: usize,
        /// Bots per match.
        #[arg(long, default_value_t = 8)]
        players: u32,
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
    #[command(flatten)]
    Tool(Tool),
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    block_on(async move {
        let config = Config::load(cli.config.as_deref()).context("loading configuration")?;
        match cli.command {
            Command::Serve { bots, players } => serve(config, bots, players).await,
            Command::Leaderboard { root, watch } => {
                let AnyStore::Redis(redis) = open_store(&config).await? else {
                    anyhow::bail!(
                        "the leaderboard projection lives in Redis: set REDIS_URL or [storage] backend = \"redis\""
                    );
                };
                leaderboard(&config, redis, root, watch).await
            }
            Command::Tool(tool) => run_tool(&Arena::default(), &config, tool).await,
        }
    })
}

async fn serve(config: Config, bots: usize, players: u32) -> anyhow::Result<()> {
    anyhow::ensure!((1..=16).contains(&players), "--players must be 1 to 16");
    let storage = format!("{:?}", config.storage);
    let server = Server::builder(Arena::default())
        .config(config)
        // Their players were network clients of the previous process: each
        // gets the grace window to resume. With --bots, bots play them.
        .adopt_restored_players(bots == 0)
        .start()
        .await
        .with_context(|| format!("starting the server on the {storage} store"))?;
    let mut bot_tasks = tokio::task::JoinSet::new();
    if bots > 0 {
        let engine = server.engine().clone();
        let counters = Arc::new(AutoplayCounters::default());
        for root in engine.hosted_matches() {
            let (engine, counters) = (engine.clone(), counters.clone());
            bot_tasks.spawn(async move {
                if let Err(error) = play_match(&engine, &counters, &root, players, 0).await {
                    tracing::warn!(%error, r#match = %root, "bots stopped playing a match");
                }
            });
        }
        let run_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        for slot in 0..bots {
            let prefix = format!("serve-{run_id}");
            let (engine, counters) = (engine.clone(), counters.clone());
            bot_tasks.spawn(async move {
                if let Err(error) = play_slot(engine, counters, prefix, slot, players).await {
                    tracing::warn!(%error, "bots stopped playing a slot");
                }
            });
        }
        tracing::info!(bots, players, "in-process bots playing");
    }
    let drained = server.run().await;
    bot_tasks.abort_all();
    drained?;
    Ok(())
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
            print_line(format_args!("{key} @{position}: {}", line.join(" ")));
        }
        let Some(every) = watch else { return Ok(()) };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(every.max(1))) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
