//! Fleet ownership in-process, against a real redis-server (and a 3-master
//! Redis Cluster): nodes racing for orphaned matches each host a match
//! once, and a node whose lease moved on stops hosting the match, writes
//! nothing more of it, and the new owner continues the log exactly.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use support::{TestCluster, TestRedis};
use tickforge::arena::{Arena, ArenaCommand};
use tickforge::config::FleetConfig;
use tickforge::engine::{Engine, EngineSettings, LeaseSettings, rebuild_from_start, restore};
use tickforge::fleet::Fleet;
use tickforge::game::PlayerId;
use tickforge::store::{EventStore, LeaseStore, RedisStore, StoreError};

const MATCHES: usize = 24;
const TTL: Duration = Duration::from_secs(5);

fn settings(node: Option<&str>) -> EngineSettings {
    EngineSettings {
        shards: 2,
        lease: node.map(|node| LeaseSettings {
            node: node.to_owned(),
            ttl: TTL,
        }),
        ..EngineSettings::default()
    }
}

fn fleet_config(node: &str) -> FleetConfig {
    FleetConfig {
        lease_ttl: TTL,
        ..FleetConfig::new(node)
    }
}

/// Creates `MATCHES` live matches with a single node (no leases), stored
/// and left behind: orphans for a fleet.
async fn orphans(store: &RedisStore, edition: &str) -> Vec<String> {
    let seed = Engine::start(Arena::default(), store.clone(), settings(None), edition);
    let roots: Vec<String> = (0..MATCHES).map(|i| format!("m{i}")).collect();
    for root in &roots {
        seed.create_match(root).await.expect("match created");
    }
    seed.shutdown().await;
    roots
}

async fn node(store: &RedisStore, edition: &str, id: &str) -> Arc<Engine<Arena, RedisStore>> {
    Arc::new(Engine::start(
        Arena::default(),
        store.clone(),
        settings(Some(id)),
        edition,
    ))
}

