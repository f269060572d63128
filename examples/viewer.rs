//! A terminal viewer for arena matches, drawn with ratatui (the grid with
//! every player, the tick, the scores and the latest events). Two modes:
//!
//! - **Live**: watches one match as a QUIC spectator.
//!
//!   ```text
//!   cargo run --release --example viewer -- --server 127.0.0.1:4433 --match demo-1-0
//!   ```
//!
//!   Spectators are read-only. Without `--ticket` or `--secret-file` the
//!   viewer asks for open-mode admission. The server certificate is
//!   verified against `--cert`. Press `q` or Esc to quit.
//!
//! - **Replay**: watches any stored match again, a finished one included,
//!   from its durable event log: read from sequence 0 page by page and
//!   replayed tick by tick ([`TickReplayer`]) at the match's tick rate.
//!
//!   ```text
//!   REDIS_URL=redis://127.0.0.1:6379 cargo run --release -- serve --bots 2   # Ctrl-C after a while
//!   redis-cli smembers 'matches:{arena:main}'                                # the live matches
//!   REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example viewer -- --replay serve-…-0-0
//!   ```
//!
//!   The store, edition and tick rate come from `--config FILE` and the
//!   environment, as for the `tickforge` binary; the memory backend keeps
//!   nothing between processes, so replay needs Redis. A log trimmed
//!   below its snapshot (`engine.trim_events_below_snapshot`) cannot be
//!   replayed from the start. The events panel lists what a live
//!   spectator gets (joins, leaves, tags; `--all-events` adds moves and
//!   misses). Keys: space pauses and resumes, → steps one tick while
//!   paused, `+`/`-` double or halve the speed (¼× to 16×), `q` or Esc
//!   quits. At the end the last state stays up until a key.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Wrap};
use tickforge::arena::{Arena, ArenaEvent, ArenaState, Dir, Pos};
use tickforge::client::{Client, ClientConfig, JoinRequest, SessionEvent, StateUpdate};
use tickforge::config::{Config, StorageConfig};
use tickforge::engine::EventEnvelope;
use tickforge::engine::replay::{TickReplayer, TickStep};
use tickforge::game::{Game, PlayerId, Tick};
use tickforge::net::tickets::{mint_ticket, unix_now};

use tickforge::net::ServerSecret;
use tickforge::store::{AnyStore, EventStore, MatchKey, SnapshotStore, StoreError};
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
#[command(about = "Watch an arena match in the terminal: live, or replayed from the store")]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["match_id", "replay"])))]
struct Args {
    /// The server's UDP address (live mode).
    #[arg(long, default_value = "127.0.0.1:4433")]
    server: SocketAddr,
    /// The match to watch live.
    #[arg(long = "match")]
    match_id: Option<String>,
    /// Replay this stored match from its event log instead of watching live.
    #[arg(long, value_name = "MATCH")]
    replay: Option<String>,
    /// Replay mode: list every event, moves and misses too (by default the
    /// events panel shows what a live spectator gets: joins, leaves, tags).
    #[arg(long, conflicts_with = "match_id")]
    all_events: bool,
    /// Configuration file for the store and tick rate (replay mode;
    /// default: the built-in defaults plus the environment, e.g. REDIS_URL).
    #[arg(long, value_name = "FILE", conflicts_with = "match_id")]
    config: Option<PathBuf>,
    /// The server certificate to trust (DER or PEM).
    #[arg(long, default_value = tickforge::net::DEFAULT_DEV_CERT)]
    cert: PathBuf,
    /// The server name the certificate must carry.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// A spectator ticket.
    #[arg(long)]
    ticket: Option<String>,
    /// Mint a spectator ticket with the secret in this file.
    #[arg(long)]
    secret_file: Option<PathBuf>,
}

/// Events read from the store per round trip while replaying.
const REPLAY_PAGE: usize = 2_000;

/// Replay speeds are 2^n for n in this range: ¼× to 16×.
const SPEED_EXPONENTS: std::ops::RangeInclusive<i32> = -2..=4;

/// Ticks replayed at most between two frames when playback falls behind.
const MAX_TICKS_PER_FRAME: usize = 64;

const COLORS: [Color; 8] = [
    Color::LightRed,
    Color::LightGreen,
    Color::LightYellow,
    Color::LightBlue,
    Color::LightMagenta,
    Color::LightCyan,
    Color::Red,
    Color::Green,
];

