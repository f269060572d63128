//! Benchmark 1, append: events/s through `RedisStore::append` beside its
//! ceiling.
//!
//! Each "tick" is one append call carrying one batch for each of 1,000
//! matches (what one shard sends per tick), with 1, 8 or 64 events per
//! batch. The ceiling is the same Redis work sent by the minimal raw client
//! of [`crate::resp`]: the same `EVALSHA append.lua` calls with the same
//! KEYS and ARGV (split into calls exactly as `RedisStore` splits them).
//! Plain pipelined `ZADD` + `HSET` per match (what the script does minus
//! its checks and publish) is shown for context. The three clients take
//! turns round by round on separate match sets, so a busy machine slows
//! them alike; calls are timed one by one (a shard waits for each).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::future::join_all;
use hdrhistogram::Histogram;
use serde::Serialize;
use tickforge::arena::{ArenaEvent, Dir, Pos};
use tickforge::codec;
use tickforge::engine::EventEnvelope;
use tickforge::game::PlayerId;
use tickforge::store::{
    AppendBatch, EventStore, LeaseStore, MatchKey, RecordedEvent, RedisOptions, RedisStore,
};

use crate::redis_server::RedisTarget;
use crate::report::{self, Outcome, Table, Target, micros_histogram, ms, progress, si};
use crate::resp::{Pipeline, Raw, Reply};

/// The script `RedisStore` runs, loaded by the raw client for its SHA.
const APPEND_LUA: &str = include_str!("../../src/store/lua/append.lua");

/// The issue's target: RedisStore at least this share of the raw client.
const TARGET_RATIO: f64 = 0.9;
/// The lease renewal a fenced batch carries (a fleet node renews by its TTL).
const LEASE_RENEWAL: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Serialize)]
pub struct AppendConfig {
    /// Matches per append call.
    pub matches: usize,
    /// Events per match per tick, one measurement each.
    pub events_per_tick: Vec<usize>,
    /// Time for each events-per-tick value (all three clients together).
    pub seconds: f64,
    /// Stop a value early once one client stored this many events.
    pub max_events: u64,
    /// At least this many timed calls per client.
    pub min_rounds: usize,
    /// Whether `append.lua` publishes each batch for followers (the
    /// store's default; off shows what publishing costs).
    pub publish: bool,
    /// Whether every batch carries its match's lease epoch (each match is
    /// claimed first), as a node of a fleet writes: shows what fencing costs.
    pub fenced: bool,
}

/// Figures of one client at one events-per-tick value.
#[derive(Debug, Clone, Serialize)]
struct ClientFigures {
    client: &'static str,
    calls: u64,
    events: u64,
    events_per_s: f64,
    batches_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// redis-server CPU per call (only with our own server).
    redis_cpu_ms_per_call: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
struct SizeFigures {
    events_per_tick: usize,
    matches: usize,
    payload_bytes_per_call: usize,
    clients: Vec<ClientFigures>,
    /// RedisStore events/s over raw EVALSHA events/s.
    ratio_store_to_raw: Option<f64>,
}

/// One client's running totals.
struct Tally {
    name: &'static str,
    calls: u64,
    events: u64,
    batches: u64,
    busy: Duration,
    latency: Histogram<u64>,
    redis_cpu: f64,
    redis_cpu_known: bool,
}

impl Tally {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            calls: 0,
            events: 0,
            batches: 0,
            busy: Duration::ZERO,
            latency: micros_histogram(),
            redis_cpu: 0.0,
            redis_cpu_known: true,
        }
    }

    fn add(&mut self, took: Duration, events: u64, batches: u64, cpu: Option<f64>) {
        self.calls += 1;
        self.events += events;
        self.batches += batches;
        self.busy += took;
        report::record(&mut self.latency, took);
        match cpu {
            Some(cpu) => self.redis_cpu += cpu,
            None => self.redis_cpu_known = false,
        }
    }

    fn events_per_s(&self) -> f64 {
        self.events as f64 / self.busy.as_secs_f64().max(1e-9)
    }

    fn figures(&self) -> ClientFigures {
        let secs = self.busy.as_secs_f64().max(1e-9);
        ClientFigures {
            client: self.name,
            calls: self.calls,
            events: self.events,
            events_per_s: self.events_per_s(),
            batches_per_s: self.batches as f64 / secs,
            p50_ms: ms(&self.latency, 0.5),
            p99_ms: ms(&self.latency, 0.99),
            max_ms: report::max_ms(&self.latency),
            redis_cpu_ms_per_call: (self.redis_cpu_known && self.calls > 0)
                .then(|| self.redis_cpu * 1000.0 / self.calls as f64),
        }
    }
}

