//! Test fixtures: a Redis per test.
//!
//! [`TestRedis::start`] picks the server from `TICKFORGE_TEST_REDIS`:
//!
//! - unset (default): a `redis-server` child process on a free loopback
//!   port, with its own temporary directory, killed on drop;
//! - `container`: a `redis:7.0` container through testcontainers (the
//!   Docker API socket from `DOCKER_HOST`), removed on drop;
//! - `url:redis://…`: an existing server, shared with other tests.
//!
//! Every test also gets its own random edition (the keys' timeline part,
//! see [`tickforge::store::keys`]), so tests sharing one server never see
//! each other's keys. Readiness is awaited by connecting and `PING`ing with
//! a bounded number of retries, never by a fixed sleep.
//!
//! [`TestCluster`] starts a Redis Cluster of child processes (process mode
//! only); [`TestCluster::start_tls`] one serving TLS only, client and
//! cluster bus, with one [`TestPki`] shared by every node.
//!
//! A server with [`ServerOptions::tls`] is always a child process, whatever
//! the mode: it listens on `rediss://` only (`--port 0`), with certificates
//! from a fresh [`TestPki`] in its directory.

#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tickforge::store::redis::Follower;
use tickforge::store::{MatchKey, RecordedEvent, RedisOptions, RedisStore, RedisTls};

/// Environment variable choosing the Redis under test.
pub const ENV: &str = "TICKFORGE_TEST_REDIS";

/// The container image used in container mode.
pub const IMAGE: (&str, &str) = ("redis", "7.0");

/// Domain of every key the fixtures hand out.
pub const DOMAIN: &str = "arena";

/// How long a server may take to answer PING after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// How many free ports are tried before giving up.
const PORT_ATTEMPTS: usize = 5;

/// Where the Redis under test comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// A `redis-server` child process per test.
    Process,
    /// A container per test.
    Container,
    /// An existing server at this URL.
    Url(String),
}

impl Mode {
    /// The mode `TICKFORGE_TEST_REDIS` asks for.
    pub fn from_env() -> Mode {
        match std::env::var(ENV) {
            Err(_) => Mode::Process,
            Ok(value) if value.is_empty() || value == "process" => Mode::Process,
            Ok(value) if value == "container" => Mode::Container,
            Ok(value) => match value.strip_prefix("url:") {
                Some(url) => Mode::Url(url.to_owned()),
                None => panic!("{ENV}={value:?}: expected `container`, `url:redis://…` or nothing"),
            },
        }
    }
}

/// How a fixture server persists data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerOptions {
    /// `--appendonly yes` with this `appendfsync` policy (`always`,
    /// `everysec` or `no`); `None` is `--appendonly no`.
    pub appendfsync: Option<&'static str>,
    /// `--requirepass`.
    pub password: Option<String>,
    /// `--cluster-enabled yes` (process mode only).
    pub cluster: bool,
    /// TLS only, on a child process (with `cluster`, the cluster bus too;
    /// see [`TestCluster::start_tls`]).
    pub tls: Option<ServerTls>,
}

/// TLS on a fixture server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerTls {
    /// `--tls-auth-clients yes`: clients must present a certificate issued
    /// by the server's [`TestPki`] CA (`no`: none is asked for).
    pub auth_clients: bool,
}

impl ServerTls {
    /// Server authentication only.
    pub fn server_only() -> Option<ServerTls> {
        Some(ServerTls {
            auth_clients: false,
        })
    }

    /// Mutual TLS.
    pub fn mutual() -> Option<ServerTls> {
        Some(ServerTls { auth_clients: true })
    }
}

/// A fresh test CA with a server certificate (SAN `127.0.0.1` and
/// `localhost`) and a client certificate it issued, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestPki {
    /// The CA certificate.
    pub ca_file: PathBuf,
    /// The server certificate.
    pub server_cert_file: PathBuf,
    /// The server's private key (PKCS#8).
    pub server_key_file: PathBuf,
    /// The client certificate (for mutual TLS).
    pub client_cert_file: PathBuf,
    /// The client's private key (PKCS#8).
    pub client_key_file: PathBuf,
}

