//! The storage suite: every rule of the store traits, as generic functions
//! run against each backend (see `tests/storage_redis.rs`).
//!
//! Each function gets a store and a [`Ns`] (the edition its keys live in),
//! so backends shared between tests never see each other's keys. Payloads
//! are real encoded event envelopes: the Redis store recovers each event's
//! tick from them.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tickforge::codec;
use tickforge::engine::EventEnvelope;
use tickforge::game::PlayerId;
use tickforge::store::{
    AppendBatch, Head, LeaseStore, MatchKey, MatchStatus, NodeDirectory, NodeInfo, RecordedEvent,
    Snapshot, Store, StoreError, Trimmed,
};

/// The namespace of one test: domain `arena`, its own edition.
#[derive(Debug, Clone)]
pub struct Ns {
    edition: String,
}

impl Ns {
    /// Keys in `edition`.
    pub fn new(edition: &str) -> Ns {
        Ns {
            edition: edition.to_owned(),
        }
    }

    /// The match `root` of this namespace.
    pub fn key(&self, root: &str) -> MatchKey {
        MatchKey::new("arena", &self.edition, root).expect("valid key")
    }

    /// The edition of this namespace.
    pub fn edition(&self) -> &str {
        &self.edition
    }
}

/// Event `sequence` applied on `tick`, with a body naming its author.
pub fn event(sequence: u64, tick: u64, body: &str) -> RecordedEvent {
    let envelope = EventEnvelope {
        sequence,
        tick,
        player: Some(PlayerId(1)),
        schema: 1,
        event: body.to_owned(),
    };
    RecordedEvent {
        sequence,
        tick,
        payload: codec::encode(&envelope).expect("encodable"),
    }
}

/// `count` events from `first`, all on `tick`, bodies tagged with `tag`.
pub fn events(first: u64, count: u64, tick: u64, tag: &str) -> Vec<RecordedEvent> {
    (first..first + count)
        .map(|s| event(s, tick, &format!("{tag}-{s}")))
        .collect()
}

/// A batch of `events` starting at `first`.
pub fn batch(key: &MatchKey, first: u64, events: Vec<RecordedEvent>, tick: u64) -> AppendBatch {
    AppendBatch {
        key: key.clone(),
        first_sequence: first,
        events,
        head_tick: tick,
        epoch: None,
        renew_lease: None,
    }
}

/// Appends one batch and returns its own result.
pub async fn append_one<S: Store>(store: &S, batch: AppendBatch) -> Result<Head, StoreError> {
    let mut results = store.append(&[batch]).await.expect("append call");
    assert_eq!(results.len(), 1, "one result per batch");
    results.remove(0)
}

fn live(next_sequence: u64, tick: u64) -> Head {
    Head {
        next_sequence,
        tick,
        status: MatchStatus::Live,
    }
}

async fn read_all<S: Store>(store: &S, key: &MatchKey) -> Vec<RecordedEvent> {
    store.read(key, 0, usize::MAX).await.expect("read")
}

/// Append, read back (whole and in pages), head.
pub async fn append_read_head<S: Store>(store: &S, ns: &Ns) {
    let key = ns.key("m1");
    store.create(&key, &[]).await.expect("create");
    assert_eq!(store.head(&key).await.unwrap(), Some(live(0, 0)));

    let first = events(0, 3, 1, "a");
    let head = append_one(store, batch(&key, 0, first.clone(), 1)).await;
    assert_eq!(head, Ok(live(3, 1)));
    let second = vec![event(3, 2, "b-3"), event(4, 3, "b-4")];
    let head = append_one(store, batch(&key, 3, second.clone(), 3)).await;
    assert_eq!(head, Ok(live(5, 3)));

    let all: Vec<RecordedEvent> = first.into_iter().chain(second).collect();
    assert_eq!(read_all(store, &key).await, all);
    assert_eq!(store.read(&key, 2, 2).await.unwrap(), all[2..4].to_vec());
    assert_eq!(store.read(&key, 4, 10).await.unwrap(), all[4..].to_vec());
    assert_eq!(store.read(&key, 5, 10).await.unwrap(), Vec::new());
    assert_eq!(store.read(&key, 0, 0).await.unwrap(), Vec::new());
    assert_eq!(store.head(&key).await.unwrap(), Some(live(5, 3)));

    let unknown = ns.key("never-created");
    assert_eq!(store.head(&unknown).await.unwrap(), None);
    assert_eq!(store.read(&unknown, 0, 10).await.unwrap(), Vec::new());
}

/// A batch starting past the head is a conflict and changes nothing.
pub async fn gap_is_a_conflict<S: Store>(store: &S, ns: &Ns) {
    let key = ns.key("gap");
    store.create(&key, &[]).await.unwrap();
    let result = append_one(store, batch(&key, 2, events(2, 2, 1, "x"), 1)).await;
    assert!(
        matches!(
            result,
            Err(StoreError::Conflict {
                expected: 0,
                found: 2,
                ..
            })
        ),
        "{result:?}"
    );
    assert_eq!(store.head(&key).await.unwrap(), Some(live(0, 0)));
    append_one(store, batch(&key, 0, events(0, 2, 1, "x"), 1))
        .await
        .unwrap();
    let result = append_one(store, batch(&key, 5, events(5, 1, 2, "x"), 2)).await;
    assert!(
        matches!(
            result,
            Err(StoreError::Conflict {
                expected: 2,
                found: 5,
                ..
            })
        ),
        "{result:?}"
    );
    assert_eq!(read_all(store, &key).await.len(), 2);
    assert_eq!(store.head(&key).await.unwrap(), Some(live(2, 1)));
}

