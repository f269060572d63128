//! Eights: a 2–6 player shedding card game ("Crazy Eights") as a tickforge
//! [`Game`], with hidden hands, per-match parameters, a seeded deck and
//! turn timers.
//!
//! Rules: every player is dealt `hand_size` cards and one card starts the
//! discard pile. On your turn play a card of the suit in force or of the
//! top card's rank, or any eight (naming the suit in force, or keeping the
//! eight's own). Or draw one card, which ends your turn. A player whose
//! turn timer runs out draws one card automatically. The first player with
//! an empty hand wins; after `max_turns` turns the fewest cards win.
//!
//! Pure and deterministic: integer math, `BTreeMap`, no clock; the only
//! randomness is [`SplitMix64`], seeded from [`MatchSetup::seed`] and kept
//! in the state (see its docs for why not `thread_rng`).
//!
//! Schema history: version 1 had no choice of suit on an eight (the
//! `Played` event had no `declared` field and the state no `suit`);
//! version 2 added both. [`Eights::upgrade_event`] and
//! [`Eights::upgrade_state`] read version 1 data.
#![allow(dead_code)]

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tickforge::game::{Game, Legacy, MatchSetup, PlayerId, Rejection, Tick, UpgradeError, Viewer};

/// The four suits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Suit {
    /// ♣
    Clubs,
    /// ♦
    Diamonds,
    /// ♥
    Hearts,
    /// ♠
    Spades,
}

impl Suit {
    /// All suits, in order.
    pub const ALL: [Suit; 4] = [Suit::Clubs, Suit::Diamonds, Suit::Hearts, Suit::Spades];

    fn index(self) -> u32 {
        match self {
            Suit::Clubs => 0,
            Suit::Diamonds => 1,
            Suit::Hearts => 2,
            Suit::Spades => 3,
        }
    }

    /// One letter: C, D, H or S.
    pub fn letter(self) -> char {
        ['C', 'D', 'H', 'S'][self.index() as usize]
    }
}

/// A card: a suit and a rank from 1 (ace) to 13 (king).
///
/// A card encodes as the tagged 32-bit code `0xCAD0_ssrr` (suit, rank):
/// five distinctive bytes in the codec's encoding ([`Card::encoded`]), so
/// any capture of a client's traffic can be searched for cards it must not
/// see. The hidden-information tests do exactly that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Card {
    /// Its suit.
    pub suit: Suit,
    /// 1 (ace) to 13 (king).
    pub rank: u8,
}

/// The tag in the high half of every card code.
const CARD_TAG: u32 = 0xCAD0_0000;

impl Card {
    /// The rank that is wild.
    pub const EIGHT: u8 = 8;

    /// The card's 32-bit code.
    pub fn code(self) -> u32 {
        CARD_TAG | self.suit.index() << 8 | u32::from(self.rank)
    }

    /// The card of a code, if it is one.
    pub fn from_code(code: u32) -> Option<Card> {
        if code & 0xFFFF_0000 != CARD_TAG {
            return None;
        }
        let suit = *Suit::ALL.get(((code >> 8) & 0xFF) as usize)?;
        let rank = (code & 0xFF) as u8;
        (1..=13).contains(&rank).then_some(Card { suit, rank })
    }

    /// The bytes this card takes inside any encoded value (a varint
    /// marker and the code, little endian).
    pub fn encoded(self) -> [u8; 5] {
        let [a, b, c, d] = self.code().to_le_bytes();
        [0xFC, a, b, c, d]
    }

    /// Penalty points of a card left in hand at the end.
    pub fn points(self) -> u32 {
        match self.rank {
            Card::EIGHT => 50,
            11..=13 => 10,
            rank => u32::from(rank),
        }
    }

    /// Whether it may go on `top` with `suit` in force.
    pub fn playable_on(self, top: Card, suit: Suit) -> bool {
        self.rank == Card::EIGHT || self.suit == suit || self.rank == top.rank
    }

    /// The 52 cards, in order.
    pub fn deck() -> Vec<Card> {
        Suit::ALL
            .iter()
            .flat_map(|&suit| (1..=13).map(move |rank| Card { suit, rank }))
            .collect()
    }
}

