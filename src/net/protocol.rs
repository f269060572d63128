//! The wire protocol: message types and framing, with no I/O.
//!
//! The protocol version is the ALPN string [`ALPN`]; a peer speaking another
//! version fails the TLS handshake. On a reliable stream every message is a
//! frame: a 4-byte big-endian length, then the message encoded by
//! [`crate::codec`] (version byte plus body). A datagram holds exactly one
//! encoded message and no length: a [`ServerMsg`] state from the server, a
//! [`ClientDatagram`] (player inputs and the state acknowledgement) from the
//! client. Decoding never trusts a length: a frame
//! over the limit is [`FrameError::TooLarge`] as soon as its header is seen,
//! a short buffer is [`FrameError::Incomplete`], and bytes that do not
//! decode are [`FrameError::Malformed`]. Sockets and buffering belong to
//! [`super::server`] and [`super::client`]; `docs/PROTOCOL.md` is the
//! reference for other implementations.

use serde::{Deserialize, Serialize};

use crate::codec::{self, DecodeError, EncodeError};
use crate::engine::EventEnvelope;
use crate::game::{PlayerId, Tick};

/// The ALPN protocol id: names this protocol and its version.
pub const ALPN: &[u8] = b"tickforge/3";

/// Unacknowledged inputs a client may have, and so the most one
/// [`ClientDatagram::Input`] carries.
pub const INPUT_WINDOW: usize = 16;

/// Bytes of the length prefix of a frame.
pub const FRAME_HEADER_BYTES: usize = 4;

/// The default largest frame body accepted (64 KiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;

/// Application error codes a connection is closed with.
///
/// The close reason carries a human-readable text as well; the code is
/// what programs act on. Codes below 16 are about the connection, from 16
/// on about admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
#[non_exhaustive]
pub enum CloseCode {
    /// A normal close (the client left, or the match ended).
    Normal = 0,
    /// The server is shutting down; resume later with the same token.
    ServerShutdown = 1,
    /// A frame or datagram did not decode, or a message came out of order.
    Malformed = 2,
    /// A frame was larger than the server's limit.
    FrameTooLarge = 3,
    /// Commands or frames came faster than the per-connection limit.
    RateLimited = 4,
    /// The client fell too far behind on reliable events.
    Lagging = 5,
    /// No `Hello` arrived in time.
    HelloTimeout = 6,
    /// The client stopped reading: a reliable write (a control frame, or a
    /// state on its own stream) found no room for `net.write_timeout_ms`.
    SlowReader = 7,
    /// The client has more commands unanswered than its reply queue holds
    /// (it sends but does not read): further replies would be lost.
    ReplyQueueFull = 8,
    /// The ticket's MAC does not match: not minted with this server's secret.
    TicketForged = 16,
    /// The ticket's expiry has passed.
    TicketExpired = 17,
    /// The ticket or token is for another match than the one asked for.
    WrongMatch = 18,
    /// The ticket or token is not in the ticket format.
    TicketMalformed = 19,
    /// The resume token's slot is gone (grace window over, or superseded).
    ResumeRefused = 20,
    /// A `Hello` without a ticket while open mode is off.
    OpenModeDisabled = 21,
    /// The match does not exist here and cannot be created.
    UnknownMatch = 22,
    /// The match is over.
    MatchOver = 23,
    /// The game refused to let the player join.
    JoinRejected = 24,
    /// A newer connection took this player's slot.
    Replaced = 25,
    /// The server failed internally (engine or store); try again later.
    Internal = 26,
    /// The match's game code failed (a panic); the match has ended with
    /// the reason in the close text.
    MatchFailed = 27,
    /// The match is hosted by another node of the fleet: the reason starts
    /// with that node's QUIC address (`host:port`, then a space and the
    /// explanation). Reconnect there with the same `Hello` (see
    /// [`redirect_reason`] and [`parse_redirect`]).
    Redirect = 28,
    /// The server has no room for another session or match now: the reason
    /// starts with how long to wait, in milliseconds (see [`retry_reason`]
    /// and [`parse_retry_after`]). Retry then, here or on another node.
    ServerFull = 29,
    /// The match is between nodes (its owner died and the lease has not
    /// expired yet, or a hand-over is in flight): the reason starts with
    /// how long to wait, in milliseconds. Retry then, on any node.
    MatchMoving = 30,
}

