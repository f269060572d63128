//! Live migration: a draining node hands each of its matches to a live
//! node instead of only snapshotting it.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream;

use super::Fleet;
use crate::admin::metrics as names;
use crate::engine::EngineError;
use crate::game::Game;
use crate::store::{Lease, NodeInfo, Store, StoreError};

/// Hand-overs in flight at once.
const HANDOVER_CONCURRENCY: usize = 16;

/// What [`Fleet::hand_over_all`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandOverReport {
    /// Matches handed over to another node.
    pub handed: usize,
    /// Matches still here (no node had room, or the hand-over failed):
    /// the drain snapshots them and another node takes them over once
    /// their leases run out.
    pub kept: usize,
    /// The slowest hand-over (final writes stored and lease transferred).
    pub slowest: Duration,
}

/// Why one match was not handed over.
#[derive(Debug, thiserror::Error)]
enum HandOverError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("lease transfer: {0}")]
    Transfer(#[from] StoreError),
}

impl<G: Game, S: Store> Fleet<G, S> {
    /// Hands every hosted match over to the live nodes with the most room
    /// (a drain): the node stops taking new matches, then for each match
    /// stores its last events and a snapshot at its last tick, transfers
    /// its lease to the chosen node (a new epoch: this node's writes are
    /// fenced from then on), and closes its sessions with a redirect
    /// there. The new owner restores it from that snapshot when the first
    /// player arrives, or on its next takeover scan. Stops at `deadline`.
    pub async fn hand_over_all(&self, deadline: Duration) -> HandOverReport {
        self.draining.store(true, Relaxed);
        if let Err(error) = self.heartbeat().await {
            tracing::warn!(%error, "could not tell the directory this node is draining");
        }
        let roots = self.engine.hosted_matches();
        let mut targets: Vec<(NodeInfo, u32)> = self
            .other_nodes()
            .await
            .into_iter()
            .filter(|node| node.capacity > 0)
            .map(|node| (node, 0))
            .collect();
        let mut report = HandOverReport::default();
        if targets.is_empty() {
            tracing::warn!(
                matches = roots.len(),
                "no other live node: matches stay with their final snapshots"
            );
            report.kept = roots.len();
            return report;
        }
        // Spread by room: each match goes to the node with the most left.
        let plan: Vec<(String, NodeInfo)> = roots
            .into_iter()
            .map(|root| {
                let (node, assigned) = targets
                    .iter_mut()
                    .max_by_key(|(node, assigned)| {
                        i64::from(node.capacity) - i64::from(node.load) - i64::from(*assigned)
                    })
                    .expect("targets is not empty");
                *assigned += 1;
                (root, node.clone())
            })
            .collect();
        let started = Instant::now();
        let handing = stream::iter(plan)
            .map(|(root, node)| async move {
                let began = Instant::now();
                let outcome = self.hand_over(&root, &node).await;
                (root, node, outcome, began.elapsed())
            })
            .buffer_unordered(HANDOVER_CONCURRENCY)
            .collect::<Vec<_>>();
        let outcomes = match tokio::time::timeout(deadline, handing).await {
            Ok(outcomes) => outcomes,
            Err(_) => {
                tracing::error!(?deadline, "hand-over deadline passed");
                report.kept = self.engine.hosted_matches().len();
                return report;
            }
        };
        for (root, node, outcome, took) in outcomes {
            match outcome {
                Ok(()) => {
                    report.handed += 1;
                    report.slowest = report.slowest.max(took);
                    tracing::info!(r#match = %root, to = %node.id, took_ms = took.as_millis() as u64, "match handed over");
                }
                Err(error) => {
                    report.kept += 1;
                    tracing::error!(r#match = %root, to = %node.id, %error, "match not handed over");
                }
            }
        }
        tracing::info!(handed = report.handed, kept = report.kept, took = ?started.elapsed(), "hand-over done");
        report
    }

    /// Hands one match to `node`.
    async fn hand_over(&self, root: &str, node: &NodeInfo) -> Result<(), HandOverError> {
        self.leaving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(root.to_owned());
        let handed = self.engine.hand_over(root).await?;
        let lease = Lease {
            node: self.config.node_id.clone(),
            epoch: handed.epoch,
            expires_in: Duration::ZERO,
        };
        self.engine
            .store()
            .transfer(&handed.key, &lease, &node.id, self.ttl())
            .await?;
        // Its sessions see the feed close now and are sent to the new owner.
        drop(handed);
        self.counters.handovers.fetch_add(1, Relaxed);
        metrics::counter!(names::FLEET_HANDOVERS).increment(1);
        Ok(())
    }
}
