//! Benchmark 2, engine: M matches × P players at 30 Hz in process, with
//! the memory store and with Redis, and a search for the largest M that
//! holds the rate.
//!
//! Load: a generator on a thread of its own wakes once per tick period
//! and, for every match that published a new state, submits one command
//! per player: the arena [`Bot`]'s choice for that state (a join, a step,
//! a turn or a shot), or a turn while the bot is tagged out (the game
//! refuses it, as it would a real client's input); after a late wake-up it
//! also sends the commands of the ticks it missed (up to 3), like a
//! client's queued inputs. No task per match; its CPU time is measured
//! apart from the engine's.
//!
//! A step holds 30 Hz when, over its measuring window (after a warm-up),
//! the shards ran at least 97 % of the ticks due, the p99 tick took under
//! one period (33.3 ms), the store kept up (persist lag, events applied
//! minus events acknowledged, never above one second of events), and no
//! command was dropped. Each step runs in a fresh child process; the
//! search doubles M until a step fails, then bisects.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use tickforge::arena::bot::Bot;
use tickforge::arena::{Arena, ArenaCommand, ArenaState, Dir};
use tickforge::engine::{Engine, EngineSettings, MatchUpdate};
use tickforge::game::PlayerId;
use tickforge::store::{MemoryStore, RedisOptions, RedisStore, Store};
use tokio::sync::watch;

use crate::redis_server::RedisTarget;
use crate::report::{self, Outcome, Table, Target, ms, num, progress, si};
use crate::sys::{CpuMeter, MachineMeter, rss_bytes, thread_cpu_seconds, thread_id};

/// Ticks of commands the generator sends late after it fell behind.
const MAX_CATCH_UP: u64 = 3;

/// The target with Redis on the 2-core machine.
const TARGET_MATCHES: usize = 2_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Memory,
    Redis,
}

impl StoreKind {
    fn name(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Redis => "redis",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EngineConfig {
    pub players: u32,
    pub tick_hz: u32,
    /// First M tried.
    pub start: usize,
    /// Never try more than this.
    pub max: usize,
    /// Bisection steps after the doubling found a failing M.
    pub bisect_steps: usize,
    pub warmup_s: f64,
    pub measure_s: f64,
    pub stores: Vec<StoreKind>,
    /// Whether `append.lua` publishes each batch for followers (the
    /// store's default).
    pub publish: bool,
}

/// What a child process runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepSpec {
    store: StoreKind,
    url: Option<String>,
    redis_pid: Option<u32>,
    matches: usize,
    players: u32,
    tick_hz: u32,
    warmup_s: f64,
    measure_s: f64,
    edition: String,
    prefix: String,
    publish: bool,
}

/// What one step measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepResult {
    store: StoreKind,
    matches: usize,
    players: u32,
    shards: usize,
    window_s: f64,
    /// Shard ticks per second, per shard.
    ticks_per_s: f64,
    match_ticks_per_s: f64,
    commands_per_s: f64,
    events_per_s: f64,
    tick_p50_ms: f64,
    tick_p99_ms: f64,
    tick_max_ms: f64,
    late_ticks: u64,
    /// Events applied minus events the store acknowledged, sampled.
    lag_p50_events: u64,
    lag_max_events: u64,
    /// The largest lag as time: events / events per second.
    lag_max_ms: f64,
    /// How fast the lag grew over the window (least squares), ms per s: a
    /// store that keeps up stays near 0.
    lag_growth_ms_per_s: f64,
    backlog_max_jobs: u64,
    append_p50_ms: f64,
    append_p99_ms: f64,
    dropped: u64,
    submit_errors: u64,
    paused_matches: u64,
    /// This process without the load generator thread, % of one core.
    cpu_percent: Option<f64>,
    /// The load generator thread, % of one core.
    generator_cpu_percent: Option<f64>,
    /// redis-server, % of one core (our own server only).
    redis_cpu_percent: Option<f64>,
    /// Everything else on the machine (other users' work), % of one core.
    others_cpu_percent: Option<f64>,
    /// From Redis `INFO commandstats` over the window: time Redis spent
    /// running scripts (append.lua, snapshot.lua) per match tick, and as a
    /// share of the window (% of one core).
    script_us_per_match_tick: Option<f64>,
    script_busy_percent: Option<f64>,
    rss_mib: Option<f64>,
    /// (RSS at the end - RSS before the engine started) / matches.
    rss_per_match_kib: Option<f64>,
    holds: bool,
    why_not: Vec<String>,
}

