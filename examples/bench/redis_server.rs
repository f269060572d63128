//! The Redis the benchmarks talk to: `REDIS_URL` when set, else a
//! `redis-server` child process of our own (loopback, a free port, a
//! temporary directory, no persistence), killed when the run ends.
//! [`RedisProcess`] also starts the plain and cluster-enabled nodes of the
//! cluster benchmark.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::report::progress;

/// How long a fresh server may take to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A reachable Redis.
pub struct RedisTarget {
    pub url: String,
    /// The server's process id, when it is our child (for its CPU time).
    pub pid: Option<u32>,
    pub version: String,
    /// Whether we started it (and may flush it).
    pub owned: bool,
    admin: redis::aio::MultiplexedConnection,
    _process: Option<RedisProcess>,
}

/// What the JSON files record about the server.
#[derive(Debug, Clone, Serialize)]
pub struct RedisInfo {
    pub version: String,
    pub source: &'static str,
    pub config: &'static str,
}

impl RedisTarget {
    /// `REDIS_URL` if set, else a new child server. `Ok(None)` (with the
    /// reason printed) when there is no `redis-server` to start.
    pub async fn open() -> anyhow::Result<Option<Self>> {
        if let Ok(url) = std::env::var("REDIS_URL") {
            progress(format!("using Redis at REDIS_URL ({})", redact(&url)));
            return Ok(Some(Self::connect(url, None).await?));
        }
        let Some(binary) = find_in_path("redis-server") else {
            progress(
                "redis-server not found in PATH: the Redis parts (append, engine with Redis, \
                 restore) are SKIPPED. Install it with `sudo apt-get install redis-server` \
                 (Debian/Ubuntu) or point REDIS_URL at a server.",
            );
            return Ok(None);
        };
        let process = RedisProcess::start(&binary, false)?;
        let url = process.url();
        let mut target = Self::connect(url, Some(process)).await?;
        target.owned = true;
        progress(format!(
            "started redis-server {} (pid {}) on {} with --save \"\" --appendonly no",
            target.version,
            target.pid.unwrap_or(0),
            target.url
        ));
        Ok(Some(target))
    }

    async fn connect(url: String, mut process: Option<RedisProcess>) -> anyhow::Result<Self> {
        let client = redis::Client::open(url.as_str())
            .with_context(|| format!("parsing the Redis URL {}", redact(&url)))?;
        let admin = wait_ready(&client, &url, process.as_mut()).await?;
        let mut target = Self {
            url,
            pid: process.as_ref().map(|p| p.child.id()),
            version: String::new(),
            owned: false,
            admin,
            _process: process,
        };
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut target.admin)
            .await
            .context("asking Redis for INFO server")?;
        target.version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_owned();
        Ok(target)
    }

    pub fn info(&self) -> RedisInfo {
        RedisInfo {
            version: self.version.clone(),
            source: if self.owned {
                "child redis-server"
            } else {
                "REDIS_URL"
            },
            config: if self.owned {
                "--save \"\" --appendonly no (no persistence)"
            } else {
                "as configured by its owner"
            },
        }
    }

    /// The server's CPU seconds so far (only for our own child).
    pub fn cpu_seconds(&self) -> Option<f64> {
        crate::sys::cpu_seconds(Some(self.pid?))
    }

    /// Removes what a benchmark wrote: FLUSHALL on our own server, else
    /// the keys of `edition` only. A failure is reported, not fatal: the
    /// figures already measured stand.
    pub async fn clean(&self, edition: &str) {
        if let Err(error) = self.try_clean(edition).await {
            progress(format!("warning: could not clean Redis: {error:#}"));
        }
    }

    async fn try_clean(&self, edition: &str) -> anyhow::Result<()> {
        let mut con = self.admin.clone();
        if self.owned {
            let () = redis::cmd("FLUSHALL")
                .query_async(&mut con)
                .await
                .context("FLUSHALL")?;
            return Ok(());
        }
        let pattern = format!("*:{{arena:{edition}*");
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut con)
                .await
                .context("SCAN for benchmark keys")?;
            if !keys.is_empty() {
                let _: i64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut con)
                    .await
                    .context("UNLINK benchmark keys")?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

/// Connects to the server at `url`, retrying PING until it answers (no
/// fixed sleep) or [`READY_TIMEOUT`] passes; `process`, when it is our
/// child, is checked between attempts so an early exit is reported with its
/// log.
pub async fn wait_ready(
    client: &redis::Client,
    url: &str,
    mut process: Option<&mut RedisProcess>,
) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let started = Instant::now();
    loop {
        // FLUSHALL of a few million events takes seconds.
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(Duration::from_secs(120)));
        let attempt = async {
            let mut con = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let _: String = redis::cmd("PING").query_async(&mut con).await?;
            Ok::<_, redis::RedisError>(con)
        };
        match tokio::time::timeout(Duration::from_secs(1), attempt).await {
            Ok(Ok(con)) => return Ok(con),
            Ok(Err(error)) if started.elapsed() < READY_TIMEOUT => {
                if let Some(process) = process.as_deref_mut() {
                    process.check_alive()?;
                }
                tracing::debug!(%error, "redis not ready yet");
                // A poll interval, not a wait for readiness.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(Err(error)) => {
                return Err(error)
                    .with_context(|| format!("Redis at {} did not answer PING", redact(url)));
            }
            Err(_) if started.elapsed() < READY_TIMEOUT => {}
            Err(_) => bail!("Redis at {} did not answer PING in time", redact(url)),
        }
    }
}

/// A `redis-server` child process and its temporary directory; killed
/// on drop.
pub struct RedisProcess {
    child: Child,
    port: u16,
    /// The cluster bus port, for a `--cluster-enabled yes` node.
    cluster_port: Option<u16>,
    dir: tempfile::TempDir,
}

impl RedisProcess {
    /// Starts `binary` on a free loopback port with no persistence; with
    /// `cluster`, as a Redis Cluster node (its bus on a second free port,
    /// as the default port + 10000 may not exist).
    pub fn start(binary: &Path, cluster: bool) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("tickforge-bench-redis")
            .tempdir()
            .context("creating a temporary directory for redis-server")?;
        // Ports the kernel just handed out (both listeners open at once, so
        // they differ); if another process takes one before redis-server
        // binds, the readiness check reports it.
        let listeners = (0..if cluster { 2 } else { 1 })
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<Vec<_>, _>>()
            .context("finding a free loopback port")?;
        let ports = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<Result<Vec<_>, _>>()
            .context("finding a free loopback port")?;
        drop(listeners);
        let port = ports[0];
        let cluster_port = ports.get(1).copied();
        let mut command = Command::new(binary);
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir.path())
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--logfile")
            .arg(dir.path().join("redis.log"));
        if let Some(cluster_port) = cluster_port {
            command
                .args(["--cluster-enabled", "yes", "--cluster-port"])
                .arg(cluster_port.to_string())
                .arg("--cluster-config-file")
                .arg(dir.path().join("nodes.conf"));
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl only sets a flag of the child between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                // Dies with us even if we are killed without running Drop.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            child,
            port,
            cluster_port,
            dir,
        })
    }

    /// The server's process id (for its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The loopback port clients use.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster bus port (cluster nodes only).
    pub fn cluster_port(&self) -> Option<u16> {
        self.cluster_port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    /// Fails, with the log's end, if the server has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("checking redis-server")? {
            bail!("redis-server exited with {status}: {}", self.log_tail());
        }
        Ok(())
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first `name` file on `PATH`.
pub fn find_in_path(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A URL with its password hidden.
pub fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://***@{host}"),
        _ => url.to_owned(),
    }
}
