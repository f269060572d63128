//! A bot that plays Eights from what its player may see (its [`View`]).
//!
//! Deterministic given its seed: it picks among the legal cards with its
//! own [`SplitMix64`], keeps eights for when nothing else goes, and names
//! the suit it holds most of.
#![allow(dead_code)]

use std::collections::BTreeMap;

use crate::game::{Card, Command, Phase, SplitMix64, Suit, View};

/// One bot's decision-making.
#[derive(Debug, Clone)]
pub struct Bot {
    rng: SplitMix64,
    /// Whether it names a suit with its eights (schema 1 players did not).
    pub declares: bool,
}

impl Bot {
    /// A bot drawing its choices from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: SplitMix64::new(seed),
            declares: true,
        }
    }

    /// What to do on `view`: `None` when it is not this player's turn.
    pub fn decide(&mut self, view: &View) -> Option<Command> {
        if view.phase != Phase::Playing || view.me.is_none() || view.turn != view.me {
            return None;
        }
        let top = view.top?;
        let legal: Vec<Card> = view
            .hand
            .iter()
            .copied()
            .filter(|c| c.playable_on(top, view.suit))
            .collect();
        let plain: Vec<Card> = legal
            .iter()
            .copied()
            .filter(|c| c.rank != Card::EIGHT)
            .collect();
        let pool = if plain.is_empty() { &legal } else { &plain };
        if pool.is_empty() {
            return Some(Command::Draw);
        }
        let card = pool[self.rng.below(pool.len())];
        let declare = (self.declares && card.rank == Card::EIGHT)
            .then(|| favourite_suit(&view.hand, card))
            .flatten();
        Some(Command::Play { card, declare })
    }
}

/// The suit most represented in `hand` once `played` is gone.
fn favourite_suit(hand: &[Card], played: Card) -> Option<Suit> {
    let mut counts: BTreeMap<Suit, u32> = BTreeMap::new();
    for card in hand.iter().filter(|c| **c != played) {
        *counts.entry(card.suit).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(suit, n)| (*n, std::cmp::Reverse(*suit)))
        .map(|(suit, _)| suit)
}
