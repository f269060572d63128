//! A live terminal spectator: watches one arena match over QUIC and draws
//! it with ratatui (the grid with every player, the tick, the scores and
//! the latest reliable events).
//!
//! ```text
//! cargo run --release --example viewer -- --server 127.0.0.1:4433 --match demo-1-0
//! ```
//!
//! Spectators are read-only. Without `--ticket` or `--secret-file` the
//! viewer asks for open-mode admission. The server certificate is verified
//! against `--cert`. Press `q` or Esc to quit.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};
use tickforge::arena::{Arena, ArenaEvent, ArenaState, Dir, Pos};
use tickforge::client::{Client, ClientConfig, JoinRequest, SessionEvent, StateUpdate};
use tickforge::game::PlayerId;
use tickforge::net::ServerSecret;
use tickforge::net::tickets::{mint_ticket, unix_now};

#[derive(Debug, Parser)]
#[command(about = "Watch an arena match live in the terminal")]
struct Args {
    /// The server's UDP address.
    #[arg(long, default_value = "127.0.0.1:4433")]
    server: SocketAddr,
    /// The match to watch.
    #[arg(long = "match")]
    match_id: String,
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
    names: std::collections::BTreeMap<PlayerId, String>,
    states_seen: u64,
    started: Instant,
}

impl View {
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

    fn note_event(&mut self, event: SessionEvent<ArenaEvent>) {
        let line = match event {
            SessionEvent::Event(envelope) => {
                let seq = Span::styled(
                    format!("#{:<6}", envelope.sequence),
                    Style::default().fg(Color::DarkGray),
                );
                match envelope.event {
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
                }
            }
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

fn scores(state: &ArenaState, view: &View) -> Vec<Line<'static>> {
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
    let _ = view;
    lines
}

fn draw(
    frame: &mut ratatui::Frame,
    arena: &Arena,
    state: Option<&StateUpdate<ArenaState>>,
    view: &View,
    bytes_per_s: f64,
) {
    let [main, footer] =
        Layout::vertical([Constraint::Min(5), Constraint::Length(1)]).areas(frame.area());
    let grid_width = arena.map().width() as u16 * 2 + 2;
    let [left, right] =
        Layout::horizontal([Constraint::Length(grid_width), Constraint::Min(30)]).areas(main);
    let [top, bottom] = Layout::vertical([Constraint::Length(19), Constraint::Min(3)]).areas(right);
    let tick = state.map_or(0, |s| s.tick);
    let title = format!(" {} · tick {tick} ", view.match_id);
    match state {
        Some(s) => frame.render_widget(
            Paragraph::new(grid(arena, &s.state)).block(Block::bordered().title(title)),
            left,
        ),
        None => frame.render_widget(
            Paragraph::new("waiting for the first state…").block(Block::bordered().title(title)),
            left,
        ),
    }
    let score_lines = state.map_or_else(Vec::new, |s| scores(&s.state, view));
    frame.render_widget(
        Paragraph::new(score_lines).block(Block::bordered().title(" players ")),
        top,
    );
    let log: Vec<Line> = view.log.iter().cloned().collect();
    frame.render_widget(
        Paragraph::new(log).block(Block::bordered().title(" events ")),
        bottom,
    );
    frame.render_widget(
        Paragraph::new(format!(
            " {} · {} states · {:.1} kB/s · {:.0}s · q to quit",
            view.status,
            view.states_seen,
            bytes_per_s / 1000.0,
            view.started.elapsed().as_secs_f64()
        ))
        .style(Style::default().fg(Color::Black).bg(Color::Gray)),
        footer,
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
                &args.match_id,
                PlayerId(0),
                unix_now() + 86_400,
            ))
        }
        (None, None) => None,
    };
    let client = Client::new(config)?;
    let mut session = client
        .join::<Arena>(JoinRequest::spectator(&args.match_id, ticket.as_deref()))
        .await
        .with_context(|| format!("joining match {:?} as a spectator", args.match_id))?;

    // Keys are read on a thread of their own (crossterm polling blocks).
    let (keys_tx, mut keys) = tokio::sync::mpsc::channel(16);
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

    let arena = Arena::default();
    let mut view = View {
        match_id: args.match_id.clone(),
        status: format!("watching {} at {}", args.match_id, args.server),
        log: VecDeque::new(),
        names: Default::default(),
        states_seen: 0,
        started: Instant::now(),
    };
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
                        view.states_seen += 1;
                        // Names of players who joined before the viewer came.
                        if let Some(s) = states.borrow_and_update().as_ref() {
                            for (id, p) in &s.state.players {
                                if !view.names.contains_key(id) {
                                    view.names.insert(*id, p.name.clone());
                                }
                            }
                        }
                    }
                    Err(_) => states_open = false,
                },
                event = session.next_event(), if events_open => match event {
                    Some(event) => view.note_event(event),
                    None => events_open = false,
                },
                Some(key) = keys.recv() => {
                    let ctrl_c = key.modifiers.contains(KeyModifiers::CONTROL)
                        && key.code == KeyCode::Char('c');
                    if matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
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
            terminal.draw(|frame| draw(frame, &arena, latest.as_deref(), &view, bytes_per_s))?;
        }
        Ok(())
    }
    .await;
    ratatui::restore();
    result
}
