//! A generic state delta: XOR against a baseline encoding, then squeeze
//! out the zeros.
//!
//! Works for any state: both sides hold the codec encoding of the baseline
//! state, the server XORs the new encoding into it (the shorter one padded
//! with zeros, the new length carried). When little changed the XOR is
//! mostly zeros with a few scattered bytes, so it is sent as *runs*: a
//! header holding the count of zero bytes to skip and the count of literal
//! bytes (one byte when they are below 31 and 7), then the literal bytes,
//! repeated; trailing zeros are implied. (A general-purpose
//! compressor such as LZ4 does worse on a few hundred bytes with scattered
//! changes: it needs 4-byte matches and pays a token per literal run.)
//! When there is no baseline, or the patch would not be smaller than the
//! state itself, the whole state goes instead. Pure functions over byte
//! slices; which baseline a client acknowledged is the server's bookkeeping.

use serde::{Deserialize, Serialize};

/// A state as sent: whole, or as a patch against a baseline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Patch {
    /// The whole new encoding.
    Full(Vec<u8>),
    /// The XOR of baseline and new encoding (zero-padded to the longer of
    /// the two) as zero runs and literals; `len` is the new encoding's length.
    Xor {
        /// Length of the new encoding.
        len: u32,
        /// The run-encoded XOR (see the module docs).
        compressed: Vec<u8>,
    },
}

/// Why a patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeltaError {
    /// A delta arrived but there is no baseline to apply it to.
    #[error("a delta needs a baseline state")]
    MissingBaseline,
    /// The patch announces a state over the caller's limit.
    #[error("patched state of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The compressed bytes are corrupt or of the wrong length.
    #[error("corrupt delta: {0}")]
    Corrupt(String),
}

/// The patch taking `baseline` to `new`: a delta when there is a baseline
/// and the delta is smaller than `new`, else the whole of `new`.
pub fn diff(baseline: Option<&[u8]>, new: &[u8]) -> Patch {
    let Some(base) = baseline else {
        return Patch::Full(new.to_vec());
    };
    let Ok(len) = u32::try_from(new.len()) else {
        return Patch::Full(new.to_vec());
    };
    let width = base.len().max(new.len());
    let xor: Vec<u8> = (0..width)
        .map(|i| base.get(i).copied().unwrap_or(0) ^ new.get(i).copied().unwrap_or(0))
        .collect();
    let compressed = encode_runs(&xor);
    // The length field costs up to five bytes on the wire.
    if compressed.len() + 5 < new.len() {
        Patch::Xor { len, compressed }
    } else {
        Patch::Full(new.to_vec())
    }
}

/// Rebuilds the new encoding from `baseline` and `patch`, refusing a
/// result longer than `limit` bytes.
pub fn apply(baseline: Option<&[u8]>, patch: &Patch, limit: usize) -> Result<Vec<u8>, DeltaError> {
    match patch {
        Patch::Full(bytes) => {
            if bytes.len() > limit {
                return Err(DeltaError::TooLarge {
                    len: bytes.len(),
                    limit,
                });
            }
            Ok(bytes.clone())
        }
        Patch::Xor { len, compressed } => {
            let base = baseline.ok_or(DeltaError::MissingBaseline)?;
            let mut out = Vec::new();
            apply_xor_into(base, *len, compressed, limit, &mut out)?;
            Ok(out)
        }
    }
}

/// Rebuilds the new encoding from `baseline` and the parts of a
/// [`Patch::Xor`] (`len`, `compressed`) into `out`, refusing a result
/// longer than `limit` bytes. `out` is cleared first and its allocation
/// reused, so a caller that recycles buffers applies deltas without
/// allocating; after an error its contents are unspecified.
pub fn apply_xor_into(
    baseline: &[u8],
    len: u32,
    compressed: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), DeltaError> {
    let len = len as usize;
    if len > limit {
        return Err(DeltaError::TooLarge { len, limit });
    }
    out.clear();
    out.extend_from_slice(&baseline[..baseline.len().min(len)]);
    out.resize(len, 0);
    // The XOR spans the longer of the two; literals past `len` only undo
    // baseline bytes the new encoding drops, so they are checked, not kept.
    let width = baseline.len().max(len);
    let (mut at, mut pos) = (0usize, 0usize);
    while at < compressed.len() {
        let (zeros, count) = take_header(compressed, &mut at)?;
        let start = pos
            .checked_add(zeros)
            .filter(|&s| s.checked_add(count).is_some_and(|e| e <= width))
            .ok_or_else(|| DeltaError::Corrupt(format!("runs overrun the {width}-byte state")))?;
        let literals = compressed
            .get(at..at + count)
            .ok_or_else(|| DeltaError::Corrupt("truncated literal".into()))?;
        if start < len {
            let kept = &mut out[start..len.min(start + count)];
            for (byte, literal) in kept.iter_mut().zip(literals) {
                *byte ^= literal;
            }
        }
        at += count;
        pos = start + count;
    }
    Ok(())
}

