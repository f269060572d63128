//! The one place that knows the wire and storage encoding.
//!
//! Every byte string tickforge writes (events, snapshots, protocol frames)
//! is a format-version byte followed by a bincode 2 (serde) body. Decoding
//! checks the version, refuses input over a hard size limit before touching
//! it, caps every allocation the body asks for, and rejects trailing bytes,
//! so garbage, truncated or oversized input is an error and never a panic or
//! a large allocation. Nothing outside this module names bincode.

use serde::{Serialize, de::DeserializeOwned};

/// Version byte that prefixes every encoded value. Version 2 added the
/// schema version and the optional player to stored event envelopes.
pub const FORMAT_VERSION: u8 = 2;

/// Largest encoded value accepted by [`decode`] (4 MiB).
pub const MAX_DECODE_BYTES: usize = 4 * 1024 * 1024;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_DECODE_BYTES>,
>;

const CONFIG: Config = bincode::config::standard().with_limit::<MAX_DECODE_BYTES>();

/// Why a value could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The serializer refused the value.
    #[error("encoding failed: {0}")]
    Failed(String),
    /// The encoding would be larger than [`decode`] accepts, so it could
    /// never be read back; nothing is written.
    #[error("encoding of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Length of the encoding.
        len: usize,
        /// The limit in force ([`MAX_DECODE_BYTES`]).
        limit: usize,
    },
}

/// Why a byte string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input held no bytes at all.
    #[error("empty input")]
    Empty,
    /// The input was longer than [`MAX_DECODE_BYTES`].
    #[error("input of {len} bytes exceeds the {limit}-byte decode limit")]
    TooLarge {
        /// Length of the refused input.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The version byte is not [`FORMAT_VERSION`].
    #[error("unsupported format version {found} (this build reads {FORMAT_VERSION})")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// The body is not a valid encoding of the expected type.
    #[error("malformed input: {0}")]
    Malformed(String),
    /// A valid value was followed by extra bytes.
    #[error("{0} trailing bytes after a complete value")]
    TrailingBytes(usize),
}

/// Encodes `value` as the format version byte plus its bincode body.
/// An encoding over [`MAX_DECODE_BYTES`] is refused: nothing is written
/// that [`decode`] would refuse to read back.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Appends the encoding of `value` (version byte plus body, exactly what
/// [`encode`] returns) to `out`, so a caller can put a header before it
/// without copying.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    out.push(FORMAT_VERSION);
    if let Err(e) = bincode::serde::encode_into_std_write(value, out, CONFIG) {
        out.truncate(start);
        return Err(EncodeError::Failed(e.to_string()));
    }
    let len = out.len() - start;
    if len > MAX_DECODE_BYTES {
        out.truncate(start);
        return Err(EncodeError::TooLarge {
            len,
            limit: MAX_DECODE_BYTES,
        });
    }
    Ok(())
}

/// A 64-bit hash of encoded bytes (XXH3), stored beside snapshots so a
/// replay that arrives at a different state is detected.
pub fn state_hash(encoded: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(encoded)
}

/// Checks the size limit and the version byte; returns the bincode body.
fn checked_body(bytes: &[u8]) -> Result<&[u8], DecodeError> {
    if bytes.len() > MAX_DECODE_BYTES {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            limit: MAX_DECODE_BYTES,
        });
    }
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion { found: version });
    }
    Ok(body)
}

/// The body of a value written by [`encode`] (the bytes after the
/// version byte), after checking the size limit and the version.
pub(crate) fn body(bytes: &[u8]) -> Result<&[u8], DecodeError> {
    checked_body(bytes)
}

/// Decodes a leading `T` of an encoded value and hands back the rest of
/// the body undecoded (for a header read before the part it describes).
pub(crate) fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, &[u8]), DecodeError> {
    let body = checked_body(bytes)?;
    let (value, read) = bincode::serde::decode_from_slice(body, CONFIG)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    Ok((value, &body[read..]))
}

/// Decodes a value written by [`encode`], enforcing every limit above.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    decode_body(checked_body(bytes)?)
}

/// Decodes a body without its version byte (what [`decode_prefix`] leaves
/// over, or [`body`]), refusing trailing bytes.
pub(crate) fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    if body.len() > MAX_DECODE_BYTES {
        return Err(DecodeError::TooLarge {
            len: body.len(),
            limit: MAX_DECODE_BYTES,
        });
    }
    let (value, read) = bincode::serde::decode_from_slice(body, CONFIG)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    match body.len() - read {
        0 => Ok(value),
        extra => Err(DecodeError::TrailingBytes(extra)),
    }
}

/// Decodes only the `(sequence, tick)` prefix of an encoded event envelope
/// ([`crate::engine::EventEnvelope`]), without decoding the game event.
///
/// Stores use it to recover an event's tick from the bytes they hold. The
/// version byte and the size limit are checked as in [`decode`]; bytes
/// after the two numbers (the player and the event) are not looked at.
pub fn decode_envelope_header(bytes: &[u8]) -> Result<(u64, u64), DecodeError> {
    let body = checked_body(bytes)?;
    // The envelope's first two fields, in declaration order.
    let ((sequence, tick), _read) =
        bincode::serde::decode_from_slice::<(u64, u64), _>(body, CONFIG)
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    Ok((sequence, tick))
}