impl StepResult {
    fn line(&self) -> String {
        format!(
            "engine {} M={} x {}: {} — ticks/s {}, tick p50/p99/max {}/{}/{} ms, lag max {} ms (growing {} ms/s), \
             commands/s {}, CPU engine {}% + generator {}%{}, others on the machine {}%, \
             RSS/match {} KiB{}",
            self.store.name(),
            self.matches,
            self.players,
            if self.holds { "holds 30 Hz" } else { "FAILS" },
            num(self.ticks_per_s, 1),
            num(self.tick_p50_ms, 2),
            num(self.tick_p99_ms, 2),
            num(self.tick_max_ms, 1),
            num(self.lag_max_ms, 0),
            num(self.lag_growth_ms_per_s, 0),
            si(self.commands_per_s),
            report::opt(self.cpu_percent, 0),
            report::opt(self.generator_cpu_percent, 0),
            self.redis_cpu_percent
                .map_or(String::new(), |c| format!(" + redis {c:.0}%")),
            report::opt(self.others_cpu_percent, 0),
            report::opt(self.rss_per_match_kib, 1),
            if self.why_not.is_empty() {
                String::new()
            } else {
                format!(" [{}]", self.why_not.join("; "))
            },
        )
    }
}

pub async fn run(
    config: &EngineConfig,
    redis: Option<&RedisTarget>,
    edition: &str,
) -> anyhow::Result<Outcome> {
    let mut searches = Vec::new();
    let mut all_steps: Vec<StepResult> = Vec::new();
    let mut targets = Vec::new();
    let mut summary = Table::new(
        format!(
            "engine: largest M matches x {} players holding {} Hz (in process, {} shards)",
            config.players,
            config.tick_hz,
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        &[
            "store",
            "max M",
            "first failing M",
            "ticks/s",
            "commands/s",
            "tick p50 ms",
            "tick p99 ms",
            "tick max ms",
            "persist lag max ms",
            "engine CPU %",
            "generator CPU %",
            "redis CPU %",
            "others CPU %",
            "RSS/match KiB",
            "first failing M: why",
        ],
    );
    for &store in &config.stores {
        if store == StoreKind::Redis && redis.is_none() {
            summary.row(vec!["redis".into(), "skipped: no Redis".into()]);
            targets.push(Target::new(
                "engine",
                format!("Redis: matches x {} holding 30 Hz", config.players),
                format!(">= {TARGET_MATCHES}"),
                "skipped (no Redis)",
                None,
            ));
            continue;
        }
        let (best, first_fail, steps) = search(config, store, redis, edition).await?;
        let best_result = best.and_then(|m| steps.iter().find(|s| s.matches == m && s.holds));
        let fail_why = first_fail
            .and_then(|m| steps.iter().find(|s| s.matches == m && !s.holds))
            .map_or(String::new(), |s| s.why_not.join("; "));
        match best_result {
            Some(r) => summary.row(vec![
                store.name().into(),
                r.matches.to_string(),
                first_fail.map_or("-".into(), |m| m.to_string()),
                num(r.ticks_per_s, 1),
                si(r.commands_per_s),
                num(r.tick_p50_ms, 2),
                num(r.tick_p99_ms, 2),
                num(r.tick_max_ms, 1),
                num(r.lag_max_ms, 0),
                report::opt(r.cpu_percent, 0),
                report::opt(r.generator_cpu_percent, 0),
                report::opt(r.redis_cpu_percent, 0),
                report::opt(r.others_cpu_percent, 0),
                report::opt(r.rss_per_match_kib, 1),
                fail_why,
            ]),
            None => {
                let mut row = vec![
                    store.name().into(),
                    "none held".into(),
                    first_fail.map_or("-".into(), |m| m.to_string()),
                ];
                row.resize(14, String::new());
                row.push(fail_why);
                summary.row(row);
            }
        }
        if store == StoreKind::Redis {
            let best_m = best.unwrap_or(0);
            targets.push(Target::new(
                "engine",
                format!("Redis: matches x {} holding 30 Hz", config.players),
                format!(">= {TARGET_MATCHES}"),
                best_m.to_string(),
                Some(best_m >= TARGET_MATCHES),
            ));
        }
        searches.push(serde_json::json!({
            "store": store,
            "largest_holding": best,
            "smallest_failing": first_fail,
        }));
        all_steps.extend(steps);
    }
    summary.note(
        "holds = ticks >= 97% of due, p99 tick < 33.3 ms, persist lag <= 1 s of events and \
         growing < 50 ms per s, \
         no dropped commands, load at >= 95% of one command per player per tick; figures at \
         the largest M that held. CPU % of one core (200 = both cores): the engine (this \
         process minus the generator thread), the load generator, redis-server, and everything \
         else running on the machine meanwhile (others).",
    );
    let mut steps_table = Table::new(
        "engine: every step of the search",
        &[
            "store",
            "M",
            "holds",
            "ticks/s",
            "tick p99 ms",
            "tick max ms",
            "lag max ms",
            "append p99 ms",
            "scripts µs/match-tick",
            "scripts busy %",
            "engine CPU %",
            "generator CPU %",
            "redis CPU %",
            "others CPU %",
            "why not",
        ],
    );
    for s in &all_steps {
        steps_table.row(vec![
            s.store.name().into(),
            s.matches.to_string(),
            if s.holds { "yes" } else { "no" }.into(),
            num(s.ticks_per_s, 1),
            num(s.tick_p99_ms, 2),
            num(s.tick_max_ms, 1),
            num(s.lag_max_ms, 0),
            num(s.append_p99_ms, 2),
            report::opt(s.script_us_per_match_tick, 1),
            report::opt(s.script_busy_percent, 0),
            report::opt(s.cpu_percent, 0),
            report::opt(s.generator_cpu_percent, 0),
            report::opt(s.redis_cpu_percent, 0),
            report::opt(s.others_cpu_percent, 0),
            s.why_not.join("; "),
        ]);
    }
    steps_table.note(
        "scripts: time redis-server spent running append.lua and snapshot.lua (INFO commandstats, \
         EVALSHA) per match tick and as % of one core over the window.",
    );
    Ok(Outcome {
        name: "engine",
        skipped: None,
        tables: vec![summary, steps_table],
        targets,
        results: serde_json::json!({
            "config": config,
            "searches": searches,
            "steps": all_steps,
        }),
    })
}

/// Doubles M until a step fails, then bisects. Returns the largest M that
/// held, the smallest that failed, and every step.
async fn search(
    config: &EngineConfig,
    store: StoreKind,
    redis: Option<&RedisTarget>,
    edition: &str,
) -> anyhow::Result<(Option<usize>, Option<usize>, Vec<StepResult>)> {
    let mut steps = Vec::new();
    let mut held: Option<usize> = None;
    let mut failed: Option<usize> = None;
    let mut m = config.start.max(1);
    let run = |m: usize, steps: &mut Vec<StepResult>| {
        let spec = StepSpec {
            store,
            url: redis.map(|r| r.url.clone()),
            redis_pid: redis
                .filter(|_| store == StoreKind::Redis)
                .and_then(|r| r.pid),
            matches: m,
            players: config.players,
            tick_hz: config.tick_hz,
            warmup_s: config.warmup_s,
            measure_s: config.measure_s,
            edition: edition.to_owned(),
            prefix: format!("e{}", steps.len()),
            publish: config.publish,
        };
        async move {
            progress(format!(
                "engine {}: trying {m} matches x {} players ({:.0} s warm-up, {:.0} s measured)",
                store.name(),
                spec.players,
                spec.warmup_s,
                spec.measure_s
            ));
            let result: StepResult = crate::child::run("engine", &spec).await?;
            progress(result.line());
            if store == StoreKind::Redis
                && let Some(redis) = redis
            {
                redis.clean(edition).await;
            }
            Ok::<_, anyhow::Error>(result)
        }
    };
    // Doubling.
    loop {
        let result = run(m, &mut steps).await?;
        let holds = result.holds;
        steps.push(result);
        if holds {
            held = Some(m);
            if m * 2 > config.max {
                break;
            }
            m *= 2;
        } else {
            failed = Some(m);
            break;
        }
    }
    // Nothing held: halve until something does.
    while held.is_none() && m > 10 {
        m /= 2;
        let result = run(m, &mut steps).await?;
        if result.holds {
            held = Some(m);
        } else {
            failed = Some(m);
        }
        steps.push(result);
    }
    // Bisect between the two.
    for _ in 0..config.bisect_steps {
        let (Some(lo), Some(hi)) = (held, failed) else {
            break;
        };
        let grain = if hi - lo > 400 { 50 } else { 10 };
        let mid = (lo + hi) / 2 / grain * grain;
        if mid <= lo || mid >= hi || (hi - lo) * 10 < lo {
            break;
        }
        let result = run(mid, &mut steps).await?;
        if result.holds {
            held = Some(mid);
        } else {
            failed = Some(mid);
        }
        steps.push(result);
    }
    Ok((held, failed, steps))
}

/// The child process side: runs one step and prints its result.
pub async fn step(spec: StepSpec) -> anyhow::Result<()> {
    crate::child::watchdog(Duration::from_secs_f64(
        spec.warmup_s + spec.measure_s + 180.0,
    ));
    let result = match spec.store {
        StoreKind::Memory => run_step(MemoryStore::new(), &spec).await?,
        StoreKind::Redis => {
            let url = spec.url.clone().context("a Redis step needs a URL")?;
            let options = RedisOptions {
                publish: spec.publish,
                ..RedisOptions::default()
            };
            let store = RedisStore::connect_with(&[url], options)
                .await
                .context("connecting to Redis")?;
            run_step(store, &spec).await?
        }
    };
    crate::child::emit(&result)
}

/// Counters of the load generator.
#[derive(Debug, Default)]
struct LoadCounters {
    commands: AtomicU64,
    submit_errors: AtomicU64,
    replaced: AtomicU64,
}

type Feed = watch::Receiver<Option<Arc<MatchUpdate<ArenaState>>>>;

/// One match as the generator sees it.
struct Slot {
    root: String,
    base: String,
    round: u64,
    feed: Feed,
    bots: Vec<Bot>,
    last_tick: u64,
}

async fn run_step<S: Store>(store: S, spec: &StepSpec) -> anyhow::Result<StepResult> {
    let rss_before = rss_bytes();
    let settings = EngineSettings {
        tick_hz: spec.tick_hz,
        ..EngineSettings::default()
    };
    let shards = settings.shards;
    let engine = Arc::new(Engine::start(
        Arena::default(),
        store,
        settings,
        &spec.edition,
    ));
    let counters = Arc::new(LoadCounters::default());

    // Create and join every match before the clock starts.
    let roots: Vec<String> = (0..spec.matches)
        .map(|i| format!("{}-{i}", spec.prefix))
        .collect();
    let mut slots = Vec::with_capacity(roots.len());
    for chunk in roots.chunks(256) {
        for result in join_all(chunk.iter().map(|root| engine.create_match(root))).await {
            result.context("creating a match")?;
        }
        for root in chunk {
            slots.push(new_slot(
                &engine,
                &counters,
                root.clone(),
                root.clone(),
                0,
                spec.players,
            )?);
        }
    }

    // The load generator runs on a thread of its own, so its CPU time can
    // be told apart from the engine's.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let generator = {
        let engine = engine.clone();
        let counters = counters.clone();
        let (players, hz) = (spec.players, spec.tick_hz);
        std::thread::Builder::new()
            .name("load-generator".into())
            .spawn(move || -> anyhow::Result<()> {
                let _ = tid_tx.send(thread_id());
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting the generator's runtime")?
                    .block_on(generate(engine, counters, slots, players, hz, stop_rx))
            })
            .context("starting the load generator thread")?
    };
    let generator_tid = tid_rx
        .recv_timeout(Duration::from_secs(5))
        .context("the load generator thread did not start")?;

    tokio::time::sleep(Duration::from_secs_f64(spec.warmup_s)).await;
    let before = engine.stats();
    let submit_errors_before = counters.submit_errors.load(Relaxed);
    let cpu = CpuMeter::start(None);
    let generator_cpu = thread_cpu_seconds(generator_tid);
    let redis_cpu = spec.redis_pid.map(|pid| CpuMeter::start(Some(pid)));
    let machine_cpu = MachineMeter::start();
    let stats_before = command_stats(spec.url.as_deref()).await;
    let started = Instant::now();
    let mut lags = Vec::new();
    let mut lag_series: Vec<(f64, f64)> = Vec::new();
    let mut backlog_max = 0;
    let mut sampler = tokio::time::interval(Duration::from_millis(100));
    while started.elapsed().as_secs_f64() < spec.measure_s {
        sampler.tick().await;
        let now = engine.stats();
        let lag = now.events.saturating_sub(now.persisted_events);
        lags.push(lag);
        lag_series.push((started.elapsed().as_secs_f64(), lag as f64));
        backlog_max = backlog_max.max(now.backlog_jobs);
        if generator.is_finished() {
            return match generator.join() {
                Ok(Err(error)) => Err(error.context("the load generator failed")),
                _ => bail!("the load generator stopped"),
            };
        }
    }
    let after = engine.stats();
    let window_s = started.elapsed().as_secs_f64();
    let stats_after = command_stats(spec.url.as_deref()).await;
    let cpu_percent = cpu.percent();
    let generator_cpu_percent = match (generator_cpu, thread_cpu_seconds(generator_tid)) {
        (Some(a), Some(b)) => Some((b - a) / window_s * 100.0),
        _ => None,
    };
    let redis_cpu_percent = redis_cpu.and_then(|c| c.percent());
    let others_cpu_percent = machine_cpu
        .percent()
        .map(|all| (all - cpu_percent.unwrap_or(0.0) - redis_cpu_percent.unwrap_or(0.0)).max(0.0));
    let rss_after = rss_bytes();
    let _ = stop_tx.send(true);

    let per_s = |a: u64, b: u64| a.saturating_sub(b) as f64 / window_s;
    let ticks = report::window(&after.tick_micros, &before.tick_micros);
    let appends = report::window(&after.append_micros, &before.append_micros);
    let events_per_s = per_s(after.events, before.events);
    lags.sort_unstable();
    let lag_max = lags.last().copied().unwrap_or(0);
    let lag_max_ms = if events_per_s > 0.0 {
        lag_max as f64 / events_per_s * 1000.0
    } else {
        0.0
    };
    let lag_growth_ms_per_s = if events_per_s > 0.0 {
        slope(&lag_series) / events_per_s * 1000.0
    } else {
        0.0
    };
    let match_ticks = after.match_ticks.saturating_sub(before.match_ticks);
    let (script_us_per_match_tick, script_busy_percent) = match (stats_before, stats_after) {
        (Some(a), Some(b)) if spec.store == StoreKind::Redis => {
            let micros = b.evalsha_usec.saturating_sub(a.evalsha_usec) as f64;
            (
                (match_ticks > 0).then(|| micros / match_ticks as f64),
                Some(micros / 1e6 / window_s * 100.0),
            )
        }
        _ => (None, None),
    };
    let mut result = StepResult {
        store: spec.store,
        matches: spec.matches,
        players: spec.players,
        shards,
        window_s,
        ticks_per_s: per_s(after.ticks, before.ticks) / shards.max(1) as f64,
        match_ticks_per_s: per_s(after.match_ticks, before.match_ticks),
        commands_per_s: per_s(after.commands, before.commands),
        events_per_s,
        tick_p50_ms: ms(&ticks, 0.5),
        tick_p99_ms: ms(&ticks, 0.99),
        tick_max_ms: report::max_ms(&ticks),
        late_ticks: after.late_ticks - before.late_ticks,
        lag_p50_events: lags.get(lags.len() / 2).copied().unwrap_or(0),
        lag_max_events: lag_max,
        lag_max_ms,
        lag_growth_ms_per_s,
        backlog_max_jobs: backlog_max,
        append_p50_ms: ms(&appends, 0.5),
        append_p99_ms: ms(&appends, 0.99),
        dropped: after.dropped - before.dropped,
        submit_errors: counters.submit_errors.load(Relaxed) - submit_errors_before,
        paused_matches: after.paused_matches - before.paused_matches,
        cpu_percent: cpu_percent.map(|c| c - generator_cpu_percent.unwrap_or(0.0)),
        generator_cpu_percent,
        redis_cpu_percent,
        others_cpu_percent,
        script_us_per_match_tick,
        script_busy_percent,
        rss_mib: rss_after.map(|r| r as f64 / 1024.0 / 1024.0),
        rss_per_match_kib: match (rss_before, rss_after) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1024.0 / spec.matches as f64),
            _ => None,
        },
        holds: false,
        why_not: Vec::new(),
    };
    let hz = f64::from(spec.tick_hz);
    let period_ms = 1000.0 / hz;
    if result.ticks_per_s < 0.97 * hz {
        result
            .why_not
            .push(format!("only {:.1} ticks/s", result.ticks_per_s));
    }
    // NaN (no ticks measured) fails too.
    if result.tick_p99_ms.is_nan() || result.tick_p99_ms >= period_ms {
        result
            .why_not
            .push(format!("p99 tick {:.1} ms", result.tick_p99_ms));
    }
    if result.lag_max_ms > 1000.0 {
        result
            .why_not
            .push(format!("store behind by {:.0} ms", result.lag_max_ms));
    } else if result.lag_growth_ms_per_s > 50.0 {
        result.why_not.push(format!(
            "store falling behind by {:.0} ms per s",
            result.lag_growth_ms_per_s
        ));
    }
    if result.dropped + result.submit_errors > 0 {
        result.why_not.push(format!(
            "{} commands dropped",
            result.dropped + result.submit_errors
        ));
    }
    let wanted = spec.matches as f64 * f64::from(spec.players) * hz;
    if result.commands_per_s < 0.95 * wanted {
        result.why_not.push(format!(
            "load generator reached {:.0}% of {} commands/s",
            result.commands_per_s / wanted * 100.0,
            si(wanted)
        ));
    }
    if result.paused_matches > 0 {
        result
            .why_not
            .push(format!("{} matches paused", result.paused_matches));
    }
    result.holds = result.why_not.is_empty();
    Ok(result)
}

