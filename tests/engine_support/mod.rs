//! Helpers shared by the engine test files.

use std::sync::Arc;
use std::time::Duration;

use tickforge::arena::{Arena, ArenaState};
use tickforge::engine::{MatchFeed, MatchUpdate};
use tickforge::game::Tick;

/// A published match state.
pub type Update = Arc<MatchUpdate<ArenaState>>;

/// Awaits the first published update at or past `tick`. A match that
/// stops publishing fails the test instead of hanging it (paused-clock
/// tests reach the 60 s deadline in virtual time, at once).
pub async fn update_at(feed: &mut MatchFeed<Arena>, tick: Tick) -> Update {
    let wait = async {
        loop {
            if let Some(update) = feed.updates.borrow_and_update().clone()
                && update.tick >= tick
            {
                return update;
            }
            feed.updates
                .changed()
                .await
                .expect("the match stopped publishing");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .unwrap_or_else(|_| panic!("no update for tick {tick} within 60 s"))
}