impl fmt::Display for Card {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rank = match self.rank {
            1 => "A".to_owned(),
            11 => "J".to_owned(),
            12 => "Q".to_owned(),
            13 => "K".to_owned(),
            r => r.to_string(),
        };
        write!(f, "{rank}{}", self.suit.letter())
    }
}

impl Serialize for Card {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.code())
    }
}

impl<'de> Deserialize<'de> for Card {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = u32::deserialize(deserializer)?;
        Card::from_code(code)
            .ok_or_else(|| serde::de::Error::custom(format!("{code:#x} is not a card")))
    }
}

/// A tiny seeded PRNG (SplitMix64), kept in the match state.
///
/// Why not `thread_rng` or any unseeded generator: a match must replay to
/// the same state byte for byte (restores, replays, divergence checks), so
/// every random draw must come from state the log rebuilds. Seeded from
/// [`MatchSetup::seed`] (the same match key always gets the same deal) and
/// serialized with the state, so a snapshot carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting at `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0), by multiply-and-shift.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// Per-match parameters, given by whoever creates the match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// Players the match waits for before dealing: 2 to 6.
    pub players: u8,
    /// Cards dealt to each player: 1 to 8.
    pub hand_size: u8,
    /// Ticks a player has for a turn before drawing automatically: 1 to 36 000.
    pub turn_ticks: u32,
    /// Turns after which the match ends and the fewest cards win: 1 to 10 000.
    pub max_turns: u32,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            players: 4,
            hand_size: 5,
            turn_ticks: 30,
            max_turns: 400,
        }
    }
}

impl Params {
    /// Why these parameters cannot make a match, if they cannot.
    pub fn check(&self) -> Result<(), Rejection> {
        if !(2..=6).contains(&self.players) {
            return Err(Rejection::new(format!(
                "players must be 2 to 6, not {}",
                self.players
            )));
        }
        if !(1..=8).contains(&self.hand_size) {
            return Err(Rejection::new(format!(
                "hand_size must be 1 to 8, not {}",
                self.hand_size
            )));
        }
        if !(1..=36_000).contains(&self.turn_ticks) {
            return Err(Rejection::new(format!(
                "turn_ticks must be 1 to 36000, not {}",
                self.turn_ticks
            )));
        }
        if !(1..=10_000).contains(&self.max_turns) {
            return Err(Rejection::new(format!(
                "max_turns must be 1 to 10000, not {}",
                self.max_turns
            )));
        }
        Ok(())
    }
}

/// What a client sends to join: its display name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAs {
    /// 1 to 24 characters; empty picks "player N".
    pub name: String,
}

/// What a player asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Take a seat (made by the server from [`JoinAs`]).
    Join {
        /// Display name.
        name: String,
    },
    /// Play a card; `declare` names the suit in force after an eight
    /// (`None` keeps the eight's own suit; only eights may declare).
    Play {
        /// The card.
        card: Card,
        /// The suit named with an eight.
        declare: Option<Suit>,
    },
    /// Draw one card and end the turn.
    Draw,
    /// Leave the match (sent by the server when a grace window runs out).
    Leave,
}

/// What happened. Stored in the match log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A player sat down.
    Joined {
        /// Who.
        player: PlayerId,
        /// Display name.
        name: String,
    },
    /// A player left: out of the lobby, or its turns pass from now on.
    Left {
        /// Who.
        player: PlayerId,
    },
    /// A player's starting hand. Seen only by that player.
    Dealt {
        /// Who.
        player: PlayerId,
        /// The cards, from the top of the deck.
        cards: Vec<Card>,
    },
    /// Every hand is dealt; `top` starts the discard pile and `first` plays.
    Started {
        /// Who plays first.
        first: PlayerId,
        /// The first discard.
        top: Card,
    },
    /// A card was played (public).
    Played {
        /// Who.
        player: PlayerId,
        /// The card.
        card: Card,
        /// The suit named with an eight (new in schema 2).
        declared: Option<Suit>,
    },
    /// A player drew a card. Seen only by that player.
    Drew {
        /// Who.
        player: PlayerId,
        /// The card.
        card: Card,
    },
    /// A player's turn ended without a play (after drawing, or with nothing to draw).
    Passed {
        /// Who.
        player: PlayerId,
    },
    /// A player's turn timer ran out (a draw and a pass follow).
    TurnTimedOut {
        /// Who.
        player: PlayerId,
    },
    /// The match is over.
    GameOver {
        /// Who won.
        winner: PlayerId,
    },
}

