//! Player slots: who holds which (match, player), and the grace window.
//!
//! A slot is held by one connection, or waits in its grace window for the
//! player to resume, or is freed (the leave command went out and its
//! resume tokens are refused). Pure bookkeeping: the server arms the grace
//! timers and submits the leave command; this table only decides.

use std::collections::HashMap;
use std::sync::Arc;

use crate::game::PlayerId;

/// Who has a slot now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// Connection `conn` plays in it.
    Connected { conn: u64 },
    /// Dropped; timer `generation` frees it unless the player resumes.
    Grace { generation: u64 },
    /// The player was taken out; tokens of this epoch or older are refused.
    Freed,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// The epoch its resume tokens carry; `None` for a slot adopted after
    /// a restart, whose tokens' epoch is not known yet.
    epoch: Option<u64>,
    holder: Holder,
}

/// The outcome of an admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admitted {
    /// The epoch to put in the resume token.
    pub(crate) epoch: u64,
    /// The connection that held the slot until now, to be closed.
    pub(crate) replaced: Option<u64>,
}

/// Why a resume token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResumeRefusal {
    /// The grace window ran out and the player was taken out.
    Freed,
    /// A newer admission (a fresh ticket) superseded this token.
    Superseded,
    /// No slot is known and the player is not in the match.
    NotInMatch,
}

#[derive(Debug, Default)]
pub(crate) struct Slots {
    slots: HashMap<(Arc<str>, PlayerId), Slot>,
    last_epoch: u64,
    next_generation: u64,
}

impl Slots {
    /// An epoch greater than every earlier one, near `now_ms`.
    fn new_epoch(&mut self, now_ms: u64) -> u64 {
        self.last_epoch = now_ms.max(self.last_epoch + 1);
        self.last_epoch
    }

    /// Admission by ticket: the slot is (re)taken with a new epoch.
    pub(crate) fn admit_ticket(
        &mut self,
        root: &Arc<str>,
        player: PlayerId,
        conn: u64,
        now_ms: u64,
    ) -> Admitted {
        let epoch = self.new_epoch(now_ms);
        let previous = self.slots.insert(
            (root.clone(), player),
            Slot {
                epoch: Some(epoch),
                holder: Holder::Connected { conn },
            },
        );
        Admitted {
            epoch,
            replaced: previous.and_then(|s| match s.holder {
                Holder::Connected { conn: old } if old != conn => Some(old),
                _ => None,
            }),
        }
    }

    /// Admission by resume token of `epoch`. With no slot known (after a
    /// restart), the token is good if the player is still in the match.
    pub(crate) fn admit_resume(
        &mut self,
        root: &Arc<str>,
        player: PlayerId,
        epoch: u64,
        conn: u64,
        in_match: bool,
    ) -> Result<Admitted, ResumeRefusal> {
        let key = (root.clone(), player);
        match self.slots.get_mut(&key) {
            Some(slot) => {
                if slot.holder == Holder::Freed {
                    return Err(ResumeRefusal::Freed);
                }
                match slot.epoch {
                    Some(current) if current != epoch => return Err(ResumeRefusal::Superseded),
                    _ => {}
                }
                let replaced = match slot.holder {
                    Holder::Connected { conn: old } if old != conn => Some(old),
                    _ => None,
                };
                slot.epoch = Some(epoch);
                slot.holder = Holder::Connected { conn };
                self.last_epoch = self.last_epoch.max(epoch);
                Ok(Admitted { epoch, replaced })
            }
            None if in_match => {
                self.slots.insert(
                    key,
                    Slot {
                        epoch: Some(epoch),
                        holder: Holder::Connected { conn },
                    },
                );
                self.last_epoch = self.last_epoch.max(epoch);
                Ok(Admitted {
                    epoch,
                    replaced: None,
                })
            }
            None => Err(ResumeRefusal::NotInMatch),
        }
    }

    /// Connection `conn` of the slot dropped: the grace window starts.
    /// Returns the timer generation to arm, or `None` if `conn` no longer
    /// held the slot (it was replaced).
    pub(crate) fn disconnect(
        &mut self,
        root: &Arc<str>,
        player: PlayerId,
        conn: u64,
    ) -> Option<u64> {
        let slot = self.slots.get_mut(&(root.clone(), player))?;
        if slot.holder != (Holder::Connected { conn }) {
            return None;
        }
        self.next_generation += 1;
        slot.holder = Holder::Grace {
            generation: self.next_generation,
        };
        Some(self.next_generation)
    }

