//! The waiting room: connections the join ramp holds back for a moment
//! instead of refusing them.
//!
//! A node that measures its headroom admits a join storm in steps (at most
//! [`RAMP_MIN`](crate::net::admission::RAMP_MIN) or an eighth more
//! connections per second). Refused, every client of a wave beyond the
//! step went away and came back with its own growing backoff: a wave of
//! 100 players took about 13 s to get into an idle node, and each refusal
//! cost the node a whole TLS handshake. Here they wait, oldest first, with
//! their handshake not yet answered, and are let in as soon as the next
//! load sample opens the ramp again; only one still waiting after
//! [`MAX_WAIT`], or one that finds the room full, is refused (with the
//! retry hint). The other limits (CPU, tick load, connections, …) refuse
//! at once, as before: waiting would not make room.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Connections held at once, at most; a newcomer beyond is refused.
pub(super) const CAPACITY: usize = 256;
/// The longest a connection waits for the ramp; then it is refused.
/// The client library waits 10 s for a handshake (less with a shorter
/// idle timeout).
pub(super) const MAX_WAIT: Duration = Duration::from_secs(5);

/// Waiting connections (a [`quinn::Incoming`] in the server), oldest first.
#[derive(Debug)]
pub(super) struct WaitingRoom<T> {
    waiting: VecDeque<(T, Instant)>,
    capacity: usize,
    max_wait: Duration,
}

impl<T> WaitingRoom<T> {
    pub(super) fn new(capacity: usize, max_wait: Duration) -> Self {
        Self {
            waiting: VecDeque::new(),
            capacity,
            max_wait,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Queues `arrival` behind those already waiting.
    pub(super) fn push(&mut self, arrival: T, now: Instant) {
        self.waiting.push_back((arrival, now));
    }

    /// The one waiting longest.
    pub(super) fn pop(&mut self) -> Option<T> {
        self.waiting.pop_front().map(|(arrival, _)| arrival)
    }

    /// The newest arrivals beyond the capacity, to refuse.
    pub(super) fn overflow(&mut self) -> Vec<T> {
        let excess = self.waiting.len().saturating_sub(self.capacity);
        let kept = self.waiting.len() - excess;
        self.waiting
            .drain(kept..)
            .map(|(arrival, _)| arrival)
            .collect()
    }

    /// Those who have waited `max_wait` by `now`, to refuse.
    pub(super) fn expired(&mut self, now: Instant) -> Vec<T> {
        let due = self
            .waiting
            .iter()
            .take_while(|(_, since)| now.duration_since(*since) >= self.max_wait)
            .count();
        self.waiting
            .drain(..due)
            .map(|(arrival, _)| arrival)
            .collect()
    }

    /// When the one waiting longest runs out of time.
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.waiting
            .front()
            .map(|(_, since)| *since + self.max_wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_go_first_and_expire_first() {
        let start = Instant::now();
        let mut room = WaitingRoom::new(8, Duration::from_secs(3));
        for (id, after_ms) in [(1, 0), (2, 500), (3, 1_000)] {
            room.push(id, start + Duration::from_millis(after_ms));
        }
        assert_eq!(room.next_expiry(), Some(start + Duration::from_secs(3)));
        assert_eq!(
            room.expired(start + Duration::from_millis(2_999)),
            Vec::<i32>::new()
        );
        assert_eq!(
            room.expired(start + Duration::from_millis(3_500)),
            vec![1, 2]
        );
        assert_eq!(room.pop(), Some(3));
        assert!(room.is_empty());
        assert_eq!(room.next_expiry(), None);
    }

    #[test]
    fn past_the_capacity_the_newest_are_turned_away() {
        let now = Instant::now();
        let mut room = WaitingRoom::new(2, Duration::from_secs(3));
        for id in 1..=4 {
            room.push(id, now);
        }
        assert_eq!(room.overflow(), vec![3, 4]);
        assert_eq!(room.overflow(), Vec::<i32>::new());
        assert_eq!(
            (room.pop(), room.pop(), room.pop()),
            (Some(1), Some(2), None)
        );
    }
}
