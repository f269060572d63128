//! A fleet node paused past its leases (SIGSTOP) and resumed (SIGCONT),
//! with real `tickforge serve` processes on a real redis-server: the other
//! node takes its matches over; the paused node's first writes are refused
//! as fenced, it stops hosting those matches, and the logs hold no event it
//! decided after the takeover.

#![cfg(feature = "redis")]

mod serve_support;
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serve_support::tickforge_serve;
use support::TestRedis;
use tickforge::arena::Arena;
use tickforge::engine::decode_event;
use tickforge::store::{EventStore, LeaseStore, MatchKey, RedisStore};

const MATCHES: usize = 3;
const WAIT: Duration = Duration::from_secs(30);

fn config(dir: &Path, redis: &TestRedis, node: &str) -> PathBuf {
    let path = dir.join(format!("{node}.toml"));
    let text = format!(
        r#"
[engine]
edition = "{edition}"
[storage]
backend = "redis"
[storage.redis]
url = "{url}"
[net]
listen = "127.0.0.1:0"
secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
dev_cert = "{dir}/cert.der"
dev_key = "{dir}/key.der"
[admin]
listen = ""
[fleet]
node_id = "{node}"
lease_ttl_ms = 1000
"#,
        edition = redis.edition(),
        url = redis.url(),
        dir = dir.display(),
    );
    std::fs::write(&path, text).expect("config written");
    path
}

/// Polls `check` until it holds (bounded by [`WAIT`]): the state of another
/// process has no event to await.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn leased_by(store: &RedisStore, keys: &[MatchKey], node: &str) -> bool {
    for key in keys {
        match store.lease(key).await {
            Ok(Some(lease)) if lease.node == node => {}
            _ => return false,
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_is_fenced_and_writes_nothing_after_the_takeover() {
    let redis = TestRedis::start().await;
    let store = redis.store().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut paused = tickforge_serve(
        &config(dir.path(), &redis, "paused"),
        &["--bots", &MATCHES.to_string(), "--players", "2"],
    );
    let live = || async {
        store
            .live_matches("arena", redis.edition())
            .await
            .expect("live matches")
    };
    until("the bots' matches are stored", || async {
        live().await.len() >= MATCHES
    })
    .await;
    let keys = live().await;
    assert!(leased_by(&store, &keys, "paused").await);
    let mut survivor = tickforge_serve(&config(dir.path(), &redis, "survivor"), &[]);

    let pid = paused.pid();
    // SAFETY: kill(2) on our own child's pid with valid signal numbers.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    for _ in 0..keys.len() {
        survivor.wait_for_line("match taken over");
    }
    assert!(leased_by(&store, &keys, "survivor").await);
    // Where each match stood when the survivor restored it.
    let mut taken_at = Vec::new();
    for key in &keys {
        let head = store.head(key).await.expect("head").expect("stored");
        taken_at.push(head.tick);
    }
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    for _ in 0..keys.len() {
        paused.wait_for_line("match no longer hosted here");
    }
    // Let the survivor tick on past anything the paused node had in flight.
    until("the survivor ticks every match on", || async {
        let mut all = true;
        for (key, at) in keys.iter().zip(&taken_at) {
            let head = store.head(key).await.expect("head").expect("stored");
            all &= head.tick > at + 30;
        }
        all
    })
    .await;

    let arena = Arena::default();
    for (key, at) in keys.iter().zip(&taken_at) {
        let events = store.read(key, 0, 1_000_000).await.expect("log read");
        let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
        assert_eq!(
            sequences,
            (0..events.len() as u64).collect::<Vec<_>>(),
            "{key}: gap-free"
        );
        // The paused node's bots are the only players: after the takeover
        // no player's command may be in the log.
        for recorded in &events {
            let envelope = decode_event(&arena, &recorded.payload).expect("decodes");
            assert!(
                envelope.tick <= *at || envelope.player.is_none(),
                "{key}: event {} at tick {} from {:?} after the takeover at tick {at}",
                envelope.sequence,
                envelope.tick,
                envelope.player
            );
        }
    }
    assert!(
        paused.log().contains("under epoch"),
        "the paused node logs its fenced writes:\n{}",
        paused.log()
    );
    survivor.terminate();
    paused.terminate();
}
