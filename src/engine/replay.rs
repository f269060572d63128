//! Rebuilding a match state from a snapshot and the events after it.
//!
//! Replay is the inverse of the tick loop: for each tick after the starting
//! point, apply that tick's events in sequence order, then `step`. Because
//! the game is deterministic, the result equals the live state byte for
//! byte. No I/O here: callers page events in from a store.
//!
//! - [`Replayer`] folds a log into the state at its head, stepping ticks
//!   lazily as events arrive: what restores and rebuilds use.
//! - [`TickReplayer`] runs the same log one tick at a time and stops after
//!   each, so a caller (a replay viewer) can show every intermediate state
//!   and the events of each tick.

use std::collections::VecDeque;

use crate::codec;
use crate::engine::EventEnvelope;
use crate::engine::envelope::{self, ReadError};
use crate::game::{Game, MatchSetup, Tick};
use crate::store::{Head, RecordedEvent, Snapshot};

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
    /// An event or the snapshot state could not be read (malformed, a
    /// newer schema version, or an upgrade that failed).
    #[error("cannot read {what}: {source}")]
    Read {
        /// "snapshot state" or "event N".
        what: String,
        /// Why.
        source: ReadError,
    },
    /// The snapshot's bytes do not hash to the hash stored with them.
    #[error(
        "the snapshot at tick {tick} is corrupt: its state hashes to {found:#018x}, {expected:#018x} was stored"
    )]
    SnapshotCorrupt {
        /// The snapshot's tick.
        tick: Tick,
        /// The stored hash.
        expected: u64,
        /// The hash of the stored bytes.
        found: u64,
    },
    /// Replay reached a checkpoint (a stored snapshot's tick) with a
    /// different state: the log, the snapshot or the game's determinism is
    /// broken at or before this tick.
    #[error(
        "replay diverged by tick {tick} (sequence {sequence}): state hash {found:#018x}, \
         the snapshot taken live has {expected:#018x}"
    )]
    Diverged {
        /// The first checked tick whose state differs.
        tick: Tick,
        /// The events folded in at that tick (the live snapshot's sequence).
        sequence: u64,
        /// The hash the live match had.
        expected: u64,
        /// The hash replay arrived at.
        found: u64,
    },
    /// The game refused the stored setup, or its code panicked in replay.
    #[error("the game failed in replay: {0}")]
    Game(String),
}

/// A state hash replay must arrive at: a stored snapshot's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Checkpoint {
    sequence: u64,
    tick: Tick,
    hash: u64,
}

/// Folds events into a state, one at a time, keeping tick order.
///
/// Within a tick, events of players' commands come first and are applied
/// before the tick's step; events the step emitted (no player) follow and
/// are applied after it, exactly as the match ran.
#[derive(Debug)]
pub struct Replayer<'g, G: Game> {
    game: &'g G,
    state: G::State,
    next_sequence: u64,
    /// The last tick whose step has run.
    tick: Tick,
    /// The tick of the last applied event (its step may still be owed).
    open_tick: Tick,
    /// Set right after a step's event: more events of that step may follow.
    open_step: Option<Tick>,
    /// The sequence replay started at.
    start_sequence: u64,
    /// A stored snapshot the replay is checked against when it gets there.
    checkpoint: Option<Checkpoint>,
}

impl<'g, G: Game> Replayer<'g, G> {
    /// Starts from the state the game's setup builds at tick 0, sequence 0.
    pub fn from_start(game: &'g G, setup: &MatchSetup<G::Params>) -> Result<Self, RestoreError> {
        let state = crate::engine::core::guard(|| game.setup(setup))
            .map_err(RestoreError::Game)?
            .map_err(|rejection| RestoreError::Game(format!("setup refused: {rejection}")))?;
        Ok(Self {
            game,
            state,
            next_sequence: 0,
            tick: 0,
            open_tick: 0,
            open_step: None,
            start_sequence: 0,
            checkpoint: None,
        })
    }

    /// Starts from a snapshot, after checking its bytes against its hash
    /// and upgrading a state of an older schema version.
    pub fn from_snapshot(game: &'g G, snapshot: &Snapshot) -> Result<Self, RestoreError> {
        let found = codec::state_hash(&snapshot.state);
        if found != snapshot.hash {
            return Err(RestoreError::SnapshotCorrupt {
                tick: snapshot.tick,
                expected: snapshot.hash,
                found,
            });
        }
        let state =
            envelope::decode_state(game, snapshot.schema, &snapshot.state).map_err(|source| {
                RestoreError::Read {
                    what: "snapshot state".into(),
                    source,
                }
            })?;
        Ok(Self {
            game,
            state,
            next_sequence: snapshot.sequence,
            tick: snapshot.tick,
            open_tick: snapshot.tick,
            open_step: None,
            start_sequence: snapshot.sequence,
            checkpoint: None,
        })
    }

