//! The state stream: which state each client gets (full or delta, against
//! which baseline), with its input acknowledgements.

use super::*;

/// The per-connection state stream: which states went out, which the
/// client acknowledged, when the next is due.
pub(super) struct StateStream {
    pub(super) every: u64,
    pub(super) last_sent: Option<Tick>,
    pub(super) sent: VecDeque<(Tick, Arc<[u8]>)>,
    pub(super) acked: Arc<AtomicU64>,
    pub(super) loss: Option<(u16, u64)>,
    /// How long a state on its own stream may wait for the client.
    pub(super) write_timeout: Duration,
    /// This connection's input outcomes, as the shard records them.
    pub(super) ledger: Arc<InputLedger>,
    /// Which of them the client is known to have.
    pub(super) input_acks: AckTracker,
}

pub(super) const NO_ACK: u64 = u64::MAX;

/// States carried after this many unconfirmed acknowledgements are not tracked.
pub(super) const CARRIED_ACKS_KEPT: usize = 64;

/// Which input acknowledgements a client has. Every state carries the
/// latest ones until the client acknowledges a state that did; then states
/// go plain (the shared encoding, no per-client bytes) until they change.
#[derive(Debug, Default)]
pub(super) struct AckTracker {
    /// The client has these (it acknowledged a state at or after one that carried them).
    pub(super) confirmed: InputAcks,
    /// States that carried acknowledgements, by tick, not yet confirmed.
    pub(super) carried: VecDeque<(Tick, InputAcks)>,
}

impl AckTracker {
    /// What the state of `tick` must carry, given the latest `acks` and the
    /// newest state tick the client acknowledged: `None` when the client
    /// has them already.
    pub(super) fn carry(
        &mut self,
        tick: Tick,
        acks: InputAcks,
        acked: Option<Tick>,
    ) -> Option<InputAcks> {
        if let Some(acked) = acked {
            // Every state from the first carrier on carried these or newer
            // ones, so a client that applied a state at or after it has them.
            while let Some(&(carried_at, carried)) = self.carried.front() {
                if carried_at > acked {
                    break;
                }
                self.confirmed = carried;
                self.carried.pop_front();
            }
        }
        if acks == self.confirmed {
            return None;
        }
        self.carried.push_back((tick, acks));
        while self.carried.len() > CARRIED_ACKS_KEPT {
            self.carried.pop_front();
        }
        Some(acks)
    }
}

impl StateStream {
    /// The state datagram `shared` (the encoding shared by every client
    /// with this view and baseline) for this client: with its input
    /// acknowledgements in front when it may not have them yet.
    pub(super) fn with_acks(&mut self, tick: Tick, shared: Bytes, stats: &NetStats) -> Bytes {
        let acked = self.acked.load(Relaxed);
        let acked = (acked != NO_ACK).then_some(acked);
        let Some(acks) = self.input_acks.carry(tick, self.ledger.acks(), acked) else {
            return shared;
        };
        match protocol::acked_datagram(acks.through, acks.tick, acks.rejected, &shared) {
            Ok(bytes) => {
                stats.acked_states.fetch_add(1, Relaxed);
                bytes.into()
            }
            Err(error) => {
                tracing::error!(tick, %error, "input acknowledgements could not be added to a state");
                shared
            }
        }
    }

    pub(super) fn due(&self, update: &MatchUpdate<impl Sized>) -> bool {
        update.over
            || self
                .last_sent
                .is_none_or(|last| update.tick >= last.saturating_add(self.every))
    }

    /// The acknowledged state to send a delta against, if it is recent
    /// enough and still remembered.
    pub(super) fn baseline(&self, tick: Tick) -> Option<(Tick, Arc<[u8]>)> {
        let acked = self.acked.load(Relaxed);
        (acked != NO_ACK && acked <= tick && tick - acked <= MAX_BASELINE_AGE)
            .then(|| self.sent.iter().find(|(t, _)| *t == acked))
            .flatten()
            .map(|(t, bytes)| (*t, bytes.clone()))
    }

    /// Remembers that the state after `tick` went out (a possible baseline).
    pub(super) fn record_sent(&mut self, tick: Tick, encoded: Arc<[u8]>) {
        self.last_sent = Some(tick);
        if self.sent.back().is_none_or(|(t, _)| *t != tick) {
            self.sent.push_back((tick, encoded));
        }
        while self.sent.len() > SENT_STATES_KEPT {
            self.sent.pop_front();
        }
    }

