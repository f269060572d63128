//! The sans-IO match core, without a runtime (except to drive the async
//! store functions): replay equals the live state byte for byte, and
//! refused commands carry their reason and change nothing.

use proptest::prelude::*;
use tickforge::arena::{Arena, ArenaCommand, ArenaMap, ArenaRules, ArenaState, Dir, Pos};
use tickforge::codec;
use tickforge::engine::{
    self, CommandOutcome, MatchCore, MatchPolicy, QueueFull, Replayed, Replayer, TickOutput,
};
use tickforge::game::{PlayerId, Tick};
use tickforge::store::{
    AppendBatch, EventStore, MatchKey, MemoryStore, RecordedEvent, Snapshot, SnapshotStore,
};

/// A small arena where players meet often: walls, collisions, tags,
/// respawns, a full match and a reachable score limit all happen.
const SMALL_MAP: &str = "\
#######
#S...S#
#..#..#
#S...S#
#######
";

fn small_arena(time_limit_ticks: Tick) -> Arena {
    Arena::new(
        ArenaMap::parse(SMALL_MAP).unwrap(),
        ArenaRules {
            max_players: 3,
            score_limit: 4,
            time_limit_ticks,
            fire_cooldown_ticks: 3,
            respawn_ticks: 4,
        },
    )
}

fn key() -> MatchKey {
    MatchKey::new("arena", "main", "m1").unwrap()
}

fn bytes(state: &ArenaState) -> Vec<u8> {
    codec::encode(state).unwrap()
}

/// Everything a run of the core produced, as a driver would keep it.
struct Run {
    core: MatchCore<Arena, usize>,
    /// Every event handed out by `poll_batch`, in order.
    events: Vec<RecordedEvent>,
    /// Every batch, in the order a store would receive them.
    batches: Vec<AppendBatch>,
    /// Snapshots in the order they were produced, each with the number of
    /// batches that must be stored before it (as the shard writer orders them).
    snapshots: Vec<(usize, Snapshot)>,
}

/// A scripted command: applied on `tick` (1-based), in list order.
type Scripted = (Tick, u32, ArenaCommand);

/// Drives the core tick by tick, as a shard would, checking the invariants
/// each tick must keep on the way.
fn drive(
    game: &Arena,
    script: &[Scripted],
    ticks: Tick,
    snapshot_every_ticks: u64,
    poll_each_tick: &[bool],
) -> Run {
    let policy = MatchPolicy {
        max_pending: 1024,
        snapshot_every_ticks,
    };
    let mut core = MatchCore::new(game, key(), policy, &tickforge::game::MatchSetup::default())
        .expect("setup");
    let mut run_events = Vec::new();
    let mut batches = Vec::new();
    let mut snapshots = Vec::new();
    let mut unbatched_snapshots = Vec::new();
    let mut token = 0;
    for tick in 1..=ticks {
        let before_sequence = core.next_sequence();
        let was_over = core.is_over();
        let mut sent = 0;
        for (_, player, command) in script.iter().filter(|(t, ..)| *t == tick) {
            core.handle_command(PlayerId(*player), command.clone(), token)
                .unwrap();
            token += 1;
            sent += 1;
        }
        let out = core.run_tick(game);
        assert_eq!(out.outcomes.len(), sent);
        // Outcomes come back in arrival order and account for every event.
        let mut expected = before_sequence;
        for (_, outcome) in &out.outcomes {
            if let CommandOutcome::Accepted {
                tick: at,
                first_sequence,
                events,
            } = outcome
            {
                assert_eq!(*at, out.tick);
                assert_eq!(*first_sequence, expected);
                expected += u64::from(*events);
            }
        }
        assert_eq!(expected, core.next_sequence());
        let sequences: Vec<u64> = out.events.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, (before_sequence..expected).collect::<Vec<_>>());
        assert!(out.events.iter().all(|e| e.tick == out.tick));
        if was_over {
            assert_eq!(out.tick, core.tick());
            assert!(out.events.is_empty() && out.snapshot.is_none());
        } else {
            assert_eq!(out.tick, tick);
            assert_eq!(core.state().tick, tick);
        }
        if let Some(snapshot) = out.snapshot {
            assert_eq!(snapshot.sequence, core.next_sequence());
            assert_eq!(snapshot.tick, core.tick());
            assert_eq!(snapshot.state, bytes(core.state()));
            unbatched_snapshots.push(snapshot);
        }
        let poll = poll_each_tick
            .get(tick as usize % poll_each_tick.len().max(1))
            .copied()
            .unwrap_or(true);
        if poll || tick == ticks {
            poll_into(&mut core, &mut run_events, &mut batches);
            for snapshot in unbatched_snapshots.drain(..) {
                snapshots.push((batches.len(), snapshot));
            }
        }
    }
    assert!(core.poll_batch().is_none(), "nothing left to hand out");
    Run {
        core,
        events: run_events,
        batches,
        snapshots,
    }
}