pub async fn run(
    config: &AppendConfig,
    redis: &RedisTarget,
    edition: &str,
) -> anyhow::Result<Outcome> {
    let options = RedisOptions {
        publish: config.publish,
        ..RedisOptions::default()
    };
    let store = RedisStore::connect_with(std::slice::from_ref(&redis.url), options)
        .await
        .context("connecting RedisStore")?;
    let mut raw = match Raw::connect(&redis.url).await {
        Ok(raw) => Some(raw),
        Err(error) => {
            progress(format!(
                "append: raw client unavailable ({error:#}); no ceiling"
            ));
            None
        }
    };
    let sha = match &mut raw {
        Some(raw) => {
            let mut load = Pipeline::default();
            load.command(3);
            load.arg(b"SCRIPT");
            load.arg(b"LOAD");
            load.arg(APPEND_LUA.as_bytes());
            raw.call(&load)
                .await?
                .text()
                .context("SCRIPT LOAD append.lua")?
        }
        None => String::new(),
    };
    let publish: &[u8] = if options.publish { b"PUBLISH" } else { b"" };

    let mut sizes = Vec::new();
    for &k in &config.events_per_tick {
        let figures = run_size(
            config,
            redis,
            &store,
            raw.as_mut(),
            &sha,
            publish,
            options,
            edition,
            k,
        )
        .await?;
        redis.clean(edition).await;
        sizes.push(figures);
    }

    let mut table = Table::new(
        format!(
            "append: {} matches per call, one call per tick{}{} (events/s; call latency in ms)",
            config.matches,
            if config.publish { "" } else { ", publish off" },
            if config.fenced {
                ", every batch fenced by its lease epoch"
            } else {
                ""
            }
        ),
        &[
            "events/tick",
            "RedisStore ev/s",
            "raw EVALSHA ev/s",
            "ratio",
            "ZADD+HSET ev/s",
            "store p50",
            "store p99",
            "raw p50",
            "raw p99",
            "redis CPU/call store",
            "raw",
            "calls",
        ],
    );
    let mut targets = Vec::new();
    for size in &sizes {
        let get = |name: &str| size.clients.iter().find(|c| c.client == name);
        let store_f = get("RedisStore");
        let raw_f = get("raw EVALSHA");
        let zadd_f = get("raw ZADD+HSET");
        let cpu =
            |c: Option<&ClientFigures>| report::opt(c.and_then(|c| c.redis_cpu_ms_per_call), 2);
        table.row(vec![
            size.events_per_tick.to_string(),
            store_f.map_or("-".into(), |c| si(c.events_per_s)),
            raw_f.map_or("-".into(), |c| si(c.events_per_s)),
            report::opt(size.ratio_store_to_raw, 3),
            zadd_f.map_or("-".into(), |c| si(c.events_per_s)),
            store_f.map_or("-".into(), |c| report::num(c.p50_ms, 2)),
            store_f.map_or("-".into(), |c| report::num(c.p99_ms, 2)),
            raw_f.map_or("-".into(), |c| report::num(c.p50_ms, 2)),
            raw_f.map_or("-".into(), |c| report::num(c.p99_ms, 2)),
            cpu(store_f),
            cpu(raw_f),
            store_f.map_or("-".into(), |c| c.calls.to_string()),
        ]);
        targets.push(Target::new(
            "append",
            format!(
                "RedisStore / raw EVALSHA at {} events/tick",
                size.events_per_tick
            ),
            format!(">= {TARGET_RATIO}"),
            report::opt(size.ratio_store_to_raw, 3),
            size.ratio_store_to_raw.map(|r| r >= TARGET_RATIO),
        ));
    }
    table.note(
        "ratio = RedisStore ev/s / raw EVALSHA ev/s (same script calls, same KEYS/ARGV). \
         ZADD+HSET: the script's writes without its checks and publish, for context.",
    );
    table.note(
        "redis CPU/call: redis-server user+system CPU ms per call (/proc; our own server only).",
    );
    Ok(Outcome {
        name: "append",
        skipped: None,
        tables: vec![table],
        targets,
        results: serde_json::json!({ "config": config, "sizes": sizes }),
    })
}

