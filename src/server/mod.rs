//! One node of tickforge for any game: everything `tickforge serve` does
//! behind one entry point generic over the [`Game`].
//!
//! [`Server::builder`] takes the game; [`ServerBuilder::start`] opens the
//! store the configuration names, starts the engine's shards, restores
//! every live match of the game's domain and edition, and binds the QUIC
//! endpoint; the admin HTTP listener (`[admin] listen`: metrics,
//! `/healthz`, `/readyz`, see [`crate::admin`]) is up before the restore,
//! so readiness says "not restored" until it is done, and says "draining"
//! during a drain. [`Server::run`] then serves until SIGTERM or SIGINT and
//! drains: it stops admitting, tells connected clients to reconnect with
//! their resume tokens ([`CloseCode::ServerShutdown`](crate::net::CloseCode)),
//! finishes the current tick, snapshots every live match and flushes every
//! queued write, all within `[server] drain_seconds`. A second signal gives
//! up at once and says what was not stored.
//!
//! A game's own binary is a few lines:
//!
//! ```no_run
//! # use tickforge::arena::Arena as MyGame;
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let config = tickforge::config::Config::load(None)?;
//!     tickforge::server::Server::builder(MyGame::default())
//!         .config(config)
//!         .start()
//!         .await?
//!         .run()
//!         .await?;
//!     Ok(())
//! }
//! ```
//!
//! **One node, or a fleet.** Without `[fleet]` a node restores every live
//! match of its domain and edition when it starts and writes without
//! leases: run one such node per store and edition. With `[fleet]` (a node
//! id) many nodes share one store: each match is owned through a lease,
//! nodes redirect players to a match's owner, take over the matches of a
//! node that died, and a drain hands matches over instead of only
//! snapshotting them (see [`crate::fleet`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::admin::{AdminError, Health};
use crate::config::{Config, FleetConfig};
use crate::engine::{Engine, EngineError, EngineStats};
use crate::fleet::Fleet;
use crate::game::Game;
use crate::net::server::{NetError, NetStats};
use crate::net::tickets::ServerSecret;
use crate::store::{AnyStore, StoreError};

/// How often a running node logs its status.
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// How often a drain that waits for the store says so.
const DRAIN_REPORT_EVERY: Duration = Duration::from_secs(5);

/// Why a node could not start or did not drain cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration (defaults plus environment) is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The store named by the configuration could not be opened.
    #[error("opening the store: {0}")]
    Store(#[from] StoreError),
    /// Listing the live matches to restore failed.
    #[error("restoring live matches: {0}")]
    Restore(#[from] EngineError),
    /// Joining the fleet (`[fleet]`) failed: the directory or the lease
    /// scan could not be read.
    #[error("joining the fleet: {0}")]
    Fleet(StoreError),
    /// `[fleet]` has no public address and the QUIC listener's is a
    /// wildcard that clients cannot be redirected to.
    #[error(
        "fleet.public_addr (or TICKFORGE_PUBLIC_ADDR) is required: net.listen {0} is not an address clients can reach"
    )]
    NoPublicAddr(SocketAddr),
    /// The QUIC endpoint could not be bound.
    #[error("starting the QUIC server: {0}")]
    Net(#[from] NetError),
    /// The admin HTTP listener could not start.
    #[error("starting the admin HTTP listener: {0}")]
    Admin(#[from] AdminError),
    /// The signal handlers could not be installed.
    #[error("listening for signals: {0}")]
    Signals(std::io::Error),
    /// The drain deadline passed before every write was stored.
    #[error(
        "drain deadline of {deadline:?} passed with {unstored_events} events \
         ({backlog_jobs} tick jobs) not stored; restore resumes from the last stored tick"
    )]
    DrainDeadline {
        /// `[server] drain_seconds`.
        deadline: Duration,
        /// Events produced but not acknowledged by the store.
        unstored_events: u64,
        /// Tick jobs still queued for the store.
        backlog_jobs: u64,
    },
    /// A second signal stopped the drain.
    #[error(
        "second signal: stopped draining with {unstored_events} events ({backlog_jobs} tick jobs) \
         not stored; restore resumes from the last stored tick"
    )]
    Interrupted {
        /// Events produced but not acknowledged by the store.
        unstored_events: u64,
        /// Tick jobs still queued for the store.
        backlog_jobs: u64,
    },
}

/// What a drain did.
#[derive(Debug, Clone)]
pub struct DrainReport {
    /// Matches hosted when the drain started (each got a final snapshot).
    pub matches: usize,
    /// How long the drain took.
    pub took: Duration,
    /// Engine counters after the drain.
    pub stats: EngineStats,
}

/// Builds a [`Server`] for game `G`.
#[derive(Debug)]
pub struct ServerBuilder<G: Game> {
    game: G,
    config: Option<Config>,
    adopt_restored: bool,
}

impl<G: Game> ServerBuilder<G> {
    /// Uses `config` (default: the built-in defaults plus the environment,
    /// as [`Config::load`] with no file gives).
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Whether the players of the matches restored at start get the grace
    /// window to resume (their players were network clients of the node
    /// before; default). Turn it off when something else plays them (the
    /// arena's `serve --bots`).
    pub fn adopt_restored_players(mut self, adopt: bool) -> Self {
        self.adopt_restored = adopt;
        self
    }

