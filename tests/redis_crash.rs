//! Crashes and outages against a real redis-server while arena matches are
//! being played, and a crash of the engine process itself.
//!
//! - kill -9 of redis-server during a busy run, restarted on the same
//!   directory: with `appendfsync always` every event the engine saw
//!   acknowledged is in the files, byte for byte; with `everysec` (and the
//!   unsynced tail of the AOF cut off, as an OS crash would) the running
//!   engine re-appends what Redis lost and every log ends up whole;
//! - redis-server down for 3 s: the matches keep ticking, the writer
//!   retries, and the log is whole afterwards;
//! - kill -9 of a `tickforge serve` process: every live match restores to
//!   exactly what an independent rebuild from sequence 0 gives, and a new
//!   `tickforge serve` brings every one of them back;
//! - a 3-master cluster: matches spread over the nodes restore like a
//!   rebuild, and each match's keys live on one node.
//!
//! What a crashed server persisted is read by a *second* redis-server
//! started on a copy of its files, so the engine (which repairs what it
//! finds missing) cannot hide a loss. Synchronisation awaits events or polls
//! a condition with a deadline; the only fixed wait is the 3 s outage.
//!
//! Process mode only (`TICKFORGE_TEST_REDIS` unset): the tests kill and
//! restart servers.

#![cfg(feature = "redis")]

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Mode, RedisProcess, ServerOptions, TestCluster, TestRedis};
use tickforge::arena::{Arena, ArenaEvent, ArenaState};
use tickforge::codec;
use tickforge::engine::{
    Durability, Engine, EngineError, EngineSettings, EngineStats, EventEnvelope, EventRetention,
    MatchFeed, MatchPolicy, MatchUpdate, rebuild_from_start, restore,
};
use tickforge::game::{Game, Tick};
use tickforge::play::autoplay::{AutoplayCounters, play_match};
use tickforge::store::{EventStore, Head, MatchKey, RedisStore, SnapshotStore, StoreError};
use tokio::sync::broadcast::error::TryRecvError;
use tokio::task::JoinSet;

/// Snapshots every second at 30 Hz: restores start from one, and the
/// writer's retained log (from the snapshot before the latest) spans more
/// than the losses these tests cause.
const SNAPSHOT_EVERY_TICKS: u64 = 30;

/// How long any awaited condition may take.
const DEADLINE: Duration = Duration::from_secs(15);

/// Poll interval while waiting for a condition no event signals.
const POLL: Duration = Duration::from_millis(20);

fn process_mode() -> bool {
    let process = Mode::from_env() == Mode::Process;
    if !process {
        eprintln!("crash tests need redis-server child processes; skipped");
    }
    process
}

fn settings() -> EngineSettings {
    settings_with(EventRetention::Full)
}

fn settings_with(retention: EventRetention) -> EngineSettings {
    EngineSettings {
        tick_hz: 30,
        shards: 2,
        write_queue_ticks: 1_800,
        durability: Durability::Async,
        policy: MatchPolicy {
            max_pending: 1_024,
            snapshot_every_ticks: SNAPSHOT_EVERY_TICKS,
        },
        retention,
        ..EngineSettings::default()
    }
}

fn bytes(state: &ArenaState) -> Vec<u8> {
    codec::encode(state).expect("states encode")
}

/// One match being played, with everything its feed published.
struct Played {
    key: MatchKey,
    feed: MatchFeed<Arena>,
    events: Vec<Arc<EventEnvelope<ArenaEvent>>>,
}

impl Played {
    /// Takes what the feed published since the last call.
    fn drain(&mut self) {
        loop {
            match self.feed.events.try_recv() {
                Ok(event) => {
                    assert_eq!(
                        event.sequence,
                        self.events.len() as u64,
                        "{}: feed out of order",
                        self.key
                    );
                    self.events.push(event);
                }
                Err(TryRecvError::Lagged(n)) => panic!("{}: feed lagged by {n}", self.key),
                Err(_) => return,
            }
        }
    }