/// Frames several encoded envelopes into one message: each as its length
/// in decimal ASCII, a `:`, then its bytes (netstrings without the
/// trailing comma). This is what the Redis store publishes per appended
/// batch; `src/store/lua/append.lua` builds the same bytes.
pub fn frame_events<'a>(payloads: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for payload in payloads {
        out.extend_from_slice(payload.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(payload);
    }
    out
}

/// Splits a message built by [`frame_events`] back into its envelopes.
/// A frame longer than [`MAX_DECODE_BYTES`], a malformed length or a
/// truncated frame is an error.
pub fn unframe_events(mut bytes: &[u8]) -> Result<Vec<&[u8]>, DecodeError> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let colon = bytes
            .iter()
            .take(8)
            .position(|&b| b == b':')
            .ok_or_else(|| DecodeError::Malformed("frame length without ':'".to_owned()))?;
        let digits = &bytes[..colon];
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(DecodeError::Malformed(format!(
                "frame length {:?} is not a number",
                String::from_utf8_lossy(digits)
            )));
        }
        // At most 7 digits, so this neither fails nor overflows.
        let len: usize = digits.iter().fold(0, |n, d| n * 10 + usize::from(d - b'0'));
        if len > MAX_DECODE_BYTES {
            return Err(DecodeError::TooLarge {
                len,
                limit: MAX_DECODE_BYTES,
            });
        }
        let rest = &bytes[colon + 1..];
        if rest.len() < len {
            return Err(DecodeError::Malformed(format!(
                "frame of {len} bytes truncated to {}",
                rest.len()
            )));
        }
        frames.push(&rest[..len]);
        bytes = &rest[len..];
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        id: u64,
        name: String,
        items: Vec<u32>,
    }

    fn sample() -> Sample {
        Sample {
            id: 7,
            name: "arena".into(),
            items: vec![1, 2, 3, 400_000],
        }
    }

    #[test]
    fn round_trips() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<Sample>(&bytes).unwrap(), sample());
    }

    #[test]
    fn empty_wrong_version_and_trailing_are_distinct_errors() {
        assert_eq!(decode::<Sample>(&[]), Err(DecodeError::Empty));
        let mut bytes = encode(&sample()).unwrap();
        bytes[0] = 99;
        assert_eq!(
            decode::<Sample>(&bytes),
            Err(DecodeError::UnsupportedVersion { found: 99 })
        );
        let mut bytes = encode(&sample()).unwrap();
        bytes.extend_from_slice(&[0, 0]);
        assert_eq!(decode::<Sample>(&bytes), Err(DecodeError::TrailingBytes(2)));
    }

    #[test]
    fn every_truncation_of_a_valid_value_is_an_error() {
        let bytes = encode(&sample()).unwrap();
        for len in 0..bytes.len() {
            assert!(decode::<Sample>(&bytes[..len]).is_err(), "prefix of {len}");
        }
    }

    #[test]
    fn oversized_input_is_refused_before_decoding() {
        let big = vec![FORMAT_VERSION; MAX_DECODE_BYTES + 1];
        assert!(matches!(
            decode::<Sample>(&big),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn huge_declared_lengths_do_not_allocate() {
        // A Vec<u32> whose varint length claims u64::MAX elements.
        let mut bytes = vec![FORMAT_VERSION, 7, 5, b'a', b'r', b'e', b'n', b'a'];
        bytes.push(253); // varint tag for a u64 follows
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode::<Sample>(&bytes),
            Err(DecodeError::Malformed(_))
        ));
        // A String claiming 1 GiB.
        let mut bytes = vec![FORMAT_VERSION, 7, 252];
        bytes.extend_from_slice(&(1u32 << 30).to_le_bytes());
        assert!(decode::<Sample>(&bytes).is_err());
    }

    #[test]
    fn envelope_header_is_sequence_and_tick() {
        use crate::engine::EventEnvelope;
        use crate::game::PlayerId;
        for (sequence, tick) in [(0, 0), (7, 3), (250, 251), (70_000, 1 << 40), (u64::MAX, 1)] {
            let envelope = EventEnvelope {
                sequence,
                tick,
                player: Some(PlayerId(9)),
                schema: 3,
                event: sample(),
            };
            let bytes = encode(&envelope).unwrap();
            assert_eq!(decode_envelope_header(&bytes), Ok((sequence, tick)));
        }
        assert_eq!(decode_envelope_header(&[]), Err(DecodeError::Empty));
        assert_eq!(
            decode_envelope_header(&[1, 0, 0]),
            Err(DecodeError::UnsupportedVersion { found: 1 })
        );
        assert!(matches!(
            decode_envelope_header(&[FORMAT_VERSION, 253, 1]),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn event_frames_round_trip() {
        let payloads: [&[u8]; 4] = [b"abc", b"", &[0, b':', 255], b"0123456789"];
        let message = frame_events(payloads);
        assert_eq!(&message[..6], b"3:abc0");
        assert_eq!(unframe_events(&message).unwrap(), payloads.to_vec());
        assert_eq!(unframe_events(b"").unwrap(), Vec::<&[u8]>::new());
        for bad in [&b"3:ab"[..], b"x:abc", b":abc", b"12345678:", b"9999999:x"] {
            assert!(unframe_events(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            // Whatever the outcome, it must be a value or an error, never a panic;
            // with a wrong version byte it must be an error.
            let outcome = decode::<Sample>(&bytes);
            if bytes.first() != Some(&FORMAT_VERSION) {
                prop_assert!(outcome.is_err());
            }
        }
    }
}