/// Zero runs shorter than this stay inside a literal: a split costs a run
/// header (usually one byte), so it only pays from two zeros on.
const MIN_ZERO_RUN: usize = 2;

/// Largest skip a run header holds in its own 5 bits; the field's
/// maximum means "this much plus a varint that follows".
const SKIP_INLINE: usize = 31;

/// Largest literal count a run header holds in its own 3 bits, likewise.
const COUNT_INLINE: usize = 7;

fn put_varint(out: &mut Vec<u8>, mut value: usize) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn take_varint(input: &[u8], at: &mut usize) -> Result<usize, DeltaError> {
    let mut value = 0usize;
    for shift in (0..64).step_by(7) {
        let byte = *input
            .get(*at)
            .ok_or_else(|| DeltaError::Corrupt("truncated run length".into()))?;
        *at += 1;
        value |= usize::from(byte & 0x7f)
            .checked_shl(shift)
            .ok_or_else(|| DeltaError::Corrupt("run length overflows".into()))?;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DeltaError::Corrupt("run length too long".into()))
}

/// Writes a run header: `skip` in the high 5 bits and `count` in the low 3
/// (in arena states most runs skip fewer than 31 bytes and carry one to
/// three literals), each followed by a varint of the excess when it is at
/// its field's maximum.
fn put_header(out: &mut Vec<u8>, skip: usize, count: usize) {
    let (high, low) = (skip.min(SKIP_INLINE), count.min(COUNT_INLINE));
    out.push(((high as u8) << 3) | low as u8);
    if high == SKIP_INLINE {
        put_varint(out, skip - SKIP_INLINE);
    }
    if low == COUNT_INLINE {
        put_varint(out, count - COUNT_INLINE);
    }
}

fn take_header(input: &[u8], at: &mut usize) -> Result<(usize, usize), DeltaError> {
    let byte = *input
        .get(*at)
        .ok_or_else(|| DeltaError::Corrupt("truncated run header".into()))?;
    *at += 1;
    let mut field = |value: usize, inline: usize| -> Result<usize, DeltaError> {
        if value < inline {
            return Ok(value);
        }
        take_varint(input, at)?
            .checked_add(inline)
            .ok_or_else(|| DeltaError::Corrupt("run length overflows".into()))
    };
    let skip = field(usize::from(byte >> 3), SKIP_INLINE)?;
    let count = field(usize::from(byte & 0x07), COUNT_INLINE)?;
    Ok((skip, count))
}

