//! Shared harness of the network tests: an engine on a memory store and a
//! QUIC server on loopback port 0, clients trusting its certificate.
#![allow(dead_code, unreachable_pub)]

pub mod close_stub;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tickforge::arena::map::DEFAULT_MAP;
use tickforge::arena::{Arena, ArenaMap, ArenaRules, ArenaState};
use tickforge::client::{Client, ClientConfig, JoinRequest, Session, SessionEvent, StateUpdate};
use tickforge::engine::{Engine, EngineSettings};
use tickforge::game::{PlayerId, Tick};
use tickforge::net::server::TransportProbe;
use tickforge::net::tickets::{mint_ticket, unix_now};
use tickforge::net::{DatagramLoss, NetConfig, NetStats, Server, ServerSecret, TlsSource};
use tickforge::store::MemoryStore;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// An upper bound for anything a test awaits.
pub const WAIT: Duration = Duration::from_secs(15);

pub fn secret() -> ServerSecret {
    ServerSecret::new(*b"tickforge network tests secret!!").unwrap()
}

/// What to vary between tests.
#[derive(Clone)]
pub struct Options {
    pub tick_hz: u32,
    pub rules: ArenaRules,
    pub grace: Duration,
    pub loss: Option<DatagramLoss>,
    pub open_mode: bool,
    pub commands_per_second: u32,
    pub store: MemoryStore,
    pub listen: SocketAddr,
    pub tls_dir: Arc<tempfile::TempDir>,
    pub max_connections: usize,
    pub admit_max_tick_load_percent: u32,
    pub admit_max_lag: Duration,
    pub write_timeout: Duration,
    pub hello_timeout: Duration,
    /// The shortest wait a `ServerFull` refusal asks for.
    pub full_retry_after: Duration,
    /// Restore every live match of the store before the server starts
    /// (else a match is restored when a client asks for it).
    pub restore_on_start: bool,
    /// Give the players of the matches restored on start the grace window
    /// (`Server::adopt_players_of`).
    pub adopt_restored: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tick_hz: 30,
            rules: ArenaRules::default(),
            grace: Duration::from_secs(10),
            loss: None,
            open_mode: false,
            commands_per_second: 120,
            store: MemoryStore::new(),
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_dir: Arc::new(tempfile::tempdir().unwrap()),
            max_connections: 10_000,
            admit_max_tick_load_percent: NetConfig::default().admit_max_tick_load_percent,
            admit_max_lag: NetConfig::default().admit_max_lag,
            write_timeout: Duration::from_secs(2),
            hello_timeout: NetConfig::default().hello_timeout,
            full_retry_after: NetConfig::default().full_retry_after,
            restore_on_start: true,
            adopt_restored: false,
        }
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub engine: Arc<Engine<Arena, MemoryStore>>,
    pub stats: Arc<NetStats>,
    /// quinn's counters of the open connections.
    pub transport: TransportProbe,
    pub options: Options,
    pub client: Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

pub fn arena(rules: ArenaRules) -> Arena {
    Arena::new(ArenaMap::parse(DEFAULT_MAP).unwrap(), rules)
}

pub async fn start(options: Options) -> TestServer {
    let settings = EngineSettings {
        tick_hz: options.tick_hz,
        shards: 2,
        ..EngineSettings::default()
    };
    let engine = Arc::new(Engine::start(
        arena(options.rules),
        options.store.clone(),
        settings,
        "main",
    ));
    if options.restore_on_start {
        let _ = engine.restore_all().await.unwrap();
    }
    let config = NetConfig {
        listen: options.listen,
        tls: TlsSource::Dev {
            cert: options.tls_dir.path().join("cert.der"),
            key: options.tls_dir.path().join("key.der"),
        },
        secret: Some(secret()),
        grace: options.grace,
        open_mode: options.open_mode,
        commands_per_second: options.commands_per_second,
        datagram_loss: options.loss,
        max_connections: options.max_connections,
        admit_max_tick_load_percent: options.admit_max_tick_load_percent,
        admit_max_lag: options.admit_max_lag,
        write_timeout: options.write_timeout,
        hello_timeout: options.hello_timeout,
        full_retry_after: options.full_retry_after,
        ..NetConfig::default()
    };
    // A restarted server binds the port its predecessor just released.
    let mut attempts = 0;
    let server = loop {
        match Server::bind(engine.clone(), config.clone()) {
            Ok(server) => break server,
            Err(e) if attempts < 50 => {
                attempts += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot bind: {e}"),
        }
    };
    if options.adopt_restored {
        server.adopt_players_of(engine.hosted_matches());
    }
    let addr = server.local_addr();
    let stats = server.stats();
    let transport = server.transport_probe();
    let client = Client::new(ClientConfig::new(addr, vec![server.certificate().clone()])).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        engine,
        stats,
        transport,
        options: Options {
            listen: addr,
            ..options
        },
        client,
        stop: Some(stop),
        task,
    }
}

