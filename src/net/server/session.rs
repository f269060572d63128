//! The outbound half of a session: command results, reliable events, the end
//! of a match.

use super::*;

/// The sending half of a connection's control stream.
pub(super) struct Control {
    pub(super) stream: quinn::SendStream,
    pub(super) conn: quinn::Connection,
    /// How long one write may wait for the client to make room.
    pub(super) timeout: Duration,
}

/// Writes one frame on the control stream. A client that leaves no room
/// for it within the write timeout is closed with [`CloseCode::SlowReader`].
pub(super) async fn write_frame<E: serde::Serialize>(
    send: &mut Control,
    msg: &ServerMsg<E>,
    stats: &NetStats,
) -> Result<(), Lost> {
    // Server messages are not limited by the client's frame limit; only by the codec's.
    let Ok(frame) = protocol::encode_frame(msg, MAX_STATE_BYTES) else {
        tracing::error!("a server message could not be encoded");
        return Ok(());
    };
    stats.bytes_out.fetch_add(frame.len() as u64, Relaxed);
    metrics::counter!(names::BYTES_SENT, "channel" => "stream").increment(frame.len() as u64);
    match tokio::time::timeout(send.timeout, send.stream.write_all(&frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(quinn::WriteError::Stopped(code))) => {
            close_stopped_control(&send.conn, stats, code);
            Err(Lost)
        }
        Ok(Err(_)) => Err(Lost),
        Err(_) => {
            close_slow_reader(&send.conn, stats, send.timeout, "a control frame");
            Err(Lost)
        }
    }
}

/// Closes a client that stopped the server's half of its control stream
/// (`STOP_SENDING`): the protocol needs it for results and reliable events,
/// so this is a protocol violation, closed as [`CloseCode::Malformed`].
pub(super) fn close_stopped_control(
    conn: &quinn::Connection,
    stats: &NetStats,
    code: quinn::VarInt,
) {
    stats.closed_for_abuse.fetch_add(1, Relaxed);
    tracing::info!(remote = %conn.remote_address(), code = code.into_inner(), "client stopped its control stream; closing");
    Refusal::new(
        CloseCode::Malformed,
        format!("the client stopped the control stream (code {code}); it carries results and reliable events"),
    )
    .close(conn);
}

/// Closes a client that left no room for a reliable write (`what`) within
/// `waited`: it stopped reading.
pub(super) fn close_slow_reader(
    conn: &quinn::Connection,
    stats: &NetStats,
    waited: Duration,
    what: &str,
) {
    stats.closed_slow_reader.fetch_add(1, Relaxed);
    tracing::info!(remote = %conn.remote_address(), ?waited, what, "client stopped reading; closing");
    Refusal::new(
        CloseCode::SlowReader,
        format!("{what} waited {waited:?} for the client to read; resume when reading again"),
    )
    .close(conn);
}

/// Which reliable events a client has been sent.
#[derive(Debug)]
pub(super) struct EventCursor {
    /// Every event below this was examined (sent if reliable).
    pub(super) covered: u64,
    /// All reliable events below this were sent (or the client had them).
    pub(super) since: u64,
}

impl EventCursor {
    pub(super) fn new(from: u64) -> Self {
        Self {
            covered: from,
            since: from,
        }
    }

    /// Decides about `sequence`: `Some(since)` to send it, `None` to skip.
    pub(super) fn offer(&mut self, sequence: u64, reliable: bool) -> Option<u64> {
        if sequence < self.covered {
            return None;
        }
        if sequence > self.covered {
            // Events in between are unknown here: the client must see a gap.
            self.since = sequence;
        }
        self.covered = sequence + 1;
        if reliable {
            let since = self.since;
            self.since = sequence + 1;
            Some(since)
        } else {
            None
        }
    }
}