impl CloseCode {
    /// Every code, for lookups.
    pub const ALL: [CloseCode; 24] = [
        CloseCode::Normal,
        CloseCode::ServerShutdown,
        CloseCode::Malformed,
        CloseCode::FrameTooLarge,
        CloseCode::RateLimited,
        CloseCode::Lagging,
        CloseCode::HelloTimeout,
        CloseCode::SlowReader,
        CloseCode::ReplyQueueFull,
        CloseCode::TicketForged,
        CloseCode::TicketExpired,
        CloseCode::WrongMatch,
        CloseCode::TicketMalformed,
        CloseCode::ResumeRefused,
        CloseCode::OpenModeDisabled,
        CloseCode::UnknownMatch,
        CloseCode::MatchOver,
        CloseCode::JoinRejected,
        CloseCode::Replaced,
        CloseCode::Internal,
        CloseCode::MatchFailed,
        CloseCode::Redirect,
        CloseCode::ServerFull,
        CloseCode::MatchMoving,
    ];

    /// The numeric code sent on the wire.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The code for a number received on the wire, if it is one of ours.
    pub fn from_code(code: u64) -> Option<CloseCode> {
        CloseCode::ALL
            .into_iter()
            .find(|c| u64::from(c.code()) == code)
    }

    /// Whether a client should reconnect (with its resume token) after a
    /// close with this code. Admission refusals and protocol violations
    /// are final; a shutdown, falling behind (lag, a slow reader, unread
    /// replies), a server failure, or a `Hello` that reached an overloaded
    /// server too late are not.
    pub fn may_resume(self) -> bool {
        matches!(
            self,
            CloseCode::ServerShutdown
                | CloseCode::HelloTimeout
                | CloseCode::Lagging
                | CloseCode::SlowReader
                | CloseCode::ReplyQueueFull
                | CloseCode::Internal
        )
    }

    /// Whether the same `Hello` should be sent again, after the wait or to
    /// the address the reason names: a redirect, a full server, a match
    /// between nodes.
    pub fn retry_hello(self) -> bool {
        matches!(
            self,
            CloseCode::Redirect | CloseCode::ServerFull | CloseCode::MatchMoving
        )
    }
}

/// The close reason of a [`CloseCode::Redirect`] to `addr` (`host:port`).
pub fn redirect_reason(addr: &str, why: &str) -> String {
    format!("{addr} {why}")
}

/// The address a [`CloseCode::Redirect`] reason names, if it names one.
pub fn parse_redirect(reason: &str) -> Option<&str> {
    let addr = reason.split_whitespace().next()?;
    addr.contains(':').then_some(addr)
}

/// The close reason of a [`CloseCode::ServerFull`] or
/// [`CloseCode::MatchMoving`] asking to retry after `after`.
pub fn retry_reason(after: std::time::Duration, why: &str) -> String {
    format!("{} {why}", after.as_millis())
}

/// The longest wait a server asks for in a [`retry_reason`]: a full node
/// asks for longer waits the more clients it refuses, up to this, and the
/// client library waits no longer than this whatever it is asked.
pub const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// The wait a [`CloseCode::ServerFull`] or [`CloseCode::MatchMoving`]
/// reason asks for, if it gives one.
pub fn parse_retry_after(reason: &str) -> Option<std::time::Duration> {
    let millis = reason.split_whitespace().next()?.parse::<u64>().ok()?;
    Some(std::time::Duration::from_millis(millis.min(60_000)))
}

/// Whether a connection plays or only watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Holds a slot in the match and sends commands.
    Player,
    /// Read-only: receives states and events, sends no commands.
    Spectator,
}

/// How a client proves it may enter a match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Credential {
    /// An admission ticket minted with the server secret (see [`super::tickets`]).
    Ticket(String),
    /// The resume token from an earlier `Welcome`.
    Resume(String),
    /// No proof: only accepted by a server in open mode.
    Open,
}

/// The first message on a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The match to enter.
    pub match_id: String,
    /// Ticket, resume token, or nothing (open mode).
    pub credential: Credential,
    /// Player or spectator.
    pub role: Role,
    /// The game's join payload (its `Game::Join`, encoded), used when the
    /// server makes the join command; `None` joins with the default payload.
    pub join: Option<Vec<u8>>,
    /// The game's match parameters (its `Game::Params`, encoded) for a
    /// match this Hello creates (open mode); `None` means the defaults.
    pub params: Option<Vec<u8>>,
    /// On a resume: every reliable event below this sequence was received;
    /// the server sends the ones from here on that it still can.
    pub events_from: Option<u64>,
}

