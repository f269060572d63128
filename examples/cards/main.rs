//! Eights, a card game with hidden hands, hosted on tickforge: the second
//! game through the whole stack (engine, store, QUIC, client library).
//!
//! ```text
//! cargo run --release --example cards -- --seconds 5            # server + bots, ends with `summary:`
//! cargo run --release --example cards -- --seconds 20 --watch 3 # ... and print table 3 every second
//! cargo run --example cards -- serve --config cards.toml        # only the server (until SIGTERM/SIGINT)
//! cargo run --example cards -- inspect <match>                  # a stored match, decoded
//! cargo run --example cards -- watch <match> --server 127.0.0.1:4433 --cert target/tickforge-dev-cert.der
//! ```
//!
//! The demo starts the server on loopback (open mode, a development
//! certificate) on the embedded memory store (`REDIS_URL` or `--config`
//! selects Redis), then seats `--players` bots at each of `--matches`
//! tables, every bot its own QUIC client. A table whose match ends starts
//! the next one. Every state and event a bot receives is checked for cards
//! it must not see (other hands, other players' draws): the count is the
//! `hidden_leaks` field of the summary, and a leak fails the run.
//!
//! `serve` is all the hosting a game needs (the builder); the rest is the demo.

mod bot;
mod game;
mod render;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tickforge::client::{Client, ClientConfig, JoinRequest, SessionEvent};
use tickforge::codec;
use tickforge::config::Config;
use tickforge::game::PlayerId;
use tickforge::net::protocol::CommandStatus;
use tickforge::server::Server;
use tokio::sync::watch;
use tokio::task::JoinSet;

use bot::Bot;
use game::{Card, Eights, Event, JoinAs, Params, SplitMix64, View};

