//! The players: arena bots, one QUIC session each, spread over the nodes.
//!
//! Match `m`'s first seat joins through node `m % n` (which creates the
//! match); the other seats join through the next nodes and are redirected
//! to the owner. Every session knows every node's address, so after a node
//! dies or drains it resumes wherever the match lives now. Each session
//! records when it received which tick, and every reliable event it saw
//! (by match and sequence, as a hash of its encoding) for the audit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use rustls::pki_types::CertificateDer;
use tickforge::arena::bot::Bot;
use tickforge::arena::{Arena, ArenaEvent};
use tickforge::client::{Client, ClientConfig, JoinRequest, Session, SessionEvent};
use tickforge::engine::EventEnvelope;
use tickforge::game::Tick;
use tickforge::net::CloseCode;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::report::{ms_at, now_ms};

/// How long a seat keeps trying to join a match before it counts as lost.
const JOIN_PATIENCE: Duration = Duration::from_secs(20);

/// What the players do.
#[derive(Debug, Clone)]
pub struct BotsSpec {
    /// Every node's QUIC address.
    pub nodes: Vec<SocketAddr>,
    /// The certificate the nodes serve.
    pub trusted: Vec<CertificateDer<'static>>,
    /// Matches played at once.
    pub matches: usize,
    /// Players per match.
    pub players: u32,
    /// Match ids are `{prefix}-{slot}-{round}`.
    pub prefix: String,
    /// A connection silent this long counts as lost (then the session resumes).
    pub idle_timeout: Duration,
    /// How long a session keeps trying to resume.
    pub retry_for: Duration,
    /// Joins are spread over this long (slot by slot), so hundreds of
    /// handshakes do not all land in the same instant.
    pub join_ramp: Duration,
}

/// Counters for the progress lines.
#[derive(Debug, Default)]
pub struct Live {
    /// Sessions connected now.
    pub connected: AtomicU64,
    /// States received.
    pub states: AtomicU64,
    /// Reliable events received.
    pub events: AtomicU64,
    /// Resumes after a drop.
    pub resumes: AtomicU64,
    /// Sessions that ended without their match being over.
    pub lost: AtomicU64,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Its match is over.
    Over,
    /// Still playing when the run stopped.
    Playing,
    /// Closed, or never admitted, for this reason.
    Lost(String),
}

/// One session of one seat, for the audit.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// The match id.
    pub root: String,
    /// The seat (1-based) in the match.
    pub seat: u32,
    /// (ms since start, tick) of every state received.
    pub receipts: Vec<(u64, Tick)>,
    /// How it ended.
    pub end: End,
    /// Resumes after drops.
    pub resumes: u32,
}

/// Every reliable event the clients of a match saw, by sequence.
#[derive(Debug, Default)]
pub struct SeenEvents {
    matches: Mutex<HashMap<String, HashMap<u64, u64>>>,
    /// Events two clients saw differently under one sequence.
    pub conflicts: AtomicU64,
}

impl SeenEvents {
    fn record(&self, root: &str, envelope: &EventEnvelope<ArenaEvent>) {
        let hash = envelope_hash(envelope);
        let mut matches = self.matches.lock().unwrap_or_else(|e| e.into_inner());
        let seen = matches.entry(root.to_owned()).or_default();
        if *seen.entry(envelope.sequence).or_insert(hash) != hash {
            self.conflicts.fetch_add(1, Relaxed);
        }
    }

