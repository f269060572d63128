//! The fleet's server processes: the arena served as `tickforge serve
//! --config <file>` serves it, one process per node, each with its own QUIC and admin ports, all on one Redis, one
//! shared secret and one certificate. Started and awaited (`/readyz`),
//! killed with SIGKILL, drained with SIGTERM, and asked for their
//! `/metrics`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustls::pki_types::CertificateDer;
use tickforge::net::TlsSource;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a node may take to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What every node of the fleet shares.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// The Redis all nodes store to.
    pub redis_url: String,
    /// The timeline the run's matches live in (fresh per run).
    pub edition: String,
    /// `fleet.lease_ttl_ms`.
    pub lease_ttl: Duration,
    /// `fleet.max_matches` of each node.
    pub max_matches: usize,
    /// `engine.shards` of each node.
    pub shards: usize,
}

/// What became of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Still serving.
    Running,
    /// Sent SIGKILL.
    Killed,
    /// Sent SIGTERM; `Some` once it exited.
    Drained(Option<ExitStatus>),
}

/// One node process.
#[derive(Debug)]
pub struct Node {
    /// `node-<i>`, from 1.
    pub id: String,
    /// Its QUIC address (also its public address).
    pub quic: SocketAddr,
    /// Its admin HTTP address.
    pub admin: SocketAddr,
    /// Where its log (stderr) goes.
    pub log: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    /// What became of it.
    pub fate: Fate,
}

/// The nodes of one run and the files they share.
#[derive(Debug)]
pub struct Fleet {
    /// The nodes, `node-1` first.
    pub nodes: Vec<Node>,
    program: NodeProgram,
    /// The certificate every node serves (clients trust it).
    pub trusted: Vec<CertificateDer<'static>>,
}

/// How a node process is started.
#[derive(Debug, Clone)]
pub enum NodeProgram {
    /// This example's own executable, `--serve-node <config>`: the arena
    /// served exactly as `tickforge serve` does (no bots), built with the
    /// example, so never older than the sources.
    ThisExample(PathBuf),
    /// A `tickforge` binary, `serve --config <config>`.
    Binary(PathBuf),
}

impl NodeProgram {
    /// This example's executable, re-run as a node.
    pub fn this_example() -> anyhow::Result<Self> {
        Ok(Self::ThisExample(
            std::env::current_exe().context("finding the example's executable")?,
        ))
    }

    fn command(&self, config: &Path) -> Command {
        match self {
            NodeProgram::ThisExample(exe) => {
                let mut command = Command::new(exe);
                command.arg("--serve-node").arg(config);
                command
            }
            NodeProgram::Binary(binary) => {
                let mut command = Command::new(binary);
                command.args(["serve", "--config"]).arg(config);
                command
            }
        }
    }
}

/// A loopback address with a port that was free a moment ago.
fn free_udp() -> anyhow::Result<SocketAddr> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

fn free_tcp() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

impl Fleet {
    /// Writes the certificate, a secret and one configuration per node
    /// into `dir`; starts nothing yet.
    pub fn prepare(
        dir: &Path,
        program: NodeProgram,
        count: usize,
        spec: &FleetSpec,
    ) -> anyhow::Result<Self> {
        let cert = dir.join("cert.der");
        let key = dir.join("key.der");
        // The library's own development certificate, written once: every
        // node finds the files and serves the same certificate.
        let server_cert = tickforge::net::tls::load_server_cert(&TlsSource::Dev {
            cert: cert.clone(),
            key: key.clone(),
        })
        .context("writing the fleet's certificate")?;
        let trusted = server_cert.leaf().cloned().into_iter().collect();
        let secret = format!("fleet-demo-{}", spec.edition);
        let mut nodes = Vec::with_capacity(count);
        for index in 1..=count {
            let id = format!("node-{index}");
            let quic = free_udp()?;
            let admin = free_tcp()?;
            let config = dir.join(format!("{id}.toml"));
            let text = format!(
                "[engine]\nedition = \"{edition}\"\ndurability = \"sync\"\nshards = {shards}\n\n\
                 [storage]\nbackend = \"redis\"\n\n[storage.redis]\nurl = \"{url}\"\n\n\
                 [net]\nlisten = \"{quic}\"\nopen_mode = true\nsecret = \"{secret}\"\n\
                 dev_cert = \"{cert}\"\ndev_key = \"{key}\"\ngrace_seconds = 30\n\n\
                 [server]\ndrain_seconds = 20\n\n[admin]\nlisten = \"{admin}\"\n\n\
                 [fleet]\nnode_id = \"{id}\"\nlease_ttl_ms = {ttl}\nmax_matches = {max}\n",
                edition = spec.edition,
                shards = spec.shards,
                url = spec.redis_url,
                cert = cert.display(),
                key = key.display(),
                ttl = spec.lease_ttl.as_millis(),
                max = spec.max_matches,
            );
            std::fs::write(&config, text)
                .with_context(|| format!("writing {}", config.display()))?;
            nodes.push(Node {
                log: dir.join(format!("{id}.log")),
                id,
                quic,
                admin,
                config,
                child: None,
                fate: Fate::Running,
            });
        }
        Ok(Self {
            nodes,
            program,
            trusted,
        })
    }