impl TestServer {
    pub fn ticket(&self, root: &str, player: u32) -> String {
        mint_ticket(&secret(), root, PlayerId(player), unix_now() + 600)
    }

    pub async fn join(&self, root: &str, player: u32) -> Session<Arena> {
        let ticket = self.ticket(root, player);
        tokio::time::timeout(
            WAIT,
            self.client
                .join::<Arena>(JoinRequest::player(root, &ticket, &format!("p{player}"))),
        )
        .await
        .expect("join timed out")
        .expect("join failed")
    }

    /// Stops the server, then the engine (final snapshots, all flushed).
    pub async fn stop(mut self) -> Options {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(WAIT, &mut self.task).await;
        self.engine.shutdown().await;
        self.options
    }
}

/// Records every state the engine publishes for `root`, by tick.
pub struct Recorder {
    pub states: Arc<std::sync::Mutex<BTreeMap<Tick, ArenaState>>>,
    task: JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn record(engine: &Engine<Arena, MemoryStore>, root: &str) -> Recorder {
    let mut feed = engine.subscribe(root).unwrap();
    let states = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let sink = states.clone();
    let task = tokio::spawn(async move {
        while feed.updates.changed().await.is_ok() {
            let update = feed.updates.borrow_and_update().clone();
            if let Some(update) = update {
                sink.lock()
                    .unwrap()
                    .insert(update.tick, update.state.clone());
            }
        }
    });
    Recorder { states, task }
}

impl Recorder {
    pub fn at(&self, tick: Tick) -> Option<ArenaState> {
        self.states.lock().unwrap().get(&tick).cloned()
    }
}

/// Waits until `done` holds, asking every 10 ms (for server-side
/// bookkeeping, which has no event a test could await).
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

/// Waits for a state satisfying `pred`.
pub async fn state_where(
    session: &Session<Arena>,
    pred: impl Fn(&StateUpdate<ArenaState>) -> bool,
) -> Arc<StateUpdate<ArenaState>> {
    let mut states = session.states();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(s) = states.borrow_and_update().clone()
                && pred(&s)
            {
                return s;
            }
            states.changed().await.expect("session ended");
        }
    })
    .await
    .expect("no such state in time")
}

/// Waits for a session event satisfying `pred`, returning it.
pub async fn event_where(
    session: &mut Session<Arena>,
    pred: impl Fn(&SessionEvent<tickforge::arena::ArenaEvent>) -> bool,
) -> SessionEvent<tickforge::arena::ArenaEvent> {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = session.next_event().await.expect("session ended");
            if pred(&event) {
                return event;
            }
        }
    })
    .await
    .expect("no such event in time")
}

/// Follows a session's states in the background, recording each tick
/// received and when.
pub struct TickLog {
    pub ticks: Arc<std::sync::Mutex<Vec<(Tick, std::time::Instant)>>>,
    task: JoinHandle<()>,
}

impl Drop for TickLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn log_ticks(session: &Session<Arena>) -> TickLog {
    let mut states = session.states();
    let ticks = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = ticks.clone();
    let task = tokio::spawn(async move {
        while states.changed().await.is_ok() {
            let tick = states.borrow_and_update().as_ref().map(|s| s.tick);
            if let Some(tick) = tick {
                sink.lock().unwrap().push((tick, std::time::Instant::now()));
            }
        }
    });
    TickLog { ticks, task }
}

impl TickLog {
    pub fn snapshot(&self) -> Vec<(Tick, std::time::Instant)> {
        self.ticks.lock().unwrap().clone()
    }
}

/// A raw connection admitted as `player` into match "m1" (Hello written,
/// Welcome read), with both halves of its control stream: dropping the
/// receiving half would stop the server's control writes.
pub async fn raw_player(
    server: &TestServer,
    player: u32,
) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    use tickforge::net::protocol::{
        ClientMsg, Credential, FrameBuffer, Hello, Role, ServerMsg, encode_frame,
    };
    let connected = server.client.connect().await.unwrap();
    let conn = connected.connection().clone();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let hello = ClientMsg::<tickforge::arena::ArenaCommand>::Hello(Hello {
        match_id: "m1".into(),
        credential: Credential::Ticket(server.ticket("m1", player)),
        role: Role::Player,
        join: Some(tickforge::codec::encode(&format!("raw{player}")).expect("a name encodes")),
        params: None,
        events_from: None,
    });
    send.write_all(&encode_frame(&hello, 1 << 20).unwrap())
        .await
        .unwrap();
    let mut frames = FrameBuffer::new(1 << 20);
    loop {
        if let Some(msg) = frames
            .next_frame::<ServerMsg<tickforge::arena::ArenaEvent>>()
            .unwrap()
        {
            assert!(matches!(msg, ServerMsg::Welcome(_)), "{msg:?}");
            break;
        }
        let chunk = recv.read_chunk(4096, true).await.unwrap().unwrap();
        frames.extend(&chunk.bytes);
    }
    // Keep `connected` alive through the returned connection handle.
    drop(connected);
    (conn, send, recv)
}
