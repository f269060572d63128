//! Match identities and the storage key names built from them.
//!
//! Key layout (from the storage note, with a Redis Cluster hash tag so that
//! every key of one match hashes to one slot):
//!
//! | key | type | content |
//! |---|---|---|
//! | `events:{d:e:r}` | sorted set | member: encoded event envelope; score: sequence |
//! | `snapshots:{d:e:r}` | hash | `sequence` (events folded in), `tick`, `state` |
//! | `positions:<handler>:{d:e:r}` | string | the handler's next sequence to process |
//! | `meta:{d:e:r}` | hash | `head` (next sequence), `tick` (head tick), `status` |
//! | `owner:{d:e:r}` | hash | the match's lease: `node` (empty when released), `epoch` (only grows), `expires` (Redis server time, ms) |
//! | `matches:{d:e}` | set | roots of the matches of a domain and edition |
//! | `nodes:{d:e}` | hash | the node directory: node id → `<expires ms>\t<capacity>\t<load>\t<quic_addr>` |
//!
//! `d` is the domain (the game), `e` the edition (a timeline, default
//! `main`) and `r` the root (the match id).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Edition used when none is given.
pub const DEFAULT_EDITION: &str = "main";

/// Longest accepted domain, edition or root.
pub const MAX_NAME_LEN: usize = 64;

/// Why a key part was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {part} {value:?}: {reason}")]
pub struct KeyError {
    /// Which part: "domain", "edition", "root", "handler", "node" or
    /// "quic_addr".
    pub part: &'static str,
    /// The refused value.
    pub value: String,
    /// Why.
    pub reason: &'static str,
}

/// Checks one part of a key name (`part` names it in the error).
pub(crate) fn check_name(part: &'static str, value: &str) -> Result<(), KeyError> {
    let reason = if value.is_empty() {
        Some("must not be empty")
    } else if value.len() > MAX_NAME_LEN {
        Some("longer than 64 bytes")
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        Some("only ASCII letters, digits, '-', '_' and '.' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(KeyError {
            part,
            value: value.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The identity of one match: domain, edition and root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MatchKey {
    domain: String,
    edition: String,
    root: String,
}

impl MatchKey {
    /// Builds a key after checking each part.
    pub fn new(domain: &str, edition: &str, root: &str) -> Result<Self, KeyError> {
        check_name("domain", domain)?;
        check_name("edition", edition)?;
        check_name("root", root)?;
        Ok(Self {
            domain: domain.to_owned(),
            edition: edition.to_owned(),
            root: root.to_owned(),
        })
    }

    /// The game this match belongs to.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The timeline of this match.
    pub fn edition(&self) -> &str {
        &self.edition
    }

    /// The match id.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// `{domain:edition:root}`: the hash tag shared by all keys of the match.
    pub fn hash_tag(&self) -> String {
        format!("{{{}:{}:{}}}", self.domain, self.edition, self.root)
    }

    /// The sorted set holding the event log.
    pub fn events_key(&self) -> String {
        format!("events:{}", self.hash_tag())
    }

    /// The hash holding the latest snapshot.
    pub fn snapshot_key(&self) -> String {
        format!("snapshots:{}", self.hash_tag())
    }

    /// The hash holding head sequence, head tick and status.
    pub fn meta_key(&self) -> String {
        format!("meta:{}", self.hash_tag())
    }

    /// The hash holding the match's lease (node, epoch, expiry): in the
    /// match's slot, so the scripts writing the match can check it.
    pub fn owner_key(&self) -> String {
        format!("owner:{}", self.hash_tag())
    }

    /// The string holding `handler`'s position in this match's log.
    pub fn position_key(&self, handler: &str) -> Result<String, KeyError> {
        check_name("handler", handler)?;
        Ok(format!("positions:{handler}:{}", self.hash_tag()))
    }

    /// The set listing the matches of this key's domain and edition.
    pub fn index_key(&self) -> String {
        index_key(&self.domain, &self.edition)
    }
}

/// The set listing the matches of a domain and edition.
pub fn index_key(domain: &str, edition: &str) -> String {
    format!("matches:{{{domain}:{edition}}}")
}

/// The hash listing the live nodes of a domain and edition (checked).
pub fn nodes_key(domain: &str, edition: &str) -> Result<String, KeyError> {
    check_name("domain", domain)?;
    check_name("edition", edition)?;
    Ok(format!("nodes:{{{domain}:{edition}}}"))
}

impl fmt::Display for MatchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.domain, self.edition, self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_match_share_a_hash_tag() {
        let key = MatchKey::new("arena", "main", "m42").unwrap();
        assert_eq!(key.events_key(), "events:{arena:main:m42}");
        assert_eq!(key.snapshot_key(), "snapshots:{arena:main:m42}");
        assert_eq!(key.meta_key(), "meta:{arena:main:m42}");
        assert_eq!(key.owner_key(), "owner:{arena:main:m42}");
        assert_eq!(
            key.position_key("leaderboard").unwrap(),
            "positions:leaderboard:{arena:main:m42}"
        );
    }

    #[test]
    fn the_node_directory_is_per_domain_and_edition() {
        assert_eq!(nodes_key("arena", "main").unwrap(), "nodes:{arena:main}");
        assert_eq!(nodes_key("arena", "a b").unwrap_err().part, "edition");
    }

    #[test]
    fn braces_colons_and_empty_parts_are_refused() {
        assert_eq!(
            MatchKey::new("arena", "main", "a}b").unwrap_err().part,
            "root"
        );
        assert_eq!(MatchKey::new("arena", "", "m").unwrap_err().part, "edition");
        assert_eq!(
            MatchKey::new("a:b", "main", "m").unwrap_err().part,
            "domain"
        );
        assert!(MatchKey::new("arena", "main", &"x".repeat(65)).is_err());
    }
}
