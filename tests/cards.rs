//! Eights, the second game (examples/cards), through every layer:
//!
//! - sans-IO: for random command streams (turn timers running out as step
//!   events included), restoring from any snapshot plus the tail equals a
//!   rebuild from sequence 0, byte for byte; the seed deals the same hands
//!   for the same match and other hands for another;
//! - schema upgrades: a log and a snapshot written by schema 1 restore
//!   through the game's upgrade hooks to the state schema 2 arrives at; a
//!   log of schema 3 is a typed error naming the match;
//! - state hash: an event corrupted below a stored snapshot makes the
//!   rebuild report `Diverged` at the snapshot's tick;
//! - QUIC on loopback: four players and a spectator; the raw state
//!   datagrams one player received hold none of the other hands' card
//!   encodings, no player gets another's `Dealt`/`Drew` events, the
//!   spectator sees no hand; a dropped player resumes with its token; a
//!   tick-by-tick replay of the finished match equals the live final state.

#[path = "../examples/cards/bot.rs"]
mod bot;
#[path = "../examples/cards/game.rs"]
mod game;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tickforge::client::{Client, ClientConfig, JoinRequest, Session, SessionEvent};
use tickforge::codec;
use tickforge::engine::{
    self, EngineError, EngineSettings, EventEnvelope, MatchCore, MatchPolicy, ReadError, Replayer,
    RestoreError, TickReplayer, TickStep,
};
use tickforge::game::{Game, MatchSetup, PlayerId, Tick, Viewer, match_seed};
use tickforge::net::protocol::{self, ClientMsg, Credential, FrameBuffer, Hello, Role, ServerMsg};
use tickforge::net::{NetConfig, Server, ServerSecret, TlsSource};
use tickforge::store::{
    AppendBatch, EventStore, Head, MatchKey, MatchStatus, MemoryStore, RecordedEvent, Snapshot,
    SnapshotStore,
};

use bot::Bot;
use game::{Card, Command, DOMAIN, Eights, Event, JoinAs, Params, Phase, State, Suit, View};

/// An upper bound for anything a test awaits.
const WAIT: Duration = Duration::from_secs(60);

fn key(root: &str) -> MatchKey {
    MatchKey::new(DOMAIN, "main", root).unwrap()
}

fn setup(root: &str, params: Params) -> MatchSetup<Params> {
    MatchSetup {
        params,
        seed: match_seed(DOMAIN, root),
    }
}

