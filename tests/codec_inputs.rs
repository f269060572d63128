//! Decoding hostile bytes: random input, truncations, huge declared
//! lengths and oversized input are errors, never panics or big allocations.
//!
//! This test binary counts the largest single allocation each thread asks
//! for, so "without allocating" is checked, not assumed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use tickforge::arena::{ArenaEvent, ArenaState, Dir, Ending, Player, Pos};
use tickforge::codec::{self, DecodeError, FORMAT_VERSION, MAX_DECODE_BYTES};
use tickforge::engine::EventEnvelope;
use tickforge::game::PlayerId;
use tickforge::store::Snapshot;

struct LargestAllocation;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: allocations during thread teardown are not tracked.
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// Runs `f` and returns its result with the largest allocation it made.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

/// The stored snapshot record as one serde value (the store keeps the
/// fields apart; a network message or an export would carry them together).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SnapshotRecord {
    sequence: u64,
    tick: u64,
    state: Vec<u8>,
}

impl From<&Snapshot> for SnapshotRecord {
    fn from(s: &Snapshot) -> Self {
        Self {
            sequence: s.sequence,
            tick: s.tick,
            state: s.state.clone(),
        }
    }
}

type Envelope = EventEnvelope<ArenaEvent>;

fn envelopes() -> Vec<Envelope> {
    let events = [
        ArenaEvent::Joined {
            player: PlayerId(3),
            name: "ada".into(),
            at: Pos { x: 1, y: 18 },
        },
        ArenaEvent::Left {
            player: PlayerId(70_000),
        },
        ArenaEvent::Moved {
            player: PlayerId(3),
            to: Pos { x: -1, y: 300 },
            facing: Dir::West,
        },
        ArenaEvent::Fired {
            player: PlayerId(3),
            tagged: Some(PlayerId(4)),
        },
        ArenaEvent::Fired {
            player: PlayerId(3),
            tagged: None,
        },
    ];
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| EventEnvelope {
            sequence: [0, 250, 251, 65_536, u64::MAX][i],
            tick: [1, 7, 1 << 33, 3, 0][i],
            player: Some(PlayerId(3)),
            schema: 1,
            event,
        })
        .collect()
}

fn state() -> ArenaState {
    let mut state = ArenaState {
        tick: 912,
        ending: Some(Ending::TimeLimit {
            winner: Some(PlayerId(2)),
        }),
        ..ArenaState::default()
    };
    for (id, name) in [(1, "ada"), (2, "bob"), (300, "çà et là")] {
        state.players.insert(
            PlayerId(id),
            Player {
                name: name.into(),
                pos: Pos { x: id as i16, y: 2 },
                facing: Dir::South,
                score: id * 3,
                deaths: 1,
                respawn_at: (id == 2).then_some(950),
                ready_at: 915,
            },
        );
    }
    state
}

fn snapshot_record() -> SnapshotRecord {
    SnapshotRecord::from(&Snapshot::new(
        1234,
        912,
        codec::encode(&state()).unwrap(),
        1,
    ))
}

/// Valid encodings of every shape the fuzzer mutates.
fn corpus() -> Vec<Vec<u8>> {
    let mut corpus: Vec<Vec<u8>> = envelopes()
        .iter()
        .map(|e| codec::encode(e).unwrap())
        .collect();
    corpus.push(codec::encode(&state()).unwrap());
    corpus.push(codec::encode(&ArenaState::default()).unwrap());
    corpus.push(codec::encode(&snapshot_record()).unwrap());
    corpus
}

/// Decodes `bytes` as each type; panics propagate (and fail the test).
/// Returns whether each decode succeeded. A decoded value must survive its
/// own round trip. (Accepted input need not be canonical: bincode reads a
/// varint written wider than needed, so only bytes tickforge wrote itself
/// are compared byte for byte anywhere.)
fn decode_all(bytes: &[u8]) -> [bool; 3] {
    fn one<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
        bytes: &[u8],
    ) -> bool {
        match codec::decode::<T>(bytes) {
            Ok(value) => {
                let again = codec::encode(&value).unwrap();
                assert!(again.len() <= bytes.len());
                assert_eq!(codec::decode::<T>(&again).unwrap(), value);
                true
            }
            Err(_) => false,
        }
    }
    [
        one::<Envelope>(bytes),
        one::<ArenaState>(bytes),
        one::<SnapshotRecord>(bytes),
    ]
}

