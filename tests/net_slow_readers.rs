//! Clients that stop reading, over real QUIC on loopback: each is closed
//! with its own code within the write timeout (or before its command
//! results could overflow), its connection permit comes back, and the
//! clients that keep reading play on undisturbed.
//!
//! The slow clients speak the raw protocol on a quinn endpoint whose
//! streams buffer only 512 bytes the application has not read, so "stopped
//! reading" shows on the server after a few frames instead of 1.25 MB.
//! Run with `--release -- --nocapture` for the figures.

mod net_support;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use net_support::*;
use tickforge::arena::{Arena, ArenaCommand, ArenaState, Dir};
use tickforge::client::{Session, SessionEvent, StateUpdate};
use tickforge::game::{PlayerId, Tick};
use tickforge::net::CloseCode;
use tickforge::net::protocol::{self, ClientMsg, Credential, Hello, Role};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const MATCHES: u32 = 10;
/// Per match: players 1..=5 read, players 6..=10 stop reading.
const READERS: u32 = 5;
const SLOW: u32 = 5;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn close_code(error: &quinn::ConnectionError) -> Option<CloseCode> {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => {
            CloseCode::from_code(close.error_code.into_inner())
        }
        _ => None,
    }
}

/// A client endpoint whose connections hold at most 512 bytes unread per stream.
fn stingy_client(server: &TestServer) -> (quinn::Endpoint, quinn::ClientConfig) {
    let trusted = server.client.config().trusted.clone();
    let mut config = tickforge::net::tls::client_config(&trusted, Duration::from_secs(30)).unwrap();
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(Duration::from_secs(30).try_into().unwrap()))
        .keep_alive_interval(Some(Duration::from_secs(1)))
        .stream_receive_window(quinn::VarInt::from_u32(512))
        .datagram_receive_buffer_size(Some(8 * 1024));
    config.transport_config(Arc::new(transport));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    (endpoint, config)
}

/// A raw player that sends its `Hello` and then `commands` commands, at
/// most `per_burst` every 100 ms, and never reads anything. Returns the
/// connection (kept open: its streams are held) once all are sent.
struct SlowClient {
    conn: quinn::Connection,
    _streams: (quinn::SendStream, quinn::RecvStream),
    stopped_reading: Instant,
}