    /// Opens the store, starts the engine, restores every live match of
    /// the game and binds the QUIC endpoint. Must run inside a tokio
    /// runtime; the node serves until [`Server::run`] or [`Server::drain`].
    pub async fn start(self) -> Result<Server<G>, ServerError> {
        let config = match self.config {
            Some(config) => config,
            None => Config::load(None)?,
        };
        // Listening first: a signal during the start drains instead of
        // killing the process.
        let signals = Signals::new().map_err(ServerError::Signals)?;
        let store = AnyStore::open(&config.storage).await?;
        let engine = Arc::new(Engine::start(
            self.game,
            store,
            config.engine.clone(),
            &config.edition,
        ));
        let health = Health::new(&engine);
        let admin = Admin::start(&config, &health).await?;
        let mut quic = crate::net::server::Server::bind(engine.clone(), config.net.clone())?;
        let quic_addr = quic.local_addr();
        let (restored, replayed_events, failed, fleet) = match &config.fleet {
            None => {
                let report = engine.restore_all().await?;
                (
                    report.restored,
                    report.events_replayed,
                    report.failed.len(),
                    None,
                )
            }
            Some(fleet_config) => {
                let addr = public_addr(fleet_config, quic_addr)?;
                let (fleet, report) = Fleet::start(engine.clone(), fleet_config.clone(), addr)
                    .await
                    .map_err(ServerError::Fleet)?;
                quic = quic.with_locator(fleet.clone());
                (
                    report.restored,
                    report.events_replayed,
                    report.failed,
                    Some(fleet),
                )
            }
        };
        health.set_restored();
        tracing::info!(
            domain = engine.game().domain(),
            edition = %config.edition,
            restored,
            replayed_events,
            failed,
            shards = config.engine.shards,
            tick_hz = config.engine.tick_hz,
            fleet_node = config.fleet.as_ref().map(|f| f.node_id.as_str()),
            "engine running; live matches restored"
        );
        let certificate = quic.certificate().clone();
        let secret = quic.secret().clone();
        let net_stats = quic.stats();
        if self.adopt_restored {
            quic.adopt_players_of(engine.hosted_matches());
            if let Some(fleet) = &fleet {
                fleet.on_adopted(quic.player_adopter());
            }
        }
        let (net_stop, stop_rx) = oneshot::channel::<()>();
        let net_task = tokio::spawn(quic.run(async {
            let _ = stop_rx.await;
        }));
        tracing::info!(listen = %quic_addr, open_mode = config.net.open_mode, "accepting players over QUIC");
        Ok(Server {
            engine,
            fleet,
            config,
            quic_addr,
            certificate,
            secret,
            net_stats,
            net_stop,
            net_task,
            restored,
            health,
            admin,
            signals: Some(signals),
        })
    }
}

/// The admin HTTP listener of a node, stopped when this is dropped.
#[derive(Debug, Default)]
struct Admin {
    addr: Option<SocketAddr>,
    task: Option<JoinHandle<()>>,
    stop: Option<DropGuard>,
}

impl Admin {
    async fn start(config: &Config, health: &Health) -> Result<Self, AdminError> {
        let Some(listen) = config.admin.listen else {
            return Ok(Self::default());
        };
        let stop = CancellationToken::new();
        let (addr, task) =
            crate::admin::spawn(listen, health.clone(), stop.clone().cancelled_owned()).await?;
        tracing::info!(listen = %addr, "admin HTTP: /metrics, /healthz, /readyz");
        Ok(Self {
            addr: Some(addr),
            task: Some(task),
            stop: Some(stop.drop_guard()),
        })
    }

    /// Stops the listener and waits for it.
    async fn stop(mut self) {
        drop(self.stop.take());
        if let Some(task) = self.task.take()
            && let Err(error) = task.await
        {
            tracing::error!(%error, "the admin HTTP task failed");
        }
    }
}

/// A running node: the engine, its store and the QUIC endpoint.
pub struct Server<G: Game> {
    engine: Arc<Engine<G, AnyStore>>,
    /// This node's part in a fleet (`[fleet]`).
    fleet: Option<Arc<Fleet<G, AnyStore>>>,
    config: Config,
    quic_addr: SocketAddr,
    certificate: CertificateDer<'static>,
    secret: ServerSecret,
    net_stats: Arc<NetStats>,
    net_stop: oneshot::Sender<()>,
    net_task: JoinHandle<()>,
    restored: usize,
    health: Health,
    admin: Admin,
    /// Installed at start; taken by `run`.
    signals: Option<Signals>,
}

impl<G: Game> std::fmt::Debug for Server<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("quic_addr", &self.quic_addr)
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

impl<G: Game> Server<G> {
    /// Starts building a node for `game`.
    pub fn builder(game: G) -> ServerBuilder<G> {
        ServerBuilder {
            game,
            config: None,
            adopt_restored: true,
        }
    }

