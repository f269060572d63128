//! The session's task: owns the connection and the per-session state
//! (baselines, pending commands and inputs, the event sequence), applies
//! states and events, sends input datagrams, and reconnects with the
//! resume token after a drop.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot, watch};

use super::inputs::InputWindow;
use super::link::{self, Inbound, Link, closed_error};
use super::route::{Budget, Route};
use super::{
    Client, ClientError, ClientStats, JoinRequest, Outgoing, Session, SessionEvent, SessionInfo,
    StateUpdate, connection_error, random,
};
use crate::codec;
use crate::engine::InputAcks;
use crate::game::{Game, Tick};
use crate::net::delta;
use crate::net::protocol::{
    self, ClientMsg, CloseCode, CommandStatus, Credential, Role, ServerMsg,
};

/// Baselines (received state encodings) a session keeps.
const BASELINES_KEPT: usize = 64;
/// Commands awaiting their result, at most.
const MAX_IN_FLIGHT: usize = 1024;
/// Without an input to send, a datagram acknowledges the states after
/// this many arrived since the last one (repeating unacknowledged inputs).
const STATES_PER_ACK: u32 = 2;

/// The session's task: owns the connection and all per-session state.
pub(super) struct Driver<G: Game> {
    client: Client,
    /// The current server and the fail-over rotation.
    route: Route,
    request: JoinRequest,
    conn: quinn::Connection,
    link: Link<G>,
    commands: mpsc::Receiver<Outgoing<G::Command>>,
    pending: HashMap<u64, oneshot::Sender<Result<CommandStatus, ClientError>>>,
    next_seq: u64,
    /// Inputs of this connection.
    inputs: InputWindow<G::Command>,
    /// Unresolved inputs, shared with the session handle.
    inputs_outstanding: Arc<AtomicUsize>,
    /// States that arrived since the last input datagram went out.
    states_since_datagram: u32,
    /// The input datagram loss test hook's generator and share.
    input_loss: Option<(u16, u64)>,
    baselines: VecDeque<(Tick, Vec<u8>)>,
    /// The buffer of the baseline dropped last, reused for the next delta.
    spare: Vec<u8>,
    last_tick: Option<Tick>,
    events_expected: u64,
    grace: Duration,
    states: watch::Sender<Option<Arc<StateUpdate<G::View>>>>,
    events: mpsc::Sender<SessionEvent<G::Event>>,
    info: watch::Sender<SessionInfo>,
    stats: Arc<ClientStats>,
    /// The match ended at this tick; `true` once the final state arrived.
    over: Option<(Tick, bool)>,
}

/// Why the driver's connection loop stopped.
enum Stop {
    /// The application dropped the session.
    Dropped,
    /// The match ended and everything was delivered.
    Over,
    /// The connection failed.
    Failed(ClientError),
}

impl<G: Game> Driver<G> {
    /// Starts the task of a session `link` admitted over `conn`.
    pub(super) fn spawn(
        client: &Client,
        route: Route,
        request: JoinRequest,
        conn: quinn::Connection,
        link: Link<G>,
        stats: Arc<ClientStats>,
    ) -> Session<G> {
        let welcome = link.welcome.clone();
        let (states_tx, states_rx) = watch::channel(None);
        let (events_tx, events_rx) = mpsc::channel(4096);
        let (commands_tx, commands_rx) = mpsc::channel(256);
        let inputs_outstanding = Arc::new(AtomicUsize::new(0));
        let (info_tx, info_rx) = watch::channel(SessionInfo {
            player: welcome.player,
            resume_token: welcome.resume_token.clone(),
            connected: true,
            server: route.current(),
        });
        let driver = Driver::<G> {
            client: client.clone(),
            route,
            request,
            conn,
            link,
            commands: commands_rx,
            pending: HashMap::new(),
            next_seq: 1,
            inputs: InputWindow::new(inputs_outstanding.clone()),
            inputs_outstanding: inputs_outstanding.clone(),
            states_since_datagram: 0,
            input_loss: client
                .config
                .test_input_datagram_loss
                .map(|l| (l.per_mille, l.seed | 1)),
            baselines: VecDeque::new(),
            spare: Vec::new(),
            last_tick: None,
            events_expected: welcome.events_from,
            grace: Duration::from_millis(welcome.grace_ms),
            states: states_tx,
            events: events_tx,
            info: info_tx,
            stats: stats.clone(),
            over: None,
        };
        let task = tokio::spawn(driver.run());
        Session {
            welcome,
            info: info_rx,
            commands: commands_tx,
            inputs_outstanding,
            states: states_rx,
            events: events_rx,
            stats,
            task,
        }
    }