#[derive(Debug, Parser)]
#[command(about = "Eights: a card game with hidden hands on tickforge, played by bots")]
struct Args {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
    /// Tables played at once; a table whose match ends starts another.
    #[arg(long, default_value_t = 20)]
    matches: usize,
    /// Bots per table (2 to 6).
    #[arg(long, default_value_t = 4)]
    players: u8,
    /// Cards dealt to each player.
    #[arg(long, default_value_t = 5)]
    hand_size: u8,
    /// Ticks a player has per turn.
    #[arg(long, default_value_t = 30)]
    turn_ticks: u32,
    /// Percent of turns a bot lets its timer run out on.
    #[arg(long, default_value_t = 5)]
    dawdle_percent: u64,
    /// Print table N (a spectator's view) every second.
    #[arg(long, value_name = "N")]
    watch: Option<usize>,
    /// Configuration file (default: the built-in defaults).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Run only the server, until SIGTERM or SIGINT, then drain.
    Serve,
    /// Watch one match of a running server as a spectator (open mode).
    Watch {
        /// The match id.
        r#match: String,
        /// The server's QUIC address.
        #[arg(long, default_value = "127.0.0.1:4433")]
        server: SocketAddr,
        /// The server certificate to trust (DER or PEM).
        #[arg(long, default_value = tickforge::net::DEFAULT_DEV_CERT)]
        cert: PathBuf,
    },
    /// Tools for stored matches: inspect, follow, ticket, check-config.
    #[command(flatten)]
    Tool(tickforge::cli::Tool),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    // Errors print as `error: …`; configuration errors exit with 78.
    tickforge::cli::block_on(async move {
        match args.mode {
            Some(Mode::Serve) => serve(args.config.as_deref()).await,
            Some(Mode::Tool(tool)) => {
                let config =
                    Config::load(args.config.as_deref()).context("loading configuration")?;
                tickforge::cli::run_tool(&Eights, &config, tool).await
            }
            Some(Mode::Watch {
                ref r#match,
                server,
                ref cert,
            }) => {
                let client = Client::new(ClientConfig::trusting_file(server, cert)?)?;
                watch_match(&client, r#match).await
            }
            None => demo(&args).await,
        }
    })
}

// ---------------------------------------------------------------------------
// Hosting: all a game author writes to put a game on tickforge is
// `Server::builder(Eights).config(config).start()`; `serve` adds signals
// and the drain, and `tickforge::cli` the stored-match tools.
// ---------------------------------------------------------------------------

/// `serve`: the server alone, until SIGTERM or SIGINT, then a drain.
async fn serve(config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let config = Config::load(config).context("loading configuration")?;
    let server = Server::builder(Eights).config(config).start().await?;
    println!("eights server listening on {}", server.quic_addr());
    server.run().await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// The demo harness: bots as QUIC clients, progress, the summary line.
// ---------------------------------------------------------------------------

/// What the bots saw, summed over every client.
#[derive(Debug, Default)]
struct Counters {
    matches_started: AtomicU64,
    matches_finished: AtomicU64,
    sessions: AtomicU64,
    hands_dealt: AtomicU64,
    states: AtomicU64,
    events: AtomicU64,
    plays: AtomicU64,
    draws: AtomicU64,
    timeouts: AtomicU64,
    rejected: AtomicU64,
    failures: AtomicU64,
    hidden_leaks: AtomicU64,
}

async fn demo(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.matches > 0, "--matches must be at least 1");
    let params = Params {
        players: args.players,
        hand_size: args.hand_size,
        turn_ticks: args.turn_ticks,
        ..Params::default()
    };
    params.check().context("invalid table parameters")?;
    let mut config = Config::load(args.config.as_deref()).context("loading configuration")?;
    config.net.listen = "127.0.0.1:0".parse()?;
    config.net.open_mode = true;
    let server = Server::builder(Eights)
        .config(config.clone())
        .start()
        .await?;
    let client = Client::new(ClientConfig::new(
        server.quic_addr(),
        vec![server.certificate().clone()],
    ))?;
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let prefix = format!("cards-{run_id}-");
    eprintln!(
        "eights: {} tables x {} bots over QUIC on {}, {} Hz, {} store{}",
        args.matches,
        args.players,
        server.quic_addr(),
        config.engine.tick_hz,
        server.engine().store().name(),
        args.seconds
            .map_or_else(|| ", until Ctrl-C".to_owned(), |s| format!(", {s} s")),
    );
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop) = watch::channel(false);
    let mut tables = JoinSet::new();
    for table in 0..args.matches {
        tables.spawn(run_table(Table {
            client: client.clone(),
            prefix: format!("{prefix}t{table}-"),
            params,
            seed: table as u64,
            dawdle_percent: args.dawdle_percent,
            counters: counters.clone(),
            stop: stop.clone(),
        }));
    }
    if let Some(table) = args.watch {
        let (client, stop) = (client.clone(), stop.clone());
        let prefix = format!("{prefix}t{table}-");
        tables.spawn(async move {
            for game in 0.. {
                if *stop.borrow() {
                    break;
                }
                let _ = watch_match(&client, &format!("{prefix}{game}")).await;
            }
        });
    }

