//! Rebuilding a match state from a snapshot and the events after it.
//!
//! Replay is the inverse of the tick loop: for each tick after the starting
//! point, apply that tick's events in sequence order, then `step`. Because
//! the game is deterministic, the result equals the live state byte for
//! byte. No I/O here: callers page events in from a store.

use crate::codec::{self, DecodeError};
use crate::engine::EventEnvelope;
use crate::game::{Game, Tick};
use crate::store::{RecordedEvent, Snapshot};

/// Why a log could not be replayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The log skips a sequence.
    #[error("gap in the event log: expected sequence {expected}, found {found}")]
    Gap {
        /// The sequence replay needed next.
        expected: u64,
        /// The sequence found instead.
        found: u64,
    },
    /// An event's tick goes backwards or lies inside the snapshot.
    #[error("event {sequence} has tick {tick}, but replay is already at tick {at}")]
    TickOrder {
        /// The event's sequence.
        sequence: u64,
        /// Its tick.
        tick: Tick,
        /// The tick replay had reached.
        at: Tick,
    },
    /// The stored envelope disagrees with the record around it.
    #[error("event {sequence}: envelope says sequence {envelope_sequence}, tick {envelope_tick}")]
    EnvelopeMismatch {
        /// The record's sequence.
        sequence: u64,
        /// The sequence inside the envelope.
        envelope_sequence: u64,
        /// The tick inside the envelope.
        envelope_tick: Tick,
    },
    /// An event or the snapshot state could not be decoded.
    #[error("cannot decode {what}: {source}")]
    Decode {
        /// "snapshot state" or "event N".
        what: String,
        /// The codec's reason.
        source: DecodeError,
    },
}

/// Folds events into a state, one at a time, keeping tick order.
#[derive(Debug)]
pub struct Replayer<'g, G: Game> {
    game: &'g G,
    state: G::State,
    next_sequence: u64,
    /// The last tick whose step has run.
    tick: Tick,
    /// The tick of the last applied event (its step may still be owed).
    open_tick: Tick,
}

impl<'g, G: Game> Replayer<'g, G> {
    /// Starts from the game's initial state at tick 0, sequence 0.
    pub fn from_start(game: &'g G) -> Self {
        Self {
            game,
            state: game.initial_state(),
            next_sequence: 0,
            tick: 0,
            open_tick: 0,
        }
    }

    /// Starts from a snapshot.
    pub fn from_snapshot(game: &'g G, snapshot: &Snapshot) -> Result<Self, RestoreError> {
        let state = codec::decode(&snapshot.state).map_err(|source| RestoreError::Decode {
            what: "snapshot state".into(),
            source,
        })?;
        Ok(Self {
            game,
            state,
            next_sequence: snapshot.sequence,
            tick: snapshot.tick,
            open_tick: snapshot.tick,
        })
    }

    /// The sequence the next event must have.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Applies one stored event, first stepping through the ticks before it.
    pub fn apply(&mut self, record: &RecordedEvent) -> Result<(), RestoreError> {
        if record.sequence != self.next_sequence {
            return Err(RestoreError::Gap {
                expected: self.next_sequence,
                found: record.sequence,
            });
        }
        let envelope: EventEnvelope<G::Event> =
            codec::decode(&record.payload).map_err(|source| RestoreError::Decode {
                what: format!("event {}", record.sequence),
                source,
            })?;
        if envelope.sequence != record.sequence || envelope.tick != record.tick {
            return Err(RestoreError::EnvelopeMismatch {
                sequence: record.sequence,
                envelope_sequence: envelope.sequence,
                envelope_tick: envelope.tick,
            });
        }
        // The event belongs to tick `record.tick`, whose step has not run yet.
        if record.tick <= self.tick {
            return Err(RestoreError::TickOrder {
                sequence: record.sequence,
                tick: record.tick,
                at: self.tick,
            });
        }
        self.step_until(record.tick - 1);
        self.game
            .apply(&mut self.state, record.tick, &envelope.event);
        self.next_sequence += 1;
        // `self.tick` stays one below the event's tick, so later events of
        // the same tick are still accepted; `open_tick` remembers that this
        // tick's step is still owed.
        self.open_tick = record.tick;
        Ok(())
    }

    fn step_until(&mut self, tick: Tick) {
        while self.tick < tick {
            self.tick += 1;
            self.game.step(&mut self.state, self.tick);
        }
    }

    /// Steps up to `head_tick` (or through the last event's tick, if that
    /// is later) and returns the state, the next sequence and the tick reached.
    pub fn finish(mut self, head_tick: Tick) -> Replayed<G::State> {
        let target = head_tick.max(self.open_tick);
        self.step_until(target);
        Replayed {
            state: self.state,
            next_sequence: self.next_sequence,
            tick: self.tick,
        }
    }
}

/// The outcome of a replay.
#[derive(Debug, Clone)]
pub struct Replayed<S> {
    /// The rebuilt state.
    pub state: S,
    /// The sequence the next event will have.
    pub next_sequence: u64,
    /// The tick the state is at (its step has run).
    pub tick: Tick,
}
