//! The client process of the `network-split` benchmark: N QUIC clients of
//! the client library, 8 (or `players`) to an arena match, against the
//! server process.
//!
//! The default load is a fixed schedule: every client sends one `Move`
//! every tick period (33.3 ms at 30 Hz) from a random phase, whatever the
//! states do. The option `replies` runs `tickforge::play::load` bots
//! instead, which send a command in reply to each state. Either way the
//! commands are inputs (`Session::input`: datagrams, acknowledged inside
//! states) and the latency of one is from handing it to the session until
//! the first state at or after the tick its `Applied` names.
//!
//! Clients join in waves. As the client library does, a client refused
//! with `ServerFull` (or whose handshake failed) tries again after the wait
//! asked for, with backoff, for up to `join_retry_s`; one still refused
//! then counts as refused (with `join_retry_s` 0 at its first refusal). After the joins and a warm-up the process
//! prints `WINDOW-START`, measures, prints `WINDOW-END`, then its result.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tickforge::arena::map::Pos;
use tickforge::arena::{Arena, ArenaCommand, ArenaState, Dir};
use tickforge::client::{
    Client, ClientConfig, ClientError, ClientStats, InputStatus, JoinRequest, SessionEvent,
};
use tickforge::game::Tick;
use tickforge::net::CloseCode;
use tickforge::net::protocol::CommandStatus;
use tickforge::play::load::{LoadConfig, LoadStats, run_load};
use tokio::sync::watch;

use crate::report::{self, progress};
use crate::sys::CpuMeter;

/// How the clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum LoadKind {
    /// One Move per tick period on a fixed schedule with a random phase,
    /// sent as an input (a datagram, acknowledged inside the states).
    Schedule,
    /// The same schedule with reliable commands on the control stream,
    /// each answered by its own result frame (protocol v2's only way).
    ScheduleCommands,
    /// A command in reply to each state (the demo's bots).
    Replies,
}

/// What the client process is asked to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientsSpec {
    pub server: std::net::SocketAddr,
    pub cert: std::path::PathBuf,
    pub clients: usize,
    pub players: u32,
    pub tick_hz: u32,
    pub load: LoadKind,
    pub warmup_s: f64,
    pub measure_s: f64,
    /// Match ids start with this (a fresh prefix per step).
    pub prefix: String,
    /// How long a join keeps retrying refusals and failed handshakes.
    pub join_retry_s: f64,
}

/// What the client process measured over its window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientsResult {
    pub clients: usize,
    pub joined: u64,
    pub refused: u64,
    pub join_errors: u64,
    /// The first [`KEPT_JOIN_ERRORS`] failed joins: client index and error.
    #[serde(default)]
    pub join_error_samples: Vec<String>,
    /// Retries the joined clients needed (refusals and failed handshakes
    /// they got past).
    pub join_retries: u64,
    /// Sessions that ended during the run (closed by the server or lost).
    pub ended: u64,
    pub join_s: f64,
    pub window_s: f64,
    pub samples: u64,
    pub p001_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub log_bins: Vec<u64>,
    /// States received per connected client per second.
    pub states_per_client_s: f64,
    /// Payload bytes received per connected client per second.
    pub bytes_per_client_s: f64,
    pub commands_per_s: f64,
    pub rejected: u64,
    pub errors: u64,
    /// Scheduled sends skipped because the client process fell a whole
    /// period behind (the client side was saturated).
    pub skipped_sends: u64,
    pub cpu_percent: Option<f64>,
}

/// Counters every scheduled client updates.
struct Counters {
    joined: AtomicU64,
    refused: AtomicU64,
    join_errors: AtomicU64,
    join_error_samples: Mutex<Vec<String>>,
    join_retries: AtomicU64,
    ended: AtomicU64,
    commands: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
    skipped_sends: AtomicU64,
    latency_us: Mutex<Histogram<u64>>,
    sessions: Mutex<Vec<Arc<ClientStats>>>,
}

