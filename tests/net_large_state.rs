//! A game whose state does not fit in a datagram: whole states fall back
//! to a stream, small deltas still go as datagrams, and `state_every_ticks`
//! spaces the states out.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use tickforge::client::{Client, ClientConfig, JoinRequest};
use tickforge::engine::{Engine, EngineSettings};
use tickforge::game::{Game, MatchSetup, PlayerId, Rejection, Tick, Viewer};
use tickforge::net::{NetConfig, Server, TlsSource};
use tickforge::store::MemoryStore;

/// A board of 4000 bytes; each tick flips one of them.
#[derive(Debug, Clone, Copy, Default)]
struct Board;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct BoardState {
    players: Vec<PlayerId>,
    cells: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum BoardCommand {
    Join,
    Leave,
}

impl Game for Board {
    type State = BoardState;
    type Command = BoardCommand;
    type Event = (PlayerId, bool);
    type Params = ();
    type View = BoardState;
    type Join = ();
    const SCHEMA: u32 = 1;

    fn domain(&self) -> &str {
        "board"
    }

    fn setup(&self, _: &MatchSetup<()>) -> Result<BoardState, Rejection> {
        Ok(BoardState {
            players: Vec::new(),
            cells: (0..4000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
                .collect(),
        })
    }

    fn decide(
        &self,
        _: &BoardState,
        _: Tick,
        player: PlayerId,
        command: &BoardCommand,
    ) -> Result<Vec<(PlayerId, bool)>, Rejection> {
        Ok(vec![(player, *command == BoardCommand::Join)])
    }

    fn apply(&self, state: &mut BoardState, _: Tick, &(player, joined): &(PlayerId, bool)) {
        state.players.retain(|p| *p != player);
        if joined {
            state.players.push(player);
        }
    }

    fn step(&self, state: &mut BoardState, tick: Tick) -> Vec<(PlayerId, bool)> {
        let i = (tick as usize * 37) % state.cells.len();
        state.cells[i] = state.cells[i].wrapping_add(1);
        Vec::new()
    }

    fn is_over(&self, _: &BoardState) -> bool {
        false
    }

    fn view<'s>(&self, state: &'s BoardState, _: Viewer) -> Cow<'s, BoardState> {
        Cow::Borrowed(state)
    }

    fn shared_view(&self) -> bool {
        true
    }

    fn join(&self, _: PlayerId, _: &()) -> Result<BoardCommand, Rejection> {
        Ok(BoardCommand::Join)
    }

    fn leave(&self) -> BoardCommand {
        BoardCommand::Leave
    }

    fn players(&self, state: &BoardState) -> Vec<PlayerId> {
        state.players.clone()
    }
}

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
