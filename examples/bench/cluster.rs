//! Benchmark 5, cluster: does `RedisStore::append` scale out over a Redis
//! Cluster?
//!
//! The same load runs against one plain `redis-server` and then against
//! local Redis Clusters of N masters (no replicas): W concurrent writers
//! (like the engine's shard writers, sharing one store) each call
//! `RedisStore::append` in a loop with one batch of k events for each of
//! its M matches, waiting for each call. It reports events/s over a fixed
//! window, call latency, how many script calls one append became (a
//! cluster call is split by hash slot), and the CPU of every redis-server,
//! of this process and of the rest of the machine, so the reader sees
//! whether the nodes share the work and what bounds it.
//!
//! Every server is a child of ours (loopback, free ports, no persistence),
//! even when `REDIS_URL` is set, so both sides run on the same machine
//! with the same settings; each setup's servers are killed before the next
//! starts (and at exit, also on error). Clusters of 3 or more masters are
//! made by `redis-cli --cluster create`; smaller ones, which redis-cli
//! refuses, by `CLUSTER ADDSLOTSRANGE` and `CLUSTER MEET`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::future::join_all;
use hdrhistogram::Histogram;
use serde::Serialize;
use tickforge::store::{EventStore, MatchKey, RedisOptions, RedisStore};
use tokio::task::JoinSet;

use crate::append::{batches, round_events};
use crate::redis_server::{RedisProcess, find_in_path, wait_ready};
use crate::report::{self, Outcome, Table, micros_histogram, ms, num, progress, si};
use crate::sys::{CpuMeter, MachineMeter};

/// Number of Redis Cluster hash slots.
const SLOTS: usize = 16_384;
/// How long `redis-cli --cluster create` and then gossip may take until
/// every node reports `cluster_state:ok`.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize)]
pub struct ClusterConfig {
    /// Masters of each cluster measured (after the single server).
    pub nodes: Vec<usize>,
    /// Matches per append call (per writer).
    pub matches: usize,
    /// Events per match per call.
    pub events_per_tick: usize,
    /// Concurrent writers, each with its own matches.
    pub writers: usize,
    /// Seconds of load before the window.
    pub warmup_s: f64,
    /// Measured seconds per setup.
    pub seconds: f64,
    /// Whether `append.lua` publishes for followers (the store's default).
    pub publish: bool,
}

/// One measured setup: the single server or a cluster.
#[derive(Debug, Clone, Serialize)]
struct SetupFigures {
    setup: String,
    /// Masters (1 for the single server).
    masters: usize,
    cluster: bool,
    window_s: f64,
    appends: u64,
    events: u64,
    events_per_s: f64,
    appends_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// `append.lua` calls (EVALSHA and EVAL) the servers ran per append.
    script_calls_per_append: Option<f64>,
    nodes: Vec<NodeFigures>,
    /// This process (writers and the Redis client), % of one core.
    client_cpu_percent: Option<f64>,
    /// Everything else on the machine, % of one core.
    others_cpu_percent: Option<f64>,
    /// Events stored per CPU second of all redis-servers together: what one
    /// master with a core of its own could take.
    events_per_redis_cpu_s: Option<f64>,
    /// Events sent per CPU second of this process.
    events_per_client_cpu_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
struct NodeFigures {
    port: u16,
    pid: u32,
    /// redis-server user + system CPU, % of one core.
    cpu_percent: Option<f64>,
    /// Time the node spent running scripts (INFO commandstats), % of the window.
    script_busy_percent: Option<f64>,
    script_calls: Option<u64>,
}

/// The servers of one setup; dropping it kills them.
struct Servers {
    nodes: Vec<RedisProcess>,
    admins: Vec<redis::aio::MultiplexedConnection>,
    cluster: bool,
}

impl Servers {
    /// One plain redis-server.
    async fn single(binary: &Path) -> anyhow::Result<Self> {
        let mut node = RedisProcess::start(binary, false)?;
        let admin = connect_node(&mut node).await?;
        Ok(Self {
            nodes: vec![node],
            admins: vec![admin],
            cluster: false,
        })
    }

