//! Player inputs as datagrams (protocol 3) over real QUIC with the real
//! engine: applied exactly once and in order despite lost datagrams both
//! ways, acknowledged inside states (`Applied { tick }` is followed by a
//! state that shows it), rejections reliable with the game's reason, and
//! abusive datagrams closed with their own code while others play on.

mod net_support;

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;

use net_support::*;
use tickforge::arena::{Arena, ArenaCommand, ArenaEvent, Dir};
use tickforge::client::{
    Client, ClientConfig, ClientError, InputStatus, JoinRequest, PendingInput,
};
use tickforge::game::PlayerId;
use tickforge::net::protocol::{self, ClientDatagram};
use tickforge::net::{CloseCode, DatagramLoss};

/// A pseudo-random direction sequence (no two neighbours alike, so every
/// turn is visible).
fn directions(n: usize) -> Vec<Dir> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut out: Vec<Dir> = Vec::with_capacity(n);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let dir = Dir::ALL[(x % 4) as usize];
        if out.last() != Some(&dir) {
            out.push(dir);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_are_applied_exactly_once_and_in_order_despite_loss_both_ways() {
    let server = start(Options {
        loss: Some(DatagramLoss {
            per_mille: 200,
            seed: 11,
        }),
        ..Options::default()
    })
    .await;
    server.engine.create_match("m1").await.unwrap();
    let mut events = server.engine.subscribe("m1").unwrap().events;
    // A client that loses 30 % of its input datagrams.
    let mut config = ClientConfig::new(server.addr, server.client.config().trusted.clone());
    config.test_input_datagram_loss = Some(DatagramLoss {
        per_mille: 300,
        seed: 5,
    });
    let client = Client::new(config).unwrap();
    let ticket = server.ticket("m1", 1);
    let session = client
        .join::<Arena>(JoinRequest::player("m1", &ticket, "lossy"))
        .await
        .unwrap();
    state_where(&session, |s| s.state.players.contains_key(&PlayerId(1))).await;

    let sent = directions(120);
    let mut pending: VecDeque<PendingInput> = VecDeque::new();
    let mut applied = 0;
    for dir in &sent {
        let input = loop {
            match session.input(ArenaCommand::Turn(*dir)) {
                Ok(input) => break input,
                Err(ClientError::Busy) => {
                    // The window is full: wait for the oldest.
                    let oldest = pending.pop_front().expect("busy with nothing pending");
                    let status = tokio::time::timeout(WAIT, oldest).await.unwrap().unwrap();
                    assert!(matches!(status, InputStatus::Applied { .. }), "{status:?}");
                    applied += 1;
                }
                Err(other) => panic!("input refused: {other}"),
            }
        };
        pending.push_back(input);
        if pending.len() % 3 == 0 {
            tokio::task::yield_now().await;
        }
    }
    for input in pending {
        let status = tokio::time::timeout(WAIT, input).await.unwrap().unwrap();
        assert!(matches!(status, InputStatus::Applied { .. }), "{status:?}");
        applied += 1;
    }
    assert_eq!(applied, sent.len());

    // The match saw each turn once, in the order sent.
    let mut seen = Vec::new();
    while seen.len() < sent.len() {
        let event = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("fewer turns than inputs")
            .unwrap();
        if let ArenaEvent::Moved {
            player: PlayerId(1),
            facing,
            ..
        } = event.event
        {
            seen.push(facing);
        }
    }
    assert_eq!(seen, sent);
    let stats = session.stats();
    assert!(
        stats.test_dropped_inputs.load(Relaxed) > 0,
        "no input datagram was lost"
    );
    assert_eq!(stats.inputs_sent.load(Relaxed), sent.len() as u64);
    // Each input was submitted to the match once, however often repeated.
    assert_eq!(server.stats.inputs.load(Relaxed), sent.len() as u64);
    assert_eq!(server.stats.input_gaps.load(Relaxed), 0);
    assert!(
        server.stats.test_dropped.load(Relaxed) > 0,
        "no state was lost"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applied_input_is_shown_by_the_first_state_at_its_tick() {
    let server = start(Options::default()).await;
    server.engine.create_match("m1").await.unwrap();
    let session = server.join("m1", 1).await;
    state_where(&session, |s| s.state.players.contains_key(&PlayerId(1))).await;
    for dir in [Dir::West, Dir::North, Dir::East, Dir::South, Dir::West] {
        let status = tokio::time::timeout(WAIT, session.input(ArenaCommand::Turn(dir)).unwrap())
            .await
            .unwrap()
            .unwrap();
        let InputStatus::Applied { tick } = status else {
            panic!("not applied: {status:?}");
        };
        let state = state_where(&session, |s| s.tick >= tick).await;
        assert_eq!(
            state.state.players[&PlayerId(1)].facing,
            dir,
            "at tick {}",
            state.tick
        );
    }
    // The client acknowledges states in its input datagrams, not on the stream.
    assert!(session.stats().input_datagrams.load(Relaxed) >= 5);
    assert!(server.stats.acked_states.load(Relaxed) >= 5);
    // quinn's own counters agree: states went out as DATAGRAM frames and
    // the inputs came in as such, each side's packets acknowledged.
    let transport = server.transport.totals();
    assert_eq!(transport.connections, 1, "{transport:?}");
    assert!(transport.datagram_frames_sent >= 5, "{transport:?}");
    assert!(transport.datagram_frames_received >= 5, "{transport:?}");
    assert!(
        transport.udp_sent >= transport.datagram_frames_sent,
        "{transport:?}"
    );
    assert!(transport.ack_frames_received > 0, "{transport:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_input_resolves_with_the_games_reason_and_spectators_are_refused() {
    let server = start(Options::default()).await;
    server.engine.create_match("m1").await.unwrap();
    let session = server.join("m1", 1).await;
    state_where(&session, |s| s.state.players.contains_key(&PlayerId(1))).await;
    // Three inputs at once: the middle one is refused by the game.
    let first = session.input(ArenaCommand::Turn(Dir::West)).unwrap();
    let refused = session
        .input(ArenaCommand::Join {
            name: "again".into(),
        })
        .unwrap();
    let last = session.input(ArenaCommand::Turn(Dir::North)).unwrap();
    let outcome = |input: PendingInput| async move {
        tokio::time::timeout(WAIT, input).await.unwrap().unwrap()
    };
    assert!(matches!(outcome(first).await, InputStatus::Applied { .. }));
    assert_eq!(
        outcome(refused).await,
        InputStatus::Rejected {
            reason: "you have already joined".into()
        }
    );
    let InputStatus::Applied { tick } = outcome(last).await else {
        panic!("the last input was not applied");
    };
    let state = state_where(&session, |s| s.tick >= tick).await;
    assert_eq!(state.state.players[&PlayerId(1)].facing, Dir::North);
    assert_eq!(session.stats().inputs_rejected.load(Relaxed), 1);

    // A spectator's input is refused by the server.
    let spectator = server
        .client
        .join::<Arena>(JoinRequest::spectator("m1", Some(&server.ticket("m1", 9))))
        .await
        .unwrap();
    let status = tokio::time::timeout(WAIT, spectator.input(ArenaCommand::Fire).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&status, InputStatus::Rejected { reason } if reason.contains("spectators")),
        "{status:?}"
    );
    server.stop().await;
}

/// A raw connection admitted as `player` (Hello written, Welcome read).
async fn close_code_of(conn: &quinn::Connection) -> Option<CloseCode> {
    let error = tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("the server did not close the connection");
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => {
            CloseCode::from_code(close.error_code.into_inner())
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_floods_of_inputs_are_closed_and_others_play_on() {
    let server = start(Options {
        commands_per_second: 100,
        ..Options::default()
    })
    .await;
    let honest = server.join("m1", 1).await;
    state_where(&honest, |s| s.state.players.contains_key(&PlayerId(1))).await;
    let log = log_ticks(&honest);

    // A datagram that does not decode.
    let (conn, _send, _recv) = raw_player(&server, 2).await;
    conn.send_datagram(vec![7, 0xff, 0xfe, 7].into()).unwrap();
    assert_eq!(close_code_of(&conn).await, Some(CloseCode::Malformed));

    // More inputs in one datagram than the window.
    let (conn, _send, _recv) = raw_player(&server, 3).await;
    let wide = ClientDatagram::Input {
        ack: None,
        first_seq: 1,
        commands: vec![ArenaCommand::Fire; protocol::INPUT_WINDOW + 1],
    };
    conn.send_datagram(protocol::encode_datagram(&wide).unwrap().into())
        .unwrap();
    assert_eq!(close_code_of(&conn).await, Some(CloseCode::Malformed));

    // A flood: 16 new inputs per datagram, far over 100 per second.
    let (conn, _send, _recv) = raw_player(&server, 4).await;
    let flood = async {
        let mut first_seq = 1;
        let mut pace = tokio::time::interval(std::time::Duration::from_millis(2));
        loop {
            pace.tick().await;
            let burst = ClientDatagram::Input {
                ack: None,
                first_seq,
                commands: vec![ArenaCommand::Turn(Dir::North); protocol::INPUT_WINDOW],
            };
            first_seq += protocol::INPUT_WINDOW as u64;
            let bytes = protocol::encode_datagram(&burst).unwrap();
            if conn.send_datagram(bytes.into()).is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = flood => {}
        _ = conn.closed() => {}
    }
    assert_eq!(close_code_of(&conn).await, Some(CloseCode::RateLimited));
    assert_eq!(server.stats.closed_for_abuse.load(Relaxed), 3);

    // The honest player kept getting states, and its inputs still work.
    let after = state_where(&honest, |_| true).await.tick;
    state_where(&honest, |s| s.tick >= after + 3).await;
    let ticks: Vec<u64> = log.snapshot().iter().map(|(t, _)| *t).collect();
    let missing: Vec<u64> = (ticks[0]..=*ticks.last().unwrap())
        .filter(|t| !ticks.contains(t))
        .collect();
    assert!(
        missing.is_empty(),
        "the honest player missed ticks {missing:?}"
    );
    let status = tokio::time::timeout(WAIT, honest.input(ArenaCommand::Turn(Dir::West)).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(status, InputStatus::Applied { .. }), "{status:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_client_fails_the_handshake() {
    let server = start(Options::default()).await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in &server.client.config().trusted {
        roots.add(cert.clone()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"tickforge/2".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connecting = endpoint
        .connect_with(
            quinn::ClientConfig::new(std::sync::Arc::new(crypto)),
            server.addr,
            "localhost",
        )
        .unwrap();
    let error = tokio::time::timeout(WAIT, connecting)
        .await
        .unwrap()
        .expect_err("a version 2 client was let in");
    // TLS alert 120, no_application_protocol.
    assert!(
        matches!(&error, quinn::ConnectionError::ConnectionClosed(close)
            if close.error_code == quinn::TransportErrorCode::crypto(120)),
        "{error:?}"
    );
    server.stop().await;
}
