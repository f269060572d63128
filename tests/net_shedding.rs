//! Shedding under sustained overload, over real QUIC on loopback: a node
//! served through the builder (`tickforge::server::Server`) with a tick-load
//! limit admits a first wave of players; then their game's ticks grow
//! costly and the node stays over the limit. After two whole seconds of it
//! the node closes the newest sessions, and only those, with `ServerFull`,
//! the shedding reason and a retry hint; its ceiling (seven eighths of the
//! connections it had) refuses a new join at once; the sessions it kept go
//! on receiving states; `NetStats::shed` and the
//! `tickforge_admission_shed_total` metric count exactly the sessions that
//! saw the close.
//!
//! The load is the game's own, not a hook in the server: `step` spins on the
//! wall clock for a cost per player in the match, so the shard's tick time
//! follows the players whatever the machine's speed (40 players x 750 µs =
//! 30 ms of each 33 ms tick at 30 Hz, 90 % against a limit of 40 %: a wide
//! margin, because a machine too busy to give the shard its time ticks less
//! often and measures less than the game costs). The cost is a dial the test
//! turns up once every player joined (admission refuses joins while the
//! ticks are over the limit) and down again right after the shed, within
//! the four seconds the node waits before judging again, so it sheds once.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use tickforge::client::{Client, ClientConfig, ClientError, JoinRequest, Session, SessionEvent};
use tickforge::config::Config;
use tickforge::game::{Game, MatchSetup, PlayerId, Rejection, Tick, Viewer};
use tickforge::net::tickets::unix_now;
use tickforge::net::{CloseCode, ServerSecret, TlsSource, mint_ticket, parse_retry_after};
use tickforge::server::Server;

/// Players joined before the load: past `RAMP_MIN` (32), the least ceiling,
/// so that seven eighths of them leaves some to shed (40 - 35 = 5).
const PLAYERS: usize = 40;
/// Players per match: four matches.
const MATCH_SIZE: usize = 10;
/// Ticks per second.
const TICK_HZ: u32 = 30;
/// Tick time each player costs once the dial is up, in microseconds.
const COST_PER_PLAYER_MICROS: u64 = 750;
/// `admit_max_tick_load_percent`: well under the 90 % the load makes.
const TICK_LOAD_LIMIT: u32 = 40;
/// States a kept session must receive after the shed, in ticks.
const TICKS_AFTER: Tick = 15;
/// The close reason of a shed session, after the retry hint.
const SHED_REASON: &str = "server overloaded: closing the newest sessions";
/// A bound on one join: past the client's handshake (10 s) and Welcome
/// time-outs, and a ramp refusal's retry.
const JOIN_BOUND: Duration = Duration::from_secs(40);
/// A hang guard on the shed (expected some 2 s after the load starts; on a
/// machine busy with other work, the samples can take longer to agree)
/// and on sorting the sessions into shed and kept.
const WAIT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------
// The game: players in a room whose ticks cost wall time per player.
// ---------------------------------------------------------------------------

