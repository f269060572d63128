//! Takeover: restoring the live matches nobody holds (their node died),
//! and those whose lease is this node's own (handed over to it, or its own
//! before a restart).

use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream;

use super::Fleet;
use crate::admin::metrics as names;
use crate::engine::EngineError;
use crate::game::Game;
use crate::store::{MatchKey, Store, StoreError};

/// Lease reads in flight at once during a scan.
const READ_CONCURRENCY: usize = 64;
/// Restores in flight at once during a takeover.
const RESTORE_CONCURRENCY: usize = 8;

/// What one takeover scan did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdoptReport {
    /// Matches restored here.
    pub restored: usize,
    /// Of those, matches whose lease was free (their node stopped) rather
    /// than already this node's.
    pub took_over: usize,
    /// Events replayed after snapshots while restoring.
    pub events_replayed: u64,
    /// Live matches held by other nodes (or claimed by one first).
    pub owned_elsewhere: usize,
    /// Matches that could not be restored (logged with the reason).
    pub failed: usize,
}

impl<G: Game, S: Store> Fleet<G, S> {
    /// One takeover scan: lists the live matches, reads the leases of those
    /// not hosted here, and restores those whose lease is this node's at
    /// once, and free ones up to this node's share of the fleet's spare
    /// capacity (nodes with more room take more), at most
    /// [`RESTORE_CONCURRENCY`] at a time. Claims are atomic in the store,
    /// so nodes racing for a match never both host it.
    pub async fn adopt(&self) -> Result<AdoptReport, StoreError> {
        let (domain, edition) = self.domain_edition();
        let store = self.engine.store();
        let live = store.live_matches(domain, edition).await?;
        let candidates: Vec<MatchKey> = live
            .into_iter()
            .filter(|key| !self.engine.is_hosted(key.root()) && !self.is_leaving(key.root()))
            .collect();
        let mut report = AdoptReport::default();
        if candidates.is_empty() {
            return Ok(report);
        }
        let leases: Vec<(MatchKey, Result<_, StoreError>)> = stream::iter(candidates)
            .map(|key| async move {
                let lease = store.lease(&key).await;
                (key, lease)
            })
            .buffer_unordered(READ_CONCURRENCY)
            .collect()
            .await;
        let (mut mine, mut free) = (Vec::new(), Vec::new());
        for (key, lease) in leases {
            match lease {
                Ok(Some(lease)) if lease.node == self.config.node_id => mine.push(key),
                Ok(Some(_)) => report.owned_elsewhere += 1,
                Ok(None) => free.push(key),
                Err(error) => tracing::warn!(%key, %error, "lease not read; next scan"),
            }
        }
        let share = self.share_of(free.len()).await;
        // Racing nodes start from different ends of the free list.
        free.sort_by_key(|key| spread(&self.config.node_id, key.root()));
        free.truncate(share);
        let jobs = mine
            .into_iter()
            .map(|key| (key, false))
            .chain(free.into_iter().map(|key| (key, true)));
        let engine = &self.engine;
        let outcomes: Vec<_> = stream::iter(jobs)
            .map(|(key, was_free)| async move {
                let started = Instant::now();
                let outcome = engine.restore_match(key.root()).await;
                (key, was_free, outcome, started.elapsed())
            })
            .buffer_unordered(RESTORE_CONCURRENCY)
            .collect()
            .await;
        let mut restored = Vec::new();
        for (key, was_free, outcome, took) in outcomes {
            match outcome {
                Ok(replayed) => {
                    restored.push(key.root().to_owned());
                    report.restored += 1;
                    report.events_replayed += replayed.events_replayed;
                    if was_free {
                        report.took_over += 1;
                    }
                    self.counters
                        .takeovers
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    metrics::counter!(names::FLEET_TAKEOVERS).increment(1);
                    tracing::info!(r#match = %key.root(), tick = replayed.tick, was_free,
                        took_ms = took.as_millis() as u64, "match taken over");
                }
                Err(EngineError::Store(StoreError::Owned { .. }) | EngineError::MatchExists(_)) => {
                    report.owned_elsewhere += 1;
                }
                Err(error) => {
                    report.failed += 1;
                    tracing::error!(r#match = %key.root(), %error, "match not taken over");
                }
            }
        }
        if !restored.is_empty()
            && let Some(hook) = self.on_adopted.get()
        {
            hook(restored);
        }
        Ok(report)
    }

    /// How many of `free` orphaned matches this node takes: its share of
    /// the fleet's spare capacity, rounded up, within its own room.
    async fn share_of(&self, free: usize) -> usize {
        let hosted = self.hosted();
        let room = if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            0
        } else {
            self.config.max_matches.saturating_sub(hosted) as usize
        };
        if free == 0 || room == 0 {
            return 0;
        }
        let (domain, edition) = self.domain_edition();
        let nodes = match self.engine.store().nodes(domain, edition).await {
            Ok(nodes) => nodes,
            Err(error) => {
                tracing::warn!(%error, "node directory not read; taking what fits");
                return free.min(room);
            }
        };
        metrics::gauge!(names::FLEET_NODES).set(nodes.len() as f64);
        let others: usize = nodes
            .iter()
            .filter(|node| node.id != self.config.node_id)
            .map(|node| node.capacity.saturating_sub(node.load) as usize)
            .sum();
        let total = others + room;
        (free * room).div_ceil(total).min(room).min(free)
    }
}

/// A per-node order over matches (FNV-1a of node and root).
fn spread(node: &str, root: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in node.bytes().chain([0]).chain(root.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn nodes_order_the_same_matches_differently() {
        let roots: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        let order = |node: &str| {
            let mut sorted = roots.clone();
            sorted.sort_by_key(|root| spread(node, root));
            sorted
        };
        assert_eq!(order("a"), order("a"));
        assert_ne!(order("a"), order("b"));
    }
}
