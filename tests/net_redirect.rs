//! Following a fleet: a client joins through a node that redirects it (a
//! real QUIC endpoint closing with `Redirect`, in front of a real tickforge
//! server), waits out `MatchMoving`, gives up after too many redirects or
//! when told not to retry, fails over to a fallback node, and resumes on
//! another node after its server went away.

mod net_support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use net_support::close_stub::{Answer, CloseStub};
use net_support::*;
use tickforge::arena::{Arena, ArenaCommand, Dir};
use tickforge::client::{
    Client, ClientConfig, ClientError, JoinRequest, MAX_REDIRECTS, Session, SessionEvent,
};
use tickforge::game::PlayerId;
use tickforge::net::protocol::CommandStatus;
use tickforge::net::{CloseCode, TlsSource, tls};

/// A client whose first server is `first`, trusting the real server and
/// the stubs given.
fn client(server: &TestServer, first: SocketAddr, stubs: &[&CloseStub]) -> ClientConfig {
    let mut trusted = server.client.config().trusted.clone();
    trusted.extend(stubs.iter().map(|s| s.cert.clone()));
    ClientConfig::new(first, trusted)
}

async fn join(
    server: &TestServer,
    config: ClientConfig,
    player: u32,
) -> Result<Session<Arena>, ClientError> {
    let client = Client::new(config).unwrap();
    let ticket = server.ticket("m1", player);
    tokio::time::timeout(
        WAIT,
        client.join::<Arena>(JoinRequest::player("m1", &ticket, &format!("p{player}"))),
    )
    .await
    .expect("the join neither succeeded nor failed in time")
}

/// The session is in the real match: it sees itself and its command is taken.
async fn plays(session: &Session<Arena>, player: u32) {
    state_where(session, |s| s.state.players.contains_key(&PlayerId(player))).await;
    let status = session
        .command(ArenaCommand::Turn(Dir::West))
        .await
        .unwrap();
    assert!(
        matches!(status, CommandStatus::Accepted { .. }),
        "{status:?}"
    );
}

fn redirect_to(addr: impl std::fmt::Display) -> Answer {
    Answer::Close(CloseCode::Redirect, format!("{addr} moved"))
}

