//! The sans-IO match: state, log head, pending commands, snapshot policy.
//!
//! Shaped like `quinn-proto`: commands go in through
//! [`MatchCore::handle_command`], [`MatchCore::run_tick`] advances the match by
//! one tick and returns everything the driver must act on (command outcomes,
//! new events, a snapshot when one is due), and
//! [`MatchCore::poll_batch`] hands out the events not yet sent to the
//! store. No clock, no tokio, no store here: the shard loop drives it.

use std::collections::VecDeque;

use crate::codec;
use crate::engine::EventEnvelope;
use crate::engine::replay::Replayed;
use crate::game::{Game, PlayerId, Rejection, Tick};
use crate::store::{AppendBatch, MatchKey, RecordedEvent, Snapshot};

/// What happened to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    /// Applied on `tick` as events `first_sequence..first_sequence + events`.
    Accepted {
        /// The tick it was applied on.
        tick: Tick,
        /// Sequence of its first event.
        first_sequence: u64,
        /// How many events it produced.
        events: u32,
    },
    /// Refused by the game; nothing changed.
    Rejected(Rejection),
}

/// Per-match limits and policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchPolicy {
    /// Commands waiting for the next tick, at most.
    pub max_pending: usize,
    /// A snapshot is taken after every tick divisible by this.
    pub snapshot_every_ticks: u64,
}

impl Default for MatchPolicy {
    fn default() -> Self {
        Self {
            max_pending: 1024,
            snapshot_every_ticks: 300,
        }
    }
}

/// Everything one tick produced. `T` is the caller's token for each command.
#[derive(Debug)]
pub struct TickOutput<E, T> {
    /// The tick just completed.
    pub tick: Tick,
    /// Each command's outcome, in arrival order, with its token.
    pub outcomes: Vec<(T, CommandOutcome)>,
    /// The events applied this tick, in sequence order.
    pub events: Vec<EventEnvelope<E>>,
    /// A snapshot, when the policy says one is due (or the match just ended).
    pub snapshot: Option<Snapshot>,
    /// Whether the match ended on this tick.
    pub ended: bool,
}

/// The command queue of this match is full; the command comes back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the command queue of this match is full")]
pub struct QueueFull<T>(pub T);

struct Pending<C, T> {
    player: PlayerId,
    command: C,
    token: T,
}

/// One match, driven tick by tick. See the module docs.
pub struct MatchCore<G: Game, T> {
    key: MatchKey,
    policy: MatchPolicy,
    state: G::State,
    next_sequence: u64,
    tick: Tick,
    pending: VecDeque<Pending<G::Command, T>>,
    /// Events produced but not yet handed out by `poll_batch`.
    outbox: Vec<RecordedEvent>,
    /// Sequence of the first event in `outbox`.
    outbox_start: u64,
    /// Tick last handed out by `poll_batch`.
    batched_tick: Tick,
    over: bool,
}