    /// Every node's QUIC address, `node-1` first.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.quic).collect()
    }

    /// Starts every node, then waits until each answers `/readyz` with 200.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            let log = std::fs::File::create(&node.log)
                .with_context(|| format!("creating {}", node.log.display()))?;
            let mut command = self.program.command(&node.config);
            command
                .env_remove("REDIS_URL")
                .env_remove("STORAGE_BACKEND")
                .env_remove("TICKFORGE_SECRET")
                .env_remove("TICKFORGE_NODE_ID")
                .env_remove("TICKFORGE_PUBLIC_ADDR")
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            // SAFETY: prctl only sets a flag of the child between fork and exec.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                    // A node dies with the example even if it is killed.
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = command
                .spawn()
                .with_context(|| format!("starting {:?}", self.program))?;
            node.child = Some(child);
        }
        for node in &mut self.nodes {
            node.wait_ready().await?;
        }
        Ok(())
    }

    /// SIGKILL to node `index`.
    pub fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[index];
        let child = node.child.as_mut().context("node not started")?;
        child
            .kill()
            .with_context(|| format!("SIGKILL {}", node.id))?;
        let _ = child.wait();
        node.fate = Fate::Killed;
        Ok(())
    }

    /// SIGTERM to node `index` (it drains and hands its matches over).
    pub fn terminate(&mut self, index: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[index];
        node.signal(libc::SIGTERM)?;
        node.fate = Fate::Drained(None);
        Ok(())
    }

    /// Waits (polling, bounded by `limit`) for a drained node to exit.
    pub async fn wait_drained(&mut self, index: usize, limit: Duration) -> Option<ExitStatus> {
        let node = &mut self.nodes[index];
        let deadline = Instant::now() + limit;
        loop {
            if let Fate::Drained(Some(status)) = node.fate {
                return Some(status);
            }
            let status = node
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = status {
                node.fate = Fate::Drained(Some(status));
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // A poll interval for a child process's exit.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Drains every node still running (SIGTERM, bounded wait), so the
    /// run ends with every match handed over or snapshotted.
    pub async fn stop_all(&mut self) {
        for index in 0..self.nodes.len() {
            if self.nodes[index].fate == Fate::Running && self.terminate(index).is_ok() {
                let _ = self.wait_drained(index, Duration::from_secs(30)).await;
            }
        }
    }
}

impl Node {
    fn signal(&self, signal: i32) -> anyhow::Result<()> {
        let child = self.child.as_ref().context("node not started")?;
        let pid = i32::try_from(child.id()).context("a pid")?;
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!(
                "cannot signal {}: {}",
                self.id,
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "{} exited with {status} while starting; its log ({}):\n{}",
                    self.id,
                    self.log.display(),
                    log_tail(&self.log)
                );
            }
            if let Ok((200, _)) = http_get(self.admin, "/readyz").await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready within {READY_TIMEOUT:?}; its log:\n{}",
                    self.id,
                    log_tail(&self.log)
                );
            }
            // A poll interval for readiness over HTTP.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sums of this node's Prometheus metrics, `None` when it does not answer.
    pub async fn metrics(&self) -> Option<NodeMetrics> {
        if !matches!(self.fate, Fate::Running | Fate::Drained(None)) {
            return None;
        }
        let (200, body) = http_get(self.admin, "/metrics").await.ok()? else {
            return None;
        };
        let sum = |name: &str| -> f64 {
            body.lines()
                .filter(|l| {
                    l.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        Some(NodeMetrics {
            matches: sum("tickforge_matches_live") as u64,
            sessions: sum("tickforge_sessions_open") as u64,
            takeovers: sum("tickforge_fleet_takeovers_total") as u64,
            handovers: sum("tickforge_fleet_handovers_total") as u64,
            fenced: sum("tickforge_fleet_fenced_total") as u64,
            redirects: sum("tickforge_fleet_redirects_total") as u64,
        })
    }
}

/// What a node's `/metrics` says.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeMetrics {
    /// Matches hosted now.
    pub matches: u64,
    /// Connections open now.
    pub sessions: u64,
    /// Matches it took over.
    pub takeovers: u64,
    /// Matches it handed over.
    pub handovers: u64,
    /// Matches it stopped because another node holds their lease.
    pub fenced: u64,
    /// Clients it sent to another node.
    pub redirects: u64,
}

/// The last lines of a log file.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A plain HTTP/1.0 GET: the status and the body.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .context("no HTTP answer in time")??;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned());
    Ok((status, body))
}
