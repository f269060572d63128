//! Players over real QUIC on loopback: join, command, and every other
//! client (spectators included) sees the effect in its next state.

mod net_support;

use net_support::*;
use tickforge::arena::{ArenaCommand, ArenaEvent, Dir};
use tickforge::client::{JoinRequest, SessionEvent};
use tickforge::game::PlayerId;
use tickforge::net::protocol::{CommandStatus, Role};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_shows_in_every_clients_next_state() {
    let server = start(Options::default()).await;
    server.engine.create_match("m1").await.unwrap();
    // The spectator comes first, so it sees every join as an event.
    let ticket = server.ticket("m1", 99);
    let mut spectator = server
        .client
        .join::<tickforge::arena::Arena>(JoinRequest::spectator("m1", Some(&ticket)))
        .await
        .unwrap();
    assert_eq!(spectator.player(), None);
    let mut players = Vec::new();
    for p in 1..=3 {
        players.push(server.join("m1", p).await);
    }
    assert_eq!(players[0].player(), Some(PlayerId(1)));
    assert_eq!(players[0].welcome().role, Role::Player);
    let recorder = record(&server.engine, "m1");

    // Everyone is in every client's state.
    for session in players.iter().chain(std::iter::once(&spectator)) {
        state_where(session, |s| s.state.players.len() == 3).await;
    }

    // Player 1 moves somewhere free; the result names the tick.
    let me = state_where(&players[0], |_| true).await;
    let pos = me.state.players[&PlayerId(1)].pos;
    let arena = arena(Default::default());
    let dir = Dir::ALL
        .into_iter()
        .find(|d| {
            let to = d.step(pos);
            !arena.map().blocked(to) && me.state.players.values().all(|p| p.pos != to)
        })
        .expect("a free neighbouring cell");
    let status = players[0].command(ArenaCommand::Move(dir)).await.unwrap();
    let CommandStatus::Accepted { tick, events, .. } = status else {
        panic!("move refused: {status:?}");
    };
    assert_eq!(events, 1);
    // Every client's first state at or after that tick shows the move, and
    // equals the server's state of the same tick.
    for session in players.iter().chain(std::iter::once(&spectator)) {
        let seen = state_where(session, |s| s.tick >= tick).await;
        assert_eq!(seen.state.players[&PlayerId(1)].pos, dir.step(pos));
        // The recorder follows a watch too and may skip a tick under load.
        let seen = state_where(session, |s| s.tick >= tick && recorder.at(s.tick).is_some()).await;
        assert_eq!(Some(seen.state.clone()), recorder.at(seen.tick));
    }

    // A refused command comes back with the game's reason.
    let status = players[1]
        .command(ArenaCommand::Join {
            name: "again".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        status,
        CommandStatus::Rejected {
            reason: "you have already joined".into()
        }
    );
    // Spectators cannot play.
    let status = spectator.command(ArenaCommand::Fire).await.unwrap();
    assert!(
        matches!(status, CommandStatus::Rejected { .. }),
        "{status:?}"
    );

    // The spectator received the three joins as reliable events, in order.
    let mut joined = Vec::new();
    while joined.len() < 3 {
        if let SessionEvent::Event(e) = event_where(&mut spectator, |_| true).await
            && let ArenaEvent::Joined { player, .. } = e.event
        {
            joined.push(player);
        }
    }
    joined.sort();
    assert_eq!(joined, vec![PlayerId(1), PlayerId(2), PlayerId(3)]);
    // Moves are not reliable events: they show in states only.
    assert!(
        server
            .stats
            .deltas
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_mode_creates_matches_and_picks_player_ids() {
    let server = start(Options {
        open_mode: true,
        ..Options::default()
    })
    .await;
    let a = server
        .client
        .join::<tickforge::arena::Arena>(JoinRequest::open_player("fresh", "ada"))
        .await
        .unwrap();
    let b = server
        .client
        .join::<tickforge::arena::Arena>(JoinRequest::open_player("fresh", "bob"))
        .await
        .unwrap();
    assert_ne!(a.player(), b.player());
    let state = state_where(&b, |s| s.state.players.len() == 2).await;
    let names: Vec<_> = state
        .state
        .players
        .values()
        .map(|p| p.name.clone())
        .collect();
    assert!(names.contains(&"ada".to_owned()) && names.contains(&"bob".to_owned()));
    server.stop().await;
}
