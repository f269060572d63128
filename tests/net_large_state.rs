//! A game whose state does not fit in a datagram: whole states fall back
//! to a stream, small deltas still go as datagrams, and `state_every_ticks`
//! spaces the states out.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tickforge::client::{Client, ClientConfig, JoinRequest};
use tickforge::engine::{Engine, EngineSettings};
use tickforge::net::{NetConfig, Server, TlsSource};
use tickforge::store::MemoryStore;

#[path = "net_support/board.rs"]
mod board;
use board::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_states_use_streams_and_deltas_use_datagrams() {
    let engine = Arc::new(Engine::start(
        Board,
        MemoryStore::new(),
        EngineSettings {
            tick_hz: 60,
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
            state_every_ticks: 3,
            ..NetConfig::default()
        },
    )
    .unwrap();
    let client = Client::new(ClientConfig::new(
        server.local_addr(),
        vec![server.certificate().clone()],
    ))
    .unwrap();
    let stats = server.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let session = client
        .join::<Board>(JoinRequest::open_player("b1", &()))
        .await
        .unwrap();
    let mut states = session.states();
    let mut ticks = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        while ticks.len() < 12 {
            states.changed().await.unwrap();
            let s = states.borrow_and_update().clone().unwrap();
            assert_eq!(s.state.cells.len(), 4000);
            ticks.push(s.tick);
        }
    })
    .await
    .unwrap();
    // Every third tick at most.
    assert!(ticks.windows(2).all(|w| w[1] >= w[0] + 3), "{ticks:?}");
    // The first, whole state went on a stream; then deltas as datagrams.
    let client_stats = session.stats();
    assert!(client_stats.stream_states.load(Relaxed) >= 1);
    assert!(client_stats.deltas.load(Relaxed) >= 8);
    assert!(client_stats.datagrams.load(Relaxed) >= 8);
    assert!(stats.stream_states.load(Relaxed) >= 1);
    // And the rebuilt state is the server's.
    let latest = session.state().unwrap();
    assert!(latest.state.players.contains(&session.player().unwrap()));
    drop(session);
    let _ = stop.send(());
    running.await.unwrap();
    engine.shutdown().await;
}