/// `(header, literals)*` with trailing zeros left out; a header is the
/// zeros to skip and the literal count (see [`put_header`]).
fn encode_runs(xor: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < xor.len() {
        let zeros = xor[at..].iter().take_while(|&&b| b == 0).count();
        if at + zeros == xor.len() {
            break;
        }
        let start = at + zeros;
        // The literal ends before the first zero run worth skipping.
        let mut end = start;
        while end < xor.len() {
            let run = xor[end..].iter().take_while(|&&b| b == 0).count();
            if run >= MIN_ZERO_RUN || end + run == xor.len() {
                break;
            }
            end += run.max(1);
        }
        put_header(&mut out, zeros, end - start);
        out.extend_from_slice(&xor[start..end]);
        at = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn no_baseline_is_a_full_state() {
        assert_eq!(diff(None, b"abc"), Patch::Full(b"abc".to_vec()));
    }

    #[test]
    fn a_small_change_is_a_small_delta() {
        let base: Vec<u8> = (0..2000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut new = base.clone();
        new[100] ^= 0x55;
        new.extend_from_slice(b"tail");
        let patch = diff(Some(&base), &new);
        let Patch::Xor { compressed, .. } = &patch else {
            panic!("expected a delta, got {patch:?}");
        };
        assert!(compressed.len() < 100, "{} bytes", compressed.len());
        assert_eq!(apply(Some(&base), &patch, 1 << 20).unwrap(), new);
    }

    #[test]
    fn sparse_changes_cost_a_few_bytes_each() {
        // A game-sized state with eight scattered one-byte changes.
        let base: Vec<u8> = (0..170u32).map(|i| (i * 13 % 256) as u8).collect();
        let mut new = base.clone();
        for i in (5..170).step_by(21) {
            new[i] = new[i].wrapping_add(1);
        }
        let patch = diff(Some(&base), &new);
        let Patch::Xor { compressed, .. } = &patch else {
            panic!("expected a delta, got {patch:?}");
        };
        // One header byte and one literal per change.
        assert!(compressed.len() <= 8 * 2, "{} bytes", compressed.len());
        assert_eq!(apply(Some(&base), &patch, 1 << 20).unwrap(), new);
    }

    #[test]
    fn runs_past_the_state_are_corrupt() {
        // Skip 9 zeros, then 2 literals: 11 bytes into a 10-byte state.
        let patch = Patch::Xor {
            len: 10,
            compressed: vec![(9 << 3) | 2, 1, 1],
        };
        assert!(matches!(
            apply(Some(b"0123456789"), &patch, 100),
            Err(DeltaError::Corrupt(_))
        ));
        // A literal count beyond the bytes that follow.
        let patch = Patch::Xor {
            len: 10,
            compressed: vec![0x05, 1],
        };
        assert!(matches!(
            apply(Some(b"0123456789"), &patch, 100),
            Err(DeltaError::Corrupt(_))
        ));
    }

    #[test]
    fn bad_patches_are_errors() {
        let patch = Patch::Xor {
            len: 10,
            compressed: vec![0xff; 3],
        };
        assert!(matches!(
            apply(Some(b"0123456789"), &patch, 100),
            Err(DeltaError::Corrupt(_))
        ));
        assert_eq!(apply(None, &patch, 100), Err(DeltaError::MissingBaseline));
        let patch = Patch::Xor {
            len: u32::MAX,
            compressed: vec![],
        };
        assert!(matches!(
            apply(Some(b""), &patch, 100),
            Err(DeltaError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn apply_inverts_diff(
            base in proptest::collection::vec(any::<u8>(), 0..600),
            new in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let patch = diff(Some(&base), &new);
            prop_assert_eq!(apply(Some(&base), &patch, 1 << 16).unwrap(), new.clone());
            let full = diff(None, &new);
            prop_assert_eq!(apply(None, &full, 1 << 16).unwrap(), new);
        }

        #[test]
        fn near_copies_round_trip(
            base in proptest::collection::vec(any::<u8>(), 1..600),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            grow in 0usize..40,
        ) {
            let mut new = base.clone();
            for (at, bits) in flips {
                let i = at % new.len();
                new[i] ^= bits;
            }
            new.resize(base.len() + grow, 7);
            let patch = diff(Some(&base), &new);
            prop_assert_eq!(apply(Some(&base), &patch, 1 << 16).unwrap(), new);
        }

        #[test]
        fn applying_into_a_used_buffer_gives_the_new_state(
            base in proptest::collection::vec(any::<u8>(), 1..300),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            resize in 0usize..340,
            used in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            // A near copy, shorter or longer, so most patches are deltas.
            let mut new = base.clone();
            for (at, bits) in flips {
                let i = at % new.len();
                new[i] ^= bits;
            }
            new.resize(resize.max(base.len().saturating_sub(20)), 7);
            let Patch::Xor { len, compressed } = diff(Some(&base), &new) else {
                return Ok(());
            };
            let mut out = used;
            apply_xor_into(&base, len, &compressed, 1 << 16, &mut out).unwrap();
            prop_assert_eq!(out, new);
        }

        #[test]
        fn random_patches_never_panic(
            base in proptest::collection::vec(any::<u8>(), 0..100),
            len in 0u32..300,
            compressed in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let _ = apply(Some(&base), &Patch::Xor { len, compressed }, 256);
        }
    }
}