    /// The message for `encoded` (the state after `tick`): a delta against
    /// the client's acknowledged baseline when that is smaller.
    #[cfg(test)]
    pub(super) fn message<E>(
        &mut self,
        tick: Tick,
        over: bool,
        encoded: Arc<[u8]>,
    ) -> (ServerMsg<E>, bool) {
        let baseline = self.baseline(tick);
        let message = state_message(tick, over, &encoded, baseline.as_ref());
        self.record_sent(tick, encoded);
        message
    }

    /// Whether the loss hook drops this datagram.
    pub(super) fn drop_for_test(&mut self) -> bool {
        let Some((per_mille, rng)) = &mut self.loss else {
            return false;
        };
        // xorshift64*
        *rng ^= *rng >> 12;
        *rng ^= *rng << 25;
        *rng ^= *rng >> 27;
        let x = rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 33) % 1000 < u64::from(*per_mille)
    }
}

/// The state message for `encoded` (the state after `tick`): a delta
/// against `baseline` when that is smaller, else the whole state.
pub(super) fn state_message<E>(
    tick: Tick,
    over: bool,
    encoded: &[u8],
    baseline: Option<&(Tick, Arc<[u8]>)>,
) -> (ServerMsg<E>, bool) {
    let patch = delta::diff(baseline.map(|(_, b)| &b[..]), encoded);
    match (patch, baseline) {
        (Patch::Xor { len, compressed }, Some((baseline_tick, _))) => (
            ServerMsg::StateDelta {
                tick,
                over,
                // At most MAX_BASELINE_AGE (see `StateStream::baseline`).
                baseline_age: u32::try_from(tick - baseline_tick).unwrap_or(u32::MAX),
                len,
                patch: compressed,
            },
            true,
        ),
        (Patch::Full(state), _)
        | (
            Patch::Xor {
                compressed: state, ..
            },
            None,
        ) => (ServerMsg::StateFull { tick, over, state }, false),
    }
}

/// Which view `viewer` gets: one shared key when the game hides nothing.
pub(super) fn view_key<G: Game>(game: &G, viewer: Viewer) -> Viewer {
    if game.shared_view() {
        Viewer::Spectator
    } else {
        viewer
    }
}