#[allow(clippy::too_many_arguments)]
async fn run_size(
    config: &AppendConfig,
    redis: &RedisTarget,
    store: &RedisStore,
    mut raw: Option<&mut Raw>,
    sha: &str,
    publish: &[u8],
    options: RedisOptions,
    edition: &str,
    k: usize,
) -> anyhow::Result<SizeFigures> {
    let keys = |set: &str| -> anyhow::Result<Vec<MatchKey>> {
        (0..config.matches)
            .map(|i| MatchKey::new("arena", edition, &format!("a{k}{set}{i}")).map_err(Into::into))
            .collect()
    };
    let (store_keys, raw_keys, zadd_keys) = (keys("s")?, keys("r")?, keys("z")?);
    progress(format!(
        "append {k} events/tick: creating {} matches for RedisStore and {} for the raw client",
        config.matches, config.matches
    ));
    for chunk in store_keys.chunks(250).chain(raw_keys.chunks(250)) {
        for result in join_all(chunk.iter().map(|key| store.create(key, &[]))).await {
            result.context("creating a benchmark match")?;
        }
    }
    // Fenced: every match is claimed once (a fresh match's first epoch, 1)
    // and every batch carries that epoch.
    let epoch = if config.fenced {
        let ttl = Duration::from_secs(3600);
        for chunk in store_keys.chunks(250).chain(raw_keys.chunks(250)) {
            for lease in join_all(chunk.iter().map(|key| store.claim(key, "bench", ttl))).await {
                let lease = lease.context("claiming a benchmark match")?;
                if lease.epoch != 1 {
                    bail!(
                        "a fresh benchmark match was claimed at epoch {}",
                        lease.epoch
                    );
                }
            }
        }
        Some(1)
    } else {
        None
    };

    let mut tallies = [
        Tally::new("RedisStore"),
        Tally::new("raw EVALSHA"),
        Tally::new("raw ZADD+HSET"),
    ];
    let mut pipeline = Pipeline::default();
    let payload_bytes = round_events(0, k)?
        .iter()
        .map(|e| e.payload.len())
        .sum::<usize>()
        * config.matches;
    let warmup_rounds = 2u64;
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut round = 0u64;
    loop {
        let timed = round >= warmup_rounds;
        let timed_rounds = round.saturating_sub(warmup_rounds) as usize;
        if timed
            && timed_rounds >= config.min_rounds
            && (started.elapsed().as_secs_f64() >= config.seconds
                || tallies.iter().any(|t| t.events >= config.max_events))
        {
            break;
        }
        let events = round_events(round, k)?;
        let n_events = (k * config.matches) as u64;
        let n_batches = config.matches as u64;
        // Alternate who goes first, so neither always follows the other.
        let order: [usize; 3] = if round % 2 == 0 { [0, 1, 2] } else { [1, 0, 2] };
        for client in order {
            let (keys, tally) = match client {
                0 => (&store_keys, 0),
                1 => (&raw_keys, 1),
                _ => (&zadd_keys, 2),
            };
            let batches = batches(keys, &events, round, k, epoch);
            let cpu_before = redis.cpu_seconds();
            let took = match client {
                0 => {
                    let call = Instant::now();
                    let results = store.append(&batches).await.context("RedisStore::append")?;
                    let took = call.elapsed();
                    if let Some(error) = results.into_iter().find_map(Result::err) {
                        bail!("RedisStore refused a benchmark batch: {error}");
                    }
                    took
                }
                1 => match raw.as_deref_mut() {
                    Some(raw) => {
                        let call = Instant::now();
                        raw_evalsha(raw, &mut pipeline, sha, publish, options, &batches).await?;
                        call.elapsed()
                    }
                    None => continue,
                },
                _ => match raw.as_deref_mut() {
                    Some(raw) => {
                        let call = Instant::now();
                        raw_zadd(raw, &mut pipeline, &batches).await?;
                        call.elapsed()
                    }
                    None => continue,
                },
            };
            let cpu = match (cpu_before, redis.cpu_seconds()) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            };
            if timed {
                tallies[tally].add(took, n_events, n_batches, cpu);
            }
        }
        round += 1;
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            let ratio = tallies[0].events_per_s() / tallies[1].events_per_s();
            progress(format!(
                "append {k} events/tick: round {round}: RedisStore {} ev/s, raw EVALSHA {} ev/s \
                 (ratio {}), ZADD+HSET {} ev/s",
                si(tallies[0].events_per_s()),
                si(tallies[1].events_per_s()),
                report::num(ratio, 2),
                si(tallies[2].events_per_s()),
            ));
        }
    }
    let clients: Vec<ClientFigures> = tallies
        .iter()
        .filter(|t| t.calls > 0)
        .map(Tally::figures)
        .collect();
    let ratio =
        (tallies[1].calls > 0).then(|| tallies[0].events_per_s() / tallies[1].events_per_s());
    progress(format!(
        "append {k} events/tick done: RedisStore {} ev/s (p50 {} ms, p99 {} ms), raw {} ev/s, ratio {}",
        si(tallies[0].events_per_s()),
        report::num(ms(&tallies[0].latency, 0.5), 2),
        report::num(ms(&tallies[0].latency, 0.99), 2),
        si(tallies[1].events_per_s()),
        report::opt(ratio, 3),
    ));
    Ok(SizeFigures {
        events_per_tick: k,
        matches: config.matches,
        payload_bytes_per_call: payload_bytes,
        clients,
        ratio_store_to_raw: ratio,
    })
}

