//! The backend chosen at run time from configuration.
//!
//! The engine is generic over [`Store`](super::Store); programs that pick
//! the backend from a config file use [`AnyStore`], which forwards every
//! call to the memory or Redis store it holds.

use std::time::Duration;

use super::{
    AppendBatch, EventStore, Head, Lease, LeaseStore, MatchKey, MemoryStore, NodeDirectory,
    NodeInfo, PositionStore, RecordedEvent, RedisOptions, RedisStore, RedisTls, Snapshot,
    SnapshotStore, StoreError, Trimmed,
};
use crate::config::StorageConfig;

/// Either backend, as configured.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// The embedded in-memory store.
    Memory(MemoryStore),
    /// Redis, single node or cluster.
    Redis(RedisStore),
}

impl AnyStore {
    /// Opens the configured backend (connecting to Redis if selected).
    ///
    /// Configured TLS files are read here; a missing or malformed one is
    /// [`StoreError::Unavailable`] naming the file.
    pub async fn open(config: &StorageConfig) -> Result<Self, StoreError> {
        Ok(match config {
            StorageConfig::Memory { retain_finished } => {
                Self::Memory(MemoryStore::with_retention(*retain_finished))
            }
            StorageConfig::Redis { urls, tls } if tls.is_empty() => {
                Self::Redis(RedisStore::connect(urls).await?)
            }
            StorageConfig::Redis { urls, tls } => {
                let client = tls
                    .client
                    .as_ref()
                    .map(|c| (c.cert_file.as_path(), c.key_file.as_path()));
                let material = RedisTls::from_files(tls.ca_file.as_deref(), client)?;
                Self::Redis(
                    RedisStore::connect_tls(urls, RedisOptions::default(), &material).await?,
                )
            }
        })
    }

    /// "memory", "redis" or "redis-cluster", for logs and summaries.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Redis(r) if r.is_cluster() => "redis-cluster",
            Self::Redis(_) => "redis",
        }
    }
}

/// Forwards one call to whichever backend is held.
macro_rules! forward {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyStore::Memory($store) => $call.await,
            AnyStore::Redis($store) => $call.await,
        }
    };
}

impl EventStore for AnyStore {
    async fn append(
        &self,
        batches: &[AppendBatch],
    ) -> Result<Vec<Result<Head, StoreError>>, StoreError> {
        forward!(self, s => s.append(batches))
    }

    async fn read(
        &self,
        key: &MatchKey,
        from: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        forward!(self, s => s.read(key, from, limit))
    }

    async fn head(&self, key: &MatchKey) -> Result<Option<Head>, StoreError> {
        forward!(self, s => s.head(key))
    }

    async fn create(&self, key: &MatchKey, setup: &[u8]) -> Result<(), StoreError> {
        forward!(self, s => s.create(key, setup))
    }

    async fn load_setup(&self, key: &MatchKey) -> Result<Option<Vec<u8>>, StoreError> {
        forward!(self, s => s.load_setup(key))
    }

    async fn finish(&self, key: &MatchKey) -> Result<(), StoreError> {
        forward!(self, s => s.finish(key))
    }

    async fn fail(&self, key: &MatchKey, reason: &str) -> Result<(), StoreError> {
        forward!(self, s => s.fail(key, reason))
    }

    async fn failure(&self, key: &MatchKey) -> Result<Option<String>, StoreError> {
        forward!(self, s => s.failure(key))
    }

    async fn live_matches(&self, domain: &str, edition: &str) -> Result<Vec<MatchKey>, StoreError> {
        forward!(self, s => s.live_matches(domain, edition))
    }

    async fn trim_fenced(
        &self,
        key: &MatchKey,
        below: u64,
        keep_for: &[String],
        epoch: Option<u64>,
    ) -> Result<Trimmed, StoreError> {
        forward!(self, s => s.trim_fenced(key, below, keep_for, epoch))
    }
}

impl SnapshotStore for AnyStore {
    async fn save_fenced_snapshot(
        &self,
        key: &MatchKey,
        snapshot: &Snapshot,
        epoch: Option<u64>,
    ) -> Result<bool, StoreError> {
        forward!(self, s => s.save_fenced_snapshot(key, snapshot, epoch))
    }

    async fn load_snapshot(&self, key: &MatchKey) -> Result<Option<Snapshot>, StoreError> {
        forward!(self, s => s.load_snapshot(key))
    }
}

impl PositionStore for AnyStore {
    async fn load_position(&self, handler: &str, key: &MatchKey) -> Result<u64, StoreError> {
        forward!(self, s => s.load_position(handler, key))
    }

    async fn advance_position(
        &self,
        handler: &str,
        key: &MatchKey,
        to: u64,
    ) -> Result<u64, StoreError> {
        forward!(self, s => s.advance_position(handler, key, to))
    }
}

impl LeaseStore for AnyStore {
    async fn claim(&self, key: &MatchKey, node: &str, ttl: Duration) -> Result<Lease, StoreError> {
        forward!(self, s => s.claim(key, node, ttl))
    }

    async fn renew(
        &self,
        key: &MatchKey,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        forward!(self, s => s.renew(key, lease, ttl))
    }

    async fn release(&self, key: &MatchKey, lease: &Lease) -> Result<(), StoreError> {
        forward!(self, s => s.release(key, lease))
    }

    async fn transfer(
        &self,
        key: &MatchKey,
        lease: &Lease,
        to: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        forward!(self, s => s.transfer(key, lease, to, ttl))
    }

    async fn lease(&self, key: &MatchKey) -> Result<Option<Lease>, StoreError> {
        forward!(self, s => s.lease(key))
    }
}

impl NodeDirectory for AnyStore {
    async fn register(
        &self,
        domain: &str,
        edition: &str,
        node: &NodeInfo,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        forward!(self, s => s.register(domain, edition, node, ttl))
    }

    async fn nodes(&self, domain: &str, edition: &str) -> Result<Vec<NodeInfo>, StoreError> {
        forward!(self, s => s.nodes(domain, edition))
    }

    async fn deregister(
        &self,
        domain: &str,
        edition: &str,
        node_id: &str,
    ) -> Result<bool, StoreError> {
        forward!(self, s => s.deregister(domain, edition, node_id))
    }
}
