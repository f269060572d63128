//! `arena`: the reference game the binary hosts and the examples play.
//!
//! Players join, walk a walled grid, and tag each other with a straight
//! line-of-sight shot. A tag scores a point and sends the target out for a
//! few ticks before it respawns at a free spawn point. A match ends when a
//! player reaches the score limit or the time limit runs out. Everything is
//! integer math over ordered maps, so replay is exact.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::game::{Game, MatchSetup, PlayerId, Rejection, Tick, Viewer};

pub mod bot;
pub mod map;

pub use map::{ArenaMap, Dir, MapError, Pos};

/// The rules of a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArenaRules {
    /// Players in one match, at most.
    pub max_players: usize,
    /// Tags that win the match.
    pub score_limit: u32,
    /// Ticks after which the match ends (0 = no limit).
    pub time_limit_ticks: Tick,
    /// Ticks between two shots of one player.
    pub fire_cooldown_ticks: Tick,
    /// Ticks a tagged player stays out.
    pub respawn_ticks: Tick,
}

impl Default for ArenaRules {
    fn default() -> Self {
        Self {
            max_players: 16,
            score_limit: 50,
            time_limit_ticks: 30 * 60 * 5,
            fire_cooldown_ticks: 10,
            respawn_ticks: 45,
        }
    }
}

/// Longest player name, in characters.
pub const MAX_NAME_CHARS: usize = 16;

/// The arena game: a map and rules.
#[derive(Debug, Clone, Default)]
pub struct Arena {
    map: Arc<ArenaMap>,
    rules: ArenaRules,
}

/// One player in a match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Player {
    /// Display name.
    pub name: String,
    /// Where the player stands.
    pub pos: Pos,
    /// Where the player looks (and shoots).
    pub facing: Dir,
    /// Tags scored.
    pub score: u32,
    /// Times tagged.
    pub deaths: u32,
    /// `None` while in play; the respawn tick while tagged out.
    pub respawn_at: Option<Tick>,
    /// First tick the player may shoot again.
    pub ready_at: Tick,
}

/// How a match ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ending {
    /// `winner` reached the score limit.
    ScoreLimit {
        /// Who.
        winner: PlayerId,
    },
    /// Time ran out; the leader, if there was exactly one, won.
    TimeLimit {
        /// The sole leader, if any.
        winner: Option<PlayerId>,
    },
}

/// The state of one match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArenaState {
    /// The last completed tick.
    pub tick: Tick,
    /// Players by id.
    pub players: BTreeMap<PlayerId, Player>,
    /// Set once the match is over.
    pub ending: Option<Ending>,
}

/// What a player can ask for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArenaCommand {
    /// Enter the match under a display name.
    Join {
        /// 1 to 16 printable characters.
        name: String,
    },
    /// Leave the match.
    Leave,
    /// Face `Dir` and step one cell that way.
    Move(Dir),
    /// Face `Dir` without moving.
    Turn(Dir),
    /// Shoot along the facing direction.
    Fire,
}

/// What happened in a match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArenaEvent {
    /// A player entered at a spawn point.
    Joined {
        /// Who.
        player: PlayerId,
        /// Display name.
        name: String,
        /// Where.
        at: Pos,
    },
    /// A player left.
    Left {
        /// Who.
        player: PlayerId,
    },
    /// A player moved (or only turned, when `to` is where it stood).
    Moved {
        /// Who.
        player: PlayerId,
        /// The new cell.
        to: Pos,
        /// The new facing.
        facing: Dir,
    },
    /// A player shot; `tagged` is whom it hit.
    Fired {
        /// The shooter.
        player: PlayerId,
        /// The player hit, if any.
        tagged: Option<PlayerId>,
    },
}

impl Arena {
    /// An arena on `map` with `rules`.
    pub fn new(map: ArenaMap, rules: ArenaRules) -> Self {
        Self {
            map: Arc::new(map),
            rules,
        }
    }

    /// The map.
    pub fn map(&self) -> &ArenaMap {
        &self.map
    }

    /// The rules.
    pub fn rules(&self) -> &ArenaRules {
        &self.rules
    }

