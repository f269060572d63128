//! A session's player inputs on one connection, without I/O: numbering,
//! what the next input datagram repeats, and resolving each input from the
//! acknowledgements inside states and the `InputRejected` frames.
//!
//! The server acknowledges inputs cumulatively (`Acked { through, tick,
//! rejected }`); each rejection also comes as its own reliable frame. An
//! input up to `through` was applied unless it was rejected, and the
//! server counts a rejection before `through` passes it, so once as many
//! rejection frames arrived as `rejected` says, every input up to
//! `through` without one was applied. A rejection frame may arrive after
//! the state that counts it: resolving waits for it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use tokio::sync::oneshot;

use super::{ClientError, InputStatus};
use crate::engine::InputAcks;
use crate::game::Tick;
use crate::net::protocol::ClientDatagram;

/// Where an input's outcome goes.
pub(super) type InputReplyTx = oneshot::Sender<Result<InputStatus, ClientError>>;

/// An input not resolved yet.
struct Waiting<C> {
    seq: u64,
    command: C,
    reply: InputReplyTx,
}

/// The inputs of the current connection.
pub(super) struct InputWindow<C> {
    /// The sequence the next input gets (from 1 per connection).
    next_seq: u64,
    /// Unresolved inputs, by sequence.
    waiting: VecDeque<Waiting<C>>,
    /// The server processed every input up to this one (applied or rejected).
    processed: u64,
    /// The newest acknowledgements received.
    acks: InputAcks,
    /// `InputRejected` frames received on this connection.
    rejections: u64,
    /// Unresolved inputs, shared with the session handle (which refuses an
    /// input past the window).
    outstanding: Arc<AtomicUsize>,
}

impl<C> InputWindow<C> {
    /// An empty window counting its unresolved inputs in `outstanding`.
    pub(super) fn new(outstanding: Arc<AtomicUsize>) -> Self {
        Self {
            next_seq: 1,
            waiting: VecDeque::new(),
            processed: 0,
            acks: InputAcks::default(),
            rejections: 0,
            outstanding,
        }
    }