/// A retried batch that is stored byte for byte succeeds without
/// duplicates; a batch overlapping the head appends only its new part.
pub async fn retry_is_idempotent<S: Store>(store: &S, ns: &Ns) {
    let key = ns.key("retry");
    store.create(&key, &[]).await.unwrap();
    let all = events(0, 5, 1, "r");
    let first = batch(&key, 0, all[..3].to_vec(), 1);
    assert_eq!(append_one(store, first.clone()).await, Ok(live(3, 1)));
    assert_eq!(append_one(store, first).await, Ok(live(3, 1)));
    assert_eq!(read_all(store, &key).await, all[..3].to_vec());

    // Overlap: events 1 and 2 are stored, 3 and 4 are new.
    let overlap = batch(&key, 1, all[1..].to_vec(), 2);
    assert_eq!(append_one(store, overlap.clone()).await, Ok(live(5, 2)));
    assert_eq!(append_one(store, overlap).await, Ok(live(5, 2)));
    assert_eq!(read_all(store, &key).await, all);
}

/// A batch disagreeing with stored events is refused and changes nothing.
pub async fn diverged_bytes_are_refused<S: Store>(store: &S, ns: &Ns) {
    let key = ns.key("diverged");
    store.create(&key, &[]).await.unwrap();
    let stored = events(0, 3, 1, "mine");
    append_one(store, batch(&key, 0, stored.clone(), 1))
        .await
        .unwrap();
    let theirs = vec![
        event(1, 1, "mine-1"),
        event(2, 1, "theirs-2"),
        event(3, 2, "theirs-3"),
    ];
    let result = append_one(store, batch(&key, 1, theirs, 2)).await;
    assert!(
        matches!(result, Err(StoreError::Diverged { sequence: 2, .. })),
        "{result:?}"
    );
    assert_eq!(read_all(store, &key).await, stored);
    assert_eq!(store.head(&key).await.unwrap(), Some(live(3, 1)));
}

/// A batch whose events are not consecutive is refused.
pub async fn non_consecutive_batch_is_refused<S: Store>(store: &S, ns: &Ns) {
    let key = ns.key("holes");
    store.create(&key, &[]).await.unwrap();
    let holes = vec![event(0, 1, "a"), event(2, 1, "b")];
    let result = append_one(store, batch(&key, 0, holes, 1)).await;
    assert!(
        matches!(result, Err(StoreError::Corrupt { .. })),
        "{result:?}"
    );
    assert_eq!(store.head(&key).await.unwrap(), Some(live(0, 0)));
}

/// An empty batch moves the head tick (never back); one behind the head
/// is a conflict.
pub async fn empty_batch_moves_the_tick<S: Store>(store: &S, ns: &Ns) {
    let key = ns.key("ticks");
    store.create(&key, &[]).await.unwrap();
    assert_eq!(
        append_one(store, batch(&key, 0, vec![], 5)).await,
        Ok(live(0, 5))
    );
    assert_eq!(
        append_one(store, batch(&key, 0, events(0, 2, 6, "t"), 6)).await,
        Ok(live(2, 6))
    );
    assert_eq!(
        append_one(store, batch(&key, 2, vec![], 4)).await,
        Ok(live(2, 6)),
        "the tick never moves back"
    );
    assert_eq!(
        append_one(store, batch(&key, 2, vec![], 9)).await,
        Ok(live(2, 9))
    );
    let behind = append_one(store, batch(&key, 1, vec![], 10)).await;
    assert!(
        matches!(
            behind,
            Err(StoreError::Conflict {
                expected: 2,
                found: 1,
                ..
            })
        ),
        "{behind:?}"
    );
    assert_eq!(store.head(&key).await.unwrap(), Some(live(2, 9)));
}

/// Writes to a match that was never created fail; reads find nothing.
pub async fn unknown_match_is_refused<S: Store>(store: &S, ns: &Ns) {
    let key = ns.key("nobody");
    let result = append_one(store, batch(&key, 0, events(0, 1, 1, "u"), 1)).await;
    assert!(
        matches!(result, Err(StoreError::UnknownMatch(_))),
        "{result:?}"
    );
    assert!(matches!(
        store.finish(&key).await,
        Err(StoreError::UnknownMatch(_))
    ));
    let snapshot = Snapshot::new(0, 0, vec![1], 1);
    assert!(matches!(
        store.save_snapshot(&key, &snapshot).await,
        Err(StoreError::UnknownMatch(_))
    ));
    assert!(matches!(
        store.advance_position("follower", &key, 3).await,
        Err(StoreError::UnknownMatch(_))
    ));
    assert_eq!(store.load_position("follower", &key).await.unwrap(), 0);
    assert_eq!(store.load_snapshot(&key).await.unwrap(), None);
    assert_eq!(store.head(&key).await.unwrap(), None);
    assert_eq!(read_all(store, &key).await, Vec::new());
}

