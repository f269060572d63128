//! Following one match's log as it grows: Redis Pub/Sub for the new
//! batches, the sorted set for everything else.
//!
//! Each append that stores new events publishes them on the match's
//! `updates:{d:e:r}` channel (`SPUBLISH` in cluster mode: the channel
//! shares the match's hash tag, so its slot), when the channel has a
//! subscriber on the node that ran the append (a follower subscribed
//! through a replica is not counted there and gets its events by polling,
//! below). Pub/Sub delivers at most
//! once, so a [`Follower`] never trusts it alone: it subscribes first, then
//! reads the stored events from its start; it skips published events it
//! already has, and when a message starts past the next sequence it
//! expects (a message lost, or an append that did not publish) it reads the
//! missing events from the sorted set. When nothing arrives for
//! [`FOLLOW_POLL`] it reads the sorted set too, so a lost last message
//! delays events by at most that long.

use std::collections::VecDeque;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::{Connection, RedisStore, redact, tls};
use crate::codec;
use crate::store::{EventStore, MatchKey, RecordedEvent, StoreError};

/// How long a follower waits for a message before it reads the store for
/// events it may have missed.
pub const FOLLOW_POLL: Duration = Duration::from_secs(1);

/// Most events a follower reads from the store at once.
const PAGE: usize = 1_000;

/// Most published messages queued for one follower; past it messages are
/// dropped and the gap is backfilled from the store.
const PUSH_QUEUE: usize = 1_024;

/// The channel carrying a match's appended batches.
pub fn updates_channel(key: &MatchKey) -> String {
    format!("updates:{}", key.hash_tag())
}

/// One match's events in order from a given sequence, stored ones first,
/// then new ones as they are appended. Made by [`RedisStore::follow`].
pub struct Follower {
    store: RedisStore,
    key: MatchKey,
    channel: String,
    next_sequence: u64,
    pending: VecDeque<RecordedEvent>,
    /// The store may hold events past `pending`: read before waiting.
    behind: bool,
    messages: Messages,
}

/// The subscription: push messages (RESP3) queued by the connection,
/// bounded so a slow follower costs memory for at most [`PUSH_QUEUE`]
/// messages (past it they are dropped and backfilled from the store).
struct Messages {
    received: mpsc::Receiver<PushInfo>,
    /// A cluster connection resubscribes after a reconnect (a drop only
    /// loses messages); a single-node one does not (a drop ends it).
    reconnects: bool,
    /// Holds the subscription open.
    _connection: Subscription,
}

/// Held only to keep its connection (and so the subscription) open.
enum Subscription {
    Single(#[allow(dead_code)] MultiplexedConnection),
    Cluster(#[allow(dead_code)] ClusterConnection),
}

enum Message {
    Payload(Vec<u8>),
    /// The connection dropped and came back: messages may be lost.
    Lost,
    /// The subscription ended for good.
    Closed,
}

impl Messages {
    /// A bounded queue and the push sender feeding it.
    fn queue() -> (
        impl Fn(PushInfo) -> Result<(), std::convert::Infallible> + Send + Sync + 'static,
        mpsc::Receiver<PushInfo>,
    ) {
        let (sender, received) = mpsc::channel(PUSH_QUEUE);
        // A full queue drops the message: the follower notices the gap by
        // sequence and reads the store instead. A disconnection always
        // gets through (it waits for room on a runtime task).
        let push = move |info: PushInfo| -> Result<(), std::convert::Infallible> {
            if let Err(mpsc::error::TrySendError::Full(info)) = sender.try_send(info)
                && info.kind == PushKind::Disconnection
            {
                let sender = sender.clone();
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move { sender.send(info).await });
                }
            }
            Ok(())
        };
        (push, received)
    }

    async fn next(&mut self) -> Message {
        loop {
            let Some(push) = self.received.recv().await else {
                return Message::Closed;
            };
            match push.kind {
                PushKind::Message | PushKind::SMessage => {
                    if let Some(Value::BulkString(payload)) = push.data.into_iter().nth(1) {
                        return Message::Payload(payload);
                    }
                }
                PushKind::Disconnection if self.reconnects => return Message::Lost,
                PushKind::Disconnection => return Message::Closed,
                // Subscription confirmations and the like.
                _ => {}
            }
        }
    }
}

