//! Configuration: a TOML file plus environment, validated into [`Config`].
//!
//! The file format follows the storage note (`[storage] backend`,
//! `[storage.redis] url` or `urls`) and adds an `[engine]` table. The
//! environment overrides the file: `STORAGE_BACKEND`, and `REDIS_URL`
//! (which selects the Redis backend unless `STORAGE_BACKEND` says
//! otherwise). Every error names the key or variable, the value, and the
//! file it came from. Defaults live in `assets/tickforge.toml`. Files the
//! configuration names (certificates, keys) are read by whoever uses them,
//! e.g. [`AnyStore::open`](crate::store::AnyStore::open), not here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::admin::AdminConfig;
use crate::engine::{Durability, EngineSettings, EventRetention, MatchPolicy};
use crate::net::{DatagramLoss, NetConfig, ServerSecret, TlsSource};
use crate::store::keys::DEFAULT_EDITION;

/// The default configuration file, as shipped.
pub const DEFAULT_CONFIG: &str = include_str!("../assets/tickforge.toml");

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Engine settings.
    pub engine: EngineSettings,
    /// The edition (timeline) matches are stored under.
    pub edition: String,
    /// Where matches are stored.
    pub storage: StorageConfig,
    /// The QUIC server (`[net]`).
    pub net: NetConfig,
    /// The admin HTTP listener (`[admin]`).
    pub admin: AdminConfig,
    /// The node as a whole (`[server]`).
    pub server: ServerSettings,
    /// Membership of a fleet of nodes on one store (`[fleet]`); `None`
    /// runs a single node that owns every match without leases.
    pub fleet: Option<FleetConfig>,
}

/// A node of a fleet: the `[fleet]` table, present when a node id is set
/// (`fleet.node_id`, or the `TICKFORGE_NODE_ID` environment variable, e.g.
/// a StatefulSet's pod name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// Stable per host; the rules of key names apply.
    pub node_id: String,
    /// Where clients reach this node's QUIC listener (`host:port`), as the
    /// directory lists it and redirects name it (`fleet.public_addr` or
    /// `TICKFORGE_PUBLIC_ADDR`; default: the QUIC listen address).
    pub public_addr: Option<String>,
    /// How long a lease lasts without renewal: a dead node's matches are
    /// taken over after about this long (`fleet.lease_ttl_ms`).
    pub lease_ttl: Duration,
    /// Matches this node hosts at most (`fleet.max_matches`); past it, new
    /// matches are redirected to the least-loaded node.
    pub max_matches: u32,
}

impl FleetConfig {
    /// A fleet node `node_id` with the default lease and capacity.
    pub fn new(node_id: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            public_addr: None,
            lease_ttl: Duration::from_millis(DEFAULT_LEASE_TTL_MS),
            max_matches: DEFAULT_MAX_MATCHES,
        }
    }
}

const DEFAULT_LEASE_TTL_MS: u64 = 5_000;
const DEFAULT_MAX_MATCHES: u32 = 10_000;

/// How a node runs as a whole: the `[server]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// How long a drain (SIGTERM or SIGINT) may take: closing connections,
    /// the last tick, final snapshots and flushing every queued write.
    pub drain: std::time::Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            drain: std::time::Duration::from_secs(20),
        }
    }
}

/// The storage backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// The embedded in-memory store: nothing survives the process.
    Memory {
        /// How long a finished match keeps its log and snapshot before
        /// they are freed (`storage.memory.retain_finished_seconds`; zero:
        /// freed when it finishes). See [`crate::store::MemoryStore::with_retention`].
        retain_finished: Duration,
    },
    /// Redis, single node (one URL) or cluster (several).
    Redis {
        /// `redis://` or `rediss://` URLs, password included where needed.
        urls: Vec<String>,
        /// TLS files for `rediss://` URLs (`storage.redis.tls_*`).
        tls: RedisTlsFiles,
    },
}

/// PEM files for TLS to Redis (`[storage.redis] tls_ca_file`,
/// `tls_cert_file`, `tls_key_file`); empty means none. Paths are relative
/// to the working directory; the files are read when the store opens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTlsFiles {
    /// `tls_ca_file`: the root CA certificate(s) to trust instead of the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// `tls_cert_file` and `tls_key_file`: a client certificate for mutual
    /// TLS.
    pub client: Option<ClientCertFiles>,
}

impl RedisTlsFiles {
    /// Whether no file is configured.
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.client.is_none()
    }
}

