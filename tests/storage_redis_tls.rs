//! TLS and passwords against a real `redis-server`.
//!
//! `cargo test --test storage_redis_tls --features redis`. Each test starts
//! its own `redis-server` child process, whatever `TICKFORGE_TEST_REDIS`
//! says: a TLS server listens on `rediss://` only (`--port 0`), with a CA,
//! server and client certificate generated for it (see `tests/support`).
//! The server must be built with TLS (Debian's is). The cluster test
//! needs child processes: it is skipped unless `TICKFORGE_TEST_REDIS` is
//! unset (process mode).

#![cfg(feature = "redis")]

mod storage_suite;
mod support;

use std::path::Path;

use storage_suite::{append_one, batch, events};
use support::{
    ENV, Mode, ServerOptions, ServerTls, TestCluster, TestPki, TestRedis, expect_events,
};
use tickforge::config::{Config, StorageConfig};
use tickforge::store::{
    AnyStore, EventStore, MatchKey, RedisOptions, RedisStore, RedisTls, Snapshot, Store, StoreError,
};

/// Fails fast: no reconnection attempts after the first.
fn once() -> RedisOptions {
    RedisOptions {
        reconnect_retries: 0,
        ..RedisOptions::default()
    }
}

/// The message of a connection refused as unavailable.
fn unavailable<T: std::fmt::Debug>(result: Result<T, StoreError>) -> String {
    match result {
        Err(StoreError::Unavailable(message)) => message,
        other => panic!("expected StoreError::Unavailable, got {other:?}"),
    }
}

/// Create, append real envelopes, read them back, snapshot round trip.
async fn round_trip<S: Store>(store: &S, key: &MatchKey) {
    store.create(key, &[]).await.unwrap();
    let stored = events(0, 5, 3, "tls");
    let head = append_one(store, batch(key, 0, stored.clone(), 3))
        .await
        .unwrap();
    assert_eq!((head.next_sequence, head.tick), (5, 3));
    assert_eq!(store.read(key, 0, usize::MAX).await.unwrap(), stored);
    let snapshot = Snapshot::new(5, 3, (0..=255).collect(), 1);
    assert!(store.save_snapshot(key, &snapshot).await.unwrap());
    assert_eq!(store.load_snapshot(key).await.unwrap(), Some(snapshot));
}

async fn tls_server(tls: Option<ServerTls>, password: Option<&str>) -> TestRedis {
    TestRedis::start_with(ServerOptions {
        tls,
        password: password.map(str::to_owned),
        ..ServerOptions::default()
    })
    .await
}

fn pki(redis: &TestRedis) -> &TestPki {
    redis.pki().expect("a TLS server")
}

/// With the private CA trusted, the store works over TLS, followers
/// included (their subscription is a connection of its own).
#[tokio::test]
async fn a_trusted_private_ca_carries_the_store() {
    let redis = tls_server(ServerTls::server_only(), None).await;
    assert!(redis.url().starts_with("rediss://"), "{}", redis.url());
    let tls = pki(&redis).trust();
    assert!(tls.has_root_ca() && !tls.has_client_cert());
    let store = RedisStore::connect_tls(&[redis.url().to_owned()], once(), &tls)
        .await
        .unwrap();
    let key = redis.key("trusted");
    round_trip(&store, &key).await;

    let mut follower = store.follow(&key, 3).await.unwrap();
    let more = events(5, 2, 4, "followed");
    append_one(&store, batch(&key, 5, more.clone(), 4))
        .await
        .unwrap();
    let wanted = [events(0, 5, 3, "tls")[3..].to_vec(), more].concat();
    expect_events(&mut follower, &wanted).await;
}

/// Without the CA (system roots) or with another CA, the server's
/// certificate is refused and the error says so.
#[tokio::test]
async fn an_untrusted_server_certificate_is_refused() {
    let redis = tls_server(ServerTls::server_only(), None).await;
    let urls = [redis.url().to_owned()];
    let message = unavailable(RedisStore::connect_with(&urls, once()).await);
    assert!(
        message.contains("invalid peer certificate: UnknownIssuer"),
        "{message}"
    );
    assert!(message.contains(redis.url()), "names the URL: {message}");

    let other_dir = tempfile::tempdir().unwrap();
    let other = TestPki::generate(other_dir.path(), "other");
    let message = unavailable(RedisStore::connect_tls(&urls, once(), &other.trust()).await);
    assert!(
        message.contains("invalid peer certificate: UnknownIssuer"),
        "{message}"
    );
}

