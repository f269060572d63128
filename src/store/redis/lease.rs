//! Leases and the node directory on Redis: `lease.lua` on `owner:{m}` (in
//! the match's slot, beside the keys the fenced scripts write) and
//! `nodes.lua` on `nodes:{d:e}`, both on Redis's clock (`TIME` inside the
//! script), so the nodes' clocks do not matter.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{Script, Value};

use super::{RedisStore, redis_error};
use crate::store::keys::nodes_key;
use crate::store::lease::{check_addr, check_node, ttl_millis};
use crate::store::{Lease, LeaseStore, MatchKey, NodeDirectory, NodeInfo, StoreError};

static LEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/lease.lua")));
static NODES: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/nodes.lua")));

/// One `lease.lua` call's operation and arguments.
enum LeaseOp<'a> {
    Read,
    Claim {
        node: &'a str,
        ttl: Duration,
    },
    Renew {
        lease: &'a Lease,
        ttl: Duration,
    },
    Release {
        lease: &'a Lease,
    },
    Transfer {
        lease: &'a Lease,
        to: &'a str,
        ttl: Duration,
    },
}

impl LeaseOp<'_> {
    /// ARGV of `lease.lua`: operation, node, epoch, ttl ms, new node.
    fn args(&self) -> [String; 5] {
        let ms = |ttl: &Duration| ttl_millis(*ttl).to_string();
        match self {
            LeaseOp::Read => [
                "read".into(),
                String::new(),
                "0".into(),
                "0".into(),
                String::new(),
            ],
            LeaseOp::Claim { node, ttl } => [
                "claim".into(),
                (*node).into(),
                "0".into(),
                ms(ttl),
                String::new(),
            ],
            LeaseOp::Renew { lease, ttl } => [
                "renew".into(),
                lease.node.clone(),
                lease.epoch.to_string(),
                ms(ttl),
                String::new(),
            ],
            LeaseOp::Release { lease } => [
                "release".into(),
                lease.node.clone(),
                lease.epoch.to_string(),
                "0".into(),
                String::new(),
            ],
            LeaseOp::Transfer { lease, to, ttl } => [
                "transfer".into(),
                lease.node.clone(),
                lease.epoch.to_string(),
                ms(ttl),
                (*to).into(),
            ],
        }
    }

    /// The epoch the caller holds, for [`StoreError::Fenced`].
    fn held_epoch(&self) -> u64 {
        match self {
            LeaseOp::Read | LeaseOp::Claim { .. } => 0,
            LeaseOp::Renew { lease, .. }
            | LeaseOp::Release { lease }
            | LeaseOp::Transfer { lease, .. } => lease.epoch,
        }
    }
}

/// What `lease.lua` answered: `{code, node, epoch, ms left}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LeaseReply {
    code: i64,
    node: String,
    epoch: i64,
    left_ms: i64,
}

impl LeaseReply {
    fn parse(key: &str, value: Value) -> Result<LeaseReply, StoreError> {
        let corrupt = || StoreError::Corrupt {
            key: key.to_owned(),
            reason: "lease script answered something other than {code, node, epoch, ms}".to_owned(),
        };
        let (code, node, epoch, left_ms): (i64, String, i64, i64) =
            redis::from_redis_value(value).map_err(|_| corrupt())?;
        Ok(LeaseReply {
            code,
            node,
            epoch,
            left_ms,
        })
    }
}