/// Where the match is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Waiting for `players` to join.
    Lobby,
    /// Hands dealt, turns running.
    Playing,
    /// Over; `winner` won.
    Over {
        /// Who won.
        winner: PlayerId,
    },
}

/// One player at the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seat {
    /// Display name.
    pub name: String,
    /// The hand (hidden from everyone else).
    pub hand: Vec<Card>,
    /// Whether the player left (its turns pass).
    pub gone: bool,
    /// Turns the timer ended for it.
    pub timeouts: u32,
}

/// The whole match (schema 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The parameters the match was created with.
    pub params: Params,
    /// The match's generator (reshuffles draw from it).
    pub rng: SplitMix64,
    /// Lobby, playing or over.
    pub phase: Phase,
    /// Players by id; turns go in id order.
    pub seats: BTreeMap<PlayerId, Seat>,
    /// The face-down deck; the top is the last card.
    pub deck: Vec<Card>,
    /// The discard pile; the top is the last card.
    pub discard: Vec<Card>,
    /// The suit in force (the top card's, or the one named with an eight).
    pub suit: Suit,
    /// Whose turn it is (while playing).
    pub turn: Option<PlayerId>,
    /// The tick at which the current turn times out.
    pub deadline: Tick,
    /// Turns taken so far.
    pub turns: u32,
    /// Points per player once over (the winner scores the others' cards).
    pub scores: BTreeMap<PlayerId, u32>,
}

impl State {
    /// The top of the discard pile.
    pub fn top(&self) -> Option<Card> {
        self.discard.last().copied()
    }

    /// The next player after `player` in id order, wrapping around.
    fn next_after(&self, player: PlayerId) -> Option<PlayerId> {
        self.seats
            .range(PlayerId(player.0.saturating_add(1))..)
            .map(|(p, _)| *p)
            .next()
            .or_else(|| self.seats.keys().next().copied())
    }

    /// Ends the current turn: the next player has `turn_ticks` from `tick`.
    fn advance(&mut self, tick: Tick) {
        self.turns = self.turns.saturating_add(1);
        self.turn = self.turn.and_then(|p| self.next_after(p));
        self.deadline = tick + u64::from(self.params.turn_ticks);
    }

    /// When the deck is empty, the discard pile but its top is shuffled
    /// into a new deck with the match's generator.
    fn refill(&mut self) {
        if self.deck.is_empty() && self.discard.len() > 1 {
            let top = self.discard.pop();
            self.deck = std::mem::take(&mut self.discard);
            self.rng.shuffle(&mut self.deck);
            self.discard.extend(top);
        }
    }
}

/// The view of one viewer: their own hand and the public table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// Who this view is for (`None`: a spectator).
    pub me: Option<PlayerId>,
    /// The viewer's own hand (empty for spectators).
    pub hand: Vec<Card>,
    /// Everyone at the table, public facts only.
    pub table: Vec<PublicSeat>,
    /// Players the match waits for.
    pub players: u8,
    /// Lobby, playing or over.
    pub phase: Phase,
    /// The top of the discard pile.
    pub top: Option<Card>,
    /// The suit in force.
    pub suit: Suit,
    /// Whose turn it is.
    pub turn: Option<PlayerId>,
    /// The tick the turn times out at.
    pub deadline: Tick,
    /// Cards left in the deck.
    pub deck: u32,
    /// Turns taken.
    pub turns: u32,
    /// Points once over.
    pub scores: BTreeMap<PlayerId, u32>,
}

/// What everyone may know of a seat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicSeat {
    /// Who.
    pub player: PlayerId,
    /// Display name.
    pub name: String,
    /// How many cards it holds.
    pub cards: u32,
    /// Whether it left.
    pub gone: bool,
    /// Turns it timed out.
    pub timeouts: u32,
}

/// The game. Stateless: the rules are constants and the parameters live in
/// each match's state.
#[derive(Debug, Clone, Copy, Default)]
pub struct Eights;

/// The domain the matches are stored under.
pub const DOMAIN: &str = "eights";

