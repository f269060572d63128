//! The async client library: connect, join, send commands, follow states
//! and events, and reconnect with the resume token after a drop.
//!
//! The connection's stages are types: a [`Client`] (a QUIC endpoint and
//! the certificates it trusts) [`connect`](Client::connect)s to a
//! [`Connected`] (TLS verified, not admitted), which says
//! [`hello`](Connected::hello) to become a [`Session`] (admitted, with a
//! player slot or as a spectator). [`Client::join`] does both steps.
//!
//! A session runs a driver task: it applies state deltas against the
//! baselines it kept and acknowledges states, checks reliable events
//! for gaps, answers [`Session::send`] with the server's verdict, sends
//! [`Session::input`]s as datagrams (repeating the unacknowledged ones)
//! and resolves them from the acknowledgements inside states, and after
//! a drop it reconnects with the resume token (within the server's grace
//! window), asking for the events it missed. The application reads the
//! latest state from a watch ([`Session::states`]) and everything else, in
//! order, from [`Session::next_event`].
//!
//! In a fleet a session follows its match from node to node: a
//! [`Redirect`](CloseCode::Redirect) answer sends the same `Hello` to the
//! node it names (at most [`MAX_REDIRECTS`] in a row), a
//! [`ServerFull`](CloseCode::ServerFull) or
//! [`MatchMoving`](CloseCode::MatchMoving) answer is retried after the wait
//! it asks for (within [`ClientConfig::retry_for`]), and an unreachable
//! server gives way to the next of [`ClientConfig::fallback`]. Resumes do
//! the same; [`Session::server`] is the node the session is on now.
//!
//! The parts: this file holds the API (configuration, errors, the stages,
//! the session handle); `route` decides where the next `Hello` goes (no
//! I/O); `inputs` numbers and resolves player inputs (no I/O); `link`
//! opens one connection and reads its streams; `driver` is the session's
//! task, which also reads the state datagrams.
//!
//! ```no_run
//! use tickforge::arena::{Arena, ArenaCommand, Dir};
//! use tickforge::net::client::{Client, ClientConfig, JoinRequest};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ClientConfig::trusting_file(
//!     "127.0.0.1:4433".parse()?,
//!     "target/tickforge-dev-cert.der".as_ref(),
//! )?;
//! let client = Client::new(config)?;
//! let mut session = client.join::<Arena>(JoinRequest::open_player("m1", "ada")).await?;
//! let status = session.command(ArenaCommand::Move(Dir::East)).await?;
//! println!("move: {status:?}");
//! let mut states = session.states();
//! states.changed().await?;
//! println!("tick {:?}", states.borrow().as_ref().map(|s| s.tick));
//! while let Some(event) = session.next_event().await {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```

mod driver;
mod inputs;
mod link;
mod route;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, oneshot, watch};

use self::driver::Driver;
use self::link::Link;
pub use self::route::MAX_REDIRECTS;
use self::route::{Budget, Next, Route};
use super::DatagramLoss;
use super::protocol::{self, CloseCode, CommandStatus, Credential, Hello, Role, Welcome};
use super::tls::{self, TlsError};
use crate::codec;
use crate::engine::EventEnvelope;
use crate::game::Game;
use crate::game::{PlayerId, Tick};

/// How a client connects.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The server's UDP address.
    pub server: SocketAddr,
    /// The name the server certificate must carry (`localhost` for the
    /// development certificate).
    pub server_name: String,
    /// The certificates trusted as roots (the server's own for a
    /// self-signed one). Never empty: there is no unverified mode.
    pub trusted: Vec<CertificateDer<'static>>,
    /// Largest server message accepted, in bytes.
    pub max_message_bytes: usize,
    /// A connection silent this long is dropped (keep-alives prevent it).
    pub idle_timeout: Duration,
    /// Reconnect with the resume token after a drop.
    pub reconnect: bool,
    /// How long a join keeps asking when servers answer `ServerFull` or
    /// `MatchMoving` (waiting the time each asks, capped and jittered);
    /// `ZERO` never retries and returns the refusal. A resume keeps trying
    /// for the longer of this and the server's grace window.
    pub retry_for: Duration,
    /// The fleet's other nodes (same address family as `server`): when the
    /// current server cannot be reached, the next address of `server`
    /// then these, round robin, is tried instead.
    pub fallback: Vec<SocketAddr>,
    /// Test hook: drop some outgoing input datagrams (seeded). `None`
    /// (the default) outside loss tests.
    pub test_input_datagram_loss: Option<DatagramLoss>,
    /// Kernel receive and send buffers of the client's UDP socket, each,
    /// in bytes (0 = the kernel's default; see [`crate::net::socket`]).
    pub socket_buffer_bytes: usize,
}

