//! Eights on Redis, end to end: the cards example's `serve` process is
//! killed with SIGKILL mid-match and started again; the four players
//! resume with their tokens by themselves, keep their hands and finish the
//! match; a tick-by-tick replay of the finished match out of Redis ends in
//! the state every player saw last. Durability is `sync`, so no client saw
//! a state the kill could take away.
//!
//! Runs `target/<profile>/examples/cards`, which `cargo test` builds with
//! the other examples (`cargo build --example cards` for this file alone).

#![cfg(feature = "redis")]

#[path = "../examples/cards/bot.rs"]
mod bot;
#[path = "../examples/cards/game.rs"]
mod game;
mod serve_support;
mod support;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use support::TestRedis;
use tickforge::client::{Client, ClientConfig, JoinRequest, Session, SessionEvent, StateUpdate};
use tickforge::codec;
use tickforge::engine::{Replayer, TickReplayer, TickStep};
use tickforge::game::{Game, MatchSetup, PlayerId, Tick, Viewer};
use tickforge::net::protocol::CommandStatus;
use tickforge::store::{EventStore, MatchKey, RedisStore};

use bot::Bot;
use game::{DOMAIN, Eights, JoinAs, Params, Phase, State, View};
use serve_support::{Log, ServeProcess};

const SECRET: &str = "cards-restart-test-secret-0123456789";
const WAIT: Duration = Duration::from_secs(30);
const ROOT: &str = "table-1";