fn bytes(state: &State) -> Vec<u8> {
    codec::encode(state).unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------
// Sans-IO: a match driven tick by tick through MatchCore.
// ---------------------------------------------------------------------------

/// Everything a run of the core produced, as a store would keep it.
struct Run {
    core: MatchCore<Eights, ()>,
    setup: MatchSetup<Params>,
    events: Vec<RecordedEvent>,
    snapshots: Vec<Snapshot>,
    /// The encoded live state after every tick (index 0: tick 0).
    states: Vec<Vec<u8>>,
}

impl Run {
    fn new(root: &str, params: Params, snapshot_every_ticks: u64) -> Run {
        let setup = setup(root, params);
        let policy = MatchPolicy {
            snapshot_every_ticks,
            ..MatchPolicy::default()
        };
        let core = MatchCore::new(&Eights, key(root), policy, &setup).expect("valid params");
        let states = vec![bytes(core.state())];
        Run {
            core,
            setup,
            events: Vec::new(),
            snapshots: Vec::new(),
            states,
        }
    }

    fn state(&self) -> &State {
        self.core.state()
    }

    fn tick(&mut self, commands: Vec<(PlayerId, Command)>) {
        for (player, command) in commands {
            self.core.handle_command(player, command, ()).unwrap();
        }
        let output = self.core.run_tick(&Eights);
        assert_eq!(output.failure, None);
        self.snapshots.extend(output.snapshot);
        self.events
            .extend(self.core.poll_batch().into_iter().flat_map(|b| b.events));
        self.states.push(bytes(self.core.state()));
    }

    fn head(&self) -> Head {
        Head {
            next_sequence: self.core.next_sequence(),
            tick: self.core.tick(),
            status: MatchStatus::Live,
        }
    }

    fn decoded(&self) -> Vec<EventEnvelope<Event>> {
        self.events
            .iter()
            .map(|r| engine::decode_event(&Eights, &r.payload).unwrap())
            .collect()
    }
}

fn joins(players: u8) -> Vec<(PlayerId, Command)> {
    (1..=u32::from(players))
        .map(|p| {
            let command = Eights.join(PlayerId(p), &JoinAs::default()).unwrap();
            (PlayerId(p), command)
        })
        .collect()
}

/// One scripted action: (player 1..=6, kind, pick).
type Action = (u32, u8, u8);

/// The command `action` stands for, given the live state.
fn command_for(state: &State, (player, kind, pick): Action) -> (PlayerId, Command) {
    let me = PlayerId(player);
    let hand = state
        .seats
        .get(&me)
        .map(|s| s.hand.clone())
        .unwrap_or_default();
    let declare = (pick % 3 == 0).then(|| Suit::ALL[usize::from(pick) % 4]);
    let command = match kind {
        // The player whose turn it is makes a bot move.
        0..=4 => {
            let mover = state.turn.unwrap_or(me);
            let view = Eights.view(state, Viewer::Player(mover)).into_owned();
            let command = Bot::new(u64::from(pick))
                .decide(&view)
                .unwrap_or(Command::Draw);
            return (mover, command);
        }
        5 if !hand.is_empty() => {
            let card = hand[usize::from(pick) % hand.len()];
            let declare = declare.filter(|_| card.rank == Card::EIGHT);
            Command::Play { card, declare }
        }
        6 => Command::Draw,
        7 => Command::Leave,
        8 => Command::Join {
            name: format!("late{pick}"),
        },
        _ => Command::Play {
            card: Card::deck()[usize::from(pick) % 52],
            declare,
        },
    };
    (me, command)
}

fn params() -> impl Strategy<Value = Params> {
    (2u8..=6, 1u8..=8, 1u32..=6, 4u32..=80).prop_map(
        |(players, hand_size, turn_ticks, max_turns)| Params {
            players,
            hand_size,
            turn_ticks,
            max_turns,
        },
    )
}

fn script() -> impl Strategy<Value = Vec<Vec<Action>>> {
    let action = (1u32..=6, 0u8..12, any::<u8>());
    prop::collection::vec(prop::collection::vec(action, 0..3), 1..160)
}

/// Replays `events` onto `replayer` and finishes at `head_tick`.
fn finish(mut replayer: Replayer<'_, Eights>, events: &[RecordedEvent], head_tick: Tick) -> State {
    for event in events {
        replayer.apply(event).unwrap();
    }
    replayer.finish(head_tick).unwrap().state
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Restoring from every snapshot plus the events after it, and a
    /// rebuild from sequence 0 checked against the last snapshot, both
    /// arrive at the live state byte for byte.
    #[test]
    fn restore_from_any_snapshot_equals_rebuild_from_zero(
        params in params(),
        script in script(),
        every in 1u64..25,
        root in "[a-z]{1,8}",
    ) {
        let mut run = Run::new(&root, params, every);
        run.tick(joins(params.players));
        for actions in &script {
            let commands = actions.iter().map(|a| command_for(run.state(), *a)).collect();
            run.tick(commands);
        }
        let live = bytes(run.state());
        let head = run.head();

        let mut rebuild = Replayer::from_start(&Eights, &run.setup).unwrap();
        if let Some(last) = run.snapshots.last() {
            rebuild.check_against(last);
        }
        prop_assert_eq!(bytes(&finish(rebuild, &run.events, head.tick)), live.clone());

        for snapshot in &run.snapshots {
            let from = Replayer::from_snapshot(&Eights, snapshot).unwrap();
            let tail = &run.events[snapshot.sequence as usize..];
            prop_assert_eq!(bytes(&finish(from, tail, head.tick)), live.clone(), "from tick {}", snapshot.tick);
        }

        // Tick by tick, paged in 7 events at a time: every intermediate
        // state is the live one.
        let mut replay = TickReplayer::from_start(&Eights, &run.setup, &head).unwrap();
        loop {
            match replay.step().unwrap() {
                TickStep::Ran(tick) => {
                    prop_assert_eq!(&bytes(replay.state()), &run.states[tick as usize], "tick {}", tick);
                }
                TickStep::NeedEvents { from } => {
                    let page = run.events.iter().skip(from as usize).take(7).cloned();
                    replay.push(page).unwrap();
                }
                TickStep::Finished => break,
            }
        }
        prop_assert_eq!(replay.tick(), head.tick);
    }
}

#[test]
fn turn_timers_run_out_as_step_events_until_the_match_ends() {
    let params = Params {
        players: 3,
        hand_size: 4,
        turn_ticks: 3,
        max_turns: 12,
    };
    let mut run = Run::new("idle", params, 5);
    run.tick(joins(3));
    while !Eights.is_over(run.state()) {
        assert!(run.core.tick() < 200, "the match never ended");
        run.tick(Vec::new());
    }
    let events = run.decoded();
    let timeouts: Vec<_> = events
        .iter()
        .filter(|e| matches!(e.event, Event::TurnTimedOut { .. }))
        .collect();
    assert_eq!(timeouts.len(), 12, "every turn ran out");
    assert!(
        events
            .iter()
            .filter(|e| !matches!(e.event, Event::Joined { .. }))
            .all(|e| e.player.is_none()),
        "everything after the joins came from the step"
    );
    // Consecutive timeouts are `turn_ticks` apart.
    for pair in timeouts.windows(2) {
        assert_eq!(pair[1].tick - pair[0].tick, 3);
    }
    assert!(matches!(
        events.last().map(|e| &e.event),
        Some(Event::GameOver { .. })
    ));
    let state = run.state();
    assert!(state.seats.values().all(|s| s.hand.len() == 8));
    assert_eq!(state.scores.values().filter(|s| **s > 0).count(), 1);
}

#[test]
fn the_seed_deals_the_same_hands_for_a_match_and_others_for_another() {
    let hands = |root: &str| {
        let mut run = Run::new(root, Params::default(), 300);
        run.tick(joins(4));
        run.tick(Vec::new());
        assert_eq!(run.state().phase, Phase::Playing);
        let state = run.state().clone();
        (
            state
                .seats
                .iter()
                .map(|(p, s)| (*p, s.hand.clone()))
                .collect::<BTreeMap<_, _>>(),
            state.top(),
        )
    };
    let first = hands("table-1");
    assert_eq!(first, hands("table-1"));
    assert_ne!(first, hands("table-2"));
    assert!(first.0.values().all(|hand| hand.len() == 5));
}

#[test]
fn setup_refuses_bad_parameters() {
    let bad = [
        Params {
            players: 1,
            ..Params::default()
        },
        Params {
            players: 7,
            ..Params::default()
        },
        Params {
            hand_size: 0,
            ..Params::default()
        },
        Params {
            hand_size: 9,
            ..Params::default()
        },
        Params {
            turn_ticks: 0,
            ..Params::default()
        },
    ];
    for params in bad {
        let refused = MatchCore::<Eights, ()>::new(
            &Eights,
            key("bad"),
            MatchPolicy::default(),
            &setup("bad", params),
        );
        let reason = refused.expect_err("refused").reason;
        assert!(reason.contains("must be"), "{reason}");
    }
}

// ---------------------------------------------------------------------------
// Schema versions.
// ---------------------------------------------------------------------------

/// A match played by bots that never name a suit (schema 1 could not).
fn bot_match(root: &str, params: Params, snapshot_every_ticks: u64, declares: bool) -> Run {
    let mut run = Run::new(root, params, snapshot_every_ticks);
    let mut bots: BTreeMap<PlayerId, Bot> = (1..=u32::from(params.players))
        .map(|p| {
            let mut bot = Bot::new(u64::from(p));
            bot.declares = declares;
            (PlayerId(p), bot)
        })
        .collect();
    run.tick(joins(params.players));
    while !Eights.is_over(run.state()) {
        assert!(run.core.tick() < 5_000, "the match never ended");
        let mut commands = Vec::new();
        // Every fifth turn nobody moves, so turn timers run out too.
        if let Some(player) = run.state().turn.filter(|_| run.state().turns % 5 != 4) {
            let view = Eights.view(run.state(), Viewer::Player(player));
            if let Some(command) = bots.get_mut(&player).and_then(|b| b.decide(&view)) {
                commands.push((player, command));
            }
        }
        run.tick(commands);
    }
    run
}

fn to_v1_event(event: Event) -> game::v1::Event {
    use game::v1::Event as Old;
    match event {
        Event::Joined { player, name } => Old::Joined { player, name },
        Event::Left { player } => Old::Left { player },
        Event::Dealt { player, cards } => Old::Dealt { player, cards },
        Event::Started { first, top } => Old::Started { first, top },
        Event::Played {
            player,
            card,
            declared: None,
        } => Old::Played { player, card },
        Event::Played { .. } => panic!("schema 1 cannot name a suit"),
        Event::Drew { player, card } => Old::Drew { player, card },
        Event::Passed { player } => Old::Passed { player },
        Event::TurnTimedOut { player } => Old::TurnTimedOut { player },
        Event::GameOver { winner } => Old::GameOver { winner },
    }
}

fn to_v1_state(state: State) -> game::v1::State {
    game::v1::State {
        params: state.params,
        rng: state.rng,
        phase: state.phase,
        seats: state.seats,
        deck: state.deck,
        discard: state.discard,
        turn: state.turn,
        deadline: state.deadline,
        turns: state.turns,
        scores: state.scores,
    }
}

/// `events` re-encoded as schema 1 wrote them, envelope by hand.
fn v1_log(events: &[EventEnvelope<Event>]) -> Vec<RecordedEvent> {
    events
        .iter()
        .map(|e| RecordedEvent {
            sequence: e.sequence,
            tick: e.tick,
            payload: codec::encode(&EventEnvelope {
                sequence: e.sequence,
                tick: e.tick,
                player: e.player,
                schema: 1,
                event: to_v1_event(e.event.clone()),
            })
            .unwrap(),
        })
        .collect()
}

/// Stores a match's log and snapshot in `store` as a node would have.
async fn store_match(
    store: &MemoryStore,
    root: &str,
    setup: &MatchSetup<Params>,
    events: Vec<RecordedEvent>,
    head_tick: Tick,
    snapshot: Option<&Snapshot>,
) {
    let key = key(root);
    store
        .create(&key, &codec::encode(setup).unwrap())
        .await
        .unwrap();
    let batch = AppendBatch {
        key: key.clone(),
        first_sequence: 0,
        events,
        head_tick,
        epoch: None,
        renew_lease: None,
    };
    for result in store.append(&[batch]).await.unwrap() {
        result.unwrap();
    }
    if let Some(snapshot) = snapshot {
        assert!(store.save_snapshot(&key, snapshot).await.unwrap());
    }
}

#[tokio::test]
async fn a_schema_1_log_and_snapshot_restore_through_the_upgrade_hooks() {
    let params = Params {
        turn_ticks: 4,
        max_turns: 60,
        ..Params::default()
    };
    let root = "old-times";
    let run = bot_match(root, params, 10, false);
    let live = bytes(run.state());
    let head_tick = run.core.tick();
    let events = run.decoded();
    assert!(
        events
            .iter()
            .any(|e| matches!(e.event, Event::Played { .. }))
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e.event, Event::TurnTimedOut { .. }))
    );
    let old_log = v1_log(&events);
    assert_ne!(old_log[5].payload, run.events[5].payload);

    // A snapshot from the middle of the match, as schema 1 encoded it.
    let middle = &run.snapshots[run.snapshots.len() / 2];
    let v2_state: State = codec::decode(&middle.state).unwrap();
    let old_snapshot = Snapshot::new(
        middle.sequence,
        middle.tick,
        codec::encode(&to_v1_state(v2_state)).unwrap(),
        1,
    );
    assert_ne!(old_snapshot.state, middle.state);

    // Through the engine's restore: schema 1 snapshot plus schema 1 tail.
    let store = MemoryStore::new();
    store_match(
        &store,
        root,
        &run.setup,
        old_log.clone(),
        head_tick,
        Some(&old_snapshot),
    )
    .await;
    let restored = engine::restore(&Eights, &store, &key(root)).await.unwrap();
    assert_eq!(bytes(&restored.state), live);
    assert_eq!(restored.tick, head_tick);

    // A schema 1 log from sequence 0, and a mixed one (an upgrade mid-match).
    let rebuilt = finish(
        Replayer::from_start(&Eights, &run.setup).unwrap(),
        &old_log,
        head_tick,
    );
    assert_eq!(bytes(&rebuilt), live);
    let split = middle.sequence as usize;
    let mixed: Vec<_> = old_log[..split]
        .iter()
        .chain(&run.events[split..])
        .cloned()
        .collect();
    let rebuilt = finish(
        Replayer::from_start(&Eights, &run.setup).unwrap(),
        &mixed,
        head_tick,
    );
    assert_eq!(bytes(&rebuilt), live);
    // The upgraded envelope carries the current version.
    let upgraded = engine::decode_event(&Eights, &old_log[5].payload).unwrap();
    assert_eq!(upgraded.schema, 2);
    assert_eq!(upgraded, events[5]);
}