/// Creating an existing match is a conflict naming its head.
pub async fn create_twice_is_a_conflict<S: Store>(store: &S, ns: &Ns) {
    let key = ns.key("twice");
    store.create(&key, &[]).await.unwrap();
    append_one(store, batch(&key, 0, events(0, 2, 3, "c"), 3))
        .await
        .unwrap();
    let again = store.create(&key, &[]).await;
    assert!(
        matches!(
            again,
            Err(StoreError::Conflict {
                expected: 2,
                found: 0,
                ..
            })
        ),
        "{again:?}"
    );
    assert_eq!(store.head(&key).await.unwrap(), Some(live(2, 3)));
    assert_eq!(read_all(store, &key).await.len(), 2);
}

/// A snapshot never replaces a newer one; an equal one may be rewritten.
pub async fn snapshots_compare_and_set<S: Store>(store: &S, ns: &Ns) {
    let key = ns.key("snap");
    store.create(&key, &[]).await.unwrap();
    assert_eq!(store.load_snapshot(&key).await.unwrap(), None);
    let snap = |sequence, tick, byte| Snapshot::new(sequence, tick, vec![byte; 64], 1);
    assert!(store.save_snapshot(&key, &snap(5, 10, 1)).await.unwrap());
    assert_eq!(
        store.load_snapshot(&key).await.unwrap(),
        Some(snap(5, 10, 1))
    );
    assert!(!store.save_snapshot(&key, &snap(3, 20, 2)).await.unwrap());
    assert!(!store.save_snapshot(&key, &snap(5, 9, 3)).await.unwrap());
    assert_eq!(
        store.load_snapshot(&key).await.unwrap(),
        Some(snap(5, 10, 1))
    );
    assert!(store.save_snapshot(&key, &snap(5, 10, 4)).await.unwrap());
    assert!(store.save_snapshot(&key, &snap(5, 11, 5)).await.unwrap());
    assert!(store.save_snapshot(&key, &snap(6, 1, 6)).await.unwrap());
    assert_eq!(
        store.load_snapshot(&key).await.unwrap(),
        Some(snap(6, 1, 6))
    );
    // Binary state survives as is.
    let binary = Snapshot::new(7, 2, (0..=255).collect(), 1);
    assert!(store.save_snapshot(&key, &binary).await.unwrap());
    assert_eq!(store.load_snapshot(&key).await.unwrap(), Some(binary));
}

/// Positions start at 0, move forward only, per handler.
pub async fn positions_move_forward_only<S: Store>(store: &S, ns: &Ns) {
    let key = ns.key("pos");
    store.create(&key, &[]).await.unwrap();
    assert_eq!(store.load_position("board", &key).await.unwrap(), 0);
    assert_eq!(store.advance_position("board", &key, 5).await.unwrap(), 5);
    assert_eq!(store.advance_position("board", &key, 3).await.unwrap(), 5);
    assert_eq!(store.advance_position("board", &key, 9).await.unwrap(), 9);
    assert_eq!(store.load_position("board", &key).await.unwrap(), 9);
    assert_eq!(store.load_position("other", &key).await.unwrap(), 0);
    assert!(matches!(
        store.advance_position("a:b", &key, 1).await,
        Err(StoreError::Key(_))
    ));
    assert!(matches!(
        store.load_position("a}b", &key).await,
        Err(StoreError::Key(_))
    ));
}

fn trimmed(retained_from: u64, removed: u64) -> Trimmed {
    Trimmed {
        retained_from,
        removed,
    }
}

fn is_trimmed_error<T: std::fmt::Debug>(
    result: Result<T, StoreError>,
    requested: u64,
    retained_from: u64,
) -> bool {
    match result {
        Err(StoreError::Trimmed {
            requested: r,
            retained_from: f,
            ..
        }) => (r, f) == (requested, retained_from),
        other => panic!("expected a Trimmed error, got {other:?}"),
    }
}

/// Trimming never passes the stored snapshot; reads and retried appends
/// below what it kept fail loudly; appending goes on.
pub async fn trim_stops_at_the_snapshot<S: Store>(store: &S, ns: &Ns) {
    let key = ns.key("trim");
    store.create(&key, &[]).await.unwrap();
    let all = events(0, 10, 1, "t");
    append_one(store, batch(&key, 0, all.clone(), 1))
        .await
        .unwrap();

    // No snapshot yet: nothing may go.
    assert_eq!(store.trim(&key, 100, &[]).await.unwrap(), trimmed(0, 0));
    assert_eq!(read_all(store, &key).await, all);

    let snapshot = Snapshot::new(6, 1, vec![7; 16], 1);
    assert!(store.save_snapshot(&key, &snapshot).await.unwrap());
    // Asked for less than the snapshot allows: only that much.
    assert_eq!(store.trim(&key, 2, &[]).await.unwrap(), trimmed(2, 2));
    // Asked for more: up to the snapshot, not beyond.
    assert_eq!(store.trim(&key, 100, &[]).await.unwrap(), trimmed(6, 4));
    assert_eq!(store.trim(&key, 100, &[]).await.unwrap(), trimmed(6, 0));

    assert!(is_trimmed_error(store.read(&key, 0, 10).await, 0, 6));
    assert!(is_trimmed_error(store.read(&key, 5, 10).await, 5, 6));
    assert_eq!(store.read(&key, 6, 100).await.unwrap(), all[6..].to_vec());
    assert_eq!(store.head(&key).await.unwrap(), Some(live(10, 1)));
    assert_eq!(
        store.load_snapshot(&key).await.unwrap(),
        Some(snapshot),
        "trimming leaves the snapshot alone"
    );

    // Appending goes on; a retry from above the floor is still idempotent,
    // one from below it cannot be checked and is refused.
    let more = events(10, 2, 2, "t");
    append_one(store, batch(&key, 10, more.clone(), 2))
        .await
        .unwrap();
    let retried: Vec<RecordedEvent> = all[8..].iter().chain(&more).cloned().collect();
    assert_eq!(
        append_one(store, batch(&key, 8, retried, 2)).await,
        Ok(live(12, 2))
    );
    let stale: Vec<RecordedEvent> = all[4..].iter().chain(&more).cloned().collect();
    assert!(is_trimmed_error(
        append_one(store, batch(&key, 4, stale, 2)).await,
        4,
        6
    ));
    assert_eq!(store.read(&key, 6, 100).await.unwrap().len(), 6);

    // A snapshot at the head: everything goes, and reading says so rather
    // than answering "no events".
    let whole = ns.key("trim-whole");
    store.create(&whole, &[]).await.unwrap();
    append_one(store, batch(&whole, 0, events(0, 3, 1, "w"), 1))
        .await
        .unwrap();
    let at_head = Snapshot::new(3, 1, vec![3; 4], 1);
    assert!(store.save_snapshot(&whole, &at_head).await.unwrap());
    assert_eq!(store.trim(&whole, 3, &[]).await.unwrap(), trimmed(3, 3));
    assert!(is_trimmed_error(store.read(&whole, 1, 10).await, 1, 3));
    assert_eq!(store.read(&whole, 3, 10).await.unwrap(), Vec::new());

    assert!(matches!(
        store.trim(&ns.key("never-created"), 5, &[]).await,
        Err(StoreError::UnknownMatch(_))
    ));
    assert!(matches!(
        store.trim(&key, 100, &["a:b".to_owned()]).await,
        Err(StoreError::Key(_))
    ));
}

