//! Admission tickets and resume tokens: HMAC-SHA256 with the server secret.
//!
//! A ticket says "player P may enter match M until time T"; a matchmaker
//! that knows the secret mints it with [`mint_ticket`]. A resume token says
//! "player P holds a slot in match M, slot epoch E"; the server hands it out
//! in its `Welcome`, and because it is checked by its MAC alone it stays
//! valid across a server restart that keeps the secret. Whether the slot
//! still exists is the server's business, not this module's.
//!
//! Everything here is pure: the time is an argument (seconds since the
//! Unix epoch), nothing is stored. The text form is lowercase hex of the
//! codec-encoded claims followed by the 32-byte tag.

use std::fmt;

use ring::hmac;

use crate::codec;
use crate::game::PlayerId;

/// Bytes of an HMAC-SHA256 tag.
const TAG_BYTES: usize = 32;
/// Longest token text accepted (hex characters).
pub const MAX_TOKEN_CHARS: usize = 1024;
/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

const KIND_TICKET: u8 = 1;
const KIND_RESUME: u8 = 2;

/// The server secret. Its `Debug` output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerSecret(Box<[u8]>);

impl fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerSecret({} bytes, redacted)", self.0.len())
    }
}

/// A secret shorter than [`MIN_SECRET_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the server secret has {len} bytes; at least {MIN_SECRET_BYTES} are needed")]
pub struct WeakSecret {
    /// The length given.
    pub len: usize,
}

impl ServerSecret {
    /// A secret from raw bytes (at least [`MIN_SECRET_BYTES`]).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, WeakSecret> {
        let bytes = bytes.into();
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(WeakSecret { len: bytes.len() });
        }
        Ok(Self(bytes.into_boxed_slice()))
    }

    /// A fresh random 32-byte secret.
    pub fn random() -> Self {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 32];
        // The system generator only fails when the OS has no entropy source
        // at all; fall back to the clock rather than refusing to start.
        if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            bytes[..16].copy_from_slice(&nanos.to_le_bytes());
        }
        Self(Box::new(bytes))
    }

    fn key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.0)
    }
}

/// What a valid ticket grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketClaims {
    /// The match.
    pub match_id: String,
    /// The player.
    pub player: PlayerId,
    /// Unix seconds after which the ticket is refused.
    pub expires_at: u64,
}

/// What a valid resume token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeClaims {
    /// The match.
    pub match_id: String,
    /// The player whose slot it is.
    pub player: PlayerId,
    /// The slot epoch it was issued for.
    pub epoch: u64,
}

/// Why a ticket or token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// Not hex, too short or too long, or its claims do not decode.
    #[error("malformed ticket: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// The MAC does not match: not minted with this secret, or altered.
    #[error("forged ticket: its signature does not match this server's secret")]
    Forged,
    /// A valid ticket whose expiry has passed.
    #[error("ticket for {player} in match {match_id:?} expired at {expired_at} (now {now})")]
    Expired {
        /// The match it was for.
        match_id: String,
        /// The player it was for.
        player: PlayerId,
        /// Its expiry, Unix seconds.
        expired_at: u64,
        /// The time of the check.
        now: u64,
    },
    /// A valid ticket or token for another match.
    #[error("ticket for {player} is for match {ticket_match:?}, not {requested:?}")]
    WrongMatch {
        /// The match it is for.
        ticket_match: String,
        /// The match asked for.
        requested: String,
        /// The player it is for.
        player: PlayerId,
    },
    /// A resume token given as a ticket or the other way round.
    #[error("expected a {expected}, got another kind of token")]
    WrongKind {
        /// "ticket" or "resume token".
        expected: &'static str,
    },
}

fn sign(secret: &ServerSecret, kind: u8, match_id: &str, player: PlayerId, n: u64) -> String {
    // Encoding a tuple of plain values cannot fail; an empty body would
    // simply fail verification later.
    let mut bytes = codec::encode(&(kind, match_id, player.0, n)).unwrap_or_default();
    let tag = hmac::sign(&secret.key(), &bytes);
    bytes.extend_from_slice(tag.as_ref());
    hex_encode(&bytes)
}

/// Checks the MAC and returns the claims (not yet checked against anything).
fn open(
    secret: &ServerSecret,
    token: &str,
    expected_kind: u8,
) -> Result<(String, PlayerId, u64), TicketError> {
    if token.len() > MAX_TOKEN_CHARS {
        return Err(TicketError::Malformed {
            reason: format!("{} characters (at most {MAX_TOKEN_CHARS})", token.len()),
        });
    }
    let bytes = hex_decode(token.trim()).ok_or_else(|| TicketError::Malformed {
        reason: "not hexadecimal".into(),
    })?;
    if bytes.len() <= TAG_BYTES {
        return Err(TicketError::Malformed {
            reason: format!("{} bytes is too short", bytes.len()),
        });
    }
    let (body, tag) = bytes.split_at(bytes.len() - TAG_BYTES);
    hmac::verify(&secret.key(), body, tag).map_err(|_| TicketError::Forged)?;
    let (kind, match_id, player, n): (u8, String, u32, u64) =
        codec::decode(body).map_err(|e| TicketError::Malformed {
            reason: e.to_string(),
        })?;
    if kind != expected_kind {
        return Err(TicketError::WrongKind {
            expected: if expected_kind == KIND_TICKET {
                "ticket"
            } else {
                "resume token"
            },
        });
    }
    Ok((match_id, PlayerId(player), n))
}