    fn occupied(state: &ArenaState, pos: Pos) -> bool {
        state
            .players
            .values()
            .any(|p| p.respawn_at.is_none() && p.pos == pos)
    }

    /// The first free spawn point, starting at a rotation chosen by `seed`.
    fn free_spawn(&self, state: &ArenaState, seed: u32) -> Option<Pos> {
        let spawns = self.map.spawns();
        let start = seed as usize % spawns.len();
        (0..spawns.len())
            .map(|i| spawns[(start + i) % spawns.len()])
            .find(|&pos| !Self::occupied(state, pos))
    }

    /// The first player in play along the line of sight from `from`.
    fn line_of_sight(&self, state: &ArenaState, from: Pos, dir: Dir) -> Option<PlayerId> {
        let mut pos = dir.step(from);
        while !self.map.blocked(pos) {
            if let Some((&id, _)) = state
                .players
                .iter()
                .find(|(_, p)| p.respawn_at.is_none() && p.pos == pos)
            {
                return Some(id);
            }
            pos = dir.step(pos);
        }
        None
    }

    fn check_name(name: &str) -> Result<(), Rejection> {
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_NAME_CHARS {
            return Err(Rejection::new("name must be 1 to 16 characters"));
        }
        if name.chars().any(char::is_control) {
            return Err(Rejection::new("name must not contain control characters"));
        }
        Ok(())
    }
}

fn in_play(state: &ArenaState, player: PlayerId) -> Result<&Player, Rejection> {
    let p = state
        .players
        .get(&player)
        .ok_or_else(|| Rejection::new("you have not joined this match"))?;
    if p.respawn_at.is_some() {
        return Err(Rejection::new("you are tagged out until you respawn"));
    }
    Ok(p)
}

impl Game for Arena {
    type State = ArenaState;
    type Command = ArenaCommand;
    type Event = ArenaEvent;
    type Params = ();
    type View = ArenaState;
    /// The display name (`p<id>` when empty).
    type Join = String;

    const SCHEMA: u32 = 1;

    fn domain(&self) -> &str {
        "arena"
    }

    fn setup(&self, _: &MatchSetup<()>) -> Result<ArenaState, Rejection> {
        Ok(ArenaState::default())
    }

    fn decide(
        &self,
        state: &ArenaState,
        tick: Tick,
        player: PlayerId,
        command: &ArenaCommand,
    ) -> Result<Vec<ArenaEvent>, Rejection> {
        if state.ending.is_some() {
            return Err(Rejection::new("the match is over"));
        }
        match command {
            ArenaCommand::Join { name } => {
                Self::check_name(name)?;
                if state.players.contains_key(&player) {
                    return Err(Rejection::new("you have already joined"));
                }
                if state.players.len() >= self.rules.max_players {
                    return Err(Rejection::new("the match is full"));
                }
                let at = self
                    .free_spawn(state, player.0)
                    .ok_or_else(|| Rejection::new("no free spawn point"))?;
                Ok(vec![ArenaEvent::Joined {
                    player,
                    name: name.clone(),
                    at,
                }])
            }
            ArenaCommand::Leave => {
                if !state.players.contains_key(&player) {
                    return Err(Rejection::new("you have not joined this match"));
                }
                Ok(vec![ArenaEvent::Left { player }])
            }
            ArenaCommand::Move(dir) => {
                let me = in_play(state, player)?;
                let to = dir.step(me.pos);
                if self.map.blocked(to) {
                    return Err(Rejection::new("a wall is in the way"));
                }
                if Self::occupied(state, to) {
                    return Err(Rejection::new("another player is in the way"));
                }
                Ok(vec![ArenaEvent::Moved {
                    player,
                    to,
                    facing: *dir,
                }])
            }
            ArenaCommand::Turn(dir) => {
                let me = in_play(state, player)?;
                Ok(vec![ArenaEvent::Moved {
                    player,
                    to: me.pos,
                    facing: *dir,
                }])
            }
            ArenaCommand::Fire => {
                let me = in_play(state, player)?;
                if tick < me.ready_at {
                    return Err(Rejection::new(format!(
                        "weapon cooling down for {} more ticks",
                        me.ready_at - tick
                    )));
                }
                let tagged = self.line_of_sight(state, me.pos, me.facing);
                Ok(vec![ArenaEvent::Fired { player, tagged }])
            }
        }
    }

