//! Leases and the node directory of the memory store, on a monotonic clock
//! (`std::time::Instant`): the same rules as the Redis scripts, for one
//! process.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::MemoryStore;
use crate::store::keys::check_name;
use crate::store::lease::{check_addr, check_node, ttl_millis};
use crate::store::{Lease, LeaseStore, MatchKey, NodeDirectory, NodeInfo, StoreError};

/// The stored lease of one match. Kept after expiry and release, so that
/// its epoch keeps growing.
#[derive(Debug)]
struct LeaseRecord {
    /// Empty when released.
    node: String,
    epoch: u64,
    expires: Instant,
}

impl LeaseRecord {
    fn is_live(&self, now: Instant) -> bool {
        !self.node.is_empty() && self.expires > now
    }

    fn answer(&self, now: Instant) -> Lease {
        Lease {
            node: self.node.clone(),
            epoch: self.epoch,
            expires_in: self.expires.saturating_duration_since(now),
        }
    }
}

/// Leases by match and registrations by domain and edition.
#[derive(Debug, Default)]
pub(super) struct Leases {
    leases: HashMap<MatchKey, LeaseRecord>,
    /// (domain, edition) -> node id -> (info, registration expiry).
    nodes: BTreeMap<(String, String), BTreeMap<String, (NodeInfo, Instant)>>,
}

impl Leases {
    /// Refuses a write under `epoch` unless `key`'s lease is at it.
    pub(super) fn check_fence(&self, key: &MatchKey, epoch: u64) -> Result<(), StoreError> {
        let current = self.leases.get(key).map_or(0, |l| l.epoch);
        if self.leases.contains_key(key) && current == epoch {
            Ok(())
        } else {
            Err(StoreError::Fenced {
                key: key.to_string(),
                epoch,
                current,
            })
        }
    }

    /// Extends `key`'s lease, unless released, to `ttl` from now (an
    /// accepted fenced batch's renewal).
    pub(super) fn extend(&mut self, key: &MatchKey, ttl: Duration) {
        if let Some(record) = self.leases.get_mut(key)
            && !record.node.is_empty()
        {
            record.expires = Instant::now() + Duration::from_millis(ttl_millis(ttl));
        }
    }

    /// Sets `key`'s lease to `node` at `epoch` for `ttl` from `now`.
    fn hold(
        &mut self,
        key: &MatchKey,
        node: &str,
        epoch: u64,
        ttl: Duration,
        now: Instant,
    ) -> Lease {
        let record = LeaseRecord {
            node: node.to_owned(),
            epoch,
            expires: now + Duration::from_millis(ttl_millis(ttl)),
        };
        let lease = record.answer(now);
        self.leases.insert(key.clone(), record);
        lease
    }

    /// The record of `key` if `lease` still holds it (expired or not),
    /// else the [`StoreError::Fenced`] to answer.
    fn held(&self, key: &MatchKey, lease: &Lease) -> Result<&LeaseRecord, StoreError> {
        match self.leases.get(key) {
            Some(record) if record.epoch == lease.epoch && record.node == lease.node => Ok(record),
            other => Err(StoreError::Fenced {
                key: key.to_string(),
                epoch: lease.epoch,
                current: other.map_or(0, |r| r.epoch),
            }),
        }
    }
}

impl LeaseStore for MemoryStore {
    async fn claim(&self, key: &MatchKey, node: &str, ttl: Duration) -> Result<Lease, StoreError> {
        check_node(node)?;
        let now = Instant::now();
        let mut leases = self.lock_leases();
        let (epoch, live_owner) = match leases.leases.get(key) {
            Some(record) if record.is_live(now) => (record.epoch, Some(record)),
            Some(record) => (record.epoch + 1, None),
            None => (1, None),
        };
        match live_owner {
            Some(record) if record.node != node => Err(StoreError::Owned {
                key: key.to_string(),
                owner: record.node.clone(),
                epoch: record.epoch,
                expires_in: record.expires.saturating_duration_since(now),
            }),
            _ => Ok(leases.hold(key, node, epoch, ttl, now)),
        }
    }

    async fn renew(
        &self,
        key: &MatchKey,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let now = Instant::now();
        let mut leases = self.lock_leases();
        leases.held(key, lease)?;
        Ok(leases.hold(key, &lease.node, lease.epoch, ttl, now))
    }

    async fn release(&self, key: &MatchKey, lease: &Lease) -> Result<(), StoreError> {
        let mut leases = self.lock_leases();
        match leases.leases.get_mut(key) {
            Some(record) if record.epoch == lease.epoch && record.node.is_empty() => Ok(()),
            Some(record) if record.epoch == lease.epoch && record.node == lease.node => {
                record.node.clear();
                Ok(())
            }
            _ => leases.held(key, lease).map(|_| ()),
        }
    }

    async fn transfer(
        &self,
        key: &MatchKey,
        lease: &Lease,
        to: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        check_node(to)?;
        let now = Instant::now();
        let mut leases = self.lock_leases();
        let epoch = leases.held(key, lease)?.epoch + 1;
        Ok(leases.hold(key, to, epoch, ttl, now))
    }

    async fn lease(&self, key: &MatchKey) -> Result<Option<Lease>, StoreError> {
        let now = Instant::now();
        Ok(self
            .lock_leases()
            .leases
            .get(key)
            .filter(|record| record.is_live(now))
            .map(|record| record.answer(now)))
    }
}

/// The directory's key: checked domain and edition.
fn directory(domain: &str, edition: &str) -> Result<(String, String), StoreError> {
    check_name("domain", domain)?;
    check_name("edition", edition)?;
    Ok((domain.to_owned(), edition.to_owned()))
}

impl NodeDirectory for MemoryStore {
    async fn register(
        &self,
        domain: &str,
        edition: &str,
        node: &NodeInfo,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let directory = directory(domain, edition)?;
        check_node(&node.id)?;
        check_addr(&node.quic_addr)?;
        let expires = Instant::now() + Duration::from_millis(ttl_millis(ttl));
        self.lock_leases()
            .nodes
            .entry(directory)
            .or_default()
            .insert(node.id.clone(), (node.clone(), expires));
        Ok(())
    }

    async fn nodes(&self, domain: &str, edition: &str) -> Result<Vec<NodeInfo>, StoreError> {
        let directory = directory(domain, edition)?;
        let now = Instant::now();
        let mut leases = self.lock_leases();
        let Some(nodes) = leases.nodes.get_mut(&directory) else {
            return Ok(Vec::new());
        };
        nodes.retain(|_, (_, expires)| *expires > now);
        Ok(nodes.values().map(|(info, _)| info.clone()).collect())
    }

    async fn deregister(
        &self,
        domain: &str,
        edition: &str,
        node_id: &str,
    ) -> Result<bool, StoreError> {
        let directory = directory(domain, edition)?;
        check_node(node_id)?;
        Ok(self
            .lock_leases()
            .nodes
            .get_mut(&directory)
            .and_then(|nodes| nodes.remove(node_id))
            .is_some())
    }
}
