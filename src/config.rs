//! Configuration: a TOML file plus environment, validated into [`Config`].
//!
//! The file format follows the storage note (`[storage] backend`,
//! `[storage.redis] url` or `urls`) and adds an `[engine]` table. The
//! environment overrides the file: `STORAGE_BACKEND`, and `REDIS_URL`
//! (which selects the Redis backend unless `STORAGE_BACKEND` says
//! otherwise). Every error names the key or variable, the value, and the
//! file it came from. Defaults live in `assets/tickforge.toml`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::{Durability, EngineSettings, MatchPolicy};
use crate::store::keys::{DEFAULT_EDITION, MatchKey};

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
}

/// The storage backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// The embedded in-memory store: nothing survives the process.
    Memory,
    /// Redis, single node (one URL) or cluster (several).
    Redis {
        /// `redis://` or `rediss://` URLs, password included where needed.
        urls: Vec<String>,
    },
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    tick_hz: Option<u32>,
    snapshot_every_ticks: Option<u64>,
    shards: Option<usize>,
    shard_queue: Option<usize>,
    match_queue: Option<usize>,
    write_queue_ticks: Option<usize>,
    durability: Option<String>,
    edition: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    backend: Option<String>,
    #[serde(default)]
    redis: RawRedis,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: Option<String>,
    urls: Option<Vec<String>>,
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
        if let Err(error) = MatchKey::new("arena", &edition, "check") {
            return Err(invalid(
                "engine.edition",
                &format!("{edition:?}"),
                error.reason,
            ));
        }

        let storage = storage_config(raw.storage, origin, &env)?;
        Ok(Config {
            engine: EngineSettings {
                tick_hz,
                shards,
                shard_queue,
                write_queue_ticks,
                policy: MatchPolicy {
                    max_pending,
                    snapshot_every_ticks,
                },
                durability,
            },
            edition,
            storage,
        })
    }
}

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
        "memory" => Ok(StorageConfig::Memory),
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
                        value: format!("{url:?}"),
                        reason: "must start with redis:// or rediss://".into(),
                    });
                }
            }
            Ok(StorageConfig::Redis { urls })
        }
        _ => Err(ConfigError::UnknownBackend {
            origin: backend_origin,
            key: backend_key.to_owned(),
            value: backend,
        }),
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
        assert_eq!(config.storage, StorageConfig::Memory);
        assert_eq!(config.edition, "main");
    }

    #[test]
    fn redis_url_in_the_environment_selects_redis() {
        let env = |k: &str| (k == "REDIS_URL").then(|| "redis://127.0.0.1:7000".to_owned());
        let config = Config::load_with_env(None, env).unwrap();
        assert_eq!(
            config.storage,
            StorageConfig::Redis {
                urls: vec!["redis://127.0.0.1:7000".into()]
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
            StorageConfig::Memory
        );
    }

    #[test]
    fn cluster_urls_are_read() {
        let text = "[storage]\nbackend = \"redis\"\n[storage.redis]\nurls = [\"redis://a:1\", \"rediss://b:2\"]\n";
        let config = Config::parse(text, "t.toml", no_env).unwrap();
        assert_eq!(
            config.storage,
            StorageConfig::Redis {
                urls: vec!["redis://a:1".into(), "rediss://b:2".into()]
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
    fn unknown_keys_are_refused() {
        let err = Config::parse("[engine]\ntick_rate = 30\n", "t.toml", no_env).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }));
        assert!(err.to_string().contains("tick_rate"), "{err}");
    }
}
