//! A simple arena player for demos and load: wander, and shoot whoever
//! stands in the line of fire. Its randomness lives here, outside the
//! simulation, so it never touches determinism.

use super::{Arena, ArenaCommand, ArenaState, Dir};
use crate::game::PlayerId;

/// One simulated player.
#[derive(Debug, Clone)]
pub struct Bot {
    player: PlayerId,
    rng: u64,
    heading: Dir,
}

impl Bot {
    /// A bot playing as `player`, with its own random seed.
    pub fn new(player: PlayerId, seed: u64) -> Self {
        Self {
            player,
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            heading: Dir::ALL[(seed % 4) as usize],
        }
    }

    /// The player this bot plays.
    pub fn player(&self) -> PlayerId {
        self.player
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The command this bot sends given the latest state it saw: a join
    /// until it is in, nothing while tagged out, else a shot at whoever is
    /// in line (turning first), else a step in its wandering direction.
    pub fn next_command(&mut self, arena: &Arena, state: &ArenaState) -> Option<ArenaCommand> {
        let Some(me) = state.players.get(&self.player) else {
            return Some(ArenaCommand::Join {
                name: format!("bot-{}", self.player.0),
            });
        };
        if me.respawn_at.is_some() {
            return None;
        }
        if let Some(dir) = Dir::ALL
            .into_iter()
            .find(|&d| arena.line_of_sight(state, me.pos, d).is_some())
        {
            if dir != me.facing {
                return Some(ArenaCommand::Turn(dir));
            }
            if me.ready_at <= state.tick + 1 {
                return Some(ArenaCommand::Fire);
            }
        }
        let free = |d: Dir| {
            let to = d.step(me.pos);
            !arena.map().blocked(to) && !Arena::occupied(state, to)
        };
        if self.next_random() % 8 == 0 || !free(self.heading) {
            let start = self.next_random() as usize;
            if let Some(d) = (0..4).map(|i| Dir::ALL[(start + i) % 4]).find(|&d| free(d)) {
                self.heading = d;
            }
        }
        Some(ArenaCommand::Move(self.heading))
    }
}