    /// The latest published state.
    fn last(&self) -> Arc<MatchUpdate<ArenaState>> {
        self.feed
            .updates
            .borrow()
            .clone()
            .unwrap_or_else(|| panic!("{}: nothing published yet", self.key))
    }

    /// The last tick published (0 before the first).
    fn tick(&self) -> Tick {
        self.feed.updates.borrow().as_ref().map_or(0, |u| u.tick)
    }
}

/// An engine on a Redis store with bots playing every match.
struct Busy {
    engine: Arc<Engine<Arena, RedisStore>>,
    matches: Vec<Played>,
    bots: JoinSet<()>,
}

impl Busy {
    async fn start(store: RedisStore, edition: &str, roots: &[String], players: u32) -> Busy {
        Self::start_with(store, edition, roots, players, settings()).await
    }

    async fn start_with(
        store: RedisStore,
        edition: &str,
        roots: &[String],
        players: u32,
        settings: EngineSettings,
    ) -> Busy {
        let engine = Arc::new(Engine::start(Arena::default(), store, settings, edition));
        let counters = Arc::new(AutoplayCounters::default());
        let mut matches = Vec::new();
        let mut bots = JoinSet::new();
        for (i, root) in roots.iter().enumerate() {
            engine.create_match(root).await.expect("create match");
            // Subscribed before any bot joins: the feed sees every event.
            let feed = engine.subscribe(root).expect("subscribe");
            matches.push(Played {
                key: engine.key(root).expect("valid root"),
                feed,
                events: Vec::new(),
            });
            let (engine, counters, root) = (engine.clone(), counters.clone(), root.clone());
            bots.spawn(async move {
                let _ = play_match(&engine, &counters, &root, players, i as u64 + 1).await;
            });
        }
        Busy {
            engine,
            matches,
            bots,
        }
    }

    fn keys(&self) -> Vec<MatchKey> {
        self.matches.iter().map(|m| m.key.clone()).collect()
    }

    fn drain(&mut self) {
        self.matches.iter_mut().for_each(Played::drain);
    }

    fn stats(&self) -> EngineStats {
        self.engine.stats()
    }

    /// kill -9 of `process`, then waits until the writer has noticed (an
    /// append failed). No acknowledgement can arrive after that: the
    /// returned count is every event the engine was told is stored.
    async fn kill_redis(&self, process: &mut RedisProcess) -> u64 {
        process.kill();
        let at_kill = self.stats();
        wait_for("the writer to notice the crash", || {
            self.stats().append_failures > at_kill.append_failures
        })
        .await;
        self.stats().persisted_events
    }