    /// A cluster of `masters` nodes, every slot covered, `cluster_state:ok`
    /// on every node.
    async fn cluster(
        binary: &Path,
        redis_cli: Option<&Path>,
        masters: usize,
    ) -> anyhow::Result<Self> {
        if masters == 0 {
            bail!("a cluster needs at least one master");
        }
        let mut servers = Self {
            nodes: Vec::with_capacity(masters),
            admins: Vec::with_capacity(masters),
            cluster: true,
        };
        for _ in 0..masters {
            // Pushed before waiting, so an error still kills it.
            servers.nodes.push(RedisProcess::start(binary, true)?);
            let node = servers.nodes.last_mut().context("a node just started")?;
            servers.admins.push(connect_node(node).await?);
        }
        match redis_cli {
            Some(cli) if masters >= 3 => servers.create_with_cli(cli).await?,
            _ => servers.create_by_hand().await?,
        }
        servers.wait_cluster_ok().await?;
        Ok(servers)
    }

    /// `redis-cli --cluster create … --cluster-replicas 0 --cluster-yes`,
    /// killed if it has not finished within [`CLUSTER_TIMEOUT`].
    async fn create_with_cli(&self, cli: &Path) -> anyhow::Result<()> {
        let output = tempfile::tempfile().context("creating a file for redis-cli's output")?;
        let mut command = Command::new(cli);
        command.args(["--cluster", "create"]);
        for node in &self.nodes {
            command.arg(format!("127.0.0.1:{}", node.port()));
        }
        command
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                output
                    .try_clone()
                    .context("sharing redis-cli's output file")?,
            ))
            .stderr(Stdio::from(
                output
                    .try_clone()
                    .context("sharing redis-cli's output file")?,
            ));
        let mut child = KillOnDrop(
            command
                .spawn()
                .with_context(|| format!("starting {}", cli.display()))?,
        );
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        let status = loop {
            if let Some(status) = child.0.try_wait().context("waiting for redis-cli")? {
                break status;
            }
            if Instant::now() >= deadline {
                bail!(
                    "redis-cli --cluster create did not finish within {CLUSTER_TIMEOUT:?}: {}",
                    tail(output, 5)
                );
            }
            // A poll interval, not a wait for readiness.
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if !status.success() {
            bail!(
                "redis-cli --cluster create ended with {status}: {}",
                tail(output, 5)
            );
        }
        Ok(())
    }

    /// Slots spread evenly with `CLUSTER ADDSLOTSRANGE`, then every node
    /// met from the first (redis-cli refuses fewer than 3 masters).
    async fn create_by_hand(&mut self) -> anyhow::Result<()> {
        let masters = self.nodes.len();
        let per_node = SLOTS / masters;
        for (i, admin) in self.admins.iter_mut().enumerate() {
            let first = i * per_node;
            let last = if i + 1 == masters {
                SLOTS - 1
            } else {
                first + per_node - 1
            };
            let () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(first)
                .arg(last)
                .query_async(admin)
                .await
                .context("CLUSTER ADDSLOTSRANGE")?;
        }
        for i in 1..masters {
            let node = &self.nodes[i];
            let bus = node
                .cluster_port()
                .context("a cluster node without a bus port")?;
            let () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(node.port())
                .arg(bus)
                .query_async(&mut self.admins[0])
                .await
                .context("CLUSTER MEET")?;
        }
        Ok(())
    }

