//! The state fan-out: one task per match, woken once per tick, sends that
//! tick's state datagram to every connection of the match, so no session
//! task is woken per tick.
//!
//! A session sends its first state itself, then hands its [`StateStream`],
//! its event receiver and cursor to the match's fan-out through the hub
//! ([`join_fanout`]); the first one to join starts the fan-out. Per tick
//! and connection the fan-out takes the events the connection has not
//! examined (skipping those it is not sent, such as unreliable moves),
//! then runs the same synchronous step as the session's first state
//! ([`try_datagram_state`]). What needs awaiting goes back to the session
//! on its own channel ([`FromFanout`]): reliable events to write before
//! the tick's state (the whole subscriber goes back; the session writes
//! them, sends the state and joins again), a state too large for a
//! datagram (the connection is skipped until the session has written it),
//! the end of the match (with the subscriber, for the last events and the
//! final state), the match leaving the engine. A connection whose session ended or whose
//! connection is lost is dropped. The fan-out ends when the match is over,
//! when it leaves the engine, or when no connection is left (a later
//! session starts another one).

use std::sync::atomic::Ordering::{Acquire, Release};

use crate::engine::EventEnvelope;

use super::*;

/// The latest published update of a match.
pub(super) type Updates<T> = watch::Receiver<Option<Arc<MatchUpdate<T>>>>;

/// The way into a running fan-out (kept in the match's [`Hub`]).
pub(super) type FanoutJoin<G> = mpsc::UnboundedSender<Subscriber<G>>;

/// A match's event receiver.
pub(super) type Events<G> = broadcast::Receiver<Arc<EventEnvelope<<G as Game>::Event>>>;

/// One connection served by a fan-out.
pub(super) struct Subscriber<G: Game> {
    pub(super) conn: quinn::Connection,
    pub(super) states: StateStream,
    /// Who the client is (which events it is sent).
    pub(super) viewer: Viewer,
    /// The view this connection gets ([`view_key`]).
    pub(super) view: Viewer,
    /// The match's events from the session's subscription on.
    pub(super) events: Events<G>,
    /// Whether `events` may still deliver.
    pub(super) events_open: bool,
    /// Which reliable events the client has been sent.
    pub(super) cursor: EventCursor,
    /// Set by the fan-out when it hands the session a state for a stream,
    /// cleared by the session once written: no state goes out meanwhile.
    pub(super) streaming: Arc<AtomicBool>,
    pub(super) to_session: mpsc::UnboundedSender<FromFanout<G>>,
    /// Held while the session has it back for reliable events.
    pub(super) away: Option<Away>,
}

/// Counts, for a fan-out, a connection its session has back for reliable
/// events, until it joins again or its session ends (dropping this): a
/// fan-out whose connections are all away does not end.
pub(super) struct Away(Arc<AtomicUsize>);

impl Away {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Relaxed);
        Self(count.clone())
    }
}

