//! A network load generator: arena bots playing through the client library.
//!
//! Used by the `bots` example (against any server) and the demo (against
//! its own server on loopback). Each bot is one QUIC connection: it joins
//! (by ticket when it knows the secret, else in open mode), sends the
//! [`Bot`]'s command as an input ([`Session::input`](crate::net::client::Session::input))
//! for every new state it receives, and measures command-to-update
//! latency: from handing a command to the session until the first state at
//! or after the tick its `Applied` names. Matches
//! that end are replaced by the next round in the same slot.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use tokio::sync::watch;

use crate::arena::Arena;
use crate::arena::bot::Bot;
use crate::game::{PlayerId, Tick};
use crate::net::client::{
    Client, ClientConfig, ClientError, InputStatus, JoinRequest, SessionEvent,
};
use crate::net::tickets::{ServerSecret, mint_ticket, unix_now};

/// What load to generate.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// How to reach and verify the server.
    pub client: ClientConfig,
    /// Matches played at once.
    pub matches: usize,
    /// Bots per match.
    pub players: u32,
    /// Match ids are `{prefix}-{slot}-{round}`.
    pub match_prefix: String,
    /// Mint tickets with this secret; `None` joins in open mode.
    pub secret: Option<ServerSecret>,
    /// QUIC endpoints (UDP sockets) the bots share.
    pub endpoints: usize,
    /// Commands one bot may have awaiting their result.
    pub in_flight: usize,
}

impl LoadConfig {
    /// `matches` x `players` bots against the server in `client`, in open mode.
    pub fn new(client: ClientConfig, matches: usize, players: u32) -> Self {
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Self {
            client,
            matches,
            players,
            match_prefix: format!("bots-{run}"),
            secret: None,
            endpoints: 4,
            in_flight: 4,
        }
    }
}

/// Counters the bots update as they play.
#[derive(Debug)]
pub struct LoadStats {
    /// Bots connected now.
    pub connected: AtomicU64,
    /// Joins that failed.
    pub join_errors: AtomicU64,
    /// States received (all bots).
    pub updates: AtomicU64,
    /// Commands sent.
    pub commands: AtomicU64,
    /// Commands accepted.
    pub accepted: AtomicU64,
    /// Commands rejected by the game or the server.
    pub rejected: AtomicU64,
    /// Commands whose result was lost (disconnects, full queues).
    pub errors: AtomicU64,
    /// Reliable events received.
    pub events: AtomicU64,
    /// Gaps in reliable events.
    pub gaps: AtomicU64,
    /// Sessions resumed after a drop.
    pub resumes: AtomicU64,
    /// Bytes received from the server.
    pub bytes_in: AtomicU64,
    /// Matches that ended.
    pub finished: AtomicU64,
    latency_us: std::sync::Mutex<Histogram<u64>>,
}

impl Default for LoadStats {
    fn default() -> Self {
        Self {
            connected: AtomicU64::new(0),
            join_errors: AtomicU64::new(0),
            updates: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            events: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            resumes: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            // 1 µs to 60 s at 3 significant digits cannot fail to build.
            latency_us: std::sync::Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000, 3)
                    .unwrap_or_else(|_| Histogram::new(3).expect("3 significant digits")),
            ),
        }
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadSnapshot {
    /// Bots connected.
    pub connected: u64,
    /// Joins that failed.
    pub join_errors: u64,
    /// States received.
    pub updates: u64,
    /// Commands sent.
    pub commands: u64,
    /// Commands accepted.
    pub accepted: u64,
    /// Commands rejected.
    pub rejected: u64,
    /// Commands with no result.
    pub errors: u64,
    /// Reliable events received.
    pub events: u64,
    /// Event gaps.
    pub gaps: u64,
    /// Resumes.
    pub resumes: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Matches ended.
    pub finished: u64,
    /// Median command-to-update latency, ms.
    pub p50_ms: f64,
    /// 99th percentile command-to-update latency, ms.
    pub p99_ms: f64,
    /// Latency samples.
    pub samples: u64,
}

