//! The Game contract: the match aggregate a game plugs into the engine.
//!
//! A game declares its types and a handful of pure functions:
//!
//! - [`Game::setup`] builds the state of a new match from the parameters
//!   whoever created it gave ([`Game::Params`]) and a seed derived from the
//!   match key ([`MatchSetup`]);
//! - [`Game::decide`] validates a player's command against the current
//!   state and turns it into events or a [`Rejection`];
//! - [`Game::apply`] is the only way an event changes state;
//! - [`Game::step`] is the fixed-step simulation run once per tick after
//!   that tick's command events; the events it returns (timers running out,
//!   collisions, the end of a match) are applied and logged like command
//!   events;
//! - [`Game::view`] is what one viewer (a player or a spectator) may see;
//!   the server encodes each distinct view once per tick;
//! - [`Game::join`] turns the game's own join payload into the command that
//!   enters a player.
//!
//! **Determinism.** Everything above must be deterministic: integer or
//! fixed-point math, ordered collections (`BTreeMap`, not `HashMap`), no
//! clock, and randomness only from a generator seeded with
//! [`MatchSetup::seed`] and kept *in the state* (so snapshots carry it).
//! Replaying the same events over the same snapshot gives the same state,
//! byte for byte; snapshots carry a hash of the encoded state so a replay
//! that diverges is reported, not hidden.
//!
//! **Schema versions.** A game declares [`Game::SCHEMA`]. Every stored
//! event and snapshot carries the version it was written with; reading an
//! older one goes through [`Game::upgrade_event`] / [`Game::upgrade_state`],
//! a newer one is a typed error naming the match and the version.
//!
//! **Failures.** A panic in game code ends that match only, with the panic
//! message recorded as its reason; the shard and every other match go on.
//!
//! # Example
//!
//! A counter that players bump and that runs out of time:
//!
//! ```
//! use std::borrow::Cow;
//! use serde::{Deserialize, Serialize};
//! use tickforge::game::{Game, MatchSetup, PlayerId, Rejection, Tick, Viewer};
//!
//! struct Counter;
//!
//! #[derive(Debug, Clone, Default, Serialize, Deserialize)]
//! struct State { count: u32, players: Vec<PlayerId>, over: bool }
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! enum Command { Join, Bump, Leave }
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! enum Event { Joined(PlayerId), Bumped, Left(PlayerId), TimeUp }
//!
//! impl Game for Counter {
//!     type State = State;
//!     type Command = Command;
//!     type Event = Event;
//!     type Params = ();
//!     type View = State;
//!     type Join = ();
//!     const SCHEMA: u32 = 1;
//!
//!     fn domain(&self) -> &str { "counter" }
//!     fn setup(&self, _: &MatchSetup<()>) -> Result<State, Rejection> { Ok(State::default()) }
//!     fn decide(&self, s: &State, _: Tick, p: PlayerId, c: &Command) -> Result<Vec<Event>, Rejection> {
//!         match c {
//!             Command::Join if s.players.contains(&p) => Err(Rejection::new("already in")),
//!             Command::Join => Ok(vec![Event::Joined(p)]),
//!             Command::Bump => Ok(vec![Event::Bumped]),
//!             Command::Leave => Ok(vec![Event::Left(p)]),
//!         }
//!     }
//!     fn apply(&self, s: &mut State, _: Tick, e: &Event) {
//!         match e {
//!             Event::Joined(p) => s.players.push(*p),
//!             Event::Bumped => s.count += 1,
//!             Event::Left(p) => s.players.retain(|q| q != p),
//!             Event::TimeUp => s.over = true,
//!         }
//!     }
//!     fn step(&self, s: &mut State, tick: Tick) -> Vec<Event> {
//!         if tick == 9_000 { vec![Event::TimeUp] } else { Vec::new() }
//!     }
//!     fn is_over(&self, s: &State) -> bool { s.over }
//!     fn view<'s>(&self, s: &'s State, _: Viewer) -> Cow<'s, State> { Cow::Borrowed(s) }
//!     fn shared_view(&self) -> bool { true }
//!     fn join(&self, _: PlayerId, _: &()) -> Result<Command, Rejection> { Ok(Command::Join) }
//!     fn leave(&self) -> Command { Command::Leave }
//!     fn players(&self, s: &State) -> Vec<PlayerId> { s.players.clone() }
//! }
//! # let _ = Counter;
//! ```

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::codec::{self, DecodeError};

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

/// Who a state or an event is shown to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Viewer {
    /// A player of the match.
    Player(PlayerId),
    /// Someone watching without playing.
    Spectator,
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

/// What a new match is built from: the creator's parameters and a seed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchSetup<P> {
    /// The parameters given when the match was created (stored with it).
    pub params: P,
    /// A seed derived from the match key (domain and root): the same match
    /// always gets the same seed. Seed a PRNG with it and keep the PRNG in
    /// the state; never use an unseeded or thread-local generator.
    pub seed: u64,
}