    fn apply(&self, state: &mut ArenaState, tick: Tick, event: &ArenaEvent) {
        match event {
            ArenaEvent::Joined { player, name, at } => {
                state.players.insert(
                    *player,
                    Player {
                        name: name.clone(),
                        pos: *at,
                        facing: Dir::East,
                        score: 0,
                        deaths: 0,
                        respawn_at: None,
                        ready_at: tick,
                    },
                );
            }
            ArenaEvent::Left { player } => {
                state.players.remove(player);
            }
            ArenaEvent::Moved { player, to, facing } => {
                if let Some(p) = state.players.get_mut(player) {
                    p.pos = *to;
                    p.facing = *facing;
                }
            }
            ArenaEvent::Fired { player, tagged } => {
                if let Some(p) = state.players.get_mut(player) {
                    p.ready_at = tick + self.rules.fire_cooldown_ticks;
                }
                let Some(target) = tagged else { return };
                if let Some(t) = state.players.get_mut(target) {
                    t.deaths += 1;
                    t.respawn_at = Some(tick + self.rules.respawn_ticks);
                }
                if let Some(p) = state.players.get_mut(player) {
                    p.score += 1;
                    if p.score >= self.rules.score_limit && state.ending.is_none() {
                        state.ending = Some(Ending::ScoreLimit { winner: *player });
                    }
                }
            }
        }
    }

    fn step(&self, state: &mut ArenaState, tick: Tick) -> Vec<ArenaEvent> {
        state.tick = tick;
        let due: Vec<PlayerId> = state
            .players
            .iter()
            .filter(|(_, p)| p.respawn_at.is_some_and(|at| at <= tick))
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            // With every spawn point taken the player waits another tick.
            let seed = id.0.wrapping_add(tick as u32);
            if let Some(at) = self.free_spawn(state, seed)
                && let Some(p) = state.players.get_mut(&id)
            {
                p.pos = at;
                p.respawn_at = None;
            }
        }
        let limit = self.rules.time_limit_ticks;
        if limit > 0 && tick >= limit && state.ending.is_none() {
            let best = state.players.values().map(|p| p.score).max();
            let mut leaders = state
                .players
                .iter()
                .filter(|(_, p)| Some(p.score) == best)
                .map(|(&id, _)| id);
            let winner = match (leaders.next(), leaders.next()) {
                (Some(id), None) => Some(id),
                _ => None,
            };
            state.ending = Some(Ending::TimeLimit { winner });
        }
        Vec::new()
    }

    fn is_over(&self, state: &ArenaState) -> bool {
        state.ending.is_some()
    }

    /// Nothing is hidden in the arena: every viewer sees the whole state.
    fn view<'s>(&self, state: &'s ArenaState, _: Viewer) -> Cow<'s, ArenaState> {
        Cow::Borrowed(state)
    }

    fn shared_view(&self) -> bool {
        true
    }

    fn is_reliable(&self, event: &ArenaEvent) -> bool {
        match event {
            ArenaEvent::Joined { .. } | ArenaEvent::Left { .. } => true,
            // A score: a shot that tagged someone.
            ArenaEvent::Fired { tagged, .. } => tagged.is_some(),
            ArenaEvent::Moved { .. } => false,
        }
    }

    fn join(&self, player: PlayerId, name: &String) -> Result<ArenaCommand, Rejection> {
        let name = if name.is_empty() {
            player.to_string()
        } else {
            name.clone()
        };
        Self::check_name(&name)?;
        Ok(ArenaCommand::Join { name })
    }

    fn leave(&self) -> ArenaCommand {
        ArenaCommand::Leave
    }

    fn players(&self, state: &ArenaState) -> Vec<PlayerId> {
        state.players.keys().copied().collect()
    }
}