/// Counters of Redis `INFO commandstats` (the commands a script calls are
/// counted again under their own names, so only EVALSHA is used).
#[derive(Debug, Clone, Copy, Default)]
struct CommandStats {
    evalsha_usec: u64,
}

/// Reads `INFO commandstats`, or `None` without Redis.
async fn command_stats(url: Option<&str>) -> Option<CommandStats> {
    let client = redis::Client::open(url?).ok()?;
    let mut con = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut con)
        .await
        .ok()?;
    let mut stats = CommandStats::default();
    for line in info.lines() {
        let Some((name, fields)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let field = |key: &str| {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if name == "evalsha" {
            stats.evalsha_usec = field("usec");
        }
    }
    Some(stats)
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    if den > 0.0 { num / den } else { 0.0 }
}

fn new_slot<S: Store>(
    engine: &Engine<Arena, S>,
    counters: &LoadCounters,
    root: String,
    base: String,
    round: u64,
    players: u32,
) -> anyhow::Result<Slot> {
    let feed = engine
        .subscribe(&root)
        .context("subscribing to a match")?
        .updates;
    let seed = round << 32
        ^ root
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
    let bots: Vec<Bot> = (1..=players)
        .map(|p| Bot::new(PlayerId(p), seed ^ u64::from(p) << 8))
        .collect();
    for bot in &bots {
        let join = ArenaCommand::Join {
            name: format!("bot-{}", bot.player().0),
        };
        submit(engine, counters, &root, bot.player(), join);
    }
    Ok(Slot {
        root,
        base,
        round,
        feed,
        bots,
        last_tick: 0,
    })
}

fn submit<S: Store>(
    engine: &Engine<Arena, S>,
    counters: &LoadCounters,
    root: &str,
    player: PlayerId,
    command: ArenaCommand,
) {
    match engine.submit(root, player, command, None) {
        Ok(()) => counters.commands.fetch_add(1, Relaxed),
        Err(_) => counters.submit_errors.fetch_add(1, Relaxed),
    };
}

/// The load generator: every tick period, one command per player of each
/// of its matches that published a new state; an ended match is replaced.
async fn generate<S: Store>(
    engine: Arc<Engine<Arena, S>>,
    counters: Arc<LoadCounters>,
    mut slots: Vec<Slot>,
    players: u32,
    hz: u32,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut interval = tokio::time::interval(Duration::from_secs(1) / hz.max(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return Ok(()),
        }
        for slot in &mut slots {
            let Some(update) = slot.feed.borrow_and_update().clone() else {
                continue;
            };
            if update.over {
                let round = slot.round + 1;
                let root = format!("{}-r{round}", slot.base);
                engine
                    .create_match(&root)
                    .await
                    .context("replacing an ended match")?;
                counters.replaced.fetch_add(1, Relaxed);
                *slot = new_slot(&engine, &counters, root, slot.base.clone(), round, players)?;
                continue;
            }
            if update.tick <= slot.last_tick {
                continue;
            }
            // Ticks since the last pass: more than one when this thread
            // was descheduled (a busy machine) or the match caught up.
            // Their commands go now, as a real client's queued inputs
            // would, so the rate stays one per player per tick.
            let owed = if slot.last_tick == 0 {
                1
            } else {
                (update.tick - slot.last_tick).min(MAX_CATCH_UP)
            };
            slot.last_tick = update.tick;
            for bot in &mut slot.bots {
                for _ in 0..owed {
                    // A tagged-out bot has nothing to do; its client still
                    // sends its input for the tick (the game refuses it).
                    let command = bot
                        .next_command(engine.game(), &update.state)
                        .unwrap_or(ArenaCommand::Turn(Dir::North));
                    submit(&engine, &counters, &slot.root, bot.player(), command);
                }
            }
        }
    }
}