impl ClientConfig {
    /// Connects to `server` (named `localhost`) trusting `trusted`.
    pub fn new(server: SocketAddr, trusted: Vec<CertificateDer<'static>>) -> Self {
        Self {
            server,
            server_name: "localhost".into(),
            trusted,
            max_message_bytes: codec::MAX_DECODE_BYTES,
            idle_timeout: Duration::from_secs(10),
            reconnect: true,
            retry_for: Duration::from_secs(30),
            fallback: Vec::new(),
            test_input_datagram_loss: None,
            socket_buffer_bytes: 1 << 20,
        }
    }

    /// Connects to `server` trusting the certificate(s) in `cert` (DER or PEM),
    /// e.g. the development certificate the server wrote.
    pub fn trusting_file(server: SocketAddr, cert: &Path) -> Result<Self, ClientError> {
        Ok(Self::new(server, tls::read_certificates(cert)?))
    }
}

/// Why a client operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The trusted certificates or TLS settings were refused.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The local UDP socket could not be bound.
    #[error("cannot bind a UDP socket: {0}")]
    Bind(String),
    /// The connection could not be made (unreachable, handshake or
    /// certificate verification failed).
    #[error("cannot connect to {server}: {reason}")]
    Connect {
        /// The server.
        server: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The server closed the connection with an application code.
    #[error("closed by the server ({code:?}): {reason}")]
    Refused {
        /// The code, if it is one of ours.
        code: Option<CloseCode>,
        /// The server's reason.
        reason: String,
    },
    /// The servers redirected the `Hello` more than [`MAX_REDIRECTS`]
    /// times in a row: the fleet disagrees on who hosts the match.
    #[error("redirected more than {limit} times in a row (the last to {last})")]
    TooManyRedirects {
        /// The redirects allowed in a row.
        limit: u32,
        /// The address the last redirect named.
        last: String,
    },
    /// A redirect named an address that cannot be resolved.
    #[error("cannot follow the redirect to {target}: {reason}")]
    BadRedirect {
        /// The `host:port` the server named.
        target: String,
        /// Why it did not resolve.
        reason: String,
    },
    /// The connection was lost (timeout, reset, transport error).
    #[error("connection lost: {0}")]
    Lost(String),
    /// The server broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The session is reconnecting; the command was not sent (or its
    /// result was lost with the connection).
    #[error("disconnected; the command's outcome is unknown")]
    Disconnected,
    /// Too many commands await their result, or
    /// [`INPUT_WINDOW`](protocol::INPUT_WINDOW) inputs their acknowledgement.
    #[error("too many commands or inputs in flight")]
    Busy,
    /// The server does not take datagrams on this connection, so inputs
    /// cannot be sent (use [`Session::send`]).
    #[error("the connection carries no datagrams; inputs cannot be sent")]
    NoDatagrams,
    /// The session has ended.
    #[error("the session has ended")]
    Ended,
}

impl ClientError {
    /// The server's close code, when the server closed the connection.
    pub fn code(&self) -> Option<CloseCode> {
        match self {
            ClientError::Refused { code, .. } => *code,
            _ => None,
        }
    }

