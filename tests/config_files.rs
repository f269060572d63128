//! Configuration files on disk: each fault is its own `ConfigError`
//! naming the key, the value and the file; the shipped file loads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tickforge::config::{ClientCertFiles, Config, ConfigError, RedisTlsFiles, StorageConfig};
use tickforge::engine::{Durability, EventRetention};

fn no_env(_: &str) -> Option<String> {
    None
}

/// Writes `text` to a fresh file in its own temp dir.
fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tickforge.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn a_missing_file_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let err = Config::load_with_env(Some(&path), no_env).unwrap_err();
    assert!(
        matches!(&err, ConfigError::NotFound { path: p } if *p == path),
        "{err:?}"
    );
    assert!(err.to_string().contains("absent.toml"), "{err}");
}

#[test]
fn an_unreadable_path_is_a_read_error() {
    // A directory exists but cannot be read as a file.
    let dir = tempfile::tempdir().unwrap();
    let err = Config::load_with_env(Some(dir.path()), no_env).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Read { path, .. } if path == dir.path()),
        "{err:?}"
    );
}

#[test]
fn an_unknown_backend_names_key_value_and_file() {
    let (_dir, path) = config_file("[storage]\nbackend = \"postgres\"\n");
    let err = Config::load_with_env(Some(&path), no_env).unwrap_err();
    match &err {
        ConfigError::UnknownBackend { origin, key, value } => {
            assert_eq!(key, "storage.backend");
            assert_eq!(value, "postgres");
            assert_eq!(origin, &path.display().to_string());
        }
        other => panic!("expected UnknownBackend, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("postgres") && text.contains("tickforge.toml"),
        "{text}"
    );
}

#[test]
fn an_unknown_backend_from_the_environment_names_the_variable() {
    let (_dir, path) = config_file("[storage]\nbackend = \"memory\"\n");
    let env = |name: &str| (name == "STORAGE_BACKEND").then(|| "postgres".to_owned());
    let err = Config::load_with_env(Some(&path), env).unwrap_err();
    assert!(
        matches!(&err, ConfigError::UnknownBackend { origin, key, value }
            if origin == "environment" && key == "STORAGE_BACKEND" && value == "postgres"),
        "{err:?}"
    );
}

#[test]
fn a_wrong_type_is_a_parse_error_naming_the_key() {
    let (_dir, path) = config_file("[engine]\ntick_hz = \"fast\"\n");
    let err = Config::load_with_env(Some(&path), no_env).unwrap_err();
    match &err {
        ConfigError::Parse { origin, message } => {
            assert!(message.contains("tick_hz"), "{message}");
            assert_eq!(origin, &path.display().to_string());
        }
        other => panic!("expected Parse, got {other:?}"),
    }
    assert!(err.to_string().contains("tick_hz"), "{err}");
}

#[test]
fn broken_toml_and_unknown_keys_are_parse_errors() {
    for text in [
        "[engine\ntick_hz = 30\n",
        "[engine]\nticks = 30\n",
        "[cache]\nsize = 1\n",
    ] {
        let (_dir, path) = config_file(text);
        let err = Config::load_with_env(Some(&path), no_env).unwrap_err();
        assert!(
            matches!(err, ConfigError::Parse { .. }),
            "{text:?}: {err:?}"
        );
    }
}

#[test]
fn out_of_range_values_are_invalid_with_their_key() {
    for (text, expected_key) in [
        ("[engine]\ntick_hz = 5000\n", "engine.tick_hz"),
        (
            "[engine]\nsnapshot_every_ticks = 0\n",
            "engine.snapshot_every_ticks",
        ),
        ("[engine]\nmatch_queue = 0\n", "engine.match_queue"),
        (
            "[engine]\nwrite_queue_bytes = 0\n",
            "engine.write_queue_bytes",
        ),
        (
            "[engine]\ndurability = \"eventually\"\n",
            "engine.durability",
        ),
        ("[engine]\nedition = \"a:b\"\n", "engine.edition"),
        (
            "[storage]\nbackend = \"redis\"\n[storage.redis]\nurl = \"http://h\"\n",
            "storage.redis.url",
        ),
    ] {
        let (_dir, path) = config_file(text);
        let err = Config::load_with_env(Some(&path), no_env).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { key, .. } if key == expected_key),
            "{text:?}: {err:?}"
        );
        assert!(err.to_string().contains("tickforge.toml"), "{err}");
    }
}

