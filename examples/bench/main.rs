//! tickforge benchmarks, each beside its ceiling or target.
//!
//! ```text
//! cargo run --release --example bench -- all            # everything, about 6 minutes on 2 cores
//! cargo run --release --example bench -- all --quick    # smoke run, under a minute
//! cargo run --release --example bench -- append         # or engine, restore, network
//! cargo run --release --example bench -- cluster        # about 45 s; also part of all
//! cargo run --release --example bench -- network-split --server-cpus 0 --client-cpus 1
//! cargo run --release --example bench -- --help         # flags that size each benchmark
//! ```
//!
//! - `append`: events/s through `RedisStore::append` (1,000 matches per
//!   call; 1, 8 and 64 events per match-tick) beside the same script calls
//!   sent by a minimal raw RESP client, and plain pipelined ZADD+HSET.
//! - `engine`: M matches x 8 players at 30 Hz in process, memory store and
//!   Redis: ticks/s, tick time, persist lag, CPU, RSS; searches the largest
//!   M that holds 30 Hz with p99 tick under 33 ms.
//! - `restore`: restoring a match of 10k, 100k and 1M events from Redis
//!   (snapshot + tail) against a full replay from 0.
//! - `network`: 100, 500 and 1,000 QUIC clients on loopback: latency,
//!   bytes per client, delta against full state size; draws
//!   `network-latency.svg`.
//! - `network-split`: the server in one process, the clients in another,
//!   each optionally pinned (`--server-cpus`, `--client-cpus`); fixed
//!   schedule of one Move per tick per client (or `--network-load replies`);
//!   steps 100, 200, 400, ... until p99 > one tick + 5 ms or a join fails:
//!   latency, states and bytes per client, server CPU (from /proc) per
//!   client-second, client CPU; `--network-compare-cores` repeats the
//!   search with the server on 1 core and on 2. Draws
//!   `network-split-latency.svg`. Not part of `all` (several minutes).
//! - `cluster`: the same `RedisStore::append` load (2 concurrent writers x
//!   1,000 matches x 8 events per call) against one redis-server and local
//!   Redis Clusters of 1 and 3 masters (`--cluster-nodes`): events/s,
//!   p50/p99 call latency, and the CPU of every node, of the client and
//!   of the rest of the machine. Always starts its own servers.
//!
//! Each benchmark prints progress lines on stderr and its table at the end,
//! and writes `target/bench/<name>.json` (and `.md`) so runs can be
//! compared; a full run also copies the latency picture to
//! `assets/bench/network-latency.svg`. Redis is `REDIS_URL` if set, else a
//! `redis-server` child started on a free loopback port (no persistence)
//! and killed at exit; without either, the Redis parts are skipped.

/// glibc's malloc and free took about 15 % of a node's CPU at 400 clients
/// (per-packet allocations); mimalloc's thread-local free lists
/// cost a fraction of that, in the server child and the client child alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod append;
mod child;
mod cluster;
mod engine;
mod netsplit;
mod netsplit_clients;
mod netsplit_server;
mod network;
mod redis_server;
mod report;
mod resp;
mod restore;
mod svg;
mod sys;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde::Serialize;

use engine::StoreKind;
use redis_server::RedisTarget;
use report::{Outcome, Table, progress};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    /// Every benchmark, in order.
    All,
    /// RedisStore::append against a raw pipelined client.
    Append,
    /// Matches x players at 30 Hz, memory store and Redis.
    Engine,
    /// Restore from snapshot + tail against a full replay.
    Restore,
    /// QUIC clients on loopback.
    Network,
    /// QUIC server and clients in separate (pinnable) processes.
    NetworkSplit,
    /// RedisStore::append on one redis-server against local Redis Clusters.
    Cluster,
}

#[derive(Debug, Parser)]
#[command(
    about = "tickforge benchmarks with ceilings (see the doc comment of examples/bench/main.rs)"
)]
struct Args {
    /// Which benchmark to run.
    #[arg(value_enum)]
    which: Option<Which>,
    /// A short smoke run: small sizes, short windows.
    #[arg(long)]
    quick: bool,
    /// Where JSON, Markdown and pictures go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,

