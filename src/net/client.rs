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

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::delta::{self, Patch};
use super::protocol::{
    self, ClientMsg, CloseCode, CommandStatus, Credential, FrameBuffer, Hello, Role, ServerMsg,
    Welcome,
};
use super::tls::{self, TlsError};
use crate::codec;
use crate::engine::EventEnvelope;
use crate::game::Game;
use crate::game::{PlayerId, Tick};

/// Baselines (received state encodings) a session keeps.
const BASELINES_KEPT: usize = 64;
/// Commands awaiting their result, at most.
const MAX_IN_FLIGHT: usize = 1024;

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

/// What the per-connection reader tasks hand the driver.
enum Inbound<E> {
    Control(ServerMsg<E>),
    State(ServerMsg<E>, bool),
    Broken(String),
}

/// One connection's streams and readers.
struct Link<G: Game> {
    send: quinn::SendStream,
    inbox: mpsc::Receiver<Inbound<G::Event>>,
    readers: JoinSet<()>,
    welcome: Welcome,
}

impl<G: Game> Link<G> {
    /// Opens the control stream, says hello, waits for the welcome and
    /// starts the readers.
    async fn open(
        conn: &quinn::Connection,
        hello: &Hello,
        config: &ClientConfig,
        stats: &Arc<ClientStats>,
    ) -> Result<Self, ClientError> {
        let lost = |e: &quinn::ConnectionError| connection_error(e);
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
        let frame =
            protocol::encode_frame(&ClientMsg::<G::Command>::Hello(hello.clone()), usize::MAX)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
        if send.write_all(&frame).await.is_err() {
            return Err(closed_error(conn).await);
        }
        let mut frames = FrameBuffer::new(config.max_message_bytes);
        let welcome = loop {
            match frames.next_frame::<ServerMsg<G::Event>>() {
                Ok(Some(ServerMsg::Welcome(welcome))) => break welcome,
                Ok(Some(other)) => {
                    return Err(ClientError::Protocol(format!(
                        "expected a Welcome, got {}",
                        kind(&other)
                    )));
                }
                Ok(None) => {}
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
            let read =
                tokio::time::timeout(Duration::from_secs(15), recv.read_chunk(64 * 1024, true))
                    .await;
            match read {
                Ok(Ok(Some(chunk))) => {
                    stats.bytes_in.fetch_add(chunk.bytes.len() as u64, Relaxed);
                    frames.extend(&chunk.bytes);
                }
                Ok(Ok(None)) | Ok(Err(_)) => return Err(closed_error(conn).await),
                Err(_) => return Err(ClientError::Lost("no Welcome in time".into())),
            }
        };
        let (tx, inbox) = mpsc::channel(1024);
        let mut readers = JoinSet::new();
        readers.spawn(read_control::<G>(recv, frames, tx.clone(), stats.clone()));
        readers.spawn(read_datagrams::<G>(
            conn.clone(),
            config.max_message_bytes,
            tx.clone(),
            stats.clone(),
        ));
        readers.spawn(accept_state_streams::<G>(
            conn.clone(),
            config.max_message_bytes,
            tx,
            stats.clone(),
        ));
        Ok(Self {
            send,
            inbox,
            readers,
            welcome,
        })
    }
}

/// The error a closed connection reports (waiting briefly for the close frame).
async fn closed_error(conn: &quinn::Connection) -> ClientError {
    match tokio::time::timeout(Duration::from_secs(2), conn.closed()).await {
        Ok(e) => connection_error(&e),
        Err(_) => ClientError::Lost("the server stopped answering".into()),
    }
}

fn kind<E>(msg: &ServerMsg<E>) -> &'static str {
    match msg {
        ServerMsg::Welcome(_) => "Welcome",
        ServerMsg::CommandResult { .. } => "CommandResult",
        ServerMsg::Event { .. } => "Event",
        ServerMsg::StateFull { .. } => "StateFull",
        ServerMsg::StateDelta { .. } => "StateDelta",
        ServerMsg::MatchOver { .. } => "MatchOver",
        ServerMsg::Closing { .. } => "Closing",
    }
}

async fn read_control<G: Game>(
    mut recv: quinn::RecvStream,
    mut frames: FrameBuffer,
    tx: mpsc::Sender<Inbound<G::Event>>,
    stats: Arc<ClientStats>,
) {
    loop {
        loop {
            match frames.next_frame::<ServerMsg<G::Event>>() {
                Ok(Some(msg)) => {
                    if tx.send(Inbound::Control(msg)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Inbound::Broken(e.to_string())).await;
                    return;
                }
            }
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => {
                stats.bytes_in.fetch_add(chunk.bytes.len() as u64, Relaxed);
                frames.extend(&chunk.bytes);
            }
            Ok(None) | Err(_) => return,
        }
    }
}

