//! The send queue of the batching socket, sans I/O: copies of quinn's
//! transmits (destination, ECN, GSO segment size, source IP, contents) in
//! one contiguous buffer, a cursor over what the kernel has taken, and the
//! hard bound past which a transmit is dropped (and counted by the caller).
//!
//! The socket keeps two of these: one that connection drivers fill, and
//! one the flusher sends from; they swap when the flusher's is sent.

use std::net::{IpAddr, SocketAddr};

use quinn::udp::{EcnCodepoint, Transmit};

/// A transmit waiting in a [`SendQueue`]: its metadata, and where its
/// contents lie in the queue's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Queued {
    /// Where it goes.
    pub(crate) destination: SocketAddr,
    /// The ECN codepoint to send it with.
    pub(crate) ecn: Option<EcnCodepoint>,
    /// The GSO segment size when the contents hold several datagrams.
    pub(crate) segment_size: Option<usize>,
    /// The source address to send it from (a socket bound to a wildcard).
    pub(crate) src_ip: Option<IpAddr>,
    start: usize,
    len: usize,
}

/// What [`SendQueue::push`] did with a transmit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued into an empty queue: the flusher must be woken.
    First,
    /// Queued behind others (the flusher is already due); the queue now
    /// holds this many transmits.
    Behind(usize),
    /// Not queued: the queue is at its bound.
    Full,
}

/// How much a [`SendQueue`] holds at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueBound {
    /// Transmits.
    pub(crate) transmits: usize,
    /// Bytes of contents.
    pub(crate) bytes: usize,
}

/// Transmits copied out of quinn, in order, with a cursor over those the
/// kernel has already taken.
#[derive(Debug)]
pub(crate) struct SendQueue {
    bytes: Vec<u8>,
    queued: Vec<Queued>,
    /// `queued[..sent]` are handed to the kernel (or given up on).
    sent: usize,
    bound: QueueBound,
}

impl SendQueue {
    /// An empty queue holding at most `bound`.
    pub(crate) fn new(bound: QueueBound) -> Self {
        Self {
            bytes: Vec::new(),
            queued: Vec::new(),
            sent: 0,
            bound,
        }
    }

    /// Copies `transmit` in, unless the queue is at its bound.
    pub(crate) fn push(&mut self, transmit: &Transmit<'_>) -> Pushed {
        let len = transmit.contents.len();
        if self.queued.len() >= self.bound.transmits
            || (!self.queued.is_empty() && self.bytes.len() + len > self.bound.bytes)
        {
            return Pushed::Full;
        }
        let start = self.bytes.len();
        self.bytes.extend_from_slice(transmit.contents);
        self.queued.push(Queued {
            destination: transmit.destination,
            ecn: transmit.ecn,
            segment_size: transmit.segment_size,
            src_ip: transmit.src_ip,
            start,
            len,
        });
        match self.queued.len() {
            1 => Pushed::First,
            n => Pushed::Behind(n),
        }
    }

    /// The transmits not yet handed to the kernel, in order.
    pub(crate) fn pending(&self) -> &[Queued] {
        &self.queued[self.sent..]
    }

    /// The contents of `queued` (one of [`pending`](Self::pending)).
    pub(crate) fn contents(&self, queued: &Queued) -> &[u8] {
        &self.bytes[queued.start..queued.start + queued.len]
    }

    /// Whether nothing is queued (sent or not).
    pub(crate) fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Whether every transmit has been handed on (or none was queued).
    pub(crate) fn is_sent(&self) -> bool {
        self.sent == self.queued.len()
    }