/// Client to server, on the control stream. `C` is the game's command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMsg<C> {
    /// The first frame of a connection; exactly once.
    Hello(Hello),
    /// A command, numbered by the client; answered by a `CommandResult`.
    Command {
        /// The client's number for it, echoed in the result.
        client_seq: u64,
        /// The game command.
        command: C,
    },
    /// The state of `tick` was received and may serve as a delta baseline.
    Ack {
        /// The tick acknowledged.
        tick: Tick,
    },
}

/// Client to server, one per QUIC datagram (protocol 3). `C` is the game's command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientDatagram<C> {
    /// The client's unacknowledged inputs and its latest applied state.
    Input {
        /// The latest state tick the client applied (a possible delta
        /// baseline), if any.
        ack: Option<Tick>,
        /// The input sequence of `commands[0]`; the others follow on
        /// consecutively. Input sequences count from 1 per connection.
        first_seq: u64,
        /// Every input not acknowledged yet, oldest first, at most
        /// [`INPUT_WINDOW`] (none: the datagram only acknowledges a state).
        commands: Vec<C>,
    },
}

/// The server's answer to one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandStatus {
    /// Applied on `tick` as events `first_sequence..first_sequence + events`.
    Accepted {
        /// The tick it was applied on; the first state at or after it shows it.
        tick: Tick,
        /// Sequence of its first event.
        first_sequence: u64,
        /// How many events it produced.
        events: u32,
    },
    /// Refused; nothing changed.
    Rejected {
        /// Why, for the player.
        reason: String,
    },
}

/// The server's answer to a `Hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The match entered.
    pub match_id: String,
    /// The player slot held (`None` for a spectator).
    pub player: Option<PlayerId>,
    /// Player or spectator.
    pub role: Role,
    /// The token to resume this slot after a drop (players only).
    pub resume_token: Option<String>,
    /// The match's tick when admitted.
    pub tick: Tick,
    /// Reliable events are sent from this sequence on.
    pub events_from: u64,
    /// The match's tick rate.
    pub tick_hz: u32,
    /// A state is sent every this many ticks.
    pub state_every_ticks: u64,
    /// How long the slot is kept after a drop, in milliseconds.
    pub grace_ms: u64,
}

/// Server to client. `E` is the game's event type. States travel as the
/// codec encoding of the game state (whole or as a [`super::delta`] patch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMsg<E> {
    /// Admission succeeded; first frame on the control stream.
    Welcome(Welcome),
    /// The outcome of the command the client numbered `client_seq`.
    CommandResult {
        /// The client's number for the command.
        client_seq: u64,
        /// Accepted or rejected.
        status: CommandStatus,
    },
    /// A reliable event. No reliable event has a sequence in
    /// `since..envelope.sequence`: a client that has not seen everything
    /// below `since` has a gap.
    Event {
        /// Reliable events below this were all sent before (or before the
        /// client's resume point).
        since: u64,
        /// The event with its sequence, tick and player.
        envelope: EventEnvelope<E>,
    },
    /// A whole state (datagram, or a stream when too large or final).
    StateFull {
        /// The tick it is the state after.
        tick: Tick,
        /// Whether the match is over.
        over: bool,
        /// The encoded state.
        state: Vec<u8>,
    },
    /// A state as a delta against a state the client acknowledged.
    StateDelta {
        /// The tick it is the state after.
        tick: Tick,
        /// Whether the match is over.
        over: bool,
        /// How many ticks before `tick` the baseline is: the state of
        /// `tick - baseline_age`, which the client acknowledged.
        baseline_age: u32,
        /// Length of the new encoding.
        len: u32,
        /// The compressed XOR of baseline and new encodings.
        patch: Vec<u8>,
    },
    /// The match ended at `tick`; the final state follows reliably.
    MatchOver {
        /// The last tick.
        tick: Tick,
    },
    /// The server is about to close the connection, and why.
    Closing {
        /// A [`CloseCode`] number.
        code: u32,
        /// Human-readable reason.
        reason: String,
    },
    /// The input numbered `seq` was refused; nothing changed (control
    /// stream, protocol 3).
    InputRejected {
        /// The input's sequence number.
        seq: u64,
        /// Why, for the player.
        reason: String,
    },
    /// A state (`StateFull` or `StateDelta`) with the client's input
    /// acknowledgements (protocol 3). Built by [`acked_datagram`] from the
    /// state's shared encoding.
    Acked {
        /// Every input up to this sequence was processed: applied, or
        /// rejected with an `InputRejected` frame.
        through: u64,
        /// The inputs up to `through` that were applied were applied on
        /// or before this tick.
        tick: Tick,
        /// Inputs of this connection rejected so far (each with its own
        /// `InputRejected` frame).
        rejected: u64,
        /// The state; never another `Acked`.
        #[serde(deserialize_with = "deserialize_acked_state")]
        state: Box<ServerMsg<E>>,
    },
}