impl<G: Game, T> std::fmt::Debug for MatchCore<G, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MatchCore")
            .field("key", &self.key)
            .field("tick", &self.tick)
            .field("next_sequence", &self.next_sequence)
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl<G: Game, T> MatchCore<G, T> {
    /// A new match at tick 0 with the game's initial state.
    pub fn new(game: &G, key: MatchKey, policy: MatchPolicy) -> Self {
        let state = game.initial_state();
        Self::from_parts(game, key, policy, state, 0, 0)
    }

    /// A match continuing from a replayed state.
    pub fn restored(game: &G, key: MatchKey, policy: MatchPolicy, r: Replayed<G::State>) -> Self {
        Self::from_parts(game, key, policy, r.state, r.next_sequence, r.tick)
    }

    fn from_parts(
        game: &G,
        key: MatchKey,
        policy: MatchPolicy,
        state: G::State,
        next_sequence: u64,
        tick: Tick,
    ) -> Self {
        let over = game.is_over(&state);
        Self {
            key,
            policy,
            state,
            next_sequence,
            tick,
            pending: VecDeque::new(),
            outbox: Vec::new(),
            outbox_start: next_sequence,
            batched_tick: tick,
            over,
        }
    }

    /// The match's identity.
    pub fn key(&self) -> &MatchKey {
        &self.key
    }

    /// The current state (after the last completed tick).
    pub fn state(&self) -> &G::State {
        &self.state
    }

    /// The last completed tick.
    pub fn tick(&self) -> Tick {
        self.tick
    }

    /// The sequence the next event will have.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Whether the match has ended.
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// Commands waiting for the next tick.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Queues a command for the next tick. A full queue hands it back.
    pub fn handle_command(
        &mut self,
        player: PlayerId,
        command: G::Command,
        token: T,
    ) -> Result<(), QueueFull<T>> {
        if self.pending.len() >= self.policy.max_pending {
            return Err(QueueFull(token));
        }
        self.pending.push_back(Pending {
            player,
            command,
            token,
        });
        Ok(())
    }

    /// Runs one tick: decides and applies the queued commands in arrival
    /// order, then steps the simulation.
    ///
    /// On an ended match no command is applied and no step runs; queued
    /// commands are rejected.
    pub fn run_tick(&mut self, game: &G) -> TickOutput<G::Event, T> {
        let mut outcomes = Vec::with_capacity(self.pending.len());
        let mut events = Vec::new();
        if self.over {
            for pending in self.pending.drain(..) {
                outcomes.push((
                    pending.token,
                    CommandOutcome::Rejected(Rejection::new("the match is over")),
                ));
            }
            return TickOutput {
                tick: self.tick,
                outcomes,
                events,
                snapshot: None,
                ended: false,
            };
        }
        let tick = self.tick + 1;
        while let Some(Pending {
            player,
            command,
            token,
        }) = self.pending.pop_front()
        {
            let outcome = self.decide_and_apply(game, tick, player, &command, &mut events);
            outcomes.push((token, outcome));
        }
        game.step(&mut self.state, tick);
        self.tick = tick;
        self.over = game.is_over(&self.state);
        let snapshot_due = self.over || tick % self.policy.snapshot_every_ticks.max(1) == 0;
        TickOutput {
            tick,
            outcomes,
            events,
            snapshot: if snapshot_due { self.snapshot() } else { None },
            ended: self.over,
        }
    }

    fn decide_and_apply(
        &mut self,
        game: &G,
        tick: Tick,
        player: PlayerId,
        command: &G::Command,
        applied: &mut Vec<EventEnvelope<G::Event>>,
    ) -> CommandOutcome {
        let decided = match game.decide(&self.state, tick, player, command) {
            Ok(decided) => decided,
            Err(rejection) => return CommandOutcome::Rejected(rejection),
        };
        let first_sequence = self.next_sequence;
        // Encode every event before applying any, so a command either lands
        // whole or not at all.
        let mut envelopes = Vec::with_capacity(decided.len());
        let mut records = Vec::with_capacity(decided.len());
        for (offset, event) in decided.into_iter().enumerate() {
            let envelope = EventEnvelope {
                sequence: first_sequence + offset as u64,
                tick,
                player,
                event,
            };
            match codec::encode(&envelope) {
                Ok(payload) => records.push(RecordedEvent {
                    sequence: envelope.sequence,
                    tick,
                    payload,
                }),
                Err(e) => {
                    return CommandOutcome::Rejected(Rejection::new(format!(
                        "internal error: event not encodable: {e}"
                    )));
                }
            }
            envelopes.push(envelope);
        }
        for envelope in &envelopes {
            game.apply(&mut self.state, tick, &envelope.event);
        }
        let count = envelopes.len() as u32;
        self.next_sequence += u64::from(count);
        self.outbox.extend(records);
        applied.extend(envelopes);
        CommandOutcome::Accepted {
            tick,
            first_sequence,
            events: count,
        }
    }

    /// Refuses every queued command with `rejection`, for a driver that will
    /// not tick this match again (paused or stopping), and hands back their
    /// outcomes in arrival order. Nothing else changes.
    pub fn reject_pending(&mut self, rejection: &Rejection) -> Vec<(T, CommandOutcome)> {
        self.pending
            .drain(..)
            .map(|p| (p.token, CommandOutcome::Rejected(rejection.clone())))
            .collect()
    }

    /// The current state as a snapshot, or `None` if it cannot be encoded.
    pub fn snapshot(&self) -> Option<Snapshot> {
        match codec::encode(&self.state) {
            Ok(state) => Some(Snapshot {
                sequence: self.next_sequence,
                tick: self.tick,
                state,
            }),
            Err(e) => {
                tracing::error!(key = %self.key, error = %e, "match state not encodable; snapshot skipped");
                None
            }
        }
    }

    /// Hands out the events produced since the last call, with the current
    /// tick, as one store batch. `None` when there is nothing new, neither
    /// events nor ticks.
    #[must_use]
    pub fn poll_batch(&mut self) -> Option<AppendBatch> {
        if self.outbox.is_empty() && self.batched_tick == self.tick {
            return None;
        }
        let events = std::mem::take(&mut self.outbox);
        let batch = AppendBatch {
            key: self.key.clone(),
            first_sequence: self.outbox_start,
            events,
            head_tick: self.tick,
        };
        self.outbox_start = self.next_sequence;
        self.batched_tick = self.tick;
        Some(batch)
    }
}