/// A client certificate (chain) file and its private key file, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertFiles {
    /// `tls_cert_file`.
    pub cert_file: PathBuf,
    /// `tls_key_file`.
    pub key_file: PathBuf,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file does not exist.
    #[error("config file {} not found", path.display())]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("{origin}: {message}")]
    Parse {
        /// The file.
        origin: String,
        /// The parser's message (it quotes the offending line and key).
        message: String,
    },
    /// `storage.backend` (or `STORAGE_BACKEND`) is neither memory nor redis.
    #[error(
        "{origin}: unknown storage backend {value:?} in {key} (expected \"memory\" or \"redis\")"
    )]
    UnknownBackend {
        /// The file or "environment".
        origin: String,
        /// `storage.backend` or `STORAGE_BACKEND`.
        key: String,
        /// The value found.
        value: String,
    },
    /// A value of the right type but outside what is allowed.
    #[error("{origin}: invalid {key} = {value}: {reason}")]
    Invalid {
        /// The file or "environment".
        origin: String,
        /// The key or variable.
        key: String,
        /// The value found.
        value: String,
        /// What is allowed.
        reason: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    engine: RawEngine,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    net: RawNet,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    fleet: RawFleet,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    node_id: Option<String>,
    public_addr: Option<String>,
    lease_ttl_ms: Option<u64>,
    max_matches: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    drain_seconds: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNet {
    listen: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    dev_cert: Option<PathBuf>,
    dev_key: Option<PathBuf>,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    grace_seconds: Option<f64>,
    state_every_ticks: Option<u64>,
    max_frame_bytes: Option<usize>,
    commands_per_second: Option<u32>,
    open_mode: Option<bool>,
    max_connections: Option<usize>,
    admit_max_cpu_percent: Option<u32>,
    admit_max_tick_load_percent: Option<u32>,
    admit_max_lag_ms: Option<u64>,
    admit_max_send_delay_ms: Option<u64>,
    admit_max_receive_queue_kib: Option<u64>,
    full_retry_ms: Option<u64>,
    write_timeout_ms: Option<u64>,
    test_datagram_loss_per_mille: Option<u16>,
    test_datagram_loss_seed: Option<u64>,
    batch_sends: Option<bool>,
    socket_buffer_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    tick_hz: Option<u32>,
    tick_phases: Option<u32>,
    snapshot_every_ticks: Option<u64>,
    shards: Option<usize>,
    shard_queue: Option<usize>,
    match_queue: Option<usize>,
    write_queue_ticks: Option<usize>,
    write_queue_bytes: Option<u64>,
    durability: Option<String>,
    edition: Option<String>,
    trim_events_below_snapshot: Option<bool>,
    trim_keeps_events_for: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    backend: Option<String>,
    #[serde(default)]
    memory: RawMemory,
    #[serde(default)]
    redis: RawRedis,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMemory {
    retain_finished_seconds: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: Option<String>,
    urls: Option<Vec<String>>,
    tls_ca_file: Option<PathBuf>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
}

impl Config {
    /// Reads `path` (or the built-in defaults when `None`) and applies the
    /// process environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, |name| std::env::var(name).ok())
    }

    /// Like [`Config::load`], with the environment given as a lookup.
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let (text, origin) = match path {
            None => (DEFAULT_CONFIG.to_owned(), "built-in defaults".to_owned()),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| {
                    if source.kind() == std::io::ErrorKind::NotFound {
                        ConfigError::NotFound {
                            path: path.to_owned(),
                        }
                    } else {
                        ConfigError::Read {
                            path: path.to_owned(),
                            source,
                        }
                    }
                })?;
                (text, path.display().to_string())
            }
        };
        Self::parse(&text, &origin, env)
    }

    /// Parses TOML text; `origin` names it in errors.
    pub fn parse(
        text: &str,
        origin: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid =
            |key: &str, value: &dyn std::fmt::Display, reason: &str| ConfigError::Invalid {
                origin: origin.to_owned(),
                key: key.to_owned(),
                value: value.to_string(),
                reason: reason.to_owned(),
            };
        let defaults = EngineSettings::default();
        let e = raw.engine;

        let tick_hz = e.tick_hz.unwrap_or(defaults.tick_hz);
        if !(1..=1000).contains(&tick_hz) {
            return Err(invalid("engine.tick_hz", &tick_hz, "must be 1 to 1000"));
        }
        let tick_phases = e.tick_phases.unwrap_or(defaults.tick_phases);
        if !(1..=16).contains(&tick_phases) || tick_hz.saturating_mul(tick_phases) > 1000 {
            return Err(invalid(
                "engine.tick_phases",
                &tick_phases,
                "must be 1 to 16, and tick_hz × tick_phases at most 1000",
            ));
        }
        let snapshot_every_ticks = e
            .snapshot_every_ticks
            .unwrap_or(defaults.policy.snapshot_every_ticks);
        if snapshot_every_ticks == 0 {
            return Err(invalid(
                "engine.snapshot_every_ticks",
                &0,
                "must be at least 1",
            ));
        }
        let shards = match e.shards {
            None | Some(0) => defaults.shards,
            Some(n) if n > 1024 => {
                return Err(invalid(
                    "engine.shards",
                    &n,
                    "must be at most 1024 (0 = one per core)",
                ));
            }
            Some(n) => n,
        };
        let positive = |key: &str, value: Option<usize>, default: usize| match value {
            Some(0) => Err(invalid(key, &0, "must be at least 1")),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let shard_queue = positive("engine.shard_queue", e.shard_queue, defaults.shard_queue)?;
        let max_pending = positive(
            "engine.match_queue",
            e.match_queue,
            defaults.policy.max_pending,
        )?;
        let write_queue_ticks = positive(
            "engine.write_queue_ticks",
            e.write_queue_ticks,
            defaults.write_queue_ticks,
        )?;
        let write_queue_bytes = match e.write_queue_bytes {
            Some(0) => {
                return Err(invalid(
                    "engine.write_queue_bytes",
                    &0,
                    "must be at least 1 (bytes of writes a shard may queue)",
                ));
            }
            Some(n) => n,
            None => defaults.write_queue_bytes,
        };
        let durability = match e.durability.as_deref() {
            None => defaults.durability,
            Some("async") => Durability::Async,
            Some("sync") => Durability::Sync,
            Some(other) => {
                return Err(invalid(
                    "engine.durability",
                    &format!("{other:?}"),
                    "expected \"async\" or \"sync\"",
                ));
            }
        };
        let edition = e.edition.unwrap_or_else(|| DEFAULT_EDITION.to_owned());
        if let Err(error) = crate::store::keys::check_name("edition", &edition) {
            return Err(invalid(
                "engine.edition",
                &format!("{edition:?}"),
                error.reason,
            ));
        }

        let keep_for = e.trim_keeps_events_for.unwrap_or_default();
        for handler in &keep_for {
            if let Err(error) = crate::store::keys::check_name("handler", handler) {
                return Err(invalid(
                    "engine.trim_keeps_events_for",
                    &format!("{handler:?}"),
                    error.reason,
                ));
            }
        }
        let retention = if e.trim_events_below_snapshot.unwrap_or(false) {
            EventRetention::TrimBelowSnapshot { keep_for }
        } else {
            EventRetention::Full
        };

        let storage = storage_config(raw.storage, origin, &env)?;
        let net = net_config(raw.net, origin, &env)?;
        let admin = admin_config(raw.admin, origin)?;
        let drain_seconds = raw.server.drain_seconds.unwrap_or(20.0);
        if !(drain_seconds > 0.0 && drain_seconds <= 3600.0) {
            return Err(invalid(
                "server.drain_seconds",
                &drain_seconds,
                "must be more than 0 and at most 3600",
            ));
        }
        let server = ServerSettings {
            drain: std::time::Duration::from_secs_f64(drain_seconds),
        };
        let fleet = fleet_config(raw.fleet, origin, &env)?;
        let lease = fleet.as_ref().map(|fleet| crate::engine::LeaseSettings {
            node: fleet.node_id.clone(),
            ttl: fleet.lease_ttl,
        });
        Ok(Config {
            server,
            fleet,
            engine: EngineSettings {
                tick_hz,
                tick_phases,
                shards,
                shard_queue,
                write_queue_ticks,
                write_queue_bytes,
                policy: MatchPolicy {
                    max_pending,
                    snapshot_every_ticks,
                },
                durability,
                retention,
                lease,
            },
            edition,
            storage,
            net,
            admin,
        })
    }
}