/// `--tls-auth-clients yes`: the client certificate of the CA is let in;
/// none, or one of another CA, is refused.
#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let redis = tls_server(ServerTls::mutual(), None).await;
    let urls = [redis.url().to_owned()];
    let tls = pki(&redis).trust_with_client_cert();
    assert!(tls.has_client_cert());
    let store = RedisStore::connect_tls(&urls, once(), &tls).await.unwrap();
    round_trip(&store, &redis.key("mutual")).await;

    let message = unavailable(RedisStore::connect_tls(&urls, once(), &pki(&redis).trust()).await);
    assert!(message.contains(redis.url()), "names the URL: {message}");
    assert!(message.contains("CertificateRequired"), "{message}");

    let other_dir = tempfile::tempdir().unwrap();
    let other = TestPki::generate(other_dir.path(), "other");
    let stranger = RedisTls::from_files(
        Some(&pki(&redis).ca_file),
        Some((&other.client_cert_file, &other.client_key_file)),
    )
    .unwrap();
    let message = unavailable(RedisStore::connect_tls(&urls, once(), &stranger).await);
    assert!(message.contains("UnknownCA"), "{message}");
}

/// `--requirepass`, plain and over TLS: the right password in the URL
/// works; a wrong or missing one is refused without echoing the password.
#[tokio::test]
async fn passwords_in_the_url_work_and_stay_secret() {
    const PASSWORD: &str = "s3cret-Pa55";
    const WRONG: &str = "not-the-Pa55word";
    for tls in [None, ServerTls::server_only()] {
        let redis = tls_server(tls, Some(PASSWORD)).await;
        let material = redis.tls().unwrap_or_default();
        let connect = |url: String| {
            let material = material.clone();
            async move {
                let urls = [url];
                match tls {
                    None => RedisStore::connect_with(&urls, once()).await,
                    Some(_) => RedisStore::connect_tls(&urls, once(), &material).await,
                }
            }
        };
        assert!(redis.url().contains(PASSWORD), "{}", redis.url());
        let store = connect(redis.url().to_owned()).await.unwrap();
        round_trip(&store, &redis.key("auth")).await;

        let wrong = redis.url().replace(PASSWORD, WRONG);
        let message = unavailable(connect(wrong).await);
        assert!(
            message.contains("Password authentication failed"),
            "{tls:?}: {message}"
        );
        assert!(message.contains(":***@127.0.0.1"), "{tls:?}: {message}");
        assert!(
            !message.contains(WRONG) && !message.contains(PASSWORD),
            "{tls:?}: password leaked: {message}"
        );

        let without = redis.url().replace(&format!(":{PASSWORD}@"), "");
        let message = unavailable(connect(without).await);
        assert!(message.contains("NOAUTH"), "{tls:?}: {message}");
    }
}

/// The configuration route: `[storage.redis]` with all three TLS files,
/// loaded from a file and opened by [`AnyStore::open`].
#[tokio::test]
async fn the_config_files_open_a_tls_store() {
    let redis = tls_server(ServerTls::mutual(), Some("cfg-pass")).await;
    let pki = pki(&redis);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tickforge.toml");
    let text = format!(
        "[storage]\nbackend = \"redis\"\n[storage.redis]\nurl = {:?}\n\
         tls_ca_file = {:?}\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
        redis.url(),
        pki.ca_file,
        pki.client_cert_file,
        pki.client_key_file,
    );
    std::fs::write(&path, text).unwrap();
    let config = Config::load_with_env(Some(&path), |_| None).unwrap();
    let store = AnyStore::open(&config.storage).await.unwrap();
    assert_eq!(store.name(), "redis");
    round_trip(&store, &redis.key("configured")).await;

    // Without the client files the server refuses the handshake.
    let StorageConfig::Redis { urls, mut tls } = config.storage.clone() else {
        panic!("expected the redis backend");
    };
    tls.client = None;
    let message = unavailable(
        AnyStore::open(&StorageConfig::Redis {
            urls: urls.clone(),
            tls,
        })
        .await,
    );
    assert!(message.contains("CertificateRequired"), "{message}");
}

/// Unreadable or malformed files are refused before connecting, naming
/// the file.
#[tokio::test]
async fn bad_tls_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path(), "files");
    let open = |ca: &Path, cert: &Path, key: &Path| {
        let config = Config::parse(
            &format!(
                "[storage]\nbackend = \"redis\"\n[storage.redis]\n\
                 url = \"rediss://127.0.0.1:1\"\n\
                 tls_ca_file = {ca:?}\ntls_cert_file = {cert:?}\ntls_key_file = {key:?}\n"
            ),
            "t.toml",
            |_| None,
        )
        .unwrap();
        async move { AnyStore::open(&config.storage).await }
    };
    let absent = dir.path().join("absent-ca.pem");
    let message = unavailable(open(&absent, &pki.client_cert_file, &pki.client_key_file).await);
    assert!(
        message.contains(&absent.display().to_string()) && message.contains("cannot read"),
        "{message}"
    );
    // A key where the CA belongs, a certificate where the key belongs.
    let message = unavailable(
        open(
            &pki.client_key_file,
            &pki.client_cert_file,
            &pki.client_key_file,
        )
        .await,
    );
    assert!(
        message.contains(&pki.client_key_file.display().to_string())
            && message.contains("no PEM certificate"),
        "{message}"
    );
    let message =
        unavailable(open(&pki.ca_file, &pki.client_cert_file, &pki.client_cert_file).await);
    assert!(
        message.contains("client key file") && message.contains("no PEM private key"),
        "{message}"
    );
}

