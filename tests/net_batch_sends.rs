//! `net.batch_sends`: the server's endpoint on the batching UDP socket
//! (many datagrams per `sendmmsg`, across clients). Real QUIC on loopback:
//! several clients join, each receives its states (the first, larger than
//! a datagram, on a stream of several packets; then delta datagrams), and
//! the socket's counters show the datagrams went out batched.
#![cfg(target_os = "linux")]

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tickforge::client::{Client, ClientConfig, JoinRequest, Session};
use tickforge::engine::{Engine, EngineSettings};
use tickforge::game::Tick;
use tickforge::net::{NetConfig, Server, TlsSource};
use tickforge::store::MemoryStore;

/// An upper bound for anything the test awaits.
const WAIT: Duration = Duration::from_secs(15);
/// Clients, all in one match.
const CLIENTS: usize = 8;
/// Bytes of the board: a whole state takes several packets.
#[path = "net_support/board.rs"]
mod board;
use board::*;

/// Waits for a state holding every client, then for `more` states after
/// it; checks each is the whole board. Returns the ticks seen after it.
async fn follow(session: &Session<Board>, more: usize) -> Vec<Tick> {
    let mut states = session.states();
    let mut ticks = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut everyone = false;
        while ticks.len() < more {
            states.changed().await.expect("the session ended");
            let update = states.borrow_and_update().clone().expect("a state");
            assert_eq!(update.state.cells.len(), CELLS);
            if everyone {
                ticks.push(update.tick);
            } else {
                everyone = update.state.players.len() == CLIENTS;
            }
        }
    })
    .await
    .expect("states kept coming");
    ticks
}

/// One worker thread, as the server has when pinned to one core: the
/// connection tasks a tick wakes queue their datagrams before the flusher runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn clients_get_their_states_through_the_batching_socket() {
    let engine = Arc::new(Engine::start(
        Board,
        MemoryStore::new(),
        EngineSettings {
            tick_hz: 30,
            shards: 1,
            ..EngineSettings::default()
        },
        "main",
    ));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::bind(
        engine.clone(),
        NetConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: TlsSource::Dev {
                cert: dir.path().join("c.der"),
                key: dir.path().join("k.der"),
            },
            open_mode: true,
            batch_sends: true,
            ..NetConfig::default()
        },
    )
    .unwrap();
    let batches = server
        .send_batch_stats()
        .expect("batch_sends on Linux puts the endpoint on the batching socket");
    let net = server.stats();
    let client = Client::new(ClientConfig::new(
        server.local_addr(),
        vec![server.certificate().clone()],
    ))
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let joins = (0..CLIENTS).map(|_| client.join::<Board>(JoinRequest::open_player("b1", &())));
    let sessions: Vec<Session<Board>> =
        tokio::time::timeout(WAIT, futures_util::future::join_all(joins))
            .await
            .expect("the joins completed")
            .into_iter()
            .collect::<Result<_, _>>()
            .expect("every client joined");

    let followed =
        futures_util::future::join_all(sessions.iter().map(|session| follow(session, 10))).await;
    for (session, ticks) in sessions.iter().zip(&followed) {
        assert!(ticks.windows(2).all(|w| w[1] > w[0]), "{ticks:?}");
        let stats = session.stats();
        // The whole board went on a stream (several packets to one peer),
        // deltas as datagrams (a client slow to acknowledge, on a loaded
        // machine, may get more whole states: the mix is not fixed).
        assert!(stats.stream_states.load(Relaxed) >= 1);
        assert!(stats.datagrams.load(Relaxed) >= 1);
        let latest = session.state().expect("a state");
        assert!(latest.state.players.contains(&session.player().unwrap()));
    }
    assert!(net.stream_states.load(Relaxed) >= CLIENTS as u64);

    let calls = batches.system_calls.load(Relaxed);
    let sent = batches.transmits_sent.load(Relaxed);
    eprintln!("{sent} transmits in {calls} sendmmsg calls");
    assert!(calls > 0, "nothing went through sendmmsg");
    assert!(
        sent > calls,
        "{sent} transmits in {calls} sendmmsg calls: never more than one per call"
    );
    assert_eq!(batches.dropped_full.load(Relaxed), 0);

    drop(sessions);
    let _ = stop.send(());
    running.await.unwrap();
    engine.shutdown().await;
}