/// The `k` events every match appends in `round` (tick `round + 1`):
/// encoded arena `Moved` envelopes, the commonest event.
pub fn round_events(round: u64, k: usize) -> anyhow::Result<Vec<RecordedEvent>> {
    (0..k)
        .map(|j| {
            let sequence = round * k as u64 + j as u64;
            let tick = round + 1;
            let player = PlayerId((j % 8) as u32 + 1);
            let envelope = EventEnvelope {
                sequence,
                tick,
                player: Some(player),
                schema: 1,
                event: ArenaEvent::Moved {
                    player,
                    to: Pos {
                        x: (sequence % 30) as i16 + 1,
                        y: ((sequence / 30) % 18) as i16 + 1,
                    },
                    facing: Dir::ALL[j % 4],
                },
            };
            Ok(RecordedEvent {
                sequence,
                tick,
                payload: codec::encode(&envelope).context("encoding an event")?,
            })
        })
        .collect()
}

/// One batch per match, as a shard's writer hands them over.
pub fn batches(
    keys: &[MatchKey],
    events: &[RecordedEvent],
    round: u64,
    k: usize,
    epoch: Option<u64>,
) -> Vec<AppendBatch> {
    keys.iter()
        .map(|key| AppendBatch {
            key: key.clone(),
            first_sequence: round * k as u64,
            events: events.to_vec(),
            head_tick: round + 1,
            epoch,
            // As a fleet node's engine writes: each stored batch renews the lease.
            renew_lease: epoch.map(|_| LEASE_RENEWAL),
        })
        .collect()
}

