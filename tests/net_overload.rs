//! Overload over real QUIC on loopback: a server capped at a small number
//! of connections is flooded with many more clients at once. Every client
//! either joins or is refused with `ServerFull` and a retry hint; none
//! waits for a time-out; the clients that got in keep receiving states.
//! Run with `-- --nocapture` for the figures.

mod net_support;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use net_support::*;
use tickforge::arena::Arena;
use tickforge::client::{ClientError, JoinRequest, Session};
use tickforge::net::admission::KNOCKS_PER_SECOND;
use tickforge::net::protocol::MAX_RETRY_AFTER;
use tickforge::net::{CloseCode, parse_retry_after};

/// Connections the server takes.
const CAPACITY: usize = 12;
/// Clients that try at once.
const FLOOD: usize = 60;
/// Players per match.
const PLAYERS: usize = 6;
/// A bound on any one join: well past the client's own handshake (10 s)
/// and Welcome (15 s) time-outs, so a time-out shows as its own error.
const JOIN_BOUND: Duration = Duration::from_secs(40);

/// One join attempt: the client's index, its outcome within
/// [`JOIN_BOUND`], and when it ended after the first began.
type Attempt = (
    usize,
    Result<Result<Session<Arena>, ClientError>, tokio::time::error::Elapsed>,
    Duration,
);

/// `count` clients joining at once, [`PLAYERS`] to a match of roots
/// `{prefix}0`, `{prefix}1`, …, each taking a refusal as its answer (no
/// retrying).
fn join_at_once(server: &TestServer, count: usize, prefix: &str) -> tokio::task::JoinSet<Attempt> {
    let mut config = server.client.config().clone();
    config.retry_for = Duration::ZERO;
    let client = tickforge::client::Client::new(config).expect("client");
    let started = Instant::now();
    let mut attempts = tokio::task::JoinSet::new();
    for i in 0..count {
        let root = format!("{prefix}{}", i / PLAYERS);
        let player = (i % PLAYERS) as u32 + 1;
        let ticket = server.ticket(&root, player);
        let client = client.clone();
        attempts.spawn(async move {
            let request = JoinRequest::player(&root, &ticket, &format!("p{player}"));
            let outcome = tokio::time::timeout(JOIN_BOUND, client.join::<Arena>(request)).await;
            (i, outcome, started.elapsed())
        });
    }
    attempts
}

/// A client refused with `ServerFull`: the wait its reason asks for, the
/// reason, and when the refusal came after the first join began.
struct Refused {
    wait: Duration,
    reason: String,
    took: Duration,
}

