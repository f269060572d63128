//! One connection's inbound side: the `Hello`/`Welcome` exchange on the
//! control stream, then reader tasks (control stream, state streams) that
//! hand decoded messages to the driver, and the decoding of state
//! datagrams, which the driver reads itself (one per tick, with no task or
//! queue in between; while the driver is busy they wait in quinn's receive
//! buffer, which drops the oldest when full). No session state here; the
//! driver owns it.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{ClientConfig, ClientError, ClientStats, connection_error};
use crate::game::Game;
use crate::net::protocol::{self, ClientMsg, FrameBuffer, Hello, ServerMsg, Welcome};

/// What the per-connection reader tasks hand the driver.
pub(super) enum Inbound<E> {
    /// A message of the control stream.
    Control(ServerMsg<E>),
    /// A state that came on its own stream (too large for a datagram, or final).
    StreamState(ServerMsg<E>),
    /// The server broke the protocol; why.
    Broken(String),
}

/// One connection's streams and readers.
pub(super) struct Link<G: Game> {
    pub(super) send: quinn::SendStream,
    pub(super) inbox: mpsc::Receiver<Inbound<G::Event>>,
    pub(super) readers: JoinSet<()>,
    pub(super) welcome: Welcome,
}

impl<G: Game> Link<G> {
    /// Opens the control stream, says hello, waits for the welcome and
    /// starts the readers.
    pub(super) async fn open(
        conn: &quinn::Connection,
        hello: &Hello,
        config: &ClientConfig,
        stats: &Arc<ClientStats>,
    ) -> Result<Self, ClientError> {
        let lost = |e: &quinn::ConnectionError| connection_error(e);
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
        let frame =
            protocol::encode_frame(&ClientMsg::<G::Command>::Hello(hello.clone()), usize::MAX)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
        if send.write_all(&frame).await.is_err() {
            return Err(closed_error(conn).await);
        }
        let mut frames = FrameBuffer::new(config.max_message_bytes);
        let welcome = loop {
            match frames.next_frame::<ServerMsg<G::Event>>() {
                Ok(Some(ServerMsg::Welcome(welcome))) => break welcome,
                Ok(Some(other)) => {
                    return Err(ClientError::Protocol(format!(
                        "expected a Welcome, got {}",
                        kind(&other)
                    )));
                }
                Ok(None) => {}
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
            let read =
                tokio::time::timeout(Duration::from_secs(15), recv.read_chunk(64 * 1024, true))
                    .await;
            match read {
                Ok(Ok(Some(chunk))) => {
                    stats.bytes_in.fetch_add(chunk.bytes.len() as u64, Relaxed);
                    frames.extend(&chunk.bytes);
                }
                Ok(Ok(None)) | Ok(Err(_)) => return Err(closed_error(conn).await),
                Err(_) => return Err(ClientError::Lost("no Welcome in time".into())),
            }
        };
        let (tx, inbox) = mpsc::channel(1024);
        let mut readers = JoinSet::new();
        readers.spawn(read_control::<G>(recv, frames, tx.clone(), stats.clone()));
        readers.spawn(accept_state_streams::<G>(
            conn.clone(),
            config.max_message_bytes,
            tx,
            stats.clone(),
        ));
        Ok(Self {
            send,
            inbox,
            readers,
            welcome,
        })
    }
}

/// The error a closed connection reports (waiting briefly for the close frame).
pub(super) async fn closed_error(conn: &quinn::Connection) -> ClientError {
    match tokio::time::timeout(Duration::from_secs(2), conn.closed()).await {
        Ok(e) => connection_error(&e),
        Err(_) => ClientError::Lost("the server stopped answering".into()),
    }
}

fn kind<E>(msg: &ServerMsg<E>) -> &'static str {
    match msg {
        ServerMsg::Welcome(_) => "Welcome",
        ServerMsg::CommandResult { .. } => "CommandResult",
        ServerMsg::Event { .. } => "Event",
        ServerMsg::StateFull { .. } => "StateFull",
        ServerMsg::StateDelta { .. } => "StateDelta",
        ServerMsg::MatchOver { .. } => "MatchOver",
        ServerMsg::Closing { .. } => "Closing",
        ServerMsg::InputRejected { .. } => "InputRejected",
        ServerMsg::Acked { .. } => "Acked",
    }
}

async fn read_control<G: Game>(
    mut recv: quinn::RecvStream,
    mut frames: FrameBuffer,
    tx: mpsc::Sender<Inbound<G::Event>>,
    stats: Arc<ClientStats>,
) {
    loop {
        loop {
            match frames.next_frame::<ServerMsg<G::Event>>() {
                Ok(Some(msg)) => {
                    if tx.send(Inbound::Control(msg)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Inbound::Broken(e.to_string())).await;
                    return;
                }
            }
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => {
                stats.bytes_in.fetch_add(chunk.bytes.len() as u64, Relaxed);
                frames.extend(&chunk.bytes);
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// Counts and decodes a state datagram; a datagram that does not decode
/// is the server breaking the protocol (the reason says why).
pub(super) fn decode_datagram<G: Game>(
    bytes: &[u8],
    limit: usize,
    stats: &ClientStats,
) -> Result<ServerMsg<G::Event>, String> {
    stats.bytes_in.fetch_add(bytes.len() as u64, Relaxed);
    stats.datagrams.fetch_add(1, Relaxed);
    protocol::decode_datagram(bytes, limit).map_err(|e| format!("bad datagram: {e}"))
}

async fn accept_state_streams<G: Game>(
    conn: quinn::Connection,
    limit: usize,
    tx: mpsc::Sender<Inbound<G::Event>>,
    stats: Arc<ClientStats>,
) {
    let mut streams = JoinSet::new();
    while let Ok(mut stream) = conn.accept_uni().await {
        let tx = tx.clone();
        let stats = stats.clone();
        streams.spawn(async move {
            let Ok(bytes) = stream
                .read_to_end(limit + protocol::FRAME_HEADER_BYTES)
                .await
            else {
                return;
            };
            stats.bytes_in.fetch_add(bytes.len() as u64, Relaxed);
            match protocol::decode_frame::<ServerMsg<G::Event>>(&bytes, limit) {
                Ok((msg, _)) => {
                    let _ = tx.send(Inbound::StreamState(msg)).await;
                }
                Err(e) => {
                    let _ = tx
                        .send(Inbound::Broken(format!("bad state stream: {e}")))
                        .await;
                }
            }
        });
        // Reap finished readers so the set stays small.
        while streams.try_join_next().is_some() {}
    }
}