    /// Polls `CLUSTER INFO` on every node until it reports the whole
    /// cluster healthy, or fails after [`CLUSTER_TIMEOUT`].
    async fn wait_cluster_ok(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        let wanted = [
            "cluster_state:ok".to_owned(),
            format!("cluster_slots_assigned:{SLOTS}"),
            format!("cluster_known_nodes:{}", self.nodes.len()),
        ];
        for (node, admin) in self.nodes.iter_mut().zip(&mut self.admins) {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(admin)
                    .await
                    .with_context(|| format!("CLUSTER INFO on port {}", node.port()))?;
                if wanted
                    .iter()
                    .all(|w| info.lines().any(|l| l.trim() == w.as_str()))
                {
                    break;
                }
                node.check_alive()?;
                if Instant::now() >= deadline {
                    bail!(
                        "the node on port {} did not report {} within {CLUSTER_TIMEOUT:?}: {}",
                        node.port(),
                        wanted.join(", "),
                        info.split_whitespace().collect::<Vec<_>>().join(" ")
                    );
                }
                // A poll interval while gossip converges.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// The URLs for `RedisStore::connect_with`: several mean cluster mode,
    /// so a one-node cluster is given its URL twice.
    fn urls(&self) -> Vec<String> {
        let mut urls: Vec<String> = self.nodes.iter().map(RedisProcess::url).collect();
        if self.cluster && urls.len() == 1 {
            urls.push(urls[0].clone());
        }
        urls
    }

    /// Per node: script calls and microseconds so far (`INFO
    /// commandstats`, EVALSHA plus EVAL), `None` where unreadable.
    async fn script_stats(&mut self) -> Vec<Option<(u64, u64)>> {
        join_all(self.admins.iter_mut().map(|admin| async move {
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query_async(admin)
                .await
                .ok()?;
            let mut total = (0, 0);
            for line in info.lines() {
                let Some(fields) = line
                    .strip_prefix("cmdstat_evalsha:")
                    .or_else(|| line.strip_prefix("cmdstat_eval:"))
                else {
                    continue;
                };
                let field = |name: &str| -> Option<u64> {
                    fields
                        .split(',')
                        .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))?
                        .parse()
                        .ok()
                };
                total.0 += field("calls")?;
                total.1 += field("usec")?;
            }
            Some(total)
        }))
        .await
    }
}

/// Waits for a fresh node to answer PING.
async fn connect_node(
    node: &mut RedisProcess,
) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let url = node.url();
    let client = redis::Client::open(url.as_str()).with_context(|| format!("parsing {url}"))?;
    wait_ready(&client, &url, Some(node))
        .await
        .with_context(|| format!("starting redis-server on {url}"))
}

/// A child process killed (and reaped) when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The last `lines` lines of a command's output file, on one line.
fn tail(mut file: std::fs::File, lines: usize) -> String {
    use std::io::{Read, Seek};
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut text);
    let last: Vec<&str> = text.lines().rev().take(lines).collect();
    last.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// What the writers share with the measuring task.
#[derive(Default)]
struct Shared {
    /// Calls completing while set are counted.
    measuring: AtomicBool,
    stop: AtomicBool,
    /// Events of counted calls, for the progress lines.
    events: AtomicU64,
}

/// One writer's counted calls.
struct WriterTally {
    appends: u64,
    events: u64,
    latency: Histogram<u64>,
}

/// One writer: appends a batch for each of its matches, call after call,
/// until told to stop.
async fn writer(
    store: RedisStore,
    keys: Vec<MatchKey>,
    k: usize,
    shared: Arc<Shared>,
) -> anyhow::Result<WriterTally> {
    let mut tally = WriterTally {
        appends: 0,
        events: 0,
        latency: micros_histogram(),
    };
    let n_events = (keys.len() * k) as u64;
    let mut round = 0u64;
    while !shared.stop.load(Relaxed) {
        let events = round_events(round, k)?;
        let batches = batches(&keys, &events, round, k, None);
        let call = Instant::now();
        let results = store.append(&batches).await.context("RedisStore::append")?;
        let took = call.elapsed();
        if let Some(error) = results.into_iter().find_map(Result::err) {
            bail!("RedisStore refused a benchmark batch: {error}");
        }
        if shared.measuring.load(Relaxed) {
            tally.appends += 1;
            tally.events += n_events;
            report::record(&mut tally.latency, took);
            shared.events.fetch_add(n_events, Relaxed);
        }
        round += 1;
    }
    Ok(tally)
}