/// Events a listed handler has not processed stay; a handler that never
/// ran keeps them all.
pub async fn trim_waits_for_handlers<S: Store>(store: &S, ns: &Ns) {
    let key = ns.key("trim-handlers");
    store.create(&key, &[]).await.unwrap();
    append_one(store, batch(&key, 0, events(0, 10, 1, "h"), 1))
        .await
        .unwrap();
    let snapshot = Snapshot::new(8, 1, vec![1; 4], 1);
    assert!(store.save_snapshot(&key, &snapshot).await.unwrap());
    let board = ["board".to_owned()];
    let both = ["board".to_owned(), "never-ran".to_owned()];

    assert_eq!(store.trim(&key, 8, &board).await.unwrap(), trimmed(0, 0));
    store.advance_position("board", &key, 3).await.unwrap();
    assert_eq!(store.trim(&key, 8, &both).await.unwrap(), trimmed(0, 0));
    assert_eq!(store.trim(&key, 8, &board).await.unwrap(), trimmed(3, 3));
    store.advance_position("board", &key, 10).await.unwrap();
    assert_eq!(store.trim(&key, 8, &board).await.unwrap(), trimmed(8, 5));
    assert_eq!(store.read(&key, 8, 10).await.unwrap().len(), 2);
    assert!(is_trimmed_error(store.read(&key, 3, 10).await, 3, 8));
}

/// live_matches lists created matches until they finish.
pub async fn finish_hides_a_match<S: Store>(store: &S, ns: &Ns) {
    let keys: Vec<MatchKey> = ["c", "a", "b"].iter().map(|r| ns.key(r)).collect();
    for key in &keys {
        store.create(key, &[]).await.unwrap();
    }
    let edition = keys[0].edition().to_owned();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(store.live_matches("arena", &edition).await.unwrap(), sorted);

    let b = ns.key("b");
    store.finish(&b).await.unwrap();
    store.finish(&b).await.unwrap();
    assert_eq!(
        store.live_matches("arena", &edition).await.unwrap(),
        vec![ns.key("a"), ns.key("c")]
    );
    assert_eq!(
        store.head(&b).await.unwrap().map(|h| h.status),
        Some(MatchStatus::Ended)
    );
    // An ended match still takes a late batch, and says it is ended.
    let late = append_one(store, batch(&b, 0, events(0, 1, 1, "late"), 1)).await;
    assert_eq!(
        late,
        Ok(Head {
            next_sequence: 1,
            tick: 1,
            status: MatchStatus::Ended
        })
    );
    // Creating it again conflicts and does not revive it.
    assert!(matches!(
        store.create(&b, &[]).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        store.live_matches("arena", &edition).await.unwrap(),
        vec![ns.key("a"), ns.key("c")]
    );
    assert_eq!(
        store.live_matches("other-game", &edition).await.unwrap(),
        vec![]
    );
}

/// One append call carries many matches, each with its own result, in
/// order: successes, an unknown match and a conflict mixed.
pub async fn one_call_appends_many_matches<S: Store>(store: &S, ns: &Ns) {
    let keys: Vec<MatchKey> = (0..200).map(|i| ns.key(&format!("many-{i}"))).collect();
    for key in &keys {
        store.create(key, &[]).await.unwrap();
    }
    let mut batches: Vec<AppendBatch> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| batch(key, 0, events(0, (i % 9) as u64, 1, key.root()), 1))
        .collect();
    batches.insert(
        50,
        batch(&ns.key("many-unknown"), 0, events(0, 2, 1, "u"), 1),
    );
    batches.insert(100, batch(&keys[7], 9, events(9, 1, 1, "gap"), 1));
    let results = store.append(&batches).await.expect("append call");
    assert_eq!(results.len(), 202);
    assert!(matches!(results[50], Err(StoreError::UnknownMatch(_))));
    // Batches apply in order: keys[7]'s own batch (index 7) came first,
    // so its head is 7 by the time the gapped batch comes.
    assert!(
        matches!(
            results[100],
            Err(StoreError::Conflict {
                expected: 7,
                found: 9,
                ..
            })
        ),
        "{:?}",
        results[100]
    );
    let ok: Vec<&Result<Head, StoreError>> = results
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 50 && *i != 100)
        .map(|(_, r)| r)
        .collect();
    for (i, (key, result)) in keys.iter().zip(ok).enumerate() {
        let count = (i % 9) as u64;
        assert_eq!(result, &Ok(live(count, 1)), "{key}");
        assert_eq!(read_all(store, key).await, events(0, count, 1, key.root()));
    }
}