fn color(player: PlayerId) -> Color {
    COLORS[player.0 as usize % COLORS.len()]
}

fn arrow(dir: Dir) -> char {
    match dir {
        Dir::North => '^',
        Dir::East => '>',
        Dir::South => 'v',
        Dir::West => '<',
    }
}

/// What the screen shows besides the state.
struct View {
    match_id: String,
    status: String,
    log: VecDeque<Line<'static>>,
    names: BTreeMap<PlayerId, String>,
    /// What stopped the viewer, shown above the events.
    error: Option<String>,
}

impl View {
    fn new(match_id: &str, status: String) -> Self {
        Self {
            match_id: match_id.to_owned(),
            status,
            log: VecDeque::new(),
            names: BTreeMap::new(),
            error: None,
        }
    }

    fn name(&self, player: PlayerId) -> String {
        self.names
            .get(&player)
            .cloned()
            .unwrap_or_else(|| player.to_string())
    }

    fn push(&mut self, line: Line<'static>) {
        self.log.push_front(line);
        self.log.truncate(200);
    }

    /// Learns the names of players who joined before the viewer saw it.
    fn learn_names(&mut self, state: &ArenaState) {
        for (id, p) in &state.players {
            if !self.names.contains_key(id) {
                self.names.insert(*id, p.name.clone());
            }
        }
    }

    /// Adds one match event to the events panel (both modes).
    fn note_envelope(&mut self, envelope: EventEnvelope<ArenaEvent>) {
        let seq = Span::styled(
            format!("#{:<6}", envelope.sequence),
            Style::default().fg(Color::DarkGray),
        );
        let line = match envelope.event {
            ArenaEvent::Joined { player, name, .. } => {
                self.names.insert(player, name.clone());
                Line::from(vec![
                    seq,
                    Span::styled(name, Style::default().fg(color(player))),
                    Span::raw(" joined"),
                ])
            }
            ArenaEvent::Left { player } => Line::from(vec![
                seq,
                Span::styled(self.name(player), Style::default().fg(color(player))),
                Span::raw(" left"),
            ]),
            ArenaEvent::Fired {
                player,
                tagged: Some(target),
            } => Line::from(vec![
                seq,
                Span::styled(self.name(player), Style::default().fg(color(player))),
                Span::raw(" tagged "),
                Span::styled(self.name(target), Style::default().fg(color(target))),
            ]),
            other => Line::from(format!("#{} {other:?}", envelope.sequence)),
        };
        self.push(line);
    }

    /// Adds one session event of the live mode to the events panel.
    fn note_event(&mut self, event: SessionEvent<ArenaEvent>) {
        let line = match event {
            SessionEvent::Event(envelope) => return self.note_envelope(envelope),
            SessionEvent::Gap { from, to } => Line::styled(
                format!("events {from}..{to} missed"),
                Style::default().fg(Color::Yellow),
            ),
            SessionEvent::MatchOver { tick } => {
                self.status = format!("match over at tick {tick}");
                Line::styled(
                    format!("match over at tick {tick}"),
                    Style::default().add_modifier(Modifier::BOLD),
                )
            }
            SessionEvent::Disconnected {
                reason, resuming, ..
            } => {
                self.status = if resuming {
                    format!("reconnecting: {reason}")
                } else {
                    format!("disconnected: {reason}")
                };
                Line::styled(self.status.clone(), Style::default().fg(Color::Yellow))
            }
            SessionEvent::Resumed { tick } => {
                self.status = format!("watching (resumed at tick {tick})");
                Line::styled(self.status.clone(), Style::default().fg(Color::Green))
            }
            SessionEvent::Closed { reason, .. } => {
                self.status = format!("closed: {reason}");
                Line::styled(self.status.clone(), Style::default().fg(Color::Red))
            }
        };
        self.push(line);
    }
}

