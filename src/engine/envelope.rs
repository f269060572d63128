//! The envelope every stored event travels in.

use serde::{Deserialize, Serialize};

use crate::game::{PlayerId, Tick};

/// One event with its place in the match log.
///
/// Envelopes are what the event log stores (encoded by [`crate::codec`])
/// and what clients receive as reliable, sequenced events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventEnvelope<E> {
    /// Position in the match log: 0, 1, 2, … with no gaps.
    pub sequence: u64,
    /// The tick the event was applied on.
    pub tick: Tick,
    /// The player whose command caused it.
    pub player: PlayerId,
    /// The game event.
    pub event: E,
}
