//! 5 % of state datagrams lost (the server's seeded test hook): clients
//! still converge to the server's state, and every reliable event arrives,
//! in order, with no gap.

mod net_support;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use net_support::*;
use tickforge::arena::bot::Bot;
use tickforge::arena::{Arena, ArenaEvent};
use tickforge::client::{JoinRequest, Session, SessionEvent};
use tickforge::engine::EventEnvelope;
use tickforge::game::Game;
use tickforge::game::PlayerId;
use tickforge::net::DatagramLoss;

/// Plays `session` with a bot until `stop` fires.
async fn play(session: &Session<Arena>, seed: u64, stop: tokio::sync::watch::Receiver<bool>) {
    let arena = arena(Default::default());
    let mut bot = Bot::new(session.player().unwrap(), seed);
    let mut states = session.states();
    let mut stop = stop;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            changed = states.changed() => {
                if changed.is_err() {
                    return;
                }
                let state = states.borrow_and_update().clone();
                if let Some(state) = state
                    && let Some(command) = bot.next_command(&arena, &state.state)
                {
                    // Results are not awaited: one command per state.
                    let _ = session.send(command);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_converge_and_get_every_reliable_event_despite_loss() {
    let server = start(Options {
        loss: Some(DatagramLoss {
            per_mille: 50,
            seed: 7,
        }),
        ..Options::default()
    })
    .await;
    server.engine.create_match("m1").await.unwrap();
    let recorder = record(&server.engine, "m1");
    let mut published = server.engine.subscribe("m1").unwrap().events;
    let ticket = server.ticket("m1", 100);
    let mut sessions = vec![
        server
            .client
            .join::<Arena>(JoinRequest::spectator("m1", Some(&ticket)))
            .await
            .unwrap(),
    ];
    for p in 1..=4 {
        sessions.push(server.join("m1", p).await);
    }

    // Bots play for three seconds.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let players = &sessions[1..];
    let games = async {
        let plays = players
            .iter()
            .enumerate()
            .map(|(i, s)| play(s, i as u64 + 1, stop_rx.clone()));
        futures_util::future::join_all(plays).await;
    };
    let timer = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let _ = stop_tx.send(true);
    };
    tokio::join!(games, timer);

    // Every event the engine published; the reliable ones must all arrive.
    let arena = arena(Default::default());
    // Let the last commands' tick publish, then take everything published.
    let settle = state_where(&sessions[0], |_| true).await.tick + 5;
    state_where(&sessions[0], |s| s.tick >= settle).await;
    let mut all: Vec<EventEnvelope<ArenaEvent>> = Vec::new();
    while let Ok(e) = published.try_recv() {
        all.push((*e).clone());
    }
    let reliable: Vec<_> = all
        .iter()
        .filter(|e| arena.is_reliable(&e.event))
        .cloned()
        .collect();
    assert!(
        reliable.iter().any(|e| matches!(
            e.event,
            ArenaEvent::Fired {
                tagged: Some(_),
                ..
            }
        )),
        "the bots scored at least once"
    );

    for session in &mut sessions {
        let from = session.welcome().events_from;
        let expected: Vec<_> = reliable
            .iter()
            .filter(|e| e.sequence >= from)
            .cloned()
            .collect();
        let mut got = Vec::new();
        while got.len() < expected.len() {
            match event_where(session, |_| true).await {
                SessionEvent::Event(e) => got.push(e),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, expected, "reliable events of {:?}", session.player());
        assert_eq!(session.stats().gaps.load(Relaxed), 0);

        // Converged: a state after play stopped equals the server's state
        // of the same tick.
        // (The recorder follows a watch too and may skip a tick under load.)
        let seen = state_where(session, |s| {
            s.tick >= settle && recorder.at(s.tick).is_some()
        })
        .await;
        assert_eq!(Some(seen.state.clone()), recorder.at(seen.tick));
        let players: Vec<PlayerId> = seen.state.players.keys().copied().collect();
        assert_eq!(
            players,
            vec![PlayerId(1), PlayerId(2), PlayerId(3), PlayerId(4)]
        );
    }
    let dropped = server.stats.test_dropped.load(Relaxed);
    let states = server.stats.states.load(Relaxed);
    assert!(dropped > 0, "the hook dropped nothing");
    assert!(
        (dropped as f64) < states as f64 * 0.12,
        "{dropped} of {states} dropped"
    );
    assert!(
        server.stats.deltas.load(Relaxed) > states / 2,
        "most states are deltas"
    );
    server.stop().await;
}
