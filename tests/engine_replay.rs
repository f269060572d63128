//! Replaying an arena match tick by tick (TickReplayer) and whole (Replayer): both equal the live match.

use proptest::prelude::*;

use tickforge::arena::bot::Bot;
use tickforge::arena::{Arena, ArenaEvent, ArenaMap, ArenaRules, ArenaState};
use tickforge::codec;
use tickforge::engine::replay::{Replayed, Replayer, RestoreError, TickReplayer, TickStep};
use tickforge::engine::{EventEnvelope, MatchCore, MatchPolicy};
use tickforge::game::{MatchSetup, PlayerId, Tick};
use tickforge::store::{Head, MatchKey, MatchStatus, RecordedEvent, Snapshot};

type Envelope = EventEnvelope<ArenaEvent>;

/// A match played by bots: what the store holds and what the live
/// match showed after every tick.
struct Played {
    core: MatchCore<Arena, ()>,
    /// Every event, as `poll_batch` handed them to the store.
    log: Vec<RecordedEvent>,
    /// The encoded live state after each tick (index 0: tick 0).
    states: Vec<Vec<u8>>,
    /// The events each tick applied (index 0: none).
    events: Vec<Vec<Envelope>>,
    /// The snapshots the core took, in order.
    snapshots: Vec<Snapshot>,
}

impl Played {
    fn head(&self) -> Head {
        Head {
            next_sequence: self.core.next_sequence(),
            tick: self.core.tick(),
            status: if self.core.is_over() {
                MatchStatus::Ended
            } else {
                MatchStatus::Live
            },
        }
    }
}

fn encode(state: &ArenaState) -> Vec<u8> {
    codec::encode(state).expect("arena states encode")
}

/// `bots` bots play for `active` ticks, then the match runs `idle`
/// more ticks without commands (or until it ends).
fn play(arena: &Arena, bots: u32, seed: u64, active: Tick, idle: Tick, every: u64) -> Played {
    let key = MatchKey::new("arena", "main", "replay").expect("valid key");
    let policy = MatchPolicy {
        max_pending: 1024,
        snapshot_every_ticks: every,
    };
    let core: MatchCore<Arena, ()> =
        MatchCore::new(arena, key, policy, &tickforge::game::MatchSetup::default()).expect("setup");
    let mut bots: Vec<Bot> = (1..=bots)
        .map(|p| Bot::new(PlayerId(p), seed + u64::from(p)))
        .collect();
    let mut played = Played {
        log: Vec::new(),
        states: vec![encode(core.state())],
        events: vec![Vec::new()],
        snapshots: Vec::new(),
        core,
    };
    for tick in 1..=active + idle {
        if played.core.is_over() {
            break;
        }
        if tick <= active {
            for bot in &mut bots {
                if let Some(command) = bot.next_command(arena, played.core.state()) {
                    played
                        .core
                        .handle_command(bot.player(), command, ())
                        .expect("the queue has room");
                }
            }
        }
        let out = played.core.run_tick(arena);
        assert_eq!(out.tick, tick);
        played.states.push(encode(played.core.state()));
        played.events.push(out.events);
        played.snapshots.extend(out.snapshot);
        if let Some(batch) = played.core.poll_batch() {
            played.log.extend(batch.events);
        }
    }
    played
}

/// A small arena whose matches end quickly.
fn small_arena(time_limit_ticks: Tick) -> Arena {
    Arena::new(
        ArenaMap::default(),
        ArenaRules {
            max_players: 6,
            score_limit: 5,
            time_limit_ticks,
            fire_cooldown_ticks: 3,
            respawn_ticks: 5,
        },
    )
}

/// What a tick-by-tick replay showed.
struct Shown {
    /// Each tick that ran, with the encoded state after it and its events.
    ticks: Vec<(Tick, Vec<u8>, Vec<Envelope>)>,
    /// The encoded state at the end.
    end: Vec<u8>,
    end_tick: Tick,
    next_sequence: u64,
}

/// Replays `log` up to `head` tick by tick, paging `page` events in at
/// a time from where the replayer asks.
fn replay_ticks(
    mut replay: TickReplayer<'_, Arena>,
    log: &[RecordedEvent],
    page: usize,
) -> Result<Shown, RestoreError> {
    let mut ticks = Vec::new();
    loop {
        match replay.step()? {
            TickStep::Ran(tick) => {
                assert_eq!(replay.tick(), tick);
                ticks.push((tick, encode(replay.state()), replay.tick_events().to_vec()));
            }
            TickStep::NeedEvents { from } => {
                let from = usize::try_from(from).expect("small logs");
                assert!(from < log.len(), "asked for events past the log");
                replay.push(log[from..].iter().take(page).cloned())?;
            }
            TickStep::Finished => break,
        }
    }
    assert!(replay.is_finished());
    assert_eq!(
        replay.step(),
        Ok(TickStep::Finished),
        "finished stays finished"
    );
    Ok(Shown {
        end: encode(replay.state()),
        end_tick: replay.tick(),
        next_sequence: replay.next_sequence(),
        ticks,
    })
}