    /// Checks the replay against `snapshot` (one taken live, later than
    /// where this replay starts): when replay has folded in the snapshot's
    /// events and run its tick, the state must hash to the snapshot's hash,
    /// else [`RestoreError::Diverged`]. A snapshot at or before the start
    /// is ignored.
    ///
    /// A snapshot written by an older schema version is compared by the
    /// hash of its upgraded state, encoded as this build encodes it (the
    /// stored hash is of the old bytes); one that cannot be upgraded is
    /// not a checkpoint (a restore from it reports why).
    pub fn check_against(&mut self, snapshot: &Snapshot) {
        if snapshot.tick <= self.tick {
            return;
        }
        let hash = if snapshot.schema == G::SCHEMA {
            Some(snapshot.hash)
        } else {
            envelope::decode_state(self.game, snapshot.schema, &snapshot.state)
                .ok()
                .and_then(|state| codec::encode(&state).ok())
                .map(|bytes| codec::state_hash(&bytes))
        };
        self.checkpoint = hash.map(|hash| Checkpoint {
            sequence: snapshot.sequence,
            tick: snapshot.tick,
            hash,
        });
    }

    /// The sequence the next event must have.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Applies one stored event, first stepping through the ticks before it.
    pub fn apply(&mut self, record: &RecordedEvent) -> Result<(), RestoreError> {
        self.apply_envelope(record).map(drop)
    }

    /// [`Replayer::apply`], handing back the decoded envelope.
    fn apply_envelope(
        &mut self,
        record: &RecordedEvent,
    ) -> Result<EventEnvelope<G::Event>, RestoreError> {
        if record.sequence != self.next_sequence {
            return Err(RestoreError::Gap {
                expected: self.next_sequence,
                found: record.sequence,
            });
        }
        let envelope = envelope::decode_event(self.game, &record.payload).map_err(|source| {
            RestoreError::Read {
                what: format!("event {}", record.sequence),
                source,
            }
        })?;
        if envelope.sequence != record.sequence || envelope.tick != record.tick {
            return Err(RestoreError::EnvelopeMismatch {
                sequence: record.sequence,
                envelope_sequence: envelope.sequence,
                envelope_tick: envelope.tick,
            });
        }
        let tick = record.tick;
        let from_step = envelope.player.is_none();
        // A command's event belongs before its tick's step; a step's event
        // after it (and after every command event of that tick).
        let in_order = tick > self.tick || (from_step && self.open_step == Some(tick));
        if !in_order {
            return Err(RestoreError::TickOrder {
                sequence: record.sequence,
                tick,
                at: self.tick,
            });
        }
        self.verify_through(tick - 1)?;
        self.step_until(if from_step { tick } else { tick - 1 })?;
        let game = self.game;
        let state = &mut self.state;
        crate::engine::core::guard(|| game.apply(state, tick, &envelope.event))
            .map_err(RestoreError::Game)?;
        self.next_sequence += 1;
        // `open_tick` remembers the tick of the last event: its step may
        // still be owed (command events leave `self.tick` one below it).
        self.open_tick = tick;
        self.open_step = from_step.then_some(tick);
        Ok(envelope)
    }

    fn step_until(&mut self, tick: Tick) -> Result<(), RestoreError> {
        while self.tick < tick {
            let next = self.tick + 1;
            let game = self.game;
            let state = &mut self.state;
            // The events the step emits are in the log; they are applied from there.
            crate::engine::core::guard(|| drop(game.step(state, next)))
                .map_err(RestoreError::Game)?;
            self.tick = next;
        }
        Ok(())
    }

    /// Once every event of the ticks up to `tick` is applied: runs up to
    /// the checkpoint's tick if it lies there and compares the state hash.
    fn verify_through(&mut self, tick: Tick) -> Result<(), RestoreError> {
        let Some(checkpoint) = self.checkpoint else {
            return Ok(());
        };
        if checkpoint.tick > tick {
            return Ok(());
        }
        self.checkpoint = None;
        self.step_until(checkpoint.tick)?;
        let found = codec::encode(&self.state)
            .map(|bytes| codec::state_hash(&bytes))
            .unwrap_or(0);
        if found != checkpoint.hash
            || self.next_sequence != checkpoint.sequence
            || self.tick != checkpoint.tick
        {
            return Err(RestoreError::Diverged {
                tick: checkpoint.tick,
                sequence: checkpoint.sequence,
                expected: checkpoint.hash,
                found,
            });
        }
        Ok(())
    }

