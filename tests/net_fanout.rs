//! The state fan-out, over real QUIC on loopback: one task per match sends
//! each tick's states to all of its connections (woken once per tick, not
//! once per connection), drops a connection that went away, and ends with
//! its match or its last connection.
//!
//! The fan-out's counters are server-side bookkeeping with no event a
//! test could await, so they are polled (every 10 ms, bounded by `WAIT`).

mod net_support;

use std::sync::atomic::Ordering::Relaxed;

use net_support::*;
use tickforge::arena::ArenaRules;
use tickforge::client::SessionEvent;
use tickforge::game::{PlayerId, Tick};

/// The latest tick the engine published for `root`.
fn engine_tick(server: &TestServer, root: &str) -> Tick {
    let feed = server.engine.subscribe(root).expect("the match is hosted");
    feed.updates
        .borrow()
        .as_ref()
        .map_or(0, |update| update.tick)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fanout_wakes_once_per_tick_for_all_connections_of_its_match() {
    let server = start(Options::default()).await;
    let stats = server.stats.clone();
    let mut players = Vec::new();
    for player in 1..=8 {
        players.push(server.join("m1", player).await);
    }
    wait_until("the 8 connections joined the fan-out", || {
        stats.fanout_connections.load(Relaxed) == 8
    })
    .await;
    assert_eq!(stats.fanouts.load(Relaxed), 1, "one fan-out for the match");
    // Each join's reliable event sent every connection back to its session
    // for a moment: the fan-out waited for them instead of ending.
    assert_eq!(stats.fanouts_started.load(Relaxed), 1);

    let wakeups_before = stats.fanout_wakeups.load(Relaxed);
    let states_before = stats.states.load(Relaxed);
    let from = state_where(&players[7], |_| true).await.tick;
    // Every client keeps getting states from the fan-out.
    for session in &players {
        state_where(session, |s| s.tick >= from + 30).await;
    }
    let wakeups = stats.fanout_wakeups.load(Relaxed);
    let states = stats.states.load(Relaxed);
    let latest = engine_tick(&server, "m1");

    // At most one wake per tick published since the match started, where
    // one task per connection would have woken 8 times per tick.
    assert!(
        wakeups <= latest + 1,
        "{wakeups} fan-out wake-ups for {latest} ticks"
    );
    // (A wake may cover several ticks when the fan-out ran late.)
    let woken = wakeups - wakeups_before;
    assert!(woken > 0, "the clients got states without a fan-out wake");
    // Each wake sent a state to each of the 8 connections (the two reads
    // of the counters may fall in the middle of a wake at either end).
    let sent = states - states_before;
    assert!(
        sent + 16 >= 8 * woken,
        "{sent} states for {woken} wake-ups of 8 connections"
    );
    assert_eq!(stats.fanouts.load(Relaxed), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_leaves_the_fanout_which_ends_with_its_match() {
    let server = start(Options {
        // Six seconds of play at 30 Hz.
        rules: ArenaRules {
            time_limit_ticks: 180,
            ..ArenaRules::default()
        },
        ..Options::default()
    })
    .await;
    let stats = server.stats.clone();
    let mut one = server.join("m1", 1).await;
    let two = server.join("m1", 2).await;
    state_where(&two, |s| s.state.players.contains_key(&PlayerId(1))).await;
    wait_until("both connections joined the fan-out", || {
        stats.fanout_connections.load(Relaxed) == 2
    })
    .await;
    assert_eq!(stats.fanouts.load(Relaxed), 1);

    drop(two);
    wait_until("the fan-out dropped the closed connection", || {
        stats.open.load(Relaxed) == 1 && stats.fanout_connections.load(Relaxed) == 1
    })
    .await;
    // The other connection still gets states.
    let now = state_where(&one, |_| true).await.tick;
    state_where(&one, |s| s.tick >= now + 5).await;
    assert_eq!(stats.fanouts.load(Relaxed), 1);

    let over = event_where(&mut one, |e| matches!(e, SessionEvent::MatchOver { .. })).await;
    assert!(matches!(over, SessionEvent::MatchOver { tick } if tick >= 180));
    wait_until("the fan-out ended with its match", || {
        stats.fanouts.load(Relaxed) == 0 && stats.fanout_connections.load(Relaxed) == 0
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fanout_left_without_connections_ends_and_the_next_session_starts_one() {
    let server = start(Options::default()).await;
    let stats = server.stats.clone();
    let one = server.join("m1", 1).await;
    state_where(&one, |s| s.state.players.contains_key(&PlayerId(1))).await;
    wait_until("the connection joined the fan-out", || {
        stats.fanouts.load(Relaxed) == 1 && stats.fanout_connections.load(Relaxed) == 1
    })
    .await;

    drop(one);
    wait_until("the fan-out with no connection left ended", || {
        stats.fanouts.load(Relaxed) == 0 && stats.fanout_connections.load(Relaxed) == 0
    })
    .await;
    assert!(server.engine.is_hosted("m1"), "the match goes on");

    let two = server.join("m1", 2).await;
    let now = state_where(&two, |_| true).await.tick;
    state_where(&two, |s| s.tick >= now + 5).await;
    assert_eq!(stats.fanouts.load(Relaxed), 1);
    assert_eq!(stats.fanouts_started.load(Relaxed), 2);
    assert_eq!(stats.fanout_connections.load(Relaxed), 1);
    server.stop().await;
}