fn poll_into(
    core: &mut MatchCore<Arena, usize>,
    events: &mut Vec<RecordedEvent>,
    batches: &mut Vec<AppendBatch>,
) {
    if let Some(batch) = core.poll_batch() {
        assert_eq!(batch.key, key());
        assert_eq!(batch.first_sequence, events.len() as u64, "batches chain");
        assert_eq!(batch.head_tick, core.tick());
        assert_eq!(batch.next_sequence(), core.next_sequence());
        events.extend(batch.events.iter().cloned());
        batches.push(batch);
    }
}

fn replay<'g>(mut replayer: Replayer<'g, Arena>, events: &[RecordedEvent]) -> Replayer<'g, Arena> {
    for event in events {
        replayer.apply(event).unwrap();
    }
    replayer
}

fn assert_same(live: &MatchCore<Arena, usize>, replayed: &Replayed<ArenaState>, what: &str) {
    assert_eq!(
        bytes(&replayed.state),
        bytes(live.state()),
        "{what}: state differs"
    );
    assert_eq!(replayed.next_sequence, live.next_sequence(), "{what}");
    assert_eq!(replayed.tick, live.tick(), "{what}");
}

fn direction() -> impl Strategy<Value = Dir> {
    prop::sample::select(Dir::ALL.to_vec())
}

fn command() -> impl Strategy<Value = ArenaCommand> {
    let name = prop_oneof![
        4 => "[a-z]{1,16}",
        1 => Just(String::new()),
        1 => "[a-z]{17,20}",
        1 => Just("tab\there".to_owned()),
    ];
    prop_oneof![
        2 => name.prop_map(|name| ArenaCommand::Join { name }),
        1 => Just(ArenaCommand::Leave),
        5 => direction().prop_map(ArenaCommand::Move),
        3 => direction().prop_map(ArenaCommand::Turn),
        4 => Just(ArenaCommand::Fire),
    ]
}