    async fn run(mut self) {
        loop {
            let stop = self.serve_connection().await;
            let error = match stop {
                Stop::Dropped => {
                    self.conn
                        .close(CloseCode::Normal.code().into(), b"client closed");
                    return;
                }
                Stop::Over => {
                    self.conn
                        .close(CloseCode::Normal.code().into(), b"match over");
                    let _ = self
                        .events
                        .send(SessionEvent::Closed {
                            code: Some(CloseCode::MatchOver),
                            reason: "the match is over".into(),
                        })
                        .await;
                    return;
                }
                Stop::Failed(error) => error,
            };
            // The resume's deadline counts from here, when the loss was seen.
            let detected = Instant::now();
            for (_, reply) in self.pending.drain() {
                let _ = reply.send(Err(ClientError::Disconnected));
            }
            // Their outcome is unknown; numbering restarts on the next connection.
            self.inputs.fail_all(&ClientError::Disconnected);
            self.states_since_datagram = 0;
            self.info.send_modify(|i| i.connected = false);
            let code = error.code();
            let resumable = self.client.config.reconnect
                && match &error {
                    ClientError::Refused { code, .. } => {
                        code.is_some_and(|c| c.may_resume() || c.retry_hello())
                    }
                    ClientError::Lost(_) | ClientError::Protocol(_) => true,
                    _ => false,
                }
                && (self.request.role == Role::Spectator
                    || self.info.borrow().resume_token.is_some());
            let _ = self
                .events
                .send(SessionEvent::Disconnected {
                    code,
                    reason: error.reason(),
                    resuming: resumable,
                })
                .await;
            if !resumable {
                return self.close_for_good(code, error.reason()).await;
            }
            match self.reconnect(error, detected).await {
                Ok(()) => {}
                Err(error) => return self.close_for_good(error.code(), error.reason()).await,
            }
        }
    }

    async fn close_for_good(&mut self, code: Option<CloseCode>, reason: String) {
        self.conn
            .close(CloseCode::Normal.code().into(), b"client gave up");
        let _ = self
            .events
            .send(SessionEvent::Closed { code, reason })
            .await;
    }

    /// Reconnects with the resume token (players) or the original
    /// credential (spectators) after the connection ended with `cause`:
    /// to the node a `Redirect` names, after the wait a `MatchMoving` asks,
    /// else to the same server and then the fallbacks, with backoff. Gives
    /// up past the longer of the grace window and `retry_for`, counted
    /// from when the loss was `detected` (a fleet takeover needs the lease
    /// to expire and the match restored first).
    async fn reconnect(
        &mut self,
        cause: ClientError,
        detected: Instant,
    ) -> Result<(), ClientError> {
        let window = self
            .grace
            .max(self.client.config.retry_for)
            .max(Duration::from_secs(1));
        let budget = Budget::resume(detected, window);
        let mut request = self.request.clone();
        if self.request.role == Role::Player {
            let token = self
                .info
                .borrow()
                .resume_token
                .clone()
                .ok_or(ClientError::Ended)?;
            request.credential = Credential::Resume(token);
        }
        request.events_from = Some(self.events_expected);
        let next = self
            .route
            .after_close(cause, Instant::now(), &budget, random());
        let (conn, link) = {
            let establish =
                self.client
                    .establish::<G>(&mut self.route, next, &request, &self.stats, &budget);
            tokio::pin!(establish);
            loop {
                tokio::select! {
                    done = &mut establish => break done?,
                    // Commands and inputs sent meanwhile fail at once.
                    Some(out) = self.commands.recv() => {
                        out.fail(ClientError::Disconnected, &self.inputs_outstanding);
                    }
                }
            }
        };
        let tick = link.welcome.tick;
        // Events the server could not replay are a gap.
        if link.welcome.events_from > self.events_expected {
            let (from, to) = (self.events_expected, link.welcome.events_from);
            self.stats.gaps.fetch_add(1, Relaxed);
            let _ = self.events.send(SessionEvent::Gap { from, to }).await;
            self.events_expected = to;
        }
        self.conn = conn;
        self.link = link;
        self.last_tick = None;
        self.grace = Duration::from_millis(self.link.welcome.grace_ms);
        self.stats.resumes.fetch_add(1, Relaxed);
        let server = self.route.current();
        self.info.send_modify(|i| {
            i.connected = true;
            i.server = server;
            if let Some(player) = self.link.welcome.player {
                i.player = Some(player);
            }
            if let Some(token) = &self.link.welcome.resume_token {
                i.resume_token = Some(token.clone());
            }
        });
        let _ = self.events.send(SessionEvent::Resumed { tick }).await;
        Ok(())
    }