async fn read_datagrams<G: Game>(
    conn: quinn::Connection,
    limit: usize,
    tx: mpsc::Sender<Inbound<G::Event>>,
    stats: Arc<ClientStats>,
) {
    while let Ok(bytes) = conn.read_datagram().await {
        stats.bytes_in.fetch_add(bytes.len() as u64, Relaxed);
        stats.datagrams.fetch_add(1, Relaxed);
        match protocol::decode_datagram::<ServerMsg<G::Event>>(&bytes, limit) {
            // A full inbox drops the state: a newer one follows.
            Ok(msg) => {
                if let Err(mpsc::error::TrySendError::Closed(_)) =
                    tx.try_send(Inbound::State(msg, false))
                {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Inbound::Broken(format!("bad datagram: {e}"))).await;
                return;
            }
        }
    }
}

async fn accept_state_streams<G: Game>(
    conn: quinn::Connection,
    limit: usize,
    tx: mpsc::Sender<Inbound<G::Event>>,
    stats: Arc<ClientStats>,
) {
    let mut streams = JoinSet::new();
    while let Ok(mut stream) = conn.accept_uni().await {
        let tx = tx.clone();
        let stats = stats.clone();
        streams.spawn(async move {
            let Ok(bytes) = stream
                .read_to_end(limit + protocol::FRAME_HEADER_BYTES)
                .await
            else {
                return;
            };
            stats.bytes_in.fetch_add(bytes.len() as u64, Relaxed);
            match protocol::decode_frame::<ServerMsg<G::Event>>(&bytes, limit) {
                Ok((msg, _)) => {
                    let _ = tx.send(Inbound::State(msg, true)).await;
                }
                Err(e) => {
                    let _ = tx
                        .send(Inbound::Broken(format!("bad state stream: {e}")))
                        .await;
                }
            }
        });
        // Reap finished readers so the set stays small.
        while streams.try_join_next().is_some() {}
    }
}

/// The session's task: owns the connection and all per-session state.
struct Driver<G: Game> {
    client: Client,
    request: JoinRequest,
    conn: quinn::Connection,
    link: Link<G>,
    commands: mpsc::Receiver<Outgoing<G::Command>>,
    pending: HashMap<u64, oneshot::Sender<Result<CommandStatus, ClientError>>>,
    next_seq: u64,
    baselines: VecDeque<(Tick, Vec<u8>)>,
    last_tick: Option<Tick>,
    events_expected: u64,
    grace: Duration,
    states: watch::Sender<Option<Arc<StateUpdate<G::View>>>>,
    events: mpsc::Sender<SessionEvent<G::Event>>,
    info: watch::Sender<SessionInfo>,
    stats: Arc<ClientStats>,
    /// The match ended at this tick; `true` once the final state arrived.
    over: Option<(Tick, bool)>,
}

/// Why the driver's connection loop stopped.
enum Stop {
    /// The application dropped the session.
    Dropped,
    /// The match ended and everything was delivered.
    Over,
    /// The connection failed.
    Failed(ClientError),
}

impl<G: Game> Driver<G> {
    async fn run(mut self) {
        loop {
            let stop = self.serve_connection().await;
            let error = match stop {
                Stop::Dropped => {
                    self.conn
                        .close(CloseCode::Normal.code().into(), b"client closed");
                    return;
                }
                Stop::Over => {
                    self.conn
                        .close(CloseCode::Normal.code().into(), b"match over");
                    let _ = self
                        .events
                        .send(SessionEvent::Closed {
                            code: Some(CloseCode::MatchOver),
                            reason: "the match is over".into(),
                        })
                        .await;
                    return;
                }
                Stop::Failed(error) => error,
            };
            for (_, reply) in self.pending.drain() {
                let _ = reply.send(Err(ClientError::Disconnected));
            }
            self.info.send_modify(|i| i.connected = false);
            let code = error.code();
            let resumable = self.client.config.reconnect
                && match &error {
                    ClientError::Refused { code, .. } => code.is_some_and(CloseCode::may_resume),
                    ClientError::Lost(_) | ClientError::Protocol(_) => true,
                    _ => false,
                }
                && (self.request.role == Role::Spectator
                    || self.info.borrow().resume_token.is_some());
            let _ = self
                .events
                .send(SessionEvent::Disconnected {
                    code,
                    reason: error.to_string(),
                    resuming: resumable,
                })
                .await;
            if !resumable {
                return self.close_for_good(code, error.to_string()).await;
            }
            match self.reconnect().await {
                Ok(()) => {}
                Err(error) => return self.close_for_good(error.code(), error.to_string()).await,
            }
        }
    }

    async fn close_for_good(&mut self, code: Option<CloseCode>, reason: String) {
        self.conn
            .close(CloseCode::Normal.code().into(), b"client gave up");
        let _ = self
            .events
            .send(SessionEvent::Closed { code, reason })
            .await;
    }