#[test]
fn the_write_queue_is_bounded_in_bytes_as_configured() {
    let (_dir, path) = config_file("[engine]\nwrite_queue_bytes = 1048576\n");
    let config = Config::load_with_env(Some(&path), no_env).unwrap();
    assert_eq!(config.engine.write_queue_bytes, 1024 * 1024);
    let (_dir, path) = config_file("[engine]\nwrite_queue_bytes = -1\n");
    let err = Config::load_with_env(Some(&path), no_env).unwrap_err();
    assert!(err.to_string().contains("write_queue_bytes"), "{err}");
}

#[test]
fn a_file_overrides_defaults_and_the_environment_overrides_the_file() {
    let (_dir, path) = config_file(
        "[engine]\ntick_hz = 60\nshards = 3\nsnapshot_every_ticks = 90\ndurability = \"sync\"\n\
         edition = \"replays\"\n[storage]\nbackend = \"redis\"\n\
         [storage.redis]\nurl = \"rediss://:secret@cache:6380\"\n",
    );
    let config = Config::load_with_env(Some(&path), no_env).unwrap();
    assert_eq!(config.engine.tick_hz, 60);
    assert_eq!(config.engine.shards, 3);
    assert_eq!(config.engine.policy.snapshot_every_ticks, 90);
    assert_eq!(config.engine.durability, Durability::Sync);
    assert_eq!(config.edition, "replays");
    assert_eq!(
        config.storage,
        StorageConfig::Redis {
            urls: vec!["rediss://:secret@cache:6380".into()],
            tls: RedisTlsFiles::default(),
        }
    );
    let env = |name: &str| (name == "STORAGE_BACKEND").then(|| "memory".to_owned());
    let config = Config::load_with_env(Some(&path), env).unwrap();
    assert!(matches!(config.storage, StorageConfig::Memory { .. }));
}

#[test]
fn the_shipped_config_file_loads_and_equals_the_built_in_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tickforge.toml");
    let from_file = Config::load_with_env(Some(&path), no_env).unwrap();
    let built_in = Config::load_with_env(None, no_env).unwrap();
    assert_eq!(from_file, built_in);
    assert_eq!(
        from_file.storage,
        StorageConfig::Memory {
            retain_finished: Duration::ZERO
        }
    );
    assert_eq!(from_file.edition, "main");
    assert_eq!(from_file.engine.tick_hz, 30);
    assert_eq!(from_file.engine.write_queue_bytes, 256 * 1024 * 1024);
    // An empty file means every default.
    let (_dir, empty) = config_file("");
    assert_eq!(
        Config::load_with_env(Some(&empty), no_env).unwrap(),
        built_in
    );
}

#[test]
fn trimming_is_off_by_default_and_names_the_handlers_it_keeps_events_for() {
    let built_in = Config::load_with_env(None, no_env).unwrap();
    assert_eq!(built_in.engine.retention, EventRetention::Full);

    let (_dir, path) = config_file(
        "[engine]\ntrim_events_below_snapshot = true\ntrim_keeps_events_for = [\"leaderboard\"]\n",
    );
    let config = Config::load_with_env(Some(&path), no_env).unwrap();
    assert_eq!(
        config.engine.retention,
        EventRetention::TrimBelowSnapshot {
            keep_for: vec!["leaderboard".to_owned()]
        }
    );

    let (_dir, path) = config_file(
        "[engine]\ntrim_events_below_snapshot = true\ntrim_keeps_events_for = [\"a:b\"]\n",
    );
    let err = Config::load_with_env(Some(&path), no_env).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Invalid { key, .. } if key == "engine.trim_keeps_events_for"),
        "{err:?}"
    );
    assert!(err.to_string().contains("\"a:b\""), "{err}");
}