    /// Polls until every match has stored at least `min_events` events and
    /// a snapshot; returns the heads.
    async fn wait_for_events(&mut self, store: &RedisStore, min_events: u64) -> Vec<Head> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.drain();
            let heads = heads(store, &self.keys()).await.expect("store reachable");
            let mut ready = heads.iter().all(|h| h.next_sequence >= min_events);
            for key in &self.keys() {
                ready &= store.load_snapshot(key).await.expect("snapshot").is_some();
            }
            if ready {
                return heads;
            }
            assert!(
                Instant::now() < deadline,
                "matches did not reach {min_events} stored events and a snapshot: {heads:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls until the store holds every match up to the tick and sequence
    /// it had reached when this was called (the writer flushed its backlog),
    /// while the store may still be reconnecting.
    async fn wait_caught_up(&mut self, store: &RedisStore) {
        self.drain();
        let targets: Vec<(Tick, u64)> = self
            .matches
            .iter()
            .map(|m| {
                let last = m.last();
                (last.tick, last.next_sequence)
            })
            .collect();
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.drain();
            let found = match heads(store, &self.keys()).await {
                Ok(heads) => {
                    let done = heads
                        .iter()
                        .zip(&targets)
                        .all(|(h, &(tick, next))| h.tick >= tick && h.next_sequence >= next);
                    if done {
                        return;
                    }
                    format!("{heads:?}")
                }
                Err(StoreError::Unavailable(e)) => e,
                Err(e) => panic!("reading heads: {e}"),
            };
            assert!(
                Instant::now() < deadline,
                "the writer did not catch up with {targets:?} (tick, next sequence); store has {found}; {:?}",
                self.stats()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops the engine (final snapshots, everything flushed) and checks
    /// every match's stored log against what the engine published.
    async fn finish(mut self, store: &RedisStore) -> EngineStats {
        self.engine.shutdown().await;
        self.bots.abort_all();
        self.drain();
        for played in &self.matches {
            assert_log_complete(store, self.engine.game(), played).await;
        }
        self.engine.stats()
    }
}

/// The stored heads of `keys`.
async fn heads(store: &RedisStore, keys: &[MatchKey]) -> Result<Vec<Head>, StoreError> {
    let mut heads = Vec::with_capacity(keys.len());
    for key in keys {
        let head = store.head(key).await?;
        heads.push(head.ok_or_else(|| StoreError::UnknownMatch(key.to_string()))?);
    }
    Ok(heads)
}

/// The lowest sequence `key`'s log still holds (0 unless trimmed).
async fn retained_from(store: &RedisStore, key: &MatchKey) -> u64 {
    match store.read(key, 0, 1).await {
        Ok(_) => 0,
        Err(StoreError::Trimmed { retained_from, .. }) => retained_from,
        Err(e) => panic!("{key}: reading the log: {e}"),
    }
}

/// After shutdown: the stored log of `played` is gap-free and holds every
/// event its feed published, byte for byte (from where it was trimmed, if
/// it was); the stored head is the engine's final one; restoring (snapshot
/// plus events) equals the last published state and, for an untrimmed
/// log, rebuilding from sequence 0. A trimmed log refuses the rebuild.
async fn assert_log_complete(store: &RedisStore, game: &Arena, played: &Played) {
    let key = &played.key;
    let last = played.last();
    let head = store.head(key).await.unwrap().expect("match stored");
    assert_eq!(
        (head.next_sequence, head.tick),
        (last.next_sequence, last.tick),
        "{key}: stored head (next sequence, tick) vs the engine's final state"
    );
    assert_eq!(
        played.events.len() as u64,
        last.next_sequence,
        "{key}: the feed saw every event"
    );
    let floor = retained_from(store, key).await;
    let stored = store.read(key, floor, usize::MAX).await.unwrap();
    assert_eq!(
        floor + stored.len() as u64,
        played.events.len() as u64,
        "{key}: stored events (from {floor}) vs published events"
    );
    for (record, event) in stored.iter().zip(&played.events[floor as usize..]) {
        assert_eq!(
            record.sequence, event.sequence,
            "{key}: gap in the stored log"
        );
        assert_eq!(
            record.payload,
            codec::encode(&**event).unwrap(),
            "{key}: stored event {} differs from the published one",
            event.sequence
        );
    }
    let snapshot = store.load_snapshot(key).await.unwrap().expect("a snapshot");
    assert!(snapshot.sequence > 0, "{key}: snapshot folds no events");
    assert!(
        floor <= snapshot.sequence,
        "{key}: trimmed past the snapshot"
    );
    let restored = restore(game, store, key).await.unwrap();
    assert_eq!(
        (restored.next_sequence, restored.tick),
        (head.next_sequence, head.tick)
    );
    assert_eq!(
        bytes(&restored.state),
        bytes(&last.state),
        "{key}: restore differs from the engine's final state"
    );
    match rebuild_from_start(game, store, key).await {
        Ok(rebuilt) => {
            assert_eq!(floor, 0, "{key}: rebuilt from 0 although trimmed");
            assert_eq!(
                bytes(&restored.state),
                bytes(&rebuilt.state),
                "{key}: restore differs from a rebuild from sequence 0"
            );
            assert_eq!(
                (rebuilt.next_sequence, rebuilt.tick),
                (head.next_sequence, head.tick)
            );
        }
        Err(EngineError::Store(StoreError::Trimmed { retained_from, .. })) => {
            assert_eq!(retained_from, floor, "{key}: trimmed floor");
            assert!(floor > 0);
        }
        Err(e) => panic!("{key}: rebuild from sequence 0 failed: {e}"),
    }
}

/// Polls `condition` until it holds (bounded by [`DEADLINE`]).
async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

fn roots(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Copies a directory tree.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// A second redis-server loading a copy of the AOF of `crashed` (which
/// must be down): what `crashed` persisted, read without the engine's
/// writer anywhere near it.
async fn files_of(crashed: &RedisProcess) -> (RedisProcess, RedisStore) {
    let mut reader = RedisProcess::spawn(ServerOptions::appendonly("always"))
        .await
        .expect("start a reader server");
    reader.kill();
    let aof = reader.dir().join("appendonlydir");
    if aof.exists() {
        std::fs::remove_dir_all(&aof).unwrap();
    }
    copy_dir(&crashed.dir().join("appendonlydir"), &aof).expect("copy the AOF");
    reader
        .restart()
        .await
        .unwrap_or_else(|e| panic!("reader server on the copied AOF: {e}"));
    let store = RedisStore::connect(&[reader.url()]).await.unwrap();
    (reader, store)
}

/// The incremental AOF file Redis (7.x, multi-part AOF) appends to.
fn incr_aof(dir: &Path) -> PathBuf {
    let aof = dir.join("appendonlydir");
    let manifest = std::fs::read_to_string(aof.join("appendonly.aof.manifest")).unwrap();
    let name = manifest
        .lines()
        .filter(|line| line.trim_end().ends_with("type i"))
        .filter_map(|line| line.split_whitespace().nth(1))
        .next_back()
        .unwrap_or_else(|| panic!("no incremental AOF in the manifest: {manifest}"))
        .to_owned();
    aof.join(name)
}

/// kill -9 of redis-server (appendfsync always) while the engine appends
/// every tick: the files hold every event the engine saw acknowledged and
/// every event Redis served before the crash, byte for byte. After the
/// restart the engine finds nothing missing (no repair), flushes its
/// backlog, and every log is complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_appendfsync_always_keeps_every_acknowledged_event() {
    if !process_mode() {
        return;
    }
    let mut redis = TestRedis::start_with(ServerOptions::appendonly("always")).await;
    let store = redis.store().await;
    let mut busy = Busy::start(redis.store().await, redis.edition(), &roots("a", 4), 6).await;
    busy.wait_for_events(&store, 100).await;

    // Served to a reader just before the crash, hence on disk already.
    let mut served = Vec::new();
    for key in busy.keys() {
        served.push(store.read(&key, 0, usize::MAX).await.unwrap());
    }
    let process = redis.process().expect("process mode");
    let acknowledged = busy.kill_redis(process).await;

    let (reader, on_disk) = files_of(process).await;
    busy.drain();
    let mut kept = 0;
    for (played, served) in busy.matches.iter().zip(&served) {
        let key = &played.key;
        let log = on_disk.read(key, 0, usize::MAX).await.unwrap();
        kept += log.len() as u64;
        assert!(
            log.len() >= served.len(),
            "{key}: Redis served {} events before the crash, its files hold {}",
            served.len(),
            log.len()
        );
        assert_eq!(
            &log[..served.len()],
            &served[..],
            "{key}: served events changed"
        );
        assert!(log.len() <= played.events.len(), "{key}: more than played");
        for (i, (record, event)) in log.iter().zip(&played.events).enumerate() {
            assert_eq!(record.sequence, i as u64, "{key}: gap on disk");
            assert_eq!(record.payload, codec::encode(&**event).unwrap());
        }
        let head = on_disk.head(key).await.unwrap().unwrap();
        assert_eq!(head.next_sequence, log.len() as u64, "{key}: head vs log");
    }
    assert!(
        kept >= acknowledged,
        "appendfsync always: the files hold {kept} events, the engine saw {acknowledged} acknowledged"
    );
    drop(on_disk);
    drop(reader);

    process.restart().await.expect("restart on the same dir");
    busy.wait_caught_up(&store).await;
    assert_eq!(
        busy.stats().repaired_events,
        0,
        "appendfsync always lost nothing acknowledged, so nothing needed repair"
    );
    let stats = busy.finish(&store).await;
    assert!(stats.append_failures > 0);
    assert_eq!(stats.paused_matches, 0);
    assert!(
        stats.persisted_events > acknowledged,
        "appends went on after the restart"
    );
}

/// kill -9 of redis-server (appendfsync everysec) during a busy run. A
/// process crash alone loses nothing (the kernel still holds every write,
/// fsynced or not), so before the restart the AOF is cut back to its size
/// a few acknowledged ticks earlier: what an OS crash leaves when the last
/// fsync was then. The engine, still running, finds the heads below what it
/// was acknowledged, re-appends the lost tail from memory, and every log
/// ends up complete and gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_appendfsync_everysec_is_repaired_by_the_running_engine() {
    if !process_mode() {
        return;
    }
    let stats = everysec_crash_is_repaired(EventRetention::Full).await;
    assert_eq!(stats.trimmed_events, 0);
}

/// The same crash with events trimmed below every snapshot: the restarted
/// Redis holds an older trim along with the older snapshot it belongs to,
/// so the repair still finds the store's head within what the engine
/// retains, and every log is whole from where it was trimmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_appendfsync_everysec_is_repaired_with_trimming_on() {
    if !process_mode() {
        return;
    }
    let trim = EventRetention::TrimBelowSnapshot {
        keep_for: Vec::new(),
    };
    let stats = everysec_crash_is_repaired(trim).await;
    assert!(stats.trimmed_events > 0, "nothing was trimmed: {stats:?}");
}

/// The body of the everysec crash tests; returns the engine's final stats.
async fn everysec_crash_is_repaired(retention: EventRetention) -> EngineStats {
    let trimming = retention != EventRetention::Full;
    let mut redis = TestRedis::start_with(ServerOptions::appendonly("everysec")).await;
    let store = redis.store().await;
    let mut busy = Busy::start_with(
        redis.store().await,
        redis.edition(),
        &roots("e", 4),
        6,
        settings_with(retention),
    )
    .await;
    busy.wait_for_events(&store, 100).await;

    let process = redis.process().expect("process mode");
    let aof = incr_aof(process.dir());
    let synced_len = std::fs::metadata(&aof).unwrap().len();
    let at_sync = busy.stats();
    // A few acknowledged ticks after the "last fsync", well within a
    // snapshot interval (the engine retains events back to the snapshot
    // before the latest).
    // With trimming, also a snapshot and trim after the cut: the crash
    // then takes a trim with it.
    wait_for("acknowledged appends (and a trim) after the cut", || {
        let now = busy.stats();
        now.persisted_events >= at_sync.persisted_events + 40
            && now.appends >= at_sync.appends + 4
            && (!trimming || now.trimmed_events > at_sync.trimmed_events)
    })
    .await;
    let mut floors_at_kill = Vec::new();
    for key in busy.keys() {
        floors_at_kill.push(retained_from(&store, &key).await);
    }
    let acknowledged = busy.kill_redis(process).await;

    // What kill -9 alone left behind.
    let (reader, on_disk) = files_of(process).await;
    let mut after_kill = 0;
    for head in heads(&on_disk, &busy.keys()).await.unwrap() {
        after_kill += head.next_sequence;
    }
    drop(on_disk);
    drop(reader);
    let lost_to_kill = acknowledged.saturating_sub(after_kill);

    // The unsynced tail goes, as in an OS crash.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&aof)
        .unwrap()
        .set_len(synced_len)
        .unwrap();
    let (reader, on_disk) = files_of(process).await;
    let mut kept = 0;
    let mut lost_trims = 0;
    for ((played, head), floor_at_kill) in busy
        .matches
        .iter()
        .zip(heads(&on_disk, &busy.keys()).await.unwrap())
        .zip(&floors_at_kill)
    {
        let floor = retained_from(&on_disk, &played.key).await;
        lost_trims += usize::from(floor < *floor_at_kill);
        let log = on_disk.read(&played.key, floor, usize::MAX).await.unwrap();
        assert_eq!(
            floor + log.len() as u64,
            head.next_sequence,
            "cut AOF is gap-free"
        );
        kept += head.next_sequence;
    }
    drop(on_disk);
    drop(reader);
    assert!(
        !trimming || lost_trims > 0,
        "no trim after the cut was lost (floors at the kill: {floors_at_kill:?})"
    );
    assert!(
        kept < acknowledged,
        "the cut AOF holds {kept} events, no fewer than the {acknowledged} acknowledged: no loss to repair"
    );
    let produced = busy.stats().events;

    process.restart().await.expect("restart on the same dir");
    busy.wait_caught_up(&store).await;
    let repaired = busy.stats().repaired_events;
    assert!(
        (acknowledged - kept..=produced - kept).contains(&repaired),
        "repaired {repaired} events; the restarted Redis held {kept}, the engine had \
         {acknowledged} acknowledged and {produced} produced (kill -9 alone lost {lost_to_kill})"
    );
    let keys = busy.keys();
    let stats = busy.finish(&store).await;
    assert_eq!(stats.paused_matches, 0);
    if trimming {
        for key in &keys {
            assert!(retained_from(&store, key).await > 0, "{key}: never trimmed");
        }
    }
    eprintln!(
        "everysec crash (trimming {trimming}): kill -9 alone lost {lost_to_kill} acknowledged \
         events; the cut AOF lost {}, all repaired ({repaired}); {} events trimmed",
        acknowledged - kept,
        stats.trimmed_events
    );
    stats
}

/// redis-server stopped for 3 s mid-match, then restarted on its directory
/// (AOF everysec): the matches kept ticking and the bots kept playing
/// through the outage, the writer retried, and afterwards every log is
/// complete and gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3_second_redis_outage_mid_match_loses_nothing() {
    if !process_mode() {
        return;
    }
    let mut redis = TestRedis::start_with(ServerOptions::appendonly("everysec")).await;
    let store = redis.store().await;
    let mut busy = Busy::start(redis.store().await, redis.edition(), &roots("o", 4), 6).await;
    busy.wait_for_events(&store, 60).await;

