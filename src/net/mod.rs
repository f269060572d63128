//! The network layer: players and spectators reach the engine over QUIC.
//!
//! This module owns everything between a socket and [`crate::engine::Engine`]:
//! the wire protocol, admission, the state stream and the client library.
//! It leaves the simulation, persistence and tick pacing to the engine; a
//! match knows nothing about connections.
//!
//! - [`protocol`]: pure framing and the message enums, versioned by [`protocol::ALPN`].
//!   No I/O; decoding tells "need more bytes", "too large" and "malformed" apart.
//! - [`tickets`]: pure HMAC-SHA256 admission tickets and resume tokens; callers pass `now`.
//! - [`delta`]: pure XOR-and-compress state deltas against a client's acknowledged baseline.
//! - [`limits`]: the per-connection token bucket, pure (time is an argument).
//! - [`placement`]: where a match is served when the server is one node of a fleet.
//! - [`tls`]: certificates from files, or a self-signed development certificate.
//! - [`admission`]: pure admission limits and the headroom sample they read (connections,
//!   tick budget used, scheduling lag); refusals say `ServerFull` with a retry hint.
//! - [`socket`]: binding the endpoint's UDP socket with kernel buffers sized
//!   for bursts from many clients.
//! - [`udp_batch`]: the endpoint's UDP socket that sends many datagrams per
//!   system call across clients (`sendmmsg`), when `batch_sends` asks for it.
//! - [`server`]: one quinn endpoint hosting many matches (listener, per-connection
//!   handler, connection limit, shutdown, then endpoint close and wait-idle).
//! - [`client`]: the async client library (connect, join, commands, states,
//!   events, automatic reconnect with the resume token).
//!
//! The handoff: a client's `Hello` is admitted by ticket (or resume token,
//! or open mode); its commands go to [`Engine::submit`](crate::engine::Engine::submit)
//! with a reply channel and come back as `CommandResult`s; its inputs come
//! as datagrams, go to [`Engine::submit_input`](crate::engine::Engine::submit_input)
//! with the connection's ledger, and are acknowledged inside the next
//! states (a rejection also as an `InputRejected` frame); every
//! `state_every_ticks` ticks the client gets one datagram holding a delta
//! against the last state it acknowledged; the game's significant events
//! ([`Game::is_reliable`](crate::game::Game::is_reliable)) follow on the reliable control stream with
//! their sequence. The wire format is documented in `docs/PROTOCOL.md`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub mod admission;
pub mod client;
pub mod delta;
pub mod limits;
pub mod placement;
pub mod protocol;
pub mod receive_queue;
pub mod server;
mod slots;
pub mod socket;
pub mod tickets;
pub mod tls;
pub mod udp_batch;

pub use placement::{Locator, Placement};
pub use protocol::{
    CloseCode, Role, parse_redirect, parse_retry_after, redirect_reason, retry_reason,
};
pub use server::{NetError, NetStats, Server, serve};
pub use tickets::{ServerSecret, TicketError, mint_ticket};

/// Where the server's TLS certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// A certificate chain and private key from files (PEM or DER).
    Files {
        /// The certificate chain.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
    /// A self-signed certificate for `localhost` and `127.0.0.1`, for
    /// development. It is read from `cert` and `key` when both exist (so a
    /// restarted server keeps the certificate its clients trust) and
    /// generated and written there otherwise. Clients read `cert` (DER).
    Dev {
        /// Where the certificate (DER) is written for clients to trust.
        cert: PathBuf,
        /// Where its private key (PKCS#8 DER) is kept.
        key: PathBuf,
    },
}

impl Default for TlsSource {
    fn default() -> Self {
        TlsSource::Dev {
            cert: PathBuf::from(DEFAULT_DEV_CERT),
            key: PathBuf::from(DEFAULT_DEV_KEY),
        }
    }
}

/// Where the development certificate is written by default.
pub const DEFAULT_DEV_CERT: &str = "target/tickforge-dev-cert.der";
/// Where the development certificate's key is kept by default.
pub const DEFAULT_DEV_KEY: &str = "target/tickforge-dev-key.der";

/// A test hook: the server drops this share of its outgoing state
/// datagrams, chosen by a seeded generator. Reliable traffic is untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatagramLoss {
    /// Dropped per thousand datagrams (50 = 5 %).
    pub per_mille: u16,
    /// Seed of the generator (each connection derives its own from it).
    pub seed: u64,
}

