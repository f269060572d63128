//! The headline promise, end to end: a `tickforge serve` process on Redis
//! is killed with SIGKILL mid-match and started again; its players resume
//! with their tokens by themselves, and what they see equals an independent
//! rebuild of the match from its log in Redis. Durability is `sync`, so no
//! client saw a state the kill could take away.

#![cfg(feature = "redis")]

mod net_support;
mod serve_support;
mod support;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use serve_support::tickforge_serve;

use net_support::{event_where, state_where};
use support::TestRedis;
use tickforge::arena::{Arena, ArenaCommand, ArenaState, Dir};
use tickforge::client::{Client, ClientConfig, JoinRequest, SessionEvent};
use tickforge::engine::Replayer;
use tickforge::game::{PlayerId, Tick};
use tickforge::net::ServerSecret;
use tickforge::net::protocol::CommandStatus;
use tickforge::net::tickets::{mint_ticket, unix_now};
use tickforge::store::{EventStore, MatchKey, RedisStore};

const SECRET: &str = "restart-test-secret-0123456789";
const WAIT: Duration = Duration::from_secs(20);

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

fn write_config(dir: &Path, redis: &TestRedis, port: u16) -> std::path::PathBuf {
    let path = dir.join("tickforge.toml");
    let text = format!(
        "[engine]\nedition = \"{edition}\"\ndurability = \"sync\"\nshards = 2\n\n\
         [storage]\nbackend = \"redis\"\n\n[storage.redis]\nurl = \"{url}\"\n\n\
         [net]\nlisten = \"127.0.0.1:{port}\"\ndev_cert = \"{cert}\"\ndev_key = \"{key}\"\n\
         secret = \"{SECRET}\"\ngrace_seconds = 30\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        edition = redis.edition(),
        url = redis.url(),
        cert = dir.join("cert.der").display(),
        key = dir.join("key.der").display(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// The match state at `tick`, rebuilt from sequence 0 out of the store.
async fn rebuild_at(store: &RedisStore, key: &MatchKey, tick: Tick) -> ArenaState {
    let arena = Arena::default();
    let mut replayer =
        Replayer::from_start(&arena, &tickforge::game::MatchSetup::default()).expect("setup");
    let events = store.read(key, 0, usize::MAX).await.expect("read log");
    for record in events.iter().take_while(|r| r.tick <= tick) {
        replayer.apply(record).expect("log replays");
    }
    replayer.finish(tick).expect("replays").state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_resume_after_the_server_is_killed_and_match_the_log() {
    let redis = TestRedis::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_udp_port();
    let config = write_config(dir.path(), &redis, port);
    let first = tickforge_serve(&config, &[]);

    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let mut client_config =
        ClientConfig::trusting_file(addr, &dir.path().join("cert.der")).expect("dev certificate");
    // A killed server sends no close: the clients notice by silence.
    client_config.idle_timeout = Duration::from_secs(2);
    let client = Client::new(client_config).expect("client");
    let secret = ServerSecret::new(SECRET.as_bytes()).expect("secret");
    let mut sessions = Vec::new();
    for p in 1..=3u32 {
        let ticket = mint_ticket(&secret, "m1", PlayerId(p), unix_now() + 600);
        let session = tokio::time::timeout(
            WAIT,
            client.join::<Arena>(JoinRequest::player("m1", &ticket, &format!("p{p}"))),
        )
        .await
        .expect("join in time")
        .expect("join");
        sessions.push(session);
    }
    state_where(&sessions[0], |s| s.state.players.len() == 3).await;
    for session in &sessions {
        for dir in [Dir::North, Dir::East] {
            let status = session
                .command(ArenaCommand::Turn(dir))
                .await
                .expect("answered");
            assert!(
                matches!(status, CommandStatus::Accepted { .. }),
                "{status:?}"
            );
        }
    }
    let tokens: Vec<String> = sessions
        .iter()
        .map(|s| s.resume_token().expect("a player has a token"))
        .collect();
    // What each player saw last before the kill.
    let seen: Vec<_> = sessions
        .iter()
        .map(|s| s.state().expect("a state was received"))
        .collect();

    first.kill();

    let store = redis.store().await;
    let key = redis.key("m1");
    for last in &seen {
        assert_eq!(
            rebuild_at(&store, &key, last.tick).await,
            last.state,
            "a client saw tick {} that the log does not hold (sync durability)",
            last.tick
        );
    }

    let mut second = tickforge_serve(&config, &[]);
    for (i, session) in sessions.iter_mut().enumerate() {
        event_where(session, |e| matches!(e, SessionEvent::Resumed { .. })).await;
        assert_eq!(session.player(), Some(PlayerId(i as u32 + 1)));
        assert_eq!(session.resume_token().as_deref(), Some(tokens[i].as_str()));
    }
    // Back in their slots: they play on, and see the match as the log has it.
    let mut accepted_at = Vec::new();
    for session in &sessions {
        match session
            .command(ArenaCommand::Turn(Dir::South))
            .await
            .expect("answered")
        {
            CommandStatus::Accepted { tick, .. } => accepted_at.push(tick),
            other => panic!("refused after resume: {other:?}\n{:?}", second.log()),
        }
    }
    let last_tick = *accepted_at.iter().max().expect("three commands");
    for session in &sessions {
        let state = state_where(session, |s| s.tick >= last_tick).await;
        assert_eq!(rebuild_at(&store, &key, state.tick).await, state.state);
        assert!(state.state.players.values().all(|p| p.facing == Dir::South));
    }
    second.kill();
}