/// Commands from players 0..5 (the map takes 3, so some never get in)
/// on random ticks, plus the run length, snapshot interval, poll pattern
/// and time limit.
fn scenario() -> impl Strategy<Value = (Vec<Scripted>, Tick, u64, Vec<bool>, Tick)> {
    (
        prop::collection::vec((1..60u64, 0..5u32, command()), 0..160),
        0..20u64,
        1..50u64,
        prop::collection::vec(any::<bool>(), 1..8),
        prop_oneof![2 => Just(0u64), 1 => 1..80u64],
    )
        .prop_map(|(mut script, extra, every, polls, limit)| {
            // Arrival order within a tick stays random; ticks ascend.
            script.sort_by_key(|(tick, ..)| *tick);
            let last = script.last().map_or(0, |(tick, ..)| *tick);
            (script, last + extra, every, polls, limit)
        })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    /// Live state, snapshot + tail, and a replay from the start agree byte
    /// for byte, and so does every snapshot taken along the way.
    #[test]
    fn replay_equals_live_state((script, ticks, every, polls, limit) in scenario()) {
        let game = small_arena(limit);
        let run = drive(&game, &script, ticks, every, &polls);
        let head_tick = run.core.tick();

        let from_start = replay(Replayer::from_start(&game, &tickforge::game::MatchSetup::default()).expect("setup"), &run.events).finish(head_tick).expect("replays");
        assert_same(&run.core, &from_start, "from start");

        let latest = run.snapshots.last().map(|(_, s)| s);
        let from_latest = match latest {
            Some(snapshot) => {
                let tail = &run.events[snapshot.sequence as usize..];
                replay(Replayer::from_snapshot(&game, snapshot).unwrap(), tail).finish(head_tick).expect("replays")
            }
            None => replay(Replayer::from_start(&game, &tickforge::game::MatchSetup::default()).expect("setup"), &run.events).finish(head_tick).expect("replays"),
        };
        assert_same(&run.core, &from_latest, "latest snapshot + tail");

        // Each snapshot is the replay of exactly the events before it.
        for (_, snapshot) in &run.snapshots {
            let prefix = &run.events[..snapshot.sequence as usize];
            let replayed = replay(Replayer::from_start(&game, &tickforge::game::MatchSetup::default()).expect("setup"), prefix).finish(snapshot.tick).expect("replays");
            prop_assert_eq!(&codec::encode(&replayed.state).unwrap(), &snapshot.state);
            prop_assert_eq!(replayed.tick, snapshot.tick);
        }
        if ticks >= every && !run.core.is_over() {
            prop_assert!(latest.is_some(), "a snapshot was due at tick {}", every);
        }
    }

    /// The same through the async store path: batches appended and
    /// snapshots saved in the writer's order, then `restore` (snapshot +
    /// tail) and `rebuild_from_start` both give the live state.
    #[test]
    fn restore_from_store_equals_live_state((script, ticks, every, polls, limit) in scenario()) {
        let game = small_arena(limit);
        let run = drive(&game, &script, ticks, every, &polls);
        let store = MemoryStore::new();
        let key = key();
        runtime().block_on(async {
            store.create(&key, &[]).await.unwrap();
            let mut saved = 0;
            for (index, batch) in run.batches.iter().enumerate() {
                let results = store.append(vec![batch.clone()]).await.unwrap();
                let head = results.into_iter().next().unwrap().unwrap();
                assert_eq!(head.next_sequence, batch.next_sequence());
                assert_eq!(head.tick, batch.head_tick);
                while let Some((after, snapshot)) = run.snapshots.get(saved) {
                    if *after > index + 1 {
                        break;
                    }
                    assert!(store.save_snapshot(&key, snapshot).await.unwrap());
                    saved += 1;
                }
            }
            assert_eq!(saved, run.snapshots.len());
            let stored = store.read(&key, 0, usize::MAX).await.unwrap();
            assert_eq!(stored, run.events);

            let restored = engine::restore(&game, &store, &key).await.unwrap();
            assert_same(&run.core, &restored, "restore");
            let rebuilt = engine::rebuild_from_start(&game, &store, &key).await.unwrap();
            assert_same(&run.core, &rebuilt, "rebuild_from_start");

            // A core continuing from the restore behaves like the live one.
            let mut live = run.core;
            let mut resumed = MatchCore::<Arena, usize>::restored(
                &game,
                key.clone(),
                MatchPolicy { max_pending: 1024, snapshot_every_ticks: every },
                restored,
                Default::default(),
            );
            for (player, command) in [(0, ArenaCommand::Fire), (1, ArenaCommand::Move(Dir::East))] {
                live.handle_command(PlayerId(player), command.clone(), 0).unwrap();
                resumed.handle_command(PlayerId(player), command, 0).unwrap();
            }
            let (a, b) = (live.run_tick(&game), resumed.run_tick(&game));
            assert_eq!(a.outcomes, b.outcomes);
            assert_eq!(a.events, b.events);
            assert_eq!(bytes(live.state()), bytes(resumed.state()));
            assert_eq!(live.poll_batch(), resumed.poll_batch());
        });
    }
}

/// Builds a core by running `history` (one command list per tick).
fn core_after(
    game: &Arena,
    history: &[Vec<(u32, ArenaCommand)>],
    max_pending: usize,
) -> MatchCore<Arena, usize> {
    let policy = MatchPolicy {
        max_pending,
        snapshot_every_ticks: 1000,
    };
    let mut core = MatchCore::new(game, key(), policy, &tickforge::game::MatchSetup::default())
        .expect("setup");
    for commands in history {
        tick_with(game, &mut core, commands);
    }
    core
}

