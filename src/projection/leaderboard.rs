//! The arena leaderboard: tags per player of each match, as a Redis sorted
//! set `leaderboard:{d:e:r}` (member `p<id>`, score = tags), readable by
//! anything that speaks Redis (`ZREVRANGE leaderboard:{arena:main:m1} 0 9
//! WITHSCORES`).
//!
//! The board and its position `positions:leaderboard:{d:e:r}` share the
//! match's hash tag, so one Lua script updates both atomically, in cluster
//! mode too: a runner killed between any two steps resumes without counting
//! a tag twice.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use super::Projection;
use crate::arena::{Arena, ArenaEvent};
use crate::engine::EventEnvelope;
use crate::store::{MatchKey, RedisStore, StoreError};

/// The handler name of this projection.
pub const HANDLER: &str = "leaderboard";

static SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("leaderboard.lua")));

/// The arena leaderboard projection on a Redis store.
#[derive(Debug, Clone)]
pub struct Leaderboard {
    store: RedisStore,
}

impl Leaderboard {
    /// The projection writing into `store`.
    pub fn new(store: RedisStore) -> Self {
        Self { store }
    }

    /// The board's key for a match.
    pub fn board_key(key: &MatchKey) -> String {
        format!("leaderboard:{}", key.hash_tag())
    }

    /// The board, best first: (member, tags).
    pub async fn standings(&self, key: &MatchKey) -> Result<Vec<(String, u64)>, StoreError> {
        let board = Self::board_key(key);
        let mut cmd = redis::cmd("ZREVRANGE");
        cmd.arg(&board).arg(0).arg(-1).arg("WITHSCORES");
        let rows: Vec<(String, f64)> = self.store.query_command(&cmd, &board).await?;
        Ok(rows
            .into_iter()
            .map(|(member, score)| (member, score.max(0.0) as u64))
            .collect())
    }
}

/// Tags per player in `events`, in player order.
pub fn tags_by_player(events: &[EventEnvelope<ArenaEvent>]) -> BTreeMap<String, u64> {
    let mut tags = BTreeMap::new();
    for envelope in events {
        if let ArenaEvent::Fired {
            player,
            tagged: Some(_),
        } = &envelope.event
        {
            *tags.entry(player.to_string()).or_insert(0) += 1;
        }
    }
    tags
}

impl Projection<Arena> for Leaderboard {
    fn name(&self) -> &str {
        HANDLER
    }

    async fn position(&self, key: &MatchKey) -> Result<u64, StoreError> {
        let position_key = key.position_key(HANDLER)?;
        let mut cmd = redis::cmd("GET");
        cmd.arg(&position_key);
        let stored: Option<String> = self.store.query_command(&cmd, &position_key).await?;
        match stored {
            None => Ok(0),
            Some(text) => text.parse().map_err(|_| StoreError::Corrupt {
                key: position_key,
                reason: format!("position {text:?} is not a number"),
            }),
        }
    }

    async fn apply(
        &self,
        key: &MatchKey,
        from: u64,
        events: &[EventEnvelope<ArenaEvent>],
    ) -> Result<u64, StoreError> {
        let position_key = key.position_key(HANDLER)?;
        let to = from + events.len() as u64;
        let mut invocation = SCRIPT.key(&position_key);
        invocation
            .key(Self::board_key(key))
            .arg(from.to_string())
            .arg(to.to_string());
        for (member, tags) in tags_by_player(events) {
            invocation.arg(member).arg(tags.to_string());
        }
        let stored: i64 = self.store.invoke_script(&invocation, &position_key).await?;
        u64::try_from(stored).map_err(|_| StoreError::Corrupt {
            key: position_key,
            reason: format!("negative position {stored}"),
        })
    }
}
