//! Store errors by class, against a real redis-server while arena matches
//! are being played on one shard.
//!
//! - permanent, one match: its `meta:{m}` key is replaced by a string, so
//!   the append script fails with `WRONGTYPE` for the whole multi-match
//!   call. The writer narrows it down batch by batch: that match alone
//!   pauses, its commands are refused with Redis's message, the 50 others
//!   keep ticking with gap-free logs, shutdown completes, the stats count
//!   one permanent error;
//! - the same in sync durability: the refused tick is never published;
//! - permanent, every match: `maxmemory 1` with `noeviction` makes every
//!   write fail with `OOM`, an ACL change takes `EVALSHA` from the
//!   engine's user (`NOPERM`): every match pauses with that reason and
//!   stays paused after the fault is undone (a permanent error never turns
//!   into a silent resume); shutdown completes;
//! - transient: redis-server killed and restarted on the same port and
//!   directory: the writer retries, nothing pauses and nothing is lost;
//! - one URL naming a node of a 3-master cluster connects in cluster mode
//!   and reaches every node's slots.
//!
//! Shutdowns are awaited under a generous timeout: a hang detector, not a
//! timing assertion. Conditions no event signals are polled with a deadline.

#![cfg(feature = "redis")]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Mode, ServerOptions, TestCluster, TestRedis};
use tickforge::arena::{Arena, ArenaCommand, ArenaEvent};
use tickforge::codec;
use tickforge::engine::{
    CommandOutcome, CommandReply, Durability, Engine, EngineSettings, EngineStats, EventEnvelope,
    MatchFeed, MatchPolicy, ReplyTo,
};
use tickforge::game::{PlayerId, Tick};
use tickforge::play::autoplay::{AutoplayCounters, play_match};
use tickforge::store::{EventStore, Head, MatchKey, RedisStore, StoreError};
use tokio::sync::{broadcast::error::TryRecvError, mpsc};
use tokio::task::JoinSet;

/// How long any awaited condition may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// Poll interval while waiting for a condition no event signals.
const POLL: Duration = Duration::from_millis(20);

/// A shutdown taking longer than this is a hang.
const SHUTDOWN_HANG: Duration = Duration::from_secs(60);

/// Ticks every healthy match must still gain after the failure.
const TICKS_AFTER: Tick = 60;

fn settings(durability: Durability) -> EngineSettings {
    EngineSettings {
        tick_hz: 30,
        shards: 1,
        durability,
        policy: MatchPolicy {
            max_pending: 1_024,
            snapshot_every_ticks: 30,
        },
        ..EngineSettings::default()
    }
}

/// One match being played, with every event its feed published.
struct Played {
    root: String,
    key: MatchKey,
    feed: MatchFeed<Arena>,
    events: Vec<Arc<EventEnvelope<ArenaEvent>>>,
}

impl Played {
    fn drain(&mut self) {
        loop {
            match self.feed.events.try_recv() {
                Ok(event) => {
                    assert_eq!(event.sequence, self.events.len() as u64, "{}", self.key);
                    self.events.push(event);
                }
                Err(TryRecvError::Lagged(n)) => panic!("{}: feed lagged by {n}", self.key),
                Err(_) => return,
            }
        }
    }

    fn tick(&self) -> Tick {
        self.feed.updates.borrow().as_ref().map_or(0, |u| u.tick)
    }
}

/// An engine on Redis with two bots in each match.
struct Busy {
    engine: Arc<Engine<Arena, RedisStore>>,
    matches: Vec<Played>,
    bots: JoinSet<()>,
}

impl Busy {
    async fn start(store: RedisStore, edition: &str, count: usize) -> Busy {
        Self::start_with(store, edition, count, Durability::Async).await
    }

    async fn start_with(
        store: RedisStore,
        edition: &str,
        count: usize,
        durability: Durability,
    ) -> Busy {
        let settings = settings(durability);
        let engine = Arc::new(Engine::start(Arena::default(), store, settings, edition));
        let counters = Arc::new(AutoplayCounters::default());
        let mut matches = Vec::new();
        let mut bots = JoinSet::new();
        for i in 0..count {
            let root = format!("m{i}");
            engine.create_match(&root).await.expect("create match");
            let feed = engine.subscribe(&root).expect("subscribe");
            matches.push(Played {
                key: engine.key(&root).expect("valid root"),
                root: root.clone(),
                feed,
                events: Vec::new(),
            });
            let (engine, counters) = (engine.clone(), counters.clone());
            bots.spawn(async move {
                let _ = play_match(&engine, &counters, &root, 2, i as u64 + 1).await;
            });
        }
        Busy {
            engine,
            matches,
            bots,
        }
    }

