//! The admin HTTP listener over real HTTP/1.1 on loopback: `/healthz`
//! follows the shards' ticking, `/readyz` lists each failed condition
//! (not restored, store unreachable, draining), `/metrics` is Prometheus
//! text whose counters move with the engine, and bad requests get 400 or
//! 404 without stopping the listener; a `tickforge serve` process answers
//! them as an operator would see it. The client is a plain TCP stream.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tickforge::admin::{self, Health, METRICS_CONTENT_TYPE};
use tickforge::arena::{Arena, ArenaCommand};
use tickforge::client::{Client, ClientConfig, JoinRequest};
use tickforge::engine::{CommandOutcome, Durability, Engine, EngineSettings, MatchPolicy, ReplyTo};
use tickforge::game::PlayerId;
use tickforge::store::{MemoryStore, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Bound on waiting for a condition that takes real time (a stall, an outage).
const WAIT: Duration = Duration::from_secs(30);

/// A parsed HTTP response.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// Sends `request` as is on a fresh connection and reads the response
/// until the server closes.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect to admin");
    stream.write_all(request).await.expect("send request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read response");
    let text = String::from_utf8(raw).expect("a text response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {text:?}"));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    exchange(addr, request.as_bytes()).await
}

/// Asks `path` until `done` holds for the reply, or fails after [`WAIT`]
/// with the last reply: for conditions that are a matter of time passing.
async fn get_until(addr: SocketAddr, path: &str, done: impl Fn(&Reply) -> bool) -> Reply {
    let started = Instant::now();
    loop {
        let reply = get(addr, path).await;
        if done(&reply) {
            return reply;
        }
        assert!(started.elapsed() < WAIT, "{path} stayed at {reply:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The address a log line gives as `listen=<addr>`.
fn listen_address(line: &str) -> SocketAddr {
    line.split_once("listen=")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no listen address in {line:?}"))
}

/// The value of the first sample line of `metric` whose labels contain
/// every one of `labels`.
fn sample(metrics: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(metric)?;
        let (series, value) = rest.rsplit_once(' ')?;
        let labelled = series.is_empty() || series.starts_with('{');
        (labelled && labels.iter().all(|l| series.contains(l))).then(|| value.parse().ok())?
    })
}

struct Admin {
    addr: SocketAddr,
    health: Health,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Admin {
    async fn start<S: Store>(engine: &Engine<Arena, S>) -> Admin {
        let health = Health::new(engine);
        let stop = CancellationToken::new();
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (addr, task) = admin::spawn(listen, health.clone(), stop.clone().cancelled_owned())
            .await
            .expect("the admin listener starts");
        Admin {
            addr,
            health,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the admin listener stops after its shutdown")
            .expect("the admin task did not panic");
    }
}

fn settings() -> EngineSettings {
    EngineSettings {
        tick_hz: 30,
        shards: 2,
        ..EngineSettings::default()
    }
}

/// Creates `root`, joins player 1 and waits for the acceptance.
async fn play<S: Store>(engine: &Engine<Arena, S>, root: &str) {
    engine.create_match(root).await.expect("create");
    let (tx, mut replies) = tokio::sync::mpsc::channel(4);
    let join = ArenaCommand::Join { name: "ada".into() };
    let reply = ReplyTo { tx, client_seq: 1 };
    engine
        .submit(root, PlayerId(1), join, Some(reply))
        .expect("submit");
    let reply = replies.recv().await.expect("every command is answered");
    assert!(
        matches!(reply.outcome, CommandOutcome::Accepted { .. }),
        "{reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics_answer_over_http() {
    let engine = Arc::new(Engine::start(
        Arena::default(),
        MemoryStore::new(),
        settings(),
        "main",
    ));
    let admin = Admin::start(&engine).await;
    let addr = admin.addr;

    let not_ready = get(addr, "/readyz").await;
    assert_eq!(not_ready.status, 503, "{not_ready:?}");
    assert!(not_ready.body.contains("not restored"), "{not_ready:?}");

    let before = get(addr, "/metrics").await.body;
    // A command accepted proves a tick ran on the match's shard.
    play(&engine, "admin-m1").await;
    let live = get(addr, "/healthz").await;
    assert_eq!((live.status, live.body.as_str()), (200, "ok\n"), "{live:?}");

    engine.restore_all().await.expect("nothing to restore");
    admin.health.set_restored();
    let ready = get(addr, "/readyz").await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (200, "ok\n"),
        "{ready:?}"
    );

    let metrics = get(addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .head
            .to_ascii_lowercase()
            .contains(&format!("content-type: {METRICS_CONTENT_TYPE}")),
        "{}",
        metrics.head
    );
    let text = &metrics.body;
    assert!(
        text.lines()
            .any(|l| l.starts_with("tickforge_tick_duration_seconds_bucket{shard=\"0\"")),
        "no per-shard tick histogram in:\n{text}"
    );
    assert!(text.contains("# TYPE tickforge_tick_duration_seconds histogram"));
    for counter in [
        "tickforge_commands_accepted_total",
        "tickforge_matches_created_total",
    ] {
        let was = sample(&before, counter, &[]).unwrap_or(0.0);
        let now = sample(text, counter, &[]).unwrap_or_else(|| panic!("no {counter} in:\n{text}"));
        assert!(now > was, "{counter} did not move: {was} then {now}");
    }
    let ticks = sample(
        text,
        "tickforge_tick_duration_seconds_count",
        &["shard=\"1\""],
    );
    assert!(ticks.is_some_and(|n| n > 0.0), "shard 1 ticks: {ticks:?}");
    assert!(sample(text, "tickforge_draining", &[]) == Some(0.0));

    let missing = get(addr, "/nope").await;
    assert_eq!(missing.status, 404, "{missing:?}");
    let post = exchange(
        addr,
        b"POST /metrics HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(post.status, 405, "{post:?}");

    admin.health.set_draining();
    let draining = get(addr, "/readyz").await;
    assert_eq!(draining.status, 503, "{draining:?}");
    assert!(
        draining.body.contains("draining"),
        "the reason is in the body: {draining:?}"
    );
    let metrics = get(addr, "/metrics").await.body;
    assert!(sample(&metrics, "tickforge_draining", &[]) == Some(1.0));

    engine.shutdown().await;
    admin.stop().await;
}

#[tokio::test]
async fn garbage_gets_400_and_the_listener_keeps_serving() {
    let engine = Engine::start(Arena::default(), MemoryStore::new(), settings(), "main");
    let admin = Admin::start(&engine).await;
    for garbage in [
        &b"\x00\x01\x02 not http at all\r\n\r\n"[..],
        b"GET /healthz HTTP/1.1\r\nBad Header Without Colon\r\n\r\n",
        b"GET \xff\xfe HTTP/1.1\r\n\r\n",
    ] {
        let reply = exchange(admin.addr, garbage).await;
        assert_eq!(reply.status, 400, "{garbage:?} got {reply:?}");
    }
    // A client that connects and leaves without a byte changes nothing either.
    drop(TcpStream::connect(admin.addr).await.expect("connect"));
    let live = get(admin.addr, "/healthz").await;
    assert_eq!(live.status, 200, "{live:?}");
    engine.shutdown().await;
    admin.stop().await;
}

#[tokio::test]
async fn healthz_fails_once_the_shards_stop_ticking() {
    let engine = Engine::start(Arena::default(), MemoryStore::new(), settings(), "main");
    let admin = Admin::start(&engine).await;
    admin.health.set_stall_after(Duration::from_millis(300));
    play(&engine, "admin-stall").await;
    let live = get(admin.addr, "/healthz").await;
    assert_eq!(live.status, 200, "{live:?}");

    engine.shutdown().await;
    let stalled = get_until(admin.addr, "/healthz", |r| r.status != 200).await;
    assert_eq!(stalled.status, 503, "{stalled:?}");
    assert!(
        stalled.body.contains("shard 0 has not ticked") && stalled.body.contains("shard 1"),
        "{stalled:?}"
    );
    admin.stop().await;
}

#[tokio::test]
async fn restores_are_timed_by_phase_and_their_replayed_events_counted() {
    let store = MemoryStore::new();
    // Sync durability: a published state means its events are stored.
    let sync = EngineSettings {
        durability: Durability::Sync,
        ..settings()
    };
    let first = Engine::start(Arena::default(), store.clone(), sync, "main");
    let mut feed = {
        first.create_match("admin-restore").await.expect("create");
        first.subscribe("admin-restore").expect("subscribe")
    };
    let (tx, mut replies) = tokio::sync::mpsc::channel(4);
    let join = ArenaCommand::Join { name: "ada".into() };
    first
        .submit(
            "admin-restore",
            PlayerId(1),
            join,
            Some(ReplyTo { tx, client_seq: 1 }),
        )
        .expect("submit");
    replies.recv().await.expect("answered");
    let stored = loop {
        feed.updates.changed().await.expect("ticking");
        let update = feed.updates.borrow_and_update().clone().expect("a state");
        if update.next_sequence > 0 {
            break update.next_sequence;
        }
    };

    // A second engine on the same store restores it: no snapshot yet, so
    // every stored event is replayed.
    let engine = Engine::start(Arena::default(), store, settings(), "main");
    let admin = Admin::start(&engine).await;
    let before = get(admin.addr, "/metrics").await.body;
    let replayed = engine
        .restore_match("admin-restore")
        .await
        .expect("restore");
    assert!(replayed.next_sequence >= stored);
    let after = get(admin.addr, "/metrics").await.body;
    let restores = |text: &str, phase: &str| {
        let label = format!("phase=\"{phase}\"");
        sample(text, "tickforge_restore_duration_seconds_count", &[&label]).unwrap_or(0.0)
    };
    for phase in ["snapshot_read", "tail_replay"] {
        assert!(
            restores(&after, phase) > restores(&before, phase),
            "{phase}: {after}"
        );
    }
    let counted = |text: &str, name: &str| sample(text, name, &[]).unwrap_or(0.0);
    let events = "tickforge_restore_events_replayed_total";
    assert!(
        counted(&after, events) - counted(&before, events) >= replayed.next_sequence as f64,
        "{after}"
    );
    let restored = "tickforge_matches_restored_total";
    assert!(counted(&after, restored) > counted(&before, restored));
    engine.shutdown().await;
    first.shutdown().await;
    admin.stop().await;
}

/// `/readyz` says the store is unreachable while Redis is down, and is
/// ready again once it is back.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_an_unreachable_redis() {
    use support::{Mode, TestRedis};
    if Mode::from_env() != Mode::Process {
        eprintln!("this test kills its redis-server child process; skipped in other modes");
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter("tickforge=info")
        .with_test_writer()
        .try_init();
    let mut redis = TestRedis::start().await;
    let store = redis.store().await;
    let settings = EngineSettings {
        // Every tick stores a snapshot: the writer calls the store all the time.
        policy: MatchPolicy {
            snapshot_every_ticks: 1,
            ..MatchPolicy::default()
        },
        ..settings()
    };
    let engine = Engine::start(Arena::default(), store, settings, redis.edition());
    let admin = Admin::start(&engine).await;
    play(&engine, "admin-redis").await;
    admin.health.set_restored();
    let ready = get_until(admin.addr, "/readyz", |r| r.status == 200).await;
    assert_eq!(ready.body, "ok\n");

    let process = redis.process().expect("process mode");
    process.kill();
    let cut_off = get_until(admin.addr, "/readyz", |r| r.status == 503).await;
    assert!(
        cut_off.body.contains("store unreachable"),
        "the reason is in the body: {cut_off:?}"
    );
    let metrics = get(admin.addr, "/metrics").await.body;
    let errors = sample(
        &metrics,
        "tickforge_store_errors_total",
        &["class=\"transient\""],
    );
    assert!(errors.is_some_and(|n| n > 0.0), "{metrics}");
    // Liveness is not readiness: the shards still tick.
    assert_eq!(get(admin.addr, "/healthz").await.status, 200);

    process.restart().await.expect("redis-server restarts");
    let back = get_until(admin.addr, "/readyz", |r| r.status == 200).await;
    assert_eq!(back.body, "ok\n");
    engine.shutdown().await;
    admin.stop().await;
}

/// What an operator sees: `tickforge serve --bots 3` with `[admin] listen`
/// answers `/readyz` and `/healthz` with 200 once it accepts players,
/// serves a per-shard tick histogram on `/metrics`, and exits 0 on SIGTERM.
#[tokio::test]
async fn a_serve_process_answers_probes_and_metrics_and_drains_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("tickforge.toml");
    let text = format!(
        "[engine]\nshards = 2\n\n[storage]\nbackend = \"memory\"\n\n\
         [net]\nlisten = \"127.0.0.1:0\"\ndev_cert = \"{cert}\"\ndev_key = \"{key}\"\n\
         admit_max_cpu_percent = 99\nadmit_max_send_delay_ms = 5000\nopen_mode = true\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        cert = dir.path().join("cert.der").display(),
        key = dir.path().join("key.der").display(),
    );
    std::fs::write(&config, text).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickforge"))
        .args(["serve", "--bots", "3", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("REDIS_URL")
        .env_remove("STORAGE_BACKEND")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tickforge serve");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |needle: &str| loop {
        match lines.recv_timeout(WAIT) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no log line with {needle:?} in:\n{}", seen.join("\n")),
        }
    };
    let addr = listen_address(&wait_for("admin HTTP"));
    // Restored before the QUIC endpoint binds.
    let quic = listen_address(&wait_for("accepting players over QUIC"));

    let ready = get(addr, "/readyz").await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (200, "ok\n"),
        "{ready:?}"
    );
    let live = get(addr, "/healthz").await;
    assert_eq!(live.status, 200, "{live:?}");
    let metrics = get_until(addr, "/metrics", |r| r.body.contains("_bucket{shard=")).await;
    let tick_buckets = metrics
        .body
        .lines()
        .filter(|l| {
            let name = l.split(['{', ' ']).next().unwrap_or("");
            name.starts_with("tickforge_") && name.contains("tick") && name.ends_with("_bucket")
        })
        .count();
    assert!(tick_buckets > 0, "{}", metrics.body);
    // With a headroom limit set, admission publishes the load it judges.
    get_until(addr, "/metrics", |r| {
        ["cpu", "busy", "demand", "tick_load"]
            .iter()
            .all(|measure| {
                let label = format!("measure=\"{measure}\"");
                sample(&r.body, "tickforge_admission_load_percent", &[&label]).is_some()
            })
            && sample(&r.body, "tickforge_admission_send_delay_seconds", &[])
                .is_some_and(|seconds| (0.0..=5.0).contains(&seconds))
            && sample(&r.body, "tickforge_admission_receive_queue_bytes", &[])
                .is_some_and(|bytes| bytes >= 0.0)
    })
    .await;
    // A player over QUIC: the per-datagram counters (handles the server
    // registers when it binds, after the recorder is installed) count.
    let cert = std::fs::read(dir.path().join("cert.der")).expect("the dev certificate");
    let client = Client::new(ClientConfig::new(quic, vec![cert.into()])).expect("a client");
    let session = tokio::time::timeout(
        WAIT,
        client.join::<Arena>(JoinRequest::open_player("metered", "ada")),
    )
    .await
    .expect("join in time")
    .expect("joins");
    get_until(addr, "/metrics", |r| {
        let counted = |metric: &str, labels: &[&str]| {
            sample(&r.body, metric, labels).is_some_and(|value| value > 0.0)
        };
        counted("tickforge_net_datagrams_sent_total", &[])
            && counted("tickforge_net_bytes_sent_total", &["channel=\"datagram\""])
            && counted("tickforge_net_bytes_received_total", &[])
    })
    .await;
    session.close();

    let pid = i32::try_from(child.id()).expect("a pid");
    // SAFETY: kill(2) on our own child's pid with a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "SIGTERM sent");
    let exit = tokio::task::spawn_blocking(move || child.wait());
    let status = tokio::time::timeout(WAIT, exit)
        .await
        .unwrap_or_else(|_| panic!("serve still running {WAIT:?} after SIGTERM"))
        .expect("waiter")
        .expect("serve exits");
    assert!(status.success(), "serve exited with {status} after SIGTERM");
}
