//! A connection from handshake to session: the Hello, admission, hosting the
//! match, joining it, and what happens after.

use super::*;

/// An admitted connection.
pub(super) struct Session<G: Game> {
    pub(super) root: Arc<str>,
    pub(super) player: Option<PlayerId>,
    pub(super) conn_id: u64,
    pub(super) send: Control,
    pub(super) recv: quinn::RecvStream,
    pub(super) frames: FrameBuffer,
    pub(super) feed: MatchFeed<G>,
    pub(super) first: Arc<MatchUpdate<G::State>>,
    pub(super) events_from: u64,
    pub(super) hub: Arc<Hub<G>>,
}

pub(super) async fn handle_connection<G: Game, S: Store>(
    shared: Arc<Shared<G, S>>,
    incoming: quinn::Incoming,
) {
    let remote = incoming.remote_address();
    let conn = match tokio::time::timeout(shared.config.handshake_limit(), incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => {
            tracing::debug!(%remote, %error, "handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "handshake timed out");
            return;
        }
    };
    let stats = shared.stats.clone();
    stats.connections.fetch_add(1, Relaxed);
    stats.open.fetch_add(1, Relaxed);
    metrics::counter!(names::SESSIONS_CONNECTED).increment(1);
    metrics::gauge!(names::SESSIONS_OPEN).increment(1.0);
    let conn_id = shared.next_conn.fetch_add(1, Relaxed);
    shared.conns.insert(conn_id, conn.clone());
    let mut shutdown = Shutdown {
        rx: shared.shutdown.clone(),
    };
    let admitted = tokio::select! {
        admitted = admit(&shared, &conn, conn_id) => admitted,
        _ = shutdown.recv() => Err(Refusal::new(CloseCode::ServerShutdown, "server shutting down")),
    };
    match admitted {
        Ok(session) => {
            stats.admitted.fetch_add(1, Relaxed);
            let root = session.root.clone();
            let player = session.player;
            tracing::info!(%remote, r#match = %root, player = ?player, "admitted");
            let ended = run_session(&shared, &conn, session, &mut shutdown).await;
            if let Some(player) = player {
                after_session(&shared, &root, player, conn_id, ended, &shutdown);
            }
        }
        Err(refusal) => {
            if refusal.code != CloseCode::ServerShutdown {
                stats.refused.fetch_add(1, Relaxed);
                tracing::info!(%remote, code = ?refusal.code, reason = %refusal.reason, "connection refused");
            }
            refusal.close(&conn);
        }
    }
    shared.conns.remove(&conn_id);
    stats.open.fetch_sub(1, Relaxed);
    metrics::gauge!(names::SESSIONS_OPEN).decrement(1.0);
    names::connection_ended(&conn);
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// The connection dropped or was closed: the grace window starts.
    Dropped,
    /// The server is shutting down: the slot is kept for a restart.
    Shutdown,
    /// The match is over: nothing to keep.
    MatchOver,
}

pub(super) fn after_session<G: Game, S: Store>(
    shared: &Arc<Shared<G, S>>,
    root: &Arc<str>,
    player: PlayerId,
    conn_id: u64,
    ended: Ended,
    shutdown: &Shutdown,
) {
    if ended != Ended::Dropped || shutdown.is_shutdown() {
        return;
    }
    let Some(generation) = shared.slots().disconnect(root, player, conn_id) else {
        return; // replaced by a newer connection
    };
    tracing::info!(r#match = %root, %player, grace = ?shared.config.grace, "player dropped; slot kept for the grace window");
    arm_grace(shared, root.clone(), player, generation);
}

pub(super) fn arm_grace<G: Game, S: Store>(
    shared: &Arc<Shared<G, S>>,
    root: Arc<str>,
    player: PlayerId,
    generation: u64,
) {
    let shared = shared.clone();
    let mut shutdown = Shutdown {
        rx: shared.shutdown.clone(),
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(shared.config.grace) => {}
            _ = shutdown.recv() => return,
        }
        if !shared.slots().expire(&root, player, generation) {
            return;
        }
        shared.stats.slots_freed.fetch_add(1, Relaxed);
        let leave = shared.engine.game().leave();
        match shared.engine.submit(&root, player, leave, None) {
            Ok(()) => {
                tracing::info!(r#match = %root, %player, "grace window over; player removed")
            }
            Err(error) => {
                tracing::warn!(r#match = %root, %player, %error, "grace window over; leave not queued")
            }
        }
    });
}

pub(super) async fn read_hello(
    recv: &mut quinn::RecvStream,
    frames: &mut FrameBuffer,
) -> Result<Hello, Refusal> {
    loop {
        match frames.next_frame::<ClientMsg<serde::de::IgnoredAny>>() {
            Ok(Some(ClientMsg::Hello(hello))) => return Ok(hello),
            Ok(Some(_)) => {
                return Err(Refusal::new(
                    CloseCode::Malformed,
                    "the first frame must be a Hello",
                ));
            }
            Ok(None) => {}
            Err(error) => return Err(frame_refusal(&error)),
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => {
                metrics::counter!(names::BYTES_RECEIVED).increment(chunk.bytes.len() as u64);
                frames.extend(&chunk.bytes);
            }
            Ok(None) => {
                return Err(Refusal::new(
                    CloseCode::Malformed,
                    "control stream ended before a Hello",
                ));
            }
            Err(error) => {
                return Err(Refusal::new(CloseCode::Normal, error.to_string()));
            }
        }
    }
}

pub(super) async fn admit<G: Game, S: Store>(
    shared: &Arc<Shared<G, S>>,
    conn: &quinn::Connection,
    conn_id: u64,
) -> Result<Session<G>, Refusal> {
    let timeout = shared.config.hello_timeout;
    let hello_timeout = || Refusal::new(CloseCode::HelloTimeout, "no Hello in time");
    let (send, mut recv) = tokio::time::timeout(timeout, conn.accept_bi())
        .await
        .map_err(|_| hello_timeout())?
        .map_err(|e| Refusal::new(CloseCode::Normal, e.to_string()))?;
    let mut frames = FrameBuffer::new(shared.config.max_frame_bytes);
    let hello = tokio::time::timeout(timeout, read_hello(&mut recv, &mut frames))
        .await
        .map_err(|_| hello_timeout())??;

    let root: Arc<str> = hello.match_id.as_str().into();
    // Who is asking, before touching the engine.
    enum Claim {
        Player(PlayerId),
        Resume(PlayerId, u64),
        OpenPlayer,
        Spectator,
    }
    let claim = match (&hello.credential, hello.role) {
        (Credential::Ticket(ticket), role) => {
            let claims = tickets::verify_ticket(&shared.secret, ticket, &root, tickets::unix_now())
                .map_err(|e| ticket_refusal(&e))?;
            match role {
                Role::Player => Claim::Player(claims.player),
                Role::Spectator => Claim::Spectator,
            }
        }
        (Credential::Resume(token), Role::Player) => {
            let claims = tickets::verify_resume_token(&shared.secret, token, &root)
                .map_err(|e| ticket_refusal(&e))?;
            Claim::Resume(claims.player, claims.epoch)
        }
        (Credential::Resume(_), Role::Spectator) => {
            return Err(Refusal::new(
                CloseCode::Malformed,
                "a resume token is for players only",
            ));
        }
        (Credential::Open, role) => {
            if !shared.config.open_mode {
                return Err(Refusal::new(
                    CloseCode::OpenModeDisabled,
                    "this server admits by ticket only",
                ));
            }
            match role {
                Role::Player => Claim::OpenPlayer,
                Role::Spectator => Claim::Spectator,
            }
        }
    };
    let may_create = match claim {
        Claim::Player(_) | Claim::OpenPlayer => true,
        Claim::Resume(..) | Claim::Spectator => false,
    };
    let restored = ensure_hosted(shared, &root, may_create, hello.params.as_deref()).await?;
    let hub = ensure_hub(shared, &root);

    // Subscribe first, then take the next published state: every event
    // after that state reaches the subscription.
    let mut feed = shared
        .engine
        .subscribe(&root)
        .map_err(|e| Refusal::new(CloseCode::UnknownMatch, e.to_string()))?;
    let first = next_update(&mut feed).await?;
    if let Some(reason) = &first.failure {
        return Err(Refusal::new(
            CloseCode::MatchFailed,
            format!("the match failed: {reason}"),
        ));
    }
    if first.over {
        return Err(Refusal::new(CloseCode::MatchOver, "the match is over"));
    }
    let game = shared.engine.game();
    let present = game.players(&first.state);

    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // A match restored here, or the first resume into a match (after a
    // restart), shows the match has network players: the others present
    // get the grace window to come back too.
    if restored || matches!(claim, Claim::Resume(..)) {
        let claimant = match claim {
            Claim::Player(player) | Claim::Resume(player, _) => Some(player),
            Claim::OpenPlayer | Claim::Spectator => None,
        };
        adopt_absent(shared, &root, &hub, &present, claimant);
    }
    let admitted = {
        let mut slots = shared.slots();
        match claim {
            Claim::Spectator => None,
            Claim::Player(player) => {
                Some((player, slots.admit_ticket(&root, player, conn_id, now_ms)))
            }
            Claim::OpenPlayer => {
                let player = (1..u32::MAX)
                    .map(PlayerId)
                    .find(|p| !present.contains(p) && !slots.is_taken(&root, *p))
                    .ok_or_else(|| Refusal::new(CloseCode::JoinRejected, "no free player id"))?;
                Some((player, slots.admit_ticket(&root, player, conn_id, now_ms)))
            }
            Claim::Resume(player, epoch) => {
                let admitted = slots
                    .admit_resume(&root, player, epoch, conn_id, present.contains(&player))
                    .map_err(|refusal| {
                        let why = match refusal {
                            ResumeRefusal::Freed => {
                                "the grace window is over and the slot was freed"
                            }
                            ResumeRefusal::Superseded => "a newer admission superseded this token",
                            ResumeRefusal::NotInMatch => "the player is no longer in the match",
                        };
                        Refusal::new(
                            CloseCode::ResumeRefused,
                            format!("resume refused for {player}: {why}"),
                        )
                    })?;
                metrics::counter!(names::SESSIONS_RESUMED).increment(1);
                Some((player, admitted))
            }
        }
    };
    let mut resume_token = None;
    let mut player = None;
    if let Some((id, admitted)) = admitted {
        if let Some(old) = admitted.replaced
            && let Some(old) = shared.conns.get(&old)
        {
            Refusal::new(CloseCode::Replaced, "a newer connection took this slot").close(&old);
        }
        if !present.contains(&id) {
            join(shared, &root, id, hello.join.as_deref())
                .await
                .inspect_err(|_| {
                    // Give the slot back so the id is free again.
                    let generation = shared.slots().disconnect(&root, id, conn_id);
                    if let Some(generation) = generation {
                        shared.slots().expire(&root, id, generation);
                    }
                })?;
        }
        resume_token = Some(tickets::mint_resume_token(
            &shared.secret,
            &root,
            id,
            admitted.epoch,
        ));
        player = Some(id);
    }
    let events_from = hello
        .events_from
        .map_or(first.next_sequence, |from| from.min(first.next_sequence));
    Ok(Session {
        root,
        player,
        conn_id,
        send: {
            let mut send = Control {
                stream: send,
                conn: conn.clone(),
                timeout: shared.config.write_timeout,
            };
            let welcome = ServerMsg::<G::Event>::Welcome(Welcome {
                match_id: hello.match_id.clone(),
                player,
                role: hello.role,
                resume_token,
                tick: first.tick,
                events_from,
                tick_hz: shared.engine.settings().tick_hz,
                state_every_ticks: shared.config.state_every_ticks.max(1),
                grace_ms: shared.config.grace.as_millis() as u64,
            });
            write_frame(&mut send, &welcome, &shared.stats)
                .await
                .map_err(|_| Refusal::new(CloseCode::Normal, "connection lost"))?;
            send
        },
        recv,
        frames,
        feed,
        first,
        events_from,
        hub,
    })
}

/// Hosts match `root` if it is not: restored from the store, or created
/// when `may_create` and the store does not know it. Returns whether it
/// was restored here.
pub(super) async fn ensure_hosted<G: Game, S: Store>(
    shared: &Shared<G, S>,
    root: &str,
    may_create: bool,
    params: Option<&[u8]>,
) -> Result<bool, Refusal> {
    let engine = &shared.engine;
    if engine.is_hosted(root) {
        return Ok(false);
    }
    let _guard = shared.hosting.lock().await;
    if engine.is_hosted(root) {
        return Ok(false);
    }
    let internal = |e: EngineError| {
        tracing::error!(r#match = %root, error = %e, "cannot host match");
        Refusal::new(
            CloseCode::Internal,
            format!("cannot host match {root:?}: {e}"),
        )
    };
    let key = engine
        .key(root)
        .map_err(|e| Refusal::new(CloseCode::UnknownMatch, e.to_string()))?;
    let head = engine
        .store()
        .head(&key)
        .await
        .map_err(|e| internal(e.into()))?;
    match head {
        Some(head) if head.status == crate::store::MatchStatus::Ended => Err(Refusal::new(
            CloseCode::MatchOver,
            format!("match {root:?} is over"),
        )),
        Some(head) if head.status == crate::store::MatchStatus::Failed => {
            let reason = engine
                .store()
                .failure(&key)
                .await
                .ok()
                .flatten()
                .unwrap_or_default();
            Err(Refusal::new(
                CloseCode::MatchFailed,
                format!("match {root:?} failed: {reason}"),
            ))
        }
        Some(_) => {
            place(shared, root, false).await?;
            match engine.restore_match(root).await {
                Ok(replayed) => {
                    tracing::info!(r#match = %root, tick = replayed.tick, "match restored on demand");
                    Ok(true)
                }
                // A fleet's takeover scan restored it meanwhile.
                Err(EngineError::MatchExists(_)) => Ok(true),
                Err(error) => Err(owned_or(error, internal)),
            }
        }
        None if may_create => {
            place(shared, root, true).await?;
            let params = match params {
                Some(bytes) => codec::decode(bytes).map_err(|e| {
                    Refusal::new(
                        CloseCode::JoinRejected,
                        format!("the match parameters do not decode: {e}"),
                    )
                })?,
                None => G::Params::default(),
            };
            engine
                .create_match_with(root, params)
                .await
                .map_err(|e| match e {
                    EngineError::Setup { .. } => {
                        Refusal::new(CloseCode::JoinRejected, e.to_string())
                    }
                    other => owned_or(other, internal),
                })?;
            tracing::info!(r#match = %root, "match created on demand");
            Ok(false)
        }
        None => Err(Refusal::new(
            CloseCode::UnknownMatch,
            format!("no match {root:?} on this server"),
        )),
    }
}

/// Asks the fleet (if any) where `root` is served; anything but here
/// becomes the refusal that sends the client there or makes it wait.
pub(super) async fn place<G: Game, S: Store>(
    shared: &Shared<G, S>,
    root: &str,
    new_match: bool,
) -> Result<(), Refusal> {
    let Some(locator) = &shared.locator else {
        return Ok(());
    };
    match locator.place(root, new_match).await.refusal() {
        None => Ok(()),
        Some((code, reason)) => Err(Refusal::new(code, reason)),
    }
}

/// Another node claimed the match between the placement and the claim:
/// the client retries at once and is redirected; anything else is `other`.
pub(super) fn owned_or(error: EngineError, other: impl FnOnce(EngineError) -> Refusal) -> Refusal {
    match error {
        EngineError::Store(crate::store::StoreError::Owned { owner, .. }) => Refusal::new(
            CloseCode::MatchMoving,
            crate::net::retry_reason(
                Duration::from_millis(20),
                &format!("node {owner} took the match just now"),
            ),
        ),
        other_error => other(other_error),
    }
}

/// How a session whose match left this engine is closed: sent to the
/// match's new node (or asked to wait) in a fleet, else told to resume
/// later (the engine is stopping).
pub(super) async fn match_left<G: Game, S: Store>(shared: &Shared<G, S>, root: &str) -> Refusal {
    match place(shared, root, false).await {
        Err(elsewhere) => elsewhere,
        Ok(()) => Refusal::new(
            CloseCode::ServerShutdown,
            "the match is no longer hosted here",
        ),
    }
}

/// The first time for `hub`: every player in `present` with no slot
/// (other than `except`, who is being admitted) gets a grace window to
/// resume. For matches restored from the store, whose players were
/// connected to an earlier process.
pub(super) fn adopt_absent<G: Game, S: Store>(
    shared: &Arc<Shared<G, S>>,
    root: &Arc<str>,
    hub: &Hub<G>,
    present: &[PlayerId],
    except: Option<PlayerId>,
) {
    if hub.adopted.swap(true, Relaxed) {
        return;
    }
    let orphans: Vec<(PlayerId, u64)> = {
        let mut slots = shared.slots();
        present
            .iter()
            .copied()
            .filter(|p| Some(*p) != except)
            .filter_map(|p| slots.adopt(root, p).map(|generation| (p, generation)))
            .collect()
    };
    if !orphans.is_empty() {
        tracing::info!(r#match = %root, players = orphans.len(), grace = ?shared.config.grace,
            "restored match: its players have the grace window to resume");
    }
    for (orphan, generation) in orphans {
        arm_grace(shared, root.clone(), orphan, generation);
    }
}

pub(super) async fn next_update<G: Game>(
    feed: &mut MatchFeed<G>,
) -> Result<Arc<MatchUpdate<G::State>>, Refusal> {
    let gone = || Refusal::new(CloseCode::MatchOver, "the match is no longer hosted");
    match tokio::time::timeout(Duration::from_secs(5), feed.updates.changed()).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(gone()),
        Err(_) => {
            return Err(Refusal::new(
                CloseCode::Internal,
                "the match published no state in time",
            ));
        }
    }
    feed.updates.borrow_and_update().clone().ok_or_else(gone)
}

/// Enters `player` into match `root` with the game's join command for
/// `payload` (the encoded `Game::Join`; `None` for the default), waiting
/// until the match applied or refused it.
pub(super) async fn join<G: Game, S: Store>(
    shared: &Shared<G, S>,
    root: &str,
    player: PlayerId,
    payload: Option<&[u8]>,
) -> Result<(), Refusal> {
    let refused = |why: String| Refusal::new(CloseCode::JoinRejected, why);
    let payload: G::Join = match payload {
        Some(bytes) => codec::decode(bytes)
            .map_err(|e| refused(format!("the join payload does not decode: {e}")))?,
        None => G::Join::default(),
    };
    let command = shared
        .engine
        .game()
        .join(player, &payload)
        .map_err(|rejection| refused(format!("join refused: {rejection}")))?;
    let (tx, mut rx) = mpsc::channel(1);
    shared
        .engine
        .submit(root, player, command, Some(ReplyTo { tx, client_seq: 0 }))
        .map_err(|e| Refusal::new(CloseCode::Internal, e.to_string()))?;
    match tokio::time::timeout(JOIN_TIMEOUT, rx.recv()).await {
        Ok(Some(CommandReply {
            outcome: CommandOutcome::Accepted { .. },
            ..
        })) => Ok(()),
        Ok(Some(CommandReply {
            outcome: CommandOutcome::Rejected(rejection),
            ..
        })) => Err(Refusal::new(
            CloseCode::JoinRejected,
            format!("join refused: {rejection}"),
        )),
        Ok(None) | Err(_) => Err(Refusal::new(
            CloseCode::Internal,
            "the join command got no answer",
        )),
    }
}