/// `[fleet]`, with `TICKFORGE_NODE_ID` and `TICKFORGE_PUBLIC_ADDR` over
/// the file: `None` without a node id.
fn fleet_config(
    raw: RawFleet,
    origin: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<FleetConfig>, ConfigError> {
    let invalid = |key: &str, value: &dyn std::fmt::Display, reason: &str| ConfigError::Invalid {
        origin: origin.to_owned(),
        key: key.to_owned(),
        value: value.to_string(),
        reason: reason.to_owned(),
    };
    let from_env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let node_id = match from_env("TICKFORGE_NODE_ID") {
        Some(id) => Some((id, "TICKFORGE_NODE_ID")),
        None => raw.node_id.map(|id| (id, "fleet.node_id")),
    };
    let Some((node_id, node_key)) = node_id else {
        let set =
            raw.public_addr.is_some() || raw.lease_ttl_ms.is_some() || raw.max_matches.is_some();
        if set {
            return Err(invalid(
                "fleet.node_id",
                &"(unset)",
                "a [fleet] table needs a node id (or TICKFORGE_NODE_ID)",
            ));
        }
        return Ok(None);
    };
    if let Err(error) = crate::store::keys::check_name("node", &node_id) {
        return Err(invalid(node_key, &format!("{node_id:?}"), error.reason));
    }
    let public_addr = match from_env("TICKFORGE_PUBLIC_ADDR") {
        Some(addr) => Some((addr, "TICKFORGE_PUBLIC_ADDR")),
        None => raw.public_addr.map(|addr| (addr, "fleet.public_addr")),
    };
    if let Some((addr, key)) = &public_addr {
        let valid = addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && port.parse::<u16>().is_ok_and(|p| p > 0)
                && !addr.contains(char::is_whitespace)
        });
        if !valid {
            return Err(invalid(key, &format!("{addr:?}"), "expected host:port"));
        }
    }
    let lease_ttl_ms = raw.lease_ttl_ms.unwrap_or(DEFAULT_LEASE_TTL_MS);
    if !(500..=600_000).contains(&lease_ttl_ms) {
        return Err(invalid(
            "fleet.lease_ttl_ms",
            &lease_ttl_ms,
            "must be 500 to 600000",
        ));
    }
    let max_matches = raw.max_matches.unwrap_or(DEFAULT_MAX_MATCHES);
    if max_matches == 0 {
        return Err(invalid("fleet.max_matches", &0, "must be at least 1"));
    }
    Ok(Some(FleetConfig {
        node_id,
        public_addr: public_addr.map(|(addr, _)| addr),
        lease_ttl: Duration::from_millis(lease_ttl_ms),
        max_matches,
    }))
}

