//! The network's per-packet Prometheus counters, registered once per
//! server. `metrics::counter!` looks its counter up in the recorder's
//! registry (hashing the name and labels) on every call; once per datagram
//! that was a cost of its own, so the hot paths keep these handles.

use metrics::Counter;

use crate::admin::metrics as names;

/// Handles to the counters every datagram updates. Registered with the
/// recorder installed when the server binds (a node installs it first);
/// without one they count nothing, as the macros would.
pub(super) struct PacketMeters {
    /// [`names::BYTES_SENT`] on the datagram channel.
    pub(super) datagram_bytes_sent: Counter,
    /// [`names::DATAGRAMS_SENT`].
    pub(super) datagrams_sent: Counter,
    /// [`names::BYTES_RECEIVED`].
    pub(super) bytes_received: Counter,
}

impl PacketMeters {
    pub(super) fn register() -> Self {
        Self {
            datagram_bytes_sent: metrics::counter!(names::BYTES_SENT, "channel" => "datagram"),
            datagrams_sent: metrics::counter!(names::DATAGRAMS_SENT),
            bytes_received: metrics::counter!(names::BYTES_RECEIVED),
        }
    }
}