async fn racing_nodes_own_each_orphan_once(store: RedisStore, edition: &str) {
    let roots = orphans(&store, edition).await;
    let (a, b) = (
        node(&store, edition, "a").await,
        node(&store, edition, "b").await,
    );
    let addr = |port: u16| format!("127.0.0.1:{port}");
    let (joined_a, joined_b) = tokio::join!(
        Fleet::start(a.clone(), fleet_config("a"), addr(1)),
        Fleet::start(b.clone(), fleet_config("b"), addr(2)),
    );
    let (fleet_a, _) = joined_a.expect("a joins");
    let (fleet_b, _) = joined_b.expect("b joins");
    // Each scan may take a share only; a few rounds cover every orphan.
    for _ in 0..10 {
        let hosted_a: HashSet<String> = a.hosted_matches().into_iter().collect();
        let hosted_b: HashSet<String> = b.hosted_matches().into_iter().collect();
        let both: Vec<&String> = hosted_a.intersection(&hosted_b).collect();
        assert!(both.is_empty(), "matches hosted by both nodes: {both:?}");
        if hosted_a.len() + hosted_b.len() == roots.len() {
            break;
        }
        let (ra, rb) = tokio::join!(fleet_a.adopt(), fleet_b.adopt());
        ra.expect("scan a");
        rb.expect("scan b");
    }
    let hosted_a: HashSet<String> = a.hosted_matches().into_iter().collect();
    let hosted_b: HashSet<String> = b.hosted_matches().into_iter().collect();
    assert_eq!(
        hosted_a.len() + hosted_b.len(),
        roots.len(),
        "every orphan is hosted (a: {hosted_a:?}, b: {hosted_b:?})"
    );
    assert!(hosted_a.is_disjoint(&hosted_b));
    assert!(
        !hosted_a.is_empty() && !hosted_b.is_empty(),
        "both nodes take a share: a {} b {}",
        hosted_a.len(),
        hosted_b.len()
    );
    for root in &roots {
        let key = a.key(root).expect("key");
        let lease = store
            .lease(&key)
            .await
            .expect("lease read")
            .expect("leased");
        let expected = if hosted_a.contains(root) { "a" } else { "b" };
        assert_eq!(lease.node, expected, "{root} is leased by its host");
    }
    for (fleet, engine) in [(&fleet_a, &a), (&fleet_b, &b)] {
        engine.shutdown().await;
        fleet.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_nodes_own_each_orphan_once_on_redis() {
    let redis = TestRedis::start().await;
    racing_nodes_own_each_orphan_once(redis.store().await, redis.edition()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_nodes_own_each_orphan_once_on_a_cluster() {
    let cluster = TestCluster::start(3).await;
    let store = RedisStore::connect(&cluster.urls())
        .await
        .expect("cluster store");
    racing_nodes_own_each_orphan_once(store, cluster.edition()).await;
}

async fn a_fenced_node_stops_and_the_new_owner_continues(store: RedisStore, edition: &str) {
    let old = node(&store, edition, "old").await;
    old.create_match("m").await.expect("created");
    let mut feed = old.subscribe("m").expect("subscribed");
    let join = ArenaCommand::Join { name: "ada".into() };
    old.submit("m", PlayerId(1), join, None).expect("queued");
    let key = old.key("m").expect("key");
    // Wait for a stored tick or two under the old owner.
    loop {
        feed.updates.changed().await.expect("ticking");
        let head = store.head(&key).await.expect("head").expect("stored");
        if head.next_sequence > 0 && head.tick > 2 {
            break;
        }
    }
    // Another node takes the lease (what a takeover after the old node
    // paused past its expiry does): a new epoch.
    let lease = store.lease(&key).await.expect("read").expect("held");
    let taken = store
        .transfer(&key, &lease, "new", TTL)
        .await
        .expect("taken");
    assert!(taken.epoch > lease.epoch);
    // The old node's next write is fenced: it stops hosting the match and
    // its subscribers see the feed close.
    let closed = async { while feed.updates.changed().await.is_ok() {} };
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the fenced node stops hosting the match (its feed closes)");
    assert!(!old.is_hosted("m"));
    assert_eq!(old.stats().relocated_matches, 1);
    let frozen = store.head(&key).await.expect("head").expect("stored");
    // The new owner restores it and goes on from exactly there.
    let new = node(&store, edition, "new").await;
    let replayed = new
        .restore_match("m")
        .await
        .expect("restored by the new owner");
    assert_eq!(replayed.tick, frozen.tick);
    let mut feed = new.subscribe("m").expect("subscribed");
    loop {
        feed.updates.changed().await.expect("ticking");
        let head = store.head(&key).await.expect("head").expect("stored");
        if head.tick > frozen.tick + 5 {
            break;
        }
    }
    // The old node cannot write again, whatever it tries.
    let stale = old.restore_match("m").await;
    assert!(
        matches!(
            stale,
            Err(tickforge::engine::EngineError::Store(
                StoreError::Owned { .. }
            ))
        ),
        "the old node cannot claim a live lease of another: {stale:?}"
    );
    new.shutdown().await;
    old.shutdown().await;
    // The log is whole: a rebuild from 0 equals the restore.
    let rebuilt = rebuild_from_start(&Arena::default(), &store, &key)
        .await
        .expect("rebuilt");
    let restored = restore(&Arena::default(), &store, &key)
        .await
        .expect("restored");
    assert_eq!(rebuilt.state, restored.state);
    assert_eq!(rebuilt.next_sequence, restored.next_sequence);
    let events = store.read(&key, 0, 1_000_000).await.expect("log read");
    let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(
        sequences,
        (0..events.len() as u64).collect::<Vec<_>>(),
        "gap-free"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_node_stops_and_the_new_owner_continues_on_redis() {
    let redis = TestRedis::start().await;
    a_fenced_node_stops_and_the_new_owner_continues(redis.store().await, redis.edition()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_node_stops_and_the_new_owner_continues_on_a_cluster() {
    let cluster = TestCluster::start(3).await;
    let store = RedisStore::connect(&cluster.urls())
        .await
        .expect("cluster store");
    a_fenced_node_stops_and_the_new_owner_continues(store, cluster.edition()).await;
}
