//! What QUIC itself sends and receives for the server's open connections:
//! quinn's per-connection counters, summed. It shows what the payload
//! counters cannot, such as packets that carry only an ACK and the
//! probes a peer sends when it misses acknowledgements.

use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

/// The sums of quinn's counters over the connections open when taken.
/// Counters of connections that closed are not in them: compare two
/// readings only while the same connections stay open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportTotals {
    /// Connections summed.
    pub connections: u64,
    /// UDP datagrams sent.
    pub udp_sent: u64,
    /// UDP datagrams received.
    pub udp_received: u64,
    /// DATAGRAM frames sent (states).
    pub datagram_frames_sent: u64,
    /// DATAGRAM frames received (inputs).
    pub datagram_frames_received: u64,
    /// ACK frames sent.
    pub ack_frames_sent: u64,
    /// ACK frames received.
    pub ack_frames_received: u64,
    /// PING frames sent (keep-alives and loss probes).
    pub pings_sent: u64,
    /// PING frames received.
    pub pings_received: u64,
    /// STREAM frames sent.
    pub stream_frames_sent: u64,
    /// STREAM frames received.
    pub stream_frames_received: u64,
    /// Packets quinn declared lost.
    pub lost_packets: u64,
}

impl TransportTotals {
    /// `self - earlier`, field by field (saturating).
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            connections: self.connections,
            udp_sent: self.udp_sent.saturating_sub(earlier.udp_sent),
            udp_received: self.udp_received.saturating_sub(earlier.udp_received),
            datagram_frames_sent: self
                .datagram_frames_sent
                .saturating_sub(earlier.datagram_frames_sent),
            datagram_frames_received: self
                .datagram_frames_received
                .saturating_sub(earlier.datagram_frames_received),
            ack_frames_sent: self.ack_frames_sent.saturating_sub(earlier.ack_frames_sent),
            ack_frames_received: self
                .ack_frames_received
                .saturating_sub(earlier.ack_frames_received),
            pings_sent: self.pings_sent.saturating_sub(earlier.pings_sent),
            pings_received: self.pings_received.saturating_sub(earlier.pings_received),
            stream_frames_sent: self
                .stream_frames_sent
                .saturating_sub(earlier.stream_frames_sent),
            stream_frames_received: self
                .stream_frames_received
                .saturating_sub(earlier.stream_frames_received),
            lost_packets: self.lost_packets.saturating_sub(earlier.lost_packets),
        }
    }

    fn add(&mut self, stats: &quinn::ConnectionStats) {
        self.connections += 1;
        self.udp_sent += stats.udp_tx.datagrams;
        self.udp_received += stats.udp_rx.datagrams;
        self.datagram_frames_sent += stats.frame_tx.datagram;
        self.datagram_frames_received += stats.frame_rx.datagram;
        self.ack_frames_sent += stats.frame_tx.acks;
        self.ack_frames_received += stats.frame_rx.acks;
        self.pings_sent += stats.frame_tx.ping;
        self.pings_received += stats.frame_rx.ping;
        self.stream_frames_sent += stats.frame_tx.stream;
        self.stream_frames_received += stats.frame_rx.stream;
        self.lost_packets += stats.path.lost_packets;
    }
}

/// Reads [`TransportTotals`] of a running server (from
/// [`Server::transport_probe`](super::Server::transport_probe)).
#[derive(Clone)]
pub struct TransportProbe {
    pub(super) conns: Arc<DashMap<u64, quinn::Connection>>,
}

impl TransportProbe {
    /// Sums the counters of every open connection (one lock per
    /// connection: for diagnostics, not for every tick).
    pub fn totals(&self) -> TransportTotals {
        let mut totals = TransportTotals::default();
        for conn in self.conns.iter() {
            totals.add(&conn.stats());
        }
        totals
    }
}

impl std::fmt::Debug for TransportProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportProbe")
            .field("connections", &self.conns.len())
            .finish()
    }
}
