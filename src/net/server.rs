//! The QUIC server: one endpoint hosting many matches through the engine.
//!
//! Shaped like mini-redis. [`Server::run`] is the listener: for each
//! incoming connection it takes a permit from the connection semaphore and
//! moves it into a per-connection task, and it is handed a shutdown future.
//! A connection that finds no permit, or arrives while the server has no
//! headroom ([`admission`](super::admission)), is answered at once: the
//! handshake completes and the connection is closed with
//! [`CloseCode::ServerFull`] and a retry hint, so no client waits for a
//! timeout. Each
//! connection task admits its peer (ticket, resume token, or open mode),
//! then runs two halves: an inbound reader (frames, limits, commands into
//! [`Engine::submit`]) and an outbound loop (command results, reliable
//! events, and the state stream). At shutdown every task is told through a
//! watch channel, closes its connection with
//! [`CloseCode::ServerShutdown`] and drops its completion sender; the
//! listener waits for all of them, then closes the endpoint and waits for
//! it to go idle. Slots survive a shutdown: a restarted server with the
//! same secret honours the same resume tokens.
//!
//! Nothing here blocks a shard: states come from a watch (a slow client
//! skips states), events from a bounded broadcast (a client too far behind
//! is closed with [`CloseCode::Lagging`]), command replies through a
//! bounded channel the shard only `try_send`s into (a client with more
//! commands unanswered than that channel holds is closed with
//! [`CloseCode::ReplyQueueFull`] before a reply could be lost).
//!
//! Nothing here waits on a client for long either: every reliable write
//! waits at most `write_timeout` for the client to make room, then the
//! client is closed with [`CloseCode::SlowReader`], which ends its task and
//! frees its connection permit; its slot waits out the grace window like
//! any dropped one. A match's hub and slots are forgotten when it leaves
//! the engine, whether or not anyone is connected.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use rustls::pki_types::CertificateDer;
use tokio::sync::{Semaphore, broadcast, mpsc, watch};

use super::NetConfig;
use super::admission::{self, Full, Headroom};
use super::delta::{self, Patch};
use super::limits::TokenBucket;
use super::placement::Locator;
use super::protocol::{
    self, ClientDatagram, ClientMsg, CloseCode, CommandStatus, Credential, FrameBuffer, FrameError,
    Hello, Role, ServerMsg, Welcome,
};
use super::slots::{ResumeRefusal, Slots};
use super::tickets::{self, ServerSecret, TicketError};
use super::tls::{self, TlsError};
use super::udp_batch::{self, SendBatchStats};
use crate::admin::metrics as names;
use crate::codec;
use crate::engine::{
    CommandOutcome, CommandReply, Engine, EngineError, InputAcks, InputLedger, InputReply,
    MatchFeed, MatchUpdate, ReplyKind, ReplyTo, decode_event,
};
use crate::game::{Game, PlayerId, Tick, Viewer};
use crate::store::Store;

/// Acknowledged baselines older than this many ticks are not used.
const MAX_BASELINE_AGE: u64 = 32;
/// States remembered per connection as possible baselines.
const SENT_STATES_KEPT: usize = 48;
/// Largest state the server will send (the codec's limit).
const MAX_STATE_BYTES: usize = codec::MAX_DECODE_BYTES;
/// Events replayed from the store to a resuming client, at most.
const MAX_REPLAY_EVENTS: usize = 4096;
/// How long a join command may take to be applied.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for a client to close after the match ended.
const LINGER: Duration = Duration::from_secs(3);
/// How often hubs and slots of matches that left the engine are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The UDP socket could not be bound.
    #[error("cannot bind the QUIC endpoint on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificate or TLS settings were refused.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Counters of the network layer, readable while the server runs.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Connections that completed the QUIC handshake.
    pub connections: AtomicU64,
    /// Connections admitted (players and spectators).
    pub admitted: AtomicU64,
    /// Connections refused at admission.
    pub refused: AtomicU64,
    /// Connections refused on arrival with [`CloseCode::ServerFull`]
    /// (no connection place, or no headroom).
    pub refused_full: AtomicU64,
    /// Connections refused on arrival at the QUIC level, without a close
    /// code, because too many `ServerFull` refusals were under way.
    pub refused_unanswered: AtomicU64,
    /// Connections closed for garbage, oversized frames or floods.
    pub closed_for_abuse: AtomicU64,
    /// Connections closed for lagging behind on reliable events.
    pub closed_for_lag: AtomicU64,
    /// Connections closed because a reliable write waited `write_timeout`
    /// for the client to read ([`CloseCode::SlowReader`]).
    pub closed_slow_reader: AtomicU64,
    /// Connections closed with more commands unanswered than their reply
    /// queue holds ([`CloseCode::ReplyQueueFull`]).
    pub closed_reply_queue_full: AtomicU64,
    /// Matches the server keeps network state for now (the encoded-state
    /// cache and the player slots); forgotten when a match leaves the engine.
    pub matches_tracked: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Commands received.
    pub commands: AtomicU64,
    /// Input datagrams received (protocol 3).
    pub input_datagrams: AtomicU64,
    /// New inputs received (each submitted once, however often repeated).
    pub inputs: AtomicU64,
    /// Inputs received again (already processed), skipped.
    pub duplicate_inputs: AtomicU64,
    /// Input sequences a client skipped (a broken client; not fatal).
    pub input_gaps: AtomicU64,
    /// Inputs rejected (sent as `InputRejected`).
    pub inputs_rejected: AtomicU64,
    /// States that carried input acknowledgements (`Acked`).
    pub acked_states: AtomicU64,
    /// States sent (datagram or stream).
    pub states: AtomicU64,
    /// States sent as deltas.
    pub deltas: AtomicU64,
    /// Bytes of the state datagrams that carried deltas.
    pub delta_bytes: AtomicU64,
    /// Bytes the states sent as deltas take encoded whole (what a full
    /// state would have cost instead).
    pub delta_full_bytes: AtomicU64,
    /// Sum over deltas of how many ticks their baseline was behind the
    /// state (divide by `deltas` for the mean baseline age).
    pub delta_baseline_ticks: AtomicU64,
    /// States that went on a stream because they were too big for a datagram.
    pub stream_states: AtomicU64,
    /// State datagrams dropped by the loss test hook.
    pub test_dropped: AtomicU64,
    /// Reliable events sent.
    pub events: AtomicU64,
    /// Payload bytes sent (datagrams and frames).
    pub bytes_out: AtomicU64,
    /// Grace windows that ran out (the leave command went out).
    pub slots_freed: AtomicU64,
    /// Views encoded (once per distinct view and tick, not per client).
    pub views_encoded: AtomicU64,
    /// State messages built (once per distinct view, baseline and tick).
    pub state_messages_built: AtomicU64,
}

/// Per-match data shared by its connections: each distinct view of the
/// latest tick encoded once, and each state datagram built once per
/// (view, baseline), however many clients need it.
#[derive(Debug, Default)]
struct Hub {
    tick: std::sync::Mutex<TickCache>,
    /// Whether players found in the match without a slot got their grace window.
    adopted: std::sync::atomic::AtomicBool,
}

/// What a hub has built for one tick.
#[derive(Debug, Default)]
struct TickCache {
    tick: Option<Tick>,
    /// Encoded views by view key (`None` when the view could not be encoded).
    views: std::collections::HashMap<Viewer, Option<Arc<[u8]>>>,
    /// State messages by view key and baseline tick: (datagram bytes, is a delta).
    messages: std::collections::HashMap<(Viewer, Option<Tick>), (Bytes, bool)>,
}

impl Hub {
    /// Locks the tick cache, emptying it when `tick` is a newer tick.
    fn at(&self, tick: Tick) -> std::sync::MutexGuard<'_, TickCache> {
        let mut cache = self.tick.lock().unwrap_or_else(|e| e.into_inner());
        if cache.tick != Some(tick) {
            cache.tick = Some(tick);
            cache.views.clear();
            cache.messages.clear();
        }
        cache
    }

    /// The encoded view `key` of `tick`, built by `encode` at most once per tick.
    fn view(
        &self,
        tick: Tick,
        key: Viewer,
        encode: impl FnOnce() -> Option<Arc<[u8]>>,
    ) -> Option<Arc<[u8]>> {
        self.at(tick)
            .views
            .entry(key)
            .or_insert_with(encode)
            .clone()
    }

    /// The state message for view `key` of `tick` against `baseline`,
    /// built by `build` at most once per tick.
    fn message(
        &self,
        tick: Tick,
        key: Viewer,
        baseline: Option<Tick>,
        build: impl FnOnce() -> Option<(Bytes, bool)>,
    ) -> Option<(Bytes, bool)> {
        let mut cache = self.at(tick);
        if let Some(message) = cache.messages.get(&(key, baseline)) {
            return Some(message.clone());
        }
        let message = build()?;
        cache.messages.insert((key, baseline), message.clone());
        Some(message)
    }
}

struct Shared<G: Game, S: Store> {
    engine: Arc<Engine<G, S>>,
    config: NetConfig,
    secret: ServerSecret,
    slots: std::sync::Mutex<Slots>,
    hubs: DashMap<Arc<str>, Arc<Hub>>,
    conns: DashMap<u64, quinn::Connection>,
    hosting: tokio::sync::Mutex<()>,
    /// Where matches are served, when this server is a node of a fleet.
    locator: Option<Arc<dyn Locator>>,
    next_conn: AtomicU64,
    stats: Arc<NetStats>,
    headroom: Arc<Headroom>,
    shutdown: watch::Receiver<bool>,
}

