//! Leases of the matches an engine hosts, for a node of a fleet
//! ([`LeaseSettings`](super::LeaseSettings)): claiming before hosting,
//! stopping a match whose lease moved on, and handing a match over.
//!
//! Policy (which matches to claim, when to renew, whom to hand over to)
//! belongs to the caller ([`crate::fleet`]); this is the engine's side.

use std::sync::Arc;

use tokio::sync::{oneshot, watch};

use super::shard::ShardMsg;
use super::{Engine, EngineError, MatchUpdate};
use crate::game::{Game, Tick};
use crate::store::{Lease, MatchKey, Store};

/// A match this engine stopped hosting so another node can continue it
/// ([`Engine::hand_over`]): its last events and a snapshot at its last
/// tick are stored under `epoch`.
///
/// Its subscribers stay connected while this value lives, and see the feed
/// close when it is dropped: drop it once the lease is handed over, so
/// they reconnect straight to the new owner.
#[derive(Debug)]
pub struct HandedOver<S> {
    /// The match.
    pub key: MatchKey,
    /// The tick of the stored snapshot (the last tick run here).
    pub tick: Tick,
    /// The sequence after the last stored event.
    pub next_sequence: u64,
    /// The lease epoch it was written under.
    pub epoch: u64,
    pub(crate) _updates: Arc<watch::Sender<Option<Arc<MatchUpdate<S>>>>>,
}

impl<G: Game, S: Store> Engine<G, S> {
    /// Claims the lease of `key` when the engine owns matches by lease.
    pub(super) async fn claim(&self, key: &MatchKey) -> Result<Option<Lease>, EngineError> {
        let Some(lease) = &self.settings.lease else {
            return Ok(None);
        };
        Ok(Some(self.store.claim(key, &lease.node, lease.ttl).await?))
    }

    /// Releases a lease claimed for a match that is not hosted after all
    /// (best effort: it expires anyway).
    pub(super) async fn give_up(&self, key: &MatchKey, lease: Option<Lease>) {
        if let Some(lease) = lease
            && let Err(error) = self.store.release(key, &lease).await
        {
            tracing::debug!(%key, %error, "lease not released; it will expire");
        }
    }

    /// This node's lease at `epoch` (for release and renewal calls).
    pub(super) fn lease_of(&self, epoch: u64) -> Lease {
        Lease {
            node: self
                .settings
                .lease
                .as_ref()
                .map(|l| l.node.clone())
                .unwrap_or_default(),
            epoch,
            expires_in: std::time::Duration::ZERO,
        }
    }

    /// The hosted matches with the lease epoch each is written under
    /// (empty without leases).
    pub fn hosted_leases(&self) -> Vec<(String, Lease)> {
        self.routes
            .iter()
            .filter_map(|route| Some((route.key().to_string(), self.lease_of(route.epoch?))))
            .collect()
    }

    /// Stops hosting match `root` at once, without writing anything more:
    /// its lease moved to another node (found out by a refused write or
    /// renewal). Its queued commands are refused with `reason` and its
    /// subscribers see the feed close.
    pub fn relocate(&self, root: &str, reason: String) {
        let Some(shard) = self.routes.get(root).map(|r| r.shard) else {
            return;
        };
        let msg = ShardMsg::Relocate {
            root: root.into(),
            reason,
        };
        // A full or closed inbox: the next refused write relocates it.
        let _ = self.shards[shard].inbox.try_send(msg);
    }

    /// Stops hosting match `root` after its current tick, storing its last
    /// events and a snapshot at that tick under its lease, so that another
    /// node can continue from exactly there. Returns once both are stored.
    /// The lease itself is left to the caller (transfer or release it).
    pub async fn hand_over(&self, root: &str) -> Result<HandedOver<G::State>, EngineError> {
        let shard = self
            .routes
            .get(root)
            .map(|r| r.shard)
            .ok_or_else(|| EngineError::UnknownMatch(root.to_owned()))?;
        let (done, handed) = oneshot::channel();
        let msg = ShardMsg::HandOver {
            root: root.into(),
            done,
        };
        self.shards[shard]
            .inbox
            .send(msg)
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        handed.await.map_err(|_| EngineError::ShuttingDown)?
    }
}