    /// Why, for a [`SessionEvent`]: the server's own reason when it closed
    /// the connection (so [`parse_retry_after`](crate::net::parse_retry_after)
    /// reads the wait it asked for), else this error's text.
    pub fn reason(&self) -> String {
        match self {
            ClientError::Refused { reason, .. } => reason.clone(),
            other => other.to_string(),
        }
    }
}

impl From<TlsError> for ClientError {
    fn from(e: TlsError) -> Self {
        ClientError::Tls(e.to_string())
    }
}

fn connection_error(error: &quinn::ConnectionError) -> ClientError {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => ClientError::Refused {
            code: CloseCode::from_code(close.error_code.into_inner()),
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
        },
        quinn::ConnectionError::LocallyClosed => ClientError::Ended,
        other => ClientError::Lost(other.to_string()),
    }
}

/// What to send in the `Hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// The match.
    pub match_id: String,
    /// Ticket, resume token, or nothing (open mode).
    pub credential: Credential,
    /// Player or spectator.
    pub role: Role,
    /// The game's join payload (`Game::Join`), encoded; `None` joins with
    /// the game's default payload.
    pub join: Option<Vec<u8>>,
    /// The game's parameters (`Game::Params`), encoded, for a match this
    /// Hello creates on an open-mode server; `None` for the defaults.
    pub params: Option<Vec<u8>>,
    /// For a resume: reliable events below this were received.
    pub events_from: Option<u64>,
}

/// Encodes a payload for the Hello. A payload too large to encode is sent
/// empty, and the server refuses it as undecodable: never silently
/// replaced by a default.
fn payload(value: &(impl serde::Serialize + ?Sized)) -> Vec<u8> {
    codec::encode(value).unwrap_or_default()
}

impl JoinRequest {
    fn new(match_id: &str, credential: Credential, role: Role) -> Self {
        Self {
            match_id: match_id.into(),
            credential,
            role,
            join: None,
            params: None,
            events_from: None,
        }
    }

    /// A player admitted by `ticket`, joining with `join` (the game's
    /// `Game::Join`: a display name for the arena).
    pub fn player(match_id: &str, ticket: &str, join: &(impl serde::Serialize + ?Sized)) -> Self {
        Self {
            join: Some(payload(join)),
            ..Self::new(match_id, Credential::Ticket(ticket.into()), Role::Player)
        }
    }

    /// A player back in its slot with its resume token.
    pub fn resume(match_id: &str, token: &str) -> Self {
        Self::new(match_id, Credential::Resume(token.into()), Role::Player)
    }

    /// A player on an open-mode server (which picks the player id).
    pub fn open_player(match_id: &str, join: &(impl serde::Serialize + ?Sized)) -> Self {
        Self {
            join: Some(payload(join)),
            ..Self::new(match_id, Credential::Open, Role::Player)
        }
    }

    /// A spectator, with a ticket or (open mode) without.
    pub fn spectator(match_id: &str, ticket: Option<&str>) -> Self {
        let credential = ticket.map_or(Credential::Open, |t| Credential::Ticket(t.into()));
        Self::new(match_id, credential, Role::Spectator)
    }

    /// Asks an open-mode server to create the match with `params` (the
    /// game's `Game::Params`) if this Hello creates it.
    pub fn with_params(mut self, params: &(impl serde::Serialize + ?Sized)) -> Self {
        self.params = Some(payload(params));
        self
    }

    fn hello(&self) -> Hello {
        Hello {
            match_id: self.match_id.clone(),
            credential: self.credential.clone(),
            role: self.role,
            join: self.join.clone(),
            params: self.params.clone(),
            events_from: self.events_from,
        }
    }
}

/// A QUIC client endpoint trusting a set of certificates. Clones share the
/// endpoint (one UDP socket for many sessions).
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: quinn::Endpoint,
    quic: quinn::ClientConfig,
    config: Arc<ClientConfig>,
}

