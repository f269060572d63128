//! Prometheus metrics: the names, their help texts and buckets, and the one
//! global recorder of the process.
//!
//! Metrics are recorded where they happen, with the `metrics` crate's
//! `counter!`, `gauge!` and `histogram!` macros and the names below (the
//! engine's shard and writer, restore, the QUIC server). Until
//! [`install`] runs, those macros do nothing; after it, the admin
//! listener renders everything recorded as Prometheus text from the
//! [`PrometheusHandle`]. Names follow Prometheus conventions: a
//! `tickforge_` prefix, `_total` counters, `_seconds` and `_bytes` units.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::net::CloseCode;
use crate::store::StoreError;

/// Histogram: how long one shard tick took (label `shard`).
pub const TICK_DURATION: &str = "tickforge_tick_duration_seconds";
/// Counter: shard ticks that started a period or more late (label `shard`).
pub const LATE_TICKS: &str = "tickforge_late_ticks_total";
/// Gauge: matches hosted now (label `shard`).
pub const MATCHES_LIVE: &str = "tickforge_matches_live";
/// Counter: matches created on this node.
pub const MATCHES_CREATED: &str = "tickforge_matches_created_total";
/// Counter: matches restored from the store on this node.
pub const MATCHES_RESTORED: &str = "tickforge_matches_restored_total";
/// Counter: matches that ended.
pub const MATCHES_ENDED: &str = "tickforge_matches_ended_total";
/// Counter: matches ended because their game code failed (panicked).
pub const MATCHES_FAILED: &str = "tickforge_matches_failed_total";
/// Counter: matches paused because the store refused their writes.
pub const MATCHES_PAUSED: &str = "tickforge_matches_paused_total";
/// Counter: commands the game accepted.
pub const COMMANDS_ACCEPTED: &str = "tickforge_commands_accepted_total";
/// Counter: commands refused (label `reason`, see [`rejected`]).
pub const COMMANDS_REJECTED: &str = "tickforge_commands_rejected_total";
/// Counter: events the store acknowledged.
pub const EVENTS_APPENDED: &str = "tickforge_events_appended_total";
/// Histogram: round trip of one successful store append call.
pub const APPEND_DURATION: &str = "tickforge_store_append_duration_seconds";
/// Counter: failed store calls (label `class`, see [`store_error_class`]).
pub const STORE_ERRORS: &str = "tickforge_store_errors_total";
/// Gauge: ticks of writes queued for the store (label `shard`).
pub const WRITER_BACKLOG_TICKS: &str = "tickforge_writer_backlog_ticks";
/// Gauge: payload bytes (events and snapshots) queued for the store (label `shard`).
pub const WRITER_BACKLOG_BYTES: &str = "tickforge_writer_backlog_bytes";
/// Histogram: time to restore one match (label `phase`: `snapshot_read`
/// or `tail_replay`).
pub const RESTORE_DURATION: &str = "tickforge_restore_duration_seconds";
/// Counter: events replayed after the snapshot while restoring matches.
pub const RESTORE_EVENTS_REPLAYED: &str = "tickforge_restore_events_replayed_total";
/// Counter: QUIC connections that completed the handshake.
pub const SESSIONS_CONNECTED: &str = "tickforge_sessions_connected_total";
/// Counter: players admitted with a resume token.
pub const SESSIONS_RESUMED: &str = "tickforge_sessions_resumed_total";
/// Counter: connections closed (label `code`: the close code the server
/// sent, or `peer_closed`, `timed_out`, `lost` when it did not close them).
pub const SESSIONS_CLOSED: &str = "tickforge_sessions_closed_total";
/// Gauge: connections open now.
pub const SESSIONS_OPEN: &str = "tickforge_sessions_open";
/// Counter: state datagrams sent.
pub const DATAGRAMS_SENT: &str = "tickforge_net_datagrams_sent_total";
/// Counter: payload bytes sent (label `channel`: `datagram` or `stream`).
pub const BYTES_SENT: &str = "tickforge_net_bytes_sent_total";
/// Counter: payload bytes received on control streams.
pub const BYTES_RECEIVED: &str = "tickforge_net_bytes_received_total";
/// Counter: UDP datagrams of closed connections, as QUIC counted them
/// (label `direction`: `in` or `out`).
pub const UDP_DATAGRAMS: &str = "tickforge_quic_udp_datagrams_total";
/// Counter: UDP bytes of closed connections, as QUIC counted them (label
/// `direction`).
pub const UDP_BYTES: &str = "tickforge_quic_udp_bytes_total";
/// Gauge: matches whose states a fan-out task sends now.
pub const FANOUTS_LIVE: &str = "tickforge_net_fanouts";
/// Counter: fan-out wake-ups (one per match per tick it sends).
pub const FANOUT_WAKEUPS: &str = "tickforge_net_fanout_wakeups_total";
/// Counter: connections refused with `ServerFull` (label `reason`:
/// `connections`, `ramp`, `ceiling`, `cpu`, `tick_load`, `lag`,
/// `send_delay`, `receive_queue`).
pub const ADMISSION_REFUSED: &str = "tickforge_admission_refused_total";
/// Counter: sessions closed with `ServerFull` after two seconds over a
/// headroom limit with more than the ceiling open (the newest first).
pub const ADMISSION_SHED: &str = "tickforge_admission_shed_total";
/// Gauge: the load admission judges, in percent (label `measure`: `cpu`,
/// `busy`, `demand` (the peaks of the last second), `tick_load`).
pub const ADMISSION_LOAD: &str = "tickforge_admission_load_percent";
/// Gauge: the connections the node admits up to after an overload (absent
/// until one).
pub const ADMISSION_CEILING: &str = "tickforge_admission_ceiling_connections";
/// Gauge: how late states leave after their tick, seconds, at the 99th
/// percentile (the highest of the last second's samples).
pub const ADMISSION_SEND_DELAY: &str = "tickforge_admission_send_delay_seconds";
/// Gauge: bytes waiting in the QUIC socket's receive buffer (the highest of
/// the last second's samples).
pub const ADMISSION_RECEIVE_QUEUE: &str = "tickforge_admission_receive_queue_bytes";
/// Gauge: 1 while the node drains, else 0.
pub const DRAINING: &str = "tickforge_draining";
/// Gauge: live nodes in the fleet's directory, as this node last read it.
pub const FLEET_NODES: &str = "tickforge_fleet_nodes";
/// Counter: matches this node took over (restored from a lease that was
/// free, expired, or handed to it).
pub const FLEET_TAKEOVERS: &str = "tickforge_fleet_takeovers_total";
/// Counter: matches this node handed over to another node (drain).
pub const FLEET_HANDOVERS: &str = "tickforge_fleet_handovers_total";
/// Counter: matches this node stopped hosting because another node holds
/// their lease now (a write or renewal was fenced).
pub const FLEET_FENCED: &str = "tickforge_fleet_fenced_total";
/// Counter: clients sent to another node (label `why`: `owner`,
/// `capacity`).
pub const FLEET_REDIRECTS: &str = "tickforge_fleet_redirects_total";
/// Counter: lease renewals that failed (the store was unavailable).
pub const FLEET_RENEW_FAILURES: &str = "tickforge_fleet_lease_renew_failures_total";