/// The whole-log replay the engine restores with.
fn replay_whole(arena: &Arena, log: &[RecordedEvent], head: &Head) -> Replayed<ArenaState> {
    let mut replayer =
        Replayer::from_start(arena, &tickforge::game::MatchSetup::default()).expect("setup");
    for record in log.iter().take_while(|r| r.sequence < head.next_sequence) {
        replayer.apply(record).expect("the log replays");
    }
    replayer.finish(head.tick).expect("replays")
}

/// Every tick from `first` to the head ran once, in order, showing the
/// live state and events of that tick; the end is the live end and
/// the whole-log replay.
fn assert_matches_live(arena: &Arena, played: &Played, shown: &Shown, first: Tick) {
    let head = played.head();
    let expected: Vec<Tick> = (first..=head.tick).collect();
    let ran: Vec<Tick> = shown.ticks.iter().map(|(tick, ..)| *tick).collect();
    assert_eq!(ran, expected, "every tick runs once, in order");
    for (tick, state, events) in &shown.ticks {
        let at = usize::try_from(*tick).expect("small runs");
        assert!(
            state == &played.states[at],
            "state after tick {tick} differs from the live match"
        );
        assert_eq!(events, &played.events[at], "events of tick {tick}");
    }
    let whole = replay_whole(arena, &played.log, &head);
    assert!(
        shown.end == encode(&whole.state),
        "end differs from a whole replay"
    );
    assert!(
        shown.end == encode(played.core.state()),
        "end differs from the live match"
    );
    assert_eq!(shown.end_tick, whole.tick);
    assert_eq!(shown.next_sequence, whole.next_sequence);
    assert_eq!(shown.next_sequence, played.log.len() as u64);
}

#[test]
fn every_tick_equals_the_live_match() {
    let arena = Arena::default();
    let played = play(&arena, 8, 7, 600, 0, 300);
    assert!(
        played.log.len() > 1000,
        "bots were busy: {}",
        played.log.len()
    );
    let shown = replay_ticks(
        TickReplayer::from_start(&arena, &MatchSetup::default(), &played.head()).expect("setup"),
        &played.log,
        7,
    )
    .expect("the log replays");
    assert_matches_live(&arena, &played, &shown, 1);
    assert!(
        shown.ticks.iter().any(|(_, _, events)| events.len() > 1),
        "some tick has several events"
    );
}

#[test]
fn a_finished_match_replays_through_its_ending() {
    let arena = small_arena(240);
    let played = play(&arena, 6, 3, 1000, 0, 100);
    assert!(played.core.is_over());
    let head = played.head();
    assert_eq!(head.status, MatchStatus::Ended);
    let shown = replay_ticks(
        TickReplayer::from_start(&arena, &MatchSetup::default(), &head).expect("setup"),
        &played.log,
        64,
    )
    .expect("the log replays");
    assert_matches_live(&arena, &played, &shown, 1);
    let end: ArenaState = codec::decode(&shown.end).expect("decodes");
    assert!(end.ending.is_some(), "the replay shows the ending");
}

#[test]
fn idle_ticks_after_the_last_event_run_up_to_the_head() {
    let arena = Arena::default();
    let played = play(&arena, 3, 11, 40, 90, 1000);
    let last_event_tick = played.log.last().expect("bots joined").tick;
    assert!(played.head().tick >= last_event_tick + 90);
    let mut replay =
        TickReplayer::from_start(&arena, &MatchSetup::default(), &played.head()).expect("setup");
    assert_eq!(replay.head_tick(), played.head().tick);
    replay.push(played.log.clone()).expect("one page");
    let shown = replay_ticks(replay, &played.log, 1).expect("the log replays");
    assert_matches_live(&arena, &played, &shown, 1);
}

#[test]
fn from_a_snapshot_the_ticks_continue_like_the_live_match() {
    let arena = Arena::default();
    let played = play(&arena, 8, 5, 400, 0, 120);
    let snapshot = &played.snapshots[1];
    assert_eq!(snapshot.tick, 240);
    let replay = TickReplayer::from_snapshot(&arena, snapshot, &played.head())
        .expect("the snapshot decodes");
    assert_eq!(replay.tick(), 240);
    assert_eq!(replay.next_sequence(), snapshot.sequence);
    let shown = replay_ticks(replay, &played.log, 50).expect("the tail replays");
    assert_matches_live(&arena, &played, &shown, 241);
}