    /// Reconnects with the resume token (players) or the original
    /// credential (spectators), retrying until the grace window is over.
    async fn reconnect(&mut self) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.grace.max(Duration::from_secs(1));
        let mut backoff = Duration::from_millis(50);
        let mut request = self.request.clone();
        if self.request.role == Role::Player {
            let token = self
                .info
                .borrow()
                .resume_token
                .clone()
                .ok_or(ClientError::Ended)?;
            request.credential = Credential::Resume(token);
        }
        request.events_from = Some(self.events_expected);
        loop {
            // Commands sent meanwhile fail at once.
            while let Ok(out) = self.commands.try_recv() {
                let _ = out.reply.send(Err(ClientError::Disconnected));
            }
            let attempt = async {
                let connected = self.client.connect().await?;
                let link = Link::<G>::open(
                    &connected.conn,
                    &request.hello(),
                    &self.client.config,
                    &self.stats,
                )
                .await?;
                Ok::<_, ClientError>((connected.conn, link))
            };
            match attempt.await {
                Ok((conn, link)) => {
                    let tick = link.welcome.tick;
                    // Events the server could not replay are a gap.
                    if link.welcome.events_from > self.events_expected {
                        let (from, to) = (self.events_expected, link.welcome.events_from);
                        self.stats.gaps.fetch_add(1, Relaxed);
                        let _ = self.events.send(SessionEvent::Gap { from, to }).await;
                        self.events_expected = to;
                    }
                    self.conn = conn;
                    self.link = link;
                    self.last_tick = None;
                    self.stats.resumes.fetch_add(1, Relaxed);
                    self.info.send_modify(|i| {
                        i.connected = true;
                        if let Some(player) = self.link.welcome.player {
                            i.player = Some(player);
                        }
                        if let Some(token) = &self.link.welcome.resume_token {
                            i.resume_token = Some(token.clone());
                        }
                    });
                    let _ = self.events.send(SessionEvent::Resumed { tick }).await;
                    return Ok(());
                }
                Err(error) => {
                    let transient = match &error {
                        ClientError::Refused { code, .. } => code.is_none_or(CloseCode::may_resume),
                        ClientError::Connect { .. } | ClientError::Lost(_) => true,
                        _ => false,
                    };
                    if !transient || Instant::now() + backoff > deadline {
                        return Err(error);
                    }
                    tracing::debug!(%error, "reconnect attempt failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Runs one connection until it fails, the match ends or the session is dropped.
    async fn serve_connection(&mut self) -> Stop {
        let mut over_deadline: Option<tokio::time::Instant> = None;
        loop {
            let linger = async {
                match over_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                inbound = self.link.inbox.recv() => match inbound {
                    Some(Inbound::Control(msg)) => {
                        if let Some(stop) = self.on_control(msg, &mut over_deadline).await {
                            return stop;
                        }
                    }
                    Some(Inbound::State(msg, on_stream)) => {
                        if let Some(stop) = self.on_state(msg, on_stream).await {
                            return stop;
                        }
                    }
                    Some(Inbound::Broken(reason)) => {
                        self.conn.close(CloseCode::Malformed.code().into(), reason.as_bytes());
                        return Stop::Failed(ClientError::Protocol(reason));
                    }
                    None => {
                        // Every reader ended: the connection is gone.
                        return Stop::Failed(closed_error(&self.conn).await);
                    }
                },
                out = self.commands.recv() => match out {
                    None => return Stop::Dropped,
                    Some(out) => {
                        if self.pending.len() >= MAX_IN_FLIGHT {
                            let _ = out.reply.send(Err(ClientError::Busy));
                            continue;
                        }
                        let client_seq = self.next_seq;
                        self.next_seq += 1;
                        let msg = ClientMsg::Command { client_seq, command: out.command };
                        self.pending.insert(client_seq, out.reply);
                        if let Err(stop) = self.write(&msg).await {
                            return stop;
                        }
                    }
                },
                error = self.conn.closed() => {
                    // Drain what already arrived (results, events) first.
                    while let Ok(inbound) = self.link.inbox.try_recv() {
                        match inbound {
                            Inbound::Control(msg) => { let _ = self.on_control(msg, &mut over_deadline).await; }
                            Inbound::State(msg, on_stream) => { let _ = self.on_state(msg, on_stream).await; }
                            Inbound::Broken(_) => break,
                        }
                    }
                    if self.over.is_some() {
                        return Stop::Over;
                    }
                    return Stop::Failed(connection_error(&error));
                }
                _ = linger => return Stop::Over,
            }
        }
    }

    async fn write(&mut self, msg: &ClientMsg<G::Command>) -> Result<(), Stop> {
        let frame = protocol::encode_frame(msg, usize::MAX)
            .map_err(|e| Stop::Failed(ClientError::Protocol(e.to_string())))?;
        if self.link.send.write_all(&frame).await.is_err() {
            return Err(Stop::Failed(closed_error(&self.conn).await));
        }
        Ok(())
    }

    async fn on_control(
        &mut self,
        msg: ServerMsg<G::Event>,
        over_deadline: &mut Option<tokio::time::Instant>,
    ) -> Option<Stop> {
        match msg {
            ServerMsg::CommandResult { client_seq, status } => {
                if let Some(reply) = self.pending.remove(&client_seq) {
                    let _ = reply.send(Ok(status));
                }
            }
            ServerMsg::Event { since, envelope } => {
                if since > self.events_expected {
                    self.stats.gaps.fetch_add(1, Relaxed);
                    let gap = SessionEvent::Gap {
                        from: self.events_expected,
                        to: since,
                    };
                    if self.events.send(gap).await.is_err() {
                        return Some(Stop::Dropped);
                    }
                }
                if envelope.sequence >= self.events_expected {
                    self.events_expected = envelope.sequence + 1;
                    self.stats.events.fetch_add(1, Relaxed);
                    if self
                        .events
                        .send(SessionEvent::Event(envelope))
                        .await
                        .is_err()
                    {
                        return Some(Stop::Dropped);
                    }
                }
            }
            ServerMsg::MatchOver { tick } => {
                let final_state = self.over.is_some_and(|(_, got)| got);
                self.over = Some((tick, final_state));
                if self
                    .events
                    .send(SessionEvent::MatchOver { tick })
                    .await
                    .is_err()
                {
                    return Some(Stop::Dropped);
                }
                if final_state {
                    return Some(Stop::Over);
                }
                // Wait a little for the final state on its stream.
                *over_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(2));
            }
            ServerMsg::StateFull { .. } | ServerMsg::StateDelta { .. } => {
                return self.on_state(msg, false).await;
            }
            ServerMsg::Closing { code, reason } => {
                tracing::debug!(code, %reason, "server is closing the connection");
            }
            ServerMsg::Welcome(_) => {
                let reason = "a second Welcome".to_owned();
                self.conn
                    .close(CloseCode::Malformed.code().into(), reason.as_bytes());
                return Some(Stop::Failed(ClientError::Protocol(reason)));
            }
        }
        None
    }

    async fn on_state(&mut self, msg: ServerMsg<G::Event>, on_stream: bool) -> Option<Stop> {
        let limit = self.client.config.max_message_bytes;
        let (tick, over, bytes, is_delta) = match msg {
            ServerMsg::StateFull { tick, over, state } => (tick, over, Ok(state), false),
            ServerMsg::StateDelta {
                tick,
                over,
                baseline_age,
                len,
                patch,
            } => {
                let baseline_tick = tick.checked_sub(u64::from(baseline_age));
                let Some((_, base)) = self
                    .baselines
                    .iter()
                    .find(|(t, _)| Some(*t) == baseline_tick)
                else {
                    self.stats.missing_baseline.fetch_add(1, Relaxed);
                    return None;
                };
                let patch = Patch::Xor {
                    len,
                    compressed: patch,
                };
                (tick, over, delta::apply(Some(base), &patch, limit), true)
            }
            _ => return None,
        };
        if self.last_tick.is_some_and(|last| tick <= last) {
            return None; // older than what we have
        }
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(tick, error = %e, "a state delta did not apply; dropped");
                return None;
            }
        };
        let state: G::View = match codec::decode(&bytes) {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(tick, error = %e, "a state did not decode; dropped");
                return None;
            }
        };
        self.stats.states.fetch_add(1, Relaxed);
        if is_delta {
            self.stats.deltas.fetch_add(1, Relaxed);
        }
        if on_stream {
            self.stats.stream_states.fetch_add(1, Relaxed);
        }
        self.last_tick = Some(tick);
        self.baselines.push_back((tick, bytes));
        while self.baselines.len() > BASELINES_KEPT {
            self.baselines.pop_front();
        }
        self.states.send_replace(Some(Arc::new(StateUpdate {
            tick,
            over,
            state,
            received: Instant::now(),
        })));
        if over {
            let tick_over = self.over.map(|(t, _)| t);
            self.over = Some((tick_over.unwrap_or(tick), true));
            if tick_over.is_some() {
                return Some(Stop::Over);
            }
            return None;
        }
        if let Err(stop) = self.write(&ClientMsg::Ack { tick }).await {
            return Some(stop);
        }
        None
    }
}

impl<G: Game> Drop for Driver<G> {
    fn drop(&mut self) {
        // Aborted with the session: close rather than wait for the idle timeout.
        self.conn
            .close(CloseCode::Normal.code().into(), b"client closed");
        self.link.readers.abort_all();
    }
}
