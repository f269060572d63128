//! The Game contract: the match aggregate a game plugs into the engine.
//!
//! A game declares its `State`, `Command` and `Event` types and three pure
//! functions. [`Game::decide`] validates a player's command against the
//! current state and turns it into events or a [`Rejection`];
//! [`Game::apply`] is the only way an event changes state; [`Game::step`] is
//! the fixed-step simulation run once per tick after that tick's events.
//!
//! All three must be deterministic: integer or fixed-point math, ordered
//! collections (`BTreeMap`, not `HashMap`), no clock and no unseeded
//! randomness. Replaying the same events over the same snapshot must give
//! the same state, byte for byte; the engine's property tests check that.

use std::fmt;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// A tick number. Tick 0 is the initial state; the first simulated tick is 1.
pub type Tick = u64;

/// A player's identity within a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PlayerId(pub u32);

impl fmt::Display for PlayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// Why a command was refused. The reason is meant for the player.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{reason}")]
pub struct Rejection {
    /// A short human-readable reason, e.g. "cell is occupied".
    pub reason: String,
}

impl Rejection {
    /// Builds a rejection from any displayable reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// A game hosted by the engine. See the module docs for the rules.
pub trait Game: Send + Sync + 'static {
    /// The whole match state; snapshots store its encoding.
    type State: Clone + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What a player asks for.
    type Command: Clone + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What happened; stored in the match log.
    type Event: Clone + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static;

    /// The domain part of storage keys, e.g. `"arena"`.
    fn domain(&self) -> &str;

    /// The state of a new match at tick 0.
    fn initial_state(&self) -> Self::State;

    /// Validates `command` from `player` against `state` and returns the
    /// events it causes, or why it is refused. `tick` is the tick the
    /// command is applied on.
    fn decide(
        &self,
        state: &Self::State,
        tick: Tick,
        player: PlayerId,
        command: &Self::Command,
    ) -> Result<Vec<Self::Event>, Rejection>;

    /// Applies one event. The only way an event changes state.
    fn apply(&self, state: &mut Self::State, tick: Tick, event: &Self::Event);

    /// Advances the simulation by one tick, after that tick's events.
    fn step(&self, state: &mut Self::State, tick: Tick);

    /// Whether the match has ended; an ended match stops ticking.
    fn is_over(&self, state: &Self::State) -> bool;
}