#[test]
fn events_past_the_head_are_ignored() {
    let arena = Arena::default();
    let played = play(&arena, 8, 9, 300, 0, 1000);
    // The head as read while the match was at tick 150.
    let at = 150;
    let next_sequence = played.log.iter().filter(|r| r.tick <= at).count() as u64;
    let head = Head {
        next_sequence,
        tick: at,
        status: MatchStatus::Live,
    };
    let mut replay =
        TickReplayer::from_start(&arena, &MatchSetup::default(), &head).expect("setup");
    replay
        .push(played.log.clone())
        .expect("pages past the head are fine");
    let shown = replay_ticks(replay, &played.log, 10).expect("the log replays");
    assert_eq!(shown.end_tick, at);
    assert_eq!(shown.next_sequence, next_sequence);
    assert!(shown.end == played.states[150], "state at the head tick");
    assert!(shown.end == encode(&replay_whole(&arena, &played.log, &head).state));
}

#[test]
fn a_gap_between_pages_is_refused() {
    let arena = Arena::default();
    let played = play(&arena, 4, 1, 50, 0, 1000);
    let mut replay =
        TickReplayer::from_start(&arena, &MatchSetup::default(), &played.head()).expect("setup");
    replay
        .push(played.log[..3].iter().cloned())
        .expect("first page");
    assert_eq!(
        replay.push(played.log[4..].iter().cloned()),
        Err(RestoreError::Gap {
            expected: 3,
            found: 4
        })
    );
}

#[test]
fn an_event_of_an_earlier_tick_is_refused_when_its_turn_comes() {
    let arena = Arena::default();
    let record = |sequence, tick| {
        let envelope = EventEnvelope {
            sequence,
            tick,
            player: Some(PlayerId(1)),
            schema: 1,
            event: ArenaEvent::Left {
                player: PlayerId(1),
            },
        };
        RecordedEvent {
            sequence,
            tick,
            payload: codec::encode(&envelope).expect("encodes"),
        }
    };
    let head = Head {
        next_sequence: 2,
        tick: 6,
        status: MatchStatus::Live,
    };
    let mut replay =
        TickReplayer::from_start(&arena, &MatchSetup::default(), &head).expect("setup");
    assert_eq!(replay.step(), Ok(TickStep::NeedEvents { from: 0 }));
    replay.push([record(0, 5), record(1, 3)]).expect("queued");
    for tick in 1..=4 {
        assert_eq!(replay.step(), Ok(TickStep::Ran(tick)));
        assert!(replay.tick_events().is_empty());
    }
    assert_eq!(
        replay.step(),
        Err(RestoreError::TickOrder {
            sequence: 1,
            tick: 3,
            at: 4
        })
    );
}

#[test]
fn an_undecodable_event_is_reported_with_its_sequence() {
    let arena = Arena::default();
    let head = Head {
        next_sequence: 1,
        tick: 2,
        status: MatchStatus::Live,
    };
    let mut replay =
        TickReplayer::from_start(&arena, &MatchSetup::default(), &head).expect("setup");
    replay
        .push([RecordedEvent {
            sequence: 0,
            tick: 1,
            payload: vec![0xff; 3],
        }])
        .expect("queued");
    assert!(matches!(
        replay.step(),
        Err(RestoreError::Read { ref what, .. }) if what == "event 0"
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any run, paged in any size, from the start or from any of its
    /// snapshots: every tick shows the live state and events, and the
    /// end is the whole-log replay.
    #[test]
    fn tick_by_tick_equals_live_and_whole_replay(
        bots in 0..6u32,
        seed in any::<u64>(),
        active in 0..200u64,
        idle in 0..40u64,
        time_limit in prop_oneof![Just(0u64), 20..200u64],
        every in 1..80u64,
        page in 1..40usize,
        snapshot_pick in any::<prop::sample::Index>(),
        from_snapshot in any::<bool>(),
    ) {
        let arena = small_arena(time_limit);
        let played = play(&arena, bots, seed, active, idle, every);
        let head = played.head();
        let snapshot = (from_snapshot && !played.snapshots.is_empty())
            .then(|| &played.snapshots[snapshot_pick.index(played.snapshots.len())]);
        let (replay, first) = match snapshot {
            Some(s) => (
                TickReplayer::from_snapshot(&arena, s, &head).expect("decodes"),
                s.tick + 1,
            ),
            None => (TickReplayer::from_start(&arena, &MatchSetup::default(), &head).expect("setup"), 1),
        };
        let shown = replay_ticks(replay, &played.log, page).expect("the log replays");
        assert_matches_live(&arena, &played, &shown, first);
    }
}