fn tick_with(
    game: &Arena,
    core: &mut MatchCore<Arena, usize>,
    commands: &[(u32, ArenaCommand)],
) -> TickOutput<tickforge::arena::ArenaEvent, usize> {
    for (token, (player, command)) in commands.iter().enumerate() {
        core.handle_command(PlayerId(*player), command.clone(), token)
            .unwrap();
    }
    core.run_tick(game)
}

/// Checks that `probe` from `player` is refused with a reason containing
/// `reason` after `history`, both alone and between valid commands, and
/// that it changes nothing: same state bytes, sequence and batch as a twin
/// match that never received it.
fn assert_refused(
    game: &Arena,
    history: &[Vec<(u32, ArenaCommand)>],
    valid: &[(u32, ArenaCommand)],
    probe: (u32, ArenaCommand),
    reason: &str,
) {
    for (with_valid, n_valid) in [(false, 0), (true, valid.len())] {
        let mut probed = core_after(game, history, 1024);
        let mut twin = core_after(game, history, 1024);
        let head = probed.next_sequence();
        let mut commands: Vec<_> = if with_valid { valid.to_vec() } else { vec![] };
        let others = commands.clone();
        commands.insert(n_valid / 2, probe.clone());
        let out = tick_with(game, &mut probed, &commands);
        let twin_out = tick_with(game, &mut twin, &others);

        let (_, outcome) = &out.outcomes[n_valid / 2];
        match outcome {
            CommandOutcome::Rejected(rejection) => {
                assert!(
                    rejection.reason.contains(reason),
                    "{probe:?}: reason {:?} does not mention {reason:?}",
                    rejection.reason
                );
                assert_eq!(rejection.to_string(), rejection.reason);
            }
            other => panic!("{probe:?} was not refused: {other:?}"),
        }
        let mut probed_outcomes: Vec<_> = out.outcomes.iter().map(|(_, o)| o.clone()).collect();
        probed_outcomes.remove(n_valid / 2);
        let twin_outcomes: Vec<_> = twin_out.outcomes.iter().map(|(_, o)| o.clone()).collect();
        assert_eq!(probed_outcomes, twin_outcomes, "{probe:?} disturbed others");
        assert_eq!(out.events, twin_out.events, "{probe:?}");
        assert_eq!(bytes(probed.state()), bytes(twin.state()), "{probe:?}");
        assert_eq!(probed.next_sequence(), twin.next_sequence(), "{probe:?}");
        if !with_valid {
            assert_eq!(probed.next_sequence(), head, "{probe:?} took a sequence");
            assert!(out.events.is_empty());
        }
        assert_eq!(probed.poll_batch(), twin.poll_batch(), "{probe:?}");
    }
}

/// A 2-player arena on a 3 x 2 floor: spawns at (1,1) and (3,1).
fn duel_arena() -> Arena {
    Arena::new(
        ArenaMap::parse("#####\n#S.S#\n#...#\n#####\n").unwrap(),
        ArenaRules {
            max_players: 2,
            score_limit: 3,
            time_limit_ticks: 0,
            fire_cooldown_ticks: 10,
            respawn_ticks: 5,
        },
    )
}

fn join(player: u32, name: &str) -> (u32, ArenaCommand) {
    (
        player,
        ArenaCommand::Join {
            name: name.to_owned(),
        },
    )
}