#[test]
fn redis_tls_files_are_read_as_paths() {
    let (_dir, path) = config_file(
        "[storage]\nbackend = \"redis\"\n[storage.redis]\n\
         urls = [\"rediss://:pw@a:6380\", \"rediss://b:6380\"]\n\
         tls_ca_file = \"/etc/redis/ca.pem\"\n\
         tls_cert_file = \"client.pem\"\ntls_key_file = \"client.key\"\n",
    );
    let config = Config::load_with_env(Some(&path), no_env).unwrap();
    assert_eq!(
        config.storage,
        StorageConfig::Redis {
            urls: vec!["rediss://:pw@a:6380".into(), "rediss://b:6380".into()],
            tls: RedisTlsFiles {
                ca_file: Some(PathBuf::from("/etc/redis/ca.pem")),
                client: Some(ClientCertFiles {
                    cert_file: PathBuf::from("client.pem"),
                    key_file: PathBuf::from("client.key"),
                }),
            },
        }
    );
    // A CA alone is enough (server authentication only).
    let (_dir, path) = config_file(
        "[storage]\nbackend = \"redis\"\n[storage.redis]\nurl = \"rediss://h:6380\"\n\
         tls_ca_file = \"ca.pem\"\n",
    );
    let StorageConfig::Redis { tls, .. } =
        Config::load_with_env(Some(&path), no_env).unwrap().storage
    else {
        panic!("expected the redis backend");
    };
    assert_eq!(tls.ca_file, Some(PathBuf::from("ca.pem")));
    assert_eq!(tls.client, None);
}

#[test]
fn a_redis_client_cert_needs_its_key_and_the_other_way_round() {
    for (keys, missing, given) in [
        ("tls_cert_file = \"c.pem\"\n", "tls_key_file", "c.pem"),
        ("tls_key_file = \"c.key\"\n", "tls_cert_file", "c.key"),
    ] {
        let (_dir, path) = config_file(&format!(
            "[storage]\nbackend = \"redis\"\n[storage.redis]\nurl = \"rediss://h:6380\"\n{keys}"
        ));
        let err = Config::load_with_env(Some(&path), no_env).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { key, .. } if *key == format!("storage.redis.{missing}")),
            "{keys:?}: {err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(given) && text.contains("tickforge.toml"),
            "{text}"
        );
    }
}

#[test]
fn redis_tls_files_with_a_plain_url_are_invalid_without_echoing_it() {
    let (_dir, path) = config_file(
        "[storage]\nbackend = \"redis\"\n[storage.redis]\n\
         urls = [\"rediss://a:6380\", \"redis://:hunter2@b:6379\"]\n\
         tls_ca_file = \"ca.pem\"\n",
    );
    let err = Config::load_with_env(Some(&path), no_env).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Invalid { key, .. } if key == "storage.redis.tls_ca_file"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("rediss://") && text.contains("storage.redis.urls"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "password leaked: {text}");
    // REDIS_URL overrides the file's URL: the TLS files still need rediss://.
    let (_dir, path) = config_file(
        "[storage]\nbackend = \"redis\"\n[storage.redis]\nurl = \"rediss://a:6380\"\n\
         tls_cert_file = \"c.pem\"\ntls_key_file = \"c.key\"\n",
    );
    let env = |name: &str| (name == "REDIS_URL").then(|| "redis://b:6379".to_owned());
    let err = Config::load_with_env(Some(&path), env).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Invalid { key, .. } if key == "storage.redis.tls_cert_file"),
        "{err:?}"
    );
    assert!(err.to_string().contains("REDIS_URL"), "{err}");
    // The memory backend ignores [storage.redis] altogether.
    let (_dir, path) = config_file(
        "[storage]\nbackend = \"memory\"\n[storage.redis]\nurl = \"redis://a:6379\"\n\
         tls_ca_file = \"ca.pem\"\n",
    );
    assert!(matches!(
        Config::load_with_env(Some(&path), no_env).unwrap().storage,
        StorageConfig::Memory { .. }
    ));
}