/// `[admin] listen`: an address and port, or an empty string for none.
fn admin_config(raw: RawAdmin, origin: &str) -> Result<AdminConfig, ConfigError> {
    let listen = match raw.listen {
        None => AdminConfig::default().listen,
        Some(text) if text.trim().is_empty() => None,
        Some(text) => Some(text.parse().map_err(|_| {
            ConfigError::Invalid {
                origin: origin.to_owned(),
                key: "admin.listen".to_owned(),
                value: format!("{text:?}"),
                reason:
                    "expected an IP address and port, e.g. \"127.0.0.1:9100\", or \"\" for none"
                        .to_owned(),
            }
        })?),
    };
    Ok(AdminConfig { listen })
}

fn net_config(
    raw: RawNet,
    origin: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<NetConfig, ConfigError> {
    let invalid = |key: &str, value: &dyn std::fmt::Display, reason: &str| ConfigError::Invalid {
        origin: origin.to_owned(),
        key: key.to_owned(),
        value: value.to_string(),
        reason: reason.to_owned(),
    };
    let defaults = NetConfig::default();
    let listen = match raw.listen {
        None => defaults.listen,
        Some(text) => text.parse().map_err(|_| {
            invalid(
                "net.listen",
                &format!("{text:?}"),
                "expected an IP address and port, e.g. \"0.0.0.0:4433\"",
            )
        })?,
    };
    let tls = match (raw.cert, raw.key) {
        (Some(cert), Some(key)) => TlsSource::Files { cert, key },
        (None, None) => {
            let TlsSource::Dev { cert, key } = TlsSource::default() else {
                unreachable!("the default is a development certificate")
            };
            TlsSource::Dev {
                cert: raw.dev_cert.unwrap_or(cert),
                key: raw.dev_key.unwrap_or(key),
            }
        }
        (Some(cert), None) => {
            return Err(invalid(
                "net.key",
                &"(missing)",
                &format!("net.cert = {:?} needs net.key as well", cert.display()),
            ));
        }
        (None, Some(key)) => {
            return Err(invalid(
                "net.cert",
                &"(missing)",
                &format!("net.key = {:?} needs net.cert as well", key.display()),
            ));
        }
    };
    let env_secret = env("TICKFORGE_SECRET").filter(|s| !s.is_empty());
    let secret_bytes = match (env_secret, raw.secret, raw.secret_file) {
        (Some(secret), _, _) => Some((
            "TICKFORGE_SECRET",
            "environment".to_owned(),
            secret.into_bytes(),
        )),
        (None, Some(_), Some(_)) => {
            return Err(invalid(
                "net.secret_file",
                &"(set)",
                "give net.secret or net.secret_file, not both",
            ));
        }
        (None, Some(secret), None) => Some(("net.secret", origin.to_owned(), secret.into_bytes())),
        (None, None, Some(path)) => {
            let text = std::fs::read_to_string(&path).map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    ConfigError::NotFound { path: path.clone() }
                } else {
                    ConfigError::Read {
                        path: path.clone(),
                        source,
                    }
                }
            })?;
            Some((
                "net.secret_file",
                origin.to_owned(),
                text.trim().as_bytes().to_vec(),
            ))
        }
        (None, None, None) => None,
    };
    let secret =
        match secret_bytes {
            None => None,
            Some((key, secret_origin, bytes)) => Some(ServerSecret::new(bytes).map_err(
                |weak| ConfigError::Invalid {
                    origin: secret_origin,
                    key: key.to_owned(),
                    value: "(redacted)".to_owned(),
                    reason: weak.to_string(),
                },
            )?),
        };
    let grace = match raw.grace_seconds {
        None => defaults.grace,
        Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => {
            std::time::Duration::from_secs_f64(s)
        }
        Some(s) => {
            return Err(invalid(
                "net.grace_seconds",
                &s,
                "must be more than 0 and at most 86400",
            ));
        }
    };
    let state_every_ticks = match raw.state_every_ticks {
        None => defaults.state_every_ticks,
        Some(n @ 1..=1000) => n,
        Some(n) => return Err(invalid("net.state_every_ticks", &n, "must be 1 to 1000")),
    };
    let max_frame_bytes = match raw.max_frame_bytes {
        None => defaults.max_frame_bytes,
        Some(n @ 256..=16_777_216) => n,
        Some(n) => {
            return Err(invalid(
                "net.max_frame_bytes",
                &n,
                "must be 256 to 16777216",
            ));
        }
    };
    let commands_per_second = match raw.commands_per_second {
        None => defaults.commands_per_second,
        Some(n @ 1..=100_000) => n,
        Some(n) => {
            return Err(invalid(
                "net.commands_per_second",
                &n,
                "must be 1 to 100000",
            ));
        }
    };
    let max_connections = match raw.max_connections {
        None => defaults.max_connections,
        Some(0) => return Err(invalid("net.max_connections", &0, "must be at least 1")),
        Some(n) => n,
    };
    let admit_max_cpu_percent = match raw.admit_max_cpu_percent {
        None => defaults.admit_max_cpu_percent,
        Some(n @ 0..=100) => n,
        Some(n) => {
            return Err(invalid(
                "net.admit_max_cpu_percent",
                &n,
                "must be 0 (no limit) to 100 (percent of the process's cores)",
            ));
        }
    };
    let admit_max_tick_load_percent = match raw.admit_max_tick_load_percent {
        None => defaults.admit_max_tick_load_percent,
        Some(n @ 0..=100) => n,
        Some(n) => {
            return Err(invalid(
                "net.admit_max_tick_load_percent",
                &n,
                "must be 0 (no limit) to 100 (percent of the tick budget)",
            ));
        }
    };
    let admit_max_lag = match raw.admit_max_lag_ms {
        None => defaults.admit_max_lag,
        Some(ms @ 0..=10_000) => std::time::Duration::from_millis(ms),
        Some(ms) => {
            return Err(invalid(
                "net.admit_max_lag_ms",
                &ms,
                "must be 0 (no limit) to 10000 (milliseconds)",
            ));
        }
    };
    let admit_max_send_delay = match raw.admit_max_send_delay_ms {
        None => defaults.admit_max_send_delay,
        Some(ms @ 0..=10_000) => std::time::Duration::from_millis(ms),
        Some(ms) => {
            return Err(invalid(
                "net.admit_max_send_delay_ms",
                &ms,
                "must be 0 (no limit) to 10000 (milliseconds)",
            ));
        }
    };
    let admit_max_receive_queue_bytes = match raw.admit_max_receive_queue_kib {
        None => defaults.admit_max_receive_queue_bytes,
        Some(kib @ 0..=1_048_576) => kib * 1024,
        Some(kib) => {
            return Err(invalid(
                "net.admit_max_receive_queue_kib",
                &kib,
                "must be 0 (no limit) to 1048576 (KiB, 1 GiB)",
            ));
        }
    };
    let full_retry_after = match raw.full_retry_ms {
        None => defaults.full_retry_after,
        Some(ms @ 1..=60_000) => std::time::Duration::from_millis(ms),
        Some(ms) => {
            return Err(invalid(
                "net.full_retry_ms",
                &ms,
                "must be 1 to 60000 (milliseconds)",
            ));
        }
    };
    let write_timeout = match raw.write_timeout_ms {
        None => defaults.write_timeout,
        Some(ms @ 10..=600_000) => std::time::Duration::from_millis(ms),
        Some(ms) => {
            return Err(invalid(
                "net.write_timeout_ms",
                &ms,
                "must be 10 to 600000 (milliseconds)",
            ));
        }
    };
    let socket_buffer_bytes = match raw.socket_buffer_bytes {
        None => defaults.socket_buffer_bytes,
        Some(n @ (0 | 65_536..=268_435_456)) => n,
        Some(n) => {
            return Err(invalid(
                "net.socket_buffer_bytes",
                &n,
                "must be 0 (the kernel's default) or 65536 to 268435456",
            ));
        }
    };
    let datagram_loss = match raw.test_datagram_loss_per_mille {
        None | Some(0) => None,
        Some(n @ 1..=1000) => Some(DatagramLoss {
            per_mille: n,
            seed: raw.test_datagram_loss_seed.unwrap_or(1),
        }),
        Some(n) => {
            return Err(invalid(
                "net.test_datagram_loss_per_mille",
                &n,
                "must be 0 to 1000",
            ));
        }
    };
    Ok(NetConfig {
        listen,
        tls,
        secret,
        grace,
        state_every_ticks,
        max_frame_bytes,
        commands_per_second,
        open_mode: raw.open_mode.unwrap_or(defaults.open_mode),
        max_connections,
        admit_max_cpu_percent,
        admit_max_tick_load_percent,
        admit_max_lag,
        admit_max_send_delay,
        admit_max_receive_queue_bytes,
        full_retry_after,
        write_timeout,
        datagram_loss,
        batch_sends: raw.batch_sends.unwrap_or(defaults.batch_sends),
        socket_buffer_bytes,
        ..defaults
    })
}