/// The `reason` label values of [`COMMANDS_REJECTED`].
pub mod rejected {
    /// The game's `decide` refused the command.
    pub const GAME: &str = "game";
    /// The match is paused (its writes were refused, or the write buffer is full).
    pub const PAUSED: &str = "paused";
    /// No such match on this node.
    pub const UNKNOWN_MATCH: &str = "unknown_match";
    /// A shard or match queue was full.
    pub const QUEUE_FULL: &str = "queue_full";
    /// Queued for a match that stopped ticking (paused or shut down) before it ran.
    pub const STOPPED: &str = "stopped";
    /// Arrived while the engine shut down.
    pub const SHUTDOWN: &str = "shutdown";
}

/// Tick durations: 0.1 ms to 100 ms, with the 30 Hz period (33 ms) as a bound.
const TICK_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.033, 0.05, 0.1,
];
/// Store round trips: 0.1 ms to 10 s.
const APPEND_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];
/// Restore phases: 0.5 ms to 30 s.
const RESTORE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0,
];

/// Why the recorder could not be installed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot install the Prometheus metrics recorder: {0}")]
pub struct RecorderError(String);

static RECORDER: OnceLock<Result<PrometheusHandle, RecorderError>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its
/// handle; later calls return the same handle (or the same error, e.g.
/// when another global recorder was installed first).
pub fn install() -> Result<PrometheusHandle, RecorderError> {
    RECORDER.get_or_init(build_and_install).clone()
}