/// A batch far larger than a tick's is stored whole and read back in pages.
pub async fn large_batch_is_stored_whole<S: Store>(store: &S, ns: &Ns) {
    let key = ns.key("large");
    store.create(&key, &[]).await.unwrap();
    let all = events(0, 2_500, 4, "big");
    assert_eq!(
        append_one(store, batch(&key, 0, all.clone(), 4)).await,
        Ok(live(2_500, 4))
    );
    // A retry of the whole thing plus one more event.
    let mut again = all.clone();
    again.push(event(2_500, 5, "big-2500"));
    assert_eq!(
        append_one(store, batch(&key, 0, again.clone(), 5)).await,
        Ok(live(2_501, 5))
    );
    let mut read = Vec::new();
    while read.len() < again.len() {
        let page = store.read(&key, read.len() as u64, 1_000).await.unwrap();
        assert!(!page.is_empty());
        read.extend(page);
    }
    assert_eq!(read, again);
}

/// What one writer of [`racing_writers_never_fork`] got stored.
#[derive(Debug)]
struct Win {
    writer: usize,
    first: u64,
    payloads: Vec<Vec<u8>>,
}

/// `writers` tasks race on one match: each reads the head, appends its own
/// batch there and retries on conflict, until it has `wins` appends
/// stored. Afterwards the log has no gap and no duplicate, and every
/// stored event belongs to exactly one successful append.
pub async fn racing_writers_never_fork<S: Store>(store: &S, ns: &Ns, writers: usize, wins: usize) {
    let key = ns.key("race");
    store.create(&key, &[]).await.unwrap();
    let start = Arc::new(tokio::sync::Barrier::new(writers));
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let store = store.clone();
        let key = key.clone();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut won = Vec::new();
            let mut lost = 0usize;
            for attempt in 0.. {
                assert!(attempt < 100_000, "writer {writer} never got through");
                if won.len() == wins {
                    break;
                }
                let head = store.head(&key).await.unwrap().expect("created");
                // Let the others run between read and write, as network
                // latency would: the race must happen on every backend.
                tokio::task::yield_now().await;
                let first = head.next_sequence;
                let count = 1 + (writer + attempt) as u64 % 3;
                let tick = head.tick + 1;
                let batch_events: Vec<RecordedEvent> = (first..first + count)
                    .map(|s| event(s, tick, &format!("w{writer}-a{attempt}-{s}")))
                    .collect();
                let payloads = batch_events.iter().map(|e| e.payload.clone()).collect();
                match append_one(&store, batch(&key, first, batch_events, tick)).await {
                    Ok(head) => {
                        assert!(head.next_sequence >= first + count);
                        won.push(Win {
                            writer,
                            first,
                            payloads,
                        });
                    }
                    Err(StoreError::Conflict { .. } | StoreError::Diverged { .. }) => lost += 1,
                    Err(other) => panic!("writer {writer}: {other}"),
                }
            }
            (won, lost)
        }));
    }
    let mut wins_all = Vec::new();
    let mut conflicts = 0;
    for task in tasks {
        let (won, lost) = task.await.expect("writer task");
        wins_all.extend(won);
        conflicts += lost;
    }
    assert_eq!(wins_all.len(), writers * wins);

    let stored = read_all(store, &key).await;
    let total: usize = wins_all.iter().map(|w| w.payloads.len()).sum();
    assert_eq!(stored.len(), total, "every won event stored once, no more");
    for (i, event) in stored.iter().enumerate() {
        assert_eq!(event.sequence, i as u64, "no gap");
    }
    // Exactly one winner per sequence, and the stored bytes are its bytes.
    let mut owner: BTreeMap<u64, (usize, &Vec<u8>)> = BTreeMap::new();
    for win in &wins_all {
        for (offset, payload) in win.payloads.iter().enumerate() {
            let sequence = win.first + offset as u64;
            let previous = owner.insert(sequence, (win.writer, payload));
            assert!(
                previous.is_none(),
                "sequence {sequence} won by writers {} and {:?}",
                win.writer,
                previous.map(|p| p.0)
            );
        }
    }
    for event in &stored {
        let (_, payload) = owner[&event.sequence];
        assert_eq!(&event.payload, payload, "event {}", event.sequence);
    }
    let distinct: BTreeSet<&Vec<u8>> = stored.iter().map(|e| &e.payload).collect();
    assert_eq!(distinct.len(), stored.len(), "no duplicate payload");
    assert_eq!(
        store.head(&key).await.unwrap().map(|h| h.next_sequence),
        Some(total as u64)
    );
    // With this many writers the race must actually have happened.
    if writers > 1 {
        assert!(conflicts > 0, "no writer ever lost a race");
    }
}