/// A week: the memory store is for one process, not an archive.
const MAX_RETAIN_FINISHED_SECONDS: f64 = 604_800.0;

fn storage_config(
    raw: RawStorage,
    origin: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<StorageConfig, ConfigError> {
    let env_url = env("REDIS_URL").filter(|u| !u.is_empty());
    let (backend, backend_origin, backend_key) =
        match env("STORAGE_BACKEND").filter(|b| !b.is_empty()) {
            Some(b) => (b, "environment".to_owned(), "STORAGE_BACKEND"),
            None => match (raw.backend, &env_url) {
                // REDIS_URL alone switches to Redis: the README's promise.
                (_, Some(_)) => ("redis".to_owned(), "environment".to_owned(), "REDIS_URL"),
                (Some(b), None) => (b, origin.to_owned(), "storage.backend"),
                (None, None) => ("memory".to_owned(), origin.to_owned(), "storage.backend"),
            },
        };
    match backend.as_str() {
        "memory" => {
            let retain_finished = match raw.memory.retain_finished_seconds {
                None => Duration::ZERO,
                Some(s) if s.is_finite() && (0.0..=MAX_RETAIN_FINISHED_SECONDS).contains(&s) => {
                    Duration::from_secs_f64(s)
                }
                Some(s) => {
                    return Err(ConfigError::Invalid {
                        origin: origin.to_owned(),
                        key: "storage.memory.retain_finished_seconds".into(),
                        value: s.to_string(),
                        reason: format!("must be 0 to {MAX_RETAIN_FINISHED_SECONDS}"),
                    });
                }
            };
            Ok(StorageConfig::Memory { retain_finished })
        }
        "redis" => {
            let (urls, url_origin, url_key) = match (env_url, raw.redis.urls, raw.redis.url) {
                (Some(url), _, _) => (vec![url], "environment", "REDIS_URL"),
                (None, Some(urls), _) if !urls.is_empty() => (urls, origin, "storage.redis.urls"),
                (None, _, Some(url)) => (vec![url], origin, "storage.redis.url"),
                (None, _, None) => {
                    return Err(ConfigError::Invalid {
                        origin: origin.to_owned(),
                        key: "storage.redis.url".into(),
                        value: "(missing)".into(),
                        reason: "the redis backend needs storage.redis.url, storage.redis.urls or REDIS_URL".into(),
                    });
                }
            };
            for url in &urls {
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return Err(ConfigError::Invalid {
                        origin: url_origin.to_owned(),
                        key: url_key.into(),
                        // Never echo a password into logs.
                        value: format!("{:?}", crate::store::redis::redact(url)),
                        reason: "must start with redis:// or rediss://".into(),
                    });
                }
            }
            let RawRedis {
                tls_ca_file,
                tls_cert_file,
                tls_key_file,
                ..
            } = raw.redis;
            let tls = redis_tls_files(tls_ca_file, tls_cert_file, tls_key_file, origin)?;
            if let Some(key) = tls_key_given(&tls)
                && let Some(url) = urls.iter().find(|url| !url.starts_with("rediss://"))
            {
                let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
                return Err(ConfigError::Invalid {
                    origin: origin.to_owned(),
                    key: key.into(),
                    value: "(set)".into(),
                    reason: format!(
                        "TLS files need rediss:// URLs, but {url_key} ({url_origin}) has a {scheme}:// URL"
                    ),
                });
            }
            Ok(StorageConfig::Redis { urls, tls })
        }
        _ => Err(ConfigError::UnknownBackend {
            origin: backend_origin,
            key: backend_key.to_owned(),
            value: backend,
        }),
    }
}