impl Game for Eights {
    type State = State;
    type Command = Command;
    type Event = Event;
    type Params = Params;
    type View = View;
    type Join = JoinAs;
    const SCHEMA: u32 = 2;

    fn domain(&self) -> &str {
        DOMAIN
    }

    fn setup(&self, setup: &MatchSetup<Params>) -> Result<State, Rejection> {
        setup.params.check()?;
        let mut rng = SplitMix64::new(setup.seed);
        let mut deck = Card::deck();
        rng.shuffle(&mut deck);
        Ok(State {
            params: setup.params,
            rng,
            phase: Phase::Lobby,
            seats: BTreeMap::new(),
            deck,
            discard: Vec::new(),
            suit: Suit::Clubs,
            turn: None,
            deadline: 0,
            turns: 0,
            scores: BTreeMap::new(),
        })
    }

    fn decide(
        &self,
        state: &State,
        _tick: Tick,
        player: PlayerId,
        command: &Command,
    ) -> Result<Vec<Event>, Rejection> {
        if let Command::Join { name } = command {
            return decide_join(state, player, name);
        }
        let seat = state
            .seats
            .get(&player)
            .ok_or_else(|| Rejection::new("you are not at this table"))?;
        if let Command::Leave = command {
            return Ok(vec![Event::Left { player }]);
        }
        if state.phase != Phase::Playing {
            return Err(Rejection::new("the match is not being played"));
        }
        if state.turn != Some(player) {
            return Err(Rejection::new("it is not your turn"));
        }
        match command {
            Command::Play { card, declare } => {
                if !seat.hand.contains(card) {
                    return Err(Rejection::new(format!("{card} is not in your hand")));
                }
                let top = state
                    .top()
                    .ok_or_else(|| Rejection::new("no discard pile"))?;
                if !card.playable_on(top, state.suit) {
                    return Err(Rejection::new(format!(
                        "{card} does not go on {top} ({:?} in force)",
                        state.suit
                    )));
                }
                if declare.is_some() && card.rank != Card::EIGHT {
                    return Err(Rejection::new("only an eight names a suit"));
                }
                Ok(vec![Event::Played {
                    player,
                    card: *card,
                    declared: *declare,
                }])
            }
            Command::Draw => Ok(draw_and_pass(state, player)),
            Command::Join { .. } | Command::Leave => Ok(Vec::new()),
        }
    }

    fn apply(&self, state: &mut State, tick: Tick, event: &Event) {
        match event {
            Event::Joined { player, name } => {
                state.seats.insert(
                    *player,
                    Seat {
                        name: name.clone(),
                        hand: Vec::new(),
                        gone: false,
                        timeouts: 0,
                    },
                );
            }
            Event::Left { player } => {
                if state.phase == Phase::Lobby {
                    state.seats.remove(player);
                } else if let Some(seat) = state.seats.get_mut(player) {
                    seat.gone = true;
                }
            }
            Event::Dealt { player, cards } => {
                for card in cards {
                    take(&mut state.deck, *card);
                }
                if let Some(seat) = state.seats.get_mut(player) {
                    seat.hand.extend_from_slice(cards);
                }
            }
            Event::Started { first, top } => {
                take(&mut state.deck, *top);
                state.discard.push(*top);
                state.suit = top.suit;
                state.phase = Phase::Playing;
                state.turn = Some(*first);
                state.deadline = tick + u64::from(state.params.turn_ticks);
            }
            Event::Played {
                player,
                card,
                declared,
            } => {
                if let Some(seat) = state.seats.get_mut(player) {
                    take(&mut seat.hand, *card);
                }
                state.discard.push(*card);
                state.suit = declared.unwrap_or(card.suit);
                state.advance(tick);
            }
            Event::Drew { player, card } => {
                take(&mut state.deck, *card);
                if let Some(seat) = state.seats.get_mut(player) {
                    seat.hand.push(*card);
                }
                state.refill();
            }
            Event::Passed { .. } => state.advance(tick),
            Event::TurnTimedOut { player } => {
                if let Some(seat) = state.seats.get_mut(player) {
                    seat.timeouts = seat.timeouts.saturating_add(1);
                }
            }
            Event::GameOver { winner } => {
                let penalties: BTreeMap<PlayerId, u32> = state
                    .seats
                    .iter()
                    .map(|(p, seat)| (*p, seat.hand.iter().map(|c| c.points()).sum()))
                    .collect();
                let total = penalties.values().sum();
                state.scores = penalties.keys().map(|p| (*p, 0)).collect();
                state.scores.insert(*winner, total);
                state.phase = Phase::Over { winner: *winner };
                state.turn = None;
            }
        }
    }