/// A lease TTL no test outlives: expiry only happens where a test asks
/// for a short one.
const LONG: Duration = Duration::from_secs(60);

/// A TTL short enough to wait out.
const SHORT: Duration = Duration::from_millis(150);

/// How long the store may take to let a short TTL expire (a bound for a
/// loaded machine, not a timing assertion).
const EXPIRY_DEADLINE: Duration = Duration::from_secs(20);

/// Polls `probe` until it answers `true`, failing with `what` past
/// [`EXPIRY_DEADLINE`]: waits on the store's own clock.
async fn eventually<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !probe().await {
        assert!(
            started.elapsed() < EXPIRY_DEADLINE,
            "{what}: still not true after {EXPIRY_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the store no longer reports a live lease on `key`. A read
/// that times out on a loaded machine (a transient error) is asked again;
/// any other error fails the test.
async fn until_expired<S: LeaseStore>(store: &S, key: &MatchKey) {
    eventually("lease expiry", || async {
        match store.lease(key).await {
            Ok(lease) => lease.is_none(),
            Err(error) if error.class() == tickforge::store::ErrorClass::Transient => false,
            Err(error) => panic!("read lease: {error}"),
        }
    })
    .await;
}

/// `batch` fenced by `epoch`.
fn fenced(mut batch: AppendBatch, epoch: u64) -> AppendBatch {
    batch.epoch = Some(epoch);
    batch
}

fn is_fenced<T: std::fmt::Debug>(result: &Result<T, StoreError>, epoch: u64, current: u64) -> bool {
    matches!(result, Err(StoreError::Fenced { epoch: e, current: c, .. }) if *e == epoch && *c == current)
}

/// Claim, renew, expiry, reclaim with the next epoch, release.
pub async fn leases_claim_renew_expire_reclaim<S: Store + LeaseStore>(store: &S, ns: &Ns) {
    let key = ns.key("lease");
    assert_eq!(store.lease(&key).await.unwrap(), None, "never claimed");

    let a = store.claim(&key, "node-a", LONG).await.unwrap();
    assert_eq!((a.node.as_str(), a.epoch), ("node-a", 1));
    assert!(a.expires_in > Duration::ZERO && a.expires_in <= LONG);
    let refused = store.claim(&key, "node-b", LONG).await;
    assert!(
        matches!(&refused, Err(StoreError::Owned { owner, epoch: 1, .. }) if owner == "node-a"),
        "{refused:?}"
    );
    assert_eq!(refused.unwrap_err().label(), "owned");
    // Claiming what one holds renews it with the same epoch.
    assert_eq!(store.claim(&key, "node-a", LONG).await.unwrap().epoch, 1);
    let renewed = store.renew(&key, &a, LONG).await.unwrap();
    assert_eq!((renewed.node.as_str(), renewed.epoch), ("node-a", 1));
    let read = store.lease(&key).await.unwrap().expect("a live lease");
    assert_eq!((read.node.as_str(), read.epoch), ("node-a", 1));

    // Left to expire, it is free: the next claim takes the next epoch.
    store.renew(&key, &a, SHORT).await.unwrap();
    until_expired(store, &key).await;
    let b = store.claim(&key, "node-b", LONG).await.unwrap();
    assert_eq!((b.node.as_str(), b.epoch), ("node-b", 2));
    assert!(is_fenced(&store.renew(&key, &a, LONG).await, 1, 2));
    assert!(is_fenced(&store.release(&key, &a).await, 1, 2));
    assert_eq!(store.lease(&key).await.unwrap().map(|l| l.epoch), Some(2));

    // Released, it is free at once; releasing again is a success.
    store.release(&key, &b).await.unwrap();
    store.release(&key, &b).await.unwrap();
    assert_eq!(store.lease(&key).await.unwrap(), None);
    assert!(is_fenced(&store.renew(&key, &b, LONG).await, 2, 2));
    let c = store.claim(&key, "node-a", LONG).await.unwrap();
    assert_eq!(
        (c.node.as_str(), c.epoch),
        ("node-a", 3),
        "epochs never repeat"
    );

    // Leases are per match.
    let other = store
        .claim(&ns.key("lease-2"), "node-b", LONG)
        .await
        .unwrap();
    assert_eq!(other.epoch, 1);
    assert!(matches!(
        store.claim(&key, "bad node", LONG).await,
        Err(StoreError::Key(_))
    ));
}

/// A writer whose lease expired and was claimed by another node is fenced:
/// none of its events lands, and the new owner goes on from the stored head.
pub async fn stale_writer_is_fenced<S: Store + LeaseStore>(store: &S, ns: &Ns) {
    let key = ns.key("fenced");
    store.create(&key, &[]).await.unwrap();
    let old = store.claim(&key, "node-a", SHORT).await.unwrap();
    let mine = events(0, 3, 1, "old");
    let head = append_one(store, fenced(batch(&key, 0, mine.clone(), 1), old.epoch)).await;
    assert_eq!(head, Ok(live(3, 1)));

    // node-a pauses past its lease; node-b takes the match over.
    until_expired(store, &key).await;
    let new = store.claim(&key, "node-b", LONG).await.unwrap();
    assert_eq!(new.epoch, old.epoch + 1);

    let stale = append_one(
        store,
        fenced(batch(&key, 3, events(3, 2, 2, "stale"), 2), old.epoch),
    )
    .await;
    assert!(is_fenced(&stale, old.epoch, new.epoch), "{stale:?}");
    assert_eq!(
        stale.unwrap_err().class(),
        tickforge::store::ErrorClass::Permanent
    );
    let tick_only = append_one(store, fenced(batch(&key, 3, Vec::new(), 9), old.epoch)).await;
    assert!(is_fenced(&tick_only, old.epoch, new.epoch), "{tick_only:?}");
    assert_eq!(
        read_all(store, &key).await,
        mine,
        "no event of the stale writer"
    );
    assert_eq!(store.head(&key).await.unwrap(), Some(live(3, 1)));

    // The new owner appends from the stored head.
    let stored = store
        .head(&key)
        .await
        .unwrap()
        .expect("created")
        .next_sequence;
    let theirs = events(stored, 2, 3, "new");
    let head = append_one(
        store,
        fenced(batch(&key, stored, theirs.clone(), 3), new.epoch),
    )
    .await;
    assert_eq!(head, Ok(live(5, 3)));
    let retry = append_one(
        store,
        fenced(batch(&key, 5, events(5, 1, 4, "stale"), 4), old.epoch),
    )
    .await;
    assert!(is_fenced(&retry, old.epoch, new.epoch), "{retry:?}");
    let all: Vec<RecordedEvent> = mine.into_iter().chain(theirs).collect();
    assert_eq!(read_all(store, &key).await, all);

    // An epoch for a match nobody claimed is fenced too.
    let unclaimed = ns.key("fenced-unclaimed");
    store.create(&unclaimed, &[]).await.unwrap();
    let result = append_one(
        store,
        fenced(batch(&unclaimed, 0, events(0, 1, 1, "x"), 1), 1),
    )
    .await;
    assert!(is_fenced(&result, 1, 0), "{result:?}");
    assert_eq!(read_all(store, &unclaimed).await, Vec::new());

    // In one call, each batch is judged alone: fenced, in force, unfenced.
    let results = store
        .append(&[
            fenced(batch(&key, 5, events(5, 1, 5, "stale"), 5), old.epoch),
            fenced(batch(&key, 5, events(5, 1, 5, "new"), 5), new.epoch),
            batch(&unclaimed, 0, events(0, 1, 1, "free"), 1),
        ])
        .await
        .expect("append call");
    assert!(
        is_fenced(&results[0], old.epoch, new.epoch),
        "{:?}",
        results[0]
    );
    assert_eq!(results[1], Ok(live(6, 5)));
    assert_eq!(results[2], Ok(live(1, 1)));
    assert_eq!(
        store.read(&key, 5, 10).await.unwrap(),
        events(5, 1, 5, "new")
    );
}

/// A hand-over gives the next epoch to the new node and fences the old one.
pub async fn transfer_fences_the_old_owner<S: Store + LeaseStore>(store: &S, ns: &Ns) {
    let key = ns.key("handover");
    store.create(&key, &[]).await.unwrap();
    let old = store.claim(&key, "node-a", LONG).await.unwrap();
    append_one(
        store,
        fenced(batch(&key, 0, events(0, 2, 1, "a"), 1), old.epoch),
    )
    .await
    .unwrap();

    let new = store.transfer(&key, &old, "node-b", LONG).await.unwrap();
    assert_eq!((new.node.as_str(), new.epoch), ("node-b", old.epoch + 1));
    let read = store.lease(&key).await.unwrap().expect("held");
    assert_eq!((read.node, read.epoch), ("node-b".to_owned(), new.epoch));

    let stale = append_one(
        store,
        fenced(batch(&key, 2, events(2, 1, 2, "a"), 2), old.epoch),
    )
    .await;
    assert!(is_fenced(&stale, old.epoch, new.epoch), "{stale:?}");
    let head = append_one(
        store,
        fenced(batch(&key, 2, events(2, 1, 2, "b"), 2), new.epoch),
    )
    .await;
    assert_eq!(head, Ok(live(3, 2)));
    assert!(is_fenced(
        &store.transfer(&key, &old, "node-c", LONG).await,
        old.epoch,
        new.epoch
    ));
    assert!(is_fenced(
        &store.renew(&key, &old, LONG).await,
        old.epoch,
        new.epoch
    ));
    assert!(matches!(
        store.claim(&key, "node-a", LONG).await,
        Err(StoreError::Owned { owner, .. }) if owner == "node-b"
    ));
}

/// Snapshots and trims under a stale epoch are refused and change nothing.
pub async fn stale_snapshot_and_trim_are_refused<S: Store + LeaseStore>(store: &S, ns: &Ns) {
    let key = ns.key("fenced-snapshot");
    store.create(&key, &[]).await.unwrap();
    let old = store.claim(&key, "node-a", LONG).await.unwrap();
    let all = events(0, 6, 1, "s");
    append_one(store, fenced(batch(&key, 0, all.clone(), 1), old.epoch))
        .await
        .unwrap();
    let first = Snapshot::new(2, 1, b"state-2".to_vec(), 1);
    assert_eq!(
        store
            .save_fenced_snapshot(&key, &first, Some(old.epoch))
            .await,
        Ok(true)
    );

    let new = store.transfer(&key, &old, "node-b", LONG).await.unwrap();
    let stale = Snapshot::new(4, 1, b"stale-4".to_vec(), 1);
    let result = store
        .save_fenced_snapshot(&key, &stale, Some(old.epoch))
        .await;
    assert!(is_fenced(&result, old.epoch, new.epoch), "{result:?}");
    assert_eq!(
        store.load_snapshot(&key).await.unwrap(),
        Some(first.clone())
    );
    let result = store.trim_fenced(&key, 2, &[], Some(old.epoch)).await;
    assert!(is_fenced(&result, old.epoch, new.epoch), "{result:?}");
    assert_eq!(read_all(store, &key).await, all, "nothing trimmed");

    let current = Snapshot::new(4, 1, b"state-4".to_vec(), 1);
    assert_eq!(
        store
            .save_fenced_snapshot(&key, &current, Some(new.epoch))
            .await,
        Ok(true)
    );
    assert_eq!(store.load_snapshot(&key).await.unwrap(), Some(current));
    assert_eq!(
        store
            .trim_fenced(&key, 4, &[], Some(new.epoch))
            .await
            .unwrap(),
        trimmed(4, 4)
    );

    let unclaimed = ns.key("fenced-snapshot-unclaimed");
    store.create(&unclaimed, &[]).await.unwrap();
    let result = store
        .save_fenced_snapshot(&unclaimed, &first, Some(1))
        .await;
    assert!(is_fenced(&result, 1, 0), "{result:?}");
    assert_eq!(store.load_snapshot(&unclaimed).await.unwrap(), None);
}

fn node(id: &str, load: u32) -> NodeInfo {
    NodeInfo {
        id: id.to_owned(),
        quic_addr: format!("{id}.game.svc:4433"),
        capacity: 100,
        load,
    }
}

/// The directory lists registered nodes until their heartbeat expires.
pub async fn expired_nodes_are_not_listed<S: Store + NodeDirectory>(store: &S, ns: &Ns) {
    let (domain, edition) = ("arena", ns.edition());
    assert_eq!(store.nodes(domain, edition).await.unwrap(), Vec::new());
    store
        .register(domain, edition, &node("node-b", 3), LONG)
        .await
        .unwrap();
    store
        .register(domain, edition, &node("node-a", 5), SHORT)
        .await
        .unwrap();
    let listed = store.nodes(domain, edition).await.unwrap();
    // node-a may already have expired on a slow machine; node-b may not.
    assert!(
        listed == vec![node("node-a", 5), node("node-b", 3)] || listed == vec![node("node-b", 3)],
        "{listed:?}"
    );

    // node-a stops heartbeating: it drops out of the listing.
    eventually("node-a's registration expiring", || async {
        store.nodes(domain, edition).await.unwrap() == vec![node("node-b", 3)]
    })
    .await;

    // A heartbeat refreshes the description; other editions see nothing.
    store
        .register(domain, edition, &node("node-b", 4), LONG)
        .await
        .unwrap();
    assert_eq!(
        store.nodes(domain, edition).await.unwrap(),
        vec![node("node-b", 4)]
    );
    assert_eq!(store.nodes(domain, "elsewhere").await.unwrap(), Vec::new());

    assert_eq!(store.deregister(domain, edition, "node-b").await, Ok(true));
    assert_eq!(store.deregister(domain, edition, "node-b").await, Ok(false));
    assert_eq!(store.nodes(domain, edition).await.unwrap(), Vec::new());

    let bad = NodeInfo {
        quic_addr: "a\tb".to_owned(),
        ..node("node-c", 0)
    };
    assert!(matches!(
        store.register(domain, edition, &bad, LONG).await,
        Err(StoreError::Key(_))
    ));
}

/// An accepted fenced batch can renew its lease in the same call; a
/// refused or released one does not.
pub async fn append_renews_the_lease<S: Store + LeaseStore>(store: &S, ns: &Ns) {
    let key = ns.key("renewing");
    store.create(&key, &[]).await.unwrap();
    let old = store.claim(&key, "node-a", SHORT).await.unwrap();
    let mut renewing = fenced(batch(&key, 0, events(0, 1, 1, "a"), 1), old.epoch);
    renewing.renew_lease = Some(LONG);
    assert_eq!(append_one(store, renewing).await, Ok(live(1, 1)));
    let lease = store
        .lease(&key)
        .await
        .unwrap()
        .expect("renewed, not expired");
    assert_eq!(lease.epoch, old.epoch);
    assert!(
        lease.expires_in > SHORT,
        "renewed to {:?}",
        lease.expires_in
    );

    // A stale writer's renewal is refused with its batch.
    let new = store.transfer(&key, &old, "node-b", SHORT).await.unwrap();
    let mut stale = fenced(batch(&key, 1, events(1, 1, 2, "a"), 2), old.epoch);
    stale.renew_lease = Some(LONG);
    let result = append_one(store, stale).await;
    assert!(is_fenced(&result, old.epoch, new.epoch), "{result:?}");
    until_expired(store, &key).await;

    // Released, the lease is not brought back by a write of its epoch.
    let held = store.claim(&key, "node-b", LONG).await.unwrap();
    store.release(&key, &held).await.unwrap();
    let mut after_release = fenced(batch(&key, 1, events(1, 1, 2, "b"), 2), held.epoch);
    after_release.renew_lease = Some(LONG);
    assert_eq!(append_one(store, after_release).await, Ok(live(2, 2)));
    assert_eq!(store.lease(&key).await.unwrap(), None);
}
