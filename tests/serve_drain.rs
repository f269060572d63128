//! Operating a node: `tickforge serve` on Redis with bots drains on
//! SIGTERM (exit 0, every live match's stored snapshot at its stored head),
//! and the next `serve` restores every match with nothing to replay after
//! its snapshot.

#![cfg(feature = "redis")]

mod serve_support;
mod support;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serve_support::tickforge_serve;
use support::TestRedis;
use tickforge::store::{EventStore, RedisStore, SnapshotStore};

const WAIT: Duration = Duration::from_secs(30);

fn write_config(dir: &Path, redis: &TestRedis) -> PathBuf {
    let port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port();
    let path = dir.join("tickforge.toml");
    let text = format!(
        "[engine]\nedition = \"{edition}\"\nshards = 2\nsnapshot_every_ticks = 90\n\n\
         [storage]\nbackend = \"redis\"\n\n[storage.redis]\nurl = \"{url}\"\n\n\
         [net]\nlisten = \"127.0.0.1:{port}\"\ndev_cert = \"{cert}\"\ndev_key = \"{key}\"\n\n\
         [server]\ndrain_seconds = 20\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        edition = redis.edition(),
        url = redis.url(),
        cert = dir.join("cert.der").display(),
        key = dir.join("key.der").display(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// Every live match of the test's edition with its head and snapshot
/// (next sequence, tick) pairs.
async fn heads_and_snapshots(
    store: &RedisStore,
    redis: &TestRedis,
) -> Vec<(String, (u64, u64), Option<(u64, u64)>)> {
    let keys = store
        .live_matches("arena", redis.edition())
        .await
        .expect("live matches");
    let mut out = Vec::new();
    for key in keys {
        let head = store.head(&key).await.expect("head").expect("a head");
        let snapshot = store.load_snapshot(&key).await.expect("snapshot");
        out.push((
            key.root().to_owned(),
            (head.next_sequence, head.tick),
            snapshot.map(|s| (s.sequence, s.tick)),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_match_to_a_snapshot_at_its_head_and_a_restart_replays_nothing() {
    let redis = TestRedis::start().await;
    let store = redis.store().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), &redis);

    let mut first = tickforge_serve(&config, &["--bots", "20", "--players", "4"]);
    // Play until every bot slot has a match whose log is under way.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let matches = heads_and_snapshots(&store, &redis).await;
        if matches.len() >= 20 && matches.iter().all(|(_, (head, _), _)| *head > 8) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bots did not get 20 matches going: {matches:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = first.terminate();
    assert!(
        status.success(),
        "serve exited with {status} after SIGTERM; log:\n{}",
        first.log()
    );
    assert!(
        first.seen.iter().any(|l| l.contains("drained")),
        "the drain is logged; log:\n{}",
        first.log()
    );

    let drained = heads_and_snapshots(&store, &redis).await;
    assert!(
        drained.len() >= 20,
        "live matches after the drain: {drained:?}"
    );
    for (root, head, snapshot) in &drained {
        assert_eq!(
            Some(*head),
            *snapshot,
            "match {root}: the final snapshot (sequence, tick) equals the stored head"
        );
    }

    // A new node restores every live match, with no event after a snapshot.
    let mut again = tickforge_serve(&config, &[]);
    let restored = again
        .seen
        .iter()
        .find(|l| l.contains("live matches restored"))
        .cloned()
        .unwrap_or_else(|| again.wait_for_line("live matches restored"));
    assert!(
        restored.contains(&format!("restored={}", drained.len())) && restored.contains("failed=0"),
        "every drained match is restored: {restored}"
    );
    assert!(
        restored.contains("replayed_events=0"),
        "nothing to replay after the final snapshots: {restored}"
    );
    let status = again.terminate();
    assert!(status.success(), "second serve exited with {status}");
}
