//! A command line for any game's binary: `serve`, and the tools that decode
//! a game's stored matches (`inspect`, `follow`, `ticket`, `check-config`).
//!
//! This is binary-side code kept in the library so every game's binary can
//! mount it: its errors are `anyhow` errors with context, meant for a
//! person. A game's whole `main` can be
//!
//! ```no_run
//! # use tickforge::arena::Arena as MyGame;
//! fn main() -> std::process::ExitCode {
//!     tickforge::cli::main(MyGame::default())
//! }
//! ```
//!
//! and a binary with commands of its own flattens [`Tool`] into its clap
//! subcommands and calls [`run_tool`] (as `tickforge` itself does).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::engine::decode_event;
use crate::game::{Game, PlayerId};
use crate::server::Server;
use crate::store::{AnyStore, EventStore, MatchKey, RecordedEvent, SnapshotStore, StoreError};

/// Prints a line on stdout. A reader that went away (`… inspect m1 | head`)
/// ends the program quietly, as with other command-line tools.
macro_rules! out {
    ($($arg:tt)*) => {
        print_line(format_args!($($arg)*))
    };
}

/// Prints one line on stdout for a command-line tool: a reader that went
/// away (`| head`) ends the program quietly (exit 0), any other write error
/// with exit code 74.
pub fn print_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    if let Err(error) = writeln!(std::io::stdout(), "{line}") {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {error}");
        std::process::exit(74);
    }
}

/// The tools every game's binary offers.
#[derive(Debug, Subcommand)]
pub enum Tool {
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
    /// List the live nodes of the fleet (the directory), with their
    /// address, capacity, load and the live matches each holds the lease
    /// of; then the live matches no node holds.
    Nodes,
}

#[derive(Debug, Parser)]
#[command(version, about = "A tickforge game server")]
struct DefaultCli {
    /// Configuration file (default: the built-in defaults).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: DefaultCommand,
}

#[derive(Debug, Subcommand)]
enum DefaultCommand {
    /// Run the game server until SIGTERM or SIGINT, then drain.
    Serve,
    #[command(flatten)]
    Tool(Tool),
}