impl Drop for Away {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Reliable events for a client: (the `since` to send, the event).
pub(super) type PendingEvents<G> = Vec<(u64, Arc<EventEnvelope<<G as Game>::Event>>)>;

/// What a fan-out hands back to a session.
pub(super) enum FromFanout<G: Game> {
    /// A state too large for a datagram: the session sends it on a stream
    /// ([`send_state_on_stream`]), then clears `streaming`.
    Stream(Bytes),
    /// Reliable events to write before the state of `update`: the session
    /// writes them, sends that state when due, and joins again.
    Events {
        pending: PendingEvents<G>,
        update: Arc<MatchUpdate<G::State>>,
        subscriber: Box<Subscriber<G>>,
    },
    /// The match is over: its final update, and the subscriber back for
    /// the last events and the final state.
    Over {
        update: Arc<MatchUpdate<G::State>>,
        subscriber: Box<Subscriber<G>>,
    },
    /// The match left the engine without a final state.
    Left,
}

/// Hands `subscriber` to the fan-out of match `root`, starting one (on
/// `updates`, the session's own receiver) when none runs.
pub(super) fn join_fanout<G: Game, S: Store>(
    shared: &Arc<Shared<G, S>>,
    hub: &Arc<Hub<G>>,
    root: &Arc<str>,
    updates: &Updates<G::State>,
    subscriber: Subscriber<G>,
) {
    let mut join = hub.fanout();
    let subscriber = match join.as_ref() {
        Some(running) => match running.send(subscriber) {
            Ok(()) => return,
            // That fan-out is gone without saying so (it panicked).
            Err(mpsc::error::SendError(subscriber)) => subscriber,
        },
        None => subscriber,
    };
    let (tx, joining) = mpsc::unbounded_channel();
    *join = Some(tx);
    drop(join);
    shared.stats.fanouts.fetch_add(1, Relaxed);
    shared.stats.fanouts_started.fetch_add(1, Relaxed);
    metrics::gauge!(names::FANOUTS_LIVE).increment(1.0);
    let mut fanout = Fanout {
        shared: shared.clone(),
        hub: hub.clone(),
        root: root.clone(),
        updates: updates.clone(),
        joining,
        subscribers: Vec::new(),
        away: Arc::default(),
    };
    fanout.add(subscriber);
    tokio::spawn(fanout.run());
}

/// The fan-out task of one match.
struct Fanout<G: Game, S: Store> {
    shared: Arc<Shared<G, S>>,
    hub: Arc<Hub<G>>,
    root: Arc<str>,
    updates: Updates<G::State>,
    joining: mpsc::UnboundedReceiver<Subscriber<G>>,
    subscribers: Vec<Subscriber<G>>,
    /// Connections whose sessions have them back for reliable events.
    away: Arc<AtomicUsize>,
}

impl<G: Game, S: Store> Drop for Fanout<G, S> {
    fn drop(&mut self) {
        let stats = &self.shared.stats;
        stats.fanouts.fetch_sub(1, Relaxed);
        metrics::gauge!(names::FANOUTS_LIVE).decrement(1.0);
        stats
            .fanout_connections
            .fetch_sub(self.subscribers.len() as u64, Relaxed);
    }
}

impl<G: Game, S: Store> Fanout<G, S> {
    async fn run(mut self) {
        loop {
            tokio::select! {
                biased;
                changed = self.updates.changed() => {
                    if changed.is_err() {
                        // Moved to another node, or the engine is stopping.
                        self.end(None);
                        return;
                    }
                    let Some(update) = self.updates.borrow_and_update().clone() else { continue };
                    self.shared.stats.fanout_wakeups.fetch_add(1, Relaxed);
                    metrics::counter!(names::FANOUT_WAKEUPS).increment(1);
                    if update.over {
                        self.end(Some(update));
                        return;
                    }
                    self.send_all(&update);
                    self.shared.send_delays.record(update.published.elapsed());
                    if self.subscribers.is_empty() && self.end_if_idle() {
                        return;
                    }
                }
                Some(subscriber) = self.joining.recv() => {
                    self.add(subscriber);
                    // It may have joined after this tick went out.
                    let latest = self.updates.borrow().clone();
                    if let Some(update) = latest
                        // Else the match ends at this fan-out's next wake.
                        && !update.over
                    {
                        let newest = self.subscribers.len() - 1;
                        self.serve(newest, &update);
                    }
                }
            }
        }
    }

    fn add(&mut self, mut subscriber: Subscriber<G>) {
        subscriber.away = None;
        self.shared.stats.fanout_connections.fetch_add(1, Relaxed);
        self.subscribers.push(subscriber);
    }

    /// Serves every connection the tick of `update` ([`Fanout::serve`]).
    fn send_all(&mut self, update: &Arc<MatchUpdate<G::State>>) {
        // Backwards: `serve` may swap the last connection into place `at`.
        for at in (0..self.subscribers.len()).rev() {
            self.serve(at, update);
        }
    }

    /// Serves the connection at `at` the tick of `update` ([`offer`]):
    /// keeps it, drops it, or hands it back to its session with reliable
    /// events (moving the last connection into its place).
    fn serve(&mut self, at: usize, update: &Arc<MatchUpdate<G::State>>) {
        let game = self.shared.engine.game();
        let offered = offer(
            &self.shared,
            game,
            &self.hub,
            &self.root,
            &mut self.subscribers[at],
            update,
        );
        let pending = match offered {
            Offered::Keep => return,
            Offered::Drop => {
                self.subscribers.swap_remove(at);
                self.shared.stats.fanout_connections.fetch_sub(1, Relaxed);
                return;
            }
            Offered::Events(pending) => pending,
        };
        let mut subscriber = Box::new(self.subscribers.swap_remove(at));
        subscriber.away = Some(Away::new(&self.away));
        self.shared.stats.fanout_connections.fetch_sub(1, Relaxed);
        let to_session = subscriber.to_session.clone();
        // A session that ended needs nothing.
        let _ = to_session.send(FromFanout::Events {
            pending,
            update: update.clone(),
            subscriber,
        });
    }

