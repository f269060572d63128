//! The inbound half of a session: control frames and input datagrams, with
//! their limits.

use super::*;

/// What the inbound half needs.
pub(super) struct Inbound {
    pub(super) root: Arc<str>,
    pub(super) player: Option<PlayerId>,
    pub(super) replies: ReplyBudget,
    pub(super) acked: Arc<AtomicU64>,
    /// Where the shard records this connection's applied inputs.
    pub(super) ledger: Arc<InputLedger>,
}

/// The inbound half's rate limits: commands and inputs share one bucket,
/// frames and datagrams another.
pub(super) struct Buckets {
    pub(super) per_second: u32,
    pub(super) commands: TokenBucket,
    pub(super) frame_rate: u32,
    pub(super) frames: TokenBucket,
}

impl Buckets {
    pub(super) fn frame(&mut self, now: Instant) -> Result<(), Refusal> {
        if self.frames.take(now) {
            return Ok(());
        }
        Err(Refusal::new(
            CloseCode::RateLimited,
            format!(
                "more than {} frames and datagrams per second",
                self.frame_rate
            ),
        ))
    }

    pub(super) fn command(&mut self, now: Instant) -> Result<(), Refusal> {
        if self.commands.take(now) {
            return Ok(());
        }
        Err(Refusal::new(
            CloseCode::RateLimited,
            format!("more than {} commands per second", self.per_second),
        ))
    }
}

/// The input datagrams of one connection: which inputs were submitted.
pub(super) struct InputStream {
    /// Inputs up to this sequence were submitted (or rejected); repeats
    /// of them are skipped.
    pub(super) processed_through: u64,
}

impl InputStream {
    /// Takes one input datagram: records its acknowledgement and submits
    /// its new inputs in order. A refusal closes the connection.
    pub(super) fn receive<G: Game, S: Store>(
        &mut self,
        shared: &Shared<G, S>,
        ctx: &Inbound,
        buckets: &mut Buckets,
        bytes: &[u8],
    ) -> Result<(), Refusal> {
        let stats = &shared.stats;
        let now = Instant::now();
        buckets.frame(now)?;
        stats.input_datagrams.fetch_add(1, Relaxed);
        let ClientDatagram::Input {
            ack,
            first_seq,
            commands,
        } = protocol::decode_datagram::<ClientDatagram<G::Command>>(
            bytes,
            shared.config.max_frame_bytes,
        )
        .map_err(|e| frame_refusal(&e))?;
        if commands.len() > protocol::INPUT_WINDOW {
            return Err(Refusal::new(
                CloseCode::Malformed,
                format!(
                    "{} inputs in one datagram; at most {}",
                    commands.len(),
                    protocol::INPUT_WINDOW
                ),
            ));
        }
        if first_seq == 0 || first_seq.checked_add(commands.len() as u64).is_none() {
            return Err(Refusal::new(
                CloseCode::Malformed,
                format!("input sequence {first_seq} out of range"),
            ));
        }
        if let Some(tick) = ack {
            // Datagrams may be reordered: keep the newest acknowledgement.
            let acked = ctx.acked.load(Relaxed);
            if acked == NO_ACK || tick > acked {
                ctx.acked.store(tick, Relaxed);
            }
        }
        for (seq, command) in (first_seq..).zip(commands) {
            if seq <= self.processed_through {
                stats.duplicate_inputs.fetch_add(1, Relaxed);
                continue;
            }
            stats
                .input_gaps
                .fetch_add(seq - self.processed_through - 1, Relaxed);
            self.processed_through = seq;
            stats.inputs.fetch_add(1, Relaxed);
            buckets.command(now)?;
            let reply = || InputReply {
                ledger: ctx.ledger.clone(),
                tx: ctx.replies.tx.clone(),
                seq,
            };
            let refused = |reason: String| {
                reply().deliver(
                    &ctx.root,
                    CommandOutcome::Rejected(crate::game::Rejection::new(reason)),
                );
            };
            let Some(player) = ctx.player else {
                refused("spectators cannot send commands".into());
                continue;
            };
            if let Err(error) = shared
                .engine
                .submit_input(&ctx.root, player, command, reply())
            {
                refused(error.to_string());
            }
        }
        Ok(())
    }
}

/// A connection's reply queue, and how many of its commands are not
/// answered yet (the reply not produced, or not taken out of the queue).
/// While that count stays within the queue's capacity no reply can find
/// the queue full, so none is ever dropped: a client about to exceed it
/// is closed instead.
pub(super) struct ReplyBudget {
    pub(super) tx: mpsc::Sender<CommandReply>,
    pub(super) capacity: usize,
    /// Raised per command by the inbound half, lowered per reply taken by
    /// the session loop.
    pub(super) unanswered: Arc<AtomicUsize>,
}

