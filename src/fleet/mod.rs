//! Many nodes on one store: a node's part in a fleet.
//!
//! Redis is the arbiter; there is no consensus of our own. Each match is
//! owned by one node through a lease with a fencing epoch
//! ([`crate::store::LeaseStore`]): the engine claims it before hosting the
//! match and every write carries its epoch ([`crate::engine::LeaseSettings`]),
//! so a node that lost a lease can never write that match again. On top of
//! that a [`Fleet`] runs, for one node:
//!
//! - **the directory**: the node registers its id, public QUIC address,
//!   capacity and load, and renews that registration (the heartbeat) every
//!   third of the lease TTL; `tickforge nodes` lists the live ones;
//! - **lease renewal**: every hosted match's lease is renewed on the same
//!   beat (stored batches renew it as well, at no extra cost); a renewal
//!   refused as `Fenced` stops the match here at once;
//! - **takeover** ([`adopt`]): every quarter of the TTL, the node lists the
//!   live matches, finds those without a live lease (their node died) or
//!   whose lease is its own (handed over to it, or its own before a
//!   restart), and restores them: its own at once, free ones up to its
//!   share of the fleet's spare capacity, with bounded concurrency;
//! - **placement** ([`Locator`](crate::net::Locator)): a `Hello` for a
//!   match owned by another live node is redirected there; a match whose
//!   owner stopped answering gets "retry after" the lease's remaining
//!   time; a new match is created here while the node has room, else sent
//!   to the least-loaded node;
//! - **hand-over** ([`Fleet::hand_over_all`], on drain): each match's last
//!   events and a snapshot are stored, its lease transferred to the live
//!   node with the most room (a new epoch), and its players redirected
//!   there with their resume tokens; the new owner continues from the exact
//!   tick.

mod adopt;
mod handover;
mod place;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::metrics as names;
use crate::config::FleetConfig;
use crate::engine::Engine;
use crate::game::Game;
use crate::store::{NodeInfo, Store, StoreError};

pub use adopt::AdoptReport;
pub use handover::HandOverReport;

/// What is told the matches a takeover scan restored.
pub type AdoptHook = Arc<dyn Fn(Vec<String>) + Send + Sync>;

/// Lease renewals in flight at once.
const RENEW_CONCURRENCY: usize = 64;

/// One node's membership of a fleet. Start it with [`Fleet::start`] after
/// the engine, hand it to the QUIC server as its
/// [`Locator`](crate::net::Locator), and [`Fleet::leave`] it last.
pub struct Fleet<G: Game, S: Store> {
    engine: Arc<Engine<G, S>>,
    config: FleetConfig,
    /// The address clients reach this node at.
    addr: String,
    /// Matches being handed over: not hosted, not to be claimed back.
    leaving: Mutex<HashSet<String>>,
    /// Set by a drain: new matches go to other nodes.
    draining: AtomicBool,
    counters: Counters,
    /// Told the matches each takeover scan restored (their players get the
    /// grace window to resume); see [`Fleet::on_adopted`].
    on_adopted: std::sync::OnceLock<AdoptHook>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// What a fleet node did so far.
#[derive(Debug, Default)]
struct Counters {
    takeovers: AtomicU64,
    handovers: AtomicU64,
    fenced: AtomicU64,
    redirects: AtomicU64,
}

/// A fleet node's counters, as [`Fleet::stats`] reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetStats {
    /// Matches restored here from a free, expired or handed-over lease.
    pub takeovers: u64,
    /// Matches handed over to other nodes.
    pub handovers: u64,
    /// Matches stopped here because another node holds their lease.
    pub fenced: u64,
    /// Clients sent to another node.
    pub redirects: u64,
}

