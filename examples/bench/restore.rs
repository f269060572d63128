//! Benchmark 3, restore: time to bring back a match with 10k, 100k and 1M
//! events from Redis, from its latest snapshot (`engine::restore`) against
//! a full replay from sequence 0 (`engine::rebuild_from_start`).
//!
//! Setup drives a `MatchCore` directly (8 arena bots, a snapshot every 300
//! ticks, an arena without score or time limit so the match never ends)
//! and appends its events to the store in large batches, saving each
//! snapshot after the events it covers. Every log stops on the tick before
//! a snapshot falls due, so a restore replays the longest possible tail
//! (299 ticks): the worst case. Both ways must rebuild the same state,
//! byte for byte.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde::Serialize;
use tickforge::arena::bot::Bot;
use tickforge::arena::{Arena, ArenaMap, ArenaRules};
use tickforge::codec;
use tickforge::engine::{MatchCore, MatchPolicy, rebuild_from_start, restore};
use tickforge::game::PlayerId;
use tickforge::store::{AppendBatch, EventStore, MatchKey, RedisStore, Snapshot, SnapshotStore};

use crate::redis_server::RedisTarget;
use crate::report::{self, Outcome, Table, Target, micros_histogram, ms, num, progress};

const SNAPSHOT_EVERY: u64 = 300;
const PLAYERS: u32 = 8;
/// Events per append call while building a log.
const SETUP_BATCH: usize = 20_000;
/// The target for every size.
const TARGET_P99_MS: f64 = 5.0;