    /// The events seen, by match: sequence → hash.
    pub fn take(&self) -> HashMap<String, HashMap<u64, u64>> {
        std::mem::take(&mut *self.matches.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A hash of an envelope's encoding: the same event gives the same hash
/// whether a client received it or it was read back from Redis.
pub fn envelope_hash(envelope: &EventEnvelope<ArenaEvent>) -> u64 {
    let bytes = tickforge::codec::encode(envelope).unwrap_or_default();
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// The running players.
pub struct Bots {
    seats: JoinSet<Vec<SessionRecord>>,
    stop: watch::Sender<bool>,
    /// Counters for progress lines.
    pub live: Arc<Live>,
    /// The events the clients saw.
    pub seen: Arc<SeenEvents>,
}

/// A client configuration entering through `entry`, knowing every node.
pub fn client_config(spec: &BotsSpec, entry: usize) -> ClientConfig {
    let mut config = ClientConfig::new(spec.nodes[entry], spec.trusted.clone());
    config.idle_timeout = spec.idle_timeout;
    config.retry_for = spec.retry_for;
    config.fallback = spec.nodes.clone();
    config
}

impl Bots {
    /// Starts every seat.
    pub fn start(spec: BotsSpec) -> anyhow::Result<Self> {
        let spec = Arc::new(spec);
        // Two UDP endpoints per entry node, shared by its sessions.
        let mut clients = Vec::new();
        for entry in 0..spec.nodes.len() {
            let config = client_config(&spec, entry);
            clients.push([Client::new(config.clone())?, Client::new(config)?]);
        }
        let (stop, stop_rx) = watch::channel(false);
        let live = Arc::new(Live::default());
        let seen = Arc::new(SeenEvents::default());
        let mut seats = JoinSet::new();
        for slot in 0..spec.matches {
            // The round whose match seat 1 has created, for the other seats.
            let (created_tx, created_rx) = watch::channel(None::<u64>);
            let created_tx = Arc::new(created_tx);
            for seat in 1..=spec.players {
                let entry = (slot + seat as usize - 1) % spec.nodes.len();
                let seat_ctx = Seat {
                    client: clients[entry][slot % 2].clone(),
                    slot,
                    seat,
                    spec: spec.clone(),
                    live: live.clone(),
                    seen: seen.clone(),
                    created_tx: created_tx.clone(),
                    created_rx: created_rx.clone(),
                    stop: stop_rx.clone(),
                };
                seats.spawn(seat_ctx.play());
            }
        }
        Ok(Self {
            seats,
            stop,
            live,
            seen,
        })
    }

    /// Stops every seat and returns their sessions.
    pub async fn stop(mut self) -> Vec<SessionRecord> {
        let _ = self.stop.send(true);
        let mut records = Vec::new();
        let collect = async {
            while let Some(done) = self.seats.join_next().await {
                if let Ok(seat) = done {
                    records.extend(seat);
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), collect)
            .await
            .is_err()
        {
            crate::report::progress("some seats did not stop within 10 s");
        }
        records
    }
}

/// One seat of one slot: plays round after round.
struct Seat {
    client: Client,
    slot: usize,
    seat: u32,
    spec: Arc<BotsSpec>,
    live: Arc<Live>,
    seen: Arc<SeenEvents>,
    created_tx: Arc<watch::Sender<Option<u64>>>,
    created_rx: watch::Receiver<Option<u64>>,
    stop: watch::Receiver<bool>,
}

impl Seat {
    async fn play(mut self) -> Vec<SessionRecord> {
        let mut records = Vec::new();
        for round in 0u64.. {
            if *self.stop.borrow() {
                break;
            }
            if round == 0 {
                let share = self.spec.join_ramp.as_secs_f64() * self.slot as f64
                    / self.spec.matches.max(1) as f64;
                tokio::time::sleep(Duration::from_secs_f64(share)).await;
            }
            let root = format!("{}-{}-{round}", self.spec.prefix, self.slot);
            if self.seat > 1 {
                // Wait until seat 1 created this round's match.
                let mut created = self.created_rx.clone();
                let ready = async { created.wait_for(|r| r.is_some_and(|r| r >= round)).await };
                tokio::select! {
                    ready = ready => if ready.is_err() { break },
                    _ = self.stop.changed() => break,
                }
            }
            let mut record = SessionRecord {
                root: root.clone(),
                seat: self.seat,
                receipts: Vec::new(),
                end: End::Playing,
                resumes: 0,
            };
            let session = match self.join(&root).await {
                Ok(Some(session)) => session,
                Ok(None) => break, // stopped while joining
                Err(reason) => {
                    self.live.lost.fetch_add(1, Relaxed);
                    record.end = End::Lost(format!("join: {reason}"));
                    records.push(record);
                    break;
                }
            };
            if self.seat == 1 {
                self.created_tx.send_replace(Some(round));
            }
            self.live.connected.fetch_add(1, Relaxed);
            self.play_session(session, &mut record).await;
            self.live.connected.fetch_sub(1, Relaxed);
            let over = record.end == End::Over;
            if let End::Lost(_) = record.end {
                self.live.lost.fetch_add(1, Relaxed);
            }
            records.push(record);
            if !over {
                break;
            }
        }
        records
    }

    /// Joins `root`, retrying transient refusals for [`JOIN_PATIENCE`];
    /// `Ok(None)` when the run stopped meanwhile.
    async fn join(&mut self, root: &str) -> Result<Option<Session<Arena>>, String> {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            let request = JoinRequest::open_player(root, &format!("bot-{}", self.seat));
            let joined = tokio::select! {
                joined = self.client.join::<Arena>(request) => joined,
                _ = self.stop.changed() => return Ok(None),
            };
            match joined {
                Ok(session) => return Ok(Some(session)),
                Err(error) if started.elapsed() < JOIN_PATIENCE => {
                    tracing::debug!(%error, r#match = root, "join failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(error) => return Err(error.to_string()),
            }
        }
    }

    /// Plays one session until its match ends, it is lost, or the run stops.
    async fn play_session(&mut self, mut session: Session<Arena>, record: &mut SessionRecord) {
        let arena = Arena::default();
        let Some(player) = session.player() else {
            record.end = End::Lost("admitted without a player slot".into());
            return;
        };
        let seed = (self.slot as u64) << 24 | u64::from(self.seat) << 8;
        let mut bot = Bot::new(player, seed);
        let mut states = session.states();
        let mut in_flight = FuturesUnordered::new();
        loop {
            tokio::select! {
                _ = self.stop.changed() => {
                    record.end = End::Playing;
                    break;
                }
                changed = states.changed() => {
                    if changed.is_err() {
                        // The session's driver ended: its last event says why.
                        record.end = drain_end(&mut session, &self.seen, &record.root).await;
                        break;
                    }
                    let Some(update) = states.borrow_and_update().clone() else { continue };
                    self.live.states.fetch_add(1, Relaxed);
                    record.receipts.push((ms_at(update.received), update.tick));
                    if !update.over
                        && in_flight.len() < 2
                        && let Some(command) = bot.next_command(&arena, &update.state)
                        && let Ok(pending) = session.send(command)
                    {
                        in_flight.push(pending);
                    }
                }
                Some(_) = in_flight.next(), if !in_flight.is_empty() => {}
                event = session.next_event() => match event {
                    Some(SessionEvent::Event(envelope)) => {
                        self.live.events.fetch_add(1, Relaxed);
                        self.seen.record(&record.root, &envelope);
                    }
                    Some(SessionEvent::Resumed { .. }) => {
                        record.resumes += 1;
                        self.live.resumes.fetch_add(1, Relaxed);
                    }
                    Some(SessionEvent::Closed { code, reason }) => {
                        record.end = closed_end(code, &reason, &session);
                        break;
                    }
                    None => {
                        record.end = closed_end(None, "session ended", &session);
                        break;
                    }
                    Some(_) => {}
                },
            }
        }
        session.close();
    }
}

/// How a session that reported `Closed` (or nothing more) ended.
fn closed_end(code: Option<CloseCode>, reason: &str, session: &Session<Arena>) -> End {
    if code == Some(CloseCode::MatchOver) || session.state().is_some_and(|s| s.over) {
        End::Over
    } else {
        End::Lost(format!("closed ({code:?}): {reason} at {} ms", now_ms()))
    }
}

/// Reads a finished session's remaining events (recording reliable ones)
/// up to its close.
async fn drain_end(session: &mut Session<Arena>, seen: &SeenEvents, root: &str) -> End {
    while let Some(event) = session.next_event().await {
        match event {
            SessionEvent::Event(envelope) => seen.record(root, &envelope),
            SessionEvent::Closed { code, reason } => return closed_end(code, &reason, session),
            _ => {}
        }
    }
    closed_end(None, "session ended", session)
}