    /// A player found in a match with no slot (after a restart) gets a
    /// grace window too. Returns the timer generation, or `None` if the
    /// slot is known.
    pub(crate) fn adopt(&mut self, root: &Arc<str>, player: PlayerId) -> Option<u64> {
        let key = (root.clone(), player);
        if self.slots.contains_key(&key) {
            return None;
        }
        self.next_generation += 1;
        self.slots.insert(
            key,
            Slot {
                epoch: None,
                holder: Holder::Grace {
                    generation: self.next_generation,
                },
            },
        );
        Some(self.next_generation)
    }

    /// The grace timer `generation` ran out. Returns whether the slot is
    /// freed now (and the leave command must go out).
    pub(crate) fn expire(&mut self, root: &Arc<str>, player: PlayerId, generation: u64) -> bool {
        match self.slots.get_mut(&(root.clone(), player)) {
            Some(slot) if slot.holder == (Holder::Grace { generation }) => {
                slot.holder = Holder::Freed;
                true
            }
            _ => false,
        }
    }

    /// The player `player` holds or waits for a slot in `root`.
    pub(crate) fn is_taken(&self, root: &Arc<str>, player: PlayerId) -> bool {
        self.slots
            .get(&(root.clone(), player))
            .is_some_and(|s| s.holder != Holder::Freed)
    }

    /// Forgets every slot of a match (it ended).
    pub(crate) fn remove_match(&mut self, root: &str) {
        self.slots.retain(|(r, _), _| &**r != root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> Arc<str> {
        "m1".into()
    }

    #[test]
    fn a_dropped_player_resumes_within_grace() {
        let mut slots = Slots::default();
        let a = slots.admit_ticket(&root(), PlayerId(1), 10, 1000);
        let generation = slots.disconnect(&root(), PlayerId(1), 10).unwrap();
        let b = slots
            .admit_resume(&root(), PlayerId(1), a.epoch, 11, true)
            .unwrap();
        assert_eq!(b.epoch, a.epoch);
        // The old timer finds the slot taken again and does nothing.
        assert!(!slots.expire(&root(), PlayerId(1), generation));
    }

    #[test]
    fn after_grace_the_token_is_refused() {
        let mut slots = Slots::default();
        let a = slots.admit_ticket(&root(), PlayerId(1), 10, 1000);
        let generation = slots.disconnect(&root(), PlayerId(1), 10).unwrap();
        assert!(slots.expire(&root(), PlayerId(1), generation));
        assert_eq!(
            slots.admit_resume(&root(), PlayerId(1), a.epoch, 11, true),
            Err(ResumeRefusal::Freed)
        );
        assert!(!slots.is_taken(&root(), PlayerId(1)));
    }

    #[test]
    fn a_new_ticket_supersedes_old_tokens_and_replaces_the_connection() {
        let mut slots = Slots::default();
        let a = slots.admit_ticket(&root(), PlayerId(1), 10, 1000);
        let b = slots.admit_ticket(&root(), PlayerId(1), 11, 1000);
        assert!(b.epoch > a.epoch);
        assert_eq!(b.replaced, Some(10));
        assert_eq!(
            slots.admit_resume(&root(), PlayerId(1), a.epoch, 12, true),
            Err(ResumeRefusal::Superseded)
        );
        // The replaced connection's drop does not start a grace window.
        assert_eq!(slots.disconnect(&root(), PlayerId(1), 10), None);
    }

    #[test]
    fn after_a_restart_tokens_of_players_in_the_match_work() {
        let mut slots = Slots::default();
        assert_eq!(
            slots.admit_resume(&root(), PlayerId(1), 77, 1, false),
            Err(ResumeRefusal::NotInMatch)
        );
        let generation = slots.adopt(&root(), PlayerId(2)).unwrap();
        assert!(
            slots
                .admit_resume(&root(), PlayerId(2), 77, 2, true)
                .is_ok()
        );
        assert!(!slots.expire(&root(), PlayerId(2), generation));
        assert!(slots.admit_resume(&root(), PlayerId(3), 5, 3, true).is_ok());
    }
}