/// A UDP port that never answers (held for the test), as a dead node.
fn silent_node() -> std::net::UdpSocket {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_through_a_redirecting_node_reaches_the_match() {
    let server = start(Options::default()).await;
    let port = server.addr.port();
    // A name, not an address: the client resolves it.
    let stub = CloseStub::start("127.0.0.1:0".parse().unwrap(), |_| {
        vec![redirect_to(format!("localhost:{port}"))]
    })
    .await;
    let session = join(&server, client(&server, stub.addr, &[&stub]), 1)
        .await
        .unwrap();
    assert_eq!(session.server(), server.addr);
    assert_eq!(session.stats().redirects.load(Relaxed), 1);
    assert_eq!(stub.accepted(), 1);
    plays(&session, 1).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_redirects_in_a_row_are_followed_and_a_ninth_is_refused() {
    let server = start(Options::default()).await;
    let real = server.addr;
    // The stub sends the client back to itself, then to the real server.
    let chain = |hops: usize| {
        move |own: SocketAddr| {
            let mut script = vec![redirect_to(own); hops - 1];
            script.push(redirect_to(real));
            script
        }
    };
    let eight = CloseStub::start("127.0.0.1:0".parse().unwrap(), chain(8)).await;
    let session = join(&server, client(&server, eight.addr, &[&eight]), 1)
        .await
        .unwrap();
    assert_eq!(session.server(), real);
    assert_eq!(session.stats().redirects.load(Relaxed), 8);
    assert_eq!(eight.accepted(), 8);
    plays(&session, 1).await;

    let nine = CloseStub::start("127.0.0.1:0".parse().unwrap(), chain(9)).await;
    let error = join(&server, client(&server, nine.addr, &[&nine]), 2)
        .await
        .unwrap_err();
    let ClientError::TooManyRedirects { limit, last } = &error else {
        panic!("expected too many redirects, got {error:?}");
    };
    assert_eq!(*limit, MAX_REDIRECTS);
    assert_eq!(last, &real.to_string());
    assert_eq!(nine.accepted(), 9);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moving_match_is_retried_after_the_wait_then_redirected() {
    let server = start(Options::default()).await;
    let real = server.addr;
    let stub = CloseStub::start("127.0.0.1:0".parse().unwrap(), |_| {
        vec![
            Answer::Close(CloseCode::MatchMoving, "200 moving".into()),
            Answer::Close(CloseCode::ServerFull, "100 full".into()),
            redirect_to(real),
        ]
    })
    .await;
    let session = join(&server, client(&server, stub.addr, &[&stub]), 1)
        .await
        .unwrap();
    assert_eq!(session.server(), real);
    assert_eq!(stub.accepted(), 3);
    assert_eq!(session.stats().retries.load(Relaxed), 2);
    assert_eq!(session.stats().redirects.load(Relaxed), 1);
    plays(&session, 1).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_retry_budget_the_refusal_is_returned() {
    let server = start(Options::default()).await;
    for (code, reason) in [
        (CloseCode::MatchMoving, "200 moving"),
        (CloseCode::ServerFull, "200 full"),
    ] {
        let stub = CloseStub::start("127.0.0.1:0".parse().unwrap(), |_| {
            vec![Answer::Close(code, reason.into())]
        })
        .await;
        let mut config = client(&server, stub.addr, &[&stub]);
        config.retry_for = Duration::ZERO;
        // Another node to go to, had the client been allowed to retry.
        config.fallback = vec![server.addr];
        let error = join(&server, config, 1).await.unwrap_err();
        assert_eq!(error.code(), Some(code), "{error:?}");
        assert!(error.to_string().contains(reason), "{error}");
        assert_eq!(stub.accepted(), 1);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_fails_over_from_an_unreachable_node_to_a_fallback() {
    let server = start(Options::default()).await;
    let dead = silent_node();
    let mut config = client(&server, dead.local_addr().unwrap(), &[]);
    config.idle_timeout = Duration::from_secs(1);
    config.fallback = vec![server.addr];
    let session = join(&server, config.clone(), 1).await.unwrap();
    assert_eq!(session.server(), server.addr);
    plays(&session, 1).await;

    // With no fallback, the unreachable server is the error.
    config.fallback.clear();
    let error = join(&server, config, 2).await.unwrap_err();
    assert!(
        matches!(&error, ClientError::Connect { server, .. } if *server == dead.local_addr().unwrap()),
        "{error:?}"
    );
    server.stop().await;
}

/// Stops `first`, waits until `session` noticed, and returns the options
/// for a successor on the same store, certificate and secret.
async fn stop_and_notice(first: TestServer, session: &mut Session<Arena>) -> Options {
    let options = first.stop().await;
    let event = event_where(session, |e| matches!(e, SessionEvent::Disconnected { .. })).await;
    let SessionEvent::Disconnected { code, resuming, .. } = event else {
        unreachable!()
    };
    assert_eq!(code, Some(CloseCode::ServerShutdown));
    assert!(resuming);
    options
}

/// Waits (longer than [`WAIT`]: a dead node costs a handshake timeout) for
/// the session to resume; returns how long that took.
async fn resumed(session: &mut Session<Arena>) -> Duration {
    let deadline = Duration::from_secs(30);
    let since = std::time::Instant::now();
    tokio::time::timeout(deadline, async {
        loop {
            match session.next_event().await.expect("session ended") {
                SessionEvent::Resumed { .. } => return,
                SessionEvent::Closed { code, reason } => {
                    panic!("gave up: {code:?} {reason}")
                }
                _ => {}
            }
        }
    })
    .await
    .expect("no resume in time");
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_follows_a_redirect_to_the_node_now_hosting_the_match() {
    let first = start(Options::default()).await;
    let first_addr = first.addr;
    let mut config = client(&first, first_addr, &[]);
    config.idle_timeout = Duration::from_secs(2);
    let mut session = join(&first, config, 1).await.unwrap();
    let token = session.resume_token().unwrap();

    let options = stop_and_notice(first, &mut session).await;
    // The match continues on another node; the old address now redirects there.
    let second = start(Options {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..options
    })
    .await;
    let second_addr = second.addr;
    // It shares the fleet's certificate, which the client trusts.
    let cert = tls::load_server_cert(&TlsSource::Dev {
        cert: second.options.tls_dir.path().join("cert.der"),
        key: second.options.tls_dir.path().join("key.der"),
    })
    .unwrap();
    let old =
        CloseStub::start_with_cert(first_addr, cert, |_| vec![redirect_to(second_addr)]).await;
    let took = resumed(&mut session).await;
    println!(
        "resumed through a redirect {:.2} s after the new node and the redirecting stub were up",
        took.as_secs_f64()
    );
    assert_eq!(session.server(), second_addr);
    assert_eq!(session.resume_token(), Some(token));
    assert_eq!(session.player(), Some(PlayerId(1)));
    assert_eq!(session.stats().redirects.load(Relaxed), 1);
    assert!(old.accepted() >= 1);
    plays(&session, 1).await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_fails_over_to_a_fallback_node_when_its_server_is_gone() {
    let first = start(Options::default()).await;
    // The successor's address, known to the client from the start.
    let successor = silent_node();
    let successor_addr = successor.local_addr().unwrap();
    let mut config = client(&first, first.addr, &[]);
    config.idle_timeout = Duration::from_secs(2);
    config.fallback = vec![successor_addr];
    let mut session = join(&first, config, 1).await.unwrap();
    let token = session.resume_token().unwrap();

    let options = stop_and_notice(first, &mut session).await;
    drop(successor);
    let second = start(Options {
        listen: successor_addr,
        ..options
    })
    .await;
    let took = resumed(&mut session).await;
    println!(
        "resumed on the fallback {:.2} s after it was up (handshake timeout 2 s)",
        took.as_secs_f64()
    );
    assert_eq!(session.server(), successor_addr);
    assert_eq!(session.resume_token(), Some(token));
    assert_eq!(session.stats().redirects.load(Relaxed), 0);
    assert!(session.stats().retries.load(Relaxed) >= 1);
    plays(&session, 1).await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_session_whose_match_moves_away_resumes_on_the_new_owner() {
    let owner = start(Options::default()).await;
    // The slot lives on `owner`; its first session leaves it to the grace window.
    let first = owner.join("m1", 1).await;
    let token = first.resume_token().unwrap();
    let welcome = first.welcome().clone();
    first.close();
    // Another node hosted the session until the match was handed to `owner`.
    let owner_addr = owner.addr;
    let old_node = CloseStub::start("127.0.0.1:0".parse().unwrap(), |_| {
        vec![Answer::AdmitThenClose(
            welcome,
            CloseCode::Redirect,
            format!("{owner_addr} the match was handed over"),
        )]
    })
    .await;
    let client = Client::new(client(&owner, old_node.addr, &[&old_node])).unwrap();
    let mut session = tokio::time::timeout(
        WAIT,
        client.join::<Arena>(JoinRequest::resume("m1", &token)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(session.server(), old_node.addr);

    // The old node closes the live session when it hears from it.
    let lost = session.send(ArenaCommand::Turn(Dir::North)).unwrap();
    assert!(matches!(lost.await, Err(ClientError::Disconnected)));
    let event = event_where(&mut session, |e| {
        matches!(e, SessionEvent::Disconnected { .. })
    })
    .await;
    let SessionEvent::Disconnected { code, resuming, .. } = event else {
        unreachable!()
    };
    assert_eq!(code, Some(CloseCode::Redirect));
    assert!(resuming);
    let took = resumed(&mut session).await;
    println!(
        "resumed on the new owner {:.3} s after the redirect",
        took.as_secs_f64()
    );
    assert_eq!(session.server(), owner_addr);
    assert_eq!(session.player(), Some(PlayerId(1)));
    assert_eq!(session.stats().redirects.load(Relaxed), 1);
    assert_eq!(old_node.accepted(), 1);
    plays(&session, 1).await;
    owner.stop().await;
}
