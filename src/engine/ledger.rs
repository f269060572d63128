//! Where player inputs' outcomes go without waking anyone.
//!
//! A command submitted with a [`ReplyTo`](super::ReplyTo) is answered
//! through a channel, which wakes the session task once per command. An
//! *input* ([`InputReply`]) is acknowledged in bulk instead: the shard
//! records in the connection's [`InputLedger`] the last input it applied
//! and on which tick, and the session reads the ledger when it sends the
//! next state. Only a rejected input goes through the reply channel too,
//! because a rejection must reach the client reliably.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::{CommandOutcome, CommandReply, ReplyKind};
use crate::game::Tick;

/// What a connection's inputs came to so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InputAcks {
    /// The input sequence of the last input applied (0: none yet).
    pub through: u64,
    /// The tick that input was applied on (0: none yet).
    pub tick: Tick,
    /// Inputs rejected so far. Each is counted before any later input is
    /// recorded as applied.
    pub rejected: u64,
}

/// One connection's input outcomes, shared by the shard (which writes)
/// and the session (which reads them into each state it sends).
#[derive(Debug, Default)]
pub struct InputLedger {
    inner: Mutex<Ledger>,
}

#[derive(Debug, Default)]
struct Ledger {
    acks: InputAcks,
    /// A rejection could not be queued for the client (its reply queue was full).
    lost: bool,
}

impl InputLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // Every update is a few assignments; a panic cannot leave one half done.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The outcomes so far.
    pub fn acks(&self) -> InputAcks {
        self.lock().acks
    }

    /// Whether a rejection was lost because the reply queue was full: the
    /// client can no longer tell its inputs' outcomes, and must be closed.
    pub fn lost_rejection(&self) -> bool {
        self.lock().lost
    }

    /// Records that input `seq` was applied on `tick`.
    pub fn applied(&self, seq: u64, tick: Tick) {
        let mut ledger = self.lock();
        if seq > ledger.acks.through {
            ledger.acks.through = seq;
            ledger.acks.tick = tick;
        }
    }

    /// Sends the rejection `reply` to `tx` and counts it, under the lock:
    /// rejections are counted in the order they were queued, so a client
    /// that has read `rejected` of them has read every one counted.
    fn reject(&self, tx: &mpsc::Sender<CommandReply>, reply: CommandReply) {
        let mut ledger = self.lock();
        ledger.lost |= tx.try_send(reply).is_err();
        ledger.acks.rejected += 1;
    }
}

/// Where one input's outcome goes: applied, only into `ledger`; rejected,
/// counted in `ledger` and sent to `tx` as a [`CommandReply`] of kind
/// [`ReplyKind::Input`].
#[derive(Debug, Clone)]
pub struct InputReply {
    /// The connection's ledger.
    pub ledger: Arc<InputLedger>,
    /// The connection's reply queue, for a rejection.
    pub tx: mpsc::Sender<CommandReply>,
    /// The input's sequence number.
    pub seq: u64,
}

impl InputReply {
    /// Records `outcome` of the input of match `root`. Never waits.
    pub(crate) fn deliver(&self, root: &Arc<str>, outcome: CommandOutcome) {
        match outcome {
            CommandOutcome::Accepted { tick, .. } => self.ledger.applied(self.seq, tick),
            rejected @ CommandOutcome::Rejected(_) => self.ledger.reject(
                &self.tx,
                CommandReply {
                    root: root.clone(),
                    client_seq: self.seq,
                    kind: ReplyKind::Input,
                    outcome: rejected,
                },
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::game::Rejection;

    #[test]
    fn applied_inputs_only_move_the_ledger_and_rejections_are_queued_and_counted() {
        let ledger = Arc::new(InputLedger::default());
        let (tx, mut rx) = mpsc::channel(1);
        let root: Arc<str> = "m".into();
        let reply = |seq| InputReply {
            ledger: ledger.clone(),
            tx: tx.clone(),
            seq,
        };
        let accepted = |tick| CommandOutcome::Accepted {
            tick,
            first_sequence: 0,
            events: 1,
        };
        reply(1).deliver(&root, accepted(10));
        assert!(rx.try_recv().is_err(), "an applied input wakes nobody");
        reply(2).deliver(&root, CommandOutcome::Rejected(Rejection::new("no")));
        let queued = rx.try_recv().unwrap();
        assert_eq!((queued.client_seq, queued.kind), (2, ReplyKind::Input));
        reply(3).deliver(&root, accepted(11));
        // An older input recorded late does not move the ledger back.
        reply(1).deliver(&root, accepted(12));
        assert_eq!(
            ledger.acks(),
            InputAcks {
                through: 3,
                tick: 11,
                rejected: 1
            }
        );
        assert!(!ledger.lost_rejection());
        // A rejection that finds the queue full is remembered as lost.
        reply(4).deliver(&root, CommandOutcome::Rejected(Rejection::new("a")));
        reply(5).deliver(&root, CommandOutcome::Rejected(Rejection::new("b")));
        assert!(ledger.lost_rejection());
        assert_eq!(ledger.acks().rejected, 3);
    }
}
