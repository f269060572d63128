//! Projections: read models built from match logs, exactly once.
//!
//! A projection consumes a match's events from its position (the next
//! sequence it has not processed, kept under `positions:<handler>:{m}`) and
//! must move that position *in the same atomic step* as its output, so that
//! a runner that dies anywhere and starts again never counts an event twice
//! nor skips one. [`catch_up`] is the runner: it reads the log from the
//! stored position in pages, decodes the envelopes, and hands each page to
//! the projection. [`leaderboard::Leaderboard`] is the shipped projection.

use std::future::Future;

use crate::codec;
use crate::engine::EventEnvelope;
use crate::game::Game;
use crate::store::{EventStore, MatchKey, StoreError};

pub mod leaderboard;

/// Events read from the log per projection step.
pub const PAGE: usize = 1_000;

/// A read model fed by match events.
pub trait Projection<G: Game>: Send + Sync {
    /// The handler name its positions are stored under.
    fn name(&self) -> &str;

    /// The next sequence this projection will process for `key`.
    fn position(&self, key: &MatchKey) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Applies `events` (consecutive, starting at sequence `from`) and moves
    /// the position to the sequence after them, atomically. If the stored
    /// position is not `from` (another runner got there first) nothing is
    /// applied. Returns the position stored afterwards.
    fn apply(
        &self,
        key: &MatchKey,
        from: u64,
        events: &[EventEnvelope<G::Event>],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// Why a projection step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The log does not hold the events the projection needs next.
    #[error("log of {key} has a gap: expected sequence {expected}, found {found}")]
    Gap {
        /// The match.
        key: String,
        /// The sequence the projection needed.
        expected: u64,
        /// The sequence the store returned.
        found: u64,
    },
    /// A stored event could not be decoded.
    #[error("event {sequence} of {key} cannot be decoded: {source}")]
    Decode {
        /// The match.
        key: String,
        /// The event.
        sequence: u64,
        /// The codec's reason.
        source: codec::DecodeError,
    },
}

/// Feeds `projection` every event of `key` it has not processed yet, at
/// most `max_pages` pages of [`PAGE`] events (`usize::MAX`: to the end).
/// Returns the position reached.
pub async fn catch_up<G, S, P>(
    store: &S,
    projection: &P,
    key: &MatchKey,
    max_pages: usize,
) -> Result<u64, ProjectionError>
where
    G: Game,
    S: EventStore,
    P: Projection<G>,
{
    let mut position = projection.position(key).await?;
    for _ in 0..max_pages {
        let page = store.read(key, position, PAGE).await?;
        if page.is_empty() {
            break;
        }
        let mut events = Vec::with_capacity(page.len());
        for (expected, record) in (position..).zip(&page) {
            if record.sequence != expected {
                return Err(ProjectionError::Gap {
                    key: key.to_string(),
                    expected,
                    found: record.sequence,
                });
            }
            let envelope: EventEnvelope<G::Event> =
                codec::decode(&record.payload).map_err(|source| ProjectionError::Decode {
                    key: key.to_string(),
                    sequence: record.sequence,
                    source,
                })?;
            events.push(envelope);
        }
        position = projection.apply(key, position, &events).await?;
        if page.len() < PAGE {
            break;
        }
    }
    Ok(position)
}
