//! Rejoin: a dropped player resumes its slot within the grace window;
//! after it the server takes the player out and refuses the token.

mod net_support;

use std::time::Duration;

use net_support::*;
use tickforge::arena::{Arena, ArenaCommand, ArenaEvent, Dir};
use tickforge::client::{JoinRequest, SessionEvent};
use tickforge::game::PlayerId;
use tickforge::net::CloseCode;
use tickforge::net::protocol::CommandStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_player_resumes_its_slot_within_grace() {
    let server = start(Options {
        grace: Duration::from_secs(10),
        ..Options::default()
    })
    .await;
    let mut watcher = server.join("m1", 1).await;
    let dropped = server.join("m1", 2).await;
    let token = dropped.resume_token().unwrap();
    let before = state_where(&watcher, |s| s.state.players.len() == 2).await;
    let events_seen = dropped.welcome().events_from;
    let open_before = server.stats.open.load(std::sync::atomic::Ordering::Relaxed);
    dropped.close();
    // Wait until the server has noticed the drop (its connection count falls).
    tokio::time::timeout(WAIT, async {
        while server.stats.open.load(std::sync::atomic::Ordering::Relaxed) >= open_before {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();

    let mut request = JoinRequest::resume("m1", &token);
    request.events_from = Some(events_seen);
    let mut back = server.client.join::<Arena>(request).await.unwrap();
    assert_eq!(back.player(), Some(PlayerId(2)));
    // The events it missed while away are replayed: at least its own join.
    let SessionEvent::Event(first) = event_where(&mut back, |_| true).await else {
        panic!("expected an event first");
    };
    assert!(matches!(
        first.event,
        ArenaEvent::Joined {
            player: PlayerId(2),
            ..
        }
    ));
    // Same slot: still in the match, and it can play.
    let now = state_where(&back, |s| s.tick > before.tick).await;
    assert_eq!(
        now.state.players[&PlayerId(2)].name,
        before.state.players[&PlayerId(2)].name
    );
    let status = back.command(ArenaCommand::Turn(Dir::West)).await.unwrap();
    assert!(
        matches!(status, CommandStatus::Accepted { .. }),
        "{status:?}"
    );
    // The other player never saw it leave.
    let turned = state_where(&watcher, |s| {
        s.state.players.get(&PlayerId(2)).map(|p| p.facing) == Some(Dir::West)
    })
    .await;
    assert_eq!(turned.state.players.len(), 2);
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(50), watcher.next_event()).await
    {
        assert!(
            !matches!(event, SessionEvent::Event(ref e) if matches!(e.event, ArenaEvent::Left { .. })),
            "{event:?}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_grace_the_slot_is_freed_and_the_token_refused() {
    let server = start(Options {
        grace: Duration::from_millis(300),
        ..Options::default()
    })
    .await;
    let mut watcher = server.join("m1", 1).await;
    let dropped = server.join("m1", 2).await;
    let token = dropped.resume_token().unwrap();
    state_where(&watcher, |s| s.state.players.len() == 2).await;
    dropped.close();

    // The server takes player 2 out when its grace window ends.
    event_where(&mut watcher, |e| {
        matches!(e, SessionEvent::Event(env) if env.event == ArenaEvent::Left { player: PlayerId(2) })
    })
    .await;
    let state = state_where(&watcher, |s| s.state.players.len() == 1).await;
    assert!(state.state.players.contains_key(&PlayerId(1)));

    let refused = server
        .client
        .join::<Arena>(JoinRequest::resume("m1", &token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(CloseCode::ResumeRefused), "{refused}");

    // A fresh ticket for the same player id joins anew.
    let again = server.join("m1", 2).await;
    state_where(&again, |s| s.state.players.len() == 2).await;
    server.stop().await;
}