fn build_and_install() -> Result<PrometheusHandle, RecorderError> {
    let error = |e: metrics_exporter_prometheus::BuildError| RecorderError(e.to_string());
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(TICK_DURATION.into()), TICK_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(APPEND_DURATION.into()), APPEND_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(RESTORE_DURATION.into()), RESTORE_BUCKETS)
        })
        .map_err(error)?
        .install_recorder()
        .map_err(error)?;
    describe();
    // Counters without labels show from the start, at 0.
    for name in [
        MATCHES_CREATED,
        MATCHES_RESTORED,
        MATCHES_ENDED,
        MATCHES_PAUSED,
        MATCHES_FAILED,
        COMMANDS_ACCEPTED,
        EVENTS_APPENDED,
        RESTORE_EVENTS_REPLAYED,
        SESSIONS_CONNECTED,
        SESSIONS_RESUMED,
        DATAGRAMS_SENT,
        BYTES_RECEIVED,
    ] {
        metrics::counter!(name).absolute(0);
    }
    metrics::gauge!(SESSIONS_OPEN).set(0.0);
    Ok(handle)
}

fn describe() {
    use Unit::{Bytes, Count, Seconds};
    describe_gauge!(FLEET_NODES, Count, "Live nodes in the fleet directory.");
    describe_counter!(FLEET_TAKEOVERS, Count, "Matches this node took over.");
    describe_counter!(
        FLEET_HANDOVERS,
        Count,
        "Matches this node handed over to another node."
    );
    describe_counter!(
        FLEET_FENCED,
        Count,
        "Matches stopped here because another node holds their lease."
    );
    describe_counter!(
        FLEET_REDIRECTS,
        Count,
        "Clients redirected to another node."
    );
    describe_counter!(FLEET_RENEW_FAILURES, Count, "Lease renewals that failed.");
    describe_histogram!(TICK_DURATION, Seconds, "Time one shard tick took.");
    describe_counter!(
        LATE_TICKS,
        Count,
        "Shard ticks started a period or more after they were due."
    );
    describe_gauge!(MATCHES_LIVE, Count, "Matches hosted now.");
    describe_counter!(MATCHES_CREATED, Count, "Matches created on this node.");
    describe_counter!(MATCHES_RESTORED, Count, "Matches restored from the store.");
    describe_counter!(MATCHES_ENDED, Count, "Matches that ended.");
    describe_counter!(
        MATCHES_PAUSED,
        Count,
        "Matches paused because the store refused their writes."
    );
    describe_counter!(
        MATCHES_FAILED,
        Count,
        "Matches ended because their game code failed."
    );
    describe_counter!(COMMANDS_ACCEPTED, Count, "Commands the game accepted.");
    describe_counter!(COMMANDS_REJECTED, Count, "Commands refused, by reason.");
    describe_counter!(EVENTS_APPENDED, Count, "Events the store acknowledged.");
    describe_histogram!(
        APPEND_DURATION,
        Seconds,
        "Round trip of a successful store append."
    );
    describe_counter!(STORE_ERRORS, Count, "Failed store calls, by error class.");
    describe_gauge!(
        WRITER_BACKLOG_TICKS,
        Count,
        "Ticks of writes queued for the store."
    );
    describe_gauge!(
        WRITER_BACKLOG_BYTES,
        Bytes,
        "Payload bytes queued for the store."
    );
    describe_histogram!(
        RESTORE_DURATION,
        Seconds,
        "Time to restore a match, by phase."
    );
    describe_counter!(
        RESTORE_EVENTS_REPLAYED,
        Count,
        "Events replayed after the snapshot in restores."
    );
    describe_counter!(
        SESSIONS_CONNECTED,
        Count,
        "QUIC connections that completed the handshake."
    );
    describe_counter!(
        SESSIONS_RESUMED,
        Count,
        "Players admitted with a resume token."
    );
    describe_counter!(SESSIONS_CLOSED, Count, "Connections closed, by close code.");
    describe_gauge!(SESSIONS_OPEN, Count, "Connections open now.");
    describe_counter!(DATAGRAMS_SENT, Count, "State datagrams sent.");
    describe_counter!(BYTES_SENT, Bytes, "Payload bytes sent, by channel.");
    describe_counter!(
        BYTES_RECEIVED,
        Bytes,
        "Payload bytes received on control streams."
    );
    describe_counter!(
        UDP_DATAGRAMS,
        Count,
        "UDP datagrams of closed connections, by direction."
    );
    describe_counter!(
        UDP_BYTES,
        Bytes,
        "UDP bytes of closed connections, by direction."
    );
    describe_gauge!(DRAINING, Count, "1 while the node drains.");
    describe_gauge!(FANOUTS_LIVE, Count, "Matches with a state fan-out task.");
    describe_counter!(
        FANOUT_WAKEUPS,
        Count,
        "Fan-out wake-ups, one per match per tick sent."
    );
    describe_counter!(
        ADMISSION_REFUSED,
        Count,
        "Connections refused with ServerFull, by reason."
    );
    describe_counter!(
        ADMISSION_SHED,
        Count,
        "Sessions closed (newest first) after two seconds over a headroom limit."
    );
    describe_gauge!(
        ADMISSION_LOAD,
        "Load admission judges, percent: cpu, busy, demand (peaks of the last second), tick_load."
    );
    describe_gauge!(
        ADMISSION_CEILING,
        Count,
        "Connections admitted up to since the node was last overloaded."
    );
    describe_gauge!(
        ADMISSION_SEND_DELAY,
        Unit::Seconds,
        "How late states leave after their tick, 99th percentile (peak of the last second)."
    );
    describe_gauge!(
        ADMISSION_RECEIVE_QUEUE,
        Unit::Bytes,
        "Bytes waiting in the QUIC socket's receive buffer (peak of the last second)."
    );
}