fn grid(arena: &Arena, state: &ArenaState) -> Vec<Line<'static>> {
    let map = arena.map();
    let mut lines = Vec::with_capacity(map.height() as usize);
    for y in 0..map.height() {
        let mut spans = Vec::with_capacity(map.width() as usize);
        for x in 0..map.width() {
            let pos = Pos { x, y };
            let here = state
                .players
                .iter()
                .find(|(_, p)| p.respawn_at.is_none() && p.pos == pos);
            let span = match here {
                Some((&id, p)) => Span::styled(
                    format!("{}{}", id.0 % 10, arrow(p.facing)),
                    Style::default()
                        .fg(Color::Black)
                        .bg(color(id))
                        .add_modifier(Modifier::BOLD),
                ),
                None if map.blocked(pos) => Span::styled("██", Style::default().fg(Color::Gray)),
                None if map.spawns().contains(&pos) => {
                    Span::styled(" +", Style::default().fg(Color::DarkGray))
                }
                None => Span::styled(" ·", Style::default().fg(Color::DarkGray)),
            };
            spans.push(span);
        }
        lines.push(Line::from(spans));
    }
    lines
}

fn scores(state: &ArenaState) -> Vec<Line<'static>> {
    let mut players: Vec<_> = state.players.iter().collect();
    players.sort_by(|a, b| b.1.score.cmp(&a.1.score).then(a.0.cmp(b.0)));
    let mut lines = vec![Line::styled(
        format!(
            "{:<3} {:<16} {:>5} {:>6}  status",
            "id", "name", "score", "deaths"
        ),
        Style::default().add_modifier(Modifier::BOLD),
    )];
    for (id, p) in players {
        let status = match p.respawn_at {
            Some(at) => format!("out until {at}"),
            None => format!("({},{})", p.pos.x, p.pos.y),
        };
        lines.push(Line::from(vec![
            Span::styled(
                format!("{:<3} {:<16}", id.0, p.name),
                Style::default().fg(color(*id)),
            ),
            Span::raw(format!(" {:>5} {:>6}  {status}", p.score, p.deaths)),
        ]));
    }
    if let Some(ending) = state.ending {
        lines.push(Line::raw(""));
        lines.push(Line::styled(
            format!("ended: {ending:?}"),
            Style::default().add_modifier(Modifier::BOLD),
        ));
    }
    lines
}

/// Draws one frame: the grid (or `waiting` without a state), the players,
/// the events panel and `footer`. Both modes share it.
fn draw(
    frame: &mut ratatui::Frame,
    arena: &Arena,
    state: Option<(Tick, &ArenaState)>,
    view: &View,
    footer: Line<'_>,
) {
    let [main, footer_area] =
        Layout::vertical([Constraint::Min(5), Constraint::Length(1)]).areas(frame.area());
    let grid_width = arena.map().width() as u16 * 2 + 2;
    let [left, right] =
        Layout::horizontal([Constraint::Length(grid_width), Constraint::Min(30)]).areas(main);
    let [top, bottom] = Layout::vertical([Constraint::Length(19), Constraint::Min(3)]).areas(right);
    let tick = state.map_or(0, |(tick, _)| tick);
    let title = format!(" {} · tick {tick} ", view.match_id);
    match state {
        Some((_, state)) => frame.render_widget(
            Paragraph::new(grid(arena, state)).block(Block::bordered().title(title)),
            left,
        ),
        None => frame.render_widget(
            Paragraph::new("waiting for the first state…").block(Block::bordered().title(title)),
            left,
        ),
    }
    let score_lines = state.map_or_else(Vec::new, |(_, state)| scores(state));
    frame.render_widget(
        Paragraph::new(score_lines).block(Block::bordered().title(" players ")),
        top,
    );
    let log_area = match &view.error {
        Some(error) => {
            // Wrapped in full: store errors are longer than the panel is wide.
            let width = usize::from(bottom.width.saturating_sub(2).max(1));
            let height = u16::try_from(error.chars().count() / width + 4).unwrap_or(u16::MAX);
            let [error_area, log_area] =
                Layout::vertical([Constraint::Length(height), Constraint::Min(3)]).areas(bottom);
            frame.render_widget(
                Paragraph::new(error.as_str())
                    .wrap(Wrap { trim: true })
                    .style(Style::default().fg(Color::Red))
                    .block(Block::bordered().title(" error ")),
                error_area,
            );
            log_area
        }
        None => bottom,
    };
    let log: Vec<Line> = view.log.iter().cloned().collect();
    frame.render_widget(
        Paragraph::new(log).block(Block::bordered().title(" events ")),
        log_area,
    );
    frame.render_widget(
        Paragraph::new(footer).style(Style::default().fg(Color::Black).bg(Color::Gray)),
        footer_area,
    );
}

