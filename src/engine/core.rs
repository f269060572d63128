//! The sans-IO match: state, log head, pending commands, snapshot policy.
//!
//! Shaped like `quinn-proto`: commands go in through
//! [`MatchCore::handle_command`], [`MatchCore::run_tick`] advances the match by
//! one tick and returns everything the driver must act on (command outcomes,
//! new events, a snapshot when one is due), and
//! [`MatchCore::poll_batch`] hands out the events not yet sent to the
//! store. No clock, no tokio, no store here: the shard loop drives it.
//!
//! Game code is untrusted for availability: a panic in `decide`, `apply`
//! or `step` fails this match only ([`TickOutput::failure`]); the tick's
//! events are dropped, the state is never snapshotted again, and the
//! driver stops ticking it.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::codec::{self, EncodeError};
use crate::engine::EventEnvelope;
use crate::engine::replay::Replayed;
use crate::game::{Game, MatchSetup, PlayerId, Rejection, Tick};
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
    /// Set when game code panicked (or produced something that cannot be
    /// stored) on this tick: the match has failed for this reason. The
    /// tick's events were dropped; nothing of it is to be stored.
    pub failure: Option<String>,
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
    failed: Option<String>,
    /// A failure found outside the tick (the game's view panicked),
    /// reported by the next `run_tick`.
    aborted: Option<String>,
    /// The encoded [`MatchSetup`] the match was created with.
    setup: std::sync::Arc<[u8]>,
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
    /// A new match at tick 0 with the state [`Game::setup`] builds. Refused
    /// parameters (or a panic in `setup`) are a [`Rejection`].
    pub fn new(
        game: &G,
        key: MatchKey,
        policy: MatchPolicy,
        setup: &MatchSetup<G::Params>,
    ) -> Result<Self, Rejection> {
        let state = guard(|| game.setup(setup))
            .map_err(|panic| Rejection::new(format!("game setup panicked: {panic}")))??;
        let encoded = codec::encode(setup)
            .map_err(|e| Rejection::new(format!("the match setup cannot be stored: {e}")))?;
        Ok(Self::from_parts(
            game,
            key,
            policy,
            state,
            0,
            0,
            encoded.into(),
        ))
    }

    /// A match continuing from a replayed state; `setup` is its stored
    /// encoded setup.
    pub fn restored(
        game: &G,
        key: MatchKey,
        policy: MatchPolicy,
        r: Replayed<G::State>,
        setup: std::sync::Arc<[u8]>,
    ) -> Self {
        Self::from_parts(game, key, policy, r.state, r.next_sequence, r.tick, setup)
    }

    fn from_parts(
        game: &G,
        key: MatchKey,
        policy: MatchPolicy,
        state: G::State,
        next_sequence: u64,
        tick: Tick,
        setup: std::sync::Arc<[u8]>,
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
            failed: None,
            aborted: None,
            setup,
        }
    }

    /// The encoded setup (parameters and seed) the match was created with,
    /// as the store keeps it.
    pub fn setup(&self) -> &std::sync::Arc<[u8]> {
        &self.setup
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

    /// Fails the match on its next tick with `reason`, for game code that
    /// broke outside the tick (the view a client is sent). Events already
    /// produced are kept.
    pub fn abort(&mut self, reason: String) {
        if self.failed.is_none() {
            self.aborted = Some(reason);
        }
    }

    /// Why the match failed, if its game code broke.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
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
    /// order, then steps the simulation and applies the events the step
    /// emitted.
    ///
    /// On an ended or failed match no command is applied and no step runs;
    /// queued commands are rejected.
    pub fn run_tick(&mut self, game: &G) -> TickOutput<G::Event, T> {
        let mut outcomes = Vec::with_capacity(self.pending.len());
        let mut events = Vec::new();
        if self.over || self.failed.is_some() {
            let reason = match &self.failed {
                Some(failure) => format!("the match failed: {failure}"),
                None => "the match is over".to_owned(),
            };
            for pending in self.pending.drain(..) {
                outcomes.push((
                    pending.token,
                    CommandOutcome::Rejected(Rejection::new(&reason)),
                ));
            }
            return TickOutput {
                tick: self.tick,
                outcomes,
                events,
                snapshot: None,
                ended: false,
                failure: None,
            };
        }
        if let Some(reason) = self.aborted.take() {
            let unprocessed = std::mem::take(&mut self.pending);
            let (outbox_len, next_sequence) = (self.outbox.len(), self.next_sequence);
            return self.fail(
                self.tick,
                reason,
                outcomes,
                unprocessed,
                outbox_len,
                next_sequence,
            );
        }
        let tick = self.tick + 1;
        let (outbox_len, next_sequence) = (self.outbox.len(), self.next_sequence);
        let mut pending = std::mem::take(&mut self.pending);
        let ran = guard(|| {
            while let Some(Pending {
                player,
                command,
                token,
            }) = pending.pop_front()
            {
                let outcome = self.decide_and_apply(game, tick, player, &command, &mut events);
                outcomes.push((token, outcome));
            }
            let emitted = game.step(&mut self.state, tick);
            self.record(game, tick, None, emitted, &mut events)
                .map_err(|e| format!("an event of the step cannot be stored: {e}"))?;
            Ok::<_, String>(game.is_over(&self.state))
        });
        let failure = match ran {
            Ok(Ok(over)) => {
                self.tick = tick;
                self.over = over;
                // Every command ran: the queue (and its buffer) is reused.
                std::mem::swap(&mut self.pending, &mut pending);
                None
            }
            Ok(Err(reason)) => Some(reason),
            Err(panic) => Some(format!("game code panicked on tick {tick}: {panic}")),
        };
        let snapshot_due = self.over || tick % self.policy.snapshot_every_ticks.max(1) == 0;
        let snapshot = match (&failure, snapshot_due) {
            (None, true) => match self.snapshot() {
                Ok(snapshot) => Some(snapshot),
                Err(e) => {
                    return self.fail(
                        tick,
                        format!("the state cannot be stored: {e}"),
                        outcomes,
                        pending,
                        outbox_len,
                        next_sequence,
                    );
                }
            },
            _ => None,
        };
        if let Some(reason) = failure {
            return self.fail(tick, reason, outcomes, pending, outbox_len, next_sequence);
        }
        TickOutput {
            tick,
            outcomes,
            events,
            snapshot,
            ended: self.over,
            failure: None,
        }
    }

    /// Fails the match on `tick`: drops the tick's events (its state is not
    /// trustworthy), rejects every command of the tick, keeps nothing to store.
    fn fail(
        &mut self,
        tick: Tick,
        reason: String,
        outcomes: Vec<(T, CommandOutcome)>,
        unprocessed: VecDeque<Pending<G::Command, T>>,
        outbox_len: usize,
        next_sequence: u64,
    ) -> TickOutput<G::Event, T> {
        self.outbox.truncate(outbox_len);
        self.next_sequence = next_sequence;
        self.failed = Some(reason.clone());
        let refusal = Rejection::new(format!("the match failed: {reason}"));
        let outcomes = outcomes
            .into_iter()
            .map(|(token, _)| token)
            .chain(unprocessed.into_iter().map(|p| p.token))
            .map(|token| (token, CommandOutcome::Rejected(refusal.clone())))
            .collect();
        TickOutput {
            tick,
            outcomes,
            events: Vec::new(),
            snapshot: None,
            ended: false,
            failure: Some(reason),
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
        match self.record(game, tick, Some(player), decided, applied) {
            Ok(count) => CommandOutcome::Accepted {
                tick,
                first_sequence,
                events: count,
            },
            Err(e) => CommandOutcome::Rejected(Rejection::new(format!(
                "an event of this command cannot be stored: {e}"
            ))),
        }
    }

    /// Encodes every event before applying any (so a batch lands whole or
    /// not at all), then applies them, sequences them and queues them for
    /// the store. Returns how many there were.
    fn record(
        &mut self,
        game: &G,
        tick: Tick,
        player: Option<PlayerId>,
        decided: Vec<G::Event>,
        applied: &mut Vec<EventEnvelope<G::Event>>,
    ) -> Result<u32, EncodeError> {
        let first_sequence = self.next_sequence;
        let mut envelopes = Vec::with_capacity(decided.len());
        let mut records = Vec::with_capacity(decided.len());
        for (offset, event) in decided.into_iter().enumerate() {
            let envelope = EventEnvelope {
                sequence: first_sequence + offset as u64,
                tick,
                player,
                schema: G::SCHEMA,
                event,
            };
            records.push(RecordedEvent {
                sequence: envelope.sequence,
                tick,
                payload: codec::encode(&envelope)?,
            });
            envelopes.push(envelope);
        }
        for envelope in &envelopes {
            game.apply(&mut self.state, tick, &envelope.event);
        }
        let count = envelopes.len() as u32;
        self.next_sequence += u64::from(count);
        self.outbox.extend(records);
        applied.extend(envelopes);
        Ok(count)
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

    /// The current state as a snapshot (with its hash), or why it cannot
    /// be stored (too large to read back, or not encodable).
    pub fn snapshot(&self) -> Result<Snapshot, EncodeError> {
        let state = codec::encode(&self.state)?;
        Ok(Snapshot::new(
            self.next_sequence,
            self.tick,
            state,
            G::SCHEMA,
        ))
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
            epoch: None,
            renew_lease: None,
        };
        self.outbox_start = self.next_sequence;
        self.batched_tick = self.tick;
        Some(batch)
    }
}

/// Runs game code, turning a panic into its message.
pub(crate) fn guard<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned())
    })
}