impl ReplyBudget {
    /// Counts one more command to answer; false when the queue could overflow.
    pub(super) fn take(&self) -> bool {
        self.unanswered.fetch_add(1, Relaxed) < self.capacity
    }
}

/// Reads the control stream and the input datagrams: commands and inputs
/// to the engine, acks to the state stream. Closes the connection itself
/// on garbage, oversized frames and floods.
pub(super) async fn read_inbound<G: Game, S: Store>(
    shared: Arc<Shared<G, S>>,
    conn: quinn::Connection,
    mut recv: quinn::RecvStream,
    mut frames: FrameBuffer,
    ctx: Inbound,
) {
    let config = &shared.config;
    let now = Instant::now();
    let per_second = config.commands_per_second.max(1);
    // Acks come once per state; allow them on top of commands.
    let tick_hz = shared.engine.settings().tick_hz;
    let frame_rate = per_second
        .saturating_add(tick_hz.saturating_mul(2))
        .saturating_add(16);
    let mut buckets = Buckets {
        per_second,
        commands: TokenBucket::new(per_second, per_second, now),
        frame_rate,
        frames: TokenBucket::new(frame_rate, frame_rate, now),
    };
    let mut inputs = InputStream {
        processed_through: 0,
    };
    let abuse = |refusal: Refusal| {
        shared.stats.closed_for_abuse.fetch_add(1, Relaxed);
        tracing::info!(r#match = %ctx.root, player = ?ctx.player, code = ?refusal.code, reason = %refusal.reason, "closing abusive connection");
        refusal.close(&conn);
    };
    loop {
        loop {
            let msg = match frames.next_frame::<ClientMsg<G::Command>>() {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(error) => return abuse(frame_refusal(&error)),
            };
            let now = Instant::now();
            if let Err(refusal) = buckets.frame(now) {
                return abuse(refusal);
            }
            match msg {
                ClientMsg::Hello(_) => {
                    return abuse(Refusal::new(CloseCode::Malformed, "a second Hello"));
                }
                ClientMsg::Ack { tick } => {
                    ctx.acked.store(tick, Relaxed);
                }
                ClientMsg::Command {
                    client_seq,
                    command,
                } => {
                    shared.stats.commands.fetch_add(1, Relaxed);
                    if let Err(refusal) = buckets.command(now) {
                        return abuse(refusal);
                    }
                    if !ctx.replies.take() {
                        shared.stats.closed_reply_queue_full.fetch_add(1, Relaxed);
                        let capacity = ctx.replies.capacity;
                        tracing::info!(r#match = %ctx.root, player = ?ctx.player, capacity,
                            "client does not read its command results; closing");
                        return Refusal::new(
                            CloseCode::ReplyQueueFull,
                            format!("{capacity} command results unread; resume when reading again"),
                        )
                        .close(&conn);
                    }
                    let refused = |reason: String| CommandReply {
                        root: ctx.root.clone(),
                        client_seq,
                        kind: ReplyKind::Command,
                        outcome: CommandOutcome::Rejected(crate::game::Rejection::new(reason)),
                    };
                    let Some(player) = ctx.player else {
                        // Within the budget: the queue has room.
                        let _ = ctx
                            .replies
                            .tx
                            .try_send(refused("spectators cannot send commands".into()));
                        continue;
                    };
                    let reply = ReplyTo {
                        tx: ctx.replies.tx.clone(),
                        client_seq,
                    };
                    if let Err(error) =
                        shared
                            .engine
                            .submit(&ctx.root, player, command, Some(reply))
                    {
                        let _ = ctx.replies.tx.try_send(refused(error.to_string()));
                    }
                }
            }
        }
        // Both reads are cancel-safe: they complete as soon as anything
        // arrived. Datagrams first: most wake-ups are one, and polling the
        // stream read costs a lock and a stream lookup in quinn each time.
        // Datagrams cannot starve the stream: the frame bucket closes a
        // connection sending more than its rate, and below it the queue
        // empties within a wake-up.
        tokio::select! {
            biased;
            datagram = conn.read_datagram() => match datagram {
                Ok(bytes) => {
                    shared.meters.bytes_received.increment(bytes.len() as u64);
                    if let Err(refusal) = inputs.receive(&shared, &ctx, &mut buckets, &bytes) {
                        return abuse(refusal);
                    }
                }
                Err(_) => return,
            },
            chunk = recv.read_chunk(64 * 1024, true) => match chunk {
                Ok(Some(chunk)) => {
                    shared.meters.bytes_received.increment(chunk.bytes.len() as u64);
                    frames.extend(&chunk.bytes);
                }
                // The client finished or reset its control stream: nothing more will come.
                Ok(None) | Err(_) => return,
            },
        }
    }
}
