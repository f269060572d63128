//! A test game whose state does not fit in a datagram: a board of 4000
//! bytes, each tick changing one of them (net_large_state, net_batch_sends).
#![allow(dead_code, unreachable_pub)]

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use tickforge::game::{Game, MatchSetup, PlayerId, Rejection, Tick, Viewer};

/// Bytes on the board.
pub const CELLS: usize = 4000;

/// A board of 4000 bytes; each tick flips one of them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Board;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoardState {
    pub players: Vec<PlayerId>,
    pub cells: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BoardCommand {
    Join,
    Leave,
}

impl Game for Board {
    type State = BoardState;
    type Command = BoardCommand;
    type Event = (PlayerId, bool);
    type Params = ();
    type View = BoardState;
    type Join = ();
    const SCHEMA: u32 = 1;

    fn domain(&self) -> &str {
        "board"
    }

    fn setup(&self, _: &MatchSetup<()>) -> Result<BoardState, Rejection> {
        Ok(BoardState {
            players: Vec::new(),
            cells: (0..CELLS as u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
                .collect(),
        })
    }

    fn decide(
        &self,
        _: &BoardState,
        _: Tick,
        player: PlayerId,
        command: &BoardCommand,
    ) -> Result<Vec<(PlayerId, bool)>, Rejection> {
        Ok(vec![(player, *command == BoardCommand::Join)])
    }

    fn apply(&self, state: &mut BoardState, _: Tick, &(player, joined): &(PlayerId, bool)) {
        state.players.retain(|p| *p != player);
        if joined {
            state.players.push(player);
        }
    }

    fn step(&self, state: &mut BoardState, tick: Tick) -> Vec<(PlayerId, bool)> {
        let i = (tick as usize * 37) % state.cells.len();
        state.cells[i] = state.cells[i].wrapping_add(1);
        Vec::new()
    }

    fn is_over(&self, _: &BoardState) -> bool {
        false
    }

    fn view<'s>(&self, state: &'s BoardState, _: Viewer) -> Cow<'s, BoardState> {
        Cow::Borrowed(state)
    }

    fn shared_view(&self) -> bool {
        true
    }

    fn join(&self, _: PlayerId, _: &()) -> Result<BoardCommand, Rejection> {
        Ok(BoardCommand::Join)
    }

    fn leave(&self) -> BoardCommand {
        BoardCommand::Leave
    }

    fn players(&self, state: &BoardState) -> Vec<PlayerId> {
        state.players.clone()
    }
}