impl TestPki {
    /// Generates a CA and both certificates into `dir`, file names starting
    /// with `name`.
    pub fn generate(dir: &Path, name: &str) -> TestPki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("tickforge test CA {name}"));
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, common_name: &str| {
            let key = KeyPair::generate().expect("leaf key");
            let mut params = CertificateParams::new(names).expect("leaf params");
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &issuer).expect("leaf certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "localhost",
        );
        let (client_cert, client_key) = leaf(
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            "tickforge test client",
        );
        let write = |suffix: &str, pem: &str| {
            let path = dir.join(format!("{name}-{suffix}"));
            std::fs::write(&path, pem).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            path
        };
        TestPki {
            ca_file: write("ca.pem", &ca_cert.pem()),
            server_cert_file: write("server.pem", &server_cert),
            server_key_file: write("server.key", &server_key),
            client_cert_file: write("client.pem", &client_cert),
            client_key_file: write("client.key", &client_key),
        }
    }

    /// Trusts this CA; presents no client certificate.
    pub fn trust(&self) -> RedisTls {
        RedisTls::from_files(Some(&self.ca_file), None).expect("test CA")
    }

    /// Trusts this CA and presents its client certificate.
    pub fn trust_with_client_cert(&self) -> RedisTls {
        RedisTls::from_files(
            Some(&self.ca_file),
            Some((&self.client_cert_file, &self.client_key_file)),
        )
        .expect("test CA and client certificate")
    }

    /// The CA and client certificate for a raw redis-rs client.
    fn certificates(&self) -> redis::TlsCertificates {
        let read =
            |path: &Path| std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: read(&self.client_cert_file),
                client_key: read(&self.client_key_file),
            }),
            root_cert: Some(read(&self.ca_file)),
        }
    }
}

impl ServerOptions {
    /// AOF on with the given `appendfsync` policy.
    pub fn appendonly(appendfsync: &'static str) -> Self {
        Self {
            appendfsync: Some(appendfsync),
            ..Self::default()
        }
    }

    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec!["--save".into(), String::new()];
        match self.appendfsync {
            Some(policy) => args.extend([
                "--appendonly".into(),
                "yes".into(),
                "--appendfsync".into(),
                policy.into(),
            ]),
            None => args.extend(["--appendonly".into(), "no".into()]),
        }
        if let Some(password) = &self.password {
            args.extend(["--requirepass".into(), password.clone()]);
        }
        args
    }
}

/// A fresh edition name: unique per call within the process and across
/// processes (pid and clock).
pub fn unique_edition() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "t{:x}-{:x}-{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A Redis for one test, with its own edition.
pub struct TestRedis {
    url: String,
    edition: String,
    server: Server,
}

enum Server {
    Process(Box<RedisProcess>),
    Container(Box<ContainerAsync<GenericImage>>),
    External,
}

impl TestRedis {
    /// A server as `TICKFORGE_TEST_REDIS` asks, without persistence.
    pub async fn start() -> TestRedis {
        Self::start_with(ServerOptions::default()).await
    }

    /// A server as `TICKFORGE_TEST_REDIS` asks. Panics with the reason if
    /// none can be had (this is a test fixture).
    pub async fn start_with(options: ServerOptions) -> TestRedis {
        let edition = unique_edition();
        let mode = match options.tls {
            Some(_) => Mode::Process,
            None => Mode::from_env(),
        };
        match mode {
            Mode::Process => {
                let process = RedisProcess::spawn(options)
                    .await
                    .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
                TestRedis {
                    url: process.url(),
                    edition,
                    server: Server::Process(Box::new(process)),
                }
            }
            Mode::Container => {
                let (container, port) = start_container(&options)
                    .await
                    .unwrap_or_else(|e| panic!("cannot start a Redis container: {e}"));
                let host = container
                    .get_host()
                    .await
                    .unwrap_or_else(|e| panic!("container host: {e}"));
                let url = with_password(&format!("redis://{host}:{port}"), &options);
                wait_ready(&url, None, None)
                    .await
                    .unwrap_or_else(|e| panic!("Redis container not ready: {e}"));
                TestRedis {
                    url,
                    edition,
                    server: Server::Container(Box::new(container)),
                }
            }
            Mode::Url(url) => {
                wait_ready(&url, None, None)
                    .await
                    .unwrap_or_else(|e| panic!("{ENV}: {url} not reachable: {e}"));
                TestRedis {
                    url,
                    edition,
                    server: Server::External,
                }
            }
        }
    }

