//! Bad tickets and bad behaviour over real QUIC: each offender gets its
//! own close code, and a well-behaved player in the same match keeps
//! receiving a state every tick throughout.

mod net_support;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use net_support::close_stub::{Answer, CloseStub};
use net_support::*;
use tickforge::arena::{Arena, ArenaCommand, ArenaEvent, ArenaState, Dir, Player, Pos};
use tickforge::client::{Client, ClientConfig, ClientError, JoinRequest, SessionEvent};
use tickforge::codec;
use tickforge::game::PlayerId;
use tickforge::net::CloseCode;
use tickforge::net::ServerSecret;
use tickforge::net::delta::{self, Patch};
use tickforge::net::protocol::{self, ClientMsg, Role, ServerMsg, Welcome};
use tickforge::net::tickets::{mint_ticket, unix_now};

fn closed_code(error: &quinn::ConnectionError) -> Option<CloseCode> {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => {
            CloseCode::from_code(close.error_code.into_inner())
        }
        _ => None,
    }
}

async fn refused(server: &TestServer, request: JoinRequest) -> Option<CloseCode> {
    match server.client.join::<Arena>(request).await {
        Ok(_) => panic!("admitted"),
        Err(error @ ClientError::Refused { .. }) => error.code(),
        Err(other) => panic!("unexpected error: {other}"),
    }
}