/// How the network layer runs; the `[net]` table of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// UDP address the QUIC endpoint binds.
    pub listen: SocketAddr,
    /// The server certificate.
    pub tls: TlsSource,
    /// The HMAC secret for tickets and resume tokens. `None` draws a random
    /// one at start: then no ticket minted elsewhere is valid and resume
    /// tokens do not survive a restart (the server logs a warning).
    pub secret: Option<ServerSecret>,
    /// How long a dropped player's slot is kept for it to resume.
    pub grace: Duration,
    /// A state goes to each client every this many ticks.
    pub state_every_ticks: u64,
    /// Largest frame accepted on a reliable stream, in bytes.
    pub max_frame_bytes: usize,
    /// Commands one connection may send per second (burst of the same size).
    pub commands_per_second: u32,
    /// Admit `Hello`s without a ticket and create matches on demand (demo only).
    pub open_mode: bool,
    /// Connections served at once; further ones are refused at once with
    /// [`CloseCode::ServerFull`] and [`full_retry_after`](Self::full_retry_after).
    pub max_connections: usize,
    /// New connections are refused with [`CloseCode::ServerFull`] while the
    /// process uses more than this percentage of the cores it may run on
    /// (counting the time its threads wait for a CPU), or its runtime's
    /// workers are busy more than this share of the time,
    /// at the peak of the last second (0, the default, = no limit; 85 suits
    /// a node with its cores to itself). Any headroom limit also ramps joins
    /// and keeps a ceiling (see [`admission`]).
    pub admit_max_cpu_percent: u32,
    /// New connections are refused with [`CloseCode::ServerFull`] while the
    /// engine's shards spend more than this percentage of their time
    /// ticking (0, the default, = no limit; 90 suits a release build).
    /// Off by default: on a machine shared with other work (tests, CI) the
    /// measure says little about the node's own headroom.
    pub admit_max_tick_load_percent: u32,
    /// New connections are refused with [`CloseCode::ServerFull`] while the
    /// runtime's timers fire later than this on average: the server is
    /// behind on its sends (zero, the default, = no limit; 50 ms suits a
    /// release build at 30 Hz).
    pub admit_max_lag: Duration,
    /// New connections are refused with [`CloseCode::ServerFull`] while
    /// the states of a tick leave later than this after it, at the 99th
    /// percentile of the last second (zero, the default, = no limit; a few
    /// milliseconds keep what the server adds to its players' wait small).
    pub admit_max_send_delay: Duration,
    /// New connections are refused with [`CloseCode::ServerFull`] while
    /// more than this many bytes wait in the QUIC socket's receive buffer
    /// (the highest of the last second's samples; 0, the default, = no
    /// limit; Linux only): the node reads its players' inputs later than
    /// they come.
    pub admit_max_receive_queue_bytes: u64,
    /// The shortest wait a [`CloseCode::ServerFull`] refusal asks for; it
    /// grows while many are refused ([`admission::RetryPacer`]).
    pub full_retry_after: Duration,
    /// How long a new connection has to send its `Hello`.
    pub hello_timeout: Duration,
    /// A connection silent for this long is dropped (clients keep it alive).
    pub idle_timeout: Duration,
    /// How long one reliable write (a control frame, or a state on its own
    /// stream) may wait for the client to make room; a client that does
    /// not read for this long is closed with [`CloseCode::SlowReader`].
    pub write_timeout: Duration,
    /// Test hook: drop some outgoing state datagrams. `None` in production.
    pub datagram_loss: Option<DatagramLoss>,
    /// Send the endpoint's datagrams many per system call, across clients
    /// (`sendmmsg`, Linux only; see [`udp_batch`]). Elsewhere the stock
    /// socket is used, with a warning.
    pub batch_sends: bool,
    /// Kernel receive and send buffers of the endpoint's UDP socket, each,
    /// in bytes (0 = the kernel's default; see [`socket`]).
    pub socket_buffer_bytes: usize,
}

impl NetConfig {
    /// How long the server waits for a QUIC handshake to complete. A stalled
    /// handshake ends earlier, at quinn's idle timeout; this bounds one that
    /// trickles. It is twice the idle timeout, longer than the client
    /// library waits (its own idle timeout, 10 s by default), so a handshake
    /// slowed by a loaded machine (lost packets wait for retransmit timers)
    /// is not abandoned while its client still waits: abandoning it would
    /// close it with a bare transport error, before the server could say
    /// `ServerFull` or anything else.
    pub fn handshake_limit(&self) -> Duration {
        (self.idle_timeout * 2).max(self.hello_timeout)
    }

    /// The limits new connections are admitted under.
    pub fn admission(&self) -> admission::AdmissionLimits {
        admission::AdmissionLimits {
            max_connections: self.max_connections.max(1),
            max_cpu_percent: self.admit_max_cpu_percent,
            max_tick_load_percent: self.admit_max_tick_load_percent,
            max_lag: self.admit_max_lag,
            max_send_delay: self.admit_max_send_delay,
            max_receive_queue_bytes: self.admit_max_receive_queue_bytes,
            retry_after: self.full_retry_after,
        }
    }
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            tls: TlsSource::default(),
            secret: None,
            grace: Duration::from_secs(30),
            state_every_ticks: 1,
            max_frame_bytes: protocol::DEFAULT_MAX_FRAME_BYTES,
            commands_per_second: 120,
            open_mode: false,
            max_connections: 10_000,
            admit_max_cpu_percent: 0,
            admit_max_tick_load_percent: 0,
            admit_max_lag: Duration::ZERO,
            admit_max_send_delay: Duration::ZERO,
            admit_max_receive_queue_bytes: 0,
            full_retry_after: Duration::from_secs(2),
            hello_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(2),
            datagram_loss: None,
            batch_sends: false,
            socket_buffer_bytes: socket::DEFAULT_SOCKET_BUFFER_BYTES,
        }
    }
}
