//! The run's figures, from the watcher's lease and head history and the
//! sessions' state receipts: takeover time per match of the killed node,
//! the pause each player of a migrated match saw, and lost sessions.

use std::collections::{BTreeSet, HashMap};

use crate::bots::{End, SessionRecord};
use crate::report::Distribution;
use crate::watcher::Seen;

/// Delivery slack after the kill: states and writes the killed node sent
/// before it died land within this (loopback), and nobody else can write
/// the match this early (its lease still runs).
const KILL_SLACK_MS: u64 = 300;

/// How long after the drain signal a player's pause is looked for.
const MIGRATION_WINDOW_MS: u64 = 15_000;

/// A gap that began longer than this before the drain signal has another
/// cause (e.g. the earlier kill) and is not a migration pause.
const BEFORE_DRAIN_MS: u64 = 1_000;

/// Takeover figures.
#[derive(Debug, Default)]
pub struct Takeovers {
    /// Matches the killed node held when it was killed.
    pub orphaned: usize,
    /// Of those, matches whose lease went to another node.
    pub moved: usize,
    /// Kill → first newer tick (in Redis or at a client), per match.
    pub times: Distribution,
    /// Matches that never ticked again after the kill.
    pub stalled: Vec<String>,
}

/// Which matches the killed node held, where they went and how fast they
/// ticked again.
pub fn takeovers(seen: &Seen, sessions: &[SessionRecord], killed: &str, kill_at: u64) -> Takeovers {
    let mut out = Takeovers::default();
    let by_root = sessions_by_root(sessions);
    for (root, history) in &seen.history {
        if seen
            .owner_at(root, kill_at)
            .is_none_or(|o| o.node != killed)
        {
            continue;
        }
        out.orphaned += 1;
        let settled = kill_at + KILL_SLACK_MS;
        if history
            .iter()
            .any(|o| o.at > kill_at && !o.node.is_empty() && o.node != killed)
        {
            out.moved += 1;
        }
        // The last tick of the killed node, as Redis and the clients saw it.
        let stored_tick = history
            .iter()
            .take_while(|o| o.at <= settled)
            .map(|o| o.tick)
            .max()
            .unwrap_or(0);
        let receipts = by_root.get(root.as_str()).map_or(&[][..], Vec::as_slice);
        let client_tick = receipts
            .iter()
            .flat_map(|s| s.receipts.iter())
            .filter(|(at, _)| *at <= settled)
            .map(|(_, tick)| *tick)
            .max()
            .unwrap_or(0);
        let last_tick = stored_tick.max(client_tick);
        let in_redis = history
            .iter()
            .find(|o| o.at > settled && o.node != killed && o.tick > last_tick)
            .map(|o| o.at);
        let at_client = receipts
            .iter()
            .flat_map(|s| s.receipts.iter())
            .filter(|(at, tick)| *at > settled && *tick > last_tick)
            .map(|(at, _)| *at)
            .min();
        match in_redis.into_iter().chain(at_client).min() {
            Some(at) => out.times.add(at - kill_at),
            None => out.stalled.push(root.clone()),
        }
    }
    out
}

/// Migration figures.
#[derive(Debug, Default)]
pub struct Migrations {
    /// Matches the drained node held when the drain began.
    pub held: usize,
    /// Of those, matches whose lease went to another node.
    pub moved: usize,
    /// Per player of a moved match: the longest gap between two states
    /// around the migration.
    pub pauses: Distribution,
    /// Matches that stayed with the drained node (or with nobody).
    pub stayed: Vec<String>,
    /// The longest pauses: (ms, match, seat, when the pause began).
    pub longest: Vec<(u64, String, u32, u64)>,
}

/// Which matches the drained node held, whether they moved, and the
/// pause each of their players saw.
pub fn migrations(
    seen: &Seen,
    sessions: &[SessionRecord],
    drained: &str,
    drain_at: u64,
) -> Migrations {
    let mut out = Migrations::default();
    let by_root = sessions_by_root(sessions);
    for (root, history) in &seen.history {
        if seen
            .owner_at(root, drain_at)
            .is_none_or(|o| o.node != drained)
        {
            continue;
        }
        out.held += 1;
        let moved = history
            .iter()
            .any(|o| o.at > drain_at && !o.node.is_empty() && o.node != drained);
        if !moved {
            out.stayed.push(root.clone());
            continue;
        }
        out.moved += 1;
        for session in by_root.get(root.as_str()).into_iter().flatten() {
            let playing = session.receipts.iter().any(|(at, _)| *at <= drain_at);
            if !playing {
                continue;
            }
            let pause = session
                .receipts
                .windows(2)
                .filter(|w| {
                    w[1].0 >= drain_at
                        && w[0].0 + BEFORE_DRAIN_MS >= drain_at
                        && w[0].0 <= drain_at + MIGRATION_WINDOW_MS
                })
                .map(|w| (w[1].0 - w[0].0, w[0].0))
                .max();
            if let Some((pause, began)) = pause {
                out.pauses.add(pause);
                out.longest
                    .push((pause, session.root.clone(), session.seat, began));
            }
        }
    }
    out.longest.sort_unstable_by(|a, b| b.cmp(a));
    out.longest.truncate(3);
    out
}

/// Sessions lost: ended other than by their match being over, or still
/// "playing" with no state for `stale_ms` before `end`.
pub fn lost_sessions(sessions: &[SessionRecord], end: u64, stale_ms: u64) -> Vec<String> {
    sessions
        .iter()
        .filter_map(|s| match &s.end {
            End::Over => None,
            End::Lost(reason) => Some(format!("{} seat {}: {reason}", s.root, s.seat)),
            End::Playing => {
                let last = s.receipts.last().map_or(0, |(at, _)| *at);
                (last + stale_ms < end).then(|| {
                    format!(
                        "{} seat {}: no state since {last} ms (end {end} ms)",
                        s.root, s.seat
                    )
                })
            }
        })
        .collect()
}

/// Distinct matches the sessions played.
pub fn matches_played(sessions: &[SessionRecord]) -> usize {
    sessions
        .iter()
        .map(|s| s.root.as_str())
        .collect::<BTreeSet<_>>()
        .len()
}

fn sessions_by_root(sessions: &[SessionRecord]) -> HashMap<&str, Vec<&SessionRecord>> {
    let mut by_root: HashMap<&str, Vec<&SessionRecord>> = HashMap::new();
    for session in sessions {
        by_root.entry(&session.root).or_default().push(session);
    }
    by_root
}