    /// Numbers `command` (already counted in `outstanding` by the session
    /// handle) and keeps it until resolved.
    pub(super) fn push(&mut self, command: C, reply: InputReplyTx) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.waiting.push_back(Waiting {
            seq,
            command,
            reply,
        });
        seq
    }

    /// Whether inputs wait that the server has not processed yet.
    #[cfg(test)]
    fn unacknowledged(&self) -> bool {
        self.waiting.back().is_some_and(|w| w.seq > self.processed)
    }

    /// The input datagram: `ack` and every input the server has not
    /// processed, at most `max` of them, oldest first.
    pub(super) fn datagram(&self, ack: Option<Tick>, max: usize) -> ClientDatagram<&C> {
        let unsent = self
            .waiting
            .iter()
            .filter(|w| w.seq > self.processed)
            .take(max);
        let first_seq = self
            .waiting
            .iter()
            .find(|w| w.seq > self.processed)
            .map_or(self.next_seq, |w| w.seq);
        ClientDatagram::Input {
            ack,
            first_seq,
            commands: unsent.map(|w| &w.command).collect(),
        }
    }

    /// Takes the acknowledgements a state carried (perhaps older ones,
    /// from a reordered datagram) and resolves what they allow.
    pub(super) fn on_acks(&mut self, acks: InputAcks) {
        if acks.through >= self.acks.through && acks.rejected >= self.acks.rejected {
            self.acks = acks;
        }
        self.processed = self.processed.max(acks.through);
        self.resolve();
    }

    /// Takes an `InputRejected` frame.
    pub(super) fn on_rejected(&mut self, seq: u64, reason: String) {
        self.rejections += 1;
        self.processed = self.processed.max(seq);
        if let Some(at) = self.waiting.iter().position(|w| w.seq == seq)
            && let Some(waiting) = self.waiting.remove(at)
        {
            self.finish(waiting.reply, Ok(InputStatus::Rejected { reason }));
        }
        self.resolve();
    }

    /// Resolves inputs up to `through` as applied, once every rejection
    /// counted has arrived.
    fn resolve(&mut self) {
        if self.rejections < self.acks.rejected {
            return; // a rejection frame is on its way
        }
        while self
            .waiting
            .front()
            .is_some_and(|w| w.seq <= self.acks.through)
        {
            if let Some(waiting) = self.waiting.pop_front() {
                let tick = self.acks.tick;
                self.finish(waiting.reply, Ok(InputStatus::Applied { tick }));
            }
        }
    }

    /// Fails every unresolved input with `error` (the connection ended:
    /// their outcome is unknown) and starts numbering again for the next.
    pub(super) fn fail_all(&mut self, error: &ClientError) {
        for waiting in std::mem::take(&mut self.waiting) {
            self.finish(waiting.reply, Err(error.clone()));
        }
        let outstanding = self.outstanding.clone();
        *self = Self::new(outstanding);
    }

    fn finish(&self, reply: InputReplyTx, outcome: Result<InputStatus, ClientError>) {
        self.outstanding.fetch_sub(1, Relaxed);
        // The application may have dropped the handle; that is fine.
        let _ = reply.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Rx = oneshot::Receiver<Result<InputStatus, ClientError>>;

    fn window_with(n: usize) -> (InputWindow<&'static str>, Vec<Rx>) {
        let outstanding = Arc::new(AtomicUsize::new(n));
        let mut window = InputWindow::new(outstanding);
        let rxs = (0..n)
            .map(|i| {
                let (tx, rx) = oneshot::channel();
                assert_eq!(window.push(["a", "b", "c", "d"][i % 4], tx), i as u64 + 1);
                rx
            })
            .collect();
        (window, rxs)
    }

    fn acks(through: u64, tick: Tick, rejected: u64) -> InputAcks {
        InputAcks {
            through,
            tick,
            rejected,
        }
    }

    fn outcome(rx: &mut Rx) -> Option<Result<InputStatus, ClientError>> {
        rx.try_recv().ok()
    }

    #[test]
    fn datagrams_repeat_what_the_server_has_not_processed() {
        let (mut window, _rxs) = window_with(3);
        assert_eq!(
            window.datagram(Some(9), 16),
            ClientDatagram::Input {
                ack: Some(9),
                first_seq: 1,
                commands: vec![&"a", &"b", &"c"]
            }
        );
        window.on_acks(acks(2, 5, 0));
        assert_eq!(
            window.datagram(None, 16),
            ClientDatagram::Input {
                ack: None,
                first_seq: 3,
                commands: vec![&"c"]
            }
        );
        window.on_acks(acks(3, 6, 0));
        assert!(!window.unacknowledged());
        assert_eq!(
            window.datagram(Some(10), 16),
            ClientDatagram::Input {
                ack: Some(10),
                first_seq: 4,
                commands: vec![]
            }
        );
        assert_eq!(window.outstanding.load(Relaxed), 0);
    }

    #[test]
    fn a_rejection_counted_before_its_frame_defers_resolving() {
        let (mut window, mut rxs) = window_with(3);
        // 2 was rejected; the state saying so arrives before the frame.
        window.on_acks(acks(3, 7, 1));
        assert!(rxs.iter_mut().all(|rx| outcome(rx).is_none()), "deferred");
        assert!(!window.unacknowledged(), "nothing to repeat");
        window.on_rejected(2, "wall".into());
        assert!(matches!(
            outcome(&mut rxs[0]),
            Some(Ok(InputStatus::Applied { tick: 7 }))
        ));
        assert!(matches!(
            outcome(&mut rxs[1]),
            Some(Ok(InputStatus::Rejected { reason })) if reason == "wall"
        ));
        assert!(matches!(
            outcome(&mut rxs[2]),
            Some(Ok(InputStatus::Applied { tick: 7 }))
        ));
        assert_eq!(window.outstanding.load(Relaxed), 0);
    }

    #[test]
    fn older_acknowledgements_do_not_undo_newer_ones_and_a_drop_fails_the_rest() {
        let (mut window, mut rxs) = window_with(4);
        window.on_acks(acks(2, 5, 0));
        window.on_acks(acks(1, 4, 0));
        assert!(matches!(
            outcome(&mut rxs[1]),
            Some(Ok(InputStatus::Applied { tick: 5 }))
        ));
        window.fail_all(&ClientError::Disconnected);
        assert!(matches!(
            outcome(&mut rxs[2]),
            Some(Err(ClientError::Disconnected))
        ));
        assert!(matches!(
            outcome(&mut rxs[3]),
            Some(Err(ClientError::Disconnected))
        ));
        let (tx, _rx) = oneshot::channel();
        assert_eq!(window.push("e", tx), 1, "numbering restarts");
    }
}