    /// append: matches per call.
    #[arg(long, default_value_t = 1_000)]
    append_matches: usize,
    /// append: events per match-tick, one measurement each.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8, 64])]
    append_events: Vec<usize>,
    /// append: seconds per events-per-tick value [default: 8, quick 1].
    #[arg(long)]
    append_seconds: Option<f64>,
    /// append: let append.lua publish each batch for followers (RedisStore's default).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    append_publish: bool,
    /// append: claim each match's lease and fence every batch with its epoch.
    #[arg(long)]
    append_fenced: bool,

    /// engine: players per match.
    #[arg(long, default_value_t = 8)]
    engine_players: u32,
    /// engine: ticks per second.
    #[arg(long, default_value_t = 30)]
    engine_hz: u32,
    /// engine: first M of the search [default: 500, quick 100].
    #[arg(long)]
    engine_start: Option<usize>,
    /// engine: largest M tried [default: 64000, quick 200].
    #[arg(long)]
    engine_max: Option<usize>,
    /// engine: bisection steps after doubling [default: 3, quick 0].
    #[arg(long)]
    engine_bisect: Option<usize>,
    /// engine: warm-up seconds per step [default: 4, quick 1].
    #[arg(long)]
    engine_warmup: Option<f64>,
    /// engine: measured seconds per step [default: 8, quick 2].
    #[arg(long)]
    engine_seconds: Option<f64>,
    /// engine: let append.lua publish each batch for followers (RedisStore's default).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    engine_publish: bool,
    /// engine: stores to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [StoreKind::Memory, StoreKind::Redis])]
    engine_stores: Vec<StoreKind>,

    /// restore: log sizes in events [default: 10000,100000,1000000; quick 10000,100000].
    #[arg(long, value_delimiter = ',')]
    restore_sizes: Option<Vec<u64>>,
    /// restore: restores timed per size [default: 200, quick 20].
    #[arg(long)]
    restore_repeats: Option<usize>,

    /// network: client counts [default: 100,500,1000; quick 100].
    #[arg(long, value_delimiter = ',')]
    network_clients: Option<Vec<usize>>,
    /// network: players per match (the arena holds 16).
    #[arg(long, default_value_t = 10)]
    network_players: u32,
    /// network: measured seconds per client count [default: 10, quick 3].
    #[arg(long)]
    network_seconds: Option<f64>,