/// Runs the load against `servers` and measures one window.
async fn measure(
    config: &ClusterConfig,
    servers: &mut Servers,
    setup: &str,
    edition: &str,
) -> anyhow::Result<SetupFigures> {
    let options = RedisOptions {
        publish: config.publish,
        ..RedisOptions::default()
    };
    let store = RedisStore::connect_with(&servers.urls(), options)
        .await
        .with_context(|| format!("connecting RedisStore to {setup}"))?;
    if store.is_cluster() != servers.cluster {
        bail!("RedisStore chose the wrong mode for {setup}");
    }
    let mut writer_keys = Vec::with_capacity(config.writers);
    for w in 0..config.writers {
        let keys = (0..config.matches)
            .map(|i| MatchKey::new("arena", edition, &format!("w{w}m{i}")))
            .collect::<Result<Vec<_>, _>>()
            .context("naming a benchmark match")?;
        for chunk in keys.chunks(250) {
            for result in join_all(chunk.iter().map(|key| store.create(key, &[]))).await {
                result.context("creating a benchmark match")?;
            }
        }
        writer_keys.push(keys);
    }

    let shared = Arc::new(Shared::default());
    // Dropping the set (on an error below) aborts the writers.
    let mut writers = JoinSet::new();
    for keys in writer_keys {
        writers.spawn(writer(
            store.clone(),
            keys,
            config.events_per_tick,
            shared.clone(),
        ));
    }
    progress(format!(
        "cluster {setup}: {} writers x {} matches x {} events, warming up {:.0} s",
        config.writers, config.matches, config.events_per_tick, config.warmup_s
    ));
    wait_or_fail(&mut writers, Duration::from_secs_f64(config.warmup_s)).await?;

    let node_cpu: Vec<CpuMeter> = servers
        .nodes
        .iter()
        .map(|n| CpuMeter::start(Some(n.pid())))
        .collect();
    let client_cpu = CpuMeter::start(None);
    let machine_cpu = MachineMeter::start();
    let stats_before = servers.script_stats().await;
    shared.measuring.store(true, Relaxed);
    let started = Instant::now();
    let window = Duration::from_secs_f64(config.seconds);
    while started.elapsed() < window {
        let step = Duration::from_secs(1).min(window.saturating_sub(started.elapsed()));
        wait_or_fail(&mut writers, step).await?;
        let cpus: Vec<String> = node_cpu
            .iter()
            .map(|c| report::opt(c.percent(), 0))
            .collect();
        progress(format!(
            "cluster {setup}: {:.0} s: {} ev/s, redis CPU % per node {}, client {}%",
            started.elapsed().as_secs_f64(),
            si(shared.events.load(Relaxed) as f64 / started.elapsed().as_secs_f64()),
            cpus.join("/"),
            report::opt(client_cpu.percent(), 0),
        ));
    }
    shared.measuring.store(false, Relaxed);
    let window_s = started.elapsed().as_secs_f64();
    let node_percent: Vec<Option<f64>> = node_cpu.iter().map(CpuMeter::percent).collect();
    let client_cpu_percent = client_cpu.percent();
    let machine_percent = machine_cpu.percent();
    let stats_after = servers.script_stats().await;
    shared.stop.store(true, Relaxed);

    let mut appends = 0;
    let mut events = 0;
    let mut latency = micros_histogram();
    while let Some(joined) = writers.join_next().await {
        let tally = joined.context("a writer task panicked")??;
        appends += tally.appends;
        events += tally.events;
        latency
            .add(&tally.latency)
            .context("merging latency histograms")?;
    }

    let scripts: Vec<Option<(u64, u64)>> = stats_before
        .iter()
        .zip(&stats_after)
        .map(|(&a, &b)| Some((b?.0.saturating_sub(a?.0), b?.1.saturating_sub(a?.1))))
        .collect();
    let script_calls: Option<u64> = scripts.iter().map(|s| s.map(|s| s.0)).sum();
    let nodes: Vec<NodeFigures> = servers
        .nodes
        .iter()
        .zip(&node_percent)
        .zip(&scripts)
        .map(|((node, cpu), script)| NodeFigures {
            port: node.port(),
            pid: node.pid(),
            cpu_percent: *cpu,
            script_busy_percent: script.map(|s| s.1 as f64 / 1e4 / window_s),
            script_calls: script.map(|s| s.0),
        })
        .collect();
    let redis_percent: f64 = node_percent.iter().flatten().sum();
    let events_per_s = events as f64 / window_s;
    let per_cpu_s = |percent: f64| (percent > 0.0).then(|| events_per_s / (percent / 100.0));
    let figures = SetupFigures {
        setup: setup.to_owned(),
        masters: servers.nodes.len(),
        cluster: servers.cluster,
        window_s,
        appends,
        events,
        events_per_s,
        appends_per_s: appends as f64 / window_s,
        p50_ms: ms(&latency, 0.5),
        p99_ms: ms(&latency, 0.99),
        max_ms: report::max_ms(&latency),
        script_calls_per_append: script_calls
            .filter(|_| appends > 0)
            .map(|c| c as f64 / appends as f64),
        nodes,
        client_cpu_percent,
        others_cpu_percent: machine_percent
            .map(|all| (all - client_cpu_percent.unwrap_or(0.0) - redis_percent).max(0.0)),
        events_per_redis_cpu_s: node_percent
            .iter()
            .all(Option::is_some)
            .then_some(redis_percent)
            .and_then(per_cpu_s),
        events_per_client_cpu_s: client_cpu_percent.and_then(per_cpu_s),
    };
    progress(format!(
        "cluster {setup} done: {} ev/s, p50 {} ms, p99 {} ms, {} script calls per append, \
         redis CPU % per node {}, client {}%, others {}%",
        si(figures.events_per_s),
        num(figures.p50_ms, 2),
        num(figures.p99_ms, 2),
        report::opt(figures.script_calls_per_append, 0),
        per_node(&figures.nodes, |n| n.cpu_percent),
        report::opt(figures.client_cpu_percent, 0),
        report::opt(figures.others_cpu_percent, 0),
    ));
    Ok(figures)
}