impl Client {
    /// Binds a client endpoint on an ephemeral port. Within a tokio runtime.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        let bind: SocketAddr = if config.server.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let bind_error = |e: std::io::Error| ClientError::Bind(e.to_string());
        let (socket, _) =
            crate::net::socket::bind_udp(bind, config.socket_buffer_bytes).map_err(bind_error)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| ClientError::Bind("not within an async runtime".into()))?;
        let endpoint =
            quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
                .map_err(bind_error)?;
        Self::with_endpoint(endpoint, config)
    }

    /// Uses an existing endpoint (e.g. one bound to a chosen address).
    pub fn with_endpoint(
        endpoint: quinn::Endpoint,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        if config.trusted.is_empty() {
            return Err(ClientError::Tls(
                "no trusted certificate given; the server cannot be verified".into(),
            ));
        }
        let quic = tls::client_config(&config.trusted, config.idle_timeout)?;
        Ok(Self {
            endpoint,
            quic,
            config: Arc::new(config),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Connects to the configured server and verifies its certificate.
    pub async fn connect(&self) -> Result<Connected, ClientError> {
        self.connect_to(self.config.server).await
    }

    /// Connects to `server` (another node of the fleet, say) with the
    /// configured name and trust.
    pub async fn connect_to(&self, server: SocketAddr) -> Result<Connected, ClientError> {
        let connect_error = |reason: String| ClientError::Connect { server, reason };
        let connecting = self
            .endpoint
            .connect_with(self.quic.clone(), server, &self.config.server_name)
            .map_err(|e| connect_error(e.to_string()))?;
        // An unreachable node costs this much before the next one is tried.
        let handshake = self.config.idle_timeout.min(HANDSHAKE_TIMEOUT);
        let conn = tokio::time::timeout(handshake, connecting)
            .await
            .map_err(|_| connect_error("handshake timed out".into()))?
            .map_err(|e| match connection_error(&e) {
                refused @ ClientError::Refused { .. } => refused,
                _ => connect_error(e.to_string()),
            })?;
        Ok(Connected {
            conn,
            client: self.clone(),
        })
    }

    /// Connects and joins: [`connect`](Client::connect) then
    /// [`hello`](Connected::hello), following redirects and retrying as
    /// that describes, and failing over to the
    /// [`fallback`](ClientConfig::fallback) addresses (each tried once)
    /// when a server cannot be reached.
    pub async fn join<G: Game>(&self, request: JoinRequest) -> Result<Session<G>, ClientError> {
        let route = Route::new(&self.config, self.config.server);
        self.admit(route, None, request).await
    }

    /// Says the `Hello` until a server welcomes it and starts the session.
    async fn admit<G: Game>(
        &self,
        mut route: Route,
        first: Option<quinn::Connection>,
        request: JoinRequest,
    ) -> Result<Session<G>, ClientError> {
        let stats = Arc::new(ClientStats::default());
        let budget = Budget::join(Instant::now(), self.config.retry_for);
        let next = match first {
            Some(conn) => {
                match Link::<G>::open(&conn, &request.hello(), &self.config, &stats).await {
                    Ok(link) => return Ok(Driver::spawn(self, route, request, conn, link, stats)),
                    Err(error) => route.after_attempt(error, Instant::now(), &budget, random()),
                }
            }
            None => Next::Retry(Duration::ZERO),
        };
        let (conn, link) = self
            .establish::<G>(&mut route, next, &request, &stats, &budget)
            .await?;
        Ok(Driver::spawn(self, route, request, conn, link, stats))
    }

    /// Takes the `next` step, then says `request`'s `Hello` to the route's
    /// current server until one welcomes it or the route gives up.
    async fn establish<G: Game>(
        &self,
        route: &mut Route,
        mut next: Next,
        request: &JoinRequest,
        stats: &Arc<ClientStats>,
        budget: &Budget,
    ) -> Result<(quinn::Connection, Link<G>), ClientError> {
        let hello = request.hello();
        loop {
            match next {
                Next::Redirect(target) => {
                    stats.redirects.fetch_add(1, Relaxed);
                    tracing::debug!(%target, "following a redirect");
                }
                Next::Retry(wait) => {
                    if !wait.is_zero() {
                        stats.retries.fetch_add(1, Relaxed);
                        tokio::time::sleep(wait).await;
                    }
                }
                Next::GiveUp(error) => return Err(error),
            }
            let attempt = async {
                if let Some(target) = route.take_redirect() {
                    route.arrive(self.resolve(&target).await?);
                }
                let conn = self.connect_to(route.current()).await?.conn;
                let link = Link::<G>::open(&conn, &hello, &self.config, stats).await?;
                Ok::<_, ClientError>((conn, link))
            };
            match attempt.await {
                Ok(admitted) => {
                    route.admitted();
                    return Ok(admitted);
                }
                Err(error) => {
                    tracing::debug!(server = %route.current(), %error, "hello not welcomed");
                    next = route.after_attempt(error, Instant::now(), budget, random());
                }
            }
        }
    }

    /// Resolves a redirect's `host:port`, preferring the endpoint's
    /// address family.
    async fn resolve(&self, target: &str) -> Result<SocketAddr, ClientError> {
        let bad = |reason: String| ClientError::BadRedirect {
            target: target.to_owned(),
            reason,
        };
        let v6 = self
            .endpoint
            .local_addr()
            .map_err(|e| bad(e.to_string()))?
            .is_ipv6();
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target)
            .await
            .map_err(|e| bad(e.to_string()))?
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv6() == v6)
            .or(addrs.first())
            .copied()
            .ok_or_else(|| bad("no address".into()))
    }
}

