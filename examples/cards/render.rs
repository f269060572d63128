//! The table as text: what a spectator (or a player) sees.

use std::fmt::Write as _;

use crate::game::{Phase, View};

/// Renders `view` as a few lines of text.
pub fn render(root: &str, tick: u64, view: &View) -> String {
    let mut out = String::new();
    let phase = match view.phase {
        Phase::Lobby => format!("lobby ({}/{} seated)", view.table.len(), view.players),
        Phase::Playing => "playing".to_owned(),
        Phase::Over { winner } => format!("over, {winner} won"),
    };
    let top = view.top.map_or_else(|| "--".to_owned(), |c| c.to_string());
    let _ = writeln!(
        out,
        "match {root}  tick {tick}  {phase}  turn {}  top {top} ({:?} in force)  deck {}",
        view.turns, view.suit, view.deck
    );
    for seat in &view.table {
        let marker = if view.turn == Some(seat.player) {
            ">"
        } else {
            " "
        };
        let cards = if view.me == Some(seat.player) {
            let hand: Vec<String> = view.hand.iter().map(|c| c.to_string()).collect();
            hand.join(" ")
        } else {
            "## ".repeat(seat.cards as usize).trim_end().to_owned()
        };
        let mut notes = String::new();
        if seat.gone {
            notes.push_str(" (left)");
        }
        if seat.timeouts > 0 {
            let _ = write!(notes, " timeouts={}", seat.timeouts);
        }
        if let Some(score) = view.scores.get(&seat.player) {
            let _ = write!(notes, " score={score}");
        }
        let _ = writeln!(
            out,
            "{marker} {:<4} {:<12} {:>2} cards  {cards}{notes}",
            seat.player.to_string(),
            seat.name,
            seat.cards
        );
    }
    out
}