#[tokio::test]
async fn a_log_of_a_newer_schema_is_a_typed_error_naming_the_match() {
    let root = "from-the-future";
    let run = bot_match(root, Params::default(), 300, true);
    let mut log = run.events.clone();
    let events = run.decoded();
    // Event 3 as a schema 3 build would have written it.
    log[3].payload = codec::encode(&EventEnvelope {
        schema: 3,
        ..events[3].clone()
    })
    .unwrap();
    let store = MemoryStore::new();
    store_match(&store, root, &run.setup, log, run.core.tick(), None).await;
    let error = engine::restore(&Eights, &store, &key(root))
        .await
        .expect_err("schema 3 is unknown");
    match &error {
        EngineError::Restore {
            key,
            source:
                RestoreError::Read {
                    what,
                    source:
                        ReadError::NewerSchema {
                            found: 3,
                            supported: 2,
                        },
                },
        } => {
            assert!(key.contains(root), "{key}");
            assert_eq!(what, "event 3");
        }
        other => panic!("unexpected error: {other:?}"),
    }
    assert!(error.to_string().contains(root), "{error}");

    // A snapshot of schema 3 likewise.
    let future = MemoryStore::new();
    let last = run.snapshots.last().unwrap();
    let snapshot = Snapshot::new(last.sequence, last.tick, last.state.clone(), 3);
    store_match(
        &future,
        root,
        &run.setup,
        run.events.clone(),
        run.core.tick(),
        Some(&snapshot),
    )
    .await;
    assert!(matches!(
        engine::restore(&Eights, &future, &key(root)).await,
        Err(EngineError::Restore {
            source: RestoreError::Read {
                source: ReadError::NewerSchema { found: 3, .. },
                ..
            },
            ..
        })
    ));
}