/// Declaration index of [`ServerMsg::Acked`]: the variant index its
/// encoding starts with.
const ACKED_VARIANT_INDEX: u32 = 8;

/// Builds the datagram `ServerMsg::Acked { through, tick, rejected, state }`
/// from `state`, the codec encoding of the state message: a short prefix
/// (version byte, variant index, the three numbers) followed by `state`
/// without its version byte, so the state's encoding is shared by every
/// client and only the prefix is per client.
pub fn acked_datagram(
    through: u64,
    tick: Tick,
    rejected: u64,
    state: &[u8],
) -> Result<Vec<u8>, EncodeError> {
    let body = codec::body(state)
        .map_err(|e| EncodeError::Failed(format!("not an encoded state: {e}")))?;
    let mut out = Vec::with_capacity(state.len() + 16);
    codec::encode_into(&(ACKED_VARIANT_INDEX, through, tick, rejected), &mut out)?;
    out.extend_from_slice(body);
    if out.len() > codec::MAX_DECODE_BYTES {
        return Err(EncodeError::TooLarge {
            len: out.len(),
            limit: codec::MAX_DECODE_BYTES,
        });
    }
    Ok(out)
}

std::thread_local! {
    /// Whether an `Acked` state is being decoded on this thread.
    static IN_ACKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Decodes the state inside an `Acked`, refusing another `Acked` there
/// before it is decoded: nesting would only let a peer recurse the decoder
/// as deep as its bytes allow.
fn deserialize_acked_state<'de, D, E>(deserializer: D) -> Result<Box<ServerMsg<E>>, D::Error>
where
    D: serde::Deserializer<'de>,
    E: Deserialize<'de>,
{
    if IN_ACKED.with(|nested| nested.replace(true)) {
        return Err(serde::de::Error::custom("an Acked inside an Acked"));
    }
    let state = ServerMsg::<E>::deserialize(deserializer);
    IN_ACKED.with(|nested| nested.set(false));
    state.map(Box::new)
}

/// Why a frame could not be taken from a buffer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// More bytes are needed; not an error of the peer.
    #[error("incomplete frame: {needed} more bytes needed")]
    Incomplete {
        /// Bytes missing for the header or the body.
        needed: usize,
    },
    /// The header announces a frame over the limit.
    #[error("frame of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The frame body is not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(#[from] DecodeError),
}