    /// The engine (create matches, submit commands, follow matches).
    pub fn engine(&self) -> &Arc<Engine<G, AnyStore>> {
        &self.engine
    }

    /// This node's part in a fleet, when `[fleet]` is configured.
    pub fn fleet(&self) -> Option<&Arc<Fleet<G, AnyStore>>> {
        self.fleet.as_ref()
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The UDP address the QUIC endpoint is bound to.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The server's leaf certificate (what clients of a development
    /// certificate trust).
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// The secret tickets and resume tokens are checked with.
    pub fn secret(&self) -> &ServerSecret {
        &self.secret
    }

    /// The network counters.
    pub fn net_stats(&self) -> &Arc<NetStats> {
        &self.net_stats
    }

    /// How many live matches were restored at start.
    pub fn restored(&self) -> usize {
        self.restored
    }

    /// Where the admin HTTP listener is bound (`None` when `[admin] listen` is off).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.addr
    }

    /// The node's liveness and readiness, as `/healthz` and `/readyz` report them.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Serves until SIGTERM or SIGINT, logging status every 10 s, then
    /// [`drain`](Self::drain)s; a second signal during the drain gives up
    /// waiting for the store ([`ServerError::Interrupted`]).
    pub async fn run(mut self) -> Result<DrainReport, ServerError> {
        let mut signals = match self.signals.take() {
            Some(signals) => signals,
            None => Signals::new().map_err(ServerError::Signals)?,
        };
        let mut status = tokio::time::interval(STATUS_EVERY);
        status.tick().await;
        loop {
            tokio::select! {
                _ = status.tick() => log_status(&self.engine.stats()),
                signal = signals.next() => {
                    tracing::info!(signal, deadline = ?self.config.server.drain,
                        "draining: closing connections, final snapshots, flushing writes (signal again to give up)");
                    break;
                }
            }
        }
        let engine = self.engine.clone();
        tokio::select! {
            report = self.drain() => report,
            signal = signals.next() => {
                let stats = engine.stats();
                tracing::error!(signal, "second signal: exiting without waiting for the store");
                Err(ServerError::Interrupted {
                    unstored_events: stats.events.saturating_sub(stats.persisted_events),
                    backlog_jobs: stats.backlog_jobs,
                })
            }
        }
    }

    /// Drains the node: stops admitting and closes every connection with
    /// a "reconnect with your resume token" close code, then stops every
    /// shard after its current tick with a final snapshot of each live
    /// match and every queued write flushed, within `[server]
    /// drain_seconds`.
    pub async fn drain(self) -> Result<DrainReport, ServerError> {
        let Server {
            engine,
            fleet,
            config,
            net_stop,
            net_task,
            health,
            admin,
            ..
        } = self;
        // `/readyz` says "draining" until the drain is over.
        health.set_draining();
        let started = tokio::time::Instant::now();
        let deadline = config.server.drain;
        let matches = engine.hosted_matches().len();
        let drained = tokio::time::timeout(deadline, async {
            // In a fleet, the matches move to other nodes first (their
            // players follow); whatever stays gets its final snapshot below.
            // Half the deadline at most, so the rest still gets its snapshots.
            if let Some(fleet) = &fleet {
                fleet.hand_over_all(deadline / 2).await;
            }
            let _ = net_stop.send(());
            if let Err(error) = net_task.await {
                tracing::error!(%error, "the QUIC server task failed");
            }
            engine.shutdown_reporting(DRAIN_REPORT_EVERY).await;
        })
        .await;
        if let Some(fleet) = &fleet {
            fleet.leave().await;
        }
        admin.stop().await;
        let stats = engine.stats();
        match drained {
            Ok(()) => {
                tracing::info!(matches, took = ?started.elapsed(), events = stats.persisted_events, "drained");
                Ok(DrainReport {
                    matches,
                    took: started.elapsed(),
                    stats,
                })
            }
            Err(_) => Err(ServerError::DrainDeadline {
                deadline,
                unstored_events: stats.events.saturating_sub(stats.persisted_events),
                backlog_jobs: stats.backlog_jobs,
            }),
        }
    }
}

/// Where clients reach this node: `[fleet] public_addr`, else the QUIC
/// listener's own address when it is a specific one.
fn public_addr(fleet: &FleetConfig, listen: SocketAddr) -> Result<String, ServerError> {
    match &fleet.public_addr {
        Some(addr) => Ok(addr.clone()),
        None if listen.ip().is_unspecified() => Err(ServerError::NoPublicAddr(listen)),
        None => Ok(listen.to_string()),
    }
}

fn log_status(s: &EngineStats) {
    tracing::info!(
        matches = s.matches,
        ticks = s.ticks,
        late_ticks = s.late_ticks,
        events = s.events,
        persisted = s.persisted_events,
        p99_tick_ms = s.tick_ms(0.99),
        backlog = s.backlog_jobs,
        repaired = s.repaired_events,
        trimmed = s.trimmed_events,
        failed = s.failed_matches,
        "status"
    );
}

/// SIGTERM and SIGINT (Ctrl-C), as one stream of signal names.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