    let started = Instant::now();
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.tick().await;
    let mut before = (0, 0, 0);
    loop {
        tokio::select! {
            _ = progress.tick() => {
                let now = (counters.events.load(Relaxed), counters.states.load(Relaxed), server.engine().stats().events);
                eprintln!(
                    "[{:>3}s] matches started={} finished={} | plays={} draws={} timeouts={} rejected={} \
                     | client events/s={} states/s={} engine events/s={} | hidden_leaks={}",
                    started.elapsed().as_secs(),
                    counters.matches_started.load(Relaxed),
                    counters.matches_finished.load(Relaxed),
                    counters.plays.load(Relaxed),
                    counters.draws.load(Relaxed),
                    counters.timeouts.load(Relaxed),
                    counters.rejected.load(Relaxed),
                    now.0 - before.0,
                    now.1 - before.1,
                    now.2 - before.2,
                    counters.hidden_leaks.load(Relaxed),
                );
                before = now;
                if args.seconds.is_some_and(|s| started.elapsed() >= Duration::from_secs(s)) {
                    break;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    while tables.join_next().await.is_some() {}
    let net = server.net_stats().clone();
    let store_name = server.engine().store().name();
    let engine_stats = server.drain().await?.stats;
    let c = &*counters;
    let sessions = c.sessions.load(Relaxed).max(1);
    let leaks = c.hidden_leaks.load(Relaxed);
    println!(
        "summary: seconds={elapsed:.1} store={store_name} tick_hz={} tables={} players={} \
         matches_started={} matches_finished={} sessions={} hands_dealt={} plays={} draws={} timeouts={} \
         rejected={} client_failures={} engine_events={} client_events={} states_received={} \
         states_per_client={:.0} views_encoded={} state_messages_built={} states_sent={} \
         hidden_leaks={leaks}",
        config.engine.tick_hz,
        args.matches,
        args.players,
        c.matches_started.load(Relaxed),
        c.matches_finished.load(Relaxed),
        c.sessions.load(Relaxed),
        c.hands_dealt.load(Relaxed),
        c.plays.load(Relaxed),
        c.draws.load(Relaxed),
        c.timeouts.load(Relaxed),
        c.rejected.load(Relaxed),
        c.failures.load(Relaxed),
        engine_stats.events,
        c.events.load(Relaxed),
        c.states.load(Relaxed),
        c.states.load(Relaxed) as f64 / sessions as f64,
        net.views_encoded.load(Relaxed),
        net.state_messages_built.load(Relaxed),
        net.states.load(Relaxed),
    );
    anyhow::ensure!(
        leaks == 0,
        "{leaks} hidden cards reached players who must not see them"
    );
    Ok(())
}

/// One table: match after match until told to stop.
struct Table {
    client: Client,
    prefix: String,
    params: Params,
    seed: u64,
    dawdle_percent: u64,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
}

async fn run_table(mut table: Table) {
    for game in 0u64.. {
        if *table.stop.borrow() {
            return;
        }
        let root = format!("{}{game}", table.prefix);
        table.counters.matches_started.fetch_add(1, Relaxed);
        let mut seats = JoinSet::new();
        for seat in 0..u64::from(table.params.players) {
            seats.spawn(play_seat(
                table.client.clone(),
                root.clone(),
                table.params,
                table.seed << 16 ^ game << 4 ^ seat,
                table.dawdle_percent,
                table.counters.clone(),
            ));
        }
        let all_done = async { while seats.join_next().await.is_some() {} };
        tokio::select! {
            () = all_done => {}
            _ = table.stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// One bot: joins `root` (creating it with `params` if first), plays
/// until the match is over, and checks everything it receives for cards
/// it must not see.
async fn play_seat(
    client: Client,
    root: String,
    params: Params,
    seed: u64,
    dawdle_percent: u64,
    counters: Arc<Counters>,
) {
    let join = JoinAs {
        name: format!("bot-{seed:x}"),
    };
    let request = JoinRequest::open_player(&root, &join).with_params(&params);
    let mut session = match client.join::<Eights>(request).await {
        Ok(session) => session,
        Err(error) => {
            tracing::warn!(%root, %error, "a bot could not join");
            counters.failures.fetch_add(1, Relaxed);
            return;
        }
    };
    counters.sessions.fetch_add(1, Relaxed);
    let me = session.player();
    let mut bot = Bot::new(seed);
    let mut dawdle = SplitMix64::new(!seed);
    let mut states = session.states();
    let mut acted_on: Option<u32> = None;
    loop {
        tokio::select! {
            changed = states.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(update) = states.borrow_and_update().clone() else { continue };
                counters.states.fetch_add(1, Relaxed);
                counters.hidden_leaks.fetch_add(leaked_cards(&update.state), Relaxed);
                let view = &update.state;
                if view.turn.is_none() || view.turn != me || acted_on == Some(view.turns) {
                    continue;
                }
                acted_on = Some(view.turns);
                if dawdle.below(100) < dawdle_percent as usize {
                    continue; // let the turn timer run out
                }
                if let Some(command) = bot.decide(view) {
                    let counter = match command {
                        game::Command::Draw => &counters.draws,
                        _ => &counters.plays,
                    };
                    counter.fetch_add(1, Relaxed);
                    if let Ok(pending) = session.send(command) {
                        let counters = counters.clone();
                        tokio::spawn(async move {
                            if let Ok(CommandStatus::Rejected { .. }) = pending.await {
                                counters.rejected.fetch_add(1, Relaxed);
                            }
                        });
                    }
                }
            }
            event = session.next_event() => match event {
                Some(SessionEvent::Event(envelope)) => {
                    counters.events.fetch_add(1, Relaxed);
                    if leaked_event(&envelope.event, me) {
                        counters.hidden_leaks.fetch_add(1, Relaxed);
                    }
                    match envelope.event {
                        Event::TurnTimedOut { player } if Some(player) == me => {
                            counters.timeouts.fetch_add(1, Relaxed);
                        }
                        Event::Dealt { player, .. } if Some(player) == me => {
                            counters.hands_dealt.fetch_add(1, Relaxed);
                        }
                        _ => {}
                    }
                }
                Some(SessionEvent::MatchOver { .. }) => {
                    if me == Some(PlayerId(1)) {
                        counters.matches_finished.fetch_add(1, Relaxed);
                    }
                    return;
                }
                Some(SessionEvent::Closed { .. }) | None => return,
                Some(_) => {}
            },
        }
    }
}

/// Cards in the bytes of `view` that its viewer must not see: anything but
/// its own hand and the discard top. The codec's encoding is canonical, so
/// these are the bytes the server sent.
fn leaked_cards(view: &View) -> u64 {
    let Ok(bytes) = codec::encode(view) else {
        return 0;
    };
    let visible = |card: &Card| view.hand.contains(card) || view.top == Some(*card);
    cards_in(&bytes).filter(|card| !visible(card)).count() as u64
}

/// Every card encoding found in `bytes`.
fn cards_in(bytes: &[u8]) -> impl Iterator<Item = Card> + '_ {
    bytes.windows(5).filter_map(|w| {
        (w[0] == 0xFC)
            .then(|| Card::from_code(u32::from_le_bytes([w[1], w[2], w[3], w[4]])))
            .flatten()
    })
}

/// Whether `event` shows another player's hidden cards to `me`.
fn leaked_event(event: &Event, me: Option<PlayerId>) -> bool {
    match event {
        Event::Dealt { player, .. } | Event::Drew { player, .. } => Some(*player) != me,
        _ => false,
    }
}

/// Follows `root` as a spectator, printing the table once per second
/// until the match ends.
async fn watch_match(client: &Client, root: &str) -> anyhow::Result<()> {
    let mut session = loop {
        match client
            .join::<Eights>(JoinRequest::spectator(root, None))
            .await
        {
            Ok(session) => break session,
            // The table's next match may not exist yet.
            Err(error) if error.code() == Some(tickforge::net::CloseCode::UnknownMatch) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error).with_context(|| format!("watching {root}")),
        }
    };
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = every.tick() => {
                if let Some(update) = session.state() {
                    println!("{}", render::render(root, update.tick, &update.state));
                }
            }
            event = session.next_event() => match event {
                Some(SessionEvent::MatchOver { .. }) | Some(SessionEvent::Closed { .. }) | None => {
                    if let Some(update) = session.state() {
                        println!("{}", render::render(root, update.tick, &update.state));
                    }
                    return Ok(());
                }
                Some(_) => {}
            },
        }
    }
}
