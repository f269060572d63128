//! Placement: where a match is served, answered from its lease and the
//! node directory (the fleet's [`Locator`]).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::Fleet;
use crate::admin::metrics as names;
use crate::game::Game;
use crate::net::{Locator, Placement};
use crate::store::{NodeInfo, Store};

/// How long a client waits while a match is handed over.
const HANDOVER_WAIT: Duration = Duration::from_millis(50);
/// How long a client waits while the store cannot be read.
const STORE_WAIT: Duration = Duration::from_millis(500);
/// How long a client waits when no node has room.
const FULL_WAIT: Duration = Duration::from_secs(1);
/// Slack added to a dead owner's remaining lease time.
const EXPIRY_SLACK: Duration = Duration::from_millis(100);

impl<G: Game, S: Store> Locator for Fleet<G, S> {
    fn place<'a>(&'a self, root: &'a str, new_match: bool) -> BoxFuture<'a, Placement> {
        Box::pin(self.placement(root, new_match))
    }
}

impl<G: Game, S: Store> Fleet<G, S> {
    async fn placement(&self, root: &str, new_match: bool) -> Placement {
        let Ok(key) = self.engine.key(root) else {
            // Not a valid match id: the server refuses it on its own.
            return Placement::Here;
        };
        let lease = match self.engine.store().lease(&key).await {
            Ok(lease) => lease,
            Err(error) => {
                return Placement::Wait {
                    after: STORE_WAIT,
                    why: format!("the store is unavailable: {error}"),
                };
            }
        };
        match lease {
            Some(lease) if lease.node == self.config.node_id => {
                if self.is_leaving(root) {
                    Placement::Wait {
                        after: HANDOVER_WAIT,
                        why: format!("match {root} is being handed over to another node"),
                    }
                } else {
                    Placement::Here
                }
            }
            Some(lease) => match self.node(&lease.node).await {
                Some(node) => self.redirect(
                    node,
                    "owner",
                    format!("node {} hosts match {root}", lease.node),
                ),
                None => Placement::Wait {
                    after: (lease.expires_in + EXPIRY_SLACK).min(Duration::from_secs(30)),
                    why: format!(
                        "node {} holding match {root} stopped; its lease runs out in {} ms",
                        lease.node,
                        lease.expires_in.as_millis()
                    ),
                },
            },
            None if self.has_room() => Placement::Here,
            None => {
                let what = if new_match { "new match" } else { "match" };
                match self.roomiest_other().await {
                    Some(node) => {
                        let why = format!(
                            "node {} has no room; node {} takes the {what} {root}",
                            self.config.node_id, node.id
                        );
                        self.redirect(node, "capacity", why)
                    }
                    None => Placement::Full {
                        after: FULL_WAIT,
                        why: format!("no node of the fleet has room for the {what} {root}"),
                    },
                }
            }
        }
    }

    fn redirect(&self, node: NodeInfo, label: &'static str, why: String) -> Placement {
        self.counters.redirects.fetch_add(1, Relaxed);
        metrics::counter!(names::FLEET_REDIRECTS, "why" => label).increment(1);
        Placement::Elsewhere {
            node: node.id,
            addr: node.quic_addr,
            why,
        }
    }

    /// The live node `id`, from the directory.
    async fn node(&self, id: &str) -> Option<NodeInfo> {
        self.other_nodes()
            .await
            .into_iter()
            .find(|node| node.id == id)
    }

    /// The live node other than this one with the most room, if any has room.
    pub(super) async fn roomiest_other(&self) -> Option<NodeInfo> {
        self.other_nodes()
            .await
            .into_iter()
            .filter(|node| node.load < node.capacity)
            .max_by_key(|node| node.capacity - node.load)
    }

    /// The live nodes of the directory other than this one (none when the
    /// directory cannot be read).
    pub(super) async fn other_nodes(&self) -> Vec<NodeInfo> {
        let (domain, edition) = self.domain_edition();
        match self.engine.store().nodes(domain, edition).await {
            Ok(nodes) => nodes
                .into_iter()
                .filter(|node| node.id != self.config.node_id)
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "node directory not read");
                Vec::new()
            }
        }
    }
}