    let process = redis.process().expect("process mode");
    process.kill();
    busy.drain();
    let ticks_before: Vec<Tick> = busy.matches.iter().map(Played::tick).collect();
    let before = busy.stats();
    // The outage itself: a duration, not a synchronisation.
    tokio::time::sleep(Duration::from_secs(3)).await;
    busy.drain();
    let during = busy.stats();
    for (played, before) in busy.matches.iter().zip(&ticks_before) {
        let advanced = played.tick() - before;
        assert!(
            advanced >= 60,
            "{}: only {advanced} ticks in 3 s without Redis",
            played.key
        );
    }
    assert!(
        during.events > before.events,
        "the bots kept playing during the outage"
    );
    assert!(
        during.append_failures > before.append_failures,
        "appends failed during the outage"
    );
    assert_eq!(during.paused_matches, 0);

    process.restart().await.expect("restart on the same dir");
    busy.wait_caught_up(&store).await;
    let stats = busy.finish(&store).await;
    assert!(stats.persisted_events >= during.events);
    assert_eq!(stats.paused_matches, 0);
}

/// A `tickforge` child process; stderr lines arrive on a channel.
struct Served {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    log: Vec<String>,
}

impl Served {
    fn spawn(config: &Path, redis_url: &str, args: &[&str]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tickforge"))
            .arg("--config")
            .arg(config)
            .args(args)
            .env("REDIS_URL", redis_url)
            .env("RUST_LOG", "info")
            .env_remove("STORAGE_BACKEND")
            .env_remove("TICKFORGE_SECRET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the tickforge binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Served {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Awaits the next stderr line containing `needle`.
    async fn line_containing(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Ok(None) => panic!(
                    "tickforge exited before logging {needle:?}:\n{}",
                    self.log.join("\n")
                ),
                Err(_) => panic!(
                    "no {needle:?} within {DEADLINE:?}:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// Panics with the log if the process has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            while let Ok(line) = self.lines.try_recv() {
                self.log.push(line);
            }
            panic!("tickforge exited with {status}:\n{}", self.log.join("\n"));
        }
    }

    /// SIGINT (Ctrl-C), then waits for the exit.
    async fn interrupt(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -INT failed");
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "tickforge did not stop within {DEADLINE:?} of SIGINT"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number after `name=` in a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    let rest = line.split(&format!("{name}=")).nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Every live match of `edition` restores (snapshot plus events) to exactly
/// what a rebuild from sequence 0 gives, at the stored head; returns the
/// heads.
async fn assert_restores_like_rebuilds(
    store: &RedisStore,
    live: &[MatchKey],
) -> Vec<(Head, Vec<u8>)> {
    let arena = Arena::default();
    let mut out = Vec::new();
    for key in live {
        let head = store.head(key).await.unwrap().expect("stored");
        let snapshot = store.load_snapshot(key).await.unwrap().expect("a snapshot");
        assert!(
            snapshot.sequence <= head.next_sequence && snapshot.tick <= head.tick,
            "{key}: snapshot ({}, {}) beyond the head {head:?}",
            snapshot.sequence,
            snapshot.tick
        );
        let restored = restore(&arena, store, key).await.unwrap();
        let rebuilt = rebuild_from_start(&arena, store, key).await.unwrap();
        assert_eq!(
            bytes(&restored.state),
            bytes(&rebuilt.state),
            "{key}: restore differs from a rebuild from sequence 0"
        );
        assert_eq!(
            (restored.next_sequence, restored.tick),
            (head.next_sequence, head.tick),
            "{key}: restore stops at the stored head"
        );
        assert_eq!(
            (rebuilt.next_sequence, rebuilt.tick),
            (head.next_sequence, head.tick),
            "{key}: rebuild stops at the stored head"
        );
        out.push((head, bytes(&restored.state)));
    }
    out
}

/// kill -9 of a `tickforge serve --bots 3` process mid-match: every live
/// match in Redis restores to exactly the state a rebuild from sequence 0
/// gives at its last persisted tick, and a new `tickforge serve` logs that
/// it restored every one of them, hosts them (their stored ticks move on)
/// and stops cleanly on SIGINT with a final snapshot of each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_killed_mid_match_comes_back_exactly() {
    if !process_mode() {
        return;
    }
    let redis = TestRedis::start_with(ServerOptions::appendonly("everysec")).await;
    let store = redis.store().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tickforge.toml");
    let quoted = |name: &str| format!("{:?}", dir.path().join(name).display().to_string());
    std::fs::write(
        &config,
        format!(
            "[engine]\nedition = {:?}\nsnapshot_every_ticks = {SNAPSHOT_EVERY_TICKS}\nshards = 2\n\
             [net]\nlisten = \"127.0.0.1:0\"\ndev_cert = {}\ndev_key = {}\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n",
            redis.edition(),
            quoted("cert.der"),
            quoted("key.der"),
        ),
    )
    .unwrap();
    let arena = Arena::default();

    let mut first = Served::spawn(&config, redis.url(), &["serve", "--bots", "3"]);
    let line = first.line_containing("restored=").await;
    assert_eq!(field(&line, "restored"), Some(0), "fresh edition: {line}");
    let deadline = Instant::now() + DEADLINE;
    loop {
        first.assert_running();
        let live = store
            .live_matches(arena.domain(), redis.edition())
            .await
            .unwrap();
        let mut ready = live.len() == 3;
        for key in &live {
            let head = store.head(key).await.unwrap();
            let snapshot = store.load_snapshot(key).await.unwrap();
            ready &= head.is_some_and(|h| h.next_sequence >= 100) && snapshot.is_some();
        }
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 3 busy matches in Redis: {live:?}\n{}",
            first.log.join("\n")
        );
        tokio::time::sleep(POLL).await;
    }
    first.child.kill().expect("SIGKILL the engine");
    first.child.wait().unwrap();

    let live = store
        .live_matches(arena.domain(), redis.edition())
        .await
        .unwrap();
    assert_eq!(live.len(), 3, "live matches after the crash: {live:?}");
    let crashed = assert_restores_like_rebuilds(&store, &live).await;

    let mut second = Served::spawn(&config, redis.url(), &["serve"]);
    let line = second.line_containing("restored=").await;
    assert_eq!(
        (field(&line, "restored"), field(&line, "failed")),
        (Some(live.len() as u64), Some(0)),
        "the new server restores every live match: {line}"
    );
    // It hosts them: their stored ticks move on (no players, no events).
    let deadline = Instant::now() + DEADLINE;
    loop {
        second.assert_running();
        let now = heads(&store, &live).await.unwrap();
        if now.iter().zip(&crashed).all(|(h, (c, _))| h.tick > c.tick) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restored matches do not tick: {now:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    let status = second.interrupt().await;
    assert!(status.success(), "{status}:\n{}", second.log.join("\n"));

    let stopped = assert_restores_like_rebuilds(&store, &live).await;
    for (key, ((after, _), (before, _))) in live.iter().zip(stopped.iter().zip(&crashed)) {
        assert_eq!(
            after.next_sequence, before.next_sequence,
            "{key}: nobody played on the second server"
        );
        assert!(after.tick > before.tick, "{key}");
        let snapshot = store.load_snapshot(key).await.unwrap().unwrap();
        assert_eq!(
            (snapshot.sequence, snapshot.tick),
            (after.next_sequence, after.tick),
            "{key}: final snapshot on a clean stop"
        );
    }
}

/// Slot ranges a cluster node serves, from its own `CLUSTER NODES` line.
async fn slot_ranges(url: &str) -> Vec<(u16, u16)> {
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut con)
        .await
        .unwrap();
    let myself = nodes
        .lines()
        .find(|line| line.contains("myself"))
        .expect("a myself line");
    myself
        .split_whitespace()
        .skip(8)
        .filter(|range| !range.starts_with('['))
        .map(|range| match range.split_once('-') {
            Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
            None => (range.parse().unwrap(), range.parse().unwrap()),
        })
        .collect()
}

/// A 3-master cluster: matches placed two per node play on one engine, and
/// after shutdown each restores exactly like a rebuild from sequence 0, with
/// all of its keys on the node owning its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_matches_on_every_node_restore_like_rebuilds() {
    if !process_mode() {
        return;
    }
    let cluster = TestCluster::start(3).await;
    let urls = cluster.urls();
    let mut owners_ranges = Vec::new();
    for url in &urls {
        owners_ranges.push(slot_ranges(url).await);
    }
    let client = redis::Client::open(urls[0].as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    // Two matches per node, slots as Redis computes them.
    let mut placed: Vec<(String, usize)> = Vec::new();
    for i in 0..1_000 {
        if placed.len() == 6 {
            break;
        }
        let root = format!("c{i}");
        let key = MatchKey::new("arena", cluster.edition(), &root).unwrap();
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key.events_key())
            .query_async(&mut con)
            .await
            .unwrap();
        let owner = owners_ranges
            .iter()
            .position(|ranges| ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .expect("every slot is served");
        if placed.iter().filter(|(_, o)| *o == owner).count() < 2 {
            placed.push((root, owner));
        }
    }
    assert_eq!(placed.len(), 6, "could not place two matches per node");

    let store = cluster.store().await;
    let roots: Vec<String> = placed.iter().map(|(root, _)| root.clone()).collect();
    let mut busy = Busy::start(cluster.store().await, cluster.edition(), &roots, 4).await;
    busy.wait_for_events(&store, 60).await;
    let stats = busy.finish(&store).await;
    assert_eq!(stats.paused_matches, 0);

    for (root, owner) in &placed {
        let key = MatchKey::new("arena", cluster.edition(), root).unwrap();
        let client = redis::Client::open(urls[*owner].as_str()).unwrap();
        let mut node = client.get_multiplexed_async_connection().await.unwrap();
        let present: u64 = redis::cmd("EXISTS")
            .arg(key.meta_key())
            .arg(key.events_key())
            .arg(key.snapshot_key())
            .query_async(&mut node)
            .await
            .unwrap();
        assert_eq!(
            present, 3,
            "{key}: meta, events and snapshot on node {owner}"
        );
    }
}