/// The `class` label of [`STORE_ERRORS`] for a store error.
pub fn store_error_class(error: &StoreError) -> &'static str {
    error.class().as_str()
}

/// The `code` label of [`SESSIONS_CLOSED`]: the close code's name in snake case.
pub fn close_code_label(code: CloseCode) -> String {
    let name = format!("{code:?}");
    let mut label = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                label.push('_');
            }
            label.push(c.to_ascii_lowercase());
        } else {
            label.push(c);
        }
    }
    label
}

/// Counts a connection that ended: by how it closed when the server did
/// not close it itself (those are counted with their code where the
/// server closes), and its UDP totals as QUIC counted them.
pub(crate) fn connection_ended(conn: &quinn::Connection) {
    use quinn::ConnectionError as E;
    let peer_close = match conn.close_reason() {
        Some(E::ApplicationClosed(_) | E::ConnectionClosed(_)) => Some("peer_closed"),
        Some(E::TimedOut) => Some("timed_out"),
        Some(E::LocallyClosed) | None => None,
        Some(_) => Some("lost"),
    };
    if let Some(code) = peer_close {
        metrics::counter!(SESSIONS_CLOSED, "code" => code).increment(1);
    }
    let stats = conn.stats();
    metrics::counter!(UDP_DATAGRAMS, "direction" => "out").increment(stats.udp_tx.datagrams);
    metrics::counter!(UDP_DATAGRAMS, "direction" => "in").increment(stats.udp_rx.datagrams);
    metrics::counter!(UDP_BYTES, "direction" => "out").increment(stats.udp_tx.bytes);
    metrics::counter!(UDP_BYTES, "direction" => "in").increment(stats.udp_rx.bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_become_snake_case_labels() {
        assert_eq!(close_code_label(CloseCode::Normal), "normal");
        assert_eq!(
            close_code_label(CloseCode::ServerShutdown),
            "server_shutdown"
        );
        assert_eq!(close_code_label(CloseCode::TicketForged), "ticket_forged");
    }

    #[test]
    fn store_errors_fall_into_classes() {
        assert_eq!(
            store_error_class(&StoreError::Unavailable("down".into())),
            "transient"
        );
        let conflict = StoreError::Conflict {
            key: "k".into(),
            expected: 1,
            found: 2,
        };
        assert_eq!(store_error_class(&conflict), "permanent");
        assert_eq!(
            store_error_class(&StoreError::UnknownMatch("k".into())),
            "permanent"
        );
    }

    #[test]
    fn installing_twice_gives_the_same_recorder() {
        let first = install().expect("the first install works");
        metrics::counter!("tickforge_test_install_total").increment(3);
        let second = install().expect("a second install returns the first");
        assert!(second.render().contains("tickforge_test_install_total 3"));
        drop(first);
    }

    #[test]
    fn bucket_lists_ascend() {
        for buckets in [TICK_BUCKETS, APPEND_BUCKETS, RESTORE_BUCKETS] {
            assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{buckets:?}");
        }
    }
}
