//! In-process bots that keep arena matches busy: the demo's load, and what
//! `tickforge serve --bots N` hosts so a server has something to run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::arena::bot::Bot;
use crate::arena::{Arena, ArenaCommand};
use crate::engine::{Engine, EngineError};
use crate::game::PlayerId;
use crate::store::{Store, StoreError};

/// Counters shared by every autoplayed match.
#[derive(Debug, Default)]
pub struct AutoplayCounters {
    /// Matches created.
    pub created: AtomicU64,
    /// Matches that reached their end.
    pub finished: AtomicU64,
    /// Commands the engine would not queue (a full queue).
    pub submit_errors: AtomicU64,
}

/// Plays match `root` (new or restored) with `players` bots until it ends
/// or the engine shuts down. Each bot sends at most one command per tick,
/// chosen from the latest state it saw. Returns whether the match ended.
pub async fn play_match<S: Store>(
    engine: &Engine<Arena, S>,
    counters: &AutoplayCounters,
    root: &str,
    players: u32,
    seed: u64,
) -> Result<bool, EngineError> {
    let mut feed = engine.subscribe(root)?;
    let mut bots: Vec<Bot> = (1..=players)
        .map(|p| Bot::new(PlayerId(p), seed << 8 | u64::from(p)))
        .collect();
    // Nothing published yet: join (a restored match's bots are in already
    // and the game refuses a second join).
    for bot in &bots {
        let join = ArenaCommand::Join {
            name: format!("bot-{}", bot.player().0),
        };
        submit(engine, counters, root, bot.player(), join);
    }
    loop {
        if feed.updates.changed().await.is_err() {
            return Ok(false); // the match or the engine is gone
        }
        let Some(update) = feed.updates.borrow_and_update().clone() else {
            continue;
        };
        if update.over {
            counters.finished.fetch_add(1, Relaxed);
            return Ok(true);
        }
        for bot in &mut bots {
            if let Some(command) = bot.next_command(engine.game(), &update.state) {
                submit(engine, counters, root, bot.player(), command);
            }
        }
    }
}

/// Keeps one match slot busy: creates `<prefix>-<slot>-<round>`, plays it
/// until it ends, then starts the next round. Returns when the engine stops.
pub async fn play_slot<S: Store>(
    engine: Arc<Engine<Arena, S>>,
    counters: Arc<AutoplayCounters>,
    prefix: String,
    slot: usize,
    players: u32,
) -> Result<(), EngineError> {
    for round in 0u64.. {
        let root = format!("{prefix}-{slot}-{round}");
        create_with_retry(&engine, &root).await?;
        counters.created.fetch_add(1, Relaxed);
        let seed = (slot as u64) << 24 | round;
        if !play_match(&engine, &counters, &root, players, seed).await? {
            break;
        }
    }
    Ok(())
}

/// Creates `root`, waiting out a store outage (backoff up to 1 s); other
/// errors end the slot.
async fn create_with_retry<S: Store>(
    engine: &Engine<Arena, S>,
    root: &str,
) -> Result<(), EngineError> {
    let mut backoff = std::time::Duration::from_millis(50);
    loop {
        match engine.create_match(root).await {
            Err(EngineError::Store(StoreError::Unavailable(reason))) => {
                tracing::warn!(root, %reason, "store unavailable; retrying match creation");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

fn submit<S: Store>(
    engine: &Engine<Arena, S>,
    counters: &AutoplayCounters,
    root: &str,
    player: PlayerId,
    command: ArenaCommand,
) {
    if let Err(error) = engine.submit(root, player, command, None)
        && counters.submit_errors.fetch_add(1, Relaxed) == 0
    {
        tracing::warn!(%error, "command not queued (further ones are only counted)");
    }
}