    /// The server's URL (with the password, if any).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// This test's edition: every key from [`TestRedis::key`] uses it.
    pub fn edition(&self) -> &str {
        &self.edition
    }

    /// A match key of this test.
    pub fn key(&self, root: &str) -> MatchKey {
        MatchKey::new(DOMAIN, &self.edition, root).expect("valid test key")
    }

    /// A store connected to this server (over TLS with [`TestRedis::tls`]
    /// for a TLS server).
    pub async fn store(&self) -> RedisStore {
        let urls = std::slice::from_ref(&self.url);
        let connected = match self.tls() {
            None => RedisStore::connect(urls).await,
            Some(tls) => RedisStore::connect_tls(urls, RedisOptions::default(), &tls).await,
        };
        connected.unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url))
    }

    /// A TLS server's certificates.
    pub fn pki(&self) -> Option<&TestPki> {
        match &self.server {
            Server::Process(process) => process.pki.as_ref(),
            _ => None,
        }
    }

    /// What a client needs to connect to a TLS server: the CA, plus the
    /// client certificate if the server asks for one.
    pub fn tls(&self) -> Option<RedisTls> {
        let Server::Process(process) = &self.server else {
            return None;
        };
        match (&process.pki, process.options.tls) {
            (Some(pki), Some(ServerTls { auth_clients: true })) => {
                Some(pki.trust_with_client_cert())
            }
            (Some(pki), _) => Some(pki.trust()),
            (None, _) => None,
        }
    }

    /// The child process, in process mode (crash and restart tests).
    pub fn process(&mut self) -> Option<&mut RedisProcess> {
        match &mut self.server {
            Server::Process(process) => Some(&mut **process),
            _ => None,
        }
    }
}

/// Starts a container with Redis's port mapped to a free host port.
///
/// The host port is chosen here rather than left to the engine: Podman's
/// Docker API reports published ports with an empty host IP, which
/// testcontainers does not map back.
async fn start_container(
    options: &ServerOptions,
) -> Result<(ContainerAsync<GenericImage>, u16), String> {
    let mut cmd = vec![
        "redis-server".to_owned(),
        "--bind".to_owned(),
        "0.0.0.0".to_owned(),
        "--protected-mode".to_owned(),
        "no".to_owned(),
    ];
    cmd.extend(options.args());
    let mut errors = Vec::new();
    for _ in 0..PORT_ATTEMPTS {
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let started = GenericImage::new(IMAGE.0, IMAGE.1)
            .with_exposed_port(6379.tcp())
            .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
            .with_cmd(cmd.clone())
            .with_mapped_port(port, 6379.tcp())
            .with_startup_timeout(Duration::from_secs(60))
            .start()
            .await;
        match started {
            Ok(container) => return Ok((container, port)),
            Err(e) => errors.push(format!("host port {port}: {e}")),
        }
    }
    Err(errors.join("; "))
}

fn with_password(url: &str, options: &ServerOptions) -> String {
    match &options.password {
        Some(password) => url.replacen("://", &format!("://:{password}@"), 1),
        None => url.to_owned(),
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Connects (with `pki`'s CA and client certificate if given) and PINGs
/// until the server answers, the child exits, or [`READY_TIMEOUT`] passes.
async fn wait_ready(
    url: &str,
    pki: Option<&TestPki>,
    mut child: Option<&mut Child>,
) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let client = match pki {
        None => redis::Client::open(url),
        Some(pki) => {
            // redis-rs takes rustls's process-wide provider.
            let _ = rustls::crypto::ring::default_provider().install_default();
            redis::Client::build_with_tls(url, pki.certificates())
        }
    }
    .map_err(|e| e.to_string())?;
    loop {
        if let Some(child) = child.as_deref_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            return Err(format!("redis-server exited with {status}"));
        }
        let attempt = async {
            let mut con = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut con).await
        };
        let last_error = match tokio::time::timeout(Duration::from_secs(1), attempt).await {
            Ok(Ok(pong)) if pong == "PONG" => return Ok(()),
            Ok(Ok(other)) => format!("PING answered {other:?}"),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "PING timed out".to_owned(),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "no PONG within {READY_TIMEOUT:?}; last error: {last_error}"
            ));
        }
        // A poll interval, not a wait for readiness.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A `redis-server` child process on a loopback port, with its own