    /// With no connection left, closes the way in and says so (`true`),
    /// unless a session joined meanwhile or has its connection back for
    /// reliable events.
    fn end_if_idle(&mut self) -> bool {
        let hub = self.hub.clone();
        let mut join = hub.fanout();
        while let Ok(subscriber) = self.joining.try_recv() {
            self.add(subscriber);
        }
        if !self.subscribers.is_empty() || self.away.load(Relaxed) > 0 {
            return false;
        }
        *join = None;
        true
    }

    /// Closes the way in and tells every session the match ended: `over`
    /// with its final update, or (`None`) it left the engine.
    fn end(&mut self, over: Option<Arc<MatchUpdate<G::State>>>) {
        {
            let hub = self.hub.clone();
            let mut join = hub.fanout();
            while let Ok(subscriber) = self.joining.try_recv() {
                self.add(subscriber);
            }
            *join = None;
        }
        let ending = std::mem::take(&mut self.subscribers);
        self.shared
            .stats
            .fanout_connections
            .fetch_sub(ending.len() as u64, Relaxed);
        for subscriber in ending {
            let to_session = subscriber.to_session.clone();
            let message = match &over {
                Some(update) => FromFanout::Over {
                    update: update.clone(),
                    subscriber: Box::new(subscriber),
                },
                None => FromFanout::Left,
            };
            // A session that already ended needs nothing.
            let _ = to_session.send(message);
        }
    }
}

/// What became of one connection's tick.
enum Offered<G: Game> {
    /// Served (or nothing due): it stays.
    Keep,
    /// Its session ended, or its connection is lost or was just closed.
    Drop,
    /// Reliable events to write first: back to the session.
    Events(PendingEvents<G>),
}

/// Serves `subscriber` the tick of `update`: the events it has not
/// examined, then the state if one is due.
fn offer<G: Game, S: Store>(
    shared: &Shared<G, S>,
    game: &G,
    hub: &Hub<G>,
    root: &str,
    subscriber: &mut Subscriber<G>,
    update: &MatchUpdate<G::State>,
) -> Offered<G> {
    if subscriber.to_session.is_closed() {
        return Offered::Drop;
    }
    if subscriber.streaming.load(Acquire) {
        return Offered::Keep;
    }
    // A tick's events go before its state.
    match take_events(shared, game, root, subscriber) {
        Err(Lost) => return Offered::Drop,
        Ok(pending) if !pending.is_empty() => return Offered::Events(pending),
        Ok(_) => {}
    }
    if !subscriber.states.due(update) {
        return Offered::Keep;
    }
    let view = (root, subscriber.view);
    match try_datagram_state(
        shared,
        &subscriber.conn,
        &mut subscriber.states,
        hub,
        view,
        update,
    ) {
        Ok(None) => Offered::Keep,
        Ok(Some(bytes)) => {
            subscriber.streaming.store(true, Release);
            match subscriber.to_session.send(FromFanout::Stream(bytes)) {
                Ok(()) => Offered::Keep,
                Err(_) => Offered::Drop,
            }
        }
        Err(Lost) => Offered::Drop,
    }
}

/// The reliable events `subscriber`'s client is to be sent among those it
/// has not examined yet. A client too far behind is closed
/// ([`CloseCode::Lagging`]).
fn take_events<G: Game, S: Store>(
    shared: &Shared<G, S>,
    game: &G,
    root: &str,
    subscriber: &mut Subscriber<G>,
) -> Result<PendingEvents<G>, Lost> {
    let mut pending = Vec::new();
    while subscriber.events_open {
        match subscriber.events.try_recv() {
            Ok(envelope) => {
                let sends = sends_event(game, subscriber.viewer, &envelope.event);
                if let Some(since) = subscriber.cursor.offer(envelope.sequence, sends) {
                    pending.push((since, envelope));
                }
            }
            Err(broadcast::error::TryRecvError::Empty) => break,
            Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                close_lagging(
                    &shared.stats,
                    &subscriber.conn,
                    root,
                    subscriber.viewer,
                    missed,
                );
                return Err(Lost);
            }
            Err(broadcast::error::TryRecvError::Closed) => subscriber.events_open = false,
        }
    }
    Ok(pending)
}