    /// Runs one connection until it fails, the match ends or the session is dropped.
    async fn serve_connection(&mut self) -> Stop {
        let mut over_deadline: Option<tokio::time::Instant> = None;
        // Both futures live as long as the connection, not one loop pass;
        // reading a datagram is cancel-safe (quinn keeps it until a poll
        // returns it), but a fresh future per pass costs a lock each time.
        let conn = self.conn.clone();
        let mut closed = std::pin::pin!(conn.closed());
        let mut datagram = std::pin::pin!(conn.read_datagram());
        loop {
            let linger = async {
                match over_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                read = &mut datagram => {
                    datagram.set(conn.read_datagram());
                    match read {
                        Ok(bytes) => {
                            if let Some(stop) = self.on_datagram(&bytes).await {
                                return stop;
                            }
                        }
                        // Closed, and every datagram that came first was read.
                        Err(error) => return self.on_closed(&error, &mut over_deadline).await,
                    }
                }
                inbound = self.link.inbox.recv() => match inbound {
                    Some(Inbound::Control(msg)) => {
                        if let Some(stop) = self.on_control(msg, &mut over_deadline).await {
                            return stop;
                        }
                    }
                    Some(Inbound::StreamState(msg)) => {
                        if let Some(stop) = self.on_state(msg, true).await {
                            return stop;
                        }
                    }
                    Some(Inbound::Broken(reason)) => return self.broken(reason),
                    None => {
                        // Every reader ended: the connection is gone.
                        return Stop::Failed(closed_error(&self.conn).await);
                    }
                },
                out = self.commands.recv() => match out {
                    None => return Stop::Dropped,
                    Some(Outgoing::Command { command, reply }) => {
                        if self.pending.len() >= MAX_IN_FLIGHT {
                            let _ = reply.send(Err(ClientError::Busy));
                            continue;
                        }
                        let client_seq = self.next_seq;
                        self.next_seq += 1;
                        let msg = ClientMsg::Command { client_seq, command };
                        self.pending.insert(client_seq, reply);
                        if let Err(stop) = self.write(&msg).await {
                            return stop;
                        }
                    }
                    Some(Outgoing::Input { command, reply }) => {
                        self.inputs.push(command, reply);
                        self.stats.inputs_sent.fetch_add(1, Relaxed);
                        if let Err(stop) = self.send_inputs() {
                            return stop;
                        }
                    }
                },
                error = &mut closed => return self.on_closed(&error, &mut over_deadline).await,
                _ = linger => return Stop::Over,
            }
        }
    }

    /// Decodes and applies a state datagram; one that does not decode
    /// closes the connection as malformed.
    async fn on_datagram(&mut self, bytes: &[u8]) -> Option<Stop> {
        match self.decode_datagram(bytes) {
            Ok(msg) => self.on_state(msg, false).await,
            Err(reason) => Some(self.broken(reason)),
        }
    }

    /// Counts and decodes a state datagram (see [`link::decode_datagram`]).
    fn decode_datagram(&self, bytes: &[u8]) -> Result<ServerMsg<G::Event>, String> {
        link::decode_datagram::<G>(bytes, self.client.config.max_message_bytes, &self.stats)
    }

    /// Closes the connection because the server broke the protocol.
    fn broken(&mut self, reason: String) -> Stop {
        self.conn
            .close(CloseCode::Malformed.code().into(), reason.as_bytes());
        Stop::Failed(ClientError::Protocol(reason))
    }