#[test]
fn refused_commands_name_their_reason_and_change_nothing() {
    let game = duel_arena();
    let joined = vec![vec![join(0, "ada"), join(1, "bob")]];
    {
        let core = core_after(&game, &joined, 1024);
        assert_eq!(core.state().players[&PlayerId(0)].pos, Pos { x: 1, y: 1 });
        assert_eq!(core.state().players[&PlayerId(1)].pos, Pos { x: 3, y: 1 });
    }
    // Valid commands that go around each probe in the mixed variant.
    let valid = [
        (1, ArenaCommand::Turn(Dir::West)),
        (0, ArenaCommand::Turn(Dir::South)),
    ];
    let not_joined = "you have not joined this match";
    let cases = [
        ((0, ArenaCommand::Move(Dir::North)), "a wall is in the way"),
        ((0, ArenaCommand::Move(Dir::West)), "a wall is in the way"),
        ((1, ArenaCommand::Move(Dir::East)), "a wall is in the way"),
        (join(0, "again"), "you have already joined"),
        ((7, ArenaCommand::Move(Dir::East)), not_joined),
        ((7, ArenaCommand::Turn(Dir::East)), not_joined),
        ((7, ArenaCommand::Fire), not_joined),
        ((7, ArenaCommand::Leave), not_joined),
        (join(2, ""), "name must be 1 to 16 characters"),
        (join(2, &"x".repeat(17)), "name must be 1 to 16 characters"),
        (join(2, "a\u{7}b"), "control characters"),
        (join(2, "carol"), "the match is full"),
    ];
    for (probe, reason) in cases {
        assert_refused(&game, &joined, &valid, probe, reason);
    }

    // Walking into another player.
    let mut history = joined.clone();
    history.push(vec![(0, ArenaCommand::Move(Dir::East))]);
    assert_refused(
        &game,
        &history,
        &[],
        (0, ArenaCommand::Move(Dir::East)),
        "another player is in the way",
    );

    // A shot tags bob (east of ada, in line); ada's weapon cools down and
    // bob is out until he respawns.
    history.push(vec![(0, ArenaCommand::Fire)]);
    let core = core_after(&game, &history, 1024);
    assert_eq!(core.state().players[&PlayerId(0)].score, 1);
    assert!(core.state().players[&PlayerId(1)].respawn_at.is_some());
    assert_refused(
        &game,
        &history,
        &[],
        (0, ArenaCommand::Fire),
        "weapon cooling down for 9 more ticks",
    );
    let tagged_out = "you are tagged out until you respawn";
    for probe in [
        ArenaCommand::Move(Dir::West),
        ArenaCommand::Turn(Dir::North),
        ArenaCommand::Fire,
    ] {
        assert_refused(&game, &history, &[], (1, probe), tagged_out);
    }
    // A tagged-out player may still leave.
    let mut core = core_after(&game, &history, 1024);
    let out = tick_with(&game, &mut core, &[(1, ArenaCommand::Leave)]);
    assert!(matches!(
        out.outcomes[0].1,
        CommandOutcome::Accepted { events: 1, .. }
    ));
    assert!(!core.state().players.contains_key(&PlayerId(1)));
}

#[test]
fn a_full_spawn_set_refuses_to_join() {
    // One spawn point, room for two: the second join finds it taken.
    let game = Arena::new(
        ArenaMap::parse("####\n#S.#\n####\n").unwrap(),
        ArenaRules {
            max_players: 2,
            ..ArenaRules::default()
        },
    );
    assert_refused(
        &game,
        &[vec![join(0, "ada")]],
        &[],
        join(1, "bob"),
        "no free spawn point",
    );
}

#[test]
fn an_ended_match_refuses_everything_and_stops_ticking() {
    let game = Arena::new(
        ArenaMap::default(),
        ArenaRules {
            time_limit_ticks: 3,
            ..ArenaRules::default()
        },
    );
    let mut core = core_after(&game, &[vec![join(1, "ada")], vec![], vec![]], 1024);
    assert!(core.is_over());
    assert_eq!(core.tick(), 3);
    let before = (bytes(core.state()), core.next_sequence());
    assert!(core.poll_batch().is_some());
    for _ in 0..3 {
        let out = tick_with(
            &game,
            &mut core,
            &[(1, ArenaCommand::Turn(Dir::North)), join(2, "bob")],
        );
        assert_eq!(out.tick, 3);
        assert!(out.events.is_empty() && out.snapshot.is_none() && !out.ended);
        for (_, outcome) in out.outcomes {
            assert_eq!(
                outcome,
                CommandOutcome::Rejected(tickforge::game::Rejection::new("the match is over"))
            );
        }
        assert_eq!((bytes(core.state()), core.next_sequence()), before);
        assert!(core.poll_batch().is_none());
    }
}

