//! The listener side: refusing connections the server has no room for, and
//! the accept loop.

use super::*;

/// Answers every new connection during a drain with
/// [`CloseCode::ServerShutdown`] and a retry hint, instead of leaving it
/// to time out. Runs until the endpoint closes.
pub(super) async fn refuse_while_draining(endpoint: &quinn::Endpoint, handshake_timeout: Duration) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            if let Ok(Ok(conn)) = tokio::time::timeout(handshake_timeout, incoming).await {
                Refusal::new(
                    CloseCode::ServerShutdown,
                    "draining: this node is shutting down; retry in a few seconds \
                     (resume tokens stay valid)",
                )
                .close(&conn);
            }
        });
    }
}

/// `ServerFull` refusals under way at once, at most; past that a new
/// connection is refused at the QUIC level (no handshake, no close code).
pub(super) const MAX_REFUSING: usize = 1024;

pub(super) async fn accept_loop<G: Game, S: Store>(
    endpoint: &quinn::Endpoint,
    shared: &Arc<Shared<G, S>>,
    limit: &Arc<Semaphore>,
    complete_tx: &mpsc::Sender<()>,
) {
    let limits = shared.config.admission();
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    while let Some(incoming) = endpoint.accept().await {
        // The permit moves into the task and is released when it ends.
        let verdict = match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                let open = limits.max_connections - limit.available_permits() - 1;
                match limits.verdict(&shared.headroom.load(open)) {
                    None => Ok(permit),
                    Some(full) => Err(full),
                }
            }
            Err(_) => Err(Full::Connections {
                open: limits.max_connections,
                limit: limits.max_connections,
            }),
        };
        match verdict {
            Ok(permit) => {
                let shared = shared.clone();
                let complete = complete_tx.clone();
                tokio::spawn(async move {
                    handle_connection(shared, incoming).await;
                    drop(permit);
                    drop(complete);
                });
            }
            Err(full) => {
                metrics::counter!(names::ADMISSION_REFUSED, "reason" => full.reason()).increment(1);
                refuse_full(shared, incoming, full, limits.retry_after, &refusing);
            }
        }
    }
}

/// Answers a connection the server will not take: completes the handshake
/// and closes with [`CloseCode::ServerFull`], the retry hint and the reason;
/// when [`MAX_REFUSING`] such answers are under way, refuses it at the QUIC
/// level at once instead.
pub(super) fn refuse_full<G: Game, S: Store>(
    shared: &Arc<Shared<G, S>>,
    incoming: quinn::Incoming,
    full: Full,
    retry_after: Duration,
    refusing: &Arc<Semaphore>,
) {
    let stats = shared.stats.clone();
    let Ok(place) = refusing.clone().try_acquire_owned() else {
        stats.refused_unanswered.fetch_add(1, Relaxed);
        incoming.refuse();
        return;
    };
    let handshake_timeout = shared.config.handshake_limit();
    tokio::spawn(async move {
        let remote = incoming.remote_address();
        if let Ok(Ok(conn)) = tokio::time::timeout(handshake_timeout, incoming).await {
            stats.refused_full.fetch_add(1, Relaxed);
            tracing::debug!(%remote, %full, "connection refused: server full");
            Refusal::new(
                CloseCode::ServerFull,
                protocol::retry_reason(retry_after, &full.to_string()),
            )
            .close(&conn);
        }
        drop(place);
    });
}

/// Closes the `count` newest connections (the highest ids: sessions and
/// Hellos under way) with [`CloseCode::ServerFull`] and the retry hint:
/// the node was over a headroom limit for two seconds, and the sessions it
/// admitted last go so that the others keep their pace. Players among them
/// keep their slot for the grace window and may resume once there is room.
pub(super) fn shed_newest<G: Game, S: Store>(shared: &Shared<G, S>, count: usize) {
    let mut ids: Vec<u64> = shared.conns.iter().map(|entry| *entry.key()).collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    let refusal = Refusal::new(
        CloseCode::ServerFull,
        protocol::retry_reason(
            shared.config.full_retry_after,
            "server overloaded: closing the newest sessions",
        ),
    );
    for id in ids.into_iter().take(count) {
        if let Some(conn) = shared.conns.get(&id) {
            refusal.close(conn.value());
            shared.stats.shed.fetch_add(1, Relaxed);
            metrics::counter!(names::ADMISSION_SHED).increment(1);
        }
    }
}
