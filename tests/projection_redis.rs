//! The arena leaderboard projection against a real redis-server: it counts
//! every tag exactly once, also when its runner dies mid-way and a new one
//! takes over, and a stale runner cannot apply a page twice.

#![cfg(feature = "redis")]

mod support;

use support::TestRedis;
use tickforge::arena::bot::Bot;
use tickforge::arena::{Arena, ArenaEvent};
use tickforge::engine::{EventEnvelope, MatchCore, MatchPolicy};
use tickforge::game::PlayerId;
use tickforge::projection::leaderboard::{HANDLER, Leaderboard, tags_by_player};
use tickforge::projection::{PAGE, Projection, catch_up};
use tickforge::store::{EventStore, MatchKey, RecordedEvent, SnapshotStore};

/// Plays `ticks` ticks of an 8-bot match into the store; returns every event.
async fn play_into_store(
    store: &tickforge::store::RedisStore,
    key: &MatchKey,
    ticks: u64,
) -> Vec<RecordedEvent> {
    let arena = Arena::default();
    store.create(key, &[]).await.expect("create");
    let mut core: MatchCore<Arena, ()> = MatchCore::new(
        &arena,
        key.clone(),
        MatchPolicy::default(),
        &tickforge::game::MatchSetup::default(),
    )
    .expect("setup");
    let mut bots: Vec<Bot> = (1..=8)
        .map(|p| Bot::new(PlayerId(p), 7 + u64::from(p)))
        .collect();
    let mut all = Vec::new();
    for _ in 0..ticks {
        for bot in &mut bots {
            if let Some(command) = bot.next_command(&arena, core.state()) {
                core.handle_command(bot.player(), command, ())
                    .expect("queue has room");
            }
        }
        let _ = core.run_tick(&arena);
        if let Some(batch) = core.poll_batch() {
            all.extend(batch.events.iter().cloned());
            let results = store.append(vec![batch]).await.expect("append");
            results.into_iter().for_each(|r| {
                r.expect("batch accepted");
            });
        }
    }
    all
}

fn decode(events: &[RecordedEvent]) -> Vec<EventEnvelope<ArenaEvent>> {
    events
        .iter()
        .map(|r| tickforge::codec::decode(&r.payload).expect("stored envelope decodes"))
        .collect()
}

fn sorted(mut rows: Vec<(String, u64)>) -> Vec<(String, u64)> {
    rows.sort();
    rows
}

#[tokio::test]
async fn leaderboard_counts_every_tag_once_across_runner_restarts() {
    let redis = TestRedis::start().await;
    let store = redis.store().await;
    let key = redis.key("board");
    let events = play_into_store(&store, &key, 900).await;
    assert!(
        events.len() > 2 * PAGE,
        "need several pages, got {} events",
        events.len()
    );
    let expected: Vec<(String, u64)> = tags_by_player(&decode(&events)).into_iter().collect();
    assert!(!expected.is_empty(), "bots tagged nobody in 900 ticks");

    // A runner that dies after one page...
    let first = Leaderboard::new(store.clone());
    let reached = catch_up(&store, &first, &key, 1).await.expect("first page");
    assert_eq!(reached, PAGE as u64);
    drop(first);
    // ...and a fresh one that finishes the job.
    let second = Leaderboard::new(redis.store().await);
    let reached = catch_up(&store, &second, &key, usize::MAX)
        .await
        .expect("catch up");
    assert_eq!(reached, events.len() as u64);
    assert_eq!(
        sorted(second.standings(&key).await.expect("board")),
        expected
    );

    // Running again changes nothing.
    let again = catch_up(&store, &second, &key, usize::MAX)
        .await
        .expect("idle catch up");
    assert_eq!(again, events.len() as u64);
    assert_eq!(
        sorted(second.standings(&key).await.expect("board")),
        expected
    );
}

#[tokio::test]
async fn a_stale_runner_cannot_apply_a_page_twice() {
    let redis = TestRedis::start().await;
    let store = redis.store().await;
    let key = redis.key("stale");
    let events = decode(&play_into_store(&store, &key, 300).await);
    let board = Leaderboard::new(store.clone());
    let end = catch_up(&store, &board, &key, usize::MAX)
        .await
        .expect("catch up");
    let before = board.standings(&key).await.expect("board");

    // A runner that read from position 0 long ago tries to apply its page now.
    let stored = board.apply(&key, 0, &events).await.expect("apply");
    assert_eq!(stored, end, "the stored position wins");
    assert_eq!(board.standings(&key).await.expect("board"), before);
    assert_eq!(board.position(&key).await.expect("position"), end);
}

/// With trimming on and the leaderboard listed to keep its events, the log
/// is trimmed only as far as the board has counted, the board ends up
/// exact, and a rebuild from sequence 0 is refused rather than wrong.
#[tokio::test]
async fn trimming_waits_for_the_leaderboard() {
    let redis = TestRedis::start().await;
    let store = redis.store().await;
    let key = redis.key("trimmed-board");
    let events = play_into_store(&store, &key, 900).await;
    let expected: Vec<(String, u64)> = tags_by_player(&decode(&events)).into_iter().collect();
    let head = events.len() as u64;
    let snapshot =
        tickforge::store::Snapshot::new(head, 900, b"the engine's state at the head".to_vec(), 1);
    assert!(
        store
            .save_snapshot(&key, &snapshot)
            .await
            .expect("snapshot")
    );
    let keep_for = [HANDLER.to_owned()];

    // The board never ran: nothing may go.
    let trimmed = store.trim(&key, head, &keep_for).await.expect("trim");
    assert_eq!((trimmed.retained_from, trimmed.removed), (0, 0));

    // One page counted: only that page goes.
    let board = Leaderboard::new(store.clone());
    let reached = catch_up(&store, &board, &key, 1).await.expect("one page");
    let trimmed = store.trim(&key, head, &keep_for).await.expect("trim");
    assert_eq!(trimmed.retained_from, reached);

    // The rest, after a restart of the runner: the board is exact and the
    // log goes up to the snapshot.
    let board = Leaderboard::new(redis.store().await);
    let reached = catch_up(&store, &board, &key, usize::MAX)
        .await
        .expect("catch up");
    assert_eq!(reached, head);
    assert_eq!(
        sorted(board.standings(&key).await.expect("board")),
        expected
    );
    let trimmed = store.trim(&key, head, &keep_for).await.expect("trim");
    assert_eq!(trimmed.retained_from, head);

    let rebuild = tickforge::engine::rebuild_from_start(&Arena::default(), &store, &key).await;
    match rebuild {
        Err(error) => assert!(
            error.to_string().contains("trimmed"),
            "unexpected error: {error}"
        ),
        Ok(_) => panic!("rebuilt from sequence 0 a log trimmed up to {head}"),
    }
}
