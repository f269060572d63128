//! The state fan-out: one task per match, woken once per tick, sends that
//! tick's state datagram to every connection of the match, so no session
//! task is woken per tick.
//!
//! A session sends its first state itself, then hands its [`StateStream`]
//! to the match's fan-out through the hub ([`join_fanout`]); the first one
//! to join starts the fan-out. Per tick and connection the fan-out runs
//! the same synchronous step as the session's first state
//! ([`try_datagram_state`]). What needs awaiting goes back to the session
//! on its own channel ([`FromFanout`]): a state too large for a datagram
//! (the connection is skipped until the session has written it), the end
//! of the match (with the state stream, for the final state), the match
//! leaving the engine. A connection whose session ended or whose
//! connection is lost is dropped. The fan-out ends when the match is over,
//! when it leaves the engine, or when no connection is left (a later
//! session starts another one).

use std::sync::atomic::Ordering::{Acquire, Release};

use super::*;

/// The latest published update of a match.
pub(super) type Updates<T> = watch::Receiver<Option<Arc<MatchUpdate<T>>>>;

/// The way into a running fan-out (kept in the match's [`Hub`]).
pub(super) type FanoutJoin<T> = mpsc::UnboundedSender<Subscriber<T>>;

/// One connection served by a fan-out (`T` is the game's state type).
pub(super) struct Subscriber<T> {
    pub(super) conn: quinn::Connection,
    pub(super) states: StateStream,
    /// The view this connection gets ([`view_key`]).
    pub(super) view: Viewer,
    /// Set by the fan-out when it hands the session a state for a stream,
    /// cleared by the session once written: no state goes out meanwhile.
    pub(super) streaming: Arc<AtomicBool>,
    pub(super) to_session: mpsc::UnboundedSender<FromFanout<T>>,
}

/// What a fan-out hands back to a session.
pub(super) enum FromFanout<T> {
    /// A state too large for a datagram: the session sends it on a stream
    /// ([`send_state_on_stream`]), then clears `streaming`.
    Stream(Bytes),
    /// The match is over: its final update, and the connection's state
    /// stream back for the final state.
    Over {
        update: Arc<MatchUpdate<T>>,
        states: StateStream,
    },
    /// The match left the engine without a final state.
    Left,
}

/// Hands `subscriber` to the fan-out of match `root`, starting one (on
/// `updates`, the session's own receiver) when none runs.
pub(super) fn join_fanout<G: Game, S: Store>(
    shared: &Arc<Shared<G, S>>,
    hub: &Arc<Hub<G::State>>,
    root: &Arc<str>,
    updates: &Updates<G::State>,
    subscriber: Subscriber<G::State>,
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
    let mut fanout = Fanout {
        shared: shared.clone(),
        hub: hub.clone(),
        root: root.clone(),
        updates: updates.clone(),
        joining,
        subscribers: Vec::new(),
    };
    fanout.add(subscriber);
    tokio::spawn(fanout.run());
}

/// The fan-out task of one match.
struct Fanout<G: Game, S: Store> {
    shared: Arc<Shared<G, S>>,
    hub: Arc<Hub<G::State>>,
    root: Arc<str>,
    updates: Updates<G::State>,
    joining: mpsc::UnboundedReceiver<Subscriber<G::State>>,
    subscribers: Vec<Subscriber<G::State>>,
}

impl<G: Game, S: Store> Drop for Fanout<G, S> {
    fn drop(&mut self) {
        let stats = &self.shared.stats;
        stats.fanouts.fetch_sub(1, Relaxed);
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
                    if update.over {
                        self.end(Some(update));
                        return;
                    }
                    self.send_all(&update);
                    if self.subscribers.is_empty() && self.end_if_idle() {
                        return;
                    }
                }
                Some(subscriber) = self.joining.recv() => {
                    self.add(subscriber);
                    // It may have joined after this tick went out.
                    let latest = self.updates.borrow().clone();
                    if let Some(update) = latest {
                        if update.over {
                            // The match ends at this fan-out's next wake.
                            continue;
                        }
                        if let Some(newest) = self.subscribers.last_mut()
                            && !offer(&self.shared, &self.hub, &self.root, newest, &update)
                        {
                            self.subscribers.pop();
                            self.shared.stats.fanout_connections.fetch_sub(1, Relaxed);
                        }
                    }
                }
            }
        }
    }

    fn add(&mut self, subscriber: Subscriber<G::State>) {
        self.shared.stats.fanout_connections.fetch_add(1, Relaxed);
        self.subscribers.push(subscriber);
    }

    /// Sends the state of `update` to every connection due one; drops those
    /// whose session ended or whose connection is lost.
    fn send_all(&mut self, update: &MatchUpdate<G::State>) {
        let Self {
            shared,
            hub,
            root,
            subscribers,
            ..
        } = self;
        let before = subscribers.len();
        subscribers.retain_mut(|subscriber| offer(shared, hub, root, subscriber, update));
        let dropped = before - subscribers.len();
        shared
            .stats
            .fanout_connections
            .fetch_sub(dropped as u64, Relaxed);
    }

    /// With no connection left, closes the way in and says so (`true`),
    /// unless a session joined meanwhile.
    fn end_if_idle(&mut self) -> bool {
        let hub = self.hub.clone();
        let mut join = hub.fanout();
        while let Ok(subscriber) = self.joining.try_recv() {
            self.add(subscriber);
        }
        if !self.subscribers.is_empty() {
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
            let message = match &over {
                Some(update) => FromFanout::Over {
                    update: update.clone(),
                    states: subscriber.states,
                },
                None => FromFanout::Left,
            };
            // A session that already ended needs nothing.
            let _ = subscriber.to_session.send(message);
        }
    }
}

/// Sends the state of `update` to `subscriber` if one is due: `false` when
/// the subscriber is to be dropped (its session ended, or its connection
/// is lost or was just closed).
fn offer<G: Game, S: Store>(
    shared: &Shared<G, S>,
    hub: &Hub<G::State>,
    root: &str,
    subscriber: &mut Subscriber<G::State>,
    update: &MatchUpdate<G::State>,
) -> bool {
    if subscriber.to_session.is_closed() {
        return false;
    }
    if subscriber.streaming.load(Acquire) || !subscriber.states.due(update) {
        return true;
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
        Ok(None) => true,
        Ok(Some(bytes)) => {
            subscriber.streaming.store(true, Release);
            subscriber
                .to_session
                .send(FromFanout::Stream(bytes))
                .is_ok()
        }
        Err(Lost) => false,
    }
}