/// directory; killed on drop.
pub struct RedisProcess {
    child: Option<Child>,
    port: u16,
    cluster_port: Option<u16>,
    dir: TempDir,
    options: ServerOptions,
    pki: Option<TestPki>,
}

impl RedisProcess {
    /// Starts a server on a free port, retrying with another port if the
    /// chosen one was taken in between. A TLS server gets a fresh
    /// [`TestPki`] in its directory.
    pub async fn spawn(options: ServerOptions) -> Result<RedisProcess, String> {
        Self::spawn_with_pki(options, None).await
    }

    /// Like [`RedisProcess::spawn`]; a TLS server uses `pki` if given (the
    /// nodes of a TLS cluster share one CA and certificates).
    async fn spawn_with_pki(
        options: ServerOptions,
        pki: Option<TestPki>,
    ) -> Result<RedisProcess, String> {
        let dir = tempfile::Builder::new()
            .prefix("tickforge-redis-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let pki = options
            .tls
            .map(|_| pki.unwrap_or_else(|| TestPki::generate(dir.path(), "redis")));
        let mut process = RedisProcess {
            child: None,
            port: 0,
            cluster_port: None,
            dir,
            options,
            pki,
        };
        let mut errors = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            process.port = free_port().map_err(|e| format!("no free port: {e}"))?;
            if process.options.cluster {
                process.cluster_port = Some(free_port().map_err(|e| format!("no free port: {e}"))?);
            }
            match process.launch().await {
                Ok(()) => return Ok(process),
                Err(e) => errors.push(format!("port {}: {e}", process.port)),
            }
        }
        Err(errors.join("; "))
    }

    /// Starts redis-server on `self.port` and waits for it.
    async fn launch(&mut self) -> Result<(), String> {
        let redis_server = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut cmd = Command::new(&redis_server);
        cmd.arg("--bind").arg("127.0.0.1");
        match (&self.pki, self.options.tls) {
            (Some(pki), Some(tls)) => {
                cmd.args(["--port", "0", "--tls-port"])
                    .arg(self.port.to_string())
                    .arg("--tls-cert-file")
                    .arg(&pki.server_cert_file)
                    .arg("--tls-key-file")
                    .arg(&pki.server_key_file)
                    .arg("--tls-ca-cert-file")
                    .arg(&pki.ca_file)
                    .arg("--tls-auth-clients")
                    .arg(if tls.auth_clients { "yes" } else { "no" });
                if self.options.cluster {
                    // The bus always asks the connecting node for a
                    // certificate: present the client one (the server
                    // certificate is for server authentication only).
                    cmd.args(["--tls-cluster", "yes", "--tls-replication", "yes"])
                        .arg("--tls-client-cert-file")
                        .arg(&pki.client_cert_file)
                        .arg("--tls-client-key-file")
                        .arg(&pki.client_key_file);
                }
            }
            _ => {
                cmd.arg("--port").arg(self.port.to_string());
            }
        }
        cmd.arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .arg("--daemonize")
            .arg("no")
            .args(self.options.args());
        if let Some(cluster_port) = self.cluster_port {
            cmd.args(["--cluster-enabled", "yes", "--cluster-port"])
                .arg(cluster_port.to_string())
                .arg("--cluster-config-file")
                .arg(self.dir.path().join("nodes.conf"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("cannot run {redis_server} (install it with `apt-get install -y redis-server`): {e}")
            })?;
        self.child = Some(child);
        let url = self.url();
        match wait_ready(&url, self.pki.as_ref(), self.child.as_mut()).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.kill();
                Err(format!("{e}; log: {}", self.log_tail()))
            }
        }
    }

    /// The server's URL (with the password, if any): `rediss://` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.pki.is_some() {
            "rediss"
        } else {
            "redis"
        };
        with_password(
            &format!("{scheme}://127.0.0.1:{}", self.port),
            &self.options,
        )
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's working directory (AOF and RDB files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The end of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let mut log = String::new();
        if let Ok(mut file) = std::fs::File::open(self.log_path()) {
            let _ = file.read_to_string(&mut log);
        }
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// Kills the server at once (SIGKILL: a crash, no final fsync).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (after
    /// [`RedisProcess::kill`]), so it reloads whatever it persisted.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.launch().await
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of child processes, every slot covered, no replicas;
/// every node is killed on drop (on a panic too).
pub struct TestCluster {
    nodes: Vec<RedisProcess>,
    edition: String,
    /// A TLS cluster's certificates, shared by every node, and the
    /// directory holding them (dropped after the nodes).
    pki: Option<(TestPki, TempDir)>,
}