// ---------------------------------------------------------------------------
// The state hash, on the memory store behind a running engine.
// ---------------------------------------------------------------------------

/// Plays `root` to its end on `engine` with bots submitting in-process.
async fn play_in_engine(
    engine: &tickforge::engine::Engine<Eights, MemoryStore>,
    root: &str,
    params: Params,
) -> State {
    engine.create_match_with(root, params).await.unwrap();
    let mut feed = engine.subscribe(root).unwrap();
    for (player, command) in joins(params.players) {
        engine.submit(root, player, command, None).unwrap();
    }
    let mut bots: BTreeMap<PlayerId, Bot> = (1..=u32::from(params.players))
        .map(|p| (PlayerId(p), Bot::new(u64::from(p) * 31)))
        .collect();
    let mut acted = None;
    tokio::time::timeout(WAIT, async {
        loop {
            feed.updates.changed().await.expect("the match stopped");
            let Some(update) = feed.updates.borrow_and_update().clone() else {
                continue;
            };
            if update.over {
                return update.state.clone();
            }
            let state = &update.state;
            if let Some(player) = state.turn
                && acted != Some(state.turns)
            {
                acted = Some(state.turns);
                let view = Eights.view(state, Viewer::Player(player));
                if let Some(command) = bots.get_mut(&player).and_then(|b| b.decide(&view)) {
                    engine.submit(root, player, command, None).unwrap();
                }
            }
        }
    })
    .await
    .expect("the match did not end in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_event_below_the_snapshot_diverges_at_the_snapshot_tick() {
    let store = MemoryStore::new();
    let settings = EngineSettings {
        tick_hz: 200,
        shards: 1,
        policy: MatchPolicy {
            snapshot_every_ticks: 10,
            ..MatchPolicy::default()
        },
        ..EngineSettings::default()
    };
    let engine = tickforge::engine::Engine::start(Eights, store.clone(), settings, "main");
    let root = "tampered";
    let final_state = play_in_engine(&engine, root, Params::default()).await;
    engine.shutdown().await;
    let key = key(root);

    // The honest log rebuilds to the live end, checked against the snapshot.
    let honest = engine::rebuild_from_start(&Eights, &store, &key)
        .await
        .unwrap();
    assert_eq!(bytes(&honest.state), bytes(&final_state));

    // Copy the match into another store with one `Drew` below the
    // snapshot swapped for another valid `Drew` (a different card).
    let snapshot = store
        .load_snapshot(&key)
        .await
        .unwrap()
        .expect("a snapshot");
    let head = store.head(&key).await.unwrap().unwrap();
    let mut log = store.read(&key, 0, 100_000).await.unwrap();
    let (index, forged) = log
        .iter()
        .take_while(|r| r.sequence < snapshot.sequence)
        .find_map(|record| {
            let envelope = engine::decode_event(&Eights, &record.payload).unwrap();
            let Event::Drew { player, card } = envelope.event else {
                return None;
            };
            let other = Card::deck().into_iter().find(|c| *c != card).unwrap();
            let forged = EventEnvelope {
                event: Event::Drew {
                    player,
                    card: other,
                },
                ..envelope
            };
            Some((record.sequence as usize, codec::encode(&forged).unwrap()))
        })
        .expect("a Drew below the snapshot");
    log[index].payload = forged;
    let setup: MatchSetup<Params> =
        codec::decode(&store.load_setup(&key).await.unwrap().unwrap()).unwrap();
    let tampered = MemoryStore::new();
    store_match(&tampered, root, &setup, log, head.tick, Some(&snapshot)).await;

    let error = engine::rebuild_from_start(&Eights, &tampered, &key)
        .await
        .expect_err("the forged event changes the state");
    match error {
        EngineError::Restore {
            source: RestoreError::Diverged { tick, sequence, .. },
            ..
        } => {
            assert_eq!(tick, snapshot.tick);
            assert_eq!(sequence, snapshot.sequence);
        }
        other => panic!("unexpected error: {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Over QUIC.
// ---------------------------------------------------------------------------

struct TestServer {
    engine: Arc<tickforge::engine::Engine<Eights, MemoryStore>>,
    store: MemoryStore,
    client: Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start_server(tick_hz: u32) -> TestServer {
    let store = MemoryStore::new();
    let settings = EngineSettings {
        tick_hz,
        shards: 2,
        ..EngineSettings::default()
    };
    let engine = Arc::new(tickforge::engine::Engine::start(
        Eights,
        store.clone(),
        settings,
        "main",
    ));
    let dir = tempfile::tempdir().unwrap();
    let config = NetConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: TlsSource::Dev {
            cert: dir.path().join("cert.der"),
            key: dir.path().join("key.der"),
        },
        secret: Some(ServerSecret::new(*b"eights over quic test secret!!!!").unwrap()),
        open_mode: true,
        ..NetConfig::default()
    };
    let server = Server::bind(engine.clone(), config).unwrap();
    let client = Client::new(ClientConfig::new(
        server.local_addr(),
        vec![server.certificate().clone()],
    ))
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    TestServer {
        engine,
        store,
        client,
        stop: Some(stop),
        task,
        _dir: dir,
    }
}

impl TestServer {
    /// Stops the server, then the engine: everything is in the store after.
    async fn stop(mut self) -> MemoryStore {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(WAIT, &mut self.task).await;
        self.engine.shutdown().await;
        self.store
    }
}

/// What one library client saw of a match.
#[derive(Debug, Default)]
struct Seen {
    me: Option<PlayerId>,
    events: Vec<EventEnvelope<Event>>,
    views: Vec<(Tick, View)>,
    over: bool,
    /// Session notices besides events (disconnects, resumes, gaps).
    other: Vec<String>,
}

/// A bot over the client library, playing until the match is over.
async fn play(mut session: Session<Eights>, seed: u64) -> Seen {
    let mut seen = Seen {
        me: session.player(),
        ..Seen::default()
    };
    let mut bot = Bot::new(seed);
    let mut states = session.states();
    let mut acted = None;
    let mut states_open = true;
    let playing = async {
        loop {
            tokio::select! {
                changed = states.changed(), if states_open => {
                    if changed.is_err() {
                        // The session ended; its last notices are still queued.
                        states_open = false;
                        continue;
                    }
                    let Some(update) = states.borrow_and_update().clone() else { continue };
                    seen.views.push((update.tick, update.state.clone()));
                    let view = &update.state;
                    if !seen.over && view.me.is_some() && view.turn == view.me && acted != Some(view.turns) {
                        acted = Some(view.turns);
                        if let Some(command) = bot.decide(view) {
                            let _ = session.send(command);
                        }
                    }
                }
                event = session.next_event() => match event {
                    Some(SessionEvent::Event(envelope)) => seen.events.push(envelope),
                    // The final state may follow the notice: read on until the close.
                    Some(SessionEvent::MatchOver { .. }) => seen.over = true,
                    Some(SessionEvent::Closed { .. }) | None => {
                        seen.other.push(format!("{event:?}"));
                        if let Some(update) = session.state()
                            && seen.views.last().is_none_or(|(tick, _)| *tick < update.tick)
                        {
                            seen.views.push((update.tick, update.state.clone()));
                        }
                        return;
                    }
                    Some(other) => seen.other.push(format!("{other:?}")),
                },
            }
        }
    };
    tokio::time::timeout(WAIT, playing)
        .await
        .expect("the match did not end in time");
    seen
}

/// What a raw QUIC player received: every state datagram's bytes (the
/// player never acknowledges, so each is a whole state), and the
/// decoded reliable events.
#[derive(Debug, Default)]
struct Captured {
    me: Option<PlayerId>,
    datagrams: Vec<(Tick, Vec<u8>)>,
    events: Vec<EventEnvelope<Event>>,
}

/// A player speaking the protocol over raw quinn, playing with a bot.
async fn raw_player(client: &Client, root: &str, params: Params) -> Captured {
    let connected = client.connect().await.unwrap();
    let conn = connected.connection().clone();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let hello = ClientMsg::<Command>::Hello(Hello {
        match_id: root.into(),
        credential: Credential::Open,
        role: Role::Player,
        join: Some(codec::encode(&JoinAs { name: "raw".into() }).unwrap()),
        params: Some(codec::encode(&params).unwrap()),
        events_from: None,
    });
    send.write_all(&protocol::encode_frame(&hello, 1 << 20).unwrap())
        .await
        .unwrap();
    let mut captured = Captured::default();
    let mut frames = FrameBuffer::new(1 << 20);
    let mut bot = Bot::new(99);
    let mut acted = None;
    let mut client_seq = 0;
    let playing = async {
        loop {
            tokio::select! {
                datagram = conn.read_datagram() => {
                    let datagram = datagram.expect("connection open until the match is over");
                    let msg: ServerMsg<Event> = protocol::decode_datagram(&datagram, 1 << 20).unwrap();
                    let ServerMsg::StateFull { tick, state, .. } = msg else {
                        panic!("a delta without an acknowledged baseline: {msg:?}");
                    };
                    captured.datagrams.push((tick, datagram.to_vec()));
                    let view: View = codec::decode(&state).unwrap();
                    if view.me.is_some() && view.turn == view.me && acted != Some(view.turns) {
                        acted = Some(view.turns);
                        if let Some(command) = bot.decide(&view) {
                            client_seq += 1;
                            let msg = ClientMsg::Command { client_seq, command };
                            send.write_all(&protocol::encode_frame(&msg, 1 << 20).unwrap()).await.unwrap();
                        }
                    }
                }
                chunk = recv.read_chunk(64 * 1024, true) => {
                    let Some(chunk) = chunk.unwrap() else { return };
                    frames.extend(&chunk.bytes);
                    while let Some(msg) = frames.next_frame::<ServerMsg<Event>>().unwrap() {
                        match msg {
                            ServerMsg::Welcome(welcome) => captured.me = welcome.player,
                            ServerMsg::Event { envelope, .. } => captured.events.push(envelope),
                            ServerMsg::MatchOver { .. } => return,
                            _ => {}
                        }
                    }
                }
            }
        }
    };
    tokio::time::timeout(WAIT, playing)
        .await
        .expect("the match did not end in time");
    drop(connected);
    captured
}

/// Every player's hand after every tick, by replaying the stored log one
/// tick at a time; and the final state the replay arrives at.
async fn hands_by_tick(
    store: &MemoryStore,
    root: &str,
) -> (BTreeMap<Tick, BTreeMap<PlayerId, Vec<Card>>>, State) {
    let key = key(root);
    let head = store.head(&key).await.unwrap().unwrap();
    let setup: MatchSetup<Params> =
        codec::decode(&store.load_setup(&key).await.unwrap().unwrap()).unwrap();
    let mut replay = TickReplayer::from_start(&Eights, &setup, &head).unwrap();
    let mut hands = BTreeMap::new();
    loop {
        match replay.step().unwrap() {
            TickStep::Ran(tick) => {
                let by_player = replay
                    .state()
                    .seats
                    .iter()
                    .map(|(p, s)| (*p, s.hand.clone()))
                    .collect();
                hands.insert(tick, by_player);
            }
            TickStep::NeedEvents { from } => {
                replay
                    .push(store.read(&key, from, 64).await.unwrap())
                    .unwrap();
            }
            TickStep::Finished => break,
        }
    }
    (hands, replay.state().clone())
}

fn hidden_event_for(event: &Event, me: Option<PlayerId>) -> bool {
    match event {
        Event::Dealt { player, .. } | Event::Drew { player, .. } => Some(*player) != me,
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_never_receive_other_hands_not_even_in_the_bytes() {
    let server = start_server(60).await;
    let root = "hidden";
    let params = Params {
        players: 4,
        hand_size: 6,
        turn_ticks: 20,
        max_turns: 80,
    };
    let join = |name: &str| {
        JoinRequest::open_player(
            root,
            &JoinAs {
                name: name.to_owned(),
            },
        )
        .with_params(&params)
    };
    let raw = {
        let client = server.client.clone();
        tokio::spawn(async move { raw_player(&client, root, params).await })
    };
    let mut players = Vec::new();
    for seat in 0..3u64 {
        let session = tokio::time::timeout(WAIT, server.client.join::<Eights>(join("bot")))
            .await
            .expect("join in time")
            .expect("joined");
        players.push(tokio::spawn(play(session, seat)));
    }
    let spectator = server
        .client
        .join::<Eights>(JoinRequest::spectator(root, None))
        .await
        .expect("a spectator is admitted");
    let spectator = tokio::spawn(play(spectator, 0));
    let mut seen = Vec::new();
    for player in players {
        seen.push(player.await.unwrap());
    }
    let spectator = spectator.await.unwrap();
    let raw = raw.await.unwrap();
    let store = server.stop().await;
    let (hands, replayed_final) = hands_by_tick(&store, root).await;
    assert!(matches!(replayed_final.phase, Phase::Over { .. }));
    // The replay of the finished match ends where the live match did, as
    // every player and the spectator saw it.
    for (who, views) in seen
        .iter()
        .map(|s| (s.me, &s.views))
        .chain([(None, &spectator.views)])
    {
        let viewer = who.map_or(Viewer::Spectator, Viewer::Player);
        let last = &views.last().expect("a final state").1;
        assert_eq!(last, &*Eights.view(&replayed_final, viewer), "{viewer:?}");
    }

    // The raw bytes: no other hand's card, every own card.
    let me = raw.me.expect("the raw player was seated");
    let mut hidden_checked = 0;
    for (tick, datagram) in &raw.datagrams {
        let at = hands.get(tick).expect("a replayed tick for every state");
        for (player, hand) in at {
            for card in hand {
                let found = contains(datagram, &card.encoded());
                if *player == me {
                    assert!(found, "own {card} missing from the state of tick {tick}");
                } else {
                    assert!(!found, "{player}'s {card} in {me}'s state of tick {tick}");
                    hidden_checked += 1;
                }
            }
        }
    }
    assert!(raw.datagrams.len() > 20, "{} states", raw.datagrams.len());
    assert!(
        hidden_checked > 100,
        "{hidden_checked} hidden cards checked"
    );

    // Reliable events: one's own deal and draws, never another's.
    for (who, events) in
        std::iter::once((Some(me), &raw.events)).chain(seen.iter().map(|s| (s.me, &s.events)))
    {
        assert!(who.is_some());
        assert!(
            events
                .iter()
                .any(|e| matches!(&e.event, Event::Dealt { player, .. } if Some(*player) == who)),
            "{who:?} got its own deal"
        );
        let leaked: Vec<_> = events
            .iter()
            .filter(|e| hidden_event_for(&e.event, who))
            .collect();
        assert!(leaked.is_empty(), "{who:?} got {leaked:?}");
    }
    // What the library decoded is the player's own hand at that tick.
    for player in &seen {
        assert!(player.over);
        let me = player.me.unwrap();
        for (tick, view) in &player.views {
            // Before its join is applied a player holds nothing.
            let held = hands[tick].get(&me).cloned().unwrap_or_default();
            assert_eq!(view.hand, held, "{me} at tick {tick}");
        }
    }

    // The spectator: no hand, no private event, no card but the top.
    assert!(spectator.over);
    assert!(!spectator.views.is_empty());
    for (_, view) in &spectator.views {
        assert!(view.me.is_none() && view.hand.is_empty());
        let encoded = codec::encode(view).unwrap();
        for card in Card::deck() {
            if view.top != Some(card) {
                assert!(!contains(&encoded, &card.encoded()), "spectator saw {card}");
            }
        }
    }
    assert!(
        spectator
            .events
            .iter()
            .all(|e| !matches!(e.event, Event::Dealt { .. } | Event::Drew { .. }))
    );
    assert!(
        spectator
            .events
            .iter()
            .any(|e| matches!(e.event, Event::Played { .. }))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_player_resumes_with_its_token_and_plays_on() {
    let server = start_server(60).await;
    let root = "comeback";
    let params = Params {
        players: 2,
        hand_size: 5,
        turn_ticks: 30,
        max_turns: 80,
    };
    let join = JoinRequest::open_player(root, &JoinAs { name: "ada".into() }).with_params(&params);
    let ada = server.client.join::<Eights>(join).await.unwrap();
    let ada_id = ada.player().unwrap();
    let token = ada.resume_token().expect("a resume token");
    let join = JoinRequest::open_player(root, &JoinAs { name: "bob".into() }).with_params(&params);
    let bob = server.client.join::<Eights>(join).await.unwrap();
    let bob = tokio::spawn(play(bob, 7));

    // Ada sees her hand, then drops.
    let mut states = ada.states();
    let before = tokio::time::timeout(WAIT, async {
        loop {
            states.changed().await.unwrap();
            if let Some(update) = states.borrow_and_update().clone()
                && update.state.phase == Phase::Playing
            {
                return update.state.hand.clone();
            }
        }
    })
    .await
    .expect("the deal in time");
    assert_eq!(before.len(), 5);
    ada.close();

    // Back with the token: the same seat and the same cards (plus any
    // her timer drew meanwhile).
    let ada = server
        .client
        .join::<Eights>(JoinRequest::resume(root, &token))
        .await
        .expect("resumed");
    assert_eq!(ada.player(), Some(ada_id));
    let ada = play(ada, 3).await;
    let bob = bob.await.unwrap();
    assert!(ada.over, "{:?} {:?}", ada.other, ada.views.last());
    assert!(bob.over, "{:?}", bob.other);
    let first = &ada.views.first().unwrap().1;
    assert!(before.iter().all(|card| first.hand.contains(card)));
    assert!(matches!(
        ada.views.last().unwrap().1.phase,
        Phase::Over { .. }
    ));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_and_a_full_table_are_refused_with_the_reason() {
    let server = start_server(60).await;
    let refused = |result: Result<Session<Eights>, tickforge::client::ClientError>| match result {
        Ok(_) => panic!("admitted"),
        Err(error) => (error.code(), error.to_string()),
    };
    let seven = Params {
        players: 7,
        ..Params::default()
    };
    let join = JoinRequest::open_player("seven", &JoinAs::default()).with_params(&seven);
    let (code, reason) = refused(server.client.join::<Eights>(join).await);
    assert_eq!(code, Some(tickforge::net::CloseCode::JoinRejected));
    assert!(reason.contains("players must be 2 to 6"), "{reason}");

    let two = Params {
        players: 2,
        ..Params::default()
    };
    let join = || JoinRequest::open_player("pair", &JoinAs::default()).with_params(&two);
    let _first = server.client.join::<Eights>(join()).await.unwrap();
    let _second = server.client.join::<Eights>(join()).await.unwrap();
    let (code, reason) = refused(server.client.join::<Eights>(join()).await);
    assert_eq!(code, Some(tickforge::net::CloseCode::JoinRejected));
    assert!(
        reason.contains("full") || reason.contains("started"),
        "{reason}"
    );

    let long_name = JoinAs {
        name: "x".repeat(25),
    };
    let join = JoinRequest::open_player("names", &long_name);
    let (code, reason) = refused(server.client.join::<Eights>(join).await);
    assert_eq!(code, Some(tickforge::net::CloseCode::JoinRejected));
    assert!(reason.contains("24 characters"), "{reason}");
    server.stop().await;
}