/// The longest a QUIC handshake may take (less when the idle timeout is
/// shorter).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A random number for the jitter of retries.
fn random() -> u64 {
    let rng = ring::rand::SystemRandom::new();
    ring::rand::generate::<[u8; 8]>(&rng).map_or(0, |bytes| u64::from_le_bytes(bytes.expose()))
}

/// A verified connection that is not admitted to a match yet.
#[derive(Debug)]
pub struct Connected {
    conn: quinn::Connection,
    client: Client,
}

impl Connected {
    /// The underlying QUIC connection (for tests and diagnostics).
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Sends the `Hello` and waits for the `Welcome`. A
    /// [`Redirect`](CloseCode::Redirect) answer is followed (the same
    /// `Hello` to the node it names, at most [`MAX_REDIRECTS`] in a row);
    /// a [`ServerFull`](CloseCode::ServerFull) or
    /// [`MatchMoving`](CloseCode::MatchMoving) answer is retried after the
    /// wait it asks for, within [`ClientConfig::retry_for`].
    pub async fn hello<G: Game>(self, request: JoinRequest) -> Result<Session<G>, ClientError> {
        let route = Route::new(&self.client.config, self.conn.remote_address());
        self.client.admit(route, Some(self.conn), request).await
    }
}

/// A state as the client rebuilt it.
#[derive(Debug, Clone, PartialEq)]
pub struct StateUpdate<S> {
    /// The tick it is the state after.
    pub tick: Tick,
    /// Whether the match is over.
    pub over: bool,
    /// The state.
    pub state: S,
    /// When it was received.
    pub received: Instant,
}

/// Everything a session reports besides states, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent<E> {
    /// A reliable game event.
    Event(EventEnvelope<E>),
    /// Reliable events with sequences in `from..to` may be missing (the
    /// server could not send them); the states are complete regardless.
    Gap {
        /// First possibly missing sequence.
        from: u64,
        /// One past the last.
        to: u64,
    },
    /// The match ended at `tick`; the final state is in the watch.
    MatchOver {
        /// The last tick.
        tick: Tick,
    },
    /// The connection dropped; when `resuming`, the session reconnects.
    Disconnected {
        /// The server's code, if it closed the connection.
        code: Option<CloseCode>,
        /// Why: the server's own reason when it closed the connection
        /// ([`ClientError::reason`]).
        reason: String,
        /// Whether the session tries to resume.
        resuming: bool,
    },
    /// Back in the slot after a reconnect.
    Resumed {
        /// The match's tick at the resume.
        tick: Tick,
    },
    /// The session ended for good.
    Closed {
        /// The server's code, if it closed the connection.
        code: Option<CloseCode>,
        /// Why: the server's own reason when it closed the connection
        /// ([`ClientError::reason`]).
        reason: String,
    },
}