impl<G: Game, S: Store> Shared<G, S> {
    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        // Slot updates are single map operations; a panic cannot leave one half done.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Remembers whether shutdown was signalled (mini-redis `Shutdown`).
struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    async fn recv(&mut self) {
        // An error means the sender is gone: that is a shutdown too.
        let _ = self.rx.wait_for(|stop| *stop).await;
    }

    fn is_shutdown(&self) -> bool {
        *self.rx.borrow()
    }
}

/// A bound server, ready to [`run`](Server::run).
pub struct Server<G: Game, S: Store> {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared<G, S>>,
    shutdown_tx: watch::Sender<bool>,
    cert: CertificateDer<'static>,
    local_addr: SocketAddr,
    send_batches: Option<Arc<SendBatchStats>>,
}

impl<G: Game, S: Store> std::fmt::Debug for Server<G, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("open_mode", &self.shared.config.open_mode)
            .finish()
    }
}

/// Binds a server for `engine` with `config` and runs it until `shutdown`
/// resolves; then closes every connection and the endpoint.
///
/// Must be called within a tokio runtime. The engine keeps running
/// afterwards; shut it down after this returns.
pub async fn serve<G: Game, S: Store>(
    engine: Arc<Engine<G, S>>,
    config: NetConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NetError> {
    Server::bind(engine, config)?.run(shutdown).await;
    Ok(())
}

impl<G: Game, S: Store> Server<G, S> {
    /// Loads or generates the certificate and binds the UDP endpoint.
    /// Must be called within a tokio runtime.
    pub fn bind(engine: Arc<Engine<G, S>>, config: NetConfig) -> Result<Self, NetError> {
        let cert = tls::load_server_cert(&config.tls)?;
        let server_config = tls::server_config(&cert, config.idle_timeout)?;
        let (endpoint, send_batches) =
            udp_batch::server_endpoint(config.listen, config.batch_sends, server_config).map_err(
                |source| NetError::Bind {
                    addr: config.listen,
                    source,
                },
            )?;
        let local_addr = endpoint.local_addr().map_err(|source| NetError::Bind {
            addr: config.listen,
            source,
        })?;
        let secret = match &config.secret {
            Some(secret) => secret.clone(),
            None => {
                tracing::warn!(
                    "no net.secret configured: using a random secret; tickets minted elsewhere \
                     are refused and resume tokens will not survive a restart"
                );
                ServerSecret::random()
            }
        };
        if config.open_mode {
            tracing::warn!(
                "open mode is on: anyone may join without a ticket and matches are created on demand"
            );
        }
        if let Some(loss) = config.datagram_loss {
            tracing::warn!(
                per_mille = loss.per_mille,
                seed = loss.seed,
                "test hook: dropping outgoing state datagrams"
            );
        }
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let leaf = cert
            .leaf()
            .cloned()
            .unwrap_or_else(|| CertificateDer::from(Vec::new()));
        tracing::info!(addr = %local_addr, batch_sends = send_batches.is_some(), alpn = %String::from_utf8_lossy(protocol::ALPN), "QUIC endpoint bound");
        Ok(Self {
            endpoint,
            shared: Arc::new(Shared {
                engine,
                config,
                secret,
                slots: std::sync::Mutex::new(Slots::default()),
                hubs: DashMap::new(),
                conns: DashMap::new(),
                hosting: tokio::sync::Mutex::new(()),
                locator: None,
                next_conn: AtomicU64::new(1),
                stats: Arc::new(NetStats::default()),
                headroom: Arc::new(Headroom::default()),
                shutdown: shutdown_rx,
            }),
            shutdown_tx,
            cert: leaf,
            local_addr,
            send_batches,
        })
    }

    /// Makes this server one node of a fleet: before hosting a match it
    /// asks `locator` where the match is served, and redirects the client
    /// (or asks it to wait) when that is not here; a session whose match
    /// moved away is closed the same way. Call before [`Server::run`].
    pub fn with_locator(mut self, locator: Arc<dyn Locator>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.locator = Some(locator);
        }
        self
    }

    /// The address the endpoint is bound to (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server's leaf certificate (what clients of a self-signed server trust).
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The live counters.
    pub fn stats(&self) -> Arc<NetStats> {
        self.shared.stats.clone()
    }

    /// The batching socket's counters when the endpoint sends through one
    /// ([`NetConfig::batch_sends`] on Linux).
    pub fn send_batch_stats(&self) -> Option<Arc<SendBatchStats>> {
        self.send_batches.clone()
    }

    /// The secret tickets and resume tokens are checked with.
    pub fn secret(&self) -> &ServerSecret {
        &self.shared.secret
    }

    /// Gives the players of matches restored before this server started
    /// (e.g. by [`Engine::restore_all`]) the grace window to come back:
    /// each player present in such a match gets a slot waiting for its
    /// resume token, and is taken out (the game's leave command) when the
    /// window runs out without one. Pass only matches whose players are
    /// network clients; a match restored later by a client's `Hello` is
    /// adopted on its own. Within a tokio runtime.
    pub fn adopt_players_of(&self, roots: impl IntoIterator<Item = String>) {
        adopt_players(&self.shared, roots);
    }

    /// [`Server::adopt_players_of`] as a function that outlives
    /// [`Server::run`]'s taking of the server: for matches restored later
    /// by something other than a client's `Hello` (a fleet's takeover scan).
    pub fn player_adopter(&self) -> Arc<dyn Fn(Vec<String>) + Send + Sync> {
        let shared = self.shared.clone();
        Arc::new(move |roots| adopt_players(&shared, roots))
    }

    /// Accepts connections until `shutdown` resolves, then closes every
    /// connection with [`CloseCode::ServerShutdown`], closes the endpoint
    /// and waits (bounded) for it to be idle.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let limit = Arc::new(Semaphore::new(self.shared.config.max_connections.max(1)));
        let (complete_tx, mut complete_rx) = mpsc::channel::<()>(1);
        let _sweeper = AbortOnDrop(tokio::spawn(forget_ended_matches(self.shared.clone())));
        // The load is sampled only when a headroom limit reads it.
        let _sampler = self.shared.config.admission().measures_headroom().then(|| {
            AbortOnDrop(tokio::spawn(admission::sample(
                self.shared.engine.clone(),
                self.shared.headroom.clone(),
                self.shared.shutdown.clone(),
            )))
        });
        tokio::select! {
            _ = accept_loop(&self.endpoint, &self.shared, &limit, &complete_tx) => {
                tracing::info!("QUIC endpoint closed");
            }
            _ = shutdown => {
                tracing::info!("network shutdown requested");
            }
        }
        // Tell every handler and grace timer, then wait for the handlers,
        // refusing new connections meanwhile with a code that says why.
        let _ = self.shutdown_tx.send(true);
        drop(complete_tx);
        tokio::select! {
            _ = tokio::time::timeout(Duration::from_secs(5), complete_rx.recv()) => {}
            () = refuse_while_draining(&self.endpoint, self.shared.config.hello_timeout) => {}
        }
        self.endpoint.close(
            CloseCode::ServerShutdown.code().into(),
            b"server shutting down",
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        tracing::info!("network stopped");
    }
}

/// Gives the present players of each match in `roots` the grace window
/// (see [`Server::adopt_players_of`]).
fn adopt_players<G: Game, S: Store>(
    shared: &Arc<Shared<G, S>>,
    roots: impl IntoIterator<Item = String>,
) {
    for root in roots {
        let shared = shared.clone();
        tokio::spawn(async move {
            let root: Arc<str> = root.into();
            let Ok(mut feed) = shared.engine.subscribe(&root) else {
                return; // no longer hosted
            };
            let hub = ensure_hub(&shared, &root);
            if let Ok(update) = next_update(&mut feed).await
                && !update.over
            {
                let present = shared.engine.game().players(&update.state);
                adopt_absent(&shared, &root, &hub, &present, None);
            }
        });
    }
}

/// Answers every new connection during a drain with
/// [`CloseCode::ServerShutdown`] and a retry hint, instead of leaving it
/// to time out. Runs until the endpoint closes.
async fn refuse_while_draining(endpoint: &quinn::Endpoint, handshake_timeout: Duration) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            if let Ok(Ok(conn)) = tokio::time::timeout(handshake_timeout, incoming).await {
                Refusal::new(
                    CloseCode::ServerShutdown,
                    "draining: this node is shutting down; retry in a few seconds \
                     (resume tokens stay valid)",
                )
                .close(&conn);
            }
        });
    }
}

/// `ServerFull` refusals under way at once, at most; past that a new
/// connection is refused at the QUIC level (no handshake, no close code).
const MAX_REFUSING: usize = 1024;

async fn accept_loop<G: Game, S: Store>(
    endpoint: &quinn::Endpoint,
    shared: &Arc<Shared<G, S>>,
    limit: &Arc<Semaphore>,
    complete_tx: &mpsc::Sender<()>,
) {
    let limits = shared.config.admission();
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    while let Some(incoming) = endpoint.accept().await {
        // The permit moves into the task and is released when it ends.
        let verdict = match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                let open = limits.max_connections - limit.available_permits() - 1;
                match limits.verdict(&shared.headroom.load(open)) {
                    None => Ok(permit),
                    Some(full) => Err(full),
                }
            }
            Err(_) => Err(Full::Connections {
                open: limits.max_connections,
                limit: limits.max_connections,
            }),
        };
        match verdict {
            Ok(permit) => {
                let shared = shared.clone();
                let complete = complete_tx.clone();
                tokio::spawn(async move {
                    handle_connection(shared, incoming).await;
                    drop(permit);
                    drop(complete);
                });
            }
            Err(full) => refuse_full(shared, incoming, full, limits.retry_after, &refusing),
        }
    }
}