impl Counters {
    fn new() -> Self {
        Self {
            joined: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            join_errors: AtomicU64::new(0),
            join_error_samples: Mutex::new(Vec::new()),
            join_retries: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            skipped_sends: AtomicU64::new(0),
            latency_us: Mutex::new(report::micros_histogram()),
            sessions: Mutex::new(Vec::new()),
        }
    }

    fn record(&self, latency: Duration) {
        let mut h = self.latency_us.lock().unwrap_or_else(|e| e.into_inner());
        report::record(&mut h, latency);
    }

    fn latency(&self) -> Histogram<u64> {
        self.latency_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// (states, bytes) received so far by every session.
    fn received(&self) -> (u64, u64) {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.iter().fold((0, 0), |(s, b), stats| {
            (
                s + stats.states.load(Relaxed),
                b + stats.bytes_in.load(Relaxed),
            )
        })
    }

    fn keep_join_error(&self, sample: String) {
        self.join_error_samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sample);
    }

    fn settled(&self) -> u64 {
        self.joined.load(Relaxed) + self.refused.load(Relaxed) + self.join_errors.load(Relaxed)
    }
}

/// One reading of whichever load runs.
#[derive(Debug, Clone, Copy, Default)]
struct Reading {
    joined: u64,
    refused: u64,
    join_errors: u64,
    ended: u64,
    states: u64,
    bytes: u64,
    commands: u64,
    rejected: u64,
    errors: u64,
    skipped_sends: u64,
}

enum Load {
    Schedule(Arc<Counters>),
    Replies(Arc<LoadStats>),
}

impl Load {
    /// The failed joins the schedule load kept.
    fn join_error_samples(&self) -> Vec<String> {
        match self {
            Load::Schedule(c) => c
                .join_error_samples
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            Load::Replies(_) => Vec::new(),
        }
    }

    /// Retries the joined clients of the schedule load needed.
    fn join_retries(&self) -> u64 {
        match self {
            Load::Schedule(c) => c.join_retries.load(Relaxed),
            Load::Replies(_) => 0,
        }
    }

    fn read(&self) -> Reading {
        match self {
            Load::Schedule(c) => {
                let (states, bytes) = c.received();
                Reading {
                    joined: c.joined.load(Relaxed),
                    refused: c.refused.load(Relaxed),
                    join_errors: c.join_errors.load(Relaxed),
                    ended: c.ended.load(Relaxed),
                    states,
                    bytes,
                    commands: c.commands.load(Relaxed),
                    rejected: c.rejected.load(Relaxed),
                    errors: c.errors.load(Relaxed),
                    skipped_sends: c.skipped_sends.load(Relaxed),
                }
            }
            Load::Replies(s) => {
                let snap = s.snapshot();
                Reading {
                    joined: snap.connected,
                    refused: 0,
                    join_errors: snap.join_errors,
                    ended: 0,
                    // States the bots saw (a watch: a state replaced before
                    // the bot looked is not counted).
                    states: snap.updates,
                    bytes: snap.bytes_in,
                    commands: snap.commands,
                    rejected: snap.rejected,
                    errors: snap.errors,
                    skipped_sends: 0,
                }
            }
        }
    }

    fn latency(&self) -> Histogram<u64> {
        match self {
            Load::Schedule(c) => c.latency(),
            Load::Replies(s) => s.latency_histogram(),
        }
    }
}

/// Clients started at once, at most (each wave settles before the next).
const WAVE: usize = 100;
/// Failed joins whose errors a step keeps for its report.
pub const KEPT_JOIN_ERRORS: usize = 8;
/// How long one wave may take to settle.
const WAVE_LIMIT: Duration = Duration::from_secs(20);
/// Clients per QUIC endpoint (UDP socket).
const CLIENTS_PER_ENDPOINT: usize = 100;