/// The cards example's binary, next to this test's `deps` directory.
fn cards_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let binary = profile_dir.join("examples").join("cards");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --example cards` (plain `cargo test` builds it)",
        binary.display()
    );
    binary
}

/// Starts `cards serve --config <config>` and waits for its "listening" line.
fn serve(config: &Path) -> ServeProcess {
    let mut command = Command::new(cards_binary());
    command
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn");
    ServeProcess::start(command, Log::Stdout, "listening on")
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

fn write_config(dir: &Path, redis: &TestRedis, port: u16) -> PathBuf {
    let path = dir.join("cards.toml");
    let text = format!(
        "[engine]\nedition = \"{edition}\"\ndurability = \"sync\"\nshards = 2\n\n\
         [storage]\nbackend = \"redis\"\n\n[storage.redis]\nurl = \"{url}\"\n\n\
         [net]\nlisten = \"127.0.0.1:{port}\"\ndev_cert = \"{cert}\"\ndev_key = \"{key}\"\n\
         secret = \"{SECRET}\"\ngrace_seconds = 30\nopen_mode = true\n",
        edition = redis.edition(),
        url = redis.url(),
        cert = dir.join("cert.der").display(),
        key = dir.join("key.der").display(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// The latest state of `session` once it satisfies `pred`.
async fn state_where(
    session: &Session<Eights>,
    pred: impl Fn(&StateUpdate<View>) -> bool,
) -> Arc<StateUpdate<View>> {
    let mut states = session.states();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(state) = states.borrow_and_update().clone()
                && pred(&state)
            {
                return state;
            }
            states.changed().await.expect("session ended");
        }
    })
    .await
    .expect("no such state in time")
}

async fn resumed(session: &mut Session<Eights>) {
    tokio::time::timeout(WAIT, async {
        loop {
            match session.next_event().await.expect("session ended") {
                SessionEvent::Resumed { .. } => return,
                SessionEvent::Closed { code, reason } => panic!("closed: {code:?} {reason}"),
                _ => {}
            }
        }
    })
    .await
    .expect("no resume in time");
}

/// Plays turn by turn, the player whose turn it is choosing with its bot
/// from its own view, until `done` holds for the table as player 1 sees it.
async fn take_turns(
    sessions: &[Session<Eights>],
    bots: &mut [Bot],
    done: impl Fn(&View) -> bool,
) -> View {
    loop {
        let table = state_where(&sessions[0], |s| s.state.phase != Phase::Lobby).await;
        if done(&table.state) || table.state.phase != Phase::Playing {
            return table.state.clone();
        }
        let turns = table.state.turns;
        let turn = table.state.turn.expect("a turn while playing");
        let seat = sessions
            .iter()
            .position(|s| s.player() == Some(turn))
            .expect("a seated player's turn");
        let own = state_where(&sessions[seat], |s| s.state.turns >= turns).await;
        if own.state.turns == turns
            && let Some(command) = bots[seat].decide(&own.state)
        {
            let status = sessions[seat].command(command).await.expect("answered");
            assert!(
                matches!(status, CommandStatus::Accepted { .. }),
                "{status:?}"
            );
        }
        state_where(&sessions[0], |s| {
            s.state.turns > turns || s.state.phase != Phase::Playing
        })
        .await;
    }
}

/// The state after `tick`, rebuilt from sequence 0 out of Redis.
async fn rebuild_at(
    store: &RedisStore,
    key: &MatchKey,
    setup: &MatchSetup<Params>,
    tick: Tick,
) -> State {
    let mut replayer = Replayer::from_start(&Eights, setup).expect("setup");
    let events = store.read(key, 0, usize::MAX).await.expect("read log");
    for record in events.iter().take_while(|r| r.tick <= tick) {
        replayer.apply(record).expect("log replays");
    }
    replayer.finish(tick).expect("log replays").state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_resume_after_a_kill_and_the_replay_ends_where_they_saw_it() {
    let redis = TestRedis::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_udp_port();
    let config = write_config(dir.path(), &redis, port);
    let first = serve(&config);

    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let mut client_config =
        ClientConfig::trusting_file(addr, &dir.path().join("cert.der")).expect("dev certificate");
    // A killed server sends no close: the clients notice by silence.
    client_config.idle_timeout = Duration::from_secs(2);
    let client = Client::new(client_config).expect("client");
    // Timers long enough never to run out while the server is down.
    let params = Params {
        players: 4,
        hand_size: 5,
        turn_ticks: 3_000,
        max_turns: 200,
    };
    let mut sessions = Vec::new();
    for seat in 0..4 {
        let join = JoinRequest::open_player(
            ROOT,
            &JoinAs {
                name: format!("seat{seat}"),
            },
        )
        .with_params(&params);
        let session = tokio::time::timeout(WAIT, client.join::<Eights>(join))
            .await
            .expect("join in time")
            .expect("join");
        sessions.push(session);
    }
    let mut bots: Vec<Bot> = (0..4).map(Bot::new).collect();
    let table = take_turns(&sessions, &mut bots, |view| view.turns >= 6).await;
    assert_eq!(table.phase, Phase::Playing);

    let tokens: Vec<String> = sessions
        .iter()
        .map(|s| s.resume_token().expect("a player has a token"))
        .collect();
    let players: Vec<PlayerId> = sessions.iter().map(|s| s.player().unwrap()).collect();
    let mut seen = Vec::new();
    for session in &sessions {
        seen.push(state_where(session, |s| s.state.turns >= table.turns).await);
    }

    first.kill();

    // Everything a client saw is in the log (sync durability).
    let store = redis.store().await;
    let key = MatchKey::new(DOMAIN, redis.edition(), ROOT).expect("key");
    let setup: MatchSetup<Params> =
        codec::decode(&store.load_setup(&key).await.unwrap().expect("stored setup")).unwrap();
    assert_eq!(setup.params, params);
    for (last, player) in seen.iter().zip(&players) {
        let state = rebuild_at(&store, &key, &setup, last.tick).await;
        assert_eq!(
            *Eights.view(&state, Viewer::Player(*player)),
            last.state,
            "{player} saw tick {} that the log does not hold",
            last.tick
        );
    }
    let head_at_kill = store.head(&key).await.unwrap().expect("a head");

    let second = serve(&config);
    for (i, session) in sessions.iter_mut().enumerate() {
        resumed(session).await;
        assert_eq!(session.player(), Some(players[i]));
        assert_eq!(session.resume_token().as_deref(), Some(tokens[i].as_str()));
    }
    // The match goes on from the stored head, with the same hands.
    for (session, before) in sessions.iter().zip(&seen) {
        let after = state_where(session, |s| s.tick >= head_at_kill.tick).await;
        assert_eq!(after.state.hand, before.state.hand);
        assert_eq!(after.state.turns, before.state.turns);
    }
    let end = take_turns(&sessions, &mut bots, |_| false).await;
    assert!(matches!(end.phase, Phase::Over { .. }), "{end:?}");
    let finals: Vec<_> = {
        let mut finals = Vec::new();
        for session in &sessions {
            finals.push(state_where(session, |s| s.over).await);
        }
        finals
    };
    second.kill();

    // The finished match replayed tick by tick out of Redis.
    let head = store.head(&key).await.unwrap().expect("a head");
    let mut replay = TickReplayer::from_start(&Eights, &setup, &head).expect("setup");
    let mut ticks = 0;
    loop {
        match replay.step().expect("the log replays") {
            TickStep::Ran(_) => ticks += 1,
            TickStep::NeedEvents { from } => {
                replay
                    .push(store.read(&key, from, 256).await.unwrap())
                    .unwrap();
            }
            TickStep::Finished => break,
        }
    }
    assert!(ticks > 0);
    assert!(Eights.is_over(replay.state()));
    for (last, player) in finals.iter().zip(&players) {
        assert_eq!(
            *Eights.view(replay.state(), Viewer::Player(*player)),
            last.state
        );
    }
}