impl RedisStore {
    /// Follows `key`'s log from sequence `from` on: stored events first,
    /// then each appended batch as it is published. The subscription is
    /// its own connection, closed when the [`Follower`] drops.
    pub async fn follow(&self, key: &MatchKey, from: u64) -> Result<Follower, StoreError> {
        let channel = updates_channel(key);
        let shown = self
            .urls
            .iter()
            .map(|u| redact(u))
            .collect::<Vec<_>>()
            .join(", ");
        let unavailable = |e: redis::RedisError| {
            StoreError::Unavailable(format!("cannot subscribe to {channel} on {shown}: {e}"))
        };
        let (push, received) = Messages::queue();
        let messages = match &self.connection {
            Connection::Single(_) => {
                let url = self.urls.first().map(String::as_str).unwrap_or_default();
                let client = tls::single_client_speaking(
                    url,
                    self.tls.as_deref(),
                    redis::ProtocolVersion::RESP3,
                )
                .map_err(unavailable)?;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.options.connection_timeout))
                    .set_response_timeout(Some(self.options.response_timeout))
                    .set_push_sender(push);
                let mut connection = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(unavailable)?;
                connection.subscribe(&channel).await.map_err(unavailable)?;
                Messages {
                    received,
                    reconnects: false,
                    _connection: Subscription::Single(connection),
                }
            }
            Connection::Cluster(_) => {
                let client = tls::cluster_builder(&self.urls, self.tls.as_deref())
                    .connection_timeout(self.options.connection_timeout)
                    .response_timeout(self.options.response_timeout)
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(push)
                    .build()
                    .map_err(unavailable)?;
                let mut connection = client.get_async_connection().await.map_err(unavailable)?;
                connection.ssubscribe(&channel).await.map_err(unavailable)?;
                Messages {
                    received,
                    reconnects: true,
                    _connection: Subscription::Cluster(connection),
                }
            }
        };
        Ok(Follower {
            store: self.clone(),
            key: key.clone(),
            channel,
            next_sequence: from,
            pending: VecDeque::new(),
            behind: true,
            messages,
        })
    }
}

impl Follower {
    /// The match followed.
    pub fn key(&self) -> &MatchKey {
        &self.key
    }

    /// The sequence of the event [`Follower::next`] returns next; follow
    /// again from here after an error.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// The next event, waiting for it to be appended if need be.
    ///
    /// [`StoreError::Unavailable`] when the store or the subscription is
    /// lost; [`StoreError::Corrupt`] when a message or stored event is not
    /// what tickforge writes.
    pub async fn next(&mut self) -> Result<RecordedEvent, StoreError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.next_sequence = event.sequence + 1;
                return Ok(event);
            }
            if self.behind {
                let events = self.store.read(&self.key, self.next_sequence, PAGE).await?;
                self.behind = events.len() == PAGE;
                self.pending.extend(events);
                if !self.pending.is_empty() {
                    continue;
                }
            }
            match tokio::time::timeout(FOLLOW_POLL, self.messages.next()).await {
                Err(_idle) => self.behind = true,
                Ok(Message::Lost) => self.behind = true,
                Ok(Message::Closed) => {
                    return Err(StoreError::Unavailable(format!(
                        "subscription to {} closed",
                        self.channel
                    )));
                }
                Ok(Message::Payload(message)) => self.accept(&message)?,
            }
        }
    }

    /// Queues a published batch's events that follow on from what this
    /// follower has; a batch starting further on means events were missed.
    fn accept(&mut self, message: &[u8]) -> Result<(), StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            key: self.channel.clone(),
            reason,
        };
        let frames = codec::unframe_events(message).map_err(|e| corrupt(e.to_string()))?;
        let mut events = Vec::with_capacity(frames.len());
        for payload in frames {
            let (sequence, tick) =
                codec::decode_envelope_header(payload).map_err(|e| corrupt(e.to_string()))?;
            events.push(RecordedEvent {
                sequence,
                tick,
                payload: payload.to_vec(),
            });
        }
        for event in events {
            let expected = self.next_sequence + self.pending.len() as u64;
            if event.sequence < expected {
                continue;
            }
            if event.sequence > expected {
                // Stored before it was published: the read will find it.
                self.behind = true;
                break;
            }
            self.pending.push_back(event);
        }
        Ok(())
    }
}