/// The encoded view `key` of `update`, encoded once per tick for all the
/// clients sharing it. A panic in the game's view fails the match.
pub(super) fn encoded_view<G: Game, S: Store>(
    shared: &Shared<G, S>,
    hub: &Hub<G>,
    root: &str,
    key: Viewer,
    update: &MatchUpdate<G::State>,
) -> Option<Arc<[u8]>> {
    hub.view(update.tick, key, || {
        shared.stats.views_encoded.fetch_add(1, Relaxed);
        let game = shared.engine.game();
        let encoded = crate::engine::guard_game(|| codec::encode(&*game.view(&update.state, key)));
        match encoded {
            Ok(Ok(bytes)) => Some(bytes.into()),
            Ok(Err(error)) => {
                tracing::error!(r#match = %root, tick = update.tick, viewer = ?key, %error, "a view could not be encoded; not sent");
                None
            }
            Err(panic) => {
                let reason = format!("the game's view panicked: {panic}");
                tracing::error!(r#match = %root, %reason, "failing the match");
                let _ = shared.engine.fail_match(root, reason);
                None
            }
        }
    })
}

/// The connection is gone (or was just closed for not reading).
#[derive(Debug)]
pub(super) struct Lost;

/// Sends the state of `update` to one connection: [`try_datagram_state`],
/// then on a stream of its own when it is too large for a datagram.
pub(super) async fn send_state<G: Game, S: Store>(
    shared: &Shared<G, S>,
    conn: &quinn::Connection,
    states: &mut StateStream,
    hub: &Hub<G>,
    view: (&str, Viewer),
    update: &MatchUpdate<G::State>,
) -> Result<(), Lost> {
    match try_datagram_state(shared, conn, states, hub, view, update)? {
        None => Ok(()),
        Some(bytes) => {
            send_state_on_stream(conn, &bytes, &shared.stats, states.write_timeout).await
        }
    }
}

/// The synchronous part of sending the state of `update` to one
/// connection: the view and message shared through `hub`, this client's
/// baseline and input acknowledgements, the loss hook, and the datagram.
/// Returns the state's bytes when they must go on a stream instead (too
/// large for a datagram): [`send_state_on_stream`]. A client that lost
/// input rejections is closed here.
pub(super) fn try_datagram_state<G: Game, S: Store>(
    shared: &Shared<G, S>,
    conn: &quinn::Connection,
    states: &mut StateStream,
    hub: &Hub<G>,
    view: (&str, Viewer),
    update: &MatchUpdate<G::State>,
) -> Result<Option<Bytes>, Lost> {
    let (root, key) = view;
    let stats = &shared.stats;
    let Some(encoded) = encoded_view(shared, hub, root, key, update) else {
        return Ok(None);
    };
    let full_len = encoded.len() as u64;
    let baseline = states.baseline(update.tick);
    let built = hub.message(update.tick, key, baseline.as_ref().map(|(t, _)| *t), || {
        stats.state_messages_built.fetch_add(1, Relaxed);
        let (msg, is_delta) =
            state_message::<()>(update.tick, update.over, &encoded, baseline.as_ref());
        match protocol::encode_datagram(&msg) {
            Ok(bytes) => Some((Bytes::from(bytes), is_delta)),
            Err(error) => {
                tracing::error!(r#match = %root, tick = update.tick, %error, "a state message could not be encoded; not sent");
                None
            }
        }
    });
    let baseline_age = baseline.as_ref().map_or(0, |(t, _)| update.tick - t);
    states.record_sent(update.tick, encoded);
    let Some((bytes, is_delta)) = built else {
        return Ok(None);
    };
    if states.ledger.lost_rejection() {
        stats.closed_reply_queue_full.fetch_add(1, Relaxed);
        Refusal::new(
            CloseCode::ReplyQueueFull,
            "input rejections unread; resume when reading again",
        )
        .close(conn);
        return Err(Lost);
    }
    let bytes = states.with_acks(update.tick, bytes, stats);
    stats.states.fetch_add(1, Relaxed);
    if is_delta {
        stats.deltas.fetch_add(1, Relaxed);
        stats.delta_bytes.fetch_add(bytes.len() as u64, Relaxed);
        stats.delta_full_bytes.fetch_add(full_len, Relaxed);
        stats.delta_baseline_ticks.fetch_add(baseline_age, Relaxed);
    }
    if conn
        .max_datagram_size()
        .is_some_and(|max| bytes.len() <= max)
    {
        if states.drop_for_test() {
            stats.test_dropped.fetch_add(1, Relaxed);
            return Ok(None);
        }
        let len = bytes.len() as u64;
        match conn.send_datagram(bytes.clone()) {
            Ok(()) => {
                stats.bytes_out.fetch_add(len, Relaxed);
                shared.meters.datagram_bytes_sent.increment(len);
                shared.meters.datagrams_sent.increment(1);
                return Ok(None);
            }
            Err(quinn::SendDatagramError::ConnectionLost(_)) => return Err(Lost),
            Err(_) => {} // too large after all, or disabled: use a stream
        }
    }
    stats.stream_states.fetch_add(1, Relaxed);
    Ok(Some(bytes))
}

/// Sends a state datagram's `bytes` framed on a stream of its own (see
/// [`send_frame_on_stream`]).
pub(super) async fn send_state_on_stream(
    conn: &quinn::Connection,
    bytes: &[u8],
    stats: &NetStats,
    timeout: Duration,
) -> Result<(), Lost> {
    send_frame_on_stream(conn, protocol::frame_datagram(bytes), stats, timeout).await
}

/// Sends one encoded frame on a fresh unidirectional stream; a client that
/// does not take it within `timeout` is closed as a slow reader.
pub(super) async fn send_frame_on_stream(
    conn: &quinn::Connection,
    frame: Vec<u8>,
    stats: &NetStats,
    timeout: Duration,
) -> Result<(), Lost> {
    let write = async {
        let mut stream = conn.open_uni().await.map_err(|_| Lost)?;
        stream.write_all(&frame).await.map_err(|_| Lost)?;
        stream.finish().map_err(|_| Lost)?;
        stats.bytes_out.fetch_add(frame.len() as u64, Relaxed);
        metrics::counter!(names::BYTES_SENT, "channel" => "stream").increment(frame.len() as u64);
        Ok(())
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(sent) => sent,
        Err(_) => {
            close_slow_reader(conn, stats, timeout, "a state stream");
            Err(Lost)
        }
    }
}