    /// The connection closed with `error`: delivers what already arrived
    /// (datagrams, results, events), then says why it stopped.
    async fn on_closed(
        &mut self,
        error: &quinn::ConnectionError,
        over_deadline: &mut Option<tokio::time::Instant>,
    ) -> Stop {
        // Datagrams buffered before the close are still handed out.
        while let Some(Ok(bytes)) = self.conn.read_datagram().now_or_never() {
            match self.decode_datagram(&bytes) {
                Ok(msg) => {
                    let _ = self.on_state(msg, false).await;
                }
                Err(_) => break,
            }
        }
        while let Ok(inbound) = self.link.inbox.try_recv() {
            match inbound {
                Inbound::Control(msg) => {
                    let _ = self.on_control(msg, over_deadline).await;
                }
                Inbound::StreamState(msg) => {
                    let _ = self.on_state(msg, true).await;
                }
                Inbound::Broken(_) => break,
            }
        }
        if self.over.is_some() {
            return Stop::Over;
        }
        Stop::Failed(connection_error(error))
    }

    /// Sends an input datagram: the latest applied state tick and every
    /// input the server has not processed (as many as fit).
    fn send_inputs(&mut self) -> Result<(), Stop> {
        self.states_since_datagram = 0;
        let Some(max) = self.conn.max_datagram_size() else {
            self.inputs.fail_all(&ClientError::NoDatagrams);
            return Ok(());
        };
        let mut count = protocol::INPUT_WINDOW;
        let bytes = loop {
            let datagram = self.inputs.datagram(self.last_tick, count);
            let bytes = protocol::encode_datagram(&datagram)
                .map_err(|e| Stop::Failed(ClientError::Protocol(e.to_string())))?;
            if bytes.len() <= max || count == 0 {
                break bytes;
            }
            // The oldest inputs go first; the rest follow in the next datagram.
            count /= 2;
        };
        if self.drop_input_for_test() {
            self.stats.test_dropped_inputs.fetch_add(1, Relaxed);
            return Ok(());
        }
        match self.conn.send_datagram(bytes.into()) {
            Ok(()) => {
                self.stats.input_datagrams.fetch_add(1, Relaxed);
                Ok(())
            }
            Err(quinn::SendDatagramError::ConnectionLost(e)) => {
                Err(Stop::Failed(connection_error(&e)))
            }
            Err(e) => {
                tracing::warn!(error = %e, "an input datagram could not be sent");
                Ok(())
            }
        }
    }