pub(super) async fn run_session<G: Game, S: Store>(
    shared: &Arc<Shared<G, S>>,
    conn: &quinn::Connection,
    session: Session<G>,
    shutdown: &mut Shutdown,
) -> Ended {
    let Session {
        root,
        player,
        conn_id,
        mut send,
        recv,
        frames,
        feed,
        first,
        events_from,
        hub,
    } = session;
    let stats = shared.stats.clone();
    let config = &shared.config;
    let game = shared.engine.game();
    let reply_capacity = (config.commands_per_second as usize).saturating_mul(2) + 64;
    let (reply_tx, mut reply_rx) = mpsc::channel::<CommandReply>(reply_capacity);
    let unanswered = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicU64::new(NO_ACK));
    let ledger = Arc::new(InputLedger::default());

    let inbound = tokio::spawn(read_inbound(
        shared.clone(),
        conn.clone(),
        recv,
        frames,
        Inbound {
            root: root.clone(),
            player,
            replies: ReplyBudget {
                tx: reply_tx,
                capacity: reply_capacity,
                unanswered: unanswered.clone(),
            },
            acked: acked.clone(),
            ledger: ledger.clone(),
        },
    ));
    let _abort_inbound = AbortOnDrop(inbound);

    let mut states = StateStream {
        every: config.state_every_ticks.max(1),
        last_sent: None,
        sent: VecDeque::new(),
        acked,
        loss: config.datagram_loss.map(|l| {
            (
                l.per_mille,
                (l.seed ^ conn_id.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1,
            )
        }),
        write_timeout: config.write_timeout,
        ledger,
        input_acks: AckTracker::default(),
    };
    let mut cursor = EventCursor::new(events_from);
    let viewer = player.map_or(Viewer::Spectator, Viewer::Player);
    let view = view_key(game, viewer);

    // A resuming client first gets the reliable events it missed.
    if events_from < first.next_sequence
        && replay_missed(
            shared,
            &root,
            viewer,
            &mut send,
            &mut cursor,
            first.next_sequence,
        )
        .await
        .is_err()
    {
        return Ended::Dropped;
    }
    if send_state(shared, conn, &mut states, &hub, (&root, view), &first)
        .await
        .is_err()
    {
        return Ended::Dropped;
    }
    // From now on the match's fan-out sends the states and picks the events.
    let MatchFeed { updates, events } = feed;
    let write_timeout = states.write_timeout;
    let streaming = Arc::new(AtomicBool::new(false));
    let (to_session, mut from_fanout) = mpsc::unbounded_channel();
    join_fanout(
        shared,
        &hub,
        &root,
        &updates,
        Subscriber {
            conn: conn.clone(),
            states,
            viewer,
            view,
            events,
            events_open: true,
            cursor,
            streaming: streaming.clone(),
            to_session,
            away: None,
        },
    );
    loop {
        tokio::select! {
            biased;
            _ = shutdown.recv() => {
                let closing = ServerMsg::<G::Event>::Closing {
                    code: CloseCode::ServerShutdown.code(),
                    reason: "server shutting down".into(),
                };
                let _ = tokio::time::timeout(Duration::from_millis(100), write_frame(&mut send, &closing, &stats)).await;
                Refusal::new(CloseCode::ServerShutdown, "server shutting down").close(conn);
                return Ended::Shutdown;
            }
            _ = conn.closed() => return Ended::Dropped,
            Some(reply) = reply_rx.recv() => {
                if reply.kind == ReplyKind::Input {
                    // Only rejected inputs come this way.
                    let CommandOutcome::Rejected(rejection) = reply.outcome else { continue };
                    stats.inputs_rejected.fetch_add(1, Relaxed);
                    let msg = ServerMsg::<G::Event>::InputRejected { seq: reply.client_seq, reason: rejection.reason };
                    if write_frame(&mut send, &msg, &stats).await.is_err() {
                        return Ended::Dropped;
                    }
                    continue;
                }
                unanswered.fetch_sub(1, Relaxed);
                let status = match reply.outcome {
                    CommandOutcome::Accepted { tick, first_sequence, events } => {
                        CommandStatus::Accepted { tick, first_sequence, events }
                    }
                    CommandOutcome::Rejected(rejection) => CommandStatus::Rejected { reason: rejection.reason },
                };
                let msg = ServerMsg::<G::Event>::CommandResult { client_seq: reply.client_seq, status };
                if write_frame(&mut send, &msg, &stats).await.is_err() {
                    return Ended::Dropped;
                }
            }
            from_fanout = from_fanout.recv() => match from_fanout {
                Some(FromFanout::Stream(bytes)) => {
                    let sent = send_state_on_stream(conn, &bytes, &stats, write_timeout).await;
                    streaming.store(false, std::sync::atomic::Ordering::Release);
                    if sent.is_err() {
                        return Ended::Dropped;
                    }
                }
                Some(FromFanout::Events { pending, update, mut subscriber }) => {
                    for (since, envelope) in pending {
                        let msg = ServerMsg::Event { since, envelope: (*envelope).clone() };
                        stats.events.fetch_add(1, Relaxed);
                        if write_frame(&mut send, &msg, &stats).await.is_err() {
                            return Ended::Dropped;
                        }
                    }
                    if subscriber.states.due(&update)
                        && send_state(shared, conn, &mut subscriber.states, &hub, (&root, view), &update).await.is_err()
                    {
                        return Ended::Dropped;
                    }
                    join_fanout(shared, &hub, &root, &updates, *subscriber);
                }
                Some(FromFanout::Over { update, subscriber }) => {
                    let Subscriber { mut states, mut events, mut cursor, .. } = *subscriber;
                    // Events of the last tick were broadcast before its state.
                    while let Ok(envelope) = events.try_recv() {
                        if let Some(since) = cursor.offer(envelope.sequence, sends_event(game, viewer, &envelope.event)) {
                            let msg = ServerMsg::Event { since, envelope: (*envelope).clone() };
                            if write_frame(&mut send, &msg, &stats).await.is_err() {
                                return Ended::Dropped;
                            }
                        }
                    }
                    finish_match(shared, conn, &mut send, &mut states, &hub, (&root, view), &update).await;
                    return Ended::MatchOver;
                }
                Some(FromFanout::Left) => {
                    // The match left the engine without a final state: it
                    // moved to another node, or the engine is stopping.
                    // The client may resume (there, or here later).
                    match_left(shared, &root).await.close(conn);
                    return Ended::Shutdown;
                }
                None => {
                    // The fan-out dropped this connection: it is lost, or
                    // the fan-out stopped unexpectedly.
                    Refusal::new(CloseCode::Internal, "states stopped; resume").close(conn);
                    return Ended::Dropped;
                }
            },
        }
    }
}