/// TLS material with a `redis://` URL is refused, naming the URL without
/// its password, before anything is sent.
#[tokio::test]
async fn tls_material_needs_rediss_urls() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TestPki::generate(dir.path(), "scheme").trust();
    for urls in [
        vec!["redis://:hunter2@127.0.0.1:1".to_owned()],
        vec![
            "rediss://127.0.0.1:1".to_owned(),
            "redis://:hunter2@127.0.0.1:2".to_owned(),
        ],
    ] {
        let message = unavailable(RedisStore::connect_tls(&urls, once(), &tls).await);
        assert!(
            message.contains("redis://:***@127.0.0.1") && message.contains("rediss://"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "password leaked: {message}");
    }
}

/// How many `SPUBLISH` calls node `index` has run (scripts' calls
/// included).
async fn spublish_calls(cluster: &TestCluster, index: usize) -> u64 {
    let mut con = cluster.node_connection(index).await;
    support::command_calls(&mut con, "spublish").await
}

/// A three-master Redis Cluster serving TLS only (clients and cluster
/// bus): with the test CA the store finds every node from the seeds and
/// carries matches on each of them, snapshots and a follower (SPUBLISH on
/// the match's shard) included; without the CA the certificate is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_carries_the_store() {
    if Mode::from_env() != Mode::Process {
        eprintln!(
            "cluster tests need redis-server child processes ({ENV} asks for another mode); skipped"
        );
        return;
    }
    const NODES: usize = 3;
    const PER_NODE: usize = 2;
    let cluster = TestCluster::start_tls(NODES).await;
    let urls = cluster.urls();
    assert!(
        urls.len() == NODES && urls.iter().all(|url| url.starts_with("rediss://")),
        "{urls:?}"
    );
    let pki = cluster.pki().expect("a TLS cluster");
    let store = RedisStore::connect_tls(&urls, once(), &pki.trust())
        .await
        .unwrap();
    assert!(store.is_cluster());

    // PER_NODE matches on every node (their keys share the match's slot).
    let mut keys: Vec<Vec<MatchKey>> = vec![Vec::new(); NODES];
    for n in 0.. {
        if keys.iter().all(|on_node| on_node.len() == PER_NODE) {
            break;
        }
        assert!(n < 1_000, "no spread over the nodes: {keys:?}");
        let key = cluster.key(&format!("m{n}"));
        let owner = cluster.owner(&key.meta_key()).await;
        if keys[owner].len() < PER_NODE {
            keys[owner].push(key);
        }
    }
    for (owner, on_node) in keys.iter().enumerate() {
        for key in on_node {
            round_trip(&store, key).await;
            let mut con = cluster.node_connection(owner).await;
            let stored: u64 = ::redis::cmd("EXISTS")
                .arg(key.meta_key())
                .arg(key.events_key())
                .arg(key.snapshot_key())
                .query_async(&mut con)
                .await
                .unwrap();
            assert_eq!(stored, 3, "{key:?} is stored on node {owner}");
        }
    }
    let mut live = store
        .live_matches(support::DOMAIN, cluster.edition())
        .await
        .unwrap();
    live.sort_by(|a, b| a.root().cmp(b.root()));
    let mut created: Vec<MatchKey> = keys.concat();
    created.sort_by(|a, b| a.root().cmp(b.root()));
    assert_eq!(live, created);

    // A follower of a match on the last node gets the stored tail, then a
    // batch published on that node's shard channel.
    let owner = NODES - 1;
    let key = &keys[owner][0];
    let mut follower = store.follow(key, 3).await.unwrap();
    let published_before = spublish_calls(&cluster, owner).await;
    let more = events(5, 2, 4, "followed");
    append_one(&store, batch(key, 5, more.clone(), 4))
        .await
        .unwrap();
    let wanted = [events(0, 5, 3, "tls")[3..].to_vec(), more].concat();
    expect_events(&mut follower, &wanted).await;
    assert_eq!(
        spublish_calls(&cluster, owner).await,
        published_before + 1,
        "the append published on the owner's shard channel"
    );

    // The system roots do not know the test CA; another CA does not either.
    let message = unavailable(RedisStore::connect_with(&urls, once()).await);
    assert!(
        message.contains("invalid peer certificate: UnknownIssuer"),
        "{message}"
    );
    assert!(
        urls.iter().all(|url| message.contains(url.as_str())),
        "names the seeds: {message}"
    );
    let other_dir = tempfile::tempdir().unwrap();
    let other = TestPki::generate(other_dir.path(), "other");
    let message = unavailable(RedisStore::connect_tls(&urls, once(), &other.trust()).await);
    assert!(
        message.contains("invalid peer certificate: UnknownIssuer"),
        "{message}"
    );
}
