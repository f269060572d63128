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
//! events, the first state, and what the match's state fan-out hands
//! back). One fan-out task per match sends each tick's state datagrams to
//! all of its connections and picks the reliable events each is sent. At
//! shutdown every task is told through a
//! watch channel, closes its connection with
//! [`CloseCode::ServerShutdown`] and drops its completion sender; the
//! listener waits for all of them, then closes the endpoint and waits for
//! it to go idle. Slots survive a shutdown: a restarted server with the
//! same secret honours the same resume tokens.
//!
//! Nothing here blocks a shard: states come from a watch (a client still
//! writing a large state on a stream skips states), events from a bounded
//! broadcast (a client too far behind is closed with
//! [`CloseCode::Lagging`]), command replies through a
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
//!
//! The parts: `listener` (the accept loop and fast refusals), `admit`
//! (from the handshake to an admitted session), `session` (the outbound
//! half), `states` (the state stream), `fanout` (one task per match
//! sending its states), `inbound` (frames and input datagrams), `hub`
//! (per-match shared encodings) and `refusal`.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use rustls::pki_types::CertificateDer;
use tokio::sync::{Semaphore, broadcast, mpsc, watch};

use super::NetConfig;
use super::admission::{self, Full, Headroom, SendDelays};
use super::delta::{self, Patch};
use super::limits::TokenBucket;
use super::placement::Locator;
use super::protocol::{
    self, ClientDatagram, ClientMsg, CloseCode, CommandStatus, Credential, FrameBuffer, FrameError,
    Hello, Role, ServerMsg, Welcome,
};
use super::receive_queue::ReceiveQueue;
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

mod admit;
mod fanout;
mod hub;
mod inbound;
mod listener;
mod meters;
mod refusal;
mod session;
mod states;
mod transport_stats;
mod waiting_room;

use admit::*;
use fanout::*;
use hub::*;
use inbound::*;
use listener::*;
use refusal::*;
use session::*;
use states::*;
pub use transport_stats::{TransportProbe, TransportTotals};

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
    /// Sessions closed with [`CloseCode::ServerFull`] because the node was
    /// over a headroom limit for two seconds with more than its ceiling open
    /// (the newest first).
    pub shed: AtomicU64,
    /// Connections refused on arrival at the QUIC level, without a close
    /// code, because too many `ServerFull` refusals were under way.
    pub refused_unanswered: AtomicU64,
    /// Connections closed for garbage, oversized frames, floods or a
    /// stopped control stream.
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
    /// State fan-out tasks running now (one per match with connections).
    pub fanouts: AtomicU64,
    /// State fan-out tasks started (a match's next one starts when a
    /// session joins after the last one ended).
    pub fanouts_started: AtomicU64,
    /// Connections the fan-outs send states to now.
    pub fanout_connections: AtomicU64,
    /// Times a fan-out woke for a new state of its match: once per tick
    /// per match, however many connections it serves.
    pub fanout_wakeups: AtomicU64,
}

struct Shared<G: Game, S: Store> {
    engine: Arc<Engine<G, S>>,
    config: NetConfig,
    secret: ServerSecret,
    slots: std::sync::Mutex<Slots>,
    hubs: DashMap<Arc<str>, Arc<Hub<G>>>,
    conns: Arc<DashMap<u64, quinn::Connection>>,
    hosting: tokio::sync::Mutex<()>,
    /// Where matches are served, when this server is a node of a fleet.
    locator: Option<Arc<dyn Locator>>,
    next_conn: AtomicU64,
    stats: Arc<NetStats>,
    headroom: Arc<Headroom>,
    /// How late the fan-outs send each tick's states (read by admission).
    send_delays: Arc<SendDelays>,
    /// The endpoint socket's receive queue (read by admission).
    receive_queue: Option<ReceiveQueue>,
    /// The wait `ServerFull` refusals ask for.
    retry_pacer: std::sync::Mutex<admission::RetryPacer>,
    meters: meters::PacketMeters,
    shutdown: watch::Receiver<bool>,
}

impl<G: Game, S: Store> Shared<G, S> {
    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        // Slot updates are single map operations; a panic cannot leave one half done.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one `ServerFull` refusal and returns the wait it asks for
    /// (see [`admission::RetryPacer`]).
    fn full_retry_after(&self) -> Duration {
        // One counter update; a panic cannot leave it half done.
        self.retry_pacer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refuse(Instant::now())
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
        let udp_batch::ServerEndpoint {
            endpoint,
            send_batches,
            receive_queue,
        } = udp_batch::server_endpoint(
            config.listen,
            config.batch_sends,
            config.socket_buffer_bytes,
            server_config,
        )
        .map_err(|source| NetError::Bind {
            addr: config.listen,
            source,
        })?;
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
        let retry_pacer =
            admission::RetryPacer::new(config.admission().retry_after, Instant::now());
        Ok(Self {
            endpoint,
            shared: Arc::new(Shared {
                engine,
                config,
                secret,
                slots: std::sync::Mutex::new(Slots::default()),
                hubs: DashMap::new(),
                conns: Arc::new(DashMap::new()),
                hosting: tokio::sync::Mutex::new(()),
                locator: None,
                next_conn: AtomicU64::new(1),
                stats: Arc::new(NetStats::default()),
                headroom: Arc::new(Headroom::default()),
                send_delays: Arc::new(SendDelays::default()),
                receive_queue,
                retry_pacer: std::sync::Mutex::new(retry_pacer),
                meters: meters::PacketMeters::register(),
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

    /// Reads what QUIC sends and receives for the open connections, while
    /// the server runs ([`TransportTotals`]).
    pub fn transport_probe(&self) -> TransportProbe {
        TransportProbe {
            conns: self.shared.conns.clone(),
        }
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
            let places = limit.clone();
            let capacity = self.shared.config.max_connections.max(1);
            // Counted as the accept path counts them (handshakes included).
            let open = move || capacity.saturating_sub(places.available_permits());
            let shared = self.shared.clone();
            let shed = move |count| shed_newest(&shared, count);
            AbortOnDrop(tokio::spawn(admission::sample(
                self.shared.engine.clone(),
                self.shared.config.admission(),
                self.shared.headroom.clone(),
                admission::NetworkMeasures {
                    send_delays: self.shared.send_delays.clone(),
                    receive_queue: self.shared.receive_queue,
                },
                open,
                shed,
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