impl LoadStats {
    fn record_latency(&self, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, 60_000_000);
        let mut histogram = self.latency_us.lock().unwrap_or_else(|e| e.into_inner());
        let _ = histogram.record(micros);
    }

    /// A copy of the command-to-update latency histogram (µs) so far;
    /// subtract an earlier copy to get one window's distribution.
    pub fn latency_histogram(&self) -> Histogram<u64> {
        self.latency_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The counters now.
    pub fn snapshot(&self) -> LoadSnapshot {
        let histogram = self.latency_us.lock().unwrap_or_else(|e| e.into_inner());
        LoadSnapshot {
            connected: self.connected.load(Relaxed),
            join_errors: self.join_errors.load(Relaxed),
            updates: self.updates.load(Relaxed),
            commands: self.commands.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            errors: self.errors.load(Relaxed),
            events: self.events.load(Relaxed),
            gaps: self.gaps.load(Relaxed),
            resumes: self.resumes.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            finished: self.finished.load(Relaxed),
            p50_ms: histogram.value_at_quantile(0.5) as f64 / 1000.0,
            p99_ms: histogram.value_at_quantile(0.99) as f64 / 1000.0,
            samples: histogram.len(),
        }
    }
}

impl LoadSnapshot {
    /// A one-line progress report for the window since `before`.
    pub fn progress_line(&self, before: &LoadSnapshot, window: Duration, clients: u64) -> String {
        let secs = window.as_secs_f64().max(1e-9);
        let per_s = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
        format!(
            "clients={}/{} updates/s={:.0} commands/s={:.0} rejected={} errors={} p50_ms={:.2} p99_ms={:.2} \
             kB/s/client={:.2} events={} gaps={} resumes={}",
            self.connected,
            clients,
            per_s(self.updates, before.updates),
            per_s(self.commands, before.commands),
            self.rejected,
            self.errors,
            self.p50_ms,
            self.p99_ms,
            per_s(self.bytes_in, before.bytes_in) / clients.max(1) as f64 / 1000.0,
            self.events,
            self.gaps,
            self.resumes,
        )
    }

    /// The network figures of a `summary:` line, as `key=value` pairs.
    pub fn summary_fields(&self, elapsed: Duration, clients: u64) -> String {
        let secs = elapsed.as_secs_f64().max(1e-9);
        format!(
            "clients={clients} updates={} updates_per_s={:.0} commands={} accepted={} rejected={} errors={} \
             p50_ms={:.2} p99_ms={:.2} latency_samples={} bytes_per_client_per_s={:.0} events={} gaps={} \
             resumes={} join_errors={}",
            self.updates,
            self.updates as f64 / secs,
            self.commands,
            self.accepted,
            self.rejected,
            self.errors,
            self.p50_ms,
            self.p99_ms,
            self.samples,
            self.bytes_in as f64 / secs / clients.max(1) as f64,
            self.events,
            self.gaps,
            self.resumes,
            self.join_errors,
        )
    }
}

/// Runs the bots until `stop` resolves. Returns an error only when no
/// client endpoint could be set up; join failures are counted.
pub async fn run_load(
    config: LoadConfig,
    stats: Arc<LoadStats>,
    stop: impl Future<Output = ()>,
) -> Result<(), ClientError> {
    let clients: Vec<Client> = (0..config.endpoints.max(1))
        .map(|_| Client::new(config.client.clone()))
        .collect::<Result<_, _>>()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let config = Arc::new(config);
    let mut bots = tokio::task::JoinSet::new();
    let mut index = 0usize;
    for slot in 0..config.matches {
        for seat in 1..=config.players {
            let client = clients[index % clients.len()].clone();
            index += 1;
            let config = config.clone();
            let stats = stats.clone();
            let stop = stop_rx.clone();
            bots.spawn(async move { play_seat(client, config, stats, slot, seat, stop).await });
        }
    }
    stop.await;
    let _ = stop_tx.send(true);
    // Bots close their sessions on stop; bound the wait.
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while bots.join_next().await.is_some() {}
    })
    .await;
    bots.abort_all();
    Ok(())
}