impl TestCluster {
    /// Starts `size` nodes, spreads the 16384 slots over them, joins them
    /// and waits until every node reports `cluster_state:ok`.
    pub async fn start(size: usize) -> TestCluster {
        assert!(size > 0, "a cluster needs a node");
        let mut nodes = Vec::with_capacity(size);
        for _ in 0..size {
            let options = ServerOptions {
                cluster: true,
                ..ServerOptions::default()
            };
            nodes.push(
                RedisProcess::spawn(options)
                    .await
                    .unwrap_or_else(|e| panic!("cannot start a cluster node: {e}")),
            );
        }
        let per_node = 16_384 / size;
        for (i, node) in nodes.iter().enumerate() {
            let first = i * per_node;
            let last = if i + 1 == size {
                16_383
            } else {
                first + per_node - 1
            };
            let mut con = connect(&node.url()).await;
            let () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(first)
                .arg(last)
                .query_async(&mut con)
                .await
                .unwrap_or_else(|e| panic!("CLUSTER ADDSLOTSRANGE: {e}"));
            if i > 0 {
                let () = redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(node.port())
                    .arg(node.cluster_port.expect("cluster node"))
                    .query_async(&mut connect(&nodes[0].url()).await)
                    .await
                    .unwrap_or_else(|e| panic!("CLUSTER MEET: {e}"));
            }
        }
        wait_cluster_ok(&nodes).await;
        TestCluster {
            nodes,
            edition: unique_edition(),
            pki: None,
        }
    }

    /// Starts `size` (at least 3) masters serving TLS only, clients (no
    /// client certificate asked for) and cluster bus alike, all with the
    /// certificates of one fresh [`TestPki`]; creates the cluster with
    /// `redis-cli --cluster create` (`REDIS_CLI` overrides the binary) and
    /// waits until every node reports `cluster_state:ok`.
    pub async fn start_tls(size: usize) -> TestCluster {
        assert!(size >= 3, "redis-cli --cluster create needs 3 masters");
        let pki_dir = tempfile::Builder::new()
            .prefix("tickforge-redis-pki-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let pki = TestPki::generate(pki_dir.path(), "cluster");
        let mut nodes = Vec::with_capacity(size);
        for _ in 0..size {
            let options = ServerOptions {
                cluster: true,
                tls: ServerTls::server_only(),
                ..ServerOptions::default()
            };
            nodes.push(
                RedisProcess::spawn_with_pki(options, Some(pki.clone()))
                    .await
                    .unwrap_or_else(|e| panic!("cannot start a TLS cluster node: {e}")),
            );
        }
        let redis_cli = std::env::var("REDIS_CLI").unwrap_or_else(|_| "redis-cli".into());
        let mut cmd = Command::new(&redis_cli);
        cmd.arg("--tls")
            .arg("--cacert")
            .arg(&pki.ca_file)
            .args(["--cluster", "create"])
            .args(
                nodes
                    .iter()
                    .map(|node| format!("127.0.0.1:{}", node.port())),
            )
            .args(["--cluster-replicas", "0", "--cluster-yes"]);
        let log = pki_dir.path().join("redis-cli.log");
        if let Err(e) = run_bounded(cmd, &log, READY_TIMEOUT).await {
            let tails: Vec<String> = nodes.iter().map(RedisProcess::log_tail).collect();
            panic!(
                "{redis_cli} --cluster create: {e}; node logs:\n{}",
                tails.join("\n--\n")
            );
        }
        wait_cluster_ok(&nodes).await;
        TestCluster {
            nodes,
            edition: unique_edition(),
            pki: Some((pki, pki_dir)),
        }
    }

    /// Every node's URL (`rediss://` for a TLS cluster): the seeds for
    /// [`RedisStore::connect`].
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisProcess::url).collect()
    }

    /// This cluster's test edition.
    pub fn edition(&self) -> &str {
        &self.edition
    }

    /// A match key of this cluster's edition.
    pub fn key(&self, root: &str) -> MatchKey {
        MatchKey::new(DOMAIN, &self.edition, root).expect("valid test key")
    }

    /// A TLS cluster's certificates.
    pub fn pki(&self) -> Option<&TestPki> {
        self.pki.as_ref().map(|(pki, _)| pki)
    }

    /// A store connected to the cluster (trusting the test CA for a TLS
    /// cluster).
    pub async fn store(&self) -> RedisStore {
        let urls = self.urls();
        let connected = match self.pki() {
            None => RedisStore::connect(&urls).await,
            Some(pki) => {
                RedisStore::connect_tls(&urls, RedisOptions::default(), &pki.trust()).await
            }
        };
        let store = connected.unwrap_or_else(|e| panic!("cannot connect to the cluster: {e}"));
        assert!(store.is_cluster());
        store
    }

    /// A plain (not cluster-aware) connection to node `index`.
    pub async fn node_connection(&self, index: usize) -> redis::aio::MultiplexedConnection {
        connect_node(&self.nodes[index]).await
    }

    /// The index of the node serving `key`'s slot: the one that answers
    /// `EXISTS key` instead of redirecting it (`MOVED`).
    pub async fn owner(&self, key: &str) -> usize {
        let mut refusals = Vec::new();
        for index in 0..self.nodes.len() {
            let mut con = self.node_connection(index).await;
            match redis::cmd("EXISTS")
                .arg(key)
                .query_async::<u64>(&mut con)
                .await
            {
                Ok(_) => return index,
                Err(e) => refusals.push(format!("node {index}: {e}")),
            }
        }
        panic!("no node serves {key}: {}", refusals.join("; "))
    }
}