/// A whole `main` for a game's binary: `serve` and every [`Tool`], with
/// logging to stderr and exit codes (78 for configuration errors).
pub fn main<G: Game>(game: G) -> ExitCode {
    init_logging();
    let cli = DefaultCli::parse();
    block_on(async move {
        let config = Config::load(cli.config.as_deref()).context("loading configuration")?;
        match cli.command {
            DefaultCommand::Serve => serve(game, config).await,
            DefaultCommand::Tool(tool) => run_tool(&game, &config, tool).await,
        }
    })
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Runs `work` on a new multi-threaded runtime and turns its outcome into
/// an exit code: 0, 78 (EX_CONFIG) for configuration errors, 1 otherwise.
pub fn block_on(work: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(70);
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            if error.chain().any(|e| e.is::<ConfigError>()) {
                ExitCode::from(78)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Serves `game` with `config` until a signal, then drains.
pub async fn serve<G: Game>(game: G, config: Config) -> anyhow::Result<()> {
    let storage = format!("{:?}", config.storage);
    let server = Server::builder(game)
        .config(config)
        .start()
        .await
        .with_context(|| format!("starting the server on the {storage} store"))?;
    server.run().await?;
    Ok(())
}

/// Runs one [`Tool`] for `game`.
pub async fn run_tool<G: Game>(game: &G, config: &Config, tool: Tool) -> anyhow::Result<()> {
    match tool {
        Tool::Ticket { root, player, ttl } => {
            let secret = config.net.secret.as_ref().context(
                "minting a ticket needs the server secret: net.secret, net.secret_file or TICKFORGE_SECRET",
            )?;
            let expires = crate::net::tickets::unix_now().saturating_add(ttl);
            out!(
                "{}",
                crate::net::mint_ticket(secret, &root, PlayerId(player), expires)
            );
            Ok(())
        }
        Tool::CheckConfig => {
            out!("{config:#?}");
            Ok(())
        }
        Tool::Nodes => {
            let store = open_store(config).await?;
            nodes(game, config, &store).await
        }
        Tool::Inspect { root, last } => {
            let store = open_store(config).await?;
            inspect(game, config, &store, &root, last).await
        }
        Tool::Follow { root, from } => {
            let AnyStore::Redis(redis) = open_store(config).await? else {
                anyhow::bail!(
                    "following needs the Redis backend: set REDIS_URL or [storage] backend = \"redis\""
                );
            };
            let (key, head) = stored_match(game, config, &redis, &root).await?;
            let start = from.unwrap_or(head.next_sequence);
            let mut follower = redis
                .follow(&key, start)
                .await
                .with_context(|| format!("following {key}"))?;
            eprintln!("following {key} from sequence {start} (Ctrl-C stops)");
            loop {
                let record = tokio::select! {
                    record = follower.next() => record.with_context(|| format!("following {key}"))?,
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                };
                print_event(game, &record);
            }
        }
    }
}

/// Opens the store `config` names.
pub async fn open_store(config: &Config) -> anyhow::Result<AnyStore> {
    AnyStore::open(&config.storage)
        .await
        .with_context(|| format!("opening the {:?} store", config.storage))
}

/// Prints one stored event of `game`, decoded (upgraded when older).
pub fn print_event<G: Game>(game: &G, record: &RecordedEvent) {
    match decode_event(game, &record.payload) {
        Ok(e) => {
            let by = e
                .player
                .map_or_else(|| "step".to_owned(), |p| p.to_string());
            out!("  #{:<8} tick {:<8} {by} {:?}", e.sequence, e.tick, e.event)
        }
        Err(error) => out!(
            "  #{:<8} tick {:<8} unreadable: {error}",
            record.sequence,
            record.tick
        ),
    }
}

/// The key and stored head of match `root` of `game`, or why there is none.
pub async fn stored_match<G: Game, S: EventStore>(
    game: &G,
    config: &Config,
    store: &S,
    root: &str,
) -> anyhow::Result<(MatchKey, crate::store::Head)> {
    let key = MatchKey::new(game.domain(), &config.edition, root).context("match id")?;
    let head = store
        .head(&key)
        .await
        .with_context(|| format!("reading the head of {key}"))?
        .with_context(|| format!("no match {key} in the store"))?;
    Ok((key, head))
}

/// Prints the fleet's live nodes and who holds each live match.
async fn nodes<G: Game>(game: &G, config: &Config, store: &AnyStore) -> anyhow::Result<()> {
    use crate::store::{LeaseStore, NodeDirectory};
    let (domain, edition) = (game.domain(), config.edition.as_str());
    let nodes = store
        .nodes(domain, edition)
        .await
        .context("reading the node directory")?;
    let live = store
        .live_matches(domain, edition)
        .await
        .context("listing live matches")?;
    let mut held: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for key in &live {
        let lease = store
            .lease(key)
            .await
            .with_context(|| format!("reading the lease of {key}"))?;
        let holder = lease.map_or_else(String::new, |lease| lease.node);
        held.entry(holder).or_default().push(key.root().to_owned());
    }
    out!(
        "{} live nodes, {} live matches ({domain}:{edition})",
        nodes.len(),
        live.len()
    );
    for node in &nodes {
        let mut roots = held.remove(&node.id).unwrap_or_default();
        roots.sort();
        out!(
            "{}\t{}\tcapacity={}\tload={}\tleases={}\t{}",
            node.id,
            node.quic_addr,
            node.capacity,
            node.load,
            roots.len(),
            roots.join(",")
        );
    }
    for (holder, mut roots) in held {
        roots.sort();
        let who = if holder.is_empty() {
            "(no live lease)".to_owned()
        } else {
            format!("{holder} (not in the directory)")
        };
        out!("{who}\tleases={}\t{}", roots.len(), roots.join(","));
    }
    Ok(())
}

/// Prints a stored match of `game`: status, head, snapshot, last events.
pub async fn inspect<G: Game, S: EventStore + SnapshotStore>(
    game: &G,
    config: &Config,
    store: &S,
    root: &str,
    last: u64,
) -> anyhow::Result<()> {
    let (key, head) = stored_match(game, config, store, root).await?;
    out!("match:        {key}");
    out!("status:       {:?}", head.status);
    if let Some(reason) = store.failure(&key).await.context("reading the failure")? {
        out!("failure:      {reason}");
    }
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
            "snapshot:     sequence {}, tick {}, {} state bytes, schema {}, hash {:#018x}",
            s.sequence,
            s.tick,
            s.state.len(),
            s.schema,
            s.hash
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
        print_event(game, record);
    }
    Ok(())
}