/// Mints a ticket admitting `player` to `match_id` until `expires_at`
/// (Unix seconds). This is what a matchmaker calls.
pub fn mint_ticket(
    secret: &ServerSecret,
    match_id: &str,
    player: PlayerId,
    expires_at: u64,
) -> String {
    sign(secret, KIND_TICKET, match_id, player, expires_at)
}

/// Verifies a ticket for `requested_match` at time `now` (Unix seconds).
///
/// Checks, in order: the format, the MAC ([`TicketError::Forged`]), the
/// match ([`TicketError::WrongMatch`]), the expiry ([`TicketError::Expired`]).
pub fn verify_ticket(
    secret: &ServerSecret,
    ticket: &str,
    requested_match: &str,
    now: u64,
) -> Result<TicketClaims, TicketError> {
    let (match_id, player, expires_at) = open(secret, ticket, KIND_TICKET)?;
    if match_id != requested_match {
        return Err(TicketError::WrongMatch {
            ticket_match: match_id,
            requested: requested_match.to_owned(),
            player,
        });
    }
    if now > expires_at {
        return Err(TicketError::Expired {
            match_id,
            player,
            expired_at: expires_at,
            now,
        });
    }
    Ok(TicketClaims {
        match_id,
        player,
        expires_at,
    })
}

/// Mints the resume token of `player`'s slot in `match_id` at `epoch`.
pub fn mint_resume_token(
    secret: &ServerSecret,
    match_id: &str,
    player: PlayerId,
    epoch: u64,
) -> String {
    sign(secret, KIND_RESUME, match_id, player, epoch)
}

/// Verifies a resume token for `requested_match`. Tokens do not expire by
/// themselves: the slot they name does (the server's grace window).
pub fn verify_resume_token(
    secret: &ServerSecret,
    token: &str,
    requested_match: &str,
) -> Result<ResumeClaims, TicketError> {
    let (match_id, player, epoch) = open(secret, token, KIND_RESUME)?;
    if match_id != requested_match {
        return Err(TicketError::WrongMatch {
            ticket_match: match_id,
            requested: requested_match.to_owned(),
            player,
        });
    }
    Ok(ResumeClaims {
        match_id,
        player,
        epoch,
    })
}

/// Seconds since the Unix epoch by the system clock (0 if it is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let text = text.as_bytes();
    if text.len() % 2 != 0 {
        return None;
    }
    text.chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secret() -> ServerSecret {
        ServerSecret::new(*b"0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn a_minted_ticket_verifies_until_it_expires() {
        let t = mint_ticket(&secret(), "m1", PlayerId(3), 1_000);
        let claims = verify_ticket(&secret(), &t, "m1", 1_000).unwrap();
        assert_eq!(claims.player, PlayerId(3));
        assert!(matches!(
            verify_ticket(&secret(), &t, "m1", 1_001),
            Err(TicketError::Expired {
                expired_at: 1_000,
                player: PlayerId(3),
                ..
            })
        ));
    }

    #[test]
    fn each_refusal_has_its_own_error() {
        let t = mint_ticket(&secret(), "m1", PlayerId(3), 1_000);
        let other = ServerSecret::new(*b"another secret of enough bytes!!").unwrap();
        assert_eq!(verify_ticket(&other, &t, "m1", 0), Err(TicketError::Forged));
        assert!(matches!(
            verify_ticket(&secret(), &t, "m2", 0),
            Err(TicketError::WrongMatch { .. })
        ));
        assert!(matches!(
            verify_ticket(&secret(), "zz", "m1", 0),
            Err(TicketError::Malformed { .. })
        ));
        // Flip one bit of the claims: the MAC no longer matches.
        let mut bytes = hex_decode(&t).unwrap();
        bytes[3] ^= 1;
        assert_eq!(
            verify_ticket(&secret(), &hex_encode(&bytes), "m1", 0),
            Err(TicketError::Forged)
        );
        let token = mint_resume_token(&secret(), "m1", PlayerId(3), 5);
        assert!(matches!(
            verify_ticket(&secret(), &token, "m1", 0),
            Err(TicketError::WrongKind { .. })
        ));
    }

    #[test]
    fn resume_tokens_carry_the_epoch() {
        let token = mint_resume_token(&secret(), "m1", PlayerId(3), 42);
        let claims = verify_resume_token(&secret(), &token, "m1").unwrap();
        assert_eq!((claims.player, claims.epoch), (PlayerId(3), 42));
        assert!(verify_resume_token(&secret(), &token, "m2").is_err());
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(ServerSecret::new(*b"short"), Err(WeakSecret { len: 5 }));
        assert!(!format!("{:?}", secret()).contains("0123"));
    }

    proptest! {
        #[test]
        fn garbage_tokens_never_verify(text in ".{0,300}") {
            prop_assert!(verify_ticket(&secret(), &text, "m1", 0).is_err());
            prop_assert!(verify_resume_token(&secret(), &text, "m1").is_err());
        }
    }
}
