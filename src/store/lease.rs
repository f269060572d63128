//! Leases with fencing, and the node directory: the storage foundation for
//! running many tickforge nodes against one store.
//!
//! A **lease** says which node may write a match: a node id, an *epoch* and
//! an expiry. The epoch of a match only ever grows: each claim of a free or
//! expired lease and each hand-over ([`LeaseStore::transfer`]) takes the next
//! one, and the store never gives the same epoch twice, even after a lease
//! expired or was released. Expiry is measured by the store's clock (Redis's
//! `TIME` inside the scripts; a monotonic clock in the memory store), so the
//! nodes' clocks do not matter.
//!
//! **Fencing** makes a lease safe when a node pauses past its expiry (a GC
//! pause, SIGSTOP, a partition): every write of a match may carry the
//! writer's epoch ([`AppendBatch::epoch`](super::AppendBatch::epoch),
//! [`SnapshotStore::save_fenced_snapshot`](super::SnapshotStore::save_fenced_snapshot),
//! [`EventStore::trim_fenced`](super::EventStore::trim_fenced)), and the
//! store refuses it, atomically with the write, as [`StoreError::Fenced`]
//! unless the match's lease is at exactly that epoch. A node that lost its
//! lease therefore cannot write again, whatever it believes. Writes
//! without an epoch are not checked: a single node owning every match needs
//! no leases, and that stays the default.
//!
//! The **node directory** ([`NodeDirectory`]) lists the live nodes of a
//! domain and edition with their public QUIC address, capacity and load; a
//! node stays listed while it renews its registration (a heartbeat) and is
//! never listed once its registration expired.
//!
//! This module defines the contract; [`MemoryStore`](super::MemoryStore),
//! [`RedisStore`](super::RedisStore) and [`AnyStore`](super::AnyStore)
//! implement it. It leaves policy (when to claim, renew, hand over, how
//! long a TTL is) to its callers.

use std::future::Future;
use std::time::Duration;

use super::{MatchKey, StoreError};

/// The lease of one match, as the store answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The node holding it.
    pub node: String,
    /// The fencing token: writes carrying another epoch are refused.
    pub epoch: u64,
    /// Time left before it expires, measured by the store when it answered
    /// (the caller's clock started later: renew well before this runs out).
    pub expires_in: Duration,
}

/// Ownership of matches by nodes, with fencing epochs.
///
/// `node` ids follow the rules of key names (ASCII letters, digits, `-`,
/// `_`, `.`; at most 64 bytes). A `ttl` is rounded up to whole
/// milliseconds, at least one.
pub trait LeaseStore: Send + Sync + 'static {
    /// Takes the lease of `key` for `node`, atomically: a free or expired
    /// lease is taken with the next epoch; a live lease of `node` is renewed
    /// with its epoch; a live lease of another node is
    /// [`StoreError::Owned`].
    fn claim(
        &self,
        key: &MatchKey,
        node: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Lease, StoreError>> + Send;

    /// Extends `lease` to `ttl` from now, keeping its epoch. It may have
    /// expired, as long as nobody claimed the match since; otherwise (or
    /// after a release) [`StoreError::Fenced`].
    fn renew(
        &self,
        key: &MatchKey,
        lease: &Lease,
        ttl: Duration,
    ) -> impl Future<Output = Result<Lease, StoreError>> + Send;

    /// Gives `lease` up: the match is free to claim at once (with the next
    /// epoch). Releasing again is a success; a lease that moved on is
    /// [`StoreError::Fenced`].
    fn release(
        &self,
        key: &MatchKey,
        lease: &Lease,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Hands `lease` over to `to` atomically, with the next epoch and `ttl`
    /// (live migration): the old holder's writes are fenced from then on.
    /// [`StoreError::Fenced`] if `lease` is no longer held.
    fn transfer(
        &self,
        key: &MatchKey,
        lease: &Lease,
        to: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Lease, StoreError>> + Send;

    /// The live lease of `key`, `None` when it is free (never claimed,
    /// expired or released).
    fn lease(
        &self,
        key: &MatchKey,
    ) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send;
}

/// A node as listed in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Stable per host (the config's node id, or a pod name); the rules of
    /// key names apply.
    pub id: String,
    /// Where clients reach the node's QUIC listener (`host:port`; no tab or
    /// line break).
    pub quic_addr: String,
    /// How many matches the node may host.
    pub capacity: u32,
    /// How many it hosts now.
    pub load: u32,
}

/// The live nodes of a domain and edition.
pub trait NodeDirectory: Send + Sync + 'static {
    /// Registers `node` (or refreshes it) until `ttl` from now, by the
    /// store's clock: a heartbeat, repeated well within `ttl`.
    fn register(
        &self,
        domain: &str,
        edition: &str,
        node: &NodeInfo,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The nodes whose registration has not expired, sorted by id, in one
    /// round trip.
    fn nodes(
        &self,
        domain: &str,
        edition: &str,
    ) -> impl Future<Output = Result<Vec<NodeInfo>, StoreError>> + Send;

    /// Removes `node_id` from the directory (a clean shutdown). Returns
    /// whether it was registered (an expired registration not yet pruned
    /// counts).
    fn deregister(
        &self,
        domain: &str,
        edition: &str,
        node_id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// `ttl` in whole milliseconds, rounded up, at least 1 and below 2^53.
pub(crate) fn ttl_millis(ttl: Duration) -> u64 {
    let nanos = ttl.as_nanos();
    let millis = nanos.div_ceil(1_000_000).max(1);
    u64::try_from(millis).unwrap_or(u64::MAX).min(1 << 52)
}

/// Checks a node id (it becomes part of stored values and errors).
pub(crate) fn check_node(id: &str) -> Result<(), StoreError> {
    super::keys::check_name("node", id).map_err(StoreError::from)
}

/// Checks a QUIC address for the directory's text encoding.
pub(crate) fn check_addr(addr: &str) -> Result<(), StoreError> {
    if addr.is_empty() || addr.len() > 255 || addr.contains(['\t', '\n', '\r']) {
        return Err(StoreError::Key(super::KeyError {
            part: "quic_addr",
            value: addr.to_owned(),
            reason: "must be 1 to 255 bytes without tab or line break",
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_milliseconds() {
        assert_eq!(ttl_millis(Duration::ZERO), 1);
        assert_eq!(ttl_millis(Duration::from_micros(1)), 1);
        assert_eq!(ttl_millis(Duration::from_micros(1_001)), 2);
        assert_eq!(ttl_millis(Duration::from_secs(10)), 10_000);
        assert_eq!(ttl_millis(Duration::MAX), 1 << 52);
    }

    #[test]
    fn node_ids_and_addresses_are_checked() {
        assert!(check_node("node-1.eu").is_ok());
        assert!(check_node("a b").is_err());
        assert!(check_node("").is_err());
        assert!(check_addr("10.0.0.7:4433").is_ok());
        assert!(check_addr("game-0.game.svc:4433").is_ok());
        assert!(check_addr("a\tb").is_err());
        assert!(check_addr("").is_err());
    }
}