#[test]
fn a_full_match_queue_hands_the_command_back() {
    let game = duel_arena();
    let mut core = core_after(&game, &[vec![join(0, "ada")]], 2);
    let before = (bytes(core.state()), core.next_sequence());
    core.handle_command(PlayerId(0), ArenaCommand::Turn(Dir::South), 10)
        .unwrap();
    core.handle_command(PlayerId(0), ArenaCommand::Turn(Dir::West), 11)
        .unwrap();
    let refused = core.handle_command(PlayerId(0), ArenaCommand::Fire, 12);
    assert_eq!(refused, Err(QueueFull(12)));
    assert_eq!(core.pending(), 2);
    assert_eq!((bytes(core.state()), core.next_sequence()), before);
    let out = core.run_tick(&game);
    let tokens: Vec<usize> = out.outcomes.iter().map(|(t, _)| *t).collect();
    assert_eq!(tokens, vec![10, 11], "only the queued commands ran");
    assert_eq!(core.next_sequence(), before.1 + 2);
}

#[test]
fn replay_refuses_gaps_and_out_of_order_ticks() {
    let game = duel_arena();
    let script: Vec<Scripted> = vec![
        (1, 0, ArenaCommand::Join { name: "ada".into() }),
        (2, 0, ArenaCommand::Turn(Dir::South)),
        (3, 0, ArenaCommand::Move(Dir::South)),
    ];
    let run = drive(&game, &script, 4, 2, &[true]);
    assert_eq!(run.events.len(), 3);
    let mut replayer =
        Replayer::from_start(&game, &tickforge::game::MatchSetup::default()).expect("setup");
    replayer.apply(&run.events[0]).unwrap();
    let gap = replayer.apply(&run.events[2]).unwrap_err();
    assert_eq!(
        gap,
        engine::RestoreError::Gap {
            expected: 1,
            found: 2
        }
    );
    // An event inside the snapshot's ticks is refused.
    let (_, snapshot) = run.snapshots.first().unwrap();
    assert_eq!((snapshot.tick, snapshot.sequence), (2, 2));
    let mut early = run.events[2].clone();
    early.tick = 2;
    early.payload = codec::encode(&engine::EventEnvelope {
        sequence: 2,
        tick: 2,
        player: Some(PlayerId(0)),
        schema: 1,
        event: tickforge::arena::ArenaEvent::Left {
            player: PlayerId(0),
        },
    })
    .unwrap();
    let mut from_snapshot = Replayer::from_snapshot(&game, snapshot).unwrap();
    assert!(matches!(
        from_snapshot.apply(&early),
        Err(engine::RestoreError::TickOrder {
            sequence: 2,
            tick: 2,
            at: 2
        })
    ));
    // A record whose envelope disagrees with it is refused.
    let mut lying = run.events[2].clone();
    lying.tick = 4;
    assert!(matches!(
        from_snapshot.apply(&lying),
        Err(engine::RestoreError::EnvelopeMismatch { sequence: 2, .. })
    ));
    from_snapshot.apply(&run.events[2]).unwrap();
    assert_same(
        &run.core,
        &from_snapshot.finish(run.core.tick()).expect("replays"),
        "tail",
    );
}

#[test]
fn rejecting_the_queue_answers_every_command_and_changes_nothing() {
    let game = duel_arena();
    let mut core = core_after(&game, &[vec![join(0, "ada")]], 1024);
    let mut twin = core_after(&game, &[vec![join(0, "ada")]], 1024);
    for (token, command) in [
        ArenaCommand::Turn(Dir::South),
        ArenaCommand::Fire,
        ArenaCommand::Leave,
    ]
    .into_iter()
    .enumerate()
    {
        core.handle_command(PlayerId(0), command, token).unwrap();
    }
    let refusal = tickforge::game::Rejection::new("match paused: test");
    let answered = core.reject_pending(&refusal);
    let expected: Vec<_> = (0..3)
        .map(|t| (t, CommandOutcome::Rejected(refusal.clone())))
        .collect();
    assert_eq!(answered, expected);
    assert_eq!(core.pending(), 0);
    assert!(core.reject_pending(&refusal).is_empty());
    // The refused commands never run.
    let (out, twin_out) = (core.run_tick(&game), twin.run_tick(&game));
    assert!(out.outcomes.is_empty() && out.events.is_empty());
    assert_eq!(bytes(core.state()), bytes(twin.state()));
    assert_eq!(core.next_sequence(), twin.next_sequence());
    assert_eq!(twin_out.tick, out.tick);
}
