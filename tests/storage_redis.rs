//! The storage suite against the memory store and the Redis store.
//!
//! `cargo test --test storage_redis --features redis`. Each Redis test gets
//! its own server (a `redis-server` child process by default; see
//! `tests/support` for `TICKFORGE_TEST_REDIS=container` and `url:…`).
//!
//! The append throughput probe is ignored by default; run it by hand with
//! `cargo test --release --test storage_redis -- --ignored --nocapture append_probe`.

#![cfg(feature = "redis")]

mod storage_suite;
mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;

use storage_suite::Ns;
use support::{Mode, ServerOptions, TestCluster, TestRedis, expect_events};
use tickforge::store::{
    AppendBatch, EventStore, MemoryStore, PositionStore, RedisOptions, RedisStore, SnapshotStore,
    StoreError,
};

/// One test per suite function and backend.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    storage_suite::$name(&MemoryStore::new(), &Ns::new("main")).await;
                }
            )*
        }

        mod redis {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let redis = TestRedis::start().await;
                    let store = redis.store().await;
                    storage_suite::$name(&store, &Ns::new(redis.edition())).await;
                }
            )*
        }

        /// The whole suite on one three-node cluster (process mode only).
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn cluster_runs_the_suite() {
            if Mode::from_env() != Mode::Process {
                eprintln!("cluster tests need redis-server child processes; skipped");
                return;
            }
            let cluster = TestCluster::start(3).await;
            let store = cluster.store().await;
            $(
                storage_suite::$name(&store, &Ns::new(&format!("{}-{}", cluster.edition(), stringify!($name)))).await;
            )*
            storage_suite::racing_writers_never_fork(&store, &Ns::new(cluster.edition()), 32, 3).await;
            let quiet = RedisStore::connect_with(
                &cluster.urls(),
                RedisOptions { publish: false, ..RedisOptions::default() },
            )
            .await
            .unwrap();
            follower_scenario(&store, &quiet, &Ns::new(cluster.edition())).await;
        }
    };
}

suite!(
    append_read_head,
    gap_is_a_conflict,
    retry_is_idempotent,
    diverged_bytes_are_refused,
    non_consecutive_batch_is_refused,
    empty_batch_moves_the_tick,
    unknown_match_is_refused,
    create_twice_is_a_conflict,
    snapshots_compare_and_set,
    positions_move_forward_only,
    finish_hides_a_match,
    one_call_appends_many_matches,
    large_batch_is_stored_whole,
    trim_stops_at_the_snapshot,
    trim_waits_for_handlers,
    leases_claim_renew_expire_reclaim,
    stale_writer_is_fenced,
    transfer_fences_the_old_owner,
    stale_snapshot_and_trim_are_refused,
    expired_nodes_are_not_listed,
    append_renews_the_lease,
);