/// Whether `viewer`'s client is sent `event`: reliable events it may see
/// go on the control stream.
pub(super) fn sends_event<G: Game>(game: &G, viewer: Viewer, event: &G::Event) -> bool {
    game.is_reliable(event) && game.event_visible(event, viewer)
}

/// Closes a client `missed` events behind on the reliable ones
/// ([`CloseCode::Lagging`]).
pub(super) fn close_lagging(
    stats: &NetStats,
    conn: &quinn::Connection,
    root: &str,
    viewer: Viewer,
    missed: u64,
) {
    stats.closed_for_lag.fetch_add(1, Relaxed);
    tracing::info!(r#match = %root, ?viewer, missed, "client too far behind on events; closing");
    Refusal::new(
        CloseCode::Lagging,
        format!("{missed} reliable events behind; resume to catch up"),
    )
    .close(conn);
}

pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) async fn finish_match<G: Game, S: Store>(
    shared: &Shared<G, S>,
    conn: &quinn::Connection,
    send: &mut Control,
    states: &mut StateStream,
    hub: &Hub<G>,
    view: (&Arc<str>, Viewer),
    update: &MatchUpdate<G::State>,
) {
    let (root, key) = view;
    let stats = &shared.stats;
    if update.failure.is_none()
        && let Some(encoded) = encoded_view(shared, hub, root, key, update)
    {
        // The final state goes reliably, whole.
        let (msg, _) = state_message::<()>(update.tick, true, &encoded, None);
        if let Ok(bytes) = protocol::encode_datagram(&msg) {
            let bytes = states.with_acks(update.tick, bytes.into(), stats);
            let frame = protocol::frame_datagram(&bytes);
            let _ = send_frame_on_stream(conn, frame, stats, states.write_timeout).await;
        }
        states.record_sent(update.tick, encoded);
    }
    let (last, refusal) = match &update.failure {
        Some(reason) => {
            let text = format!("the match failed: {reason}");
            let closing = ServerMsg::<G::Event>::Closing {
                code: CloseCode::MatchFailed.code(),
                reason: text.clone(),
            };
            (closing, Refusal::new(CloseCode::MatchFailed, text))
        }
        None => (
            ServerMsg::<G::Event>::MatchOver { tick: update.tick },
            Refusal::new(CloseCode::MatchOver, "the match is over"),
        ),
    };
    let _ = write_frame(send, &last, stats).await;
    let _ = send.stream.finish();
    forget_match(shared, root);
    // Let the client read everything and close; then close anyway.
    let _ = tokio::time::timeout(LINGER, conn.closed()).await;
    refusal.close(conn);
}

/// Sends the reliable events in `cursor.covered..until` from the store.
pub(super) async fn replay_missed<G: Game, S: Store>(
    shared: &Shared<G, S>,
    root: &str,
    viewer: Viewer,
    send: &mut Control,
    cursor: &mut EventCursor,
    until: u64,
) -> Result<(), Lost> {
    let engine = &shared.engine;
    let Ok(key) = engine.key(root) else {
        return Ok(());
    };
    let wanted = (until - cursor.covered).min(MAX_REPLAY_EVENTS as u64) as usize;
    let records = match engine.store().read(&key, cursor.covered, wanted).await {
        Ok(records) => records,
        Err(error) => {
            tracing::warn!(r#match = %root, %error, "cannot replay missed events; the client will see a gap");
            return Ok(());
        }
    };
    let game = engine.game();
    for record in records {
        let envelope = match decode_event(game, &record.payload) {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::warn!(r#match = %root, sequence = record.sequence, %error, "a stored event cannot be read; the client will see a gap");
                continue;
            }
        };
        if envelope.sequence >= until {
            break;
        }
        if let Some(since) = cursor.offer(
            envelope.sequence,
            game.is_reliable(&envelope.event) && game.event_visible(&envelope.event, viewer),
        ) {
            shared.stats.events.fetch_add(1, Relaxed);
            write_frame(send, &ServerMsg::Event { since, envelope }, &shared.stats).await?;
        }
    }
    Ok(())
}