pub async fn run(spec: ClientsSpec) -> anyhow::Result<()> {
    crate::child::watchdog(Duration::from_secs_f64(
        spec.warmup_s + spec.measure_s + 300.0,
    ));
    let mut config = ClientConfig::trusting_file(spec.server, &spec.cert)
        .context("reading the server's certificate")?;
    config.retry_for = Duration::from_secs_f64(spec.join_retry_s.max(0.0));
    let period = Duration::from_secs_f64(1.0 / f64::from(spec.tick_hz.max(1)));
    let players = spec.players.max(1) as usize;
    let matches = spec.clients.div_ceil(players);
    let clients = matches * players;
    let endpoints: Vec<Client> = (0..clients.div_ceil(CLIENTS_PER_ENDPOINT).max(1))
        .map(|_| Client::new(config.clone()))
        .collect::<Result<_, _>>()
        .context("binding the client endpoints")?;
    let (stop_tx, stop) = watch::channel(false);

    let joining = Instant::now();
    let mut tasks = Vec::new();
    let load = match spec.load {
        LoadKind::Schedule | LoadKind::ScheduleCommands => {
            let reliable = spec.load == LoadKind::ScheduleCommands;
            let counters = Arc::new(Counters::new());
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ spec.clients as u64;
            for first in (0..clients).step_by(WAVE) {
                let count = WAVE.min(clients - first);
                for index in first..first + count {
                    let client = endpoints[index % endpoints.len()].clone();
                    let root = format!("{}-{}", spec.prefix, index / players);
                    seed = splitmix(seed);
                    let phase = Duration::from_nanos(seed % period.as_nanos().max(1) as u64);
                    tasks.push(tokio::spawn(scheduled_client(
                        client,
                        root,
                        index,
                        period,
                        phase,
                        seed,
                        reliable,
                        counters.clone(),
                        stop.clone(),
                    )));
                }
                let settled_by = Instant::now() + WAVE_LIMIT;
                while counters.settled() < (first + count) as u64 && Instant::now() < settled_by {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                progress(format!(
                    "network-split {}: {}/{clients} joined, {} refused, {} failed",
                    spec.clients,
                    counters.joined.load(Relaxed),
                    counters.refused.load(Relaxed),
                    counters.join_errors.load(Relaxed),
                ));
            }
            Load::Schedule(counters)
        }
        LoadKind::Replies => {
            let stats = Arc::new(LoadStats::default());
            let wave_matches = (WAVE / players).max(1);
            for (index, first) in (0..matches).step_by(wave_matches).enumerate() {
                let count = wave_matches.min(matches - first);
                let mut load = LoadConfig::new(config.clone(), count, spec.players);
                load.match_prefix = format!("{}-{index}", spec.prefix);
                load.endpoints = 1;
                let mut stop = stop.clone();
                let shared = stats.clone();
                tasks.push(tokio::spawn(async move {
                    let _ = run_load(load, shared, async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await;
                }));
                let expected = ((first + count) * players) as u64;
                let settled_by = Instant::now() + WAVE_LIMIT;
                while stats.snapshot().connected < expected && Instant::now() < settled_by {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let snap = stats.snapshot();
                progress(format!(
                    "network-split {}: {}/{clients} joined, {} join errors",
                    spec.clients, snap.connected, snap.join_errors
                ));
            }
            Load::Replies(stats)
        }
    };
    let join_s = joining.elapsed().as_secs_f64();
    progress(format!(
        "network-split {}: joins settled in {join_s:.1} s; warming up {:.0} s",
        spec.clients, spec.warmup_s
    ));
    tokio::time::sleep(Duration::from_secs_f64(spec.warmup_s)).await;

    println!("WINDOW-START");
    let before = load.read();
    let latency_before = load.latency();
    let cpu = CpuMeter::start(None);
    let started = Instant::now();
    let mut previous = (before, started);
    while started.elapsed().as_secs_f64() < spec.measure_s {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = load.read();
        let secs = previous.1.elapsed().as_secs_f64().max(1e-9);
        let window = report::window(&load.latency(), &latency_before);
        progress(format!(
            "network-split {}: {} connected, {:.1} states/s per client, {:.0} commands/s, \
             p50 {} ms, p99 {} ms so far, {} sends skipped",
            spec.clients,
            now.joined - now.ended,
            (now.states - previous.0.states) as f64 / secs / (now.joined - now.ended).max(1) as f64,
            (now.commands - previous.0.commands) as f64 / secs,
            report::num(report::ms(&window, 0.5), 1),
            report::num(report::ms(&window, 0.99), 1),
            now.skipped_sends - before.skipped_sends,
        ));
        previous = (now, Instant::now());
    }
    let window_s = started.elapsed().as_secs_f64();
    println!("WINDOW-END");
    let after = load.read();
    let cpu_percent = cpu.percent();
    let latency = report::window(&load.latency(), &latency_before);
    let _ = stop_tx.send(true);

    let connected = (after.joined - after.ended).max(1) as f64;
    let per_client_s = |a: u64, b: u64| a.saturating_sub(b) as f64 / window_s / connected;
    let result = ClientsResult {
        clients,
        joined: after.joined,
        refused: after.refused,
        join_errors: after.join_errors,
        join_error_samples: load.join_error_samples(),
        join_retries: load.join_retries(),
        ended: after.ended,
        join_s,
        window_s,
        samples: latency.len(),
        p001_ms: report::ms(&latency, 0.001),
        p50_ms: report::ms(&latency, 0.5),
        p90_ms: report::ms(&latency, 0.9),
        p99_ms: report::ms(&latency, 0.99),
        p999_ms: report::ms(&latency, 0.999),
        max_ms: report::max_ms(&latency),
        log_bins: crate::network::log_bins(&latency),
        states_per_client_s: per_client_s(after.states, before.states),
        bytes_per_client_s: per_client_s(after.bytes, before.bytes),
        commands_per_s: (after.commands - before.commands) as f64 / window_s,
        rejected: after.rejected - before.rejected,
        errors: after.errors - before.errors,
        skipped_sends: after.skipped_sends - before.skipped_sends,
        cpu_percent,
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        for task in tasks {
            let _ = task.await;
        }
    })
    .await;
    crate::child::emit(&result)
}

fn splitmix(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The direction to step: the current heading while its cell is free,
/// else a random free one (the arena refuses steps into walls).
fn heading(arena: &Arena, state: &ArenaState, from: Pos, current: Dir, random: u64) -> Dir {
    let free = |d: Dir| {
        let to = d.step(from);
        !arena.map().blocked(to) && !state.players.values().any(|p| p.pos == to)
    };
    if random % 8 != 0 && free(current) {
        return current;
    }
    (0..4)
        .map(|i| Dir::ALL[(random as usize / 8 + i) % 4])
        .find(|&d| free(d))
        .unwrap_or(current)
}

/// One command's outcome, whichever way it was sent.
enum Sent {
    Applied(Tick),
    Rejected,
    Failed,
}

/// A command in flight: when it was sent, and its outcome once known.
type Outcome = std::pin::Pin<Box<dyn Future<Output = (Instant, Sent)> + Send>>;

/// One client on the fixed schedule: joins once, then sends a Move every
/// `period` from `phase` on until stopped or closed, as an input or (when
/// `reliable`) as a command.
#[allow(clippy::too_many_arguments)]
async fn scheduled_client(
    client: Client,
    root: String,
    index: usize,
    period: Duration,
    phase: Duration,
    mut seed: u64,
    reliable: bool,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let request = JoinRequest::open_player(&root, &format!("c{index}"));
    let mut session = match client.join::<Arena>(request).await {
        Ok(session) => session,
        Err(error) => {
            if error.code() == Some(CloseCode::ServerFull) {
                counters.refused.fetch_add(1, Relaxed);
            } else if counters.join_errors.fetch_add(1, Relaxed) < KEPT_JOIN_ERRORS as u64 {
                let kind = match &error {
                    ClientError::Refused { .. } => "refused",
                    ClientError::Connect { .. } => "connect",
                    _ => "other",
                };
                let sample = format!("client {index} could not join ({kind}): {error}");
                progress(sample.clone());
                counters.keep_join_error(sample);
            }
            return;
        }
    };
    counters.joined.fetch_add(1, Relaxed);
    counters
        .join_retries
        .fetch_add(session.stats().retries.load(Relaxed), Relaxed);
    counters
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(session.stats().clone());
    let arena = Arena::default();
    let me = session.player();
    let mut states = session.states();
    let mut dir = Dir::ALL[(seed % 4) as usize];
    let mut latest: Option<Arc<tickforge::client::StateUpdate<ArenaState>>> = None;
    let mut in_flight = FuturesUnordered::new();
    // Recent (tick, received) pairs, to time results that lag their state.
    let mut recent: VecDeque<(Tick, Instant)> = VecDeque::new();
    // Accepted commands waiting for their first state: (sent, tick).
    let mut waiting: VecDeque<(Instant, Tick)> = VecDeque::new();
    let mut next = tokio::time::Instant::now() + phase;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            () = tokio::time::sleep_until(next) => {
                next += period;
                let now = tokio::time::Instant::now();
                if next < now {
                    // A whole period behind: skip the missed sends.
                    let behind = ((now - next).as_nanos() / period.as_nanos().max(1)) as u32 + 1;
                    counters.skipped_sends.fetch_add(u64::from(behind), Relaxed);
                    next += period * behind;
                }
                if let (Some(state), Some(me)) = (&latest, me)
                    && let Some(player) = state.state.players.get(&me)
                {
                    seed = splitmix(seed);
                    dir = heading(&arena, &state.state, player.pos, dir, seed);
                }
                counters.commands.fetch_add(1, Relaxed);
                let command = ArenaCommand::Move(dir);
                let pending: Result<Outcome, ClientError> = if reliable {
                    session.send(command).map(|pending| {
                        let sent = pending.sent_at();
                        Box::pin(async move {
                            (sent, match pending.await {
                                Ok(CommandStatus::Accepted { tick, .. }) => Sent::Applied(tick),
                                Ok(CommandStatus::Rejected { .. }) => Sent::Rejected,
                                Err(_) => Sent::Failed,
                            })
                        }) as _
                    })
                } else {
                    session.input(command).map(|pending| {
                        let sent = pending.sent_at();
                        Box::pin(async move {
                            (sent, match pending.await {
                                Ok(InputStatus::Applied { tick }) => Sent::Applied(tick),
                                Ok(InputStatus::Rejected { .. }) => Sent::Rejected,
                                Err(_) => Sent::Failed,
                            })
                        }) as _
                    })
                };
                match pending {
                    Ok(pending) => in_flight.push(pending),
                    Err(_) => {
                        counters.errors.fetch_add(1, Relaxed);
                    }
                }
            }
            Some((sent, result)) = in_flight.next(), if !in_flight.is_empty() => match result {
                Sent::Applied(tick) => {
                    match recent.iter().find(|(t, _)| *t >= tick) {
                        Some(&(_, received)) => counters.record(received.saturating_duration_since(sent)),
                        None => waiting.push_back((sent, tick)),
                    }
                }
                Sent::Rejected => {
                    counters.rejected.fetch_add(1, Relaxed);
                }
                Sent::Failed => {
                    counters.errors.fetch_add(1, Relaxed);
                }
            },
            changed = states.changed() => {
                if changed.is_err() {
                    counters.ended.fetch_add(1, Relaxed);
                    break;
                }
                let Some(update) = states.borrow_and_update().clone() else { continue };
                recent.push_back((update.tick, update.received));
                while recent.len() > 64 {
                    recent.pop_front();
                }
                waiting.retain(|&(sent, tick)| {
                    if update.tick >= tick {
                        counters.record(update.received.saturating_duration_since(sent));
                        false
                    } else {
                        true
                    }
                });
                latest = Some(update);
            }
            event = session.next_event() => {
                if matches!(event, None | Some(SessionEvent::Closed { .. })) {
                    counters.ended.fetch_add(1, Relaxed);
                    break;
                }
            }
        }
    }
    session.close();
}