/// Answers a connection the server will not take: completes the handshake
/// and closes with [`CloseCode::ServerFull`], the retry hint and the reason;
/// when [`MAX_REFUSING`] such answers are under way, refuses it at the QUIC
/// level at once instead.
fn refuse_full<G: Game, S: Store>(
    shared: &Arc<Shared<G, S>>,
    incoming: quinn::Incoming,
    full: Full,
    retry_after: Duration,
    refusing: &Arc<Semaphore>,
) {
    let stats = shared.stats.clone();
    let Ok(place) = refusing.clone().try_acquire_owned() else {
        stats.refused_unanswered.fetch_add(1, Relaxed);
        incoming.refuse();
        return;
    };
    let handshake_timeout = shared.config.hello_timeout;
    tokio::spawn(async move {
        let remote = incoming.remote_address();
        if let Ok(Ok(conn)) = tokio::time::timeout(handshake_timeout, incoming).await {
            stats.refused_full.fetch_add(1, Relaxed);
            tracing::debug!(%remote, %full, "connection refused: server full");
            Refusal::new(
                CloseCode::ServerFull,
                protocol::retry_reason(retry_after, &full.to_string()),
            )
            .close(&conn);
        }
        drop(place);
    });
}

/// Why a connection is closed, as sent to the peer.
#[derive(Debug, Clone)]
struct Refusal {
    code: CloseCode,
    reason: String,
}