/// Reads key presses on a thread of their own (crossterm polling blocks);
/// the thread ends once the receiver is dropped.
fn spawn_key_reader() -> mpsc::Receiver<KeyEvent> {
    let (keys_tx, keys) = mpsc::channel(16);
    std::thread::spawn(move || {
        loop {
            match event::poll(Duration::from_millis(100)) {
                Ok(true) => {
                    if let Ok(Event::Key(key)) = event::read()
                        && key.kind == KeyEventKind::Press
                        && keys_tx.blocking_send(key).is_err()
                    {
                        return;
                    }
                }
                Ok(false) => {
                    if keys_tx.is_closed() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    keys
}

fn is_quit(key: &KeyEvent) -> bool {
    let ctrl_c = key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c');
    matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let result = match (&args.replay, &args.match_id) {
        (Some(root), _) => replay(&args, root).await,
        (None, Some(match_id)) => live(&args, match_id).await,
        // clap's "mode" group requires one of the two.
        (None, None) => Err(anyhow::anyhow!(
            "pass --match to watch live or --replay to replay"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Live mode: a QUIC spectator session.
async fn live(args: &Args, match_id: &str) -> anyhow::Result<()> {
    let mut config = ClientConfig::trusting_file(args.server, &args.cert)
        .with_context(|| format!("reading the server certificate {}", args.cert.display()))?;
    config.server_name = args.server_name.clone();
    let ticket = match (&args.ticket, &args.secret_file) {
        (Some(ticket), _) => Some(ticket.clone()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let secret = ServerSecret::new(text.trim().as_bytes())?;
            Some(mint_ticket(
                &secret,
                match_id,
                PlayerId(0),
                unix_now() + 86_400,
            ))
        }
        (None, None) => None,
    };
    let client = Client::new(config)?;
    let mut session = client
        .join::<Arena>(JoinRequest::spectator(match_id, ticket.as_deref()))
        .await
        .with_context(|| format!("joining match {match_id:?} as a spectator"))?;

    let mut keys = spawn_key_reader();
    let arena = Arena::default();
    let mut view = View::new(match_id, format!("watching {match_id} at {}", args.server));
    let mut states_seen = 0u64;
    let started = Instant::now();
    let mut states = session.states();
    let stats = session.stats().clone();
    let mut rate_window = (Instant::now(), stats.bytes_in.load(Relaxed));
    let mut bytes_per_s = 0.0;
    let mut terminal = ratatui::init();
    let mut redraw = tokio::time::interval(Duration::from_millis(250));
    // After the session ends the last picture stays up until a key.
    let (mut states_open, mut events_open) = (true, true);
    let result: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                changed = states.changed(), if states_open => match changed {
                    Ok(()) => {
                        states_seen += 1;
                        // Names of players who joined before the viewer came.
                        if let Some(s) = states.borrow_and_update().as_ref() {
                            view.learn_names(&s.state);
                        }
                    }
                    Err(_) => states_open = false,
                },
                event = session.next_event(), if events_open => match event {
                    Some(event) => view.note_event(event),
                    None => events_open = false,
                },
                Some(key) = keys.recv() => {
                    if is_quit(&key) {
                        break;
                    }
                }
                _ = redraw.tick() => {
                    let (at, bytes) = rate_window;
                    if at.elapsed() >= Duration::from_secs(1) {
                        let now = stats.bytes_in.load(Relaxed);
                        bytes_per_s = (now - bytes) as f64 / at.elapsed().as_secs_f64();
                        rate_window = (Instant::now(), now);
                    }
                }
            }
            let latest: Option<Arc<StateUpdate<ArenaState>>> = states.borrow().clone();
            let footer = Line::raw(format!(
                " {} · {} states · {:.1} kB/s · {:.0}s · q to quit",
                view.status,
                states_seen,
                bytes_per_s / 1000.0,
                started.elapsed().as_secs_f64()
            ));
            let shown = latest.as_deref().map(|s| (s.tick, &s.state));
            terminal.draw(|frame| draw(frame, &arena, shown, &view, footer))?;
        }
        Ok(())
    }
    .await;
    ratatui::restore();
    result
}

/// Where a replay is: playing, paused, at its end, or stopped by an error.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Playback {
    Playing,
    Paused,
    Ended,
    Failed(String),
}

/// "¼", "½", "1", "2", … for a speed of 2^`exponent`.
fn speed_label(exponent: i32) -> String {
    match exponent {
        -2 => "¼".to_owned(),
        -1 => "½".to_owned(),
        e if e >= 0 => (1u32 << e).to_string(),
        e => format!("2^{e}"),
    }
}

/// Time between two replayed ticks at `tick_hz` and a speed of 2^`exponent`.
fn tick_period(tick_hz: u32, exponent: i32) -> Duration {
    Duration::from_secs_f64(1.0 / (f64::from(tick_hz.max(1)) * 2f64.powi(exponent)))
}

/// A stored match being replayed: its log, read page by page, and the
/// tick-by-tick replay of it.
struct Replay<'a> {
    store: &'a AnyStore,
    key: &'a MatchKey,
    arena: &'a Arena,
    replay: TickReplayer<'a, Arena>,
    /// List every event, not only those a live spectator gets.
    all_events: bool,
}

impl Replay<'_> {
    /// Runs the next tick, paging events in as needed. `None` at the head.
    async fn next_tick(&mut self) -> anyhow::Result<Option<Tick>> {
        loop {
            let step = self
                .replay
                .step()
                .with_context(|| format!("replaying {}", self.key))?;
            match step {
                TickStep::Ran(tick) => return Ok(Some(tick)),
                TickStep::Finished => return Ok(None),
                TickStep::NeedEvents { from } => {
                    let page = read_page(self.store, self.key, from).await?;
                    anyhow::ensure!(
                        !page.is_empty(),
                        "the log of {} ends before sequence {from}, below its stored head",
                        self.key
                    );
                    self.replay
                        .push(page)
                        .with_context(|| format!("replaying {}", self.key))?;
                }
            }
        }
    }
}

/// Reads one page of the log; a trimmed log says what happened.
async fn read_page(
    store: &AnyStore,
    key: &MatchKey,
    from: u64,
) -> anyhow::Result<Vec<tickforge::store::RecordedEvent>> {
    match store.read(key, from, REPLAY_PAGE).await {
        Ok(page) => Ok(page),
        Err(error @ StoreError::Trimmed { .. }) => Err(error).with_context(|| {
            format!(
                "cannot replay {key}: its log was trimmed \
                 (replays need engine.trim_events_below_snapshot = false)"
            )
        }),
        Err(error) => {
            Err(error).with_context(|| format!("reading the events of {key} from sequence {from}"))
        }
    }
}

/// Replay mode: the match's stored log, replayed tick by tick.
async fn replay(args: &Args, root: &str) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref()).context("loading configuration")?;
    if matches!(config.storage, StorageConfig::Memory { .. }) {
        anyhow::bail!(
            "replaying needs a durable store, and the memory backend keeps nothing between \
             processes: set REDIS_URL (or [storage] backend = \"redis\" in --config)"
        );
    }
    let store = AnyStore::open(&config.storage)
        .await
        .context("opening the Redis store")?;
    let arena = Arena::default();
    let key = MatchKey::new(arena.domain(), &config.edition, root).context("match id")?;
    let head = store
        .head(&key)
        .await
        .with_context(|| format!("reading the head of {key}"))?
        .with_context(|| format!("no match {key} in the store"))?;
    let setup = tickforge::engine::load_setup::<Arena, _>(&store, &key)
        .await
        .with_context(|| format!("reading the setup of {key}"))?;
    let mut ticks = TickReplayer::from_start(&arena, &setup, &head)
        .with_context(|| format!("starting the replay of {key}"))?;
    // The stored snapshot checks the replay when it reaches its tick.
    if let Some(snapshot) = store
        .load_snapshot(&key)
        .await
        .with_context(|| format!("reading the snapshot of {key}"))?
    {
        ticks.check_against(&snapshot);
    }
    let mut replay = Replay {
        store: &store,
        key: &key,
        arena: &arena,
        replay: ticks,
        all_events: args.all_events,
    };
    // The first page before the terminal switches over, so that a trimmed
    // or unreadable log is reported plainly.
    if head.next_sequence > 0 {
        let first = read_page(&store, &key, 0).await?;
        replay
            .replay
            .push(first)
            .with_context(|| format!("replaying {key}"))?;
    }

    let mut keys = spawn_key_reader();
    let mut view = View::new(root, String::new());
    let mut playback = Playback::Playing;
    let mut speed = 0i32;
    let mut next_due = tokio::time::Instant::now();
    let mut terminal = ratatui::init();
    let result: anyhow::Result<()> = async {
        loop {
            // Run the ticks that are due (several per frame at high speed).
            if playback == Playback::Playing {
                let period = tick_period(config.engine.tick_hz, speed);
                let now = tokio::time::Instant::now();
                let mut ran = 0;
                while playback == Playback::Playing && next_due <= now && ran < MAX_TICKS_PER_FRAME {
                    replay_tick(&mut replay, &mut view, &mut playback).await;
                    next_due += period;
                    ran += 1;
                }
                // Too far behind (a slow terminal): carry on from now
                // rather than rushing through the backlog.
                if next_due + period * MAX_TICKS_PER_FRAME as u32 <= now {
                    next_due = now + period;
                }
            }
            let state = replay.replay.state();
            let footer = replay_footer(
                replay.replay.tick(),
                replay.replay.head_tick(),
                speed,
                &playback,
            );
            terminal.draw(|frame| {
                draw(
                    frame,
                    &arena,
                    Some((replay.replay.tick(), state)),
                    &view,
                    footer,
                )
            })?;
            let key = tokio::select! {
                key = keys.recv() => key,
                _ = tokio::time::sleep_until(next_due), if playback == Playback::Playing => continue,
                // Paused or at the end: redraw now and then (a resized terminal).
                _ = tokio::time::sleep(Duration::from_millis(250)), if playback != Playback::Playing => continue,
            };
            let Some(key) = key else {
                anyhow::bail!("the terminal stopped delivering keys");
            };
            if matches!(playback, Playback::Ended | Playback::Failed(_)) || is_quit(&key) {
                break;
            }
            match key.code {
                KeyCode::Char(' ') => {
                    playback = match playback {
                        Playback::Playing => Playback::Paused,
                        _ => {
                            next_due = tokio::time::Instant::now();
                            Playback::Playing
                        }
                    };
                }
                KeyCode::Right if playback == Playback::Paused => {
                    replay_tick(&mut replay, &mut view, &mut playback).await;
                }
                KeyCode::Char('+' | '=') => speed = (speed + 1).min(*SPEED_EXPONENTS.end()),
                KeyCode::Char('-' | '_') => speed = (speed - 1).max(*SPEED_EXPONENTS.start()),
                _ => {}
            }
        }
        // The reason stays on the terminal after the screen is gone.
        match playback {
            Playback::Failed(message) => Err(anyhow::anyhow!(message)),
            _ => Ok(()),
        }
    }
    .await;
    ratatui::restore();
    result
}

/// Replays one tick into `view`. At the head `playback` becomes `Ended`;
/// a failure becomes `Failed`, with the error in the events panel too.
async fn replay_tick(replay: &mut Replay<'_>, view: &mut View, playback: &mut Playback) {
    match replay.next_tick().await {
        Ok(Some(_)) => {
            for envelope in replay.replay.tick_events() {
                if replay.all_events || replay.arena.is_reliable(&envelope.event) {
                    view.note_envelope(envelope.clone());
                }
            }
            view.learn_names(replay.replay.state());
            if replay.replay.is_finished() {
                *playback = Playback::Ended;
            }
        }
        Ok(None) => *playback = Playback::Ended,
        Err(error) => {
            let message = format!("{error:#}");
            view.error = Some(message.clone());
            *playback = Playback::Failed(message);
        }
    }
}

/// "replay · tick T / HEAD · speed ×S · paused", and the keys that apply.
fn replay_footer(tick: Tick, head: Tick, speed: i32, playback: &Playback) -> Line<'static> {
    let at = format!(
        " replay · tick {tick} / {head} · speed ×{}",
        speed_label(speed)
    );
    match playback {
        Playback::Playing => {
            Line::raw(format!("{at} · playing · space pause · +/- speed · q quit"))
        }
        Playback::Paused => Line::raw(format!(
            "{at} · paused · space play · → step · +/- speed · q quit"
        )),
        Playback::Ended => Line::raw(format!("{at} · end of the log · any key quits")),
        Playback::Failed(_) => Line::styled(
            format!("{at} · stopped by an error · any key quits"),
            Style::default().fg(Color::Red),
        ),
    }
}