/// Why a message could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeFrameError {
    /// The codec failed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The message is larger than the frame limit.
    #[error("message of {len} bytes exceeds the {limit}-byte frame limit")]
    TooLarge {
        /// The encoded length.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

/// Encodes `msg` as one frame: length prefix plus codec encoding.
pub fn encode_frame<T: Serialize>(msg: &T, limit: usize) -> Result<Vec<u8>, EncodeFrameError> {
    let mut out = vec![0u8; FRAME_HEADER_BYTES];
    codec::encode_into(msg, &mut out)?;
    let len = out.len() - FRAME_HEADER_BYTES;
    if len > limit || len > u32::MAX as usize {
        return Err(EncodeFrameError::TooLarge { len, limit });
    }
    out[..FRAME_HEADER_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Checks the frame at the start of `buf`: its total length (header
/// included) when complete, else why not. Looks at the header only.
pub fn check_frame(buf: &[u8], limit: usize) -> Result<usize, FrameError> {
    let Some(header) = buf.get(..FRAME_HEADER_BYTES) else {
        return Err(FrameError::Incomplete {
            needed: FRAME_HEADER_BYTES - buf.len(),
        });
    };
    let mut len_bytes = [0u8; FRAME_HEADER_BYTES];
    len_bytes.copy_from_slice(header);
    let len = u32::from_be_bytes(len_bytes) as usize;
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    let total = FRAME_HEADER_BYTES + len;
    if buf.len() < total {
        return Err(FrameError::Incomplete {
            needed: total - buf.len(),
        });
    }
    Ok(total)
}

/// Decodes the frame at the start of `buf`; returns it and the bytes it used.
pub fn decode_frame<T: serde::de::DeserializeOwned>(
    buf: &[u8],
    limit: usize,
) -> Result<(T, usize), FrameError> {
    let total = check_frame(buf, limit)?;
    let msg = codec::decode(&buf[FRAME_HEADER_BYTES..total])?;
    Ok((msg, total))
}

/// Encodes `msg` for a datagram (no length prefix).
pub fn encode_datagram<T: Serialize>(msg: &T) -> Result<Vec<u8>, EncodeError> {
    codec::encode(msg)
}

/// The frame (length header plus body) carrying the same message as an
/// encoded datagram, for a state too large to go as a datagram.
pub fn frame_datagram(datagram: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + datagram.len());
    frame.extend_from_slice(&(datagram.len() as u32).to_be_bytes());
    frame.extend_from_slice(datagram);
    frame
}

/// Decodes a datagram, refusing one over `limit` bytes before decoding.
pub fn decode_datagram<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    limit: usize,
) -> Result<T, FrameError> {
    if bytes.len() > limit {
        return Err(FrameError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    Ok(codec::decode(bytes)?)
}

/// Accumulates stream bytes and hands out whole frames.
///
/// Holds at most one frame's worth of bytes beyond what was pushed last: a
/// header announcing more than the limit is refused before its body is
/// buffered.
#[derive(Debug)]
pub struct FrameBuffer {
    buf: Vec<u8>,
    start: usize,
    limit: usize,
}

impl FrameBuffer {
    /// An empty buffer refusing frames over `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            limit,
        }
    }

    /// Appends bytes read from the stream.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that are not yet part of a returned frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame<T: serde::de::DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        match decode_frame(&self.buf[self.start..], self.limit) {
            Ok((msg, used)) => {
                self.start += used;
                if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
                    self.buf.drain(..self.start);
                    self.start = 0;
                }
                Ok(Some(msg))
            }
            Err(FrameError::Incomplete { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Msg = ClientMsg<String>;

    fn hello() -> Msg {
        ClientMsg::Hello(Hello {
            match_id: "m1".into(),
            credential: Credential::Open,
            role: Role::Player,
            join: Some(b"ada".to_vec()),
            params: None,
            events_from: None,
        })
    }

    #[test]
    fn frames_round_trip_and_split_anywhere() {
        let msgs = vec![
            hello(),
            ClientMsg::Command {
                client_seq: 7,
                command: "fire".to_owned(),
            },
            ClientMsg::Ack { tick: 99 },
        ];
        let mut wire = Vec::new();
        for m in &msgs {
            wire.extend(encode_frame(m, 1024).unwrap());
        }
        for split in 0..wire.len() {
            let mut buf = FrameBuffer::new(1024);
            let mut out = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                buf.extend(part);
                while let Some(m) = buf.next_frame::<Msg>().unwrap() {
                    out.push(m);
                }
            }
            assert_eq!(out, msgs, "split at {split}");
            assert_eq!(buf.buffered(), 0);
        }
    }

    #[test]
    fn incomplete_too_large_and_malformed_are_distinct() {
        assert_eq!(
            check_frame(&[0, 0], 10),
            Err(FrameError::Incomplete { needed: 2 })
        );
        assert_eq!(
            check_frame(&[0, 0, 0, 5, 1], 10),
            Err(FrameError::Incomplete { needed: 4 })
        );
        assert_eq!(
            check_frame(&[0, 1, 0, 0], 10),
            Err(FrameError::TooLarge {
                len: 65536,
                limit: 10
            })
        );
        assert!(matches!(
            decode_frame::<Msg>(&[0, 0, 0, 2, 9, 9], 10),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            decode_frame::<Msg>(&[0, 0, 0, 0], 10),
            Err(FrameError::Malformed(DecodeError::Empty))
        ));
    }

    #[test]
    fn oversized_messages_are_not_encoded() {
        let big = ClientMsg::Command {
            client_seq: 1,
            command: "x".repeat(100),
        };
        assert!(matches!(
            encode_frame(&big, 50),
            Err(EncodeFrameError::TooLarge { .. })
        ));
    }

    fn sample_states() -> Vec<ServerMsg<String>> {
        vec![
            ServerMsg::StateFull {
                tick: 300,
                over: false,
                state: vec![1, 2, 3, 250, 251],
            },
            ServerMsg::StateDelta {
                tick: 70_000,
                over: true,
                baseline_age: 2,
                len: 900,
                patch: vec![9; 40],
            },
        ]
    }

    #[test]
    fn a_prefix_and_a_shared_state_decode_as_acked() {
        for state in sample_states() {
            let shared = encode_datagram(&state).unwrap();
            for (through, tick, rejected) in [
                (0, 0, 0),
                (1, 2, 3),
                (300, 70_000, 250),
                (u64::MAX, 1 << 40, 65_536),
            ] {
                let datagram = acked_datagram(through, tick, rejected, &shared).unwrap();
                let expected = ServerMsg::Acked {
                    through,
                    tick,
                    rejected,
                    state: Box::new(state.clone()),
                };
                assert_eq!(
                    decode_datagram::<ServerMsg<String>>(&datagram, 1 << 20).unwrap(),
                    expected
                );
                assert_eq!(datagram, encode_datagram(&expected).unwrap());
            }
        }
        assert!(acked_datagram(1, 1, 0, &[]).is_err());
        assert!(acked_datagram(1, 1, 0, &[99, 3]).is_err());
    }

    #[test]
    fn an_acked_inside_an_acked_is_refused() {
        let state = encode_datagram(&sample_states()[0]).unwrap();
        let once = acked_datagram(1, 1, 0, &state).unwrap();
        let twice = acked_datagram(2, 2, 0, &once).unwrap();
        assert!(matches!(
            decode_datagram::<ServerMsg<String>>(&twice, 1 << 20),
            Err(FrameError::Malformed(_))
        ));
        // The guard is reset: the next decode works.
        assert!(decode_datagram::<ServerMsg<String>>(&once, 1 << 20).is_ok());
    }

    #[test]
    fn input_datagrams_round_trip() {
        let input = ClientDatagram::Input {
            ack: Some(41),
            first_seq: 7,
            commands: vec!["left".to_owned(), "fire".to_owned()],
        };
        let bytes = encode_datagram(&input).unwrap();
        assert_eq!(
            decode_datagram::<ClientDatagram<String>>(&bytes, 1200).unwrap(),
            input
        );
        let ack_only = ClientDatagram::<String>::Input {
            ack: Some(3),
            first_seq: 1,
            commands: Vec::new(),
        };
        // Version, variant, Some, tick, first_seq, no commands.
        assert_eq!(
            encode_datagram(&ack_only).unwrap(),
            vec![codec::FORMAT_VERSION, 0, 1, 3, 1, 0]
        );
    }

    #[test]
    fn close_codes_round_trip() {
        for code in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(code.code().into()), Some(code));
        }
        assert_eq!(CloseCode::from_code(999), None);
    }

    #[test]
    fn redirect_and_retry_reasons_parse_back() {
        let reason = redirect_reason("node-b.fleet:4433", "the match lives there");
        assert_eq!(parse_redirect(&reason), Some("node-b.fleet:4433"));
        assert_eq!(parse_redirect("[::1]:4433 moved"), Some("[::1]:4433"));
        assert_eq!(parse_redirect("moved elsewhere"), None);
        assert_eq!(parse_redirect(""), None);
        let wait = std::time::Duration::from_millis(250);
        assert_eq!(parse_retry_after(&retry_reason(wait, "full")), Some(wait));
        assert_eq!(
            parse_retry_after("999999 much later"),
            Some(std::time::Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-5 moving"), None);
        assert!(CloseCode::Redirect.retry_hello() && !CloseCode::Redirect.may_resume());
        assert!(!CloseCode::ServerShutdown.retry_hello());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut buf = FrameBuffer::new(64);
            buf.extend(&bytes);
            for _ in 0..8 {
                match buf.next_frame::<ClientMsg<Vec<u8>>>() {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
            let _ = decode_datagram::<ServerMsg<String>>(&bytes, 100);
            let _ = decode_datagram::<ClientDatagram<Vec<u8>>>(&bytes, 100);
        }
    }
}
