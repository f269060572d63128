//! What the server keeps per match, over real QUIC on loopback: it is
//! forgotten when the match ends even with nobody connected (and the
//! memory store frees the finished log), and the players of a restored
//! match get the grace window whether or not anyone comes back.
//!
//! Server-side bookkeeping has no event a test could await, so its
//! counters are polled (every 10 ms, bounded by `WAIT`).

mod net_support;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use net_support::*;
use tickforge::arena::ArenaRules;
use tickforge::game::PlayerId;
use tickforge::store::{EventStore, MatchStatus, MemoryStore, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_match_that_ends_with_nobody_connected_is_forgotten_and_its_log_freed() {
    let store = MemoryStore::with_retention(Duration::ZERO);
    let server = start(Options {
        // Three seconds of play at 30 Hz.
        rules: ArenaRules {
            time_limit_ticks: 90,
            ..ArenaRules::default()
        },
        store: store.clone(),
        ..Options::default()
    })
    .await;
    let session = server.join("m1", 1).await;
    state_where(&session, |s| s.state.players.contains_key(&PlayerId(1))).await;
    let stats = server.stats.clone();
    assert_eq!(stats.matches_tracked.load(Relaxed), 1);
    let mut feed = server.engine.subscribe("m1").unwrap();

    // Nobody is connected when the match ends.
    drop(session);
    wait_until("the server saw the player go", || {
        stats.open.load(Relaxed) == 0
    })
    .await;
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            if feed.updates.changed().await.is_err() {
                return false; // left the engine without a final state
            }
            if feed.updates.borrow().as_ref().is_some_and(|u| u.over) {
                return true;
            }
        }
    })
    .await
    .expect("the match did not end");
    assert!(ended);
    assert_eq!(stats.open.load(Relaxed), 0);

    wait_until("the match's hub and slots are forgotten", || {
        stats.matches_tracked.load(Relaxed) == 0
    })
    .await;

    // The memory store freed the finished log and snapshot, and still
    // knows the match as over.
    let key = server.engine.key("m1").unwrap();
    tokio::time::timeout(WAIT, async {
        while store.head(&key).await.unwrap().unwrap().status != MatchStatus::Ended {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the store never marked the match ended");
    assert!(matches!(
        store.read(&key, 0, 10).await,
        Err(StoreError::Trimmed { .. })
    ));
    assert!(
        tickforge::store::SnapshotStore::load_snapshot(&store, &key)
            .await
            .unwrap()
            .is_none()
    );
    server.stop().await;
}

/// Players 1 and 2 play `m1`, disconnect, and the server stops (final
/// snapshot with both in the match). Returns the options to restart with.
async fn played_then_stopped() -> Options {
    let first = start(Options::default()).await;
    let one = first.join("m1", 1).await;
    let two = first.join("m1", 2).await;
    state_where(&two, |s| {
        s.state.players.contains_key(&PlayerId(1)) && s.state.players.contains_key(&PlayerId(2))
    })
    .await;
    // Gone for good: no session will try to resume.
    drop(one);
    drop(two);
    first.stop().await
}

/// Awaits a state of `m1` on the engine where `gone` are out and `present` in.
async fn players_become(server: &TestServer, gone: &[u32], present: &[u32]) {
    let mut feed = server.engine.subscribe("m1").unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            feed.updates
                .changed()
                .await
                .expect("the match left the engine");
            let update = feed.updates.borrow_and_update().clone().unwrap();
            let players = &update.state.players;
            if gone.iter().all(|p| !players.contains_key(&PlayerId(*p)))
                && present.iter().all(|p| players.contains_key(&PlayerId(*p)))
            {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("players {gone:?} were not taken out"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_players_of_a_match_restored_on_start_are_removed_after_the_grace_window() {
    let options = played_then_stopped().await;
    let second = start(Options {
        grace: Duration::from_millis(300),
        adopt_restored: true,
        ..options
    })
    .await;
    assert!(second.engine.is_hosted("m1"), "restored on start");
    // Nobody connects: the grace windows run out on their own.
    players_become(&second, &[1, 2], &[]).await;
    assert_eq!(second.stats.slots_freed.load(Relaxed), 2);
    assert_eq!(second.stats.connections.load(Relaxed), 0);
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_join_into_a_match_restored_on_demand_starts_the_others_grace() {
    let options = played_then_stopped().await;
    let second = start(Options {
        grace: Duration::from_millis(300),
        restore_on_start: false,
        ..options
    })
    .await;
    assert!(!second.engine.is_hosted("m1"));
    // A new player's ticket brings the match back; 1 and 2 never resume.
    let three = second.join("m1", 3).await;
    players_become(&second, &[1, 2], &[3]).await;
    assert_eq!(second.stats.slots_freed.load(Relaxed), 2);
    state_where(&three, |s| {
        s.state.players.contains_key(&PlayerId(3)) && s.state.players.len() == 1
    })
    .await;
    second.stop().await;
}
