//! The listener side: refusing connections the server has no room for, and
//! the accept loop.

use super::waiting_room::{self, WaitingRoom};
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

/// Takes new connections: admits each the limits allow, holds those the
/// join ramp holds back in the [`WaitingRoom`] until a load sample opens
/// it again, and refuses the rest with [`CloseCode::ServerFull`].
pub(super) async fn accept_loop<G: Game, S: Store>(
    endpoint: &quinn::Endpoint,
    shared: &Arc<Shared<G, S>>,
    limit: &Arc<Semaphore>,
    complete_tx: &mpsc::Sender<()>,
) {
    let gate = Gate {
        shared,
        limits: shared.config.admission(),
        limit,
        complete_tx,
        refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
    };
    let mut room = WaitingRoom::new(waiting_room::CAPACITY, waiting_room::MAX_WAIT);
    loop {
        let expiry = room.next_expiry();
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                room.push(incoming, Instant::now());
            }
            () = shared.headroom.renewed(), if !room.is_empty() => {}
            () = sleep_until_some(expiry), if expiry.is_some() => {}
        }
        gate.admit_waiting(&mut room);
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

/// What the accept loop decides with.
struct Gate<'a, G: Game, S: Store> {
    shared: &'a Arc<Shared<G, S>>,
    limits: admission::AdmissionLimits,
    limit: &'a Arc<Semaphore>,
    complete_tx: &'a mpsc::Sender<()>,
    refusing: Arc<Semaphore>,
}

impl<G: Game, S: Store> Gate<'_, G, S> {
    /// Admits the waiting connections, oldest first, while the limits
    /// allow; refuses them when a limit other than the ramp is reached,
    /// and those who waited too long or do not fit in the room.
    fn admit_waiting(&self, room: &mut WaitingRoom<quinn::Incoming>) {
        while !room.is_empty() {
            match self.verdict() {
                Ok(permit) => {
                    let Some(incoming) = room.pop() else { break };
                    let shared = self.shared.clone();
                    let complete = self.complete_tx.clone();
                    tokio::spawn(async move {
                        handle_connection(shared, incoming).await;
                        // The permit is released when the connection ends.
                        drop(permit);
                        drop(complete);
                    });
                }
                Err(full @ Full::Ramp { .. }) => {
                    let turned_away = room
                        .expired(Instant::now())
                        .into_iter()
                        .chain(room.overflow());
                    for incoming in turned_away {
                        self.refuse(incoming, full);
                    }
                    return;
                }
                Err(full) => {
                    let Some(incoming) = room.pop() else { break };
                    self.refuse(incoming, full);
                }
            }
        }
    }

    /// A connection place (its permit) if the limits admit one more now.
    fn verdict(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Full> {
        let limits = &self.limits;
        let Ok(permit) = self.limit.clone().try_acquire_owned() else {
            return Err(Full::Connections {
                open: limits.max_connections,
                limit: limits.max_connections,
            });
        };
        let open = limits.max_connections - self.limit.available_permits() - 1;
        match limits.verdict(&self.shared.headroom.load(open)) {
            None => Ok(permit),
            Some(full) => Err(full),
        }
    }

    fn refuse(&self, incoming: quinn::Incoming, full: Full) {
        metrics::counter!(names::ADMISSION_REFUSED, "reason" => full.reason()).increment(1);
        refuse_full(self.shared, incoming, full, &self.refusing);
    }
}

/// Answers a connection the server will not take: completes the handshake
/// and closes with [`CloseCode::ServerFull`], the retry hint (longer the
/// more clients were refused lately: [`admission::RetryPacer`]) and the
/// reason; when [`MAX_REFUSING`] such answers are under way, refuses it at
/// the QUIC level at once instead.
pub(super) fn refuse_full<G: Game, S: Store>(
    shared: &Arc<Shared<G, S>>,
    incoming: quinn::Incoming,
    full: Full,
    refusing: &Arc<Semaphore>,
) {
    let stats = shared.stats.clone();
    let Ok(place) = refusing.clone().try_acquire_owned() else {
        stats.refused_unanswered.fetch_add(1, Relaxed);
        incoming.refuse();
        return;
    };
    let handshake_timeout = shared.config.handshake_limit();
    let retry_after = shared.full_retry_after();
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
    for id in ids.into_iter().take(count) {
        if let Some(conn) = shared.conns.get(&id) {
            let refusal = Refusal::new(
                CloseCode::ServerFull,
                protocol::retry_reason(
                    shared.full_retry_after(),
                    "server overloaded: closing the newest sessions",
                ),
            );
            refusal.close(conn.value());
            shared.stats.shed.fetch_add(1, Relaxed);
            metrics::counter!(names::ADMISSION_SHED).increment(1);
        }
    }
}