/// The script calls `RedisStore` makes for `batches`, sent by the raw
/// client: split by the same per-call caps, pipelined, replies checked.
async fn raw_evalsha(
    raw: &mut Raw,
    p: &mut Pipeline,
    sha: &str,
    publish: &[u8],
    options: RedisOptions,
    batches: &[AppendBatch],
) -> anyhow::Result<()> {
    p.clear();
    let mut calls = 0;
    let mut start = 0;
    while start < batches.len() {
        // The same split as RedisStore: at most max_batches_per_call
        // batches and (past the first) max_bytes_per_call payload bytes.
        let mut end = start;
        let mut bytes = 0;
        while end < batches.len() {
            let size: usize = batches[end].events.iter().map(|e| e.payload.len()).sum();
            if end > start
                && (end - start >= options.max_batches_per_call
                    || bytes + size > options.max_bytes_per_call)
            {
                break;
            }
            bytes += size;
            end += 1;
        }
        let call = &batches[start..end];
        // The same layout as RedisStore: a fenced call adds owner:{m}, the
        // epoch and the (empty) lease renewal to each batch.
        let fenced = call.iter().any(|b| b.epoch.is_some());
        let (stride, header) = if fenced { (3, 5) } else { (2, 3) };
        let argv: usize = call.iter().map(|b| header + b.events.len()).sum();
        p.command(3 + stride * call.len() + 2 + argv);
        p.arg(b"EVALSHA");
        p.arg(sha.as_bytes());
        p.int((stride * call.len()) as u64);
        for batch in call {
            p.arg(batch.key.meta_key().as_bytes());
            p.arg(batch.key.events_key().as_bytes());
            if fenced {
                p.arg(batch.key.owner_key().as_bytes());
            }
        }
        p.arg(publish);
        p.arg(if fenced { b"fenced" } else { b"" });
        for batch in call {
            p.int(batch.first_sequence);
            p.int(batch.next_sequence());
            p.int(batch.head_tick);
            if fenced {
                match batch.epoch {
                    Some(epoch) => p.int(epoch),
                    None => p.arg(b""),
                }
                p.arg(b""); // no lease renewal
            }
            for event in &batch.events {
                p.arg(&event.payload);
            }
        }
        calls += 1;
        start = end;
    }
    raw.send(&p.buf).await?;
    for _ in 0..calls {
        match raw.read_reply().await? {
            Reply::Array(Some(items)) => {
                for code in items.chunks(3) {
                    if code.first() != Some(&Reply::Int(0)) {
                        bail!("append.lua refused a raw benchmark batch: {code:?}");
                    }
                }
            }
            other => bail!("append.lua answered {other:?}"),
        }
    }
    Ok(())
}

/// The script's writes without its checks: per match, `ZADD` the events
/// and `HSET` head and tick, all in one pipeline.
async fn raw_zadd(raw: &mut Raw, p: &mut Pipeline, batches: &[AppendBatch]) -> anyhow::Result<()> {
    p.clear();
    for batch in batches {
        p.command(2 + 2 * batch.events.len());
        p.arg(b"ZADD");
        p.arg(format!("z{}", batch.key.events_key()).as_bytes());
        for event in &batch.events {
            p.int(event.sequence);
            p.arg(&event.payload);
        }
        p.command(6);
        p.arg(b"HSET");
        p.arg(format!("z{}", batch.key.meta_key()).as_bytes());
        p.arg(b"head");
        p.int(batch.next_sequence());
        p.arg(b"tick");
        p.int(batch.head_tick);
    }
    let commands = p.commands;
    raw.send(&p.buf).await?;
    for _ in 0..commands {
        if let Reply::Error(e) = raw.read_reply().await? {
            bail!("Redis refused a raw ZADD/HSET: {e}");
        }
    }
    Ok(())
}