async fn slow_client(
    server: &TestServer,
    client: &(quinn::Endpoint, quinn::ClientConfig),
    root: &str,
    player: u32,
    commands: u64,
    per_burst: u64,
) -> SlowClient {
    let (endpoint, config) = client;
    let conn = endpoint
        .connect_with(config.clone(), server.addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    let stopped_reading = Instant::now();
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let hello = ClientMsg::<ArenaCommand>::Hello(Hello {
        match_id: root.into(),
        credential: Credential::Ticket(server.ticket(root, player)),
        role: Role::Player,
        join: Some(tickforge::codec::encode(&format!("slow{player}")).expect("a name encodes")),
        params: None,
        events_from: None,
    });
    send.write_all(&protocol::encode_frame(&hello, 1 << 16).unwrap())
        .await
        .unwrap();
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    for first in (0..commands).step_by(per_burst as usize) {
        pace.tick().await;
        let mut burst = Vec::new();
        for client_seq in first..(first + per_burst).min(commands) {
            let command = ClientMsg::Command {
                client_seq,
                command: ArenaCommand::Turn(Dir::ALL[client_seq as usize % 4]),
            };
            burst.extend(protocol::encode_frame(&command, 1 << 16).unwrap());
        }
        if send.write_all(&burst).await.is_err() {
            break; // closed already
        }
    }
    SlowClient {
        conn,
        _streams: (send, recv),
        stopped_reading,
    }
}

/// A player using the client library: turns every 300 ms, reads
/// everything, and records any disconnection.
struct Reader {
    player: PlayerId,
    states: watch::Receiver<Option<Arc<StateUpdate<ArenaState>>>>,
    ticks: TickLog,
    troubles: Arc<std::sync::Mutex<Vec<String>>>,
    resumes: Arc<tickforge::client::ClientStats>,
    task: JoinHandle<()>,
}

fn play(mut session: Session<Arena>) -> Reader {
    let player = session.player().unwrap();
    let states = session.states();
    let ticks = log_ticks(&session);
    let resumes = session.stats().clone();
    let troubles = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = troubles.clone();
    let task = tokio::spawn(async move {
        let mut turn = tokio::time::interval(Duration::from_millis(300));
        let mut n = 0usize;
        loop {
            tokio::select! {
                event = session.next_event() => match event {
                    Some(SessionEvent::Disconnected { code, reason, .. } | SessionEvent::Closed { code, reason }) => {
                        sink.lock().unwrap().push(format!("{code:?}: {reason}"));
                    }
                    Some(_) => {}
                    None => return,
                },
                _ = turn.tick() => {
                    n += 1;
                    let _ = session.send(ArenaCommand::Turn(Dir::ALL[n % 4]));
                }
            }
        }
    });
    Reader {
        player,
        states,
        ticks,
        troubles,
        resumes,
        task,
    }
}

impl Reader {
    async fn reaches(&mut self, tick: Tick) {
        let player = self.player;
        tokio::time::timeout(WAIT, async {
            loop {
                if self
                    .states
                    .borrow_and_update()
                    .as_ref()
                    .is_some_and(|s| s.tick >= tick)
                {
                    return;
                }
                self.states.changed().await.expect("session ended");
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{player} got no state of tick {tick} or later"));
    }

    fn latest(&self) -> Tick {
        self.states.borrow().as_ref().map_or(0, |s| s.tick)
    }
}

/// Players 1..=READERS of matches `{prefix}0..` join and play.
async fn join_readers(server: &TestServer, prefix: &str) -> Vec<Reader> {
    let mut readers = Vec::new();
    for m in 0..MATCHES {
        for p in 1..=READERS {
            let session = server.join(&format!("{prefix}{m}"), p).await;
            readers.push(play(session));
        }
    }
    readers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_are_closed_and_readers_play_on() {
    let total = (MATCHES * (READERS + SLOW)) as usize;
    // 10 Hz and a patient handshake keep 100 debug-build connections
    // within a shared (loaded) 2-core machine.
    let server = start(Options {
        tick_hz: 10,
        hello_timeout: Duration::from_secs(30),
        grace: Duration::from_secs(120),
        max_connections: total,
        ..Options::default()
    })
    .await;
    let mut readers = join_readers(&server, "m").await;
    let rss_before = rss_kib();

    // 50 slow clients: each joins, sends 40 commands (fewer than its
    // reply queue holds: 2 x 120 + 64) and never reads; their results and
    // the events of their match fill its 512-byte window. The events of a
    // match (200 turns, 100 moves a second) stay well under the event
    // feed's 1,024 while a write waits out its 2 s, so a slow machine does
    // not close a slow client as `Lagging` before it is a `SlowReader`.
    let stingy = stingy_client(&server);
    let mut slow = Vec::new();
    for m in 0..MATCHES {
        for p in READERS + 1..=READERS + SLOW {
            slow.push(slow_client(&server, &stingy, &format!("m{m}"), p, 40, 40).await);
        }
    }
    let rss_stalled = rss_kib();

    // Each is closed for not reading; await every close.
    let mut waited = Vec::new();
    for client in &slow {
        let error = tokio::time::timeout(WAIT, client.conn.closed())
            .await
            .expect("a client that stopped reading was not closed");
        waited.push(client.stopped_reading.elapsed());
        assert_eq!(close_code(&error), Some(CloseCode::SlowReader), "{error}");
    }
    let rss_after = rss_kib();
    let stats = &server.stats;
    assert_eq!(stats.closed_slow_reader.load(Relaxed), slow.len() as u64);
    assert_eq!(stats.closed_reply_queue_full.load(Relaxed), 0);

    // The readers kept receiving states throughout: each one gets a state
    // a second past the last close, and none was ever disconnected.
    let closed_at = readers.iter().map(Reader::latest).max().unwrap();
    for reader in &mut readers {
        reader.reaches(closed_at + 10).await;
    }
    let mut coverage = Vec::new();
    for reader in &readers {
        assert!(
            reader.troubles.lock().unwrap().is_empty(),
            "{} was disconnected: {:?}",
            reader.player,
            reader.troubles.lock().unwrap()
        );
        assert_eq!(reader.resumes.resumes.load(Relaxed), 0);
        let ticks: Vec<Tick> = reader.ticks.snapshot().iter().map(|(t, _)| *t).collect();
        let (first, last) = (ticks[0], *ticks.last().unwrap());
        let max_gap = ticks.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        coverage.push((ticks.len() as f64 / (last - first + 1) as f64, max_gap));
    }

    // The slow clients' slots wait out their grace window: they are
    // still in their match.
    let mut feed = server.engine.subscribe("m0").unwrap();
    feed.updates.changed().await.unwrap();
    let state = feed.updates.borrow().clone().unwrap();
    for p in READERS + 1..=READERS + SLOW {
        assert!(state.state.players.contains_key(&PlayerId(p)), "{p} left");
    }

    // Their connection permits came back: with max_connections taken by
    // readers and slow clients together, 50 more players get in (into
    // new matches: the slow players still hold their places in theirs).
    let late = join_readers(&server, "late").await;
    assert_eq!(late.len(), total - slow.len());
    assert_eq!(stats.open.load(Relaxed), total as u64);

    let secs: Vec<f64> = waited.iter().map(Duration::as_secs_f64).collect();
    let min = secs.iter().cloned().fold(f64::MAX, f64::min);
    let max = secs.iter().cloned().fold(0.0, f64::max);
    let worst_share = coverage.iter().map(|c| c.0).fold(1.0, f64::min);
    let worst_gap = coverage.iter().map(|c| c.1).max().unwrap_or(0);
    println!(
        "slow readers: {} closed (SlowReader) {min:.2}-{max:.2} s after they stopped reading \
         (write timeout 2 s); readers: lowest share of ticks received {:.3}, largest tick gap {worst_gap}; \
         test process RSS {rss_before} KiB before, {rss_stalled} KiB with 50 stalled, {rss_after} KiB after the closes",
        slow.len(),
        worst_share,
    );
    for reader in readers.into_iter().chain(late) {
        reader.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_but_never_reads_is_closed_before_a_result_is_lost() {
    // A long write timeout, so only the reply queue can close it.
    let server = start(Options {
        commands_per_second: 1000,
        write_timeout: Duration::from_secs(60),
        ..Options::default()
    })
    .await;
    let mut reader = play(server.join("m0", 1).await);
    let stingy = stingy_client(&server);
    // 4000 commands at 800 a second: within the rate limit, but the reply
    // queue holds 2 x 1000 + 64 and the client reads none of the results.
    let client = slow_client(&server, &stingy, "m0", 2, 4000, 80).await;
    let error = tokio::time::timeout(WAIT, client.conn.closed())
        .await
        .expect("the client was not closed");
    assert_eq!(
        close_code(&error),
        Some(CloseCode::ReplyQueueFull),
        "{error}"
    );
    let stats = &server.stats;
    assert_eq!(stats.closed_reply_queue_full.load(Relaxed), 1);
    assert_eq!(stats.closed_slow_reader.load(Relaxed), 0);
    assert!(stats.commands.load(Relaxed) > 2064);
    // The reader in the same match plays on.
    let now = reader.latest();
    reader.reaches(now + 30).await;
    assert!(reader.troubles.lock().unwrap().is_empty());
    reader.task.abort();
}