    /// network-split: client counts to run, all of them [default: a search
    /// 100, 200, 400, ... up to --network-max-clients; quick 100,200].
    #[arg(long, value_delimiter = ',')]
    network_steps: Option<Vec<usize>>,
    /// network-split: the largest client count of the search.
    #[arg(long, default_value_t = 12_800)]
    network_max_clients: usize,
    /// network-split: seconds a client's join retries `ServerFull`
    /// refusals and failed handshakes, with backoff, as the client library
    /// does (0 = a client refused once counts as refused).
    #[arg(long, default_value_t = 15.0)]
    network_join_retry_s: f64,
    /// network-split: bisection rounds between the largest client count
    /// that held and the smallest that failed (searches only).
    #[arg(long, default_value_t = 2)]
    network_refine: u32,
    /// network-split: players per match.
    #[arg(long, default_value_t = 8)]
    network_split_players: u32,
    /// network-split: measured seconds per step [default: 20, quick 5].
    #[arg(long)]
    network_split_seconds: Option<f64>,
    /// network-split: how clients send.
    #[arg(long, value_enum, default_value_t = netsplit_clients::LoadKind::Schedule)]
    network_load: netsplit_clients::LoadKind,
    /// network-split: CPUs of the server process, as taskset -c takes them (e.g. 0).
    #[arg(long)]
    server_cpus: Option<String>,
    /// network-split: CPUs of the client process (e.g. 1).
    #[arg(long)]
    client_cpus: Option<String>,
    /// network-split: search with the server on 1 core, then on 2 (the
    /// CPUs of both lists).
    #[arg(long)]
    network_compare_cores: bool,
    /// network-split: scheduling priority (nice, -20 to 19) of the server
    /// and client processes; below 0 (root only) keeps other work on the
    /// machine from taking an even share of their CPUs.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    network_nice: i32,
    /// network-split: turn the server's headroom limits off (by default
    /// the bench sets 85 % CPU, 90 % tick load, 50 ms lag and 256 KiB of
    /// receive queue; off admits until max_connections), to see overload
    /// itself.
    #[arg(long)]
    network_no_admission: bool,
    /// network-split: the server's `admit_max_cpu_percent` while admission
    /// is on (0 = judge by the other limits only).
    #[arg(long, default_value_t = 85)]
    network_admit_cpu_percent: u32,
    /// network-split: the server's `admit_max_send_delay_ms` while
    /// admission is on (0 = off): refuse while states leave this late after
    /// their tick (99th percentile).
    #[arg(long, default_value_t = 0)]
    network_admit_send_delay_ms: u64,
    /// network-split: the server's `admit_max_receive_queue_kib` while
    /// admission is on (0 = off): refuse while this much waits in its
    /// socket's receive buffer.
    #[arg(long, default_value_t = 256)]
    network_admit_receive_queue_kib: u64,
    /// network-split: the server socket's receive and send buffers
    /// (`net.socket_buffer_bytes`), in KiB [default: the node's, 512].
    #[arg(long)]
    network_socket_buffer_kib: Option<usize>,
    /// network-split: noisy neighbours: this many busy-looping processes
    /// pinned to each of the server's CPUs at the server's priority, so
    /// the server gets about 1/(N+1) of its cores and saturates before its
    /// clients do (to see overload from the server's side).
    #[arg(long, default_value_t = 0)]
    network_neighbours: u32,
    /// network-split: phases of the server's tick (`engine.tick_phases`):
    /// its matches tick spread over this many steps per period.
    #[arg(long, default_value_t = 4)]
    network_tick_phases: u32,
    /// network-split: the server's `net.batch_sends` (many datagrams per
    /// `sendmmsg` across clients; Linux), `true` or `false`.
    #[arg(long, default_value_t = tickforge::net::NetConfig::default().batch_sends, action = clap::ArgAction::Set)]
    network_batch_sends: bool,

    /// cluster: masters of each cluster measured after the single server.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 3])]
    cluster_nodes: Vec<usize>,
    /// cluster: matches per append call, per writer.
    #[arg(long, default_value_t = 1_000)]
    cluster_matches: usize,
    /// cluster: events per match-tick.
    #[arg(long, default_value_t = 8)]
    cluster_events: usize,
    /// cluster: concurrent writers (the engine runs one per shard).
    #[arg(long, default_value_t = 2)]
    cluster_writers: usize,
    /// cluster: measured seconds per setup [default: 10, quick 2].
    #[arg(long)]
    cluster_seconds: Option<f64>,
    /// cluster: let append.lua publish each batch for followers (RedisStore's default).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    cluster_publish: bool,

    /// Internal: run one step in this (child) process.
    #[arg(long, hide = true)]
    child: Option<String>,
    /// Internal: the step, as JSON.
    #[arg(long, hide = true)]
    spec: Option<String>,
}

fn main() -> anyhow::Result<()> {
    // Before any thread exists: it sets the clock children inherit.
    report::start_clock();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(async_main())
}

async fn async_main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Some(kind) = &args.child {
        let spec = args.spec.as_deref().context("--child needs --spec")?;
        return match kind.as_str() {
            "engine" => engine::step(serde_json::from_str(spec).context("engine step")?).await,
            "network" => network::step(serde_json::from_str(spec).context("network step")?).await,
            "net-server" => {
                netsplit_server::run(serde_json::from_str(spec).context("server spec")?).await
            }
            "net-clients" => {
                netsplit_clients::run(serde_json::from_str(spec).context("clients spec")?).await
            }
            "spin" => child::spin(),
            other => bail!("unknown step kind {other:?}"),
        };
    }
    let Some(which) = args.which else {
        bail!(
            "say which benchmark to run: all, append, engine, restore, network, network-split \
             or cluster \
             (see --help)"
        );
    };
    tokio::select! {
        result = run(which, &args) => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}