    fn drain(&mut self) {
        self.matches.iter_mut().for_each(Played::drain);
    }

    fn stats(&self) -> EngineStats {
        self.engine.stats()
    }

    /// Polls (draining the feeds) until `condition` holds.
    async fn wait_for(&mut self, what: &str, mut condition: impl FnMut(&mut Busy) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.drain();
            if condition(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; {:?}",
                self.stats()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls until the store holds at least `events` events of every match
    /// in `which`.
    async fn wait_stored(&mut self, store: &RedisStore, which: &[usize], events: u64) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.drain();
            let mut done = true;
            for &i in which {
                let head = stored_head(store, &self.matches[i].key).await;
                done &= head.next_sequence >= events;
            }
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "matches did not store {events} events; {:?}",
                self.stats()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends a command to match `index` and returns the answer.
    async fn command(&self, index: usize) -> CommandOutcome {
        let (tx, mut rx) = mpsc::channel::<CommandReply>(4);
        let reply = ReplyTo { tx, client_seq: 7 };
        let root = &self.matches[index].root;
        self.engine
            .submit(root, PlayerId(1), ArenaCommand::Fire, Some(reply))
            .expect("queued");
        let reply = tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .expect("an answer")
            .expect("the shard answers");
        assert_eq!(reply.client_seq, 7);
        reply.outcome
    }

    /// Stops the engine under the hang detector.
    async fn shutdown(&mut self) -> EngineStats {
        tokio::time::timeout(SHUTDOWN_HANG, self.engine.shutdown())
            .await
            .expect("shutdown hung");
        self.bots.abort_all();
        self.drain();
        self.stats()
    }
}

async fn stored_head(store: &RedisStore, key: &MatchKey) -> Head {
    store
        .head(key)
        .await
        .expect("store reachable")
        .unwrap_or_else(|| panic!("{key} not stored"))
}

/// After shutdown: the stored log of `played` is 0, 1, 2, … with no gap,
/// byte for byte what its feed published, and its head is the last
/// published tick.
async fn assert_log_whole(store: &RedisStore, played: &Played) {
    let key = &played.key;
    let head = stored_head(store, key).await;
    let stored = store.read(key, 0, usize::MAX).await.unwrap();
    assert_eq!(stored.len() as u64, head.next_sequence, "{key}: head");
    assert_eq!(
        stored.len(),
        played.events.len(),
        "{key}: stored vs published events"
    );
    for (offset, (record, event)) in stored.iter().zip(&played.events).enumerate() {
        assert_eq!(record.sequence, offset as u64, "{key}: gap in the log");
        assert_eq!(
            record.payload,
            codec::encode(&**event).unwrap(),
            "{key}: event {offset} differs from the published one"
        );
    }
    assert_eq!(head.tick, played.tick(), "{key}: stored head tick");
}

fn rejection(outcome: CommandOutcome) -> String {
    match outcome {
        CommandOutcome::Rejected(rejection) => rejection.reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_type_key_pauses_its_match_and_no_other() {
    let redis = TestRedis::start().await;
    let store = redis.store().await;
    let mut busy = Busy::start(store.clone(), redis.edition(), 51).await;
    let all: Vec<usize> = (0..51).collect();
    busy.wait_stored(&store, &all, 3).await;

    // One match's head hash becomes a string: every append script call
    // carrying its batch fails with WRONGTYPE.
    let victim = 17;
    let meta = busy.matches[victim].key.meta_key();
    let mut raw = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::pipe()
        .atomic()
        .del(&meta)
        .set(&meta, "not a hash")
        .query_async(&mut raw)
        .await
        .unwrap();

    busy.wait_for("the match to pause", |b| b.stats().paused_matches == 1)
        .await;
    let reason = rejection(busy.command(victim).await);
    assert!(
        reason.contains("match paused") && reason.contains("WRONGTYPE"),
        "{reason}"
    );
    let victim_key = busy.matches[victim].key.to_string();
    assert!(reason.contains(&victim_key), "names the match: {reason}");

    // The 50 others keep ticking, and their ticks are stored.
    let others: Vec<usize> = all.iter().copied().filter(|&i| i != victim).collect();
    let marks: Vec<Tick> = others.iter().map(|&i| busy.matches[i].tick()).collect();
    busy.wait_for("the other matches to keep ticking", |b| {
        others
            .iter()
            .zip(&marks)
            .all(|(&i, &mark)| b.matches[i].tick() >= mark + TICKS_AFTER)
    })
    .await;
    for (&i, &mark) in others.iter().zip(&marks) {
        let head = stored_head(&store, &busy.matches[i].key).await;
        assert!(head.tick >= mark, "{}: stored tick", busy.matches[i].key);
    }
    // A healthy match still takes commands (the game may refuse a shot,
    // the shard does not).
    if let CommandOutcome::Rejected(rejection) = busy.command(others[0]).await {
        assert!(!rejection.reason.contains("paused"), "{}", rejection.reason);
    }

    let stats = busy.shutdown().await;
    assert_eq!(stats.paused_matches, 1, "{stats:?}");
    // Logged and counted once, although its writes kept coming until the
    // shard saw the refusal.
    assert_eq!(stats.permanent_errors, 1, "{stats:?}");
    assert_eq!(stats.dead_writers, 0);
    for &i in &others {
        assert_log_whole(&store, &busy.matches[i]).await;
    }
    // The injected fault is still there: reading the head hits it too.
    assert!(matches!(
        store.head(&busy.matches[victim].key).await,
        Err(StoreError::Corrupt { .. })
    ));
}

/// Sync durability: the tick the store refused for a match is not
/// published, so no client sees a state that was never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_durability_publishes_no_refused_tick() {
    let redis = TestRedis::start().await;
    let store = redis.store().await;
    let count = 5;
    let mut busy = Busy::start_with(store.clone(), redis.edition(), count, Durability::Sync).await;
    let all: Vec<usize> = (0..count).collect();
    busy.wait_stored(&store, &all, 3).await;

    // Read the stored tick and break the key in one transaction: nothing
    // of this match is stored after `stored_tick`.
    let victim = 2;
    let meta = busy.matches[victim].key.meta_key();
    let mut raw = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let (stored_tick, (), ()): (Tick, (), ()) = redis::pipe()
        .atomic()
        .hget(&meta, "tick")
        .del(&meta)
        .set(&meta, "not a hash")
        .query_async(&mut raw)
        .await
        .unwrap();
    busy.wait_for("the match to pause", |b| b.stats().paused_matches == 1)
        .await;
    let reason = rejection(busy.command(victim).await);
    assert!(reason.contains("WRONGTYPE"), "{reason}");
    let published = busy.matches[victim].tick();
    assert!(
        published <= stored_tick,
        "tick {published} published, only {stored_tick} stored"
    );
    let marks: Vec<Tick> = busy.matches.iter().map(Played::tick).collect();
    busy.wait_for("the other matches to keep ticking", |b| {
        (0..count)
            .filter(|&i| i != victim)
            .all(|i| b.matches[i].tick() >= marks[i] + TICKS_AFTER)
    })
    .await;
    let stats = busy.shutdown().await;
    assert_eq!((stats.paused_matches, stats.permanent_errors), (1, 1));
    for i in (0..count).filter(|&i| i != victim) {
        assert_log_whole(&store, &busy.matches[i]).await;
    }
}

/// Whether the test owns its server (it changes server-wide settings).
fn own_server() -> bool {
    let own = !matches!(Mode::from_env(), Mode::Url(_));
    if !own {
        eprintln!("changes server settings: needs its own server; skipped");
    }
    own
}

/// Plays 8 matches, runs `fault` on the server, and checks that every
/// match pauses with a reason naming `code`; after `repair`, they stay
/// paused (a permanent error never turns into a silent resume), and
/// shutdown completes.
async fn every_match_pauses_with(code: &str, fault: redis::Cmd, repair: redis::Cmd) {
    let redis = TestRedis::start().await;
    let store = redis.store().await;
    let count = 8;
    let mut busy = Busy::start(store.clone(), redis.edition(), count).await;
    let all: Vec<usize> = (0..count).collect();
    busy.wait_stored(&store, &all, 3).await;

    let mut raw = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = fault.query_async(&mut raw).await.unwrap();
    busy.wait_for("every match to pause", |b| {
        b.stats().paused_matches == count as u64
    })
    .await;
    for i in 0..count {
        let reason = rejection(busy.command(i).await);
        assert!(reason.contains(code), "{reason}");
    }
    let () = repair.query_async(&mut raw).await.unwrap();
    let marks: Vec<Tick> = busy.matches.iter().map(Played::tick).collect();
    let reason = rejection(busy.command(0).await);
    assert!(reason.contains(code), "{reason}");
    let stats = busy.shutdown().await;
    assert_eq!(stats.paused_matches, count as u64, "{stats:?}");
    assert!(stats.permanent_errors >= count as u64, "{stats:?}");
    for (played, mark) in busy.matches.iter().zip(marks) {
        assert_eq!(played.tick(), mark, "{}: ticked while paused", played.key);
    }
}

/// `maxmemory 1` with `noeviction`: every write is refused with `OOM`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_pauses_every_match_with_the_reason() {
    if !own_server() {
        return;
    }
    let config = |value: &str| {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("SET")
            .arg("maxmemory-policy")
            .arg("noeviction")
            .arg("maxmemory")
            .arg(value);
        cmd
    };
    every_match_pauses_with("OOM", config("1"), config("0")).await;
}

/// The engine's user loses EVALSHA (an ACL change): every script call is
/// refused with `NOPERM`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_evalsha_pauses_every_match_with_the_reason() {
    if !own_server() {
        return;
    }
    let acl = |rule: &str| {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg("default").arg(rule);
        cmd
    };
    every_match_pauses_with("NOPERM", acl("-evalsha"), acl("+evalsha")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_is_retried_and_nothing_is_lost() {
    if Mode::from_env() != Mode::Process {
        eprintln!("restarts need a redis-server child process; skipped");
        return;
    }
    let mut redis = TestRedis::start_with(ServerOptions::appendonly("always")).await;
    let store = redis.store().await;
    let count = 10;
    let mut busy = Busy::start(store.clone(), redis.edition(), count).await;
    let all: Vec<usize> = (0..count).collect();
    busy.wait_stored(&store, &all, 3).await;

    let process = redis.process().expect("process mode");
    process.kill();
    let failures = busy.stats().append_failures;
    busy.wait_for("the writer to notice the outage", |b| {
        b.stats().append_failures > failures
    })
    .await;
    process
        .restart()
        .await
        .expect("restart on the same port and dir");

    let targets: Vec<Tick> = busy.matches.iter().map(Played::tick).collect();
    let deadline = Instant::now() + DEADLINE;
    loop {
        busy.drain();
        let mut caught_up = true;
        for (played, &target) in busy.matches.iter().zip(&targets) {
            caught_up &= match store.head(&played.key).await {
                Ok(Some(head)) => head.tick >= target,
                Ok(None) => panic!("{}: lost by the restart", played.key),
                Err(StoreError::Unavailable(_)) => false,
                Err(e) => panic!("{}: {e}", played.key),
            };
        }
        if caught_up {
            break;
        }
        assert!(Instant::now() < deadline, "writer did not catch up");
        tokio::time::sleep(POLL).await;
    }

    let stats = busy.shutdown().await;
    assert_eq!(stats.paused_matches, 0, "{stats:?}");
    assert_eq!(stats.permanent_errors, 0, "{stats:?}");
    assert!(stats.append_failures > 0, "{stats:?}");
    for played in &busy.matches {
        assert_log_whole(&store, played).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_url_of_a_cluster_node_connects_in_cluster_mode() {
    if Mode::from_env() != Mode::Process {
        eprintln!("clusters need redis-server child processes; skipped");
        return;
    }
    let cluster = TestCluster::start(3).await;
    let first = cluster.urls()[0].clone();
    let store = RedisStore::connect(&[first]).await.expect("connect");
    assert!(store.is_cluster(), "one cluster node URL is cluster mode");
    // Keys in every node's slots, appended in one call.
    let keys: Vec<MatchKey> = (0..24).map(|i| cluster.key(&format!("c{i}"))).collect();
    let mut owners = std::collections::BTreeSet::new();
    for key in &keys {
        store.create(key, &[]).await.unwrap();
        owners.insert(cluster.owner(&key.meta_key()).await);
    }
    assert_eq!(owners.len(), 3, "the keys span the three nodes");
    let batches: Vec<_> = keys
        .iter()
        .map(|key| tickforge::store::AppendBatch {
            key: key.clone(),
            first_sequence: 0,
            events: Vec::new(),
            head_tick: 5,
            epoch: None,
            renew_lease: None,
        })
        .collect();
    let results = store.append(&batches).await.expect("append");
    for (key, result) in keys.iter().zip(results) {
        assert_eq!(result.expect("stored").tick, 5, "{key}");
        assert_eq!(stored_head_tick(&store, key).await, 5);
    }
}

async fn stored_head_tick(store: &RedisStore, key: &MatchKey) -> Tick {
    store.head(key).await.unwrap().expect("stored").tick
}