/// A room players enter and leave; `step` spins for the dial's cost per
/// player present. The state does not depend on the dial (spinning changes
/// nothing), so replays stay deterministic.
#[derive(Debug, Clone)]
struct Costly {
    /// Microseconds of tick time per player; 0 costs nothing.
    micros_per_player: Arc<AtomicU64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Room {
    players: BTreeSet<PlayerId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Command {
    Enter,
    Leave,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Event {
    Entered(PlayerId),
    Left(PlayerId),
}

impl Game for Costly {
    type State = Room;
    type Command = Command;
    type Event = Event;
    type Params = ();
    type View = Room;
    type Join = ();
    const SCHEMA: u32 = 1;

    fn domain(&self) -> &str {
        "costly"
    }

    fn setup(&self, _: &MatchSetup<()>) -> Result<Room, Rejection> {
        Ok(Room::default())
    }

    fn decide(
        &self,
        room: &Room,
        _: Tick,
        player: PlayerId,
        command: &Command,
    ) -> Result<Vec<Event>, Rejection> {
        let present = room.players.contains(&player);
        match command {
            Command::Enter if present => Err(Rejection::new("already in the room")),
            Command::Enter => Ok(vec![Event::Entered(player)]),
            Command::Leave if present => Ok(vec![Event::Left(player)]),
            Command::Leave => Err(Rejection::new("not in the room")),
        }
    }

    fn apply(&self, room: &mut Room, _: Tick, event: &Event) {
        match event {
            Event::Entered(player) => room.players.insert(*player),
            Event::Left(player) => room.players.remove(player),
        };
    }

    fn step(&self, room: &mut Room, _: Tick) -> Vec<Event> {
        let micros = self.micros_per_player.load(Relaxed) * room.players.len() as u64;
        let until = Instant::now() + Duration::from_micros(micros);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        Vec::new()
    }

    fn is_over(&self, _: &Room) -> bool {
        false
    }

    fn view<'s>(&self, room: &'s Room, _: Viewer) -> Cow<'s, Room> {
        Cow::Borrowed(room)
    }

    fn shared_view(&self) -> bool {
        true
    }

    fn join(&self, _: PlayerId, _: &()) -> Result<Command, Rejection> {
        Ok(Command::Enter)
    }

    fn leave(&self) -> Command {
        Command::Leave
    }

    fn players(&self, room: &Room) -> Vec<PlayerId> {
        room.players.iter().copied().collect()
    }
}

// ---------------------------------------------------------------------------
// The node and its clients.
// ---------------------------------------------------------------------------

fn secret() -> ServerSecret {
    ServerSecret::new(*b"tickforge shedding tests secret!").expect("a 32-byte secret")
}

/// A node on loopback port 0 with one shard, the memory store and the tick
/// load as its only headroom limit (the CPU and lag limits would measure
/// the neighbours on a shared machine).
async fn start(game: Costly, tls_dir: &tempfile::TempDir) -> Server<Costly> {
    let mut config = Config::load_with_env(None, |_| None).expect("the built-in configuration");
    config.engine.shards = 1;
    config.engine.tick_hz = TICK_HZ;
    config.admin.listen = None;
    config.net.listen = "127.0.0.1:0".parse().expect("a socket address");
    config.net.tls = TlsSource::Dev {
        cert: tls_dir.path().join("cert.der"),
        key: tls_dir.path().join("key.der"),
    };
    config.net.secret = Some(secret());
    config.net.admit_max_tick_load_percent = TICK_LOAD_LIMIT;
    config.net.admit_max_cpu_percent = 0;
    config.net.admit_max_lag = Duration::ZERO;
    Server::builder(game)
        .config(config)
        .start()
        .await
        .expect("the node starts")
}

/// Joins player `index` (match `index / MATCH_SIZE`).
async fn join(server: &Server<Costly>, client: &Client, index: usize) -> Session<Costly> {
    let root = format!("room{}", index / MATCH_SIZE);
    let player = PlayerId((index % MATCH_SIZE) as u32 + 1);
    let ticket = mint_ticket(server.secret(), &root, player, unix_now() + 600);
    tokio::time::timeout(
        JOIN_BOUND,
        client.join::<Costly>(JoinRequest::player(&root, &ticket, &())),
    )
    .await
    .unwrap_or_else(|_| panic!("player {index} neither joined nor was refused in {JOIN_BOUND:?}"))
    .unwrap_or_else(|e| panic!("player {index} did not join: {e}"))
}

/// Waits for the session's end, returning its code and reason.
async fn closed(session: &mut Session<Costly>) -> (Option<CloseCode>, String) {
    loop {
        match session.next_event().await {
            Some(SessionEvent::Closed { code, reason }) => return (code, reason),
            Some(_) => {}
            None => return (None, "the session ended without a Closed event".into()),
        }
    }
}

/// Waits for a state at `tick` or later; `false` when the session ends first.
async fn state_from(
    mut states: tokio::sync::watch::Receiver<Option<Arc<tickforge::client::StateUpdate<Room>>>>,
    tick: Tick,
) -> bool {
    loop {
        if states
            .borrow_and_update()
            .as_ref()
            .is_some_and(|s| s.tick >= tick)
        {
            return true;
        }
        if states.changed().await.is_err() {
            return false;
        }
    }
}

/// The value of the unlabelled counter `name` in Prometheus text.
fn counter(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse::<f64>().ok().map(|v| v as u64)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_overload_sheds_the_newest_sessions_and_keeps_the_rest() {
    let metrics = tickforge::admin::metrics::install().expect("the metrics recorder");
    let dial = Arc::new(AtomicU64::new(0));
    let tls_dir = tempfile::tempdir().expect("a temporary directory");
    let server = start(
        Costly {
            micros_per_player: dial.clone(),
        },
        &tls_dir,
    )
    .await;
    let stats = server.net_stats().clone();
    let retry_after = server.config().net.full_retry_after;

    // Players: a shed session ends (no resuming), so its close is its last
    // word; a join refused by the ramp is retried (the default `retry_for`).
    let mut config = ClientConfig::new(server.quic_addr(), vec![server.certificate().clone()]);
    config.reconnect = false;
    let players = Client::new(config.clone()).expect("the players' client");
    // The late joiner takes its refusal as the answer.
    config.retry_for = Duration::ZERO;
    let late = Client::new(config).expect("the late joiner's client");

    // The first wave, one after the other: connection ids follow the order.
    let joining = Instant::now();
    let mut sessions = Vec::with_capacity(PLAYERS);
    for index in 0..PLAYERS {
        sessions.push(join(&server, &players, index).await);
    }
    assert_eq!(stats.admitted.load(Relaxed), PLAYERS as u64);
    assert_eq!(stats.shed.load(Relaxed), 0, "nothing shed before the load");
    let joins_took = joining.elapsed();
    let ramp_refusals = stats.refused_full.load(Relaxed);

    // The load: every tick now costs 750 µs per player.
    dial.store(COST_PER_PLAYER_MICROS, Relaxed);
    let loaded = Instant::now();
    let states: Vec<_> = sessions.iter().map(Session::states).collect();
    let mut ends: FuturesUnordered<_> = sessions
        .iter_mut()
        .enumerate()
        .map(|(index, session)| async move { (index, closed(session).await) })
        .collect();
    let first = tokio::time::timeout(WAIT, ends.next())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no session was shed within {WAIT:?} of the load ({} shed by the server): \
                 the tick load must stay over {TICK_LOAD_LIMIT}% for two whole seconds",
                stats.shed.load(Relaxed)
            )
        })
        .expect("sessions to wait on");
    let shed_after = loaded.elapsed();

    // Still overloaded: a new join meets the ceiling at once.
    let root = "room-late";
    let ticket = mint_ticket(server.secret(), root, PlayerId(1), unix_now() + 600);
    let refusal = tokio::time::timeout(
        JOIN_BOUND,
        late.join::<Costly>(JoinRequest::player(root, &ticket, &())),
    )
    .await
    .expect("the late join neither joined nor was refused");
    let (code, ceiling_reason) = match refusal {
        Err(ClientError::Refused { code, reason }) => (code, reason),
        Err(other) => panic!("the late join failed otherwise (a time-out?): {other}"),
        Ok(_) => panic!("the late join was admitted after the shed"),
    };

    // The load off: nothing more to shed. Sort every session into shed
    // (closed) or kept (receiving states well past the shed).
    dial.store(0, Relaxed);
    let load_off_after = loaded.elapsed() - shed_after;
    let mut kept: FuturesUnordered<_> = states
        .into_iter()
        .enumerate()
        .map(|(index, watch)| {
            let latest = watch.borrow().as_ref().map_or(0, |s| s.tick);
            async move { (index, state_from(watch, latest + TICKS_AFTER).await) }
        })
        .collect();
    let mut shed = BTreeMap::from([first]);
    let mut kept_on = BTreeSet::new();
    tokio::time::timeout(WAIT, async {
        while shed.len() + kept_on.len() < PLAYERS {
            tokio::select! {
                Some((index, end)) = ends.next() => {
                    assert!(!kept_on.contains(&index), "session {index} closed after the shed: {end:?}");
                    shed.insert(index, end);
                }
                Some((index, received)) = kept.next() => {
                    if received && !shed.contains_key(&index) {
                        kept_on.insert(index);
                    }
                }
                else => break,
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "within {WAIT:?}, {} sessions were shed and {} received states after the shed, of {PLAYERS}",
            shed.len(),
            kept_on.len()
        )
    });
    drop((ends, kept));
    assert_eq!(
        shed.len() + kept_on.len(),
        PLAYERS,
        "every session is either shed or kept: shed {:?}, kept {kept_on:?}",
        shed.keys()
    );

    let count = shed.len();
    assert!(
        count <= PLAYERS / 8 + 1,
        "{count} sessions shed at once, of {PLAYERS}: more than an eighth"
    );
    for (index, (code, reason)) in &shed {
        assert_eq!(
            *code,
            Some(CloseCode::ServerFull),
            "session {index}: {reason}"
        );
        // The session's close reason is the server's own.
        assert_eq!(
            parse_retry_after(reason),
            Some(retry_after),
            "session {index}: the reason gives the wait first: {reason:?}"
        );
        assert!(reason.ends_with(SHED_REASON), "session {index}: {reason:?}");
    }
    let newest: Vec<usize> = (PLAYERS - count..PLAYERS).collect();
    assert_eq!(
        shed.keys().copied().collect::<Vec<_>>(),
        newest,
        "the shed sessions are the newest joined"
    );
    assert_eq!(
        stats.shed.load(Relaxed),
        count as u64,
        "NetStats::shed counts the sessions that saw the shed close"
    );
    assert_eq!(
        counter(&metrics.render(), "tickforge_admission_shed_total"),
        Some(count as u64),
        "the shed metric counts them too"
    );

    // The ceiling: what was open (all the players) less what was shed.
    assert_eq!(code, Some(CloseCode::ServerFull), "{ceiling_reason}");
    assert_eq!(
        parse_retry_after(&ceiling_reason),
        Some(retry_after),
        "the reason gives the wait first: {ceiling_reason:?}"
    );
    let ceiling = PLAYERS - count;
    assert!(
        ceiling_reason.contains(&format!("admits up to {ceiling} connections")),
        "refused by the ceiling of {ceiling}: {ceiling_reason:?}"
    );

    println!(
        "shedding: {PLAYERS} players at {}% of the tick budget (limit {TICK_LOAD_LIMIT}%): \
         the newest {count} shed, {} kept, a late join refused: {ceiling_reason}; \
         joins took {:.2} s ({ramp_refusals} ramp refusals retried), the first shed seen {:.2} s \
         after the load began, the load off {:.2} s after that",
        PLAYERS as u64 * COST_PER_PLAYER_MICROS * u64::from(TICK_HZ) / 10_000,
        kept_on.len(),
        joins_took.as_secs_f64(),
        shed_after.as_secs_f64(),
        load_off_after.as_secs_f64(),
    );
    drop(sessions);
    server.drain().await.expect("the node drains");
}