/// What every JSON file records about the run.
#[derive(Debug, Serialize)]
struct RunInfo {
    command: String,
    quick: bool,
    started_unix_s: u64,
    commit: Option<String>,
    machine: sys::Machine,
    redis: Option<redis_server::RedisInfo>,
}

async fn run(which: Which, args: &Args) -> anyhow::Result<()> {
    let quick = args.quick;
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Keys of this run live in their own edition (cleaned afterwards).
    let edition = format!("bench-{started_unix_s}");
    let wanted = |w: Which| which == Which::All || which == w;
    let needs_redis = wanted(Which::Append)
        || wanted(Which::Restore)
        || (wanted(Which::Engine) && args.engine_stores.contains(&StoreKind::Redis));
    let redis = if needs_redis {
        RedisTarget::open().await?
    } else {
        None
    };
    let machine = sys::Machine::describe();
    let info = RunInfo {
        command: std::iter::once("cargo run --release --example bench --".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        quick,
        started_unix_s,
        commit: sys::git_commit(),
        machine: machine.clone(),
        redis: redis.as_ref().map(RedisTarget::info),
    };
    progress(format!(
        "tickforge bench: {which:?}{} on {}",
        if quick { " (quick)" } else { "" },
        machine.line()
    ));
    let no_redis =
        "no Redis: install redis-server (sudo apt-get install redis-server) or set REDIS_URL";

    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut failed = Vec::new();
    for bench in [
        Which::Append,
        Which::Engine,
        Which::Restore,
        Which::Network,
        Which::NetworkSplit,
        Which::Cluster,
    ] {
        // Several minutes: only when asked for by name.
        if bench == Which::NetworkSplit && which != Which::NetworkSplit {
            continue;
        }
        if !wanted(bench) {
            continue;
        }
        let result = match bench {
            Which::Append => match &redis {
                Some(redis) => {
                    let config = append::AppendConfig {
                        matches: args.append_matches,
                        events_per_tick: args.append_events.clone(),
                        seconds: args.append_seconds.unwrap_or(if quick { 1.0 } else { 8.0 }),
                        max_events: if quick { 200_000 } else { 1_500_000 },
                        min_rounds: if quick { 3 } else { 10 },
                        publish: args.append_publish,
                        fenced: args.append_fenced,
                    };
                    append::run(&config, redis, &edition).await
                }
                None => Ok(Outcome::skipped("append", no_redis)
                    .with_target("RedisStore / raw EVALSHA", ">= 0.9")),
            },
            Which::Engine => {
                let config = engine::EngineConfig {
                    players: args.engine_players,
                    tick_hz: args.engine_hz,
                    start: args.engine_start.unwrap_or(if quick { 100 } else { 500 }),
                    max: args.engine_max.unwrap_or(if quick { 200 } else { 64_000 }),
                    bisect_steps: args.engine_bisect.unwrap_or(if quick { 0 } else { 3 }),
                    warmup_s: args.engine_warmup.unwrap_or(if quick { 1.0 } else { 4.0 }),
                    measure_s: args.engine_seconds.unwrap_or(if quick { 2.0 } else { 8.0 }),
                    stores: args.engine_stores.clone(),
                    publish: args.engine_publish,
                };
                engine::run(&config, redis.as_ref(), &edition).await
            }
            Which::Restore => match &redis {
                Some(redis) => {
                    let config = restore::RestoreConfig {
                        sizes: args.restore_sizes.clone().unwrap_or_else(|| {
                            if quick {
                                vec![10_000, 100_000]
                            } else {
                                vec![10_000, 100_000, 1_000_000]
                            }
                        }),
                        repeats: args.restore_repeats.unwrap_or(if quick { 20 } else { 200 }),
                        min_rebuilds: if quick { 2 } else { 3 },
                        rebuild_seconds: if quick { 1.0 } else { 4.0 },
                    };
                    restore::run(&config, redis, &edition).await
                }
                None => Ok(Outcome::skipped("restore", no_redis)
                    .with_target("restore p99 at every size", "< 5 ms")),
            },
            Which::Network => {
                let config = network::NetworkConfig {
                    clients: args.network_clients.clone().unwrap_or_else(|| {
                        if quick {
                            vec![100]
                        } else {
                            vec![100, 500, 1000]
                        }
                    }),
                    players: args.network_players.clamp(1, 16),
                    tick_hz: args.engine_hz,
                    warmup_s: if quick { 1.0 } else { 3.0 },
                    measure_s: args
                        .network_seconds
                        .unwrap_or(if quick { 3.0 } else { 10.0 }),
                };
                match network::run(&config).await {
                    Ok((outcome, results)) => {
                        draw_latency(&args.out, &results, &config, &machine, quick)?;
                        Ok(outcome)
                    }
                    Err(e) => Err(e),
                }
            }
            Which::NetworkSplit => {
                let cpus = |list: &Option<String>| list.as_deref().map(sys::parse_cpus).transpose();
                let (steps, search) = match &args.network_steps {
                    Some(steps) => (steps.clone(), false),
                    None if quick => (vec![100, 200], false),
                    None => (
                        std::iter::successors(Some(100usize), |n| Some(n * 2))
                            .take_while(|&n| n <= args.network_max_clients.max(100))
                            .collect(),
                        true,
                    ),
                };
                let config = netsplit::SplitConfig {
                    steps,
                    search,
                    refine: args.network_refine,
                    join_retry_s: args.network_join_retry_s,
                    players: args.network_split_players.clamp(1, 16),
                    tick_hz: args.engine_hz,
                    warmup_s: if quick { 1.0 } else { 3.0 },
                    measure_s: args
                        .network_split_seconds
                        .unwrap_or(if quick { 5.0 } else { 20.0 }),
                    load: args.network_load,
                    server_cpus: cpus(&args.server_cpus)?,
                    client_cpus: cpus(&args.client_cpus)?,
                    compare_cores: args.network_compare_cores,
                    admission: !args.network_no_admission,
                    admit_cpu_percent: args.network_admit_cpu_percent.min(100),
                    admit_send_delay_ms: args.network_admit_send_delay_ms,
                    admit_receive_queue_kib: args.network_admit_receive_queue_kib,
                    socket_buffer_kib: args.network_socket_buffer_kib,
                    tick_phases: args.network_tick_phases.clamp(1, 16),
                    batch_sends: args.network_batch_sends,
                    nice: args.network_nice.clamp(-20, 19),
                    neighbours: args.network_neighbours.min(8),
                };
                match netsplit::run(&config).await {
                    Ok((outcome, series)) => {
                        let period_ms = 1000.0 / f64::from(config.tick_hz);
                        let footer = format!(
                            "{} players per match, {:.0} s per step, server CPUs {}, clients CPUs {}; {} cores{}",
                            config.players,
                            config.measure_s,
                            sys::cpus_label(config.server_cpus.as_deref()),
                            sys::cpus_label(config.client_cpus.as_deref()),
                            machine.cores,
                            if quick { "; quick run" } else { "" }
                        );
                        let svg = svg::latency_histogram(
                            &series,
                            "Command-to-update latency, server and clients in separate processes",
                            period_ms,
                            period_ms + 5.0,
                            &footer,
                        );
                        save_picture(&args.out, "network-split-latency.svg", &svg, quick)?;
                        Ok(outcome)
                    }
                    Err(e) => Err(e),
                }
            }
            Which::Cluster => {
                let config = cluster::ClusterConfig {
                    nodes: args.cluster_nodes.clone(),
                    matches: args.cluster_matches.max(1),
                    events_per_tick: args.cluster_events.max(1),
                    writers: args.cluster_writers.max(1),
                    warmup_s: if quick { 1.0 } else { 3.0 },
                    seconds: args
                        .cluster_seconds
                        .unwrap_or(if quick { 2.0 } else { 10.0 }),
                    publish: args.cluster_publish,
                };
                cluster::run(&config, &edition).await
            }
            Which::All => unreachable!("not a single benchmark"),
        };
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(error) => {
                let name = format!("{bench:?}").to_lowercase();
                progress(format!("{name} FAILED: {error:#}"));
                failed.push(name);
                continue;
            }
        };
        if let Some(why) = &outcome.skipped {
            progress(format!("{} skipped: {why}", outcome.name));
        }
        for table in &outcome.tables {
            print!("{}", table.text());
        }
        write_outcome(&args.out, &info, &outcome)?;
        outcomes.push(outcome);
    }

    let targets: Vec<report::Target> = outcomes
        .iter()
        .flat_map(|o| o.targets.iter().cloned())
        .collect();
    let targets_table = report::targets_table(&targets);
    if which == Which::All {
        println!("\n==================== all results ====================");
        println!("{}", machine.line());
        for outcome in &outcomes {
            if let Some(why) = &outcome.skipped {
                println!("\n{}: skipped ({why})", outcome.name);
            }
            for table in &outcome.tables {
                print!("{}", table.text());
            }
        }
        let mut md = format!(
            "Command: `{}`  \nMachine: {}  \nRedis: {}  \nCommit: {}\n\n",
            info.command,
            machine.line(),
            info.redis.as_ref().map_or("none".to_owned(), |r| format!(
                "{} ({}; {})",
                r.version, r.source, r.config
            )),
            info.commit.as_deref().unwrap_or("unknown"),
        );
        for outcome in &outcomes {
            if let Some(why) = &outcome.skipped {
                md.push_str(&format!("**{}**: skipped ({why})\n\n", outcome.name));
            }
            for table in &outcome.tables {
                md.push_str(&table.markdown());
                md.push('\n');
            }
        }
        md.push_str(&targets_table.markdown());
        report::write_text(&args.out, "summary.md", &md)?;
        report::write_json(
            &args.out,
            "summary",
            &serde_json::json!({ "run": info, "targets": targets, "failed": failed }),
        )?;
    }
    print!("{}", targets_table.text());
    if let Some(redis) = &redis
        && !redis.owned
    {
        redis.clean(&edition).await;
    }
    if !failed.is_empty() {
        bail!("benchmarks failed: {}", failed.join(", "));
    }
    Ok(())
}