/// Who the session is, as it changes over reconnects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The player slot held.
    pub player: Option<PlayerId>,
    /// The token to resume it.
    pub resume_token: Option<String>,
    /// Whether a connection is up now.
    pub connected: bool,
    /// The server of the session (the last one that welcomed it; it
    /// changes with redirects and fail-overs).
    pub server: SocketAddr,
}

/// Counters of one session.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Bytes received (datagrams, frames).
    pub bytes_in: AtomicU64,
    /// State datagrams received.
    pub datagrams: AtomicU64,
    /// States applied.
    pub states: AtomicU64,
    /// States that arrived as deltas.
    pub deltas: AtomicU64,
    /// States that arrived on a stream.
    pub stream_states: AtomicU64,
    /// Deltas whose baseline was not kept (dropped).
    pub missing_baseline: AtomicU64,
    /// Reliable events received.
    pub events: AtomicU64,
    /// Gaps detected in the reliable events.
    pub gaps: AtomicU64,
    /// Successful resumes.
    pub resumes: AtomicU64,
    /// Redirects followed (joins and resumes).
    pub redirects: AtomicU64,
    /// `Hello`s sent again after a wait (a full server, a moving match, an
    /// unreachable server).
    pub retries: AtomicU64,
    /// Inputs sent (each counted once, however often repeated).
    pub inputs_sent: AtomicU64,
    /// Input datagrams sent (inputs, repeats and state acknowledgements).
    pub input_datagrams: AtomicU64,
    /// Input datagrams dropped by the loss test hook.
    pub test_dropped_inputs: AtomicU64,
    /// Inputs the server rejected.
    pub inputs_rejected: AtomicU64,
}

/// An admitted session. Dropping it closes the connection.
#[derive(Debug)]
pub struct Session<G: Game> {
    welcome: Welcome,
    info: watch::Receiver<SessionInfo>,
    commands: mpsc::Sender<Outgoing<G::Command>>,
    /// Inputs not resolved yet (the window; shared with the driver).
    inputs_outstanding: Arc<AtomicUsize>,
    states: watch::Receiver<Option<Arc<StateUpdate<G::View>>>>,
    events: mpsc::Receiver<SessionEvent<G::Event>>,
    stats: Arc<ClientStats>,
    task: tokio::task::JoinHandle<()>,
}

impl<G: Game> Drop for Session<G> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A command or input on its way; await it (or [`wait`](Pending::wait))
/// for its outcome.
#[derive(Debug)]
pub struct Pending<T> {
    rx: oneshot::Receiver<Result<T, ClientError>>,
    sent_at: Instant,
}

/// A command on its way; its outcome is the server's verdict.
pub type PendingCommand = Pending<CommandStatus>;

/// An input on its way; its outcome says whether and when it was applied.
pub type PendingInput = Pending<InputStatus>;

impl<T> std::future::Future for Pending<T> {
    type Output = Result<T, ClientError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Ended)))
    }
}

impl<T> Pending<T> {
    /// The outcome.
    pub async fn wait(self) -> Result<T, ClientError> {
        self.await
    }

    /// When it was handed to the session.
    pub fn sent_at(&self) -> Instant {
        self.sent_at
    }
}

/// What happened to an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputStatus {
    /// Applied on or before `tick`: the first state at or after `tick`
    /// shows it.
    Applied {
        /// A tick at or after the one it was applied on.
        tick: Tick,
    },
    /// Refused by the game (or the server); nothing changed.
    Rejected {
        /// Why, for the player.
        reason: String,
    },
}

/// What the session handle asks of the driver.
#[derive(Debug)]
enum Outgoing<C> {
    /// A reliable command, answered by a `CommandResult`.
    Command {
        command: C,
        reply: oneshot::Sender<Result<CommandStatus, ClientError>>,
    },
    /// An input, sent in datagrams and acknowledged inside states.
    Input {
        command: C,
        reply: inputs::InputReplyTx,
    },
}