    /// Steps up to `head_tick` (or through the last event's tick, if that
    /// is later) and returns the state, the next sequence and the tick
    /// reached, after checking a checkpoint on the way.
    pub fn finish(mut self, head_tick: Tick) -> Result<Replayed<G::State>, RestoreError> {
        let target = head_tick.max(self.open_tick);
        self.verify_through(target)?;
        self.step_until(target)?;
        Ok(Replayed {
            state: self.state,
            next_sequence: self.next_sequence,
            tick: self.tick,
            events_replayed: self.next_sequence - self.start_sequence,
        })
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
    /// How many events were replayed on top of the starting point (the
    /// snapshot, or the setup).
    pub events_replayed: u64,
}

/// What one call to [`TickReplayer::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum TickStep {
    /// This tick ran: its events were applied in sequence order, then the
    /// game's step. [`TickReplayer::state`] is the state after it and
    /// [`TickReplayer::tick_events`] its events.
    Ran(Tick),
    /// Not every event of the next tick is queued yet: read the log from
    /// sequence `from` on, [`push`](TickReplayer::push) the page, and step
    /// again.
    NeedEvents {
        /// The sequence the next page must start at.
        from: u64,
    },
    /// The head is reached: every event up to it is applied and every tick
    /// up to it has run. Stepping again changes nothing.
    Finished,
}

/// Replays a log one tick at a time, for callers that show every tick (a
/// replay viewer) rather than only the end state.
///
/// It is told the log's [`Head`] up front and replays exactly up to it:
/// every event below `head.next_sequence`, and every tick up to
/// `head.tick` (or up to the last event's tick, if that is later). Each
/// [`step`](Self::step) runs the next tick the way the match did: that
/// tick's events in sequence order, then [`Game::step`]. At the end the
/// state is byte for byte what [`Replayer`] (and so
/// [`rebuild_from_start`](crate::engine::rebuild_from_start) or
/// [`restore`](crate::engine::restore)) gives for the same head.
///
/// No I/O: when a tick's events are not all queued, `step` answers
/// [`TickStep::NeedEvents`] and the caller pages them in with
/// [`push`](Self::push). Events past the head (a live match moving on)
/// are ignored.
///
/// After an error the replay is broken (the state may hold half a tick);
/// start a new one.
///
/// ```
/// use tickforge::arena::{Arena, bot::Bot};
/// use tickforge::engine::replay::{TickReplayer, TickStep};
/// use tickforge::engine::{MatchCore, MatchPolicy};
/// use tickforge::game::{MatchSetup, PlayerId};
/// use tickforge::store::{Head, MatchKey, MatchStatus};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // A match played for 100 ticks; `log` is what the store would hold.
/// let arena = Arena::default();
/// let key = MatchKey::new("arena", "main", "m1")?;
/// let mut core: MatchCore<Arena, ()> = MatchCore::new(&arena, key, MatchPolicy::default(), &MatchSetup::default())?;
/// let mut bots = [Bot::new(PlayerId(1), 1), Bot::new(PlayerId(2), 2)];
/// let mut log = Vec::new();
/// for _ in 0..100 {
///     for bot in &mut bots {
///         if let Some(command) = bot.next_command(&arena, core.state()) {
///             let _ = core.handle_command(bot.player(), command, ());
///         }
///     }
///     let _ = core.run_tick(&arena);
///     log.extend(core.poll_batch().into_iter().flat_map(|batch| batch.events));
/// }
/// let head = Head { next_sequence: core.next_sequence(), tick: core.tick(), status: MatchStatus::Live };
///
/// // Replayed tick by tick, paging the log in 16 events at a time.
/// let mut replay = TickReplayer::from_start(&arena, &MatchSetup::default(), &head)?;
/// let mut ticks = 0;
/// loop {
///     match replay.step()? {
///         TickStep::Ran(tick) => {
///             assert_eq!(replay.state().tick, tick);
///             assert!(replay.tick_events().iter().all(|e| e.tick == tick));
///             ticks += 1;
///         }
///         TickStep::NeedEvents { from } => {
///             let page = log.iter().skip(from as usize).take(16).cloned();
///             replay.push(page)?;
///         }
///         TickStep::Finished => break,
///     }
/// }
/// assert_eq!(ticks, 100);
/// assert_eq!(replay.state(), core.state());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TickReplayer<'g, G: Game> {
    replayer: Replayer<'g, G>,
    /// The last tick to run (unless an event lies later).
    head_tick: Tick,
    /// The events to replay are those below this sequence.
    end_sequence: u64,
    /// Pushed events not applied yet, in sequence order.
    queued: VecDeque<RecordedEvent>,
    /// The sequence the next pushed event must have.
    queued_to: u64,
    /// The events of the last tick that ran.
    tick_events: Vec<EventEnvelope<G::Event>>,
}