/// Lets the writers run for `period`, failing at once if one stops.
async fn wait_or_fail(
    writers: &mut JoinSet<anyhow::Result<WriterTally>>,
    period: Duration,
) -> anyhow::Result<()> {
    match tokio::time::timeout(period, writers.join_next()).await {
        Err(_) => Ok(()),
        Ok(None) => bail!("no writers are running"),
        Ok(Some(Ok(Ok(_)))) => bail!("a writer stopped early"),
        Ok(Some(Ok(Err(error)))) => Err(error.context("a writer failed")),
        Ok(Some(Err(error))) => Err(error).context("a writer task panicked"),
    }
}

/// Per-node percentages as "a/b/c".
fn per_node(nodes: &[NodeFigures], value: impl Fn(&NodeFigures) -> Option<f64>) -> String {
    nodes
        .iter()
        .map(|n| report::opt(value(n), 0))
        .collect::<Vec<_>>()
        .join("/")
}

pub async fn run(config: &ClusterConfig, edition: &str) -> anyhow::Result<Outcome> {
    let Some(binary) = find_in_path("redis-server") else {
        return Ok(Outcome::skipped(
            "cluster",
            "redis-server not found in PATH (sudo apt-get install redis-server)",
        ));
    };
    if config.nodes.contains(&0) {
        bail!("--cluster-nodes: a cluster needs at least one master");
    }
    let redis_cli: Option<PathBuf> = find_in_path("redis-cli");
    if redis_cli.is_none() && config.nodes.iter().any(|&n| n >= 3) {
        progress("cluster: redis-cli not found; joining nodes with CLUSTER ADDSLOTSRANGE/MEET");
    }
    let mut setups = Vec::new();
    let version;
    {
        let mut servers = Servers::single(&binary).await?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut servers.admins[0])
            .await
            .context("asking redis-server for INFO server")?;
        version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_owned();
        progress(format!(
            "cluster: started redis-server {version} (pid {}) on {} with --save \"\" \
             --appendonly no",
            servers.nodes[0].pid(),
            servers.nodes[0].url()
        ));
        setups.push(measure(config, &mut servers, "single", edition).await?);
    }
    for &masters in &config.nodes {
        let setup = format!("{masters} master{}", if masters == 1 { "" } else { "s" });
        let started = Instant::now();
        let mut servers = Servers::cluster(&binary, redis_cli.as_deref(), masters).await?;
        progress(format!(
            "cluster {setup}: cluster_state:ok on ports {} after {:.1} s ({})",
            servers
                .nodes
                .iter()
                .map(|n| n.port().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            started.elapsed().as_secs_f64(),
            if redis_cli.is_some() && masters >= 3 {
                "redis-cli --cluster create"
            } else {
                "CLUSTER ADDSLOTSRANGE + MEET"
            }
        ));
        setups.push(measure(config, &mut servers, &setup, edition).await?);
        // The servers (and their data) go before the next setup starts.
    }

    let single = setups[0].events_per_s;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut table = Table::new(
        format!(
            "cluster: RedisStore::append, {} writers x {} matches per call x {} events per \
             match-tick{} (events/s; call latency in ms)",
            config.writers,
            config.matches,
            config.events_per_tick,
            if config.publish { "" } else { ", publish off" }
        ),
        &[
            "servers",
            "events/s",
            "vs single",
            "appends/s",
            "p50",
            "p99",
            "max",
            "script calls/append",
            "redis CPU % per node",
            "redis CPU % sum",
            "scripts busy % per node",
            "client CPU %",
            "others CPU %",
            "ev per redis CPU-s",
            "ev per client CPU-s",
        ],
    );
    for s in &setups {
        table.row(vec![
            if s.cluster {
                format!("cluster, {}", s.setup)
            } else {
                "one redis-server".to_owned()
            },
            si(s.events_per_s),
            num(s.events_per_s / single, 2),
            num(s.appends_per_s, 1),
            num(s.p50_ms, 2),
            num(s.p99_ms, 2),
            num(s.max_ms, 1),
            report::opt(s.script_calls_per_append, 0),
            per_node(&s.nodes, |n| n.cpu_percent),
            num(s.nodes.iter().filter_map(|n| n.cpu_percent).sum(), 0),
            per_node(&s.nodes, |n| n.script_busy_percent),
            report::opt(s.client_cpu_percent, 0),
            report::opt(s.others_cpu_percent, 0),
            s.events_per_redis_cpu_s.map_or("-".into(), si),
            s.events_per_client_cpu_s.map_or("-".into(), si),
        ]);
    }
    table.note(format!(
        "{:.0} s per setup after {:.0} s of warm-up; events/s = events of the calls completed \
         in the window / window; each writer waits for its call (as a shard writer does). \
         vs single = events/s / the one redis-server's.",
        config.seconds, config.warmup_s
    ));
    table.note(
        "cluster: N masters, no replicas, slots spread evenly. In cluster mode RedisStore sends \
         one append.lua call per hash slot (the keys of a call must share one), so one append \
         of many matches becomes about one script call per match (script calls/append), sent \
         concurrently to the nodes; one redis-server takes the whole append in one call.",
    );
    table.note(
        "CPU % of one core (100 = one core): each redis-server (/proc/<pid>/stat), this \
         process (writers and the Redis client), and everything else running on the machine \
         meanwhile (others). scripts busy: wall time each node spent in append.lua \
         (INFO commandstats) over the window; above the node's CPU % it was waiting for a core \
         mid-script. ev per CPU-s: events/s / (CPU % / 100), the cost side of scaling: one \
         master with a core of its own could store about that many events/s.",
    );
    table.note(format!(
        "This machine has {cores} cores: the N masters, the client and the other work all share \
         them, so these figures bound the cluster by the machine, not by the design. Once the \
         redis CPU sum plus client plus others reaches {} %, adding masters only splits the \
         same cores; even per-node CPU shows the load is spread. On separate hosts each master \
         would bring its own core.",
        cores * 100
    ));
    Ok(Outcome {
        name: "cluster",
        skipped: None,
        tables: vec![table],
        targets: Vec::new(),
        results: serde_json::json!({
            "config": config,
            "redis_version": version,
            "redis_config": "child redis-servers, --save \"\" --appendonly no (no persistence)",
            "setups": setups,
        }),
    })
}