fn hostile_input() -> impl Strategy<Value = Vec<u8>> {
    let corpus = corpus();
    prop_oneof![
        // Pure noise, sometimes with the right version byte.
        prop::collection::vec(any::<u8>(), 0..256),
        (prop::collection::vec(any::<u8>(), 0..256)).prop_map(|mut b| {
            b.insert(0, FORMAT_VERSION);
            b
        }),
        // Valid encodings with a few bytes overwritten, cut or extended.
        (
            prop::sample::select(corpus),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            any::<prop::sample::Index>(),
            prop::collection::vec(any::<u8>(), 0..3),
        )
            .prop_map(|(mut bytes, edits, cut, tail)| {
                for (at, value) in edits {
                    let i = at.index(bytes.len());
                    bytes[i] = value;
                }
                bytes.truncate(cut.index(bytes.len() + 1).max(1));
                bytes.extend(tail);
                bytes
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn hostile_bytes_never_panic_or_allocate_much(bytes in hostile_input()) {
        let (decoded, largest) = largest_allocation(|| decode_all(&bytes));
        if bytes.first() != Some(&FORMAT_VERSION) {
            prop_assert_eq!(decoded, [false; 3]);
            for result in [
                codec::decode::<Envelope>(&bytes).err(),
                codec::decode::<ArenaState>(&bytes).err(),
                codec::decode::<SnapshotRecord>(&bytes).err(),
            ] {
                let expected = match bytes.first() {
                    None => DecodeError::Empty,
                    Some(&found) => DecodeError::UnsupportedVersion { found },
                };
                prop_assert_eq!(result, Some(expected));
            }
        }
        // No decode of a few hundred bytes needs more than serde's cautious
        // preallocation cap (1 MiB) at once.
        prop_assert!(largest <= 1 << 20, "a {}-byte input allocated {} bytes", bytes.len(), largest);
    }
}

#[test]
fn valid_values_round_trip() {
    for envelope in envelopes() {
        let bytes = codec::encode(&envelope).unwrap();
        assert_eq!(codec::decode::<Envelope>(&bytes).unwrap(), envelope);
    }
    let bytes = codec::encode(&state()).unwrap();
    assert_eq!(codec::decode::<ArenaState>(&bytes).unwrap(), state());
    let bytes = codec::encode(&snapshot_record()).unwrap();
    assert_eq!(
        codec::decode::<SnapshotRecord>(&bytes).unwrap(),
        snapshot_record()
    );
}

#[test]
fn every_truncation_of_a_valid_value_is_an_error() {
    for envelope in envelopes() {
        let bytes = codec::encode(&envelope).unwrap();
        for len in 0..bytes.len() {
            let cut = &bytes[..len];
            assert!(
                codec::decode::<Envelope>(cut).is_err(),
                "{envelope:?} cut to {len} bytes decoded"
            );
        }
    }
    // Each corpus entry is a value of the type at `kind` in `decode_all`;
    // no prefix of it decodes as that type. (A prefix may well be a valid
    // value of another type: a snapshot record is a short thing.)
    let kinds = [0, 0, 0, 0, 0, 1, 1, 2];
    for (bytes, kind) in corpus().into_iter().zip(kinds) {
        assert!(decode_all(&bytes)[kind]);
        for len in 0..bytes.len() {
            assert!(!decode_all(&bytes[..len])[kind], "prefix of {len}");
        }
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    for mut bytes in corpus() {
        bytes.push(0);
        assert_eq!(decode_all(&bytes), [false; 3]);
    }
    let mut bytes = codec::encode(&envelopes()[0]).unwrap();
    bytes.extend_from_slice(&[0, 0, 0]);
    assert_eq!(
        codec::decode::<Envelope>(&bytes),
        Err(DecodeError::TrailingBytes(3))
    );
}

/// bincode varint markers for a u32 and a u64 that follow.
const U32_FOLLOWS: u8 = 252;
const U64_FOLLOWS: u8 = 253;

fn huge_length(prefix: &[u8], marker: u8) -> Vec<u8> {
    let mut bytes = prefix.to_vec();
    bytes.push(marker);
    match marker {
        U32_FOLLOWS => bytes.extend_from_slice(&u32::MAX.to_le_bytes()),
        _ => bytes.extend_from_slice(&u64::MAX.to_le_bytes()),
    }
    // A little real-looking data after the length.
    bytes.extend_from_slice(b"abcdefgh");
    bytes
}

#[test]
fn huge_declared_lengths_are_errors_without_allocating() {
    // The `Joined` envelope: version, sequence 0, tick 1, Some(player 3),
    // schema 1, variant 0, player 3, then the name's length (3) and bytes.
    let joined = codec::encode(&envelopes()[0]).unwrap();
    assert_eq!(
        &joined[..10],
        &[FORMAT_VERSION, 0, 1, 1, 3, 1, 0, 3, 3, b'a']
    );
    // An empty state: version, tick 0, no players (map length 0), no ending.
    let empty = codec::encode(&ArenaState::default()).unwrap();
    assert_eq!(empty, vec![FORMAT_VERSION, 0, 0, 0]);
    // A state whose one player's name length is what we forge.
    let mut one_player = ArenaState::default();
    one_player
        .players
        .insert(PlayerId(5), state().players[&PlayerId(1)].clone());
    let one_player = codec::encode(&one_player).unwrap();
    assert_eq!(&one_player[..5], &[FORMAT_VERSION, 0, 1, 5, 3]);
    // A snapshot record: version, sequence, tick, then the state's length.
    let record = codec::encode(&SnapshotRecord {
        sequence: 1,
        tick: 2,
        state: vec![9],
    })
    .unwrap();
    assert_eq!(record, vec![FORMAT_VERSION, 1, 2, 1, 9]);

    // The counter sees allocations at all.
    let (buffer, largest) = largest_allocation(|| vec![7u8; 5000]);
    assert!(largest >= buffer.len());

    for marker in [U32_FOLLOWS, U64_FOLLOWS] {
        let cases: [(&str, Vec<u8>, usize); 4] = [
            // Strings and maps must not allocate for their declared size at all.
            ("envelope name", huge_length(&joined[..8], marker), 4096),
            ("state player map", huge_length(&empty[..2], marker), 4096),
            ("player name", huge_length(&one_player[..4], marker), 4096),
            // A byte vector may preallocate up to serde's cautious cap (1 MiB).
            (
                "snapshot state bytes",
                huge_length(&record[..3], marker),
                1 << 20,
            ),
        ];
        for (what, bytes, bound) in cases {
            let (results, largest) = largest_allocation(|| {
                (
                    codec::decode::<Envelope>(&bytes).is_err(),
                    codec::decode::<ArenaState>(&bytes).is_err(),
                    codec::decode::<SnapshotRecord>(&bytes).is_err(),
                )
            });
            assert_eq!(results, (true, true, true), "{what} ({marker}) decoded");
            assert!(
                largest <= bound,
                "{what} ({marker}): a {}-byte input allocated {largest} bytes",
                bytes.len()
            );
        }
    }
}

#[test]
fn input_over_the_limit_is_too_large_before_decoding() {
    let mut bytes = codec::encode(&snapshot_record()).unwrap();
    bytes.resize(MAX_DECODE_BYTES + 1, 0);
    let expected = DecodeError::TooLarge {
        len: MAX_DECODE_BYTES + 1,
        limit: MAX_DECODE_BYTES,
    };
    assert_eq!(codec::decode::<Envelope>(&bytes), Err(expected.clone()));
    assert_eq!(codec::decode::<ArenaState>(&bytes), Err(expected.clone()));
    let (result, largest) = largest_allocation(|| codec::decode::<SnapshotRecord>(&bytes));
    assert_eq!(result, Err(expected));
    assert_eq!(largest, 0, "refused before touching the input");
    // At the limit exactly, the input is decoded (and here refused for its
    // trailing bytes, not its size).
    bytes.truncate(MAX_DECODE_BYTES);
    assert!(matches!(
        codec::decode::<SnapshotRecord>(&bytes),
        Err(DecodeError::TrailingBytes(_))
    ));
}
