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
//! baselines it kept and acknowledges each state, checks reliable events
//! for gaps, answers [`Session::send`] with the server's verdict, and after
//! a drop it reconnects with the resume token (within the server's grace
//! window), asking for the events it missed. The application reads the
//! latest state from a watch ([`Session::states`]) and everything else, in
//! order, from [`Session::next_event`].
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
mod link;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, oneshot, watch};

use self::driver::Driver;
use self::link::Link;
use super::protocol::{CloseCode, CommandStatus, Credential, Hello, Role, Welcome};
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
    /// Too many commands await their result.
    #[error("too many commands in flight")]
    Busy,
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
        let endpoint =
            quinn::Endpoint::client(bind).map_err(|e| ClientError::Bind(e.to_string()))?;
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

    /// Connects and verifies the server certificate.
    pub async fn connect(&self) -> Result<Connected, ClientError> {
        let server = self.config.server;
        let connect_error = |reason: String| ClientError::Connect { server, reason };
        let connecting = self
            .endpoint
            .connect_with(self.quic.clone(), server, &self.config.server_name)
            .map_err(|e| connect_error(e.to_string()))?;
        let conn = tokio::time::timeout(Duration::from_secs(10), connecting)
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

    /// Connects and joins: [`connect`](Client::connect) then [`hello`](Connected::hello).
    pub async fn join<G: Game>(&self, request: JoinRequest) -> Result<Session<G>, ClientError> {
        self.connect().await?.hello(request).await
    }
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

    /// Sends the `Hello` and waits for the `Welcome`.
    pub async fn hello<G: Game>(self, request: JoinRequest) -> Result<Session<G>, ClientError> {
        let stats = Arc::new(ClientStats::default());
        let link =
            Link::<G>::open(&self.conn, &request.hello(), &self.client.config, &stats).await?;
        let welcome = link.welcome.clone();
        let (states_tx, states_rx) = watch::channel(None);
        let (events_tx, events_rx) = mpsc::channel(4096);
        let (commands_tx, commands_rx) = mpsc::channel(256);
        let (info_tx, info_rx) = watch::channel(SessionInfo {
            player: welcome.player,
            resume_token: welcome.resume_token.clone(),
            connected: true,
        });
        let driver = Driver::<G> {
            client: self.client,
            request,
            conn: self.conn,
            link,
            commands: commands_rx,
            pending: HashMap::new(),
            next_seq: 1,
            baselines: VecDeque::new(),
            last_tick: None,
            events_expected: welcome.events_from,
            grace: Duration::from_millis(welcome.grace_ms),
            states: states_tx,
            events: events_tx,
            info: info_tx,
            stats: stats.clone(),
            over: None,
        };
        let task = tokio::spawn(driver.run());
        Ok(Session {
            welcome,
            info: info_rx,
            commands: commands_tx,
            states: states_rx,
            events: events_rx,
            stats,
            task,
        })
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
        /// Why.
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
        /// Why.
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
}

/// An admitted session. Dropping it closes the connection.
#[derive(Debug)]
pub struct Session<G: Game> {
    welcome: Welcome,
    info: watch::Receiver<SessionInfo>,
    commands: mpsc::Sender<Outgoing<G::Command>>,
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

/// A command on its way; await it (or [`wait`](PendingCommand::wait)) for the verdict.
#[derive(Debug)]
pub struct PendingCommand {
    rx: oneshot::Receiver<Result<CommandStatus, ClientError>>,
    sent_at: Instant,
}

impl std::future::Future for PendingCommand {
    type Output = Result<CommandStatus, ClientError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Ended)))
    }
}

impl PendingCommand {
    /// The server's verdict.
    pub async fn wait(self) -> Result<CommandStatus, ClientError> {
        self.await
    }

    /// When the command was handed to the session.
    pub fn sent_at(&self) -> Instant {
        self.sent_at
    }
}

#[derive(Debug)]
struct Outgoing<C> {
    command: C,
    reply: oneshot::Sender<Result<CommandStatus, ClientError>>,
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

    /// Who the session is and whether it is connected, as a watch.
    pub fn info(&self) -> watch::Receiver<SessionInfo> {
        self.info.clone()
    }

    /// Queues a command; the result arrives through the returned handle.
    /// Never waits: a full queue is [`ClientError::Busy`].
    pub fn send(&self, command: G::Command) -> Result<PendingCommand, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .try_send(Outgoing { command, reply })
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
