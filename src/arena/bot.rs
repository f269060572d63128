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

    /// The command this bot sends given the latest state it saw.
    pub fn next_command(&mut self, arena: &Arena, state: &ArenaState) -> ArenaCommand {
        let Some(me) = state.players.get(&self.player) else {
            return ArenaCommand::Join {
                name: format!("bot-{}", self.player.0),
            };
        };
        if me.respawn_at.is_none() && me.ready_at <= state.tick + 1 {
            if let Some(dir) = Dir::ALL
                .into_iter()
                .find(|&d| arena.line_of_sight(state, me.pos, d).is_some())
            {
                return if dir == me.facing {
                    ArenaCommand::Fire
                } else {
                    ArenaCommand::Turn(dir)
                };
            }
        }
        if self.next_random() % 8 == 0 || arena.map().blocked(self.heading.step(me.pos)) {
            self.heading = Dir::ALL[(self.next_random() % 4) as usize];
        }
        ArenaCommand::Move(self.heading)
    }
}