/// Stored bytes written by an older [`Game::SCHEMA`], handed to the
/// upgrade hooks. Decode them with the types that version used.
#[derive(Debug, Clone, Copy)]
pub struct Legacy<'a> {
    /// The schema version the bytes were written with.
    pub version: u32,
    bytes: &'a [u8],
}

impl<'a> Legacy<'a> {
    /// Old bytes of `version`: a codec encoding without its leading format
    /// byte (`&encoded[1..]`), as the engine hands them to the upgrade
    /// hooks; public so a game can test its hooks directly.
    pub fn new(version: u32, bytes: &'a [u8]) -> Self {
        Self { version, bytes }
    }

    /// Decodes the bytes as `T` (the type as it was at `version`).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, UpgradeError> {
        codec::decode_body(self.bytes).map_err(UpgradeError::Decode)
    }
}

/// Why stored data of an older schema version could not be upgraded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The game has no upgrade from this version.
    #[error("no upgrade from schema version {0}")]
    Unsupported(u32),
    /// The old bytes did not decode as the old type.
    #[error("old data does not decode: {0}")]
    Decode(DecodeError),
}

/// Bounds every game type meets: cloneable, debuggable, serde, shareable.
pub trait Data: Clone + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static {}

impl<T: Clone + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static> Data for T {}

/// A game hosted by the engine. See the module docs for the rules.
pub trait Game: Send + Sync + 'static {
    /// The whole match state; snapshots store its encoding.
    type State: Data;
    /// What a player asks for.
    type Command: Data;
    /// What happened; stored in the match log.
    type Event: Data;
    /// Per-match parameters given by whoever creates the match (`()` if none).
    type Params: Data + Default;
    /// What one viewer may see of the state (the state itself when nothing is hidden).
    type View: Data;
    /// What a client sends to join (a display name, a deck, a team…); the
    /// default is used when a client sends none.
    type Join: Data + Default;

    /// The schema version this code writes. Raise it when `State` or
    /// `Event` change their encoding, and upgrade older data in
    /// [`Game::upgrade_event`] / [`Game::upgrade_state`].
    const SCHEMA: u32;

    /// The domain part of storage keys, e.g. `"arena"`.
    fn domain(&self) -> &str;

    /// The state of a new match at tick 0, or why these parameters are refused.
    fn setup(&self, setup: &MatchSetup<Self::Params>) -> Result<Self::State, Rejection>;

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

    /// Advances the simulation by one tick, after that tick's command
    /// events. The returned events are applied right after, in order, and
    /// logged like command events (without a player).
    fn step(&self, state: &mut Self::State, tick: Tick) -> Vec<Self::Event>;

    /// Whether the match has ended; an ended match stops ticking.
    fn is_over(&self, state: &Self::State) -> bool;

    /// What `viewer` may see of `state`. Borrow the state when it has
    /// nothing to hide.
    fn view<'s>(&self, state: &'s Self::State, viewer: Viewer) -> Cow<'s, Self::View>;

    /// Whether every viewer sees the same view (nothing hidden): the server
    /// then encodes one view per tick for all. Default: views differ per viewer.
    fn shared_view(&self) -> bool {
        false
    }

    /// Whether `viewer` may see `event` (sent on the reliable stream when
    /// it is also [`Game::is_reliable`]). Default: everyone sees every event.
    fn event_visible(&self, event: &Self::Event, viewer: Viewer) -> bool {
        let _ = (event, viewer);
        true
    }

    /// Whether `event` goes to clients on the reliable stream (joins,
    /// scores, cards played). Others show only through states.
    fn is_reliable(&self, event: &Self::Event) -> bool {
        let _ = event;
        true
    }

    /// The command that enters `player` with `payload`, or why the payload is refused.
    fn join(&self, player: PlayerId, payload: &Self::Join) -> Result<Self::Command, Rejection>;

    /// The command that takes a player out (when its grace window runs out).
    fn leave(&self) -> Self::Command;

    /// The players present in `state`. The server also uses it to decide
    /// who may resume a slot, and who of a restored match gets a grace
    /// window: players who left must not be listed.
    fn players(&self, state: &Self::State) -> Vec<PlayerId>;

    /// Reads an event written by an older schema version.
    fn upgrade_event(&self, old: Legacy<'_>) -> Result<Self::Event, UpgradeError> {
        Err(UpgradeError::Unsupported(old.version))
    }

    /// Reads a snapshot state written by an older schema version.
    fn upgrade_state(&self, old: Legacy<'_>) -> Result<Self::State, UpgradeError> {
        Err(UpgradeError::Unsupported(old.version))
    }
}

/// The seed of match `root` of `domain`: FNV-1a over both, so it is the
/// same on every node and in every edition (a fork replays identically).
pub fn match_seed(domain: &str, root: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in domain.bytes().chain([0u8]).chain(root.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}