impl<'g, G: Game> TickReplayer<'g, G> {
    /// Replays from the state the match's setup builds at tick 0,
    /// sequence 0, up to `head`.
    pub fn from_start(
        game: &'g G,
        setup: &MatchSetup<G::Params>,
        head: &Head,
    ) -> Result<Self, RestoreError> {
        Ok(Self::new(Replayer::from_start(game, setup)?, head))
    }

    /// Checks the replay against a snapshot taken live (see
    /// [`Replayer::check_against`]): the tick it was taken on is verified
    /// right after it runs.
    pub fn check_against(&mut self, snapshot: &Snapshot) {
        self.replayer.check_against(snapshot);
    }

    /// Replays from `snapshot` up to `head`: the first tick to run is the
    /// one after the snapshot's, the first event to push the snapshot's
    /// sequence.
    pub fn from_snapshot(
        game: &'g G,
        snapshot: &Snapshot,
        head: &Head,
    ) -> Result<Self, RestoreError> {
        Ok(Self::new(Replayer::from_snapshot(game, snapshot)?, head))
    }

    fn new(replayer: Replayer<'g, G>, head: &Head) -> Self {
        let start = replayer.next_sequence();
        Self {
            replayer,
            head_tick: head.tick,
            end_sequence: head.next_sequence.max(start),
            queued: VecDeque::new(),
            queued_to: start,
            tick_events: Vec::new(),
        }
    }

    /// Queues a page of stored events, which must continue the ones pushed
    /// before (a skipped sequence is [`RestoreError::Gap`]). Events at or
    /// past the head's sequence are ignored. Decoding and order checks
    /// happen when their tick runs.
    pub fn push(
        &mut self,
        records: impl IntoIterator<Item = RecordedEvent>,
    ) -> Result<(), RestoreError> {
        for record in records {
            if self.queued_to >= self.end_sequence {
                break;
            }
            if record.sequence != self.queued_to {
                return Err(RestoreError::Gap {
                    expected: self.queued_to,
                    found: record.sequence,
                });
            }
            self.queued_to += 1;
            self.queued.push_back(record);
        }
        Ok(())
    }

    /// Runs the next tick, if its events are all queued and the head is
    /// not reached yet. See [`TickStep`].
    pub fn step(&mut self) -> Result<TickStep, RestoreError> {
        if self.is_finished() {
            return Ok(TickStep::Finished);
        }
        let next = self.replayer.tick + 1;
        // Events come in tick order, so the tick is complete once a later
        // event is queued, or once every event up to the head is.
        let complete = self.queued_to == self.end_sequence
            || self.queued.back().is_some_and(|last| last.tick > next);
        if !complete {
            return Ok(TickStep::NeedEvents {
                from: self.queued_to,
            });
        }
        self.tick_events.clear();
        // An event of an earlier tick is taken too, so that `apply`
        // reports it as out of order rather than it being skipped.
        while self
            .queued
            .front()
            .is_some_and(|record| record.tick <= next)
        {
            let Some(record) = self.queued.pop_front() else {
                break;
            };
            let envelope = self.replayer.apply_envelope(&record)?;
            self.tick_events.push(envelope);
        }
        self.replayer.step_until(next)?;
        self.replayer.verify_through(next)?;
        Ok(TickStep::Ran(next))
    }

    /// Whether every event up to the head is applied and every tick up to
    /// it has run.
    pub fn is_finished(&self) -> bool {
        self.queued.is_empty()
            && self.queued_to == self.end_sequence
            && self.replayer.tick >= self.head_tick
    }

    /// The state after the last tick that ran (the starting state before
    /// the first step).
    pub fn state(&self) -> &G::State {
        &self.replayer.state
    }

    /// The last tick that ran (the starting tick before the first step).
    pub fn tick(&self) -> Tick {
        self.replayer.tick
    }

    /// The events the last tick applied, in sequence order (empty before
    /// the first step and for a tick without events).
    pub fn tick_events(&self) -> &[EventEnvelope<G::Event>] {
        &self.tick_events
    }

    /// The sequence the next applied event will have (the number of
    /// events folded into [`state`](Self::state)).
    pub fn next_sequence(&self) -> u64 {
        self.replayer.next_sequence
    }

    /// The head tick replay runs to: `head.tick`, or the tick of the last
    /// event if that is later (known once it is queued).
    pub fn head_tick(&self) -> Tick {
        let last_event = self
            .queued
            .back()
            .map_or(self.replayer.open_tick, |r| r.tick);
        self.head_tick.max(last_event)
    }
}
