//! Where a match is served, for a server that is one node of a fleet: the
//! question the QUIC server asks before hosting a match, and the close code
//! each answer becomes.
//!
//! The answers come from [`crate::fleet`] (leases and the node directory);
//! a server without a [`Locator`] hosts every match it is asked for.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::protocol::{CloseCode, redirect_reason, retry_reason};

/// Where a match should be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Here: restore it, or create it when it is new.
    Here,
    /// Another node hosts it (or has room for it): send the client there.
    Elsewhere {
        /// The node's id.
        node: String,
        /// Its public QUIC address (`host:port`).
        addr: String,
        /// Why, for the close reason.
        why: String,
    },
    /// Nobody can serve it right now (its owner stopped and the lease has
    /// not run out, or it is being handed over): retry after `after`.
    Wait {
        /// How long to wait.
        after: Duration,
        /// Why, for the close reason.
        why: String,
    },
    /// No node has room for a new match: retry after `after`.
    Full {
        /// How long to wait.
        after: Duration,
        /// Why, for the close reason.
        why: String,
    },
}

impl Placement {
    /// The close code and reason telling a client to go elsewhere or to
    /// wait; `None` for [`Placement::Here`].
    pub fn refusal(&self) -> Option<(CloseCode, String)> {
        match self {
            Placement::Here => None,
            Placement::Elsewhere { addr, why, .. } => {
                Some((CloseCode::Redirect, redirect_reason(addr, why)))
            }
            Placement::Wait { after, why } => {
                Some((CloseCode::MatchMoving, retry_reason(*after, why)))
            }
            Placement::Full { after, why } => {
                Some((CloseCode::ServerFull, retry_reason(*after, why)))
            }
        }
    }
}

/// Answers where a match should be served.
pub trait Locator: Send + Sync + 'static {
    /// Where match `root` should be served; `new_match` when the store does
    /// not know it yet (it would be created).
    fn place<'a>(&'a self, root: &'a str, new_match: bool) -> BoxFuture<'a, Placement>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::protocol::{parse_redirect, parse_retry_after};

    #[test]
    fn placements_become_close_codes_clients_can_follow() {
        assert_eq!(Placement::Here.refusal(), None);
        let (code, reason) = Placement::Elsewhere {
            node: "b".into(),
            addr: "10.0.0.2:4433".into(),
            why: "node b hosts m1".into(),
        }
        .refusal()
        .unwrap();
        assert_eq!(code, CloseCode::Redirect);
        assert_eq!(parse_redirect(&reason), Some("10.0.0.2:4433"));
        let (code, reason) = Placement::Wait {
            after: Duration::from_millis(1500),
            why: "lease of a stopped node".into(),
        }
        .refusal()
        .unwrap();
        assert_eq!(code, CloseCode::MatchMoving);
        assert_eq!(
            parse_retry_after(&reason),
            Some(Duration::from_millis(1500))
        );
        let (code, _) = Placement::Full {
            after: Duration::from_secs(1),
            why: "full".into(),
        }
        .refusal()
        .unwrap();
        assert_eq!(code, CloseCode::ServerFull);
    }
}