/// A `lease.lua` reply as the caller's outcome: the lease now held (`None`
/// when free), or the error. `held_epoch` is the epoch the call carried.
pub(super) fn lease_outcome(
    key: &MatchKey,
    held_epoch: u64,
    reply: LeaseReply,
) -> Result<Option<Lease>, StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        key: key.owner_key(),
        reason: reason.to_owned(),
    };
    let epoch = u64::try_from(reply.epoch).map_err(|_| corrupt("negative epoch"))?;
    let left = Duration::from_millis(u64::try_from(reply.left_ms).unwrap_or(0));
    match reply.code {
        0 if reply.node.is_empty() => Ok(None),
        0 => Ok(Some(Lease {
            node: reply.node,
            epoch,
            expires_in: left,
        })),
        1 => Err(StoreError::Owned {
            key: key.to_string(),
            owner: reply.node,
            epoch,
            expires_in: left,
        }),
        2 => Err(StoreError::Fenced {
            key: key.to_string(),
            epoch: held_epoch,
            current: epoch,
        }),
        3 => Err(corrupt("lease hash has a non-numeric epoch or expiry")),
        other => Err(corrupt(&format!(
            "lease script answered unknown code {other}"
        ))),
    }
}

impl RedisStore {
    async fn lease_call(
        &self,
        key: &MatchKey,
        op: LeaseOp<'_>,
    ) -> Result<Option<Lease>, StoreError> {
        let owner_key = key.owner_key();
        let mut invocation = LEASE.key(&owner_key);
        for arg in op.args() {
            invocation.arg(arg);
        }
        let value: Value = self
            .connection
            .invoke(&invocation)
            .await
            .map_err(|e| redis_error(&owner_key, e))?;
        lease_outcome(key, op.held_epoch(), LeaseReply::parse(&owner_key, value)?)
    }

    /// A lease call that must answer a held lease.
    async fn lease_held(&self, key: &MatchKey, op: LeaseOp<'_>) -> Result<Lease, StoreError> {
        self.lease_call(key, op)
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                key: key.owner_key(),
                reason: "lease script answered no holder".to_owned(),
            })
    }
}

impl LeaseStore for RedisStore {
    async fn claim(&self, key: &MatchKey, node: &str, ttl: Duration) -> Result<Lease, StoreError> {
        check_node(node)?;
        self.lease_held(key, LeaseOp::Claim { node, ttl }).await
    }

    async fn renew(
        &self,
        key: &MatchKey,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        check_node(&lease.node)?;
        self.lease_held(key, LeaseOp::Renew { lease, ttl }).await
    }

    async fn release(&self, key: &MatchKey, lease: &Lease) -> Result<(), StoreError> {
        check_node(&lease.node)?;
        self.lease_call(key, LeaseOp::Release { lease })
            .await
            .map(|_| ())
    }

    async fn transfer(
        &self,
        key: &MatchKey,
        lease: &Lease,
        to: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        check_node(&lease.node)?;
        check_node(to)?;
        self.lease_held(key, LeaseOp::Transfer { lease, to, ttl })
            .await
    }

    async fn lease(&self, key: &MatchKey) -> Result<Option<Lease>, StoreError> {
        self.lease_call(key, LeaseOp::Read).await
    }
}

/// A node's description as stored in `nodes:{d:e}` (after the expiry).
fn describe(node: &NodeInfo) -> String {
    format!("{}\t{}\t{}", node.capacity, node.load, node.quic_addr)
}

/// Reads back [`describe`]'s text for node `id`.
pub(super) fn parse_description(key: &str, id: &str, text: &str) -> Result<NodeInfo, StoreError> {
    let corrupt = || StoreError::Corrupt {
        key: key.to_owned(),
        reason: format!("node {id:?} is described as {text:?}"),
    };
    let mut parts = text.splitn(3, '\t');
    let (Some(capacity), Some(load), Some(quic_addr)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(corrupt());
    };
    Ok(NodeInfo {
        id: id.to_owned(),
        quic_addr: quic_addr.to_owned(),
        capacity: capacity.parse().map_err(|_| corrupt())?,
        load: load.parse().map_err(|_| corrupt())?,
    })
}