fn write_outcome(dir: &Path, info: &RunInfo, outcome: &Outcome) -> anyhow::Result<()> {
    report::write_json(
        dir,
        outcome.name,
        &serde_json::json!({
            "benchmark": outcome.name,
            "run": info,
            "skipped": outcome.skipped,
            "targets": outcome.targets,
            "tables": outcome.tables,
            "results": outcome.results,
        }),
    )?;
    let md: String = outcome
        .tables
        .iter()
        .map(Table::markdown)
        .collect::<Vec<_>>()
        .join("\n");
    report::write_text(dir, &format!("{}.md", outcome.name), &md)
}

fn draw_latency(
    dir: &Path,
    results: &[network::StepResult],
    config: &network::NetworkConfig,
    machine: &sys::Machine,
    quick: bool,
) -> anyhow::Result<()> {
    if results.is_empty() {
        return Ok(());
    }
    let period_ms = 1000.0 / f64::from(config.tick_hz);
    let footer = format!(
        "{} players per match, {:.0} s per client count; {} cores{}",
        config.players,
        config.measure_s,
        machine.cores,
        if quick { "; quick run" } else { "" }
    );
    let series: Vec<svg::Series> = results.iter().map(network::StepResult::series).collect();
    let svg = svg::latency_histogram(
        &series,
        "Command-to-update latency, QUIC on loopback",
        period_ms,
        period_ms + 2.0,
        &footer,
    );
    save_picture(dir, "network-latency.svg", &svg, quick)
}

/// Writes a picture to `dir`, and (not in a quick run) to `assets/bench/`.
fn save_picture(dir: &Path, name: &str, svg: &str, quick: bool) -> anyhow::Result<()> {
    report::write_text(dir, name, svg)?;
    if !quick {
        let assets = Path::new("assets/bench");
        std::fs::create_dir_all(assets).context("creating assets/bench")?;
        std::fs::write(assets.join(name), svg)
            .with_context(|| format!("writing assets/bench/{name}"))?;
        progress(format!("copied the picture to assets/bench/{name}"));
    }
    Ok(())
}