    fn step(&self, state: &mut State, tick: Tick) -> Vec<Event> {
        match state.phase {
            Phase::Lobby if state.seats.len() == usize::from(state.params.players) => deal(state),
            Phase::Playing => play_on(state, tick),
            Phase::Lobby | Phase::Over { .. } => Vec::new(),
        }
    }

    fn is_over(&self, state: &State) -> bool {
        matches!(state.phase, Phase::Over { .. })
    }

    fn view<'s>(&self, state: &'s State, viewer: Viewer) -> Cow<'s, View> {
        let me = match viewer {
            Viewer::Player(player) => Some(player),
            Viewer::Spectator => None,
        };
        let hand = me
            .and_then(|p| state.seats.get(&p))
            .map(|seat| seat.hand.clone())
            .unwrap_or_default();
        Cow::Owned(View {
            me,
            hand,
            table: state
                .seats
                .iter()
                .map(|(player, seat)| PublicSeat {
                    player: *player,
                    name: seat.name.clone(),
                    cards: seat.hand.len() as u32,
                    gone: seat.gone,
                    timeouts: seat.timeouts,
                })
                .collect(),
            players: state.params.players,
            phase: state.phase,
            top: state.top(),
            suit: state.suit,
            turn: state.turn,
            deadline: state.deadline,
            deck: state.deck.len() as u32,
            turns: state.turns,
            scores: state.scores.clone(),
        })
    }

    fn event_visible(&self, event: &Event, viewer: Viewer) -> bool {
        match event {
            Event::Dealt { player, .. } | Event::Drew { player, .. } => {
                viewer == Viewer::Player(*player)
            }
            _ => true,
        }
    }

    fn join(&self, player: PlayerId, payload: &JoinAs) -> Result<Command, Rejection> {
        let name = payload.name.trim();
        if name.chars().count() > 24 {
            return Err(Rejection::new("a name has at most 24 characters"));
        }
        let name = if name.is_empty() {
            format!("player {}", player.0)
        } else {
            name.to_owned()
        };
        Ok(Command::Join { name })
    }

    fn leave(&self) -> Command {
        Command::Leave
    }

    fn players(&self, state: &State) -> Vec<PlayerId> {
        state
            .seats
            .iter()
            .filter(|(_, seat)| !seat.gone)
            .map(|(p, _)| *p)
            .collect()
    }

    fn upgrade_event(&self, old: Legacy<'_>) -> Result<Event, UpgradeError> {
        match old.version {
            1 => Ok(old.decode::<v1::Event>()?.into()),
            other => Err(UpgradeError::Unsupported(other)),
        }
    }

    fn upgrade_state(&self, old: Legacy<'_>) -> Result<State, UpgradeError> {
        match old.version {
            1 => Ok(old.decode::<v1::State>()?.into()),
            other => Err(UpgradeError::Unsupported(other)),
        }
    }
}

fn decide_join(state: &State, player: PlayerId, name: &str) -> Result<Vec<Event>, Rejection> {
    if state.phase != Phase::Lobby {
        return Err(Rejection::new("the match has started"));
    }
    if state.seats.contains_key(&player) {
        return Err(Rejection::new("you are already at this table"));
    }
    if state.seats.len() >= usize::from(state.params.players) {
        return Err(Rejection::new("the table is full"));
    }
    Ok(vec![Event::Joined {
        player,
        name: name.to_owned(),
    }])
}

/// A draw of the deck's top card (if any) and the end of the turn.
fn draw_and_pass(state: &State, player: PlayerId) -> Vec<Event> {
    let mut events = Vec::with_capacity(2);
    if let Some(&card) = state.deck.last() {
        events.push(Event::Drew { player, card });
    }
    events.push(Event::Passed { player });
    events
}