/// One bot seat: plays round after round of its slot's matches.
async fn play_seat(
    client: Client,
    config: Arc<LoadConfig>,
    stats: Arc<LoadStats>,
    slot: usize,
    seat: u32,
    mut stop: watch::Receiver<bool>,
) {
    for round in 0u64.. {
        if *stop.borrow() {
            return;
        }
        let root = format!("{}-{slot}-{round}", config.match_prefix);
        let request = match &config.secret {
            Some(secret) => {
                let ticket = mint_ticket(secret, &root, PlayerId(seat), unix_now() + 3600);
                JoinRequest::player(&root, &ticket, &format!("bot-{seat}"))
            }
            None => JoinRequest::open_player(&root, &format!("bot-{seat}")),
        };
        let joined = tokio::select! {
            joined = client.join::<Arena>(request) => joined,
            _ = stop.changed() => return,
        };
        let session = match joined {
            Ok(session) => session,
            Err(error) => {
                if stats.join_errors.fetch_add(1, Relaxed) == 0 {
                    tracing::warn!(%error, r#match = %root, "bot could not join");
                }
                // Back off a little and try the next round.
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        stats.connected.fetch_add(1, Relaxed);
        let seed = (slot as u64) << 24 | u64::from(seat) << 8 | round;
        let over = play_session(session, &config, &stats, seed, &mut stop).await;
        stats.connected.fetch_sub(1, Relaxed);
        if over && seat == 1 {
            stats.finished.fetch_add(1, Relaxed);
        }
        if !over {
            return;
        }
    }
}

/// Plays one session; returns whether the match ended (vs stop or failure).
async fn play_session(
    mut session: crate::net::client::Session<Arena>,
    config: &LoadConfig,
    stats: &LoadStats,
    seed: u64,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let arena = Arena::default();
    let Some(player) = session.player() else {
        return false;
    };
    let mut bot = Bot::new(player, seed);
    let mut states = session.states();
    let mut in_flight = FuturesUnordered::new();
    // Recent (tick, received) pairs, to time results that lag their state.
    let mut recent: VecDeque<(Tick, Instant)> = VecDeque::new();
    // Accepted commands waiting for their first state: (sent, tick).
    let mut waiting: VecDeque<(Instant, Tick)> = VecDeque::new();
    let session_stats = session.stats().clone();
    let mut counted_bytes = 0u64;
    let mut counted_events = (0u64, 0u64, 0u64);
    let outcome = loop {
        tokio::select! {
            _ = stop.changed() => break false,
            changed = states.changed() => {
                if changed.is_err() {
                    break false;
                }
                let Some(update) = states.borrow_and_update().clone() else { continue };
                stats.updates.fetch_add(1, Relaxed);
                recent.push_back((update.tick, update.received));
                while recent.len() > 64 {
                    recent.pop_front();
                }
                waiting.retain(|&(sent, tick)| {
                    if update.tick >= tick {
                        stats.record_latency(update.received.saturating_duration_since(sent));
                        false
                    } else {
                        true
                    }
                });
                if update.over {
                    continue; // the MatchOver event ends the session
                }
                if in_flight.len() < config.in_flight.max(1)
                    && let Some(command) = bot.next_command(&arena, &update.state)
                {
                    stats.commands.fetch_add(1, Relaxed);
                    match session.input(command) {
                        Ok(pending) => {
                            let sent = pending.sent_at();
                            in_flight.push(async move { (sent, pending.await) });
                        }
                        Err(_) => {
                            stats.errors.fetch_add(1, Relaxed);
                        }
                    }
                }
            }
            Some((sent, result)) = in_flight.next(), if !in_flight.is_empty() => match result {
                Ok(InputStatus::Applied { tick }) => {
                    stats.accepted.fetch_add(1, Relaxed);
                    match recent.iter().find(|(t, _)| *t >= tick) {
                        Some(&(_, received)) => {
                            stats.record_latency(received.saturating_duration_since(sent));
                        }
                        None => waiting.push_back((sent, tick)),
                    }
                }
                Ok(InputStatus::Rejected { .. }) => {
                    stats.rejected.fetch_add(1, Relaxed);
                }
                Err(_) => {
                    stats.errors.fetch_add(1, Relaxed);
                }
            },
            event = session.next_event() => match event {
                None | Some(SessionEvent::Closed { .. }) => {
                    break session.state().is_some_and(|s| s.over);
                }
                Some(_) => {}
            },
        }
        // Fold the session's byte and event counters into the totals.
        let bytes = session_stats.bytes_in.load(Relaxed);
        stats.bytes_in.fetch_add(bytes - counted_bytes, Relaxed);
        counted_bytes = bytes;
        let now = (
            session_stats.events.load(Relaxed),
            session_stats.gaps.load(Relaxed),
            session_stats.resumes.load(Relaxed),
        );
        stats.events.fetch_add(now.0 - counted_events.0, Relaxed);
        stats.gaps.fetch_add(now.1 - counted_events.1, Relaxed);
        stats.resumes.fetch_add(now.2 - counted_events.2, Relaxed);
        counted_events = now;
    };
    session.close();
    outcome
}