impl NodeDirectory for RedisStore {
    async fn register(
        &self,
        domain: &str,
        edition: &str,
        node: &NodeInfo,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let nodes = nodes_key(domain, edition)?;
        check_node(&node.id)?;
        check_addr(&node.quic_addr)?;
        let mut invocation = NODES.key(&nodes);
        invocation
            .arg("register")
            .arg(&node.id)
            .arg(ttl_millis(ttl).to_string())
            .arg(describe(node));
        let _: i64 = self
            .connection
            .invoke(&invocation)
            .await
            .map_err(|e| redis_error(&nodes, e))?;
        Ok(())
    }

    async fn nodes(&self, domain: &str, edition: &str) -> Result<Vec<NodeInfo>, StoreError> {
        let nodes = nodes_key(domain, edition)?;
        let mut invocation = NODES.key(&nodes);
        invocation.arg("list");
        let flat: Vec<String> = self
            .connection
            .invoke(&invocation)
            .await
            .map_err(|e| redis_error(&nodes, e))?;
        let mut listed = flat
            .chunks_exact(2)
            .map(|pair| parse_description(&nodes, &pair[0], &pair[1]))
            .collect::<Result<Vec<_>, _>>()?;
        listed.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(listed)
    }

    async fn deregister(
        &self,
        domain: &str,
        edition: &str,
        node_id: &str,
    ) -> Result<bool, StoreError> {
        let nodes = nodes_key(domain, edition)?;
        check_node(node_id)?;
        let mut invocation = NODES.key(&nodes);
        invocation.arg("deregister").arg(node_id);
        let removed: i64 = self
            .connection
            .invoke(&invocation)
            .await
            .map_err(|e| redis_error(&nodes, e))?;
        Ok(removed == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: i64, node: &str, epoch: i64, left_ms: i64) -> LeaseReply {
        LeaseReply {
            code,
            node: node.to_owned(),
            epoch,
            left_ms,
        }
    }

    #[test]
    fn lease_replies_map_to_outcomes() {
        let key = MatchKey::new("arena", "main", "m1").unwrap();
        assert_eq!(
            lease_outcome(&key, 0, reply(0, "n1", 3, 1500)),
            Ok(Some(Lease {
                node: "n1".to_owned(),
                epoch: 3,
                expires_in: Duration::from_millis(1500)
            }))
        );
        assert_eq!(lease_outcome(&key, 0, reply(0, "", 3, 0)), Ok(None));
        assert_eq!(
            lease_outcome(&key, 0, reply(1, "n2", 4, 900)),
            Err(StoreError::Owned {
                key: "arena:main:m1".to_owned(),
                owner: "n2".to_owned(),
                epoch: 4,
                expires_in: Duration::from_millis(900)
            })
        );
        let fenced = lease_outcome(&key, 3, reply(2, "n2", 5, 0)).unwrap_err();
        assert_eq!(
            fenced,
            StoreError::Fenced {
                key: "arena:main:m1".to_owned(),
                epoch: 3,
                current: 5
            }
        );
        assert_eq!(fenced.class(), crate::store::ErrorClass::Permanent);
        assert_eq!(fenced.label(), "fenced");
        for bad in [
            reply(3, "", 0, 0),
            reply(9, "", 0, 0),
            reply(0, "n1", -1, 0),
        ] {
            assert!(matches!(
                lease_outcome(&key, 0, bad),
                Err(StoreError::Corrupt { .. })
            ));
        }
    }

    #[test]
    fn node_descriptions_round_trip() {
        let node = NodeInfo {
            id: "node-1".to_owned(),
            quic_addr: "game-1.game.svc:4433".to_owned(),
            capacity: 500,
            load: 17,
        };
        assert_eq!(
            parse_description("nodes:{arena:main}", "node-1", &describe(&node)),
            Ok(node)
        );
        for bad in ["", "5\t1", "x\t1\taddr", "5\t-1\taddr"] {
            assert!(
                parse_description("nodes:{arena:main}", "n", bad).is_err(),
                "{bad:?}"
            );
        }
    }
}