async fn close_code_of(conn: &quinn::Connection) -> Option<CloseCode> {
    let error = tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("the server did not close the connection");
    closed_code(&error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offenders_get_their_own_code_and_others_play_on() {
    let server = start(Options {
        commands_per_second: 100,
        ..Options::default()
    })
    .await;
    let honest = server.join("m1", 1).await;
    state_where(&honest, |s| s.state.players.contains_key(&PlayerId(1))).await;
    let log = log_ticks(&honest);
    let abuse_started = Instant::now();

    // Forged: minted with another secret.
    let other = ServerSecret::new(*b"not the server's secret at all!!").unwrap();
    let forged = mint_ticket(&other, "m1", PlayerId(2), unix_now() + 60);
    assert_eq!(
        refused(&server, JoinRequest::player("m1", &forged, "x")).await,
        Some(CloseCode::TicketForged)
    );
    // Expired.
    let expired = mint_ticket(&secret(), "m1", PlayerId(2), unix_now() - 5);
    assert_eq!(
        refused(&server, JoinRequest::player("m1", &expired, "x")).await,
        Some(CloseCode::TicketExpired)
    );
    // For another match.
    let elsewhere = server.ticket("m2", 2);
    assert_eq!(
        refused(&server, JoinRequest::player("m1", &elsewhere, "x")).await,
        Some(CloseCode::WrongMatch)
    );
    // Not a ticket at all; no ticket on a server that is not in open mode.
    assert_eq!(
        refused(&server, JoinRequest::player("m1", "not-a-ticket", "x")).await,
        Some(CloseCode::TicketMalformed)
    );
    assert_eq!(
        refused(&server, JoinRequest::open_player("m1", "x")).await,
        Some(CloseCode::OpenModeDisabled)
    );
    // A resume token from another match.
    let token = honest.resume_token().unwrap();
    assert_eq!(
        refused(&server, JoinRequest::resume("m2", &token)).await,
        Some(CloseCode::WrongMatch)
    );

    // Garbage instead of a Hello.
    let connected = server.client.connect().await.unwrap();
    let conn = connected.connection().clone();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let mut garbage = vec![0, 0, 0, 24];
    garbage.extend((0..24u8).map(|i| i.wrapping_mul(97) ^ 0xA5));
    send.write_all(&garbage).await.unwrap();
    assert_eq!(close_code_of(&conn).await, Some(CloseCode::Malformed));

    // Garbage after a valid admission.
    let (conn, mut send, _recv) = raw_player(&server, 3).await;
    send.write_all(&[0, 0, 0, 3, 1, 0xff, 0xff]).await.unwrap();
    assert_eq!(close_code_of(&conn).await, Some(CloseCode::Malformed));

    // An oversized frame: the header alone is enough to refuse it.
    let (conn, mut send, _recv) = raw_player(&server, 4).await;
    let _ = send.write_all(&(10u32 << 20).to_be_bytes()).await;
    let _ = send.write_all(&[0u8; 1024]).await;
    assert_eq!(close_code_of(&conn).await, Some(CloseCode::FrameTooLarge));

    // Stopping the server's half of the control stream, then sending a
    // command whose result has nowhere to go.
    let (conn, mut send, mut recv) = raw_player(&server, 6).await;
    recv.stop(0u32.into()).unwrap();
    let command = ClientMsg::Command {
        client_seq: 1,
        command: ArenaCommand::Turn(Dir::North),
    };
    send.write_all(&protocol::encode_frame(&command, 1024).unwrap())
        .await
        .unwrap();
    assert_eq!(close_code_of(&conn).await, Some(CloseCode::Malformed));

    // A flood: 10,000 commands per second.
    let (conn, mut send, _recv) = raw_player(&server, 5).await;
    let flood = async {
        let mut seq = 0u64;
        let mut pace = tokio::time::interval(Duration::from_millis(10));
        loop {
            pace.tick().await;
            let mut burst = Vec::new();
            for _ in 0..100 {
                seq += 1;
                let msg = ClientMsg::Command {
                    client_seq: seq,
                    command: ArenaCommand::Turn(Dir::North),
                };
                burst.extend(protocol::encode_frame(&msg, 1024).unwrap());
            }
            if send.write_all(&burst).await.is_err() {
                return seq;
            }
        }
    };
    let sent = tokio::select! {
        sent = flood => sent,
        _ = conn.closed() => 0,
    };
    let _ = sent;
    assert_eq!(close_code_of(&conn).await, Some(CloseCode::RateLimited));
    let abuse_took = abuse_started.elapsed();

    // Meanwhile the honest player got every tick's state.
    let after = state_where(&honest, |_| true).await.tick;
    state_where(&honest, |s| s.tick >= after + 3).await;
    let ticks: Vec<u64> = log.snapshot().iter().map(|(t, _)| *t).collect();
    let missing: Vec<u64> = (ticks[0]..=*ticks.last().unwrap())
        .filter(|t| !ticks.contains(t))
        .collect();
    assert!(
        missing.is_empty(),
        "the honest player missed ticks {missing:?} during {abuse_took:?} of abuse"
    );
    assert!(
        ticks.len() as f64 >= abuse_took.as_secs_f64() * 30.0 * 0.9,
        "{} states in {abuse_took:?}",
        ticks.len()
    );
    // And its commands still work.
    let status = honest
        .command(ArenaCommand::Turn(Dir::South))
        .await
        .unwrap();
    assert!(matches!(
        status,
        tickforge::net::protocol::CommandStatus::Accepted { .. }
    ));
    let stats = &server.stats;
    // Garbage instead of a Hello counts as a refusal; the rest as abuse.
    assert_eq!(
        stats
            .closed_for_abuse
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );
    assert_eq!(stats.refused.load(std::sync::atomic::Ordering::Relaxed), 7);
    server.stop().await;
}

/// The client is strict too: a server whose datagram does not decode is
/// closed as `Malformed`, after the good states before it were applied
/// (a whole state, then a delta against it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_state_datagram_closes_the_session_as_malformed() {
    let (admitted_tx, mut admitted) = tokio::sync::mpsc::unbounded_channel();
    let welcome = Welcome {
        match_id: "m1".into(),
        player: None,
        role: Role::Spectator,
        resume_token: None,
        tick: 1,
        events_from: 0,
        tick_hz: 30,
        state_every_ticks: 1,
        grace_ms: 0,
    };
    let stub = CloseStub::start("127.0.0.1:0".parse().unwrap(), |_| {
        vec![Answer::AdmitThenHandOver(welcome, admitted_tx)]
    })
    .await;
    let mut config = ClientConfig::new(stub.addr, vec![stub.cert.clone()]);
    config.reconnect = false;
    let client = Client::new(config).unwrap();
    let mut session = tokio::time::timeout(
        WAIT,
        client.join::<Arena>(JoinRequest::spectator("m1", None)),
    )
    .await
    .expect("the stub did not admit the client")
    .unwrap();
    let (conn, _send, _recv) = tokio::time::timeout(WAIT, admitted.recv())
        .await
        .unwrap()
        .unwrap();

    // Enough players that a one-tick change goes as a delta.
    let mut state = ArenaState {
        tick: 5,
        ..ArenaState::default()
    };
    for id in 1..=8 {
        let player = Player {
            name: format!("player {id}"),
            pos: Pos { x: id, y: 2 * id },
            facing: Dir::North,
            score: 0,
            deaths: 0,
            respawn_at: None,
            ready_at: 0,
        };
        state.players.insert(PlayerId(id as u32), player);
    }
    let full = codec::encode(&state).unwrap();
    let datagram = |msg: &ServerMsg<ArenaEvent>| protocol::encode_datagram(msg).unwrap();
    conn.send_datagram(
        datagram(&ServerMsg::StateFull {
            tick: 5,
            over: false,
            state: full.clone(),
        })
        .into(),
    )
    .unwrap();
    state_where(&session, |s| s.tick == 5 && s.state == state).await;

    state.tick = 6;
    state.players.get_mut(&PlayerId(3)).unwrap().pos.x += 1;
    let next = codec::encode(&state).unwrap();
    let Patch::Xor { len, compressed } = delta::diff(Some(&full), &next) else {
        panic!("a one-tick change should be a delta");
    };
    conn.send_datagram(
        datagram(&ServerMsg::StateDelta {
            tick: 6,
            over: false,
            baseline_age: 1,
            len,
            patch: compressed,
        })
        .into(),
    )
    .unwrap();
    state_where(&session, |s| s.tick == 6 && s.state == state).await;
    assert_eq!(session.stats().deltas.load(Relaxed), 1);

    conn.send_datagram(vec![codec::FORMAT_VERSION, 0xff, 0xff, 0xff].into())
        .unwrap();
    assert_eq!(close_code_of(&conn).await, Some(CloseCode::Malformed));
    let event = event_where(&mut session, |e| matches!(e, SessionEvent::Closed { .. })).await;
    let SessionEvent::Closed { reason, .. } = event else {
        unreachable!()
    };
    assert!(reason.contains("bad datagram"), "{reason}");
}