/// Waits until every node reports `cluster_state:ok` and knows all the
/// others, polling until [`READY_TIMEOUT`].
async fn wait_cluster_ok(nodes: &[RedisProcess]) {
    let deadline = Instant::now() + READY_TIMEOUT;
    let known = format!("cluster_known_nodes:{}", nodes.len());
    for node in nodes {
        let mut con = connect_node(node).await;
        loop {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut con)
                .await
                .unwrap_or_else(|e| panic!("CLUSTER INFO: {e}"));
            if info.contains("cluster_state:ok") && info.contains(&known) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cluster not ready within {READY_TIMEOUT:?}: {info}"
            );
            // A poll interval while gossip converges.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A child process killed on drop (a fixture's helper command).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs `cmd` with its output in `log`, polling until it exits; killed
/// past `timeout`. Fails with the output unless it exits with success.
async fn run_bounded(mut cmd: Command, log: &Path, timeout: Duration) -> Result<(), String> {
    let output = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let errors = output
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(output)
        .stderr(errors)
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let mut child = KillOnDrop(child);
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.0.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                break Err(format!("still running after {timeout:?}"));
            }
            Ok(None) => {}
            Err(e) => break Err(e.to_string()),
        }
        // A poll interval, not a wait for the command.
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(child);
    let text = std::fs::read_to_string(log).unwrap_or_default();
    match status {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("exited with {status}; output:\n{text}")),
        Err(e) => Err(format!("{e}; output:\n{text}")),
    }
}

/// A plain connection to one node, over TLS (with the test CA and client
/// certificate) for a TLS node.
async fn connect_node(node: &RedisProcess) -> redis::aio::MultiplexedConnection {
    let url = node.url();
    let client = match &node.pki {
        None => redis::Client::open(url.as_str()),
        Some(pki) => {
            // redis-rs takes rustls's process-wide provider.
            let _ = rustls::crypto::ring::default_provider().install_default();
            redis::Client::build_with_tls(url.as_str(), pki.certificates())
        }
    }
    .unwrap_or_else(|e| panic!("{url}: {e}"));
    client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// Takes `wanted.len()` events from `follower`, each within 10 s, and
/// checks each against `wanted`.
pub async fn expect_events(follower: &mut Follower, wanted: &[RecordedEvent]) {
    for event in wanted {
        let got = tokio::time::timeout(Duration::from_secs(10), follower.next())
            .await
            .expect("follower stalled")
            .unwrap();
        assert_eq!(&got, event);
    }
}

/// How many times the server behind `con` has run `command` (lower case,
/// e.g. `publish`), calls from scripts included (`INFO commandstats`).
pub async fn command_calls(con: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}