#[test]
fn a_refused_redis_url_does_not_show_its_password() {
    let (_dir, path) = config_file(
        "[storage]\nbackend = \"redis\"\n[storage.redis]\nurl = \"http://admin:hunter2@cache:6379\"\n",
    );
    let err = Config::load_with_env(Some(&path), no_env).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("storage.redis.url"), "{message}");
    assert!(message.contains("admin:***@cache"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

#[test]
fn the_admin_listener_defaults_to_loopback_and_an_empty_string_turns_it_off() {
    let defaults = Config::load_with_env(None, no_env).unwrap();
    assert_eq!(
        defaults.admin.listen,
        Some("127.0.0.1:9100".parse().unwrap())
    );
    let (_dir, path) = config_file("[admin]\nlisten = \"0.0.0.0:9200\"\n");
    let config = Config::load_with_env(Some(&path), no_env).unwrap();
    assert_eq!(config.admin.listen, Some("0.0.0.0:9200".parse().unwrap()));
    let (_dir, path) = config_file("[admin]\nlisten = \"\"\n");
    let config = Config::load_with_env(Some(&path), no_env).unwrap();
    assert_eq!(config.admin.listen, None);
}

#[test]
fn a_bad_admin_address_names_key_value_and_file() {
    let (_dir, path) = config_file("[admin]\nlisten = \"localhost\"\n");
    let err = Config::load_with_env(Some(&path), no_env).unwrap_err();
    match &err {
        ConfigError::Invalid {
            origin, key, value, ..
        } => {
            assert_eq!(key, "admin.listen");
            assert_eq!(value, "\"localhost\"");
            assert_eq!(origin, &path.display().to_string());
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    let (_dir, path) = config_file("[admin]\nport = 9100\n");
    let err = Config::load_with_env(Some(&path), no_env).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
    assert!(err.to_string().contains("port"), "{err}");
}

#[test]
fn write_timeout_and_memory_retention_are_read_and_checked() {
    let built_in = Config::load_with_env(None, no_env).unwrap();
    assert_eq!(built_in.net.write_timeout, Duration::from_secs(2));
    assert_eq!(
        built_in.storage,
        StorageConfig::Memory {
            retain_finished: Duration::ZERO
        }
    );
    let (_dir, path) = config_file(
        "[net]\nwrite_timeout_ms = 250\n[storage.memory]\nretain_finished_seconds = 90\n",
    );
    let config = Config::load_with_env(Some(&path), no_env).unwrap();
    assert_eq!(config.net.write_timeout, Duration::from_millis(250));
    assert_eq!(
        config.storage,
        StorageConfig::Memory {
            retain_finished: Duration::from_secs(90)
        }
    );
    for (text, expected_key, value) in [
        ("[net]\nwrite_timeout_ms = 0\n", "net.write_timeout_ms", "0"),
        (
            "[net]\nwrite_timeout_ms = 3600000\n",
            "net.write_timeout_ms",
            "3600000",
        ),
        (
            "[storage.memory]\nretain_finished_seconds = -1\n",
            "storage.memory.retain_finished_seconds",
            "-1",
        ),
        (
            "[storage.memory]\nretain_finished_seconds = 1e9\n",
            "storage.memory.retain_finished_seconds",
            "1000000000",
        ),
    ] {
        let (_dir, path) = config_file(text);
        let err = Config::load_with_env(Some(&path), no_env).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { key, value: v, .. } if key == expected_key && v == value),
            "{text:?}: {err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains(expected_key) && message.contains("tickforge.toml"),
            "{message}"
        );
    }
    // A misspelt key in the new table is refused, not ignored.
    let (_dir, path) = config_file("[storage.memory]\nretain_finished = 5\n");
    let err = Config::load_with_env(Some(&path), no_env).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
}