    /// Whether the loss test hook drops this input datagram.
    fn drop_input_for_test(&mut self) -> bool {
        let Some((per_mille, rng)) = &mut self.input_loss else {
            return false;
        };
        // xorshift64*
        *rng ^= *rng >> 12;
        *rng ^= *rng << 25;
        *rng ^= *rng >> 27;
        let x = rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 33) % 1000 < u64::from(*per_mille)
    }

    async fn write(&mut self, msg: &ClientMsg<G::Command>) -> Result<(), Stop> {
        let frame = protocol::encode_frame(msg, usize::MAX)
            .map_err(|e| Stop::Failed(ClientError::Protocol(e.to_string())))?;
        if self.link.send.write_all(&frame).await.is_err() {
            return Err(Stop::Failed(closed_error(&self.conn).await));
        }
        Ok(())
    }

    async fn on_control(
        &mut self,
        msg: ServerMsg<G::Event>,
        over_deadline: &mut Option<tokio::time::Instant>,
    ) -> Option<Stop> {
        match msg {
            ServerMsg::CommandResult { client_seq, status } => {
                if let Some(reply) = self.pending.remove(&client_seq) {
                    let _ = reply.send(Ok(status));
                }
            }
            ServerMsg::Event { since, envelope } => {
                if since > self.events_expected {
                    self.stats.gaps.fetch_add(1, Relaxed);
                    let gap = SessionEvent::Gap {
                        from: self.events_expected,
                        to: since,
                    };
                    if self.events.send(gap).await.is_err() {
                        return Some(Stop::Dropped);
                    }
                }
                if envelope.sequence >= self.events_expected {
                    self.events_expected = envelope.sequence + 1;
                    self.stats.events.fetch_add(1, Relaxed);
                    if self
                        .events
                        .send(SessionEvent::Event(envelope))
                        .await
                        .is_err()
                    {
                        return Some(Stop::Dropped);
                    }
                }
            }
            ServerMsg::MatchOver { tick } => {
                let final_state = self.over.is_some_and(|(_, got)| got);
                self.over = Some((tick, final_state));
                if self
                    .events
                    .send(SessionEvent::MatchOver { tick })
                    .await
                    .is_err()
                {
                    return Some(Stop::Dropped);
                }
                if final_state {
                    return Some(Stop::Over);
                }
                // Wait a little for the final state on its stream.
                *over_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(2));
            }
            ServerMsg::StateFull { .. }
            | ServerMsg::StateDelta { .. }
            | ServerMsg::Acked { .. } => {
                return self.on_state(msg, false).await;
            }
            ServerMsg::InputRejected { seq, reason } => {
                self.stats.inputs_rejected.fetch_add(1, Relaxed);
                self.inputs.on_rejected(seq, reason);
            }
            ServerMsg::Closing { code, reason } => {
                tracing::debug!(code, %reason, "server is closing the connection");
            }
            ServerMsg::Welcome(_) => {
                let reason = "a second Welcome".to_owned();
                self.conn
                    .close(CloseCode::Malformed.code().into(), reason.as_bytes());
                return Some(Stop::Failed(ClientError::Protocol(reason)));
            }
        }
        None
    }

    async fn on_state(&mut self, msg: ServerMsg<G::Event>, on_stream: bool) -> Option<Stop> {
        let msg = match msg {
            ServerMsg::Acked {
                through,
                tick,
                rejected,
                state,
            } => {
                // Whether or not the state itself is used.
                self.inputs.on_acks(InputAcks {
                    through,
                    tick,
                    rejected,
                });
                *state
            }
            other => other,
        };
        let applied = self.apply_state(msg, on_stream).await;
        if applied.is_some() {
            return applied;
        }
        self.states_since_datagram += 1;
        let over = self.over.is_some();
        if !over && self.states_since_datagram >= STATES_PER_ACK {
            // Acknowledges the latest state, and repeats unacknowledged inputs.
            if let Err(stop) = self.send_inputs() {
                return Some(stop);
            }
        }
        None
    }

    async fn apply_state(&mut self, msg: ServerMsg<G::Event>, on_stream: bool) -> Option<Stop> {
        let limit = self.client.config.max_message_bytes;
        let stale = |tick: Tick| self.last_tick.is_some_and(|last| tick <= last);
        let (tick, over, bytes, is_delta) = match msg {
            ServerMsg::StateFull { tick, over, state } => {
                if stale(tick) {
                    return None; // older than what we have
                }
                (tick, over, state, false)
            }
            ServerMsg::StateDelta {
                tick,
                over,
                baseline_age,
                len,
                patch,
            } => {
                let baseline_tick = tick.checked_sub(u64::from(baseline_age));
                // Newest first: deltas are mostly against a recent state.
                let Some((_, base)) = self
                    .baselines
                    .iter()
                    .rev()
                    .find(|(t, _)| Some(*t) == baseline_tick)
                else {
                    self.stats.missing_baseline.fetch_add(1, Relaxed);
                    return None;
                };
                if stale(tick) {
                    return None; // older than what we have
                }
                // Into the buffer of the baseline dropped last: no allocation.
                let mut bytes = std::mem::take(&mut self.spare);
                if let Err(e) = delta::apply_xor_into(base, len, &patch, limit, &mut bytes) {
                    tracing::warn!(tick, error = %e, "a state delta did not apply; dropped");
                    self.spare = bytes;
                    return None;
                }
                (tick, over, bytes, true)
            }
            _ => return None,
        };
        let state: G::View = match codec::decode(&bytes) {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(tick, error = %e, "a state did not decode; dropped");
                self.spare = bytes;
                return None;
            }
        };
        self.stats.states.fetch_add(1, Relaxed);
        if is_delta {
            self.stats.deltas.fetch_add(1, Relaxed);
        }
        if on_stream {
            self.stats.stream_states.fetch_add(1, Relaxed);
        }
        self.last_tick = Some(tick);
        self.baselines.push_back((tick, bytes));
        while self.baselines.len() > BASELINES_KEPT {
            if let Some((_, dropped)) = self.baselines.pop_front() {
                self.spare = dropped;
            }
        }
        self.states.send_replace(Some(Arc::new(StateUpdate {
            tick,
            over,
            state,
            received: Instant::now(),
        })));
        if over {
            let tick_over = self.over.map(|(t, _)| t);
            self.over = Some((tick_over.unwrap_or(tick), true));
            if tick_over.is_some() {
                return Some(Stop::Over);
            }
            return None;
        }
        None
    }
}

impl<G: Game> Drop for Driver<G> {
    fn drop(&mut self) {
        // Aborted with the session: close rather than wait for the idle timeout.
        self.conn
            .close(CloseCode::Normal.code().into(), b"client closed");
        self.link.readers.abort_all();
    }
}