/// Appends split over many small script calls keep every rule, and the
/// order of two batches of one match within one append.
#[tokio::test]
async fn redis_small_calls_keep_the_rules() {
    let redis = TestRedis::start().await;
    let options = RedisOptions {
        max_batches_per_call: 3,
        max_bytes_per_call: 200,
        ..RedisOptions::default()
    };
    let store = RedisStore::connect_with(&[redis.url().to_owned()], options)
        .await
        .unwrap();
    let ns = Ns::new(redis.edition());
    storage_suite::one_call_appends_many_matches(&store, &ns).await;
    storage_suite::retry_is_idempotent(&store, &ns).await;
    storage_suite::large_batch_is_stored_whole(&store, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_racing_writers_never_fork() {
    storage_suite::racing_writers_never_fork(&MemoryStore::new(), &Ns::new("main"), 32, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_racing_writers_never_fork() {
    let redis = TestRedis::start().await;
    let store = redis.store().await;
    storage_suite::racing_writers_never_fork(&store, &Ns::new(redis.edition()), 32, 5).await;
}

/// Payloads must be the envelopes of their events: the Redis store reads
/// each event's tick back from them.
#[tokio::test]
async fn redis_refuses_payloads_that_are_not_their_envelope() {
    let redis = TestRedis::start().await;
    let store = redis.store().await;
    let key = redis.key("payloads");
    store.create(&key, &[]).await.unwrap();
    let mut wrong_tick = storage_suite::event(0, 5, "x");
    wrong_tick.tick = 6;
    let mut garbage = storage_suite::event(0, 5, "x");
    garbage.payload = b"not an envelope".to_vec();
    for event in [wrong_tick, garbage] {
        let result =
            storage_suite::append_one(&store, storage_suite::batch(&key, 0, vec![event], 5)).await;
        assert!(
            matches!(result, Err(StoreError::Corrupt { .. })),
            "{result:?}"
        );
    }
    assert_eq!(store.head(&key).await.unwrap().unwrap().next_sequence, 0);
    // Numbers Lua cannot compare exactly are refused before sending.
    let beyond = tickforge::store::redis::MAX_EXACT + 1;
    assert!(matches!(
        store.advance_position("follower", &key, beyond).await,
        Err(StoreError::Corrupt { .. })
    ));
    let result =
        storage_suite::append_one(&store, storage_suite::batch(&key, 0, Vec::new(), beyond)).await;
    assert!(
        matches!(result, Err(StoreError::Corrupt { .. })),
        "{result:?}"
    );
}

/// Data of the wrong type under a tickforge key is reported as corrupt.
#[tokio::test]
async fn redis_reports_foreign_data_as_corrupt() {
    let redis = TestRedis::start().await;
    let store = redis.store().await;
    let key = redis.key("foreign");
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let () = ::redis::cmd("SET")
        .arg(key.snapshot_key())
        .arg("oops")
        .query_async(&mut con)
        .await
        .unwrap();
    let () = ::redis::cmd("HSET")
        .arg(key.meta_key())
        .arg("head")
        .arg("x")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(matches!(
        store.load_snapshot(&key).await,
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        store.head(&key).await,
        Err(StoreError::Corrupt { .. })
    ));
    let result = storage_suite::append_one(
        &store,
        storage_suite::batch(&key, 0, storage_suite::events(0, 1, 1, "f"), 1),
    )
    .await;
    assert!(
        matches!(result, Err(StoreError::Corrupt { .. })),
        "{result:?}"
    );
}

/// A password in the URL is used; a wrong one is refused as unavailable.
#[tokio::test]
async fn redis_password_in_url() {
    if Mode::from_env() != Mode::Process {
        eprintln!("needs a redis-server child process; skipped");
        return;
    }
    let redis = TestRedis::start_with(ServerOptions {
        password: Some("s3cret".to_owned()),
        ..ServerOptions::default()
    })
    .await;
    let store = redis.store().await;
    store.create(&redis.key("auth"), &[]).await.unwrap();
    let wrong = redis.url().replace("s3cret", "wrong");
    let refused = RedisStore::connect(&[wrong]).await;
    match refused {
        Err(StoreError::Unavailable(message)) => {
            assert!(!message.contains("wrong"), "password leaked: {message}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// Connecting to nothing fails as unavailable, TLS included.
#[tokio::test]
async fn redis_unreachable_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for url in [
        format!("redis://127.0.0.1:{port}"),
        format!("rediss://user:pw@127.0.0.1:{port}"),
    ] {
        let result = RedisStore::connect(&[url]).await;
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{result:?}"
        );
    }
    assert!(matches!(
        RedisStore::connect(&[]).await,
        Err(StoreError::Unavailable(_))
    ));
}

/// After a crash and restart (AOF with fsync always), the store reconnects
/// on its own and finds every acknowledged event.
#[tokio::test]
async fn redis_reconnects_after_a_restart() {
    if Mode::from_env() != Mode::Process {
        eprintln!("needs a redis-server child process; skipped");
        return;
    }
    let mut redis = TestRedis::start_with(ServerOptions::appendonly("always")).await;
    let store = redis.store().await;
    let key = redis.key("crash");
    store.create(&key, &[]).await.unwrap();
    let events = storage_suite::events(0, 3, 1, "before");
    storage_suite::append_one(&store, storage_suite::batch(&key, 0, events.clone(), 1))
        .await
        .unwrap();

    let process = redis.process().expect("process mode");
    process.kill();
    match store.head(&key).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable while down, got {other:?}"),
    }
    process.restart().await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    let head = loop {
        match store.head(&key).await {
            Ok(head) => break head,
            Err(StoreError::Unavailable(e)) => {
                assert!(Instant::now() < deadline, "never reconnected: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("{other}"),
        }
    };
    assert_eq!(head.map(|h| h.next_sequence), Some(3));
    assert_eq!(store.read(&key, 0, 10).await.unwrap(), events);
    // Scripts are loaded again transparently (the restart emptied the cache).
    let more = storage_suite::events(3, 1, 2, "after");
    let head = storage_suite::append_one(&store, storage_suite::batch(&key, 3, more, 2))
        .await
        .unwrap();
    assert_eq!(head.next_sequence, 4);
}

/// A follower sees stored events, then published batches, and fills gaps
/// left by appends that did not publish (on the next message, or after an
/// idle poll). `quiet` appends to the same server without publishing.
async fn follower_scenario(store: &RedisStore, quiet: &RedisStore, ns: &Ns) {
    use storage_suite::{append_one, batch, events};
    let key = ns.key("followed");
    store.create(&key, &[]).await.unwrap();
    let all = events(0, 10, 1, "f");
    append_one(store, batch(&key, 0, all[..3].to_vec(), 1))
        .await
        .unwrap();

    let mut follower = store.follow(&key, 1).await.unwrap();
    // Stored before following.
    expect_events(&mut follower, &all[1..3]).await;
    // Published.
    append_one(store, batch(&key, 3, all[3..5].to_vec(), 1))
        .await
        .unwrap();
    let published = Instant::now();
    expect_events(&mut follower, &all[3..5]).await;
    // Through the message, not the idle poll.
    assert!(
        published.elapsed() < tickforge::store::redis::FOLLOW_POLL,
        "published batch took {:?}",
        published.elapsed()
    );
    // Not published, then a published batch after the gap.
    append_one(quiet, batch(&key, 5, all[5..7].to_vec(), 1))
        .await
        .unwrap();
    append_one(store, batch(&key, 7, all[7..8].to_vec(), 1))
        .await
        .unwrap();
    expect_events(&mut follower, &all[5..8]).await;
    // Not published and nothing after it: found by the idle poll.
    append_one(quiet, batch(&key, 8, all[8..10].to_vec(), 1))
        .await
        .unwrap();
    expect_events(&mut follower, &all[8..10]).await;
    assert_eq!(follower.next_sequence(), 10);
}

#[tokio::test]
async fn redis_follower_fills_gaps() {
    let redis = TestRedis::start().await;
    let store = redis.store().await;
    let quiet = RedisStore::connect_with(
        &[redis.url().to_owned()],
        RedisOptions {
            publish: false,
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap();
    follower_scenario(&store, &quiet, &Ns::new(redis.edition())).await;
}

/// A follower that falls further behind than its message queue holds
/// (the queue drops what does not fit) still gets every event, in order:
/// it reads what was dropped from the store.
#[tokio::test]
async fn redis_follower_slower_than_the_appends_gets_every_event() {
    use storage_suite::{append_one, batch, events};
    const BATCHES: u64 = 3_000; // well past the follower's queue of 1,024
    let redis = TestRedis::start().await;
    let store = redis.store().await;
    let key = redis.key("slow-follower");
    store.create(&key, &[]).await.unwrap();
    let all = events(0, BATCHES, 1, "s");
    let mut follower = store.follow(&key, 0).await.unwrap();
    for (sequence, event) in all.iter().enumerate() {
        let tick = sequence as u64 + 1;
        append_one(
            &store,
            batch(&key, sequence as u64, vec![event.clone()], tick),
        )
        .await
        .unwrap();
    }
    expect_events(&mut follower, &all).await;
}

/// A follower asked to start below what trimming kept fails with
/// [`StoreError::Trimmed`] instead of skipping; from the floor it works.
#[tokio::test]
async fn redis_follower_below_the_trimmed_part_says_so() {
    let redis = TestRedis::start().await;
    let store = redis.store().await;
    let key = redis.key("follow-trimmed");
    store.create(&key, &[]).await.unwrap();
    let all = storage_suite::events(0, 6, 1, "f");
    storage_suite::append_one(&store, storage_suite::batch(&key, 0, all.clone(), 1))
        .await
        .unwrap();
    let snapshot = tickforge::store::Snapshot::new(4, 1, vec![0; 8], 1);
    assert!(store.save_snapshot(&key, &snapshot).await.unwrap());
    store.trim(&key, 4, &[]).await.unwrap();

    let mut follower = store.follow(&key, 1).await.unwrap();
    let refused = follower.next().await;
    assert!(
        matches!(
            refused,
            Err(StoreError::Trimmed {
                requested: 1,
                retained_from: 4,
                ..
            })
        ),
        "{refused:?}"
    );
    let mut follower = store.follow(&key, 4).await.unwrap();
    expect_events(&mut follower, &all[4..]).await;
}

/// A follower whose server goes away says so (and can follow again from
/// its next sequence once the server is back).
#[tokio::test]
async fn redis_follower_reports_a_lost_server() {
    if Mode::from_env() != Mode::Process {
        eprintln!("needs a redis-server child process; skipped");
        return;
    }
    let mut redis = TestRedis::start_with(ServerOptions::appendonly("always")).await;
    let store = redis.store().await;
    let key = redis.key("lost");
    store.create(&key, &[]).await.unwrap();
    let all = storage_suite::events(0, 2, 1, "l");
    storage_suite::append_one(&store, storage_suite::batch(&key, 0, all[..1].to_vec(), 1))
        .await
        .unwrap();
    let mut follower = store.follow(&key, 0).await.unwrap();
    expect_events(&mut follower, &all[..1]).await;

    let process = redis.process().expect("process mode");
    process.kill();
    let lost = tokio::time::timeout(Duration::from_secs(10), follower.next())
        .await
        .expect("a lost server must not leave the follower waiting");
    assert!(matches!(lost, Err(StoreError::Unavailable(_))), "{lost:?}");
    process.restart().await.unwrap();

    let from = follower.next_sequence();
    assert_eq!(from, 1);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut follower = loop {
        match store.follow(&key, from).await {
            Ok(follower) => break follower,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot follow again: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let batch = storage_suite::batch(&key, 1, all[1..].to_vec(), 2);
        match store.append(&[batch]).await {
            Ok(results) => {
                assert!(results[0].is_ok(), "{results:?}");
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "store never came back: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    expect_events(&mut follower, &all[1..]).await;
}

/// What an append publishes: only the new events, framed per
/// `codec::frame_events`, on the match's channel.
#[tokio::test]
async fn redis_publishes_new_events_only() {
    use storage_suite::{append_one, batch, events};
    let redis = TestRedis::start().await;
    let store = redis.store().await;
    let key = redis.key("published");
    store.create(&key, &[]).await.unwrap();
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(tickforge::store::redis::updates_channel(&key))
        .await
        .unwrap();
    let mut messages = pubsub.into_on_message();

    let all = events(0, 5, 1, "p");
    append_one(&store, batch(&key, 0, all[..3].to_vec(), 1))
        .await
        .unwrap();
    // A retry overlapping the head, and a tick-only batch: only event 3 and
    // 4 are new.
    append_one(&store, batch(&key, 1, all[1..].to_vec(), 2))
        .await
        .unwrap();
    append_one(&store, batch(&key, 5, Vec::new(), 3))
        .await
        .unwrap();
    let mut received = Vec::new();
    for _ in 0..2 {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("no message")
            .expect("subscription open");
        received.push(message.get_payload_bytes().to_vec());
    }
    let framed = |range: std::ops::Range<usize>| {
        tickforge::codec::frame_events(all[range].iter().map(|e| e.payload.as_slice()))
    };
    assert_eq!(received, vec![framed(0..3), framed(3..5)]);
}

/// How many PUBLISH calls the server has run (scripts' calls included).
async fn publish_calls(url: &str) -> u64 {
    let client = ::redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    support::command_calls(&mut con, "publish").await
}

/// Appends to a match nobody follows publish nothing (the script asks
/// PUBSUB NUMSUB first); once a follower subscribes, they do.
#[tokio::test]
async fn redis_publishes_only_while_someone_follows() {
    use storage_suite::{append_one, batch, events};
    if matches!(Mode::from_env(), Mode::Url(_)) {
        eprintln!("needs a server of its own (it counts PUBLISH calls); skipped");
        return;
    }
    let redis = TestRedis::start().await;
    let store = redis.store().await;
    let key = redis.key("unfollowed");
    store.create(&key, &[]).await.unwrap();
    let all = events(0, 4, 1, "u");
    let before = publish_calls(redis.url()).await;
    append_one(&store, batch(&key, 0, all[..2].to_vec(), 1))
        .await
        .unwrap();
    assert_eq!(
        publish_calls(redis.url()).await,
        before,
        "published to nobody"
    );

    let mut follower = store.follow(&key, 0).await.unwrap();
    expect_events(&mut follower, &all[..2]).await;
    append_one(&store, batch(&key, 2, all[2..].to_vec(), 2))
        .await
        .unwrap();
    expect_events(&mut follower, &all[2..]).await;
    assert_eq!(publish_calls(redis.url()).await, before + 1);
}

/// Append throughput: 1,000 matches × 8 events per call, one shard's tick
/// batch, against a fresh local server. Prints events/s, call latency and
/// redis-server CPU per call, then the same load as plain pipelined `ZADD`s
/// (no checks, no head) as a baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput probe; run by hand in release mode"]
async fn append_probe() {
    const MATCHES: usize = 1_000;
    const EVENTS: u64 = 8;
    const CALLS: u64 = 200;
    let mut redis = TestRedis::start().await;
    let server_pid = redis.process().and_then(|p| p.pid());
    let server_cpu = || server_pid.and_then(cpu_seconds).unwrap_or(f64::NAN);
    let payload_bytes: usize = storage_suite::events(0, EVENTS, 1, "move")
        .iter()
        .map(|e| e.payload.len())
        .sum();
    let events = CALLS * MATCHES as u64 * EVENTS;

    // The store as configured, then one script call per match (pipelined),
    // for comparison.
    let variants = [
        ("append probe", 2_048, true),
        ("without publishing", 2_048, false),
        ("one call per match", 1, true),
    ];
    for (variant, (label, max_batches_per_call, publish)) in variants.into_iter().enumerate() {
        let keys: Vec<_> = (0..MATCHES)
            .map(|i| redis.key(&format!("v{variant}-{i}")))
            .collect();
        let options = RedisOptions {
            max_batches_per_call,
            publish,
            ..RedisOptions::default()
        };
        let store = RedisStore::connect_with(&[redis.url().to_owned()], options)
            .await
            .unwrap();
        for key in &keys {
            store.create(key, &[]).await.unwrap();
        }
        let batches_at = |call: u64| -> Vec<AppendBatch> {
            keys.iter()
                .map(|key| {
                    let first = call * EVENTS;
                    storage_suite::batch(
                        key,
                        first,
                        storage_suite::events(first, EVENTS, call + 1, "move"),
                        call + 1,
                    )
                })
                .collect()
        };
        // Batches are built outside the timed section, as a shard has them.
        let prepared: Vec<Vec<AppendBatch>> = (0..CALLS).map(batches_at).collect();
        let mut latencies = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        let cpu_before = server_cpu();
        let started = Instant::now();
        for batches in prepared {
            let call = Instant::now();
            let results = store.append(&batches).await.unwrap();
            latencies.record(call.elapsed().as_micros() as u64).unwrap();
            assert!(results.iter().all(Result::is_ok));
        }
        let elapsed = started.elapsed();
        let cpu = server_cpu() - cpu_before;
        println!(
            "{label}: {CALLS} appends × {MATCHES} matches × {EVENTS} events \
             ({payload_bytes} B per batch) in {elapsed:.2?}: {:.0} events/s, \
             {:.0} match-batches/s; append latency p50 {} µs, p99 {} µs, max {} µs; \
             redis-server CPU {:.0} µs per append",
            events as f64 / elapsed.as_secs_f64(),
            (CALLS * MATCHES as u64) as f64 / elapsed.as_secs_f64(),
            latencies.value_at_quantile(0.5),
            latencies.value_at_quantile(0.99),
            latencies.max(),
            cpu * 1e6 / CALLS as f64,
        );
        assert_eq!(
            store.head(&keys[0]).await.unwrap().unwrap().next_sequence,
            CALLS * EVENTS
        );
    }

    // Baseline: the same members as plain 8-member ZADDs, one pipeline per
    // "call", on other keys.
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let pipelines: Vec<::redis::Pipeline> = (0..CALLS)
        .map(|call| {
            let mut pipe = ::redis::pipe();
            for i in 0..MATCHES {
                let zadd = pipe.cmd("ZADD").arg(format!("baseline:{{{i}}}"));
                for event in storage_suite::events(call * EVENTS, EVENTS, call + 1, "move") {
                    zadd.arg(event.sequence).arg(event.payload);
                }
                zadd.ignore();
            }
            pipe
        })
        .collect();
    let cpu_before = server_cpu();
    let started = Instant::now();
    for pipe in pipelines {
        let () = pipe.query_async(&mut con).await.unwrap();
    }
    let elapsed = started.elapsed();
    let cpu = server_cpu() - cpu_before;
    println!(
        "baseline (plain pipelined ZADD): {:.0} events/s; redis-server CPU {:.0} µs per call",
        events as f64 / elapsed.as_secs_f64(),
        cpu * 1e6 / CALLS as f64,
    );
    let stats: String = ::redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut con)
        .await
        .unwrap();
    for line in stats.lines().filter(|l| l.starts_with("cmdstat_")) {
        println!("  {line}");
    }
}

/// User plus system CPU seconds a process has used (Linux only).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // Clock ticks are 100 per second on Linux.
    Some((utime + stime) / 100.0)
}