/// Waits for every attempt: each must either join or be refused with
/// `ServerFull` and a wait; anything else (a time-out) fails the test.
async fn joined_or_refused(
    mut attempts: tokio::task::JoinSet<Attempt>,
) -> (Vec<Session<Arena>>, Vec<Refused>) {
    let mut joined = Vec::new();
    let mut refused = Vec::new();
    while let Some(attempt) = attempts.join_next().await {
        let (i, outcome, took) = attempt.expect("join task");
        match outcome.unwrap_or_else(|_| panic!("client {i} neither joined nor was refused")) {
            Ok(session) => joined.push(session),
            Err(ClientError::Refused { code, reason }) => {
                assert_eq!(code, Some(CloseCode::ServerFull), "client {i}: {reason}");
                let wait = parse_retry_after(&reason)
                    .unwrap_or_else(|| panic!("client {i}: no wait in {reason:?}"));
                refused.push(Refused { wait, reason, took });
            }
            Err(other) => panic!("client {i} failed otherwise (a time-out?): {other}"),
        }
    }
    (joined, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_capacity_joins_or_is_refused_with_server_full() {
    // Only the connection cap decides here (the headroom limits are off,
    // as by default), so the outcome is exact; the headroom verdicts are
    // unit-tested in `net::admission` and take the same refusal path.
    let server = start(Options {
        max_connections: CAPACITY,
        admit_max_tick_load_percent: 0,
        admit_max_lag: Duration::ZERO,
        hello_timeout: Duration::from_secs(30),
        ..Options::default()
    })
    .await;
    let retry_after = tickforge::net::NetConfig::default().full_retry_after;

    // Refusals are what is counted here: no retrying them.
    let (joined, refused) = joined_or_refused(join_at_once(&server, FLOOD, "m")).await;
    for Refused { wait, reason, .. } in &refused {
        assert_eq!(
            *wait, retry_after,
            "the reason gives the wait first: {reason:?}"
        );
        assert!(reason.contains("server full"), "{reason:?}");
    }
    assert_eq!(joined.len(), CAPACITY, "every place is taken, no more");
    assert_eq!(refused.len(), FLOOD - CAPACITY);
    let stats = &server.stats;
    assert_eq!(stats.refused_full.load(Relaxed), (FLOOD - CAPACITY) as u64);
    assert_eq!(stats.refused_unanswered.load(Relaxed), 0);
    assert_eq!(stats.admitted.load(Relaxed), CAPACITY as u64);

    // The admitted clients play on: each gets a state a second (30 ticks)
    // past the latest tick any of them had when the flood was over.
    let latest = joined
        .iter()
        .filter_map(|s| s.state().map(|s| s.tick))
        .max()
        .unwrap_or(0);
    for session in &joined {
        let state = state_where(session, |s| s.tick >= latest + 30).await;
        assert!(!state.over);
        assert!(session.info().borrow().connected);
    }
    let slowest = refused.iter().map(|r| r.took).max().unwrap_or_default();
    println!(
        "overload: {FLOOD} clients at once against max_connections = {CAPACITY}: {} joined, {} refused \
         with ServerFull (the last {:.2} s after the flood began), 0 timed out",
        joined.len(),
        refused.len(),
        slowest.as_secs_f64()
    );
    for session in joined {
        session.close();
    }
    server.stop().await;
}

/// A node refusing many clients at once asks the later ones to wait
/// longer (the server's retry pacer): with a 100 ms shortest wait, the
/// first refusals ask for it and, once more than
/// [`KNOCKS_PER_SECOND`] were refused within a second, the refusals ask
/// for their share of a knock budget instead, never past the protocol's
/// longest wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_a_crowd_asks_the_later_clients_to_wait_longer() {
    const SHORTEST: Duration = Duration::from_millis(100);
    const CROWD: usize = 100;
    const ROOM: usize = 4;
    let server = start(Options {
        max_connections: ROOM,
        admit_max_tick_load_percent: 0,
        admit_max_lag: Duration::ZERO,
        hello_timeout: Duration::from_secs(30),
        full_retry_after: SHORTEST,
        ..Options::default()
    })
    .await;

    let (joined, refused) = joined_or_refused(join_at_once(&server, CROWD, "w")).await;
    let mut waits: Vec<Duration> = refused.iter().map(|r| r.wait).collect();
    assert_eq!(joined.len(), ROOM);
    assert_eq!(waits.len(), CROWD - ROOM);
    waits.sort();
    let (shortest, longest) = (waits[0], waits[waits.len() - 1]);
    assert_eq!(
        shortest, SHORTEST,
        "the first refusals ask the shortest wait"
    );
    assert!(longest <= MAX_RETRY_AFTER, "{longest:?}");
    // The refusals were under way together: more than the budget of a
    // second's refusals came within a second, so the latest ones ask for
    // at least a second (their count over the budget).
    assert!(waits.len() > KNOCKS_PER_SECOND as usize);
    assert!(
        longest >= Duration::from_secs(1),
        "{} refusals at once, yet the longest wait asked was {longest:?}",
        waits.len()
    );
    println!(
        "retry pacing: {} refused at once against room for {ROOM}: waits {:?} to {:?} (median {:?})",
        waits.len(),
        shortest,
        longest,
        waits[waits.len() / 2]
    );
    for session in joined {
        session.close();
    }
    server.stop().await;
}

/// A join wave larger than the ramp lets in at once (32 connections a
/// second on an idle node) waits in the node's waiting room and gets in
/// as the ramp opens, instead of being refused: with retrying off, every
/// client joins and the node refuses none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_wave_past_the_ramp_waits_and_gets_in() {
    const WAVE: usize = 2 * tickforge::net::admission::RAMP_MIN;
    // Headroom is measured (so the ramp applies) by a lag limit no run
    // reaches: only the ramp holds anyone back.
    let server = start(Options {
        admit_max_tick_load_percent: 0,
        admit_max_lag: Duration::from_secs(60),
        hello_timeout: Duration::from_secs(30),
        ..Options::default()
    })
    .await;
    let mut attempts = join_at_once(&server, WAVE, "w");
    let mut joined = Vec::new();
    let mut slowest = Duration::ZERO;
    while let Some(attempt) = attempts.join_next().await {
        let (i, outcome, took) = attempt.expect("join task");
        match outcome.unwrap_or_else(|_| panic!("client {i} neither joined nor was refused")) {
            Ok(session) => joined.push(session),
            Err(error) => panic!("client {i} did not get in: {error}"),
        }
        slowest = slowest.max(took);
    }
    let stats = &server.stats;
    assert_eq!(joined.len(), WAVE);
    assert_eq!(stats.refused_full.load(Relaxed), 0);
    assert_eq!(stats.refused_unanswered.load(Relaxed), 0);
    assert_eq!(stats.admitted.load(Relaxed), WAVE as u64);
    println!(
        "waiting room: {WAVE} clients at once, ramp {}: all joined, the last {:.2} s after the wave began",
        tickforge::net::admission::RAMP_MIN,
        slowest.as_secs_f64()
    );
    for session in joined {
        session.close();
    }
    server.stop().await;
}