impl<G: Game, S: Store> std::fmt::Debug for Fleet<G, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("node", &self.config.node_id)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl<G: Game, S: Store> Fleet<G, S> {
    /// Joins the fleet as node `config.node_id`, reachable at `addr`
    /// (`host:port`): registers in the directory, takes over what is free
    /// or already its own (see [`adopt`]), and starts the heartbeat, lease
    /// renewal and takeover tasks. The engine must own matches by lease
    /// ([`crate::engine::EngineSettings::lease`] for the same node).
    pub async fn start(
        engine: Arc<Engine<G, S>>,
        config: FleetConfig,
        addr: String,
    ) -> Result<(Arc<Self>, AdoptReport), StoreError> {
        if engine.settings().lease.as_ref().map(|l| &l.node) != Some(&config.node_id) {
            return Err(StoreError::Unavailable(format!(
                "the engine does not own matches by lease as node {}",
                config.node_id
            )));
        }
        let fleet = Arc::new(Self {
            engine,
            config,
            addr,
            leaving: Mutex::new(HashSet::new()),
            draining: AtomicBool::new(false),
            counters: Counters::default(),
            on_adopted: std::sync::OnceLock::new(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        fleet.heartbeat().await?;
        let report = fleet.adopt().await?;
        tracing::info!(node = %fleet.config.node_id, addr = %fleet.addr, restored = report.restored,
            took_over = report.took_over, "joined the fleet");
        fleet.tasks.spawn(fleet.clone().run_heartbeat());
        fleet.tasks.spawn(fleet.clone().run_takeover());
        Ok((fleet, report))
    }

    /// Has `hook` told the matches each later takeover scan restores (the
    /// server gives their players the grace window to resume). Set once.
    pub fn on_adopted(&self, hook: AdoptHook) {
        let _ = self.on_adopted.set(hook);
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// The address clients reach this node at.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// What this node did in the fleet so far.
    pub fn stats(&self) -> FleetStats {
        let c = &self.counters;
        FleetStats {
            takeovers: c.takeovers.load(Relaxed),
            handovers: c.handovers.load(Relaxed),
            fenced: c.fenced.load(Relaxed),
            redirects: c.redirects.load(Relaxed),
        }
    }

    /// Stops the fleet tasks and removes the node from the directory (a
    /// clean shutdown, after [`Fleet::hand_over_all`] and the engine's
    /// shutdown). Leases still held run out on their own.
    pub async fn leave(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        let (domain, edition) = self.domain_edition();
        if let Err(error) = self
            .engine
            .store()
            .deregister(domain, edition, &self.config.node_id)
            .await
        {
            tracing::warn!(%error, "not removed from the node directory; the entry expires");
        }
    }

    fn domain_edition(&self) -> (&str, &str) {
        (self.engine.game().domain(), self.engine.edition())
    }

    fn ttl(&self) -> Duration {
        self.config.lease_ttl
    }

    fn hosted(&self) -> u32 {
        u32::try_from(self.engine.stats().matches).unwrap_or(u32::MAX)
    }

    /// Whether the node has room for one more match.
    fn has_room(&self) -> bool {
        !self.draining.load(Relaxed) && self.hosted() < self.config.max_matches
    }

    fn is_leaving(&self, root: &str) -> bool {
        self.leaving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(root)
    }

    /// Registers (or refreshes) this node in the directory with its load.
    async fn heartbeat(&self) -> Result<(), StoreError> {
        let (domain, edition) = self.domain_edition();
        let capacity = if self.draining.load(Relaxed) {
            0
        } else {
            self.config.max_matches
        };
        let info = NodeInfo {
            id: self.config.node_id.clone(),
            quic_addr: self.addr.clone(),
            capacity,
            load: self.hosted(),
        };
        self.engine
            .store()
            .register(domain, edition, &info, self.ttl())
            .await
    }

    /// Every third of the TTL: the heartbeat, then every hosted lease.
    async fn run_heartbeat(self: Arc<Self>) {
        let mut beat = tokio::time::interval(self.ttl() / 3);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                _ = beat.tick() => {}
            }
            if let Err(error) = self.heartbeat().await {
                tracing::warn!(%error, "fleet heartbeat failed; retrying on the next beat");
            }
            self.renew_leases().await;
        }
    }

    /// Renews the lease of every hosted match; a match whose lease moved
    /// on stops here.
    async fn renew_leases(&self) {
        let store = self.engine.store();
        let ttl = self.ttl();
        let leases = self.engine.hosted_leases();
        let renewals = stream::iter(leases)
            .map(|(root, lease)| async move {
                let result = match self.engine.key(&root) {
                    Ok(key) => store.renew(&key, &lease, ttl).await.map(|_| ()),
                    Err(error) => Err(error.into()),
                };
                (root, result)
            })
            .buffer_unordered(RENEW_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        for (root, result) in renewals {
            match result {
                Ok(()) => {}
                Err(error @ StoreError::Fenced { .. }) => {
                    self.counters.fenced.fetch_add(1, Relaxed);
                    metrics::counter!(names::FLEET_FENCED).increment(1);
                    self.engine.relocate(&root, error.to_string());
                }
                Err(error) => {
                    metrics::counter!(names::FLEET_RENEW_FAILURES).increment(1);
                    tracing::warn!(r#match = %root, %error, "lease renewal failed; retrying on the next beat");
                }
            }
        }
    }

    /// Every quarter of the TTL: take over what is free or handed to us.
    async fn run_takeover(self: Arc<Self>) {
        let mut scan = tokio::time::interval(self.ttl() / 4);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        scan.tick().await;
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                _ = scan.tick() => {}
            }
            if self.draining.load(Relaxed) {
                continue;
            }
            if let Err(error) = self.adopt().await {
                tracing::warn!(%error, "takeover scan failed; retrying");
            }
        }
    }
}