/// The `tls_*` keys: cert and key only together.
fn redis_tls_files(
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    origin: &str,
) -> Result<RedisTlsFiles, ConfigError> {
    let missing = |key: &str, given: &str, path: &Path| ConfigError::Invalid {
        origin: origin.to_owned(),
        key: format!("storage.redis.{key}"),
        value: "(missing)".into(),
        reason: format!(
            "storage.redis.{given} = {:?} needs storage.redis.{key} as well",
            path.display()
        ),
    };
    let client = match (cert_file, key_file) {
        (Some(cert_file), Some(key_file)) => Some(ClientCertFiles {
            cert_file,
            key_file,
        }),
        (None, None) => None,
        (Some(cert), None) => return Err(missing("tls_key_file", "tls_cert_file", &cert)),
        (None, Some(key)) => return Err(missing("tls_cert_file", "tls_key_file", &key)),
    };
    Ok(RedisTlsFiles { ca_file, client })
}

/// The first `tls_*` key set, if any.
fn tls_key_given(tls: &RedisTlsFiles) -> Option<&'static str> {
    match tls {
        RedisTlsFiles {
            ca_file: Some(_), ..
        } => Some("storage.redis.tls_ca_file"),
        RedisTlsFiles {
            client: Some(_), ..
        } => Some("storage.redis.tls_cert_file"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn shipped_defaults_parse() {
        let config = Config::load_with_env(None, no_env).unwrap();
        assert_eq!(config.engine.tick_hz, 30);
        assert_eq!(config.engine.policy.snapshot_every_ticks, 300);
        assert_eq!(
            config.storage,
            StorageConfig::Memory {
                retain_finished: Duration::ZERO
            }
        );
        assert_eq!(config.edition, "main");
    }

    #[test]
    fn redis_url_in_the_environment_selects_redis() {
        let env = |k: &str| (k == "REDIS_URL").then(|| "redis://127.0.0.1:7000".to_owned());
        let config = Config::load_with_env(None, env).unwrap();
        assert_eq!(
            config.storage,
            StorageConfig::Redis {
                urls: vec!["redis://127.0.0.1:7000".into()],
                tls: RedisTlsFiles::default(),
            }
        );
    }

    #[test]
    fn storage_backend_memory_wins_over_redis_url() {
        let env = |k: &str| match k {
            "REDIS_URL" => Some("redis://127.0.0.1:7000".to_owned()),
            "STORAGE_BACKEND" => Some("memory".to_owned()),
            _ => None,
        };
        assert_eq!(
            Config::load_with_env(None, env).unwrap().storage,
            StorageConfig::Memory {
                retain_finished: Duration::ZERO
            }
        );
    }

    #[test]
    fn cluster_urls_are_read() {
        let text = "[storage]\nbackend = \"redis\"\n[storage.redis]\nurls = [\"redis://a:1\", \"rediss://b:2\"]\n";
        let config = Config::parse(text, "t.toml", no_env).unwrap();
        assert_eq!(
            config.storage,
            StorageConfig::Redis {
                urls: vec!["redis://a:1".into(), "rediss://b:2".into()],
                tls: RedisTlsFiles::default(),
            }
        );
    }

    #[test]
    fn out_of_range_values_name_key_and_file() {
        let err = Config::parse("[engine]\ntick_hz = 0\n", "t.toml", no_env).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, ConfigError::Invalid { ref key, .. } if key == "engine.tick_hz"),
            "{text}"
        );
        assert!(text.contains("t.toml"), "{text}");
        let err = Config::parse(
            "[storage.redis]\nurl = \"http://x\"\n[storage]\nbackend = \"redis\"\n",
            "t.toml",
            no_env,
        );
        assert!(
            matches!(err, Err(ConfigError::Invalid { ref key, .. }) if key == "storage.redis.url")
        );
    }

    #[test]
    fn the_net_table_is_read_and_checked() {
        let config = Config::load_with_env(None, no_env).unwrap();
        assert_eq!(config.net.grace, std::time::Duration::from_secs(30));
        assert!(!config.net.open_mode);
        assert!(config.net.secret.is_none());
        let text = "[net]\nlisten = \"0.0.0.0:5000\"\nsecret = \"a secret of enough bytes\"\n\
                    grace_seconds = 0.5\nstate_every_ticks = 2\nopen_mode = true\n";
        let config = Config::parse(text, "t.toml", no_env).unwrap();
        assert_eq!(config.net.listen.port(), 5000);
        assert_eq!(config.net.grace, std::time::Duration::from_millis(500));
        assert_eq!(config.net.state_every_ticks, 2);
        assert!(config.net.open_mode && config.net.secret.is_some());
        let err = Config::parse("[net]\nsecret = \"short\"\n", "t.toml", no_env).unwrap_err();
        assert!(
            matches!(err, ConfigError::Invalid { ref key, .. } if key == "net.secret"),
            "{err}"
        );
        assert!(
            !err.to_string().contains("short"),
            "the secret is not echoed: {err}"
        );
        let err = Config::parse("[net]\ncert = \"c.pem\"\n", "t.toml", no_env).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { ref key, .. } if key == "net.key"));
        let err = Config::parse("[net]\nlisten = \"nowhere\"\n", "t.toml", no_env).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { ref key, .. } if key == "net.listen"));
        let env = |k: &str| (k == "TICKFORGE_SECRET").then(|| "x".repeat(32));
        assert!(
            Config::load_with_env(None, env)
                .unwrap()
                .net
                .secret
                .is_some()
        );
    }

    #[test]
    fn socket_buffer_bytes_is_read_and_checked() {
        let defaults = Config::load_with_env(None, no_env).unwrap().net;
        assert_eq!(
            defaults.socket_buffer_bytes,
            crate::net::socket::DEFAULT_SOCKET_BUFFER_BYTES
        );
        for value in [0, 65_536, 8 << 20] {
            let text = format!("[net]\nsocket_buffer_bytes = {value}\n");
            let config = Config::parse(&text, "t.toml", no_env).unwrap();
            assert_eq!(config.net.socket_buffer_bytes, value);
        }
        for value in [1, 65_535, 1 << 30] {
            let text = format!("[net]\nsocket_buffer_bytes = {value}\n");
            let err = Config::parse(&text, "t.toml", no_env).unwrap_err();
            assert!(
                matches!(err, ConfigError::Invalid { ref key, .. } if key == "net.socket_buffer_bytes"),
                "{err}"
            );
        }
    }

    #[test]
    fn batch_sends_is_read_and_checked() {
        let defaults = Config::load_with_env(None, no_env).unwrap().net;
        assert_eq!(defaults.batch_sends, NetConfig::default().batch_sends);
        for value in [true, false] {
            let text = format!("[net]\nbatch_sends = {value}\n");
            let config = Config::parse(&text, "t.toml", no_env).unwrap();
            assert_eq!(config.net.batch_sends, value);
        }
        let err = Config::parse("[net]\nbatch_sends = \"yes\"\n", "t.toml", no_env).unwrap_err();
        assert!(err.to_string().contains("batch_sends"), "{err}");
    }

    #[test]
    fn admission_limits_are_read_and_checked() {
        let defaults = Config::load_with_env(None, no_env).unwrap().net;
        assert_eq!(defaults.admit_max_cpu_percent, 0);
        assert_eq!(defaults.admit_max_tick_load_percent, 0);
        assert!(defaults.admit_max_lag.is_zero());
        assert!(defaults.admit_max_send_delay.is_zero());
        assert_eq!(defaults.admit_max_receive_queue_bytes, 0);
        assert_eq!(defaults.full_retry_after, std::time::Duration::from_secs(2));
        let text = "[net]\nmax_connections = 40\nadmit_max_cpu_percent = 85\n\
                    admit_max_tick_load_percent = 90\n\
                    admit_max_lag_ms = 50\nadmit_max_send_delay_ms = 8\n\
                    admit_max_receive_queue_kib = 256\nfull_retry_ms = 250\n";
        let net = Config::parse(text, "t.toml", no_env).unwrap().net;
        let limits = net.admission();
        assert_eq!(limits.max_connections, 40);
        assert_eq!(limits.max_cpu_percent, 85);
        assert_eq!(limits.max_tick_load_percent, 90);
        assert_eq!(limits.max_lag, std::time::Duration::from_millis(50));
        assert_eq!(limits.max_send_delay, std::time::Duration::from_millis(8));
        assert_eq!(limits.max_receive_queue_bytes, 256 << 10);
        assert_eq!(limits.retry_after, std::time::Duration::from_millis(250));
        for (text, key) in [
            (
                "[net]\nadmit_max_cpu_percent = 101\n",
                "net.admit_max_cpu_percent",
            ),
            (
                "[net]\nadmit_max_tick_load_percent = 101\n",
                "net.admit_max_tick_load_percent",
            ),
            ("[net]\nadmit_max_lag_ms = 10001\n", "net.admit_max_lag_ms"),
            (
                "[net]\nadmit_max_send_delay_ms = 10001\n",
                "net.admit_max_send_delay_ms",
            ),
            (
                "[net]\nadmit_max_receive_queue_kib = 1048577\n",
                "net.admit_max_receive_queue_kib",
            ),
            ("[net]\nfull_retry_ms = 0\n", "net.full_retry_ms"),
            ("[net]\nfull_retry_ms = 60001\n", "net.full_retry_ms"),
        ] {
            let err = Config::parse(text, "t.toml", no_env).unwrap_err();
            assert!(
                matches!(err, ConfigError::Invalid { key: ref k, .. } if k == key),
                "{text}: {err}"
            );
            assert!(err.to_string().contains("t.toml"), "{err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::parse("[engine]\ntick_rate = 30\n", "t.toml", no_env).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }));
        assert!(err.to_string().contains("tick_rate"), "{err}");
    }
}