/// The deal, once the table is full: hands from the top of the deck, then
/// the first discard. The lowest player id plays first.
fn deal(state: &State) -> Vec<Event> {
    let mut deck = state.deck.clone();
    let mut events = Vec::with_capacity(state.seats.len() + 1);
    for player in state.seats.keys() {
        let cut = deck
            .len()
            .saturating_sub(usize::from(state.params.hand_size));
        let mut cards = deck.split_off(cut);
        cards.reverse();
        events.push(Event::Dealt {
            player: *player,
            cards,
        });
    }
    if let (Some(top), Some(first)) = (deck.last(), state.seats.keys().next()) {
        events.push(Event::Started {
            first: *first,
            top: *top,
        });
    }
    events
}

/// A playing tick: the end of the match, or a turn timer running out.
fn play_on(state: &State, tick: Tick) -> Vec<Event> {
    if let Some((winner, _)) = state.seats.iter().find(|(_, s)| s.hand.is_empty()) {
        return vec![Event::GameOver { winner: *winner }];
    }
    let everyone_left = state.seats.values().all(|s| s.gone);
    if state.turns >= state.params.max_turns || everyone_left {
        let winner = state
            .seats
            .iter()
            .min_by_key(|(p, s)| (s.hand.len(), **p))
            .map(|(p, _)| *p);
        return winner
            .map(|winner| vec![Event::GameOver { winner }])
            .unwrap_or_default();
    }
    let Some(player) = state.turn else {
        return Vec::new();
    };
    if state.seats.get(&player).is_some_and(|s| s.gone) {
        return vec![Event::Passed { player }];
    }
    if tick >= state.deadline {
        let mut events = vec![Event::TurnTimedOut { player }];
        events.extend(draw_and_pass(state, player));
        return events;
    }
    Vec::new()
}

/// Removes one `card` from `cards` (nothing if it is not there).
fn take(cards: &mut Vec<Card>, card: Card) {
    if let Some(at) = cards.iter().position(|c| *c == card) {
        cards.remove(at);
    }
}

/// The types as schema version 1 wrote them, and their upgrades.
pub mod v1 {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};
    use tickforge::game::{PlayerId, Tick};

    use super::{Card, Params, Phase, Seat, SplitMix64};

    /// Version 1 events: `Played` had no `declared` (an eight kept its suit).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[allow(missing_docs)]
    pub enum Event {
        Joined { player: PlayerId, name: String },
        Left { player: PlayerId },
        Dealt { player: PlayerId, cards: Vec<Card> },
        Started { first: PlayerId, top: Card },
        Played { player: PlayerId, card: Card },
        Drew { player: PlayerId, card: Card },
        Passed { player: PlayerId },
        TurnTimedOut { player: PlayerId },
        GameOver { winner: PlayerId },
    }

    impl From<Event> for super::Event {
        fn from(old: Event) -> Self {
            use super::Event as New;
            match old {
                Event::Joined { player, name } => New::Joined { player, name },
                Event::Left { player } => New::Left { player },
                Event::Dealt { player, cards } => New::Dealt { player, cards },
                Event::Started { first, top } => New::Started { first, top },
                Event::Played { player, card } => New::Played {
                    player,
                    card,
                    declared: None,
                },
                Event::Drew { player, card } => New::Drew { player, card },
                Event::Passed { player } => New::Passed { player },
                Event::TurnTimedOut { player } => New::TurnTimedOut { player },
                Event::GameOver { winner } => New::GameOver { winner },
            }
        }
    }

    /// The version 1 state: no `suit` (the top card's suit was always in force).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[allow(missing_docs)]
    pub struct State {
        pub params: Params,
        pub rng: SplitMix64,
        pub phase: Phase,
        pub seats: BTreeMap<PlayerId, Seat>,
        pub deck: Vec<Card>,
        pub discard: Vec<Card>,
        pub turn: Option<PlayerId>,
        pub deadline: Tick,
        pub turns: u32,
        pub scores: BTreeMap<PlayerId, u32>,
    }

    impl From<State> for super::State {
        fn from(old: State) -> Self {
            Self {
                suit: old.discard.last().map_or(super::Suit::Clubs, |c| c.suit),
                params: old.params,
                rng: old.rng,
                phase: old.phase,
                seats: old.seats,
                deck: old.deck,
                discard: old.discard,
                turn: old.turn,
                deadline: old.deadline,
                turns: old.turns,
                scores: old.scores,
            }
        }
    }
}
