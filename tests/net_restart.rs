//! The server (engine and endpoint) stops and starts again on the same
//! store: clients reconnect by themselves with their resume tokens, play
//! on, and their final state equals an independent rebuild of the match
//! from its log.

mod net_support;

use std::time::Duration;

use net_support::*;
use tickforge::arena::{ArenaCommand, ArenaRules, Dir};
use tickforge::client::SessionEvent;
use tickforge::engine::rebuild_from_start;
use tickforge::game::PlayerId;
use tickforge::net::CloseCode;
use tickforge::net::protocol::CommandStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_resume_after_a_restart_and_match_the_rebuilt_log() {
    let rules = ArenaRules {
        // The match ends by itself, so its final state is well defined.
        time_limit_ticks: 120,
        ..ArenaRules::default()
    };
    let first = start(Options {
        rules,
        grace: Duration::from_secs(20),
        ..Options::default()
    })
    .await;
    let mut sessions = Vec::new();
    for p in 1..=3 {
        sessions.push(first.join("m1", p).await);
    }
    state_where(&sessions[0], |s| s.state.players.len() == 3).await;
    for session in &sessions {
        for dir in [Dir::North, Dir::East] {
            let status = session.command(ArenaCommand::Turn(dir)).await.unwrap();
            assert!(
                matches!(status, CommandStatus::Accepted { .. }),
                "{status:?}"
            );
        }
    }
    let tokens: Vec<_> = sessions.iter().map(|s| s.resume_token().unwrap()).collect();

    // Stop everything; the sessions notice and start resuming.
    let options = first.stop().await;
    for session in &mut sessions {
        let event = event_where(session, |e| matches!(e, SessionEvent::Disconnected { .. })).await;
        let SessionEvent::Disconnected { code, resuming, .. } = event else {
            unreachable!()
        };
        assert_eq!(code, Some(CloseCode::ServerShutdown));
        assert!(resuming);
    }

    // Same store, same address, same certificate and secret.
    let second = start(options).await;
    for (i, session) in sessions.iter_mut().enumerate() {
        event_where(session, |e| matches!(e, SessionEvent::Resumed { .. })).await;
        assert_eq!(session.player(), Some(PlayerId(i as u32 + 1)));
        assert_eq!(session.resume_token().as_deref(), Some(tokens[i].as_str()));
    }
    // Back in their slots: they play on.
    for session in &sessions {
        let status = session
            .command(ArenaCommand::Turn(Dir::South))
            .await
            .unwrap();
        assert!(
            matches!(status, CommandStatus::Accepted { .. }),
            "{status:?}"
        );
    }

    // The match runs out of time; every client gets the final state.
    let mut finals = Vec::new();
    for session in &mut sessions {
        event_where(session, |e| matches!(e, SessionEvent::MatchOver { .. })).await;
        let last = state_where(session, |s| s.over).await;
        finals.push(last);
    }
    let store = second.options.store.clone();
    let key = second.engine.key("m1").unwrap();
    second.stop().await;
    let rebuilt = rebuild_from_start(&arena(rules), &store, &key)
        .await
        .unwrap();
    for last in finals {
        assert_eq!(last.tick, rebuilt.tick);
        assert_eq!(last.state, rebuilt.state);
    }
    assert_eq!(rebuilt.state.players.len(), 3);
    assert!(
        rebuilt
            .state
            .players
            .values()
            .all(|p| p.facing == Dir::South)
    );
}