    /// Marks the first `n` pending transmits as handed on.
    pub(crate) fn advance(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.queued.len());
    }

    /// Empties the queue, keeping its buffers' capacity.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.queued.clear();
        self.sent = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOMY: QueueBound = QueueBound {
        transmits: 64,
        bytes: 64 * 1500,
    };

    fn transmit<'a>(destination: &str, contents: &'a [u8]) -> Transmit<'a> {
        Transmit {
            destination: destination.parse().unwrap(),
            ecn: Some(EcnCodepoint::Ect0),
            contents,
            segment_size: None,
            src_ip: None,
        }
    }

    #[test]
    fn transmits_come_out_in_order_with_their_contents_and_metadata() {
        let mut queue = SendQueue::new(ROOMY);
        assert_eq!(queue.push(&transmit("10.0.0.1:1", b"first")), Pushed::First);
        let mut gso = transmit("[::1]:2", b"aaaabbbbcc");
        gso.segment_size = Some(4);
        gso.src_ip = Some("::1".parse().unwrap());
        gso.ecn = None;
        assert_eq!(queue.push(&gso), Pushed::Behind(2));
        assert_eq!(queue.push(&transmit("10.0.0.3:3", b"")), Pushed::Behind(3));

        let pending = queue.pending();
        assert_eq!(pending.len(), 3);
        assert_eq!(queue.contents(&pending[0]), b"first");
        assert_eq!(pending[0].destination, "10.0.0.1:1".parse().unwrap());
        assert_eq!(pending[0].ecn, Some(EcnCodepoint::Ect0));
        assert_eq!(queue.contents(&pending[1]), b"aaaabbbbcc");
        assert_eq!(pending[1].segment_size, Some(4));
        assert_eq!(pending[1].src_ip, Some("::1".parse().unwrap()));
        assert_eq!(pending[1].ecn, None);
        assert_eq!(queue.contents(&pending[2]), b"");
    }

    #[test]
    fn advancing_hands_on_a_prefix_until_all_are_sent() {
        let mut queue = SendQueue::new(ROOMY);
        for i in 0..5u8 {
            queue.push(&transmit("10.0.0.1:1", &[i]));
        }
        queue.advance(2);
        assert!(!queue.is_sent());
        let pending = queue.pending();
        assert_eq!(pending.len(), 3);
        assert_eq!(queue.contents(&pending[0]), &[2]);
        queue.advance(10);
        assert!(queue.is_sent());
        assert!(queue.pending().is_empty());
    }

    #[test]
    fn a_cleared_queue_starts_over_and_wakes_the_flusher_again() {
        let mut queue = SendQueue::new(ROOMY);
        queue.push(&transmit("10.0.0.1:1", b"old"));
        queue.advance(1);
        queue.clear();
        assert!(queue.is_sent());
        assert_eq!(queue.push(&transmit("10.0.0.1:1", b"new")), Pushed::First);
        assert_eq!(queue.contents(&queue.pending()[0]), b"new");
    }

    #[test]
    fn the_bound_on_transmits_refuses_the_next_one() {
        let mut queue = SendQueue::new(QueueBound {
            transmits: 2,
            bytes: 1 << 20,
        });
        queue.push(&transmit("10.0.0.1:1", b"a"));
        queue.push(&transmit("10.0.0.1:1", b"b"));
        assert_eq!(queue.push(&transmit("10.0.0.1:1", b"c")), Pushed::Full);
        assert_eq!(queue.pending().len(), 2);
        // Sent but not cleared still counts: the flusher clears it.
        queue.advance(2);
        assert_eq!(queue.push(&transmit("10.0.0.1:1", b"c")), Pushed::Full);
    }

    #[test]
    fn the_bound_on_bytes_refuses_what_would_pass_it_but_never_the_first() {
        let mut queue = SendQueue::new(QueueBound {
            transmits: 64,
            bytes: 10,
        });
        // Larger than the bound alone, yet the queue is empty: it goes.
        assert_eq!(queue.push(&transmit("10.0.0.1:1", &[0; 12])), Pushed::First);
        assert_eq!(queue.push(&transmit("10.0.0.1:1", b"x")), Pushed::Full);
        queue.clear();
        assert_eq!(queue.push(&transmit("10.0.0.1:1", &[0; 6])), Pushed::First);
        assert_eq!(
            queue.push(&transmit("10.0.0.1:1", &[0; 4])),
            Pushed::Behind(2)
        );
        assert_eq!(queue.push(&transmit("10.0.0.1:1", b"x")), Pushed::Full);
    }
}