#[derive(Debug, Clone, Serialize)]
pub struct RestoreConfig {
    pub sizes: Vec<u64>,
    /// Restores per size.
    pub repeats: usize,
    /// Full replays per size: at least `min_rebuilds`, more while under
    /// `rebuild_seconds`.
    pub min_rebuilds: usize,
    pub rebuild_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
struct SizeResult {
    target_events: u64,
    events: u64,
    ticks: u64,
    snapshot_tick: u64,
    snapshot_bytes: usize,
    /// Events replayed on top of the snapshot.
    tail_events: u64,
    setup_s: f64,
    restores: u64,
    restore_p50_ms: f64,
    restore_p99_ms: f64,
    restore_max_ms: f64,
    rebuilds: u64,
    rebuild_p50_ms: f64,
    rebuild_max_ms: f64,
    /// Full replay p50 over restore p50.
    speedup: f64,
}

pub async fn run(
    config: &RestoreConfig,
    redis: &RedisTarget,
    edition: &str,
) -> anyhow::Result<Outcome> {
    let store = RedisStore::connect(std::slice::from_ref(&redis.url))
        .await
        .context("connecting RedisStore")?;
    // Arena matches end at 50 tags or after 5 minutes; these logs outlast both.
    let arena = Arena::new(
        ArenaMap::default(),
        ArenaRules {
            score_limit: u32::MAX,
            time_limit_ticks: 0,
            ..ArenaRules::default()
        },
    );
    let mut results = Vec::new();
    for &size in &config.sizes {
        results.push(run_size(config, &arena, &store, edition, size).await?);
        redis.clean(edition).await;
    }

    let mut table = Table::new(
        format!(
            "restore from Redis: latest snapshot (every {SNAPSHOT_EVERY} ticks) + tail vs full replay from 0, \
             {PLAYERS} bots"
        ),
        &[
            "events",
            "tail events",
            "restore p50 ms",
            "restore p99 ms",
            "restore max ms",
            "full replay p50 ms",
            "full / restore",
            "restores",
            "replays",
        ],
    );
    let mut targets = Vec::new();
    for r in &results {
        table.row(vec![
            r.events.to_string(),
            r.tail_events.to_string(),
            num(r.restore_p50_ms, 2),
            num(r.restore_p99_ms, 2),
            num(r.restore_max_ms, 2),
            num(r.rebuild_p50_ms, 1),
            format!("{}x", num(r.speedup, 0)),
            r.restores.to_string(),
            r.rebuilds.to_string(),
        ]);
        targets.push(Target::new(
            "restore",
            format!("restore p99 at {} events", r.events),
            format!("< {TARGET_P99_MS} ms"),
            format!("{:.2} ms", r.restore_p99_ms),
            Some(r.restore_p99_ms < TARGET_P99_MS),
        ));
    }
    table.note(
        "Each log ends on the tick before a snapshot is due: the restore replays the longest \
         tail (299 ticks). Restore = head + snapshot + tail read, decode, apply, step.",
    );
    Ok(Outcome {
        name: "restore",
        skipped: None,
        tables: vec![table],
        targets,
        results: serde_json::json!({ "config": config, "sizes": results }),
    })
}

async fn run_size(
    config: &RestoreConfig,
    arena: &Arena,
    store: &RedisStore,
    edition: &str,
    size: u64,
) -> anyhow::Result<SizeResult> {
    let key = MatchKey::new("arena", edition, &format!("restore-{size}"))?;
    progress(format!("restore {size} events: building the log"));
    let setup = Instant::now();
    let (events, ticks, snapshot) = build_log(arena, store, &key, size).await?;
    let setup_s = setup.elapsed().as_secs_f64();
    progress(format!(
        "restore {size} events: {events} events over {ticks} ticks stored in {setup_s:.1} s; \
         snapshot at tick {} ({} bytes)",
        snapshot.tick,
        snapshot.state.len()
    ));

    // Both ways must agree before either is timed.
    let restored = restore(arena, store, &key).await.context("restoring")?;
    let rebuilt = rebuild_from_start(arena, store, &key)
        .await
        .context("replaying from 0")?;
    ensure!(
        codec::encode(&restored.state)? == codec::encode(&rebuilt.state)?
            && restored.next_sequence == rebuilt.next_sequence
            && restored.tick == rebuilt.tick
            && restored.next_sequence == events,
        "restore and full replay disagree at {size} events"
    );

    let mut restores = micros_histogram();
    for _ in 0..config.repeats {
        let started = Instant::now();
        let r = restore(arena, store, &key).await.context("restoring")?;
        report::record(&mut restores, started.elapsed());
        std::hint::black_box(r);
    }
    let mut rebuilds = micros_histogram();
    let rebuild_started = Instant::now();
    while (rebuilds.len() as usize) < config.min_rebuilds
        || (rebuild_started.elapsed().as_secs_f64() < config.rebuild_seconds
            && (rebuilds.len() as usize) < config.repeats)
    {
        let started = Instant::now();
        let r = rebuild_from_start(arena, store, &key)
            .await
            .context("replaying from 0")?;
        report::record(&mut rebuilds, started.elapsed());
        std::hint::black_box(r);
    }
    let result = SizeResult {
        target_events: size,
        events,
        ticks,
        snapshot_tick: snapshot.tick,
        snapshot_bytes: snapshot.state.len(),
        tail_events: events - snapshot.sequence,
        setup_s,
        restores: restores.len(),
        restore_p50_ms: ms(&restores, 0.5),
        restore_p99_ms: ms(&restores, 0.99),
        restore_max_ms: report::max_ms(&restores),
        rebuilds: rebuilds.len(),
        rebuild_p50_ms: ms(&rebuilds, 0.5),
        rebuild_max_ms: report::max_ms(&rebuilds),
        speedup: ms(&rebuilds, 0.5) / ms(&restores, 0.5),
    };
    progress(format!(
        "restore {size} events: restore p50 {} ms, p99 {} ms; full replay p50 {} ms ({}x)",
        num(result.restore_p50_ms, 2),
        num(result.restore_p99_ms, 2),
        num(result.rebuild_p50_ms, 1),
        num(result.speedup, 0),
    ));
    Ok(result)
}

/// Plays a match with bots until it has `size` events and the next tick
/// would take a snapshot; stores its events in large batches and its
/// snapshots as they fall due. Returns events, ticks and the last snapshot.
async fn build_log(
    arena: &Arena,
    store: &RedisStore,
    key: &MatchKey,
    size: u64,
) -> anyhow::Result<(u64, u64, Snapshot)> {
    store.create(key, &[]).await.context("creating the match")?;
    let policy = MatchPolicy {
        snapshot_every_ticks: SNAPSHOT_EVERY,
        ..MatchPolicy::default()
    };
    let mut core: MatchCore<Arena, ()> = MatchCore::new(
        arena,
        key.clone(),
        policy,
        &tickforge::game::MatchSetup::default(),
    )
    .expect("setup");
    let mut bots: Vec<Bot> = (1..=PLAYERS)
        .map(|p| Bot::new(PlayerId(p), 0xbe9c_u64 << 8 | u64::from(p)))
        .collect();
    let mut pending: Option<AppendBatch> = None;
    let mut snapshot: Option<Snapshot> = None;
    let mut last_report = Instant::now();
    loop {
        for bot in &mut bots {
            if let Some(command) = bot.next_command(arena, core.state()) {
                if core.handle_command(bot.player(), command, ()).is_err() {
                    bail!("the match's command queue is full");
                }
            }
        }
        let out = core.run_tick(arena);
        ensure!(!out.ended, "the benchmark match ended");
        if let Some(batch) = core.poll_batch() {
            match &mut pending {
                Some(p) => {
                    p.events.extend(batch.events);
                    p.head_tick = batch.head_tick;
                }
                None => pending = Some(batch),
            }
        }
        let full = pending
            .as_ref()
            .is_some_and(|p| p.events.len() >= SETUP_BATCH);
        if out.snapshot.is_some() || full {
            flush(store, &mut pending).await?;
        }
        if let Some(s) = out.snapshot {
            ensure!(
                store
                    .save_snapshot(key, &s)
                    .await
                    .context("saving a snapshot")?,
                "the store kept an older snapshot"
            );
            snapshot = Some(s);
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            progress(format!(
                "restore {size} events: {} events stored so far",
                core.next_sequence()
            ));
        }
        // Stop on the tick before the next snapshot: the longest tail.
        if core.next_sequence() >= size && (core.tick() + 1) % SNAPSHOT_EVERY == 0 {
            break;
        }
    }
    flush(store, &mut pending).await?;
    let snapshot = snapshot.context("the log is shorter than one snapshot interval")?;
    let head = store
        .head(key)
        .await?
        .context("the match has no stored head")?;
    ensure!(
        head.next_sequence == core.next_sequence() && head.tick == core.tick(),
        "the store's head ({}, tick {}) is not the match's ({}, tick {})",
        head.next_sequence,
        head.tick,
        core.next_sequence(),
        core.tick()
    );
    Ok((core.next_sequence(), core.tick(), snapshot))
}

async fn flush(store: &RedisStore, pending: &mut Option<AppendBatch>) -> anyhow::Result<()> {
    let Some(batch) = pending.take() else {
        return Ok(());
    };
    for result in store
        .append(vec![batch])
        .await
        .context("appending the log")?
    {
        result.context("the store refused the log")?;
    }
    Ok(())
}