impl Refusal {
    fn new(code: CloseCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    fn close(&self, conn: &quinn::Connection) {
        // A close reason must fit in one packet.
        let mut end = self.reason.len().min(400);
        while !self.reason.is_char_boundary(end) {
            end -= 1;
        }
        conn.close(self.code.code().into(), &self.reason.as_bytes()[..end]);
        metrics::counter!(names::SESSIONS_CLOSED, "code" => names::close_code_label(self.code))
            .increment(1);
    }
}

fn ticket_refusal(error: &TicketError) -> Refusal {
    let code = match error {
        TicketError::Forged => CloseCode::TicketForged,
        TicketError::Expired { .. } => CloseCode::TicketExpired,
        TicketError::WrongMatch { .. } => CloseCode::WrongMatch,
        _ => CloseCode::TicketMalformed,
    };
    Refusal::new(code, error.to_string())
}

fn frame_refusal(error: &FrameError) -> Refusal {
    match error {
        FrameError::TooLarge { .. } => Refusal::new(CloseCode::FrameTooLarge, error.to_string()),
        _ => Refusal::new(CloseCode::Malformed, error.to_string()),
    }
}

/// An admitted connection.
struct Session<G: Game> {
    root: Arc<str>,
    player: Option<PlayerId>,
    conn_id: u64,
    send: Control,
    recv: quinn::RecvStream,
    frames: FrameBuffer,
    feed: MatchFeed<G>,
    first: Arc<MatchUpdate<G::State>>,
    events_from: u64,
    hub: Arc<Hub>,
}

async fn handle_connection<G: Game, S: Store>(
    shared: Arc<Shared<G, S>>,
    incoming: quinn::Incoming,
) {
    let remote = incoming.remote_address();
    let conn = match tokio::time::timeout(shared.config.hello_timeout, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => {
            tracing::debug!(%remote, %error, "handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "handshake timed out");
            return;
        }
    };
    let stats = shared.stats.clone();
    stats.connections.fetch_add(1, Relaxed);
    stats.open.fetch_add(1, Relaxed);
    metrics::counter!(names::SESSIONS_CONNECTED).increment(1);
    metrics::gauge!(names::SESSIONS_OPEN).increment(1.0);
    let conn_id = shared.next_conn.fetch_add(1, Relaxed);
    shared.conns.insert(conn_id, conn.clone());
    let mut shutdown = Shutdown {
        rx: shared.shutdown.clone(),
    };
    let admitted = tokio::select! {
        admitted = admit(&shared, &conn, conn_id) => admitted,
        _ = shutdown.recv() => Err(Refusal::new(CloseCode::ServerShutdown, "server shutting down")),
    };
    match admitted {
        Ok(session) => {
            stats.admitted.fetch_add(1, Relaxed);
            let root = session.root.clone();
            let player = session.player;
            tracing::info!(%remote, r#match = %root, player = ?player, "admitted");
            let ended = run_session(&shared, &conn, session, &mut shutdown).await;
            if let Some(player) = player {
                after_session(&shared, &root, player, conn_id, ended, &shutdown);
            }
        }
        Err(refusal) => {
            if refusal.code != CloseCode::ServerShutdown {
                stats.refused.fetch_add(1, Relaxed);
                tracing::info!(%remote, code = ?refusal.code, reason = %refusal.reason, "connection refused");
            }
            refusal.close(&conn);
        }
    }
    shared.conns.remove(&conn_id);
    stats.open.fetch_sub(1, Relaxed);
    metrics::gauge!(names::SESSIONS_OPEN).decrement(1.0);
    names::connection_ended(&conn);
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The connection dropped or was closed: the grace window starts.
    Dropped,
    /// The server is shutting down: the slot is kept for a restart.
    Shutdown,
    /// The match is over: nothing to keep.
    MatchOver,
}

fn after_session<G: Game, S: Store>(
    shared: &Arc<Shared<G, S>>,
    root: &Arc<str>,
    player: PlayerId,
    conn_id: u64,
    ended: Ended,
    shutdown: &Shutdown,
) {
    if ended != Ended::Dropped || shutdown.is_shutdown() {
        return;
    }
    let Some(generation) = shared.slots().disconnect(root, player, conn_id) else {
        return; // replaced by a newer connection
    };
    tracing::info!(r#match = %root, %player, grace = ?shared.config.grace, "player dropped; slot kept for the grace window");
    arm_grace(shared, root.clone(), player, generation);
}

fn arm_grace<G: Game, S: Store>(
    shared: &Arc<Shared<G, S>>,
    root: Arc<str>,
    player: PlayerId,
    generation: u64,
) {
    let shared = shared.clone();
    let mut shutdown = Shutdown {
        rx: shared.shutdown.clone(),
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(shared.config.grace) => {}
            _ = shutdown.recv() => return,
        }
        if !shared.slots().expire(&root, player, generation) {
            return;
        }
        shared.stats.slots_freed.fetch_add(1, Relaxed);
        let leave = shared.engine.game().leave();
        match shared.engine.submit(&root, player, leave, None) {
            Ok(()) => {
                tracing::info!(r#match = %root, %player, "grace window over; player removed")
            }
            Err(error) => {
                tracing::warn!(r#match = %root, %player, %error, "grace window over; leave not queued")
            }
        }
    });
}

async fn read_hello(
    recv: &mut quinn::RecvStream,
    frames: &mut FrameBuffer,
) -> Result<Hello, Refusal> {
    loop {
        match frames.next_frame::<ClientMsg<serde::de::IgnoredAny>>() {
            Ok(Some(ClientMsg::Hello(hello))) => return Ok(hello),
            Ok(Some(_)) => {
                return Err(Refusal::new(
                    CloseCode::Malformed,
                    "the first frame must be a Hello",
                ));
            }
            Ok(None) => {}
            Err(error) => return Err(frame_refusal(&error)),
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => {
                metrics::counter!(names::BYTES_RECEIVED).increment(chunk.bytes.len() as u64);
                frames.extend(&chunk.bytes);
            }
            Ok(None) => {
                return Err(Refusal::new(
                    CloseCode::Malformed,
                    "control stream ended before a Hello",
                ));
            }
            Err(error) => {
                return Err(Refusal::new(CloseCode::Normal, error.to_string()));
            }
        }
    }
}

async fn admit<G: Game, S: Store>(
    shared: &Arc<Shared<G, S>>,
    conn: &quinn::Connection,
    conn_id: u64,
) -> Result<Session<G>, Refusal> {
    let timeout = shared.config.hello_timeout;
    let hello_timeout = || Refusal::new(CloseCode::HelloTimeout, "no Hello in time");
    let (send, mut recv) = tokio::time::timeout(timeout, conn.accept_bi())
        .await
        .map_err(|_| hello_timeout())?
        .map_err(|e| Refusal::new(CloseCode::Normal, e.to_string()))?;
    let mut frames = FrameBuffer::new(shared.config.max_frame_bytes);
    let hello = tokio::time::timeout(timeout, read_hello(&mut recv, &mut frames))
        .await
        .map_err(|_| hello_timeout())??;

    let root: Arc<str> = hello.match_id.as_str().into();
    // Who is asking, before touching the engine.
    enum Claim {
        Player(PlayerId),
        Resume(PlayerId, u64),
        OpenPlayer,
        Spectator,
    }
    let claim = match (&hello.credential, hello.role) {
        (Credential::Ticket(ticket), role) => {
            let claims = tickets::verify_ticket(&shared.secret, ticket, &root, tickets::unix_now())
                .map_err(|e| ticket_refusal(&e))?;
            match role {
                Role::Player => Claim::Player(claims.player),
                Role::Spectator => Claim::Spectator,
            }
        }
        (Credential::Resume(token), Role::Player) => {
            let claims = tickets::verify_resume_token(&shared.secret, token, &root)
                .map_err(|e| ticket_refusal(&e))?;
            Claim::Resume(claims.player, claims.epoch)
        }
        (Credential::Resume(_), Role::Spectator) => {
            return Err(Refusal::new(
                CloseCode::Malformed,
                "a resume token is for players only",
            ));
        }
        (Credential::Open, role) => {
            if !shared.config.open_mode {
                return Err(Refusal::new(
                    CloseCode::OpenModeDisabled,
                    "this server admits by ticket only",
                ));
            }
            match role {
                Role::Player => Claim::OpenPlayer,
                Role::Spectator => Claim::Spectator,
            }
        }
    };
    let may_create = match claim {
        Claim::Player(_) | Claim::OpenPlayer => true,
        Claim::Resume(..) | Claim::Spectator => false,
    };
    let restored = ensure_hosted(shared, &root, may_create, hello.params.as_deref()).await?;
    let hub = ensure_hub(shared, &root);

    // Subscribe first, then take the next published state: every event
    // after that state reaches the subscription.
    let mut feed = shared
        .engine
        .subscribe(&root)
        .map_err(|e| Refusal::new(CloseCode::UnknownMatch, e.to_string()))?;
    let first = next_update(&mut feed).await?;
    if let Some(reason) = &first.failure {
        return Err(Refusal::new(
            CloseCode::MatchFailed,
            format!("the match failed: {reason}"),
        ));
    }
    if first.over {
        return Err(Refusal::new(CloseCode::MatchOver, "the match is over"));
    }
    let game = shared.engine.game();
    let present = game.players(&first.state);

    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // A match restored here, or the first resume into a match (after a
    // restart), shows the match has network players: the others present
    // get the grace window to come back too.
    if restored || matches!(claim, Claim::Resume(..)) {
        let claimant = match claim {
            Claim::Player(player) | Claim::Resume(player, _) => Some(player),
            Claim::OpenPlayer | Claim::Spectator => None,
        };
        adopt_absent(shared, &root, &hub, &present, claimant);
    }
    let admitted = {
        let mut slots = shared.slots();
        match claim {
            Claim::Spectator => None,
            Claim::Player(player) => {
                Some((player, slots.admit_ticket(&root, player, conn_id, now_ms)))
            }
            Claim::OpenPlayer => {
                let player = (1..u32::MAX)
                    .map(PlayerId)
                    .find(|p| !present.contains(p) && !slots.is_taken(&root, *p))
                    .ok_or_else(|| Refusal::new(CloseCode::JoinRejected, "no free player id"))?;
                Some((player, slots.admit_ticket(&root, player, conn_id, now_ms)))
            }
            Claim::Resume(player, epoch) => {
                let admitted = slots
                    .admit_resume(&root, player, epoch, conn_id, present.contains(&player))
                    .map_err(|refusal| {
                        let why = match refusal {
                            ResumeRefusal::Freed => {
                                "the grace window is over and the slot was freed"
                            }
                            ResumeRefusal::Superseded => "a newer admission superseded this token",
                            ResumeRefusal::NotInMatch => "the player is no longer in the match",
                        };
                        Refusal::new(
                            CloseCode::ResumeRefused,
                            format!("resume refused for {player}: {why}"),
                        )
                    })?;
                metrics::counter!(names::SESSIONS_RESUMED).increment(1);
                Some((player, admitted))
            }
        }
    };
    let mut resume_token = None;
    let mut player = None;
    if let Some((id, admitted)) = admitted {
        if let Some(old) = admitted.replaced
            && let Some(old) = shared.conns.get(&old)
        {
            Refusal::new(CloseCode::Replaced, "a newer connection took this slot").close(&old);
        }
        if !present.contains(&id) {
            join(shared, &root, id, hello.join.as_deref())
                .await
                .inspect_err(|_| {
                    // Give the slot back so the id is free again.
                    let generation = shared.slots().disconnect(&root, id, conn_id);
                    if let Some(generation) = generation {
                        shared.slots().expire(&root, id, generation);
                    }
                })?;
        }
        resume_token = Some(tickets::mint_resume_token(
            &shared.secret,
            &root,
            id,
            admitted.epoch,
        ));
        player = Some(id);
    }
    let events_from = hello
        .events_from
        .map_or(first.next_sequence, |from| from.min(first.next_sequence));
    Ok(Session {
        root,
        player,
        conn_id,
        send: {
            let mut send = Control {
                stream: send,
                conn: conn.clone(),
                timeout: shared.config.write_timeout,
            };
            let welcome = ServerMsg::<G::Event>::Welcome(Welcome {
                match_id: hello.match_id.clone(),
                player,
                role: hello.role,
                resume_token,
                tick: first.tick,
                events_from,
                tick_hz: shared.engine.settings().tick_hz,
                state_every_ticks: shared.config.state_every_ticks.max(1),
                grace_ms: shared.config.grace.as_millis() as u64,
            });
            write_frame(&mut send, &welcome, &shared.stats)
                .await
                .map_err(|_| Refusal::new(CloseCode::Normal, "connection lost"))?;
            send
        },
        recv,
        frames,
        feed,
        first,
        events_from,
        hub,
    })
}

/// Hosts match `root` if it is not: restored from the store, or created
/// when `may_create` and the store does not know it. Returns whether it
/// was restored here.
async fn ensure_hosted<G: Game, S: Store>(
    shared: &Shared<G, S>,
    root: &str,
    may_create: bool,
    params: Option<&[u8]>,
) -> Result<bool, Refusal> {
    let engine = &shared.engine;
    if engine.is_hosted(root) {
        return Ok(false);
    }
    let _guard = shared.hosting.lock().await;
    if engine.is_hosted(root) {
        return Ok(false);
    }
    let internal = |e: EngineError| {
        tracing::error!(r#match = %root, error = %e, "cannot host match");
        Refusal::new(
            CloseCode::Internal,
            format!("cannot host match {root:?}: {e}"),
        )
    };
    let key = engine
        .key(root)
        .map_err(|e| Refusal::new(CloseCode::UnknownMatch, e.to_string()))?;
    let head = engine
        .store()
        .head(&key)
        .await
        .map_err(|e| internal(e.into()))?;
    match head {
        Some(head) if head.status == crate::store::MatchStatus::Ended => Err(Refusal::new(
            CloseCode::MatchOver,
            format!("match {root:?} is over"),
        )),
        Some(head) if head.status == crate::store::MatchStatus::Failed => {
            let reason = engine
                .store()
                .failure(&key)
                .await
                .ok()
                .flatten()
                .unwrap_or_default();
            Err(Refusal::new(
                CloseCode::MatchFailed,
                format!("match {root:?} failed: {reason}"),
            ))
        }
        Some(_) => {
            place(shared, root, false).await?;
            match engine.restore_match(root).await {
                Ok(replayed) => {
                    tracing::info!(r#match = %root, tick = replayed.tick, "match restored on demand");
                    Ok(true)
                }
                // A fleet's takeover scan restored it meanwhile.
                Err(EngineError::MatchExists(_)) => Ok(true),
                Err(error) => Err(owned_or(error, internal)),
            }
        }
        None if may_create => {
            place(shared, root, true).await?;
            let params = match params {
                Some(bytes) => codec::decode(bytes).map_err(|e| {
                    Refusal::new(
                        CloseCode::JoinRejected,
                        format!("the match parameters do not decode: {e}"),
                    )
                })?,
                None => G::Params::default(),
            };
            engine
                .create_match_with(root, params)
                .await
                .map_err(|e| match e {
                    EngineError::Setup { .. } => {
                        Refusal::new(CloseCode::JoinRejected, e.to_string())
                    }
                    other => owned_or(other, internal),
                })?;
            tracing::info!(r#match = %root, "match created on demand");
            Ok(false)
        }
        None => Err(Refusal::new(
            CloseCode::UnknownMatch,
            format!("no match {root:?} on this server"),
        )),
    }
}

/// Asks the fleet (if any) where `root` is served; anything but here
/// becomes the refusal that sends the client there or makes it wait.
async fn place<G: Game, S: Store>(
    shared: &Shared<G, S>,
    root: &str,
    new_match: bool,
) -> Result<(), Refusal> {
    let Some(locator) = &shared.locator else {
        return Ok(());
    };
    match locator.place(root, new_match).await.refusal() {
        None => Ok(()),
        Some((code, reason)) => Err(Refusal::new(code, reason)),
    }
}

/// Another node claimed the match between the placement and the claim:
/// the client retries at once and is redirected; anything else is `other`.
fn owned_or(error: EngineError, other: impl FnOnce(EngineError) -> Refusal) -> Refusal {
    match error {
        EngineError::Store(crate::store::StoreError::Owned { owner, .. }) => Refusal::new(
            CloseCode::MatchMoving,
            crate::net::retry_reason(
                Duration::from_millis(20),
                &format!("node {owner} took the match just now"),
            ),
        ),
        other_error => other(other_error),
    }
}

/// How a session whose match left this engine is closed: sent to the
/// match's new node (or asked to wait) in a fleet, else told to resume
/// later (the engine is stopping).
async fn match_left<G: Game, S: Store>(shared: &Shared<G, S>, root: &str) -> Refusal {
    match place(shared, root, false).await {
        Err(elsewhere) => elsewhere,
        Ok(()) => Refusal::new(
            CloseCode::ServerShutdown,
            "the match is no longer hosted here",
        ),
    }
}

/// The hub of match `root`.
fn ensure_hub<G: Game, S: Store>(shared: &Shared<G, S>, root: &Arc<str>) -> Arc<Hub> {
    match shared.hubs.entry(root.clone()) {
        dashmap::mapref::entry::Entry::Occupied(hub) => hub.get().clone(),
        dashmap::mapref::entry::Entry::Vacant(vacant) => {
            shared.stats.matches_tracked.fetch_add(1, Relaxed);
            vacant.insert(Arc::default()).clone()
        }
    }
}

/// Forgets the hub and the slots of a match that ended.
fn forget_match<G: Game, S: Store>(shared: &Shared<G, S>, root: &str) {
    shared.slots().remove_match(root);
    if shared.hubs.remove(root).is_some() {
        shared.stats.matches_tracked.fetch_sub(1, Relaxed);
    }
}

/// Forgets, every [`SWEEP_EVERY`], the hubs and slots of matches the
/// engine no longer hosts (they ended, with or without anyone connected;
/// an ended match is never hosted again). Stops at shutdown, so slots
/// survive it.
async fn forget_ended_matches<G: Game, S: Store>(shared: Arc<Shared<G, S>>) {
    let mut shutdown = Shutdown {
        rx: shared.shutdown.clone(),
    };
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.recv() => return,
        }
        let gone: Vec<Arc<str>> = shared
            .hubs
            .iter()
            .filter(|hub| !shared.engine.is_hosted(hub.key()))
            .map(|hub| hub.key().clone())
            .collect();
        for root in gone {
            tracing::debug!(r#match = %root, "match left the engine; its slots are forgotten");
            forget_match(&shared, &root);
        }
    }
}

/// The first time for `hub`: every player in `present` with no slot
/// (other than `except`, who is being admitted) gets a grace window to
/// resume. For matches restored from the store, whose players were
/// connected to an earlier process.
fn adopt_absent<G: Game, S: Store>(
    shared: &Arc<Shared<G, S>>,
    root: &Arc<str>,
    hub: &Hub,
    present: &[PlayerId],
    except: Option<PlayerId>,
) {
    if hub.adopted.swap(true, Relaxed) {
        return;
    }
    let orphans: Vec<(PlayerId, u64)> = {
        let mut slots = shared.slots();
        present
            .iter()
            .copied()
            .filter(|p| Some(*p) != except)
            .filter_map(|p| slots.adopt(root, p).map(|generation| (p, generation)))
            .collect()
    };
    if !orphans.is_empty() {
        tracing::info!(r#match = %root, players = orphans.len(), grace = ?shared.config.grace,
            "restored match: its players have the grace window to resume");
    }
    for (orphan, generation) in orphans {
        arm_grace(shared, root.clone(), orphan, generation);
    }
}

async fn next_update<G: Game>(
    feed: &mut MatchFeed<G>,
) -> Result<Arc<MatchUpdate<G::State>>, Refusal> {
    let gone = || Refusal::new(CloseCode::MatchOver, "the match is no longer hosted");
    match tokio::time::timeout(Duration::from_secs(5), feed.updates.changed()).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(gone()),
        Err(_) => {
            return Err(Refusal::new(
                CloseCode::Internal,
                "the match published no state in time",
            ));
        }
    }
    feed.updates.borrow_and_update().clone().ok_or_else(gone)
}

/// Enters `player` into match `root` with the game's join command for
/// `payload` (the encoded `Game::Join`; `None` for the default), waiting
/// until the match applied or refused it.
async fn join<G: Game, S: Store>(
    shared: &Shared<G, S>,
    root: &str,
    player: PlayerId,
    payload: Option<&[u8]>,
) -> Result<(), Refusal> {
    let refused = |why: String| Refusal::new(CloseCode::JoinRejected, why);
    let payload: G::Join = match payload {
        Some(bytes) => codec::decode(bytes)
            .map_err(|e| refused(format!("the join payload does not decode: {e}")))?,
        None => G::Join::default(),
    };
    let command = shared
        .engine
        .game()
        .join(player, &payload)
        .map_err(|rejection| refused(format!("join refused: {rejection}")))?;
    let (tx, mut rx) = mpsc::channel(1);
    shared
        .engine
        .submit(root, player, command, Some(ReplyTo { tx, client_seq: 0 }))
        .map_err(|e| Refusal::new(CloseCode::Internal, e.to_string()))?;
    match tokio::time::timeout(JOIN_TIMEOUT, rx.recv()).await {
        Ok(Some(CommandReply {
            outcome: CommandOutcome::Accepted { .. },
            ..
        })) => Ok(()),
        Ok(Some(CommandReply {
            outcome: CommandOutcome::Rejected(rejection),
            ..
        })) => Err(Refusal::new(
            CloseCode::JoinRejected,
            format!("join refused: {rejection}"),
        )),
        Ok(None) | Err(_) => Err(Refusal::new(
            CloseCode::Internal,
            "the join command got no answer",
        )),
    }
}

/// The sending half of a connection's control stream.
struct Control {
    stream: quinn::SendStream,
    conn: quinn::Connection,
    /// How long one write may wait for the client to make room.
    timeout: Duration,
}

/// Writes one frame on the control stream. A client that leaves no room
/// for it within the write timeout is closed with [`CloseCode::SlowReader`].
async fn write_frame<E: serde::Serialize>(
    send: &mut Control,
    msg: &ServerMsg<E>,
    stats: &NetStats,
) -> Result<(), Lost> {
    // Server messages are not limited by the client's frame limit; only by the codec's.
    let Ok(frame) = protocol::encode_frame(msg, MAX_STATE_BYTES) else {
        tracing::error!("a server message could not be encoded");
        return Ok(());
    };
    stats.bytes_out.fetch_add(frame.len() as u64, Relaxed);
    metrics::counter!(names::BYTES_SENT, "channel" => "stream").increment(frame.len() as u64);
    match tokio::time::timeout(send.timeout, send.stream.write_all(&frame)).await {
        Ok(written) => written.map_err(|_| Lost),
        Err(_) => {
            close_slow_reader(&send.conn, stats, send.timeout, "a control frame");
            Err(Lost)
        }
    }
}

/// Closes a client that left no room for a reliable write (`what`) within
/// `waited`: it stopped reading.
fn close_slow_reader(conn: &quinn::Connection, stats: &NetStats, waited: Duration, what: &str) {
    stats.closed_slow_reader.fetch_add(1, Relaxed);
    tracing::info!(remote = %conn.remote_address(), ?waited, what, "client stopped reading; closing");
    Refusal::new(
        CloseCode::SlowReader,
        format!("{what} waited {waited:?} for the client to read; resume when reading again"),
    )
    .close(conn);
}

/// Which reliable events a client has been sent.
#[derive(Debug)]
struct EventCursor {
    /// Every event below this was examined (sent if reliable).
    covered: u64,
    /// All reliable events below this were sent (or the client had them).
    since: u64,
}

impl EventCursor {
    fn new(from: u64) -> Self {
        Self {
            covered: from,
            since: from,
        }
    }

    /// Decides about `sequence`: `Some(since)` to send it, `None` to skip.
    fn offer(&mut self, sequence: u64, reliable: bool) -> Option<u64> {
        if sequence < self.covered {
            return None;
        }
        if sequence > self.covered {
            // Events in between are unknown here: the client must see a gap.
            self.since = sequence;
        }
        self.covered = sequence + 1;
        if reliable {
            let since = self.since;
            self.since = sequence + 1;
            Some(since)
        } else {
            None
        }
    }
}

/// The per-connection state stream: which states went out, which the
/// client acknowledged, when the next is due.
struct StateStream {
    every: u64,
    last_sent: Option<Tick>,
    sent: VecDeque<(Tick, Arc<[u8]>)>,
    acked: Arc<AtomicU64>,
    loss: Option<(u16, u64)>,
    /// How long a state on its own stream may wait for the client.
    write_timeout: Duration,
    /// This connection's input outcomes, as the shard records them.
    ledger: Arc<InputLedger>,
    /// Which of them the client is known to have.
    input_acks: AckTracker,
}

const NO_ACK: u64 = u64::MAX;

/// States carried after this many unconfirmed acknowledgements are not tracked.
const CARRIED_ACKS_KEPT: usize = 64;

/// Which input acknowledgements a client has. Every state carries the
/// latest ones until the client acknowledges a state that did; then states
/// go plain (the shared encoding, no per-client bytes) until they change.
#[derive(Debug, Default)]
struct AckTracker {
    /// The client has these (it acknowledged a state at or after one that carried them).
    confirmed: InputAcks,
    /// States that carried acknowledgements, by tick, not yet confirmed.
    carried: VecDeque<(Tick, InputAcks)>,
}

impl AckTracker {
    /// What the state of `tick` must carry, given the latest `acks` and the
    /// newest state tick the client acknowledged: `None` when the client
    /// has them already.
    fn carry(&mut self, tick: Tick, acks: InputAcks, acked: Option<Tick>) -> Option<InputAcks> {
        if let Some(acked) = acked {
            // Every state from the first carrier on carried these or newer
            // ones, so a client that applied a state at or after it has them.
            while let Some(&(carried_at, carried)) = self.carried.front() {
                if carried_at > acked {
                    break;
                }
                self.confirmed = carried;
                self.carried.pop_front();
            }
        }
        if acks == self.confirmed {
            return None;
        }
        self.carried.push_back((tick, acks));
        while self.carried.len() > CARRIED_ACKS_KEPT {
            self.carried.pop_front();
        }
        Some(acks)
    }
}

impl StateStream {
    /// The state datagram `shared` (the encoding shared by every client
    /// with this view and baseline) for this client: with its input
    /// acknowledgements in front when it may not have them yet.
    fn with_acks(&mut self, tick: Tick, shared: Bytes, stats: &NetStats) -> Bytes {
        let acked = self.acked.load(Relaxed);
        let acked = (acked != NO_ACK).then_some(acked);
        let Some(acks) = self.input_acks.carry(tick, self.ledger.acks(), acked) else {
            return shared;
        };
        match protocol::acked_datagram(acks.through, acks.tick, acks.rejected, &shared) {
            Ok(bytes) => {
                stats.acked_states.fetch_add(1, Relaxed);
                bytes.into()
            }
            Err(error) => {
                tracing::error!(tick, %error, "input acknowledgements could not be added to a state");
                shared
            }
        }
    }

    fn due(&self, update: &MatchUpdate<impl Sized>) -> bool {
        update.over
            || self
                .last_sent
                .is_none_or(|last| update.tick >= last.saturating_add(self.every))
    }

    /// The acknowledged state to send a delta against, if it is recent
    /// enough and still remembered.
    fn baseline(&self, tick: Tick) -> Option<(Tick, Arc<[u8]>)> {
        let acked = self.acked.load(Relaxed);
        (acked != NO_ACK && acked <= tick && tick - acked <= MAX_BASELINE_AGE)
            .then(|| self.sent.iter().find(|(t, _)| *t == acked))
            .flatten()
            .map(|(t, bytes)| (*t, bytes.clone()))
    }

    /// Remembers that the state after `tick` went out (a possible baseline).
    fn record_sent(&mut self, tick: Tick, encoded: Arc<[u8]>) {
        self.last_sent = Some(tick);
        if self.sent.back().is_none_or(|(t, _)| *t != tick) {
            self.sent.push_back((tick, encoded));
        }
        while self.sent.len() > SENT_STATES_KEPT {
            self.sent.pop_front();
        }
    }

    /// The message for `encoded` (the state after `tick`): a delta against
    /// the client's acknowledged baseline when that is smaller.
    #[cfg(test)]
    fn message<E>(&mut self, tick: Tick, over: bool, encoded: Arc<[u8]>) -> (ServerMsg<E>, bool) {
        let baseline = self.baseline(tick);
        let message = state_message(tick, over, &encoded, baseline.as_ref());
        self.record_sent(tick, encoded);
        message
    }

    /// Whether the loss hook drops this datagram.
    fn drop_for_test(&mut self) -> bool {
        let Some((per_mille, rng)) = &mut self.loss else {
            return false;
        };
        // xorshift64*
        *rng ^= *rng >> 12;
        *rng ^= *rng << 25;
        *rng ^= *rng >> 27;
        let x = rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 33) % 1000 < u64::from(*per_mille)
    }
}

/// The state message for `encoded` (the state after `tick`): a delta
/// against `baseline` when that is smaller, else the whole state.
fn state_message<E>(
    tick: Tick,
    over: bool,
    encoded: &[u8],
    baseline: Option<&(Tick, Arc<[u8]>)>,
) -> (ServerMsg<E>, bool) {
    let patch = delta::diff(baseline.map(|(_, b)| &b[..]), encoded);
    match (patch, baseline) {
        (Patch::Xor { len, compressed }, Some((baseline_tick, _))) => (
            ServerMsg::StateDelta {
                tick,
                over,
                // At most MAX_BASELINE_AGE (see `StateStream::baseline`).
                baseline_age: u32::try_from(tick - baseline_tick).unwrap_or(u32::MAX),
                len,
                patch: compressed,
            },
            true,
        ),
        (Patch::Full(state), _)
        | (
            Patch::Xor {
                compressed: state, ..
            },
            None,
        ) => (ServerMsg::StateFull { tick, over, state }, false),
    }
}

/// Which view `viewer` gets: one shared key when the game hides nothing.
fn view_key<G: Game>(game: &G, viewer: Viewer) -> Viewer {
    if game.shared_view() {
        Viewer::Spectator
    } else {
        viewer
    }
}

/// The encoded view `key` of `update`, encoded once per tick for all the
/// clients sharing it. A panic in the game's view fails the match.
fn encoded_view<G: Game, S: Store>(
    shared: &Shared<G, S>,
    hub: &Hub,
    root: &str,
    key: Viewer,
    update: &MatchUpdate<G::State>,
) -> Option<Arc<[u8]>> {
    hub.view(update.tick, key, || {
        shared.stats.views_encoded.fetch_add(1, Relaxed);
        let game = shared.engine.game();
        let encoded = crate::engine::guard_game(|| codec::encode(&*game.view(&update.state, key)));
        match encoded {
            Ok(Ok(bytes)) => Some(bytes.into()),
            Ok(Err(error)) => {
                tracing::error!(r#match = %root, tick = update.tick, viewer = ?key, %error, "a view could not be encoded; not sent");
                None
            }
            Err(panic) => {
                let reason = format!("the game's view panicked: {panic}");
                tracing::error!(r#match = %root, %reason, "failing the match");
                let _ = shared.engine.fail_match(root, reason);
                None
            }
        }
    })
}

async fn run_session<G: Game, S: Store>(
    shared: &Arc<Shared<G, S>>,
    conn: &quinn::Connection,
    session: Session<G>,
    shutdown: &mut Shutdown,
) -> Ended {
    let Session {
        root,
        player,
        conn_id,
        mut send,
        recv,
        frames,
        mut feed,
        first,
        events_from,
        hub,
    } = session;
    let stats = shared.stats.clone();
    let config = &shared.config;
    let game = shared.engine.game();
    let reply_capacity = (config.commands_per_second as usize).saturating_mul(2) + 64;
    let (reply_tx, mut reply_rx) = mpsc::channel::<CommandReply>(reply_capacity);
    let unanswered = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicU64::new(NO_ACK));
    let ledger = Arc::new(InputLedger::default());

    let inbound = tokio::spawn(read_inbound(
        shared.clone(),
        conn.clone(),
        recv,
        frames,
        Inbound {
            root: root.clone(),
            player,
            replies: ReplyBudget {
                tx: reply_tx,
                capacity: reply_capacity,
                unanswered: unanswered.clone(),
            },
            acked: acked.clone(),
            ledger: ledger.clone(),
        },
    ));
    let _abort_inbound = AbortOnDrop(inbound);

    let mut states = StateStream {
        every: config.state_every_ticks.max(1),
        last_sent: None,
        sent: VecDeque::new(),
        acked,
        loss: config.datagram_loss.map(|l| {
            (
                l.per_mille,
                (l.seed ^ conn_id.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1,
            )
        }),
        write_timeout: config.write_timeout,
        ledger,
        input_acks: AckTracker::default(),
    };
    let mut cursor = EventCursor::new(events_from);
    let viewer = player.map_or(Viewer::Spectator, Viewer::Player);
    let view = view_key(game, viewer);
    // A reliable event this viewer may see goes on the control stream.
    let sends = |event: &G::Event| game.is_reliable(event) && game.event_visible(event, viewer);

    // A resuming client first gets the reliable events it missed.
    if events_from < first.next_sequence
        && replay_missed(
            shared,
            &root,
            viewer,
            &mut send,
            &mut cursor,
            first.next_sequence,
        )
        .await
        .is_err()
    {
        return Ended::Dropped;
    }
    if send_state(shared, conn, &mut states, &hub, (&root, view), &first)
        .await
        .is_err()
    {
        return Ended::Dropped;
    }
    let mut events_open = true;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.recv() => {
                let closing = ServerMsg::<G::Event>::Closing {
                    code: CloseCode::ServerShutdown.code(),
                    reason: "server shutting down".into(),
                };
                let _ = tokio::time::timeout(Duration::from_millis(100), write_frame(&mut send, &closing, &stats)).await;
                Refusal::new(CloseCode::ServerShutdown, "server shutting down").close(conn);
                return Ended::Shutdown;
            }
            _ = conn.closed() => return Ended::Dropped,
            Some(reply) = reply_rx.recv() => {
                if reply.kind == ReplyKind::Input {
                    // Only rejected inputs come this way.
                    let CommandOutcome::Rejected(rejection) = reply.outcome else { continue };
                    stats.inputs_rejected.fetch_add(1, Relaxed);
                    let msg = ServerMsg::<G::Event>::InputRejected { seq: reply.client_seq, reason: rejection.reason };
                    if write_frame(&mut send, &msg, &stats).await.is_err() {
                        return Ended::Dropped;
                    }
                    continue;
                }
                unanswered.fetch_sub(1, Relaxed);
                let status = match reply.outcome {
                    CommandOutcome::Accepted { tick, first_sequence, events } => {
                        CommandStatus::Accepted { tick, first_sequence, events }
                    }
                    CommandOutcome::Rejected(rejection) => CommandStatus::Rejected { reason: rejection.reason },
                };
                let msg = ServerMsg::<G::Event>::CommandResult { client_seq: reply.client_seq, status };
                if write_frame(&mut send, &msg, &stats).await.is_err() {
                    return Ended::Dropped;
                }
            }
            event = feed.events.recv(), if events_open => match event {
                Ok(envelope) => {
                    if let Some(since) = cursor.offer(envelope.sequence, sends(&envelope.event)) {
                        let msg = ServerMsg::Event { since, envelope: (*envelope).clone() };
                        stats.events.fetch_add(1, Relaxed);
                        if write_frame(&mut send, &msg, &stats).await.is_err() {
                            return Ended::Dropped;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    stats.closed_for_lag.fetch_add(1, Relaxed);
                    tracing::info!(r#match = %root, player = ?player, missed, "client too far behind on events; closing");
                    Refusal::new(
                        CloseCode::Lagging,
                        format!("{missed} reliable events behind; resume to catch up"),
                    )
                    .close(conn);
                    return Ended::Dropped;
                }
                Err(broadcast::error::RecvError::Closed) => events_open = false,
            },
            changed = feed.updates.changed() => {
                if changed.is_err() {
                    // The match left the engine without a final state: it
                    // moved to another node, or the engine is stopping.
                    // The client may resume (there, or here later).
                    match_left(shared, &root).await.close(conn);
                    return Ended::Shutdown;
                }
                let Some(update) = feed.updates.borrow_and_update().clone() else { continue };
                if !states.due(&update) {
                    continue;
                }
                if update.over {
                    // Events of the last tick were broadcast before its state.
                    while let Ok(envelope) = feed.events.try_recv() {
                        if let Some(since) = cursor.offer(envelope.sequence, sends(&envelope.event)) {
                            let msg = ServerMsg::Event { since, envelope: (*envelope).clone() };
                            if write_frame(&mut send, &msg, &stats).await.is_err() {
                                return Ended::Dropped;
                            }
                        }
                    }
                    finish_match(shared, conn, &mut send, &mut states, &hub, (&root, view), &update).await;
                    return Ended::MatchOver;
                }
                if send_state(shared, conn, &mut states, &hub, (&root, view), &update).await.is_err() {
                    return Ended::Dropped;
                }
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn finish_match<G: Game, S: Store>(
    shared: &Shared<G, S>,
    conn: &quinn::Connection,
    send: &mut Control,
    states: &mut StateStream,
    hub: &Hub,
    view: (&Arc<str>, Viewer),
    update: &MatchUpdate<G::State>,
) {
    let (root, key) = view;
    let stats = &shared.stats;
    if update.failure.is_none()
        && let Some(encoded) = encoded_view(shared, hub, root, key, update)
    {
        // The final state goes reliably, whole.
        let (msg, _) = state_message::<()>(update.tick, true, &encoded, None);
        if let Ok(bytes) = protocol::encode_datagram(&msg) {
            let bytes = states.with_acks(update.tick, bytes.into(), stats);
            let frame = protocol::frame_datagram(&bytes);
            let _ = send_frame_on_stream(conn, frame, stats, states.write_timeout).await;
        }
        states.record_sent(update.tick, encoded);
    }
    let (last, refusal) = match &update.failure {
        Some(reason) => {
            let text = format!("the match failed: {reason}");
            let closing = ServerMsg::<G::Event>::Closing {
                code: CloseCode::MatchFailed.code(),
                reason: text.clone(),
            };
            (closing, Refusal::new(CloseCode::MatchFailed, text))
        }
        None => (
            ServerMsg::<G::Event>::MatchOver { tick: update.tick },
            Refusal::new(CloseCode::MatchOver, "the match is over"),
        ),
    };
    let _ = write_frame(send, &last, stats).await;
    let _ = send.stream.finish();
    forget_match(shared, root);
    // Let the client read everything and close; then close anyway.
    let _ = tokio::time::timeout(LINGER, conn.closed()).await;
    refusal.close(conn);
}

/// Sends the reliable events in `cursor.covered..until` from the store.
async fn replay_missed<G: Game, S: Store>(
    shared: &Shared<G, S>,
    root: &str,
    viewer: Viewer,
    send: &mut Control,
    cursor: &mut EventCursor,
    until: u64,
) -> Result<(), Lost> {
    let engine = &shared.engine;
    let Ok(key) = engine.key(root) else {
        return Ok(());
    };
    let wanted = (until - cursor.covered).min(MAX_REPLAY_EVENTS as u64) as usize;
    let records = match engine.store().read(&key, cursor.covered, wanted).await {
        Ok(records) => records,
        Err(error) => {
            tracing::warn!(r#match = %root, %error, "cannot replay missed events; the client will see a gap");
            return Ok(());
        }
    };
    let game = engine.game();
    for record in records {
        let envelope = match decode_event(game, &record.payload) {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::warn!(r#match = %root, sequence = record.sequence, %error, "a stored event cannot be read; the client will see a gap");
                continue;
            }
        };
        if envelope.sequence >= until {
            break;
        }
        if let Some(since) = cursor.offer(
            envelope.sequence,
            game.is_reliable(&envelope.event) && game.event_visible(&envelope.event, viewer),
        ) {
            shared.stats.events.fetch_add(1, Relaxed);
            write_frame(send, &ServerMsg::Event { since, envelope }, &shared.stats).await?;
        }
    }
    Ok(())
}

/// The connection is gone (or was just closed for not reading).
#[derive(Debug)]
struct Lost;

async fn send_state<G: Game, S: Store>(
    shared: &Shared<G, S>,
    conn: &quinn::Connection,
    states: &mut StateStream,
    hub: &Hub,
    view: (&str, Viewer),
    update: &MatchUpdate<G::State>,
) -> Result<(), Lost> {
    let (root, key) = view;
    let stats = &shared.stats;
    let Some(encoded) = encoded_view(shared, hub, root, key, update) else {
        return Ok(());
    };
    let full_len = encoded.len() as u64;
    let baseline = states.baseline(update.tick);
    let built = hub.message(update.tick, key, baseline.as_ref().map(|(t, _)| *t), || {
        stats.state_messages_built.fetch_add(1, Relaxed);
        let (msg, is_delta) =
            state_message::<()>(update.tick, update.over, &encoded, baseline.as_ref());
        match protocol::encode_datagram(&msg) {
            Ok(bytes) => Some((Bytes::from(bytes), is_delta)),
            Err(error) => {
                tracing::error!(r#match = %root, tick = update.tick, %error, "a state message could not be encoded; not sent");
                None
            }
        }
    });
    let baseline_age = baseline.as_ref().map_or(0, |(t, _)| update.tick - t);
    states.record_sent(update.tick, encoded);
    let Some((bytes, is_delta)) = built else {
        return Ok(());
    };
    if states.ledger.lost_rejection() {
        stats.closed_reply_queue_full.fetch_add(1, Relaxed);
        Refusal::new(
            CloseCode::ReplyQueueFull,
            "input rejections unread; resume when reading again",
        )
        .close(conn);
        return Err(Lost);
    }
    let bytes = states.with_acks(update.tick, bytes, stats);
    stats.states.fetch_add(1, Relaxed);
    if is_delta {
        stats.deltas.fetch_add(1, Relaxed);
        stats.delta_bytes.fetch_add(bytes.len() as u64, Relaxed);
        stats.delta_full_bytes.fetch_add(full_len, Relaxed);
        stats.delta_baseline_ticks.fetch_add(baseline_age, Relaxed);
    }
    if conn
        .max_datagram_size()
        .is_some_and(|max| bytes.len() <= max)
    {
        if states.drop_for_test() {
            stats.test_dropped.fetch_add(1, Relaxed);
            return Ok(());
        }
        let len = bytes.len() as u64;
        match conn.send_datagram(bytes.clone()) {
            Ok(()) => {
                stats.bytes_out.fetch_add(len, Relaxed);
                metrics::counter!(names::BYTES_SENT, "channel" => "datagram").increment(len);
                metrics::counter!(names::DATAGRAMS_SENT).increment(1);
                return Ok(());
            }
            Err(quinn::SendDatagramError::ConnectionLost(_)) => return Err(Lost),
            Err(_) => {} // too large after all, or disabled: use a stream
        }
    }
    stats.stream_states.fetch_add(1, Relaxed);
    send_frame_on_stream(
        conn,
        protocol::frame_datagram(&bytes),
        stats,
        states.write_timeout,
    )
    .await
}

/// Sends one encoded frame on a fresh unidirectional stream; a client that
/// does not take it within `timeout` is closed as a slow reader.
async fn send_frame_on_stream(
    conn: &quinn::Connection,
    frame: Vec<u8>,
    stats: &NetStats,
    timeout: Duration,
) -> Result<(), Lost> {
    let write = async {
        let mut stream = conn.open_uni().await.map_err(|_| Lost)?;
        stream.write_all(&frame).await.map_err(|_| Lost)?;
        stream.finish().map_err(|_| Lost)?;
        stats.bytes_out.fetch_add(frame.len() as u64, Relaxed);
        metrics::counter!(names::BYTES_SENT, "channel" => "stream").increment(frame.len() as u64);
        Ok(())
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(sent) => sent,
        Err(_) => {
            close_slow_reader(conn, stats, timeout, "a state stream");
            Err(Lost)
        }
    }
}

/// What the inbound half needs.
struct Inbound {
    root: Arc<str>,
    player: Option<PlayerId>,
    replies: ReplyBudget,
    acked: Arc<AtomicU64>,
    /// Where the shard records this connection's applied inputs.
    ledger: Arc<InputLedger>,
}

/// The inbound half's rate limits: commands and inputs share one bucket,
/// frames and datagrams another.
struct Buckets {
    per_second: u32,
    commands: TokenBucket,
    frame_rate: u32,
    frames: TokenBucket,
}

impl Buckets {
    fn frame(&mut self, now: Instant) -> Result<(), Refusal> {
        if self.frames.take(now) {
            return Ok(());
        }
        Err(Refusal::new(
            CloseCode::RateLimited,
            format!(
                "more than {} frames and datagrams per second",
                self.frame_rate
            ),
        ))
    }

    fn command(&mut self, now: Instant) -> Result<(), Refusal> {
        if self.commands.take(now) {
            return Ok(());
        }
        Err(Refusal::new(
            CloseCode::RateLimited,
            format!("more than {} commands per second", self.per_second),
        ))
    }
}

/// The input datagrams of one connection: which inputs were submitted.
struct InputStream {
    /// Inputs up to this sequence were submitted (or rejected); repeats
    /// of them are skipped.
    processed_through: u64,
}

impl InputStream {
    /// Takes one input datagram: records its acknowledgement and submits
    /// its new inputs in order. A refusal closes the connection.
    fn receive<G: Game, S: Store>(
        &mut self,
        shared: &Shared<G, S>,
        ctx: &Inbound,
        buckets: &mut Buckets,
        bytes: &[u8],
    ) -> Result<(), Refusal> {
        let stats = &shared.stats;
        let now = Instant::now();
        buckets.frame(now)?;
        stats.input_datagrams.fetch_add(1, Relaxed);
        let ClientDatagram::Input {
            ack,
            first_seq,
            commands,
        } = protocol::decode_datagram::<ClientDatagram<G::Command>>(
            bytes,
            shared.config.max_frame_bytes,
        )
        .map_err(|e| frame_refusal(&e))?;
        if commands.len() > protocol::INPUT_WINDOW {
            return Err(Refusal::new(
                CloseCode::Malformed,
                format!(
                    "{} inputs in one datagram; at most {}",
                    commands.len(),
                    protocol::INPUT_WINDOW
                ),
            ));
        }
        if first_seq == 0 || first_seq.checked_add(commands.len() as u64).is_none() {
            return Err(Refusal::new(
                CloseCode::Malformed,
                format!("input sequence {first_seq} out of range"),
            ));
        }
        if let Some(tick) = ack {
            // Datagrams may be reordered: keep the newest acknowledgement.
            let acked = ctx.acked.load(Relaxed);
            if acked == NO_ACK || tick > acked {
                ctx.acked.store(tick, Relaxed);
            }
        }
        for (seq, command) in (first_seq..).zip(commands) {
            if seq <= self.processed_through {
                stats.duplicate_inputs.fetch_add(1, Relaxed);
                continue;
            }
            stats
                .input_gaps
                .fetch_add(seq - self.processed_through - 1, Relaxed);
            self.processed_through = seq;
            stats.inputs.fetch_add(1, Relaxed);
            buckets.command(now)?;
            let reply = || InputReply {
                ledger: ctx.ledger.clone(),
                tx: ctx.replies.tx.clone(),
                seq,
            };
            let refused = |reason: String| {
                reply().deliver(
                    &ctx.root,
                    CommandOutcome::Rejected(crate::game::Rejection::new(reason)),
                );
            };
            let Some(player) = ctx.player else {
                refused("spectators cannot send commands".into());
                continue;
            };
            if let Err(error) = shared
                .engine
                .submit_input(&ctx.root, player, command, reply())
            {
                refused(error.to_string());
            }
        }
        Ok(())
    }
}

/// A connection's reply queue, and how many of its commands are not
/// answered yet (the reply not produced, or not taken out of the queue).
/// While that count stays within the queue's capacity no reply can find
/// the queue full, so none is ever dropped: a client about to exceed it
/// is closed instead.
struct ReplyBudget {
    tx: mpsc::Sender<CommandReply>,
    capacity: usize,
    /// Raised per command by the inbound half, lowered per reply taken by
    /// the session loop.
    unanswered: Arc<AtomicUsize>,
}

impl ReplyBudget {
    /// Counts one more command to answer; false when the queue could overflow.
    fn take(&self) -> bool {
        self.unanswered.fetch_add(1, Relaxed) < self.capacity
    }
}

/// Reads the control stream and the input datagrams: commands and inputs
/// to the engine, acks to the state stream. Closes the connection itself
/// on garbage, oversized frames and floods.
async fn read_inbound<G: Game, S: Store>(
    shared: Arc<Shared<G, S>>,
    conn: quinn::Connection,
    mut recv: quinn::RecvStream,
    mut frames: FrameBuffer,
    ctx: Inbound,
) {
    let config = &shared.config;
    let now = Instant::now();
    let per_second = config.commands_per_second.max(1);
    // Acks come once per state; allow them on top of commands.
    let tick_hz = shared.engine.settings().tick_hz;
    let frame_rate = per_second
        .saturating_add(tick_hz.saturating_mul(2))
        .saturating_add(16);
    let mut buckets = Buckets {
        per_second,
        commands: TokenBucket::new(per_second, per_second, now),
        frame_rate,
        frames: TokenBucket::new(frame_rate, frame_rate, now),
    };
    let mut inputs = InputStream {
        processed_through: 0,
    };
    let abuse = |refusal: Refusal| {
        shared.stats.closed_for_abuse.fetch_add(1, Relaxed);
        tracing::info!(r#match = %ctx.root, player = ?ctx.player, code = ?refusal.code, reason = %refusal.reason, "closing abusive connection");
        refusal.close(&conn);
    };
    loop {
        loop {
            let msg = match frames.next_frame::<ClientMsg<G::Command>>() {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(error) => return abuse(frame_refusal(&error)),
            };
            let now = Instant::now();
            if let Err(refusal) = buckets.frame(now) {
                return abuse(refusal);
            }
            match msg {
                ClientMsg::Hello(_) => {
                    return abuse(Refusal::new(CloseCode::Malformed, "a second Hello"));
                }
                ClientMsg::Ack { tick } => {
                    ctx.acked.store(tick, Relaxed);
                }
                ClientMsg::Command {
                    client_seq,
                    command,
                } => {
                    shared.stats.commands.fetch_add(1, Relaxed);
                    if let Err(refusal) = buckets.command(now) {
                        return abuse(refusal);
                    }
                    if !ctx.replies.take() {
                        shared.stats.closed_reply_queue_full.fetch_add(1, Relaxed);
                        let capacity = ctx.replies.capacity;
                        tracing::info!(r#match = %ctx.root, player = ?ctx.player, capacity,
                            "client does not read its command results; closing");
                        return Refusal::new(
                            CloseCode::ReplyQueueFull,
                            format!("{capacity} command results unread; resume when reading again"),
                        )
                        .close(&conn);
                    }
                    let refused = |reason: String| CommandReply {
                        root: ctx.root.clone(),
                        client_seq,
                        kind: ReplyKind::Command,
                        outcome: CommandOutcome::Rejected(crate::game::Rejection::new(reason)),
                    };
                    let Some(player) = ctx.player else {
                        // Within the budget: the queue has room.
                        let _ = ctx
                            .replies
                            .tx
                            .try_send(refused("spectators cannot send commands".into()));
                        continue;
                    };
                    let reply = ReplyTo {
                        tx: ctx.replies.tx.clone(),
                        client_seq,
                    };
                    if let Err(error) =
                        shared
                            .engine
                            .submit(&ctx.root, player, command, Some(reply))
                    {
                        let _ = ctx.replies.tx.try_send(refused(error.to_string()));
                    }
                }
            }
        }
        // Both reads are cancel-safe: they complete as soon as anything arrived.
        tokio::select! {
            chunk = recv.read_chunk(64 * 1024, true) => match chunk {
                Ok(Some(chunk)) => {
                    metrics::counter!(names::BYTES_RECEIVED).increment(chunk.bytes.len() as u64);
                    frames.extend(&chunk.bytes);
                }
                // The client finished or reset its control stream: nothing more will come.
                Ok(None) | Err(_) => return,
            },
            datagram = conn.read_datagram() => match datagram {
                Ok(bytes) => {
                    metrics::counter!(names::BYTES_RECEIVED).increment(bytes.len() as u64);
                    if let Err(refusal) = inputs.receive(&shared, &ctx, &mut buckets, &bytes) {
                        return abuse(refusal);
                    }
                }
                Err(_) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_cursor_sends_reliable_events_and_declares_gaps() {
        let mut cursor = EventCursor::new(10);
        assert_eq!(cursor.offer(8, true), None, "before the start");
        assert_eq!(cursor.offer(10, false), None);
        assert_eq!(cursor.offer(11, true), Some(10));
        assert_eq!(cursor.offer(12, false), None);
        assert_eq!(cursor.offer(13, true), Some(12));
        assert_eq!(cursor.offer(13, true), None, "duplicate");
        // 14..20 never seen: the next reliable event declares them unknown.
        assert_eq!(cursor.offer(20, true), Some(20));
        assert_eq!(cursor.offer(21, true), Some(21));
    }

    #[test]
    fn states_use_the_acknowledged_baseline_only() {
        let acked = Arc::new(AtomicU64::new(NO_ACK));
        let mut states = StateStream {
            every: 1,
            last_sent: None,
            sent: VecDeque::new(),
            acked: acked.clone(),
            loss: None,
            write_timeout: Duration::from_secs(2),
            ledger: Arc::default(),
            input_acks: AckTracker::default(),
        };
        let state: Arc<[u8]> = vec![7u8; 500].into();
        let (msg, delta) = states.message::<()>(1, false, state.clone());
        assert!(!delta && matches!(msg, ServerMsg::StateFull { tick: 1, .. }));
        acked.store(1, Relaxed);
        let mut next = state.to_vec();
        next[3] = 9;
        let (msg, delta) = states.message::<()>(2, false, next.into());
        assert!(delta);
        assert!(matches!(
            msg,
            ServerMsg::StateDelta {
                baseline_age: 1,
                tick: 2,
                ..
            }
        ));
        // An acknowledgement of a tick never sent is ignored.
        acked.store(40, Relaxed);
        let (_, delta) = states.message::<()>(41, false, state);
        assert!(!delta);
    }

    #[test]
    fn states_carry_input_acks_until_the_client_acknowledged_a_carrier() {
        let acks = |through, tick| InputAcks {
            through,
            tick,
            rejected: 0,
        };
        let mut tracker = AckTracker::default();
        assert_eq!(
            tracker.carry(1, InputAcks::default(), None),
            None,
            "nothing to say"
        );
        assert_eq!(tracker.carry(2, acks(1, 2), Some(1)), Some(acks(1, 2)));
        // The client has not acknowledged tick 2 yet: carried again, and newer ones.
        assert_eq!(tracker.carry(3, acks(1, 2), Some(1)), Some(acks(1, 2)));
        assert_eq!(tracker.carry(4, acks(2, 4), Some(2)), Some(acks(2, 4)));
        // Tick 3 acknowledged: it carried (1, 2); (2, 4) is still news.
        assert_eq!(tracker.carry(5, acks(2, 4), Some(3)), Some(acks(2, 4)));
        // Tick 4 acknowledged: the client has (2, 4); states go plain.
        assert_eq!(tracker.carry(6, acks(2, 4), Some(4)), None);
        assert_eq!(tracker.carry(7, acks(2, 4), Some(6)), None);
    }

    #[test]
    fn the_loss_hook_drops_about_the_share_asked() {
        let mut states = StateStream {
            every: 1,
            last_sent: None,
            sent: VecDeque::new(),
            acked: Arc::new(AtomicU64::new(NO_ACK)),
            loss: Some((50, 12345)),
            write_timeout: Duration::from_secs(2),
            ledger: Arc::default(),
            input_acks: AckTracker::default(),
        };
        let dropped = (0..10_000).filter(|_| states.drop_for_test()).count();
        assert!((350..650).contains(&dropped), "{dropped}");
    }
}