impl<C> Outgoing<C> {
    /// Answers the request with `error` instead of sending it; an input
    /// leaves the window (`outstanding`).
    fn fail(self, error: ClientError, outstanding: &AtomicUsize) {
        match self {
            Outgoing::Command { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Outgoing::Input { reply, .. } => {
                outstanding.fetch_sub(1, Relaxed);
                let _ = reply.send(Err(error));
            }
        }
    }
}

impl<G: Game> Session<G> {
    /// The `Welcome` of the first admission.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The player slot held (`None` for a spectator).
    pub fn player(&self) -> Option<PlayerId> {
        self.info.borrow().player
    }

    /// The resume token of the slot.
    pub fn resume_token(&self) -> Option<String> {
        self.info.borrow().resume_token.clone()
    }

    /// The server the session is on: the last one that welcomed it (while
    /// it reconnects, the one it lost).
    pub fn server(&self) -> SocketAddr {
        self.info.borrow().server
    }

    /// Who the session is and whether it is connected, as a watch.
    pub fn info(&self) -> watch::Receiver<SessionInfo> {
        self.info.clone()
    }

    /// Queues a command; the result arrives through the returned handle.
    /// Never waits: a full queue is [`ClientError::Busy`].
    pub fn send(&self, command: G::Command) -> Result<PendingCommand, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .try_send(Outgoing::Command { command, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ClientError::Busy,
                mpsc::error::TrySendError::Closed(_) => ClientError::Ended,
            })?;
        Ok(PendingCommand {
            rx,
            sent_at: Instant::now(),
        })
    }

    /// Sends a command and waits for the verdict.
    pub async fn command(&self, command: G::Command) -> Result<CommandStatus, ClientError> {
        self.send(command)?.wait().await
    }

    /// Sends a player input: unreliable datagrams that repeat it until a
    /// state acknowledges it, cheaper for the server than
    /// [`send`](Session::send). Its outcome arrives through the returned
    /// handle: [`InputStatus::Applied`] with a tick whose state shows it,
    /// or [`InputStatus::Rejected`]. Never waits: with
    /// [`INPUT_WINDOW`](protocol::INPUT_WINDOW) inputs unresolved it is
    /// [`ClientError::Busy`]. An input unresolved when the connection
    /// drops fails with [`ClientError::Disconnected`] (its outcome is
    /// unknown).
    pub fn input(&self, command: G::Command) -> Result<PendingInput, ClientError> {
        self.inputs_outstanding
            .fetch_update(Relaxed, Relaxed, |n| {
                (n < protocol::INPUT_WINDOW).then_some(n + 1)
            })
            .map_err(|_| ClientError::Busy)?;
        let (reply, rx) = oneshot::channel();
        if let Err(e) = self.commands.try_send(Outgoing::Input { command, reply }) {
            self.inputs_outstanding.fetch_sub(1, Relaxed);
            return Err(match e {
                mpsc::error::TrySendError::Full(_) => ClientError::Busy,
                mpsc::error::TrySendError::Closed(_) => ClientError::Ended,
            });
        }
        Ok(PendingInput {
            rx,
            sent_at: Instant::now(),
        })
    }

    /// The latest state, as a watch.
    pub fn states(&self) -> watch::Receiver<Option<Arc<StateUpdate<G::View>>>> {
        self.states.clone()
    }

    /// The latest state received.
    pub fn state(&self) -> Option<Arc<StateUpdate<G::View>>> {
        self.states.borrow().clone()
    }

    /// The next event, gap, reconnect notice or the final close; `None`
    /// after the session ended and everything was read.
    pub async fn next_event(&mut self) -> Option<SessionEvent<G::Event>> {
        self.events.recv().await
    }

    /// The session's counters.
    pub fn stats(&self) -> &Arc<ClientStats> {
        &self.stats
    }

    /// Closes the connection (the server keeps the slot for its grace window).
    pub fn close(self) {
        drop(self);
    }
}
