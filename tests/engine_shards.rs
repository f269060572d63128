//! The async shell: shards ticking matches, their queues, pacing and
//! shutdown, against the memory store. Paused tokio time makes the tick
//! loop deterministic; the concurrency test uses a multi-thread runtime.
//! Nothing here sleeps to synchronise: tests await published updates.

mod engine_support;

use engine_support::update_at;
use std::sync::Arc;
use std::time::Duration;

use tickforge::arena::bot::Bot;
use tickforge::arena::{Arena, ArenaCommand, ArenaEvent, ArenaMap, ArenaRules, ArenaState, Dir};
use tickforge::codec;
use tickforge::engine::schedule::TickSchedule;
use tickforge::engine::{
    self, CommandOutcome, CommandReply, Engine, EngineError, EngineSettings, EventEnvelope,
    MatchCore, MatchFeed, MatchPolicy, ReplyTo,
};
use tickforge::game::PlayerId;
use tickforge::store::{EventStore, MatchKey, MatchStatus, MemoryStore, SnapshotStore};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

type Feed = MatchFeed<Arena>;

fn key(root: &str) -> MatchKey {
    MatchKey::new("arena", "main", root).unwrap()
}

fn bytes(state: &ArenaState) -> Vec<u8> {
    codec::encode(state).unwrap()
}

/// Takes every event the feed holds now, checking they follow `into`.
fn drain_events(feed: &mut Feed, into: &mut Vec<Arc<EventEnvelope<ArenaEvent>>>) {
    loop {
        match feed.events.try_recv() {
            Ok(event) => {
                assert_eq!(event.sequence, into.len() as u64, "feed out of order");
                into.push(event);
            }
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed) => {
                return;
            }
            Err(broadcast::error::TryRecvError::Lagged(n)) => panic!("feed lagged by {n}"),
        }
    }
}

fn drain_replies(rx: &mut mpsc::Receiver<CommandReply>) -> Vec<CommandReply> {
    let mut replies = Vec::new();
    while let Ok(reply) = rx.try_recv() {
        replies.push(reply);
    }
    replies
}

fn reply_to(tx: &mpsc::Sender<CommandReply>, client_seq: u64) -> Option<ReplyTo> {
    Some(ReplyTo {
        tx: tx.clone(),
        client_seq,
    })
}

fn reason(outcome: &CommandOutcome) -> Option<&str> {
    match outcome {
        CommandOutcome::Rejected(rejection) => Some(&rejection.reason),
        CommandOutcome::Accepted { .. } => None,
    }
}

/// Two matches on one shard. One gets a flood of refused commands, more
/// than its queue holds; the other, played by bots, must equal an
/// independent core fed the same commands on the same ticks, outcome by
/// outcome and byte for byte.
#[tokio::test(start_paused = true)]
async fn bad_input_to_one_match_never_changes_another() {
    let game = Arena::default();
    let policy = MatchPolicy {
        max_pending: 64,
        snapshot_every_ticks: 10,
    };
    let settings = EngineSettings {
        tick_hz: 30,
        shards: 1,
        policy,
        ..EngineSettings::default()
    };
    let store = MemoryStore::new();
    let engine = Engine::start(game.clone(), store.clone(), settings, "main");
    engine.create_match("noisy").await.unwrap();
    engine.create_match("quiet").await.unwrap();
    let mut quiet = engine.subscribe("quiet").unwrap();
    let mut noisy = engine.subscribe("noisy").unwrap();
    let (tx, mut rx) = mpsc::channel(10_000);

    let mut model = MatchCore::<Arena, u64>::new(&game, key("quiet"), policy, &Default::default())
        .expect("setup");
    let mut bots: Vec<Bot> = (1..=3).map(|p| Bot::new(PlayerId(p), p.into())).collect();
    let mut client_seq = 0;
    let mut noisy_accepted_events = 0;
    const FLOOD: usize = 150;
    for round in 0..40u64 {
        // The bots play the quiet match from the model's state, which must
        // be the engine's state too.
        for bot in &mut bots {
            let Some(command) = bot.next_command(&game, model.state()) else {
                continue;
            };
            engine
                .submit(
                    "quiet",
                    bot.player(),
                    command.clone(),
                    reply_to(&tx, client_seq),
                )
                .unwrap();
            model
                .handle_command(bot.player(), command, client_seq)
                .unwrap();
            client_seq += 1;
        }
        // The flood: mostly refused, a few valid, more than the queue holds.
        let mut flood_seqs = Vec::new();
        for i in 0..FLOOD {
            let (player, command) = match i % 6 {
                0 if round == 0 && i == 0 => (1, ArenaCommand::Join { name: "ok".into() }),
                0 => (1, ArenaCommand::Turn(Dir::ALL[i % 4])),
                1 => (99, ArenaCommand::Move(Dir::East)),
                2 => (98, ArenaCommand::Fire),
                3 => (
                    2,
                    ArenaCommand::Join {
                        name: String::new(),
                    },
                ),
                4 => (
                    1,
                    ArenaCommand::Join {
                        name: "twice".into(),
                    },
                ),
                _ => (97, ArenaCommand::Leave),
            };
            engine
                .submit(
                    "noisy",
                    PlayerId(player),
                    command,
                    reply_to(&tx, 1_000_000 + client_seq),
                )
                .unwrap();
            flood_seqs.push(1_000_000 + client_seq);
            client_seq += 1;
        }
        for root in ["ghost", "a}b", ""] {
            let refused = engine.submit(root, PlayerId(1), ArenaCommand::Fire, None);
            assert_eq!(refused, Err(EngineError::UnknownMatch(root.to_owned())));
        }

        let update = update_at(&mut quiet, round + 1).await;
        assert_eq!(update.tick, round + 1, "one tick per round");
        let out = model.run_tick(&game);
        assert_eq!(
            bytes(&update.state),
            bytes(model.state()),
            "tick {}",
            out.tick
        );
        assert_eq!(update.next_sequence, model.next_sequence());

        let replies = drain_replies(&mut rx);
        let (quiet_replies, noisy_replies): (Vec<_>, Vec<_>) =
            replies.into_iter().partition(|r| &*r.root == "quiet");
        let got: Vec<_> = quiet_replies
            .iter()
            .map(|r| (r.client_seq, r.outcome.clone()))
            .collect();
        assert_eq!(got, out.outcomes, "quiet's outcomes differ from the model");

        // Every flooded command is answered: the overflow at once, the rest
        // on the tick, each refusal with its reason.
        let mut answered: Vec<u64> = noisy_replies.iter().map(|r| r.client_seq).collect();
        answered.sort_unstable();
        assert_eq!(answered, flood_seqs);
        let full = noisy_replies
            .iter()
            .filter(|r| reason(&r.outcome) == Some("command queue of this match is full"))
            .count();
        assert_eq!(full, FLOOD - policy.max_pending);
        for reply in &noisy_replies {
            match &reply.outcome {
                CommandOutcome::Accepted { events, .. } => {
                    noisy_accepted_events += u64::from(*events)
                }
                CommandOutcome::Rejected(rejection) => assert!(
                    [
                        "command queue of this match is full",
                        "you have not joined this match",
                        "name must be 1 to 16 characters",
                        "you have already joined",
                    ]
                    .contains(&rejection.reason.as_str()),
                    "unexpected refusal {rejection:?}"
                ),
            }
        }
        let noisy_now = update_at(&mut noisy, round + 1).await;
        assert_eq!(noisy_now.next_sequence, noisy_accepted_events);
        assert_eq!(
            noisy_now.state.players.keys().collect::<Vec<_>>(),
            vec![&PlayerId(1)]
        );
    }
    let stats = engine.stats();
    assert!(stats.dropped >= 40 * (FLOOD - policy.max_pending) as u64);
    assert!(model.next_sequence() > 40, "the bots played");

    engine.shutdown().await;
    let restored = engine::restore(&game, &store, &key("quiet")).await.unwrap();
    assert_eq!(bytes(&restored.state), bytes(model.state()));
    assert_eq!(restored.next_sequence, model.next_sequence());
    let rebuilt = engine::rebuild_from_start(&game, &store, &key("quiet"))
        .await
        .unwrap();
    assert_eq!(bytes(&rebuilt.state), bytes(model.state()));
}

/// What one sender task saw: (client sequence, outcome) per answered command.
type Answers = Vec<(u64, CommandOutcome)>;

/// Many tasks on a multi-thread runtime send commands to two matches on two
/// shards at once. The accepted sequences of each match are exactly
/// 0..n, each client's in its own order, the store holds exactly those
/// events, and a live follower saw them in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sequences_are_gap_free_under_concurrent_senders() {
    const TASKS: u32 = 16;
    const COMMANDS: u64 = 300;
    const WINDOW: u64 = 25;
    let rules = ArenaRules {
        score_limit: u32::MAX,
        time_limit_ticks: 0,
        ..ArenaRules::default()
    };
    let settings = EngineSettings {
        tick_hz: 100,
        shards: 2,
        ..EngineSettings::default()
    };
    let store = MemoryStore::new();
    let engine = Arc::new(Engine::start(
        Arena::new(ArenaMap::default(), rules),
        store.clone(),
        settings,
        "main",
    ));
    let roots = ["m0", "m1"];
    let mut followers = Vec::new();
    for root in roots {
        engine.create_match(root).await.unwrap();
        let mut events = engine.subscribe(root).unwrap().events;
        // Follows the match until the engine is gone; a lag must report
        // exactly what it skipped.
        followers.push(tokio::spawn(async move {
            let mut next = 0u64;
            loop {
                match events.recv().await {
                    Ok(event) => {
                        assert_eq!(event.sequence, next, "follower saw a gap");
                        next += 1;
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => next += n,
                    Err(broadcast::error::RecvError::Closed) => return next,
                }
            }
        }));
    }

    let mut senders = Vec::new();
    for task in 0..TASKS {
        let engine = engine.clone();
        let root = roots[(task % 2) as usize];
        let player = PlayerId(task / 2 + 1);
        senders.push(tokio::spawn(async move {
            let (tx, mut rx) = mpsc::channel(WINDOW as usize);
            let mut answers: Answers = Vec::new();
            let join = ArenaCommand::Join {
                name: format!("p{}", player.0),
            };
            engine.submit(root, player, join, reply_to(&tx, 0)).unwrap();
            answers.push((0, rx.recv().await.unwrap().outcome));
            assert!(matches!(answers[0].1, CommandOutcome::Accepted { .. }));
            let mut client_seq = 1;
            while client_seq <= COMMANDS {
                let mut sent = 0;
                for _ in 0..WINDOW {
                    let dir = Dir::ALL[(client_seq as usize + task as usize) % 4];
                    let command = match client_seq % 3 {
                        0 => ArenaCommand::Turn(dir),
                        1 => ArenaCommand::Move(dir),
                        _ => ArenaCommand::Fire,
                    };
                    match engine.submit(root, player, command, reply_to(&tx, client_seq)) {
                        Ok(()) => sent += 1,
                        Err(EngineError::QueueFull(_)) => {}
                        Err(other) => panic!("submit failed: {other}"),
                    }
                    client_seq += 1;
                }
                for _ in 0..sent {
                    let reply = rx.recv().await.unwrap();
                    assert_eq!(&*reply.root, root);
                    answers.push((reply.client_seq, reply.outcome));
                }
            }
            (root, player, answers)
        }));
    }
    let mut per_match: Vec<Vec<(u64, u32, u64, PlayerId)>> = vec![Vec::new(), Vec::new()];
    let mut accepted_commands = 0;
    for sender in senders {
        let (root, player, answers) = tokio::time::timeout(Duration::from_secs(120), sender)
            .await
            .expect("senders finish")
            .unwrap();
        // Each client's commands land in the order it sent them.
        let client_order: Vec<u64> = answers.iter().map(|(seq, _)| *seq).collect();
        assert!(
            client_order.windows(2).all(|w| w[0] < w[1]),
            "{client_order:?}"
        );
        let mut last = None;
        for (_, outcome) in answers {
            if let CommandOutcome::Accepted {
                tick,
                first_sequence,
                events,
            } = outcome
            {
                assert!(last < Some(first_sequence), "a client's sequences go back");
                last = Some(first_sequence);
                accepted_commands += 1;
                let index = roots.iter().position(|r| *r == root).unwrap();
                per_match[index].push((first_sequence, events, tick, player));
            }
        }
    }
    assert!(
        accepted_commands > u64::from(TASKS) * COMMANDS / 3,
        "most commands were accepted"
    );

    let engine = Arc::into_inner(engine).expect("senders dropped their handles");
    engine.shutdown().await;
    drop(engine);

    for (index, root) in roots.iter().enumerate() {
        let accepted = &mut per_match[index];
        accepted.sort_unstable();
        // Exactly 0..n: no gap, no duplicate.
        let mut expected = 0;
        for (first_sequence, events, ..) in accepted.iter() {
            assert_eq!(*first_sequence, expected, "{root}: gap or duplicate");
            expected += u64::from(*events);
        }
        let n = expected;
        let key = key(root);
        let head = store.head(&key).await.unwrap().unwrap();
        assert_eq!(head.next_sequence, n, "{root}");
        let stored = store.read(&key, 0, usize::MAX).await.unwrap();
        assert_eq!(stored.len() as u64, n);
        let mut accepted_by_event = accepted.iter().flat_map(|&(first, events, tick, player)| {
            (first..first + u64::from(events)).map(move |s| (s, tick, player))
        });
        for (position, record) in stored.iter().enumerate() {
            let envelope: EventEnvelope<ArenaEvent> = codec::decode(&record.payload).unwrap();
            let (sequence, tick, player) = accepted_by_event.next().unwrap();
            assert_eq!(record.sequence, position as u64);
            assert_eq!(
                (envelope.sequence, envelope.tick, envelope.player),
                (sequence, tick, Some(player)),
                "{root}: stored event differs from the accepted one"
            );
            assert_eq!(record.tick, tick);
        }
        let restored = engine::restore(&Arena::new(ArenaMap::default(), rules), &store, &key)
            .await
            .unwrap();
        assert_eq!(restored.next_sequence, n);
    }
    for (index, follower) in followers.into_iter().enumerate() {
        let seen = follower.await.unwrap();
        let n: u64 = per_match[index].iter().map(|a| u64::from(a.1)).sum();
        assert_eq!(seen, n, "follower of {}", roots[index]);
    }
}

/// An arena engine on the memory store with one shard ticking at 10 Hz in
/// `tick_phases` phases.
fn one_shard_engine(tick_phases: u32) -> Engine<Arena, MemoryStore> {
    let settings = EngineSettings {
        tick_hz: 10,
        tick_phases,
        shards: 1,
        ..EngineSettings::default()
    };
    Engine::start(Arena::default(), MemoryStore::new(), settings, "main")
}

/// A shard that stalls for ten periods runs every tick it owes at once,
/// counts the catch-up ticks as late, and stays on its original grid.
#[tokio::test(start_paused = true)]
async fn a_stalled_shard_catches_up_and_counts_late_ticks() {
    let start = Instant::now();
    let engine = one_shard_engine(1);
    engine.create_match("m").await.unwrap();
    let mut feed = engine.subscribe("m").unwrap();
    engine
        .submit(
            "m",
            PlayerId(1),
            ArenaCommand::Join { name: "ada".into() },
            None,
        )
        .unwrap();
    let schedule = TickSchedule::new(10);

    let first = update_at(&mut feed, 1).await;
    assert_eq!(first.tick, 1);
    assert_eq!(start.elapsed(), schedule.due_at(1));
    assert_eq!(engine.stats().late_ticks, 0);

    // Nothing runs while the clock jumps a second: the shard is 10 ticks behind.
    tokio::time::advance(Duration::from_millis(1000)).await;
    let elapsed = start.elapsed();
    let due = schedule.due_by(elapsed);
    assert_eq!(due, 11);
    let caught_up = update_at(&mut feed, due).await;
    assert_eq!(caught_up.tick, due, "no tick beyond what was due");
    assert_eq!(start.elapsed(), elapsed, "the catch-up did not wait");
    let stats = engine.stats();
    assert_eq!(stats.ticks, due);
    assert_eq!(stats.match_ticks, due);
    // Ticks 2..=10 started a period or more late; tick 11 was due just now.
    assert!(stats.late_ticks >= 9, "late ticks: {}", stats.late_ticks);
    assert_eq!(stats.late_ticks, 9);
    assert_eq!(caught_up.state.tick, due);
    assert!(caught_up.state.players.contains_key(&PlayerId(1)));

    // No drift: the next tick is still due on the original grid.
    let next = update_at(&mut feed, due + 1).await;
    assert_eq!(next.tick, due + 1);
    assert_eq!(start.elapsed(), schedule.due_at(due + 1));
    assert_eq!(engine.stats().late_ticks, 9);
    engine.shutdown().await;
}

/// With tick phases, a shard's matches still tick `tick_hz` times a second
/// each, but in turn: four matches on one shard with four phases publish
/// at four distinct offsets within the period, a quarter period apart.
#[tokio::test(start_paused = true)]
async fn tick_phases_spread_matches_over_the_period_at_the_full_rate() {
    let start = Instant::now();
    let engine = one_shard_engine(4);
    let roots = ["m0", "m1", "m2", "m3"];
    let mut feeds = Vec::new();
    for root in roots {
        engine.create_match(root).await.unwrap();
        feeds.push(engine.subscribe(root).unwrap());
    }
    let period = TickSchedule::new(10).period();
    // Each follower notes when each tick of its match was published.
    let followers: Vec<_> = feeds
        .into_iter()
        .map(|mut feed| {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while seen.len() < 6 && feed.updates.changed().await.is_ok() {
                    if let Some(update) = feed.updates.borrow_and_update().clone() {
                        seen.push((update.tick, start.elapsed()));
                    }
                }
                seen
            })
        })
        .collect();
    let mut offsets = Vec::new();
    for follower in followers {
        let seen = follower.await.unwrap();
        for pair in seen.windows(2) {
            assert_eq!(pair[1].0, pair[0].0 + 1, "every tick published: {seen:?}");
            assert_eq!(
                pair[1].1 - pair[0].1,
                period,
                "each match ticks at tick_hz: {seen:?}"
            );
        }
        offsets.push(seen[0].1.as_nanos() % period.as_nanos());
    }
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len(), 4, "one phase per match: {offsets:?}");
    let quarter = period.as_nanos() / 4;
    for pair in offsets.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            quarter,
            "phases evenly spaced: {offsets:?}"
        );
    }
    let stats = engine.stats();
    assert_eq!(stats.late_ticks, 0);
    // The shard's tick count moves once per period, not once per phase.
    assert!(stats.ticks <= TickSchedule::new(10).due_by(start.elapsed()));
    engine.shutdown().await;
}

/// Where in the tick period the match behind `feed` publishes: the offset
/// of its next published tick after `start`, modulo `period`.
async fn phase_offset(feed: &mut MatchFeed<Arena>, start: Instant, period: Duration) -> u128 {
    // The first update may be the state published at creation; the next is a tick.
    for _ in 0..2 {
        feed.updates.changed().await.expect("the match publishes");
    }
    start.elapsed().as_nanos() % period.as_nanos()
}

/// A match hosted after another ended ticks in the phase that one left
/// (the quietest), not in the next phase in turn, so phases stay even.
#[tokio::test(start_paused = true)]
async fn a_new_match_takes_the_phase_an_ended_match_left() {
    let start = Instant::now();
    let period = TickSchedule::new(10).period();
    let engine = one_shard_engine(4);
    let mut offsets = Vec::new();
    let mut feeds = Vec::new();
    for root in ["m0", "m1", "m2", "m3"] {
        engine.create_match(root).await.unwrap();
        let mut feed = engine.subscribe(root).unwrap();
        offsets.push(phase_offset(&mut feed, start, period).await);
        feeds.push(feed);
    }
    let mut distinct = offsets.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "one phase per match: {offsets:?}");

    // m1 ends; wait for its last state.
    engine.fail_match("m1", "ended by the test".into()).unwrap();
    let m1 = &mut feeds[1];
    loop {
        if m1.updates.changed().await.is_err() {
            break;
        }
        if m1
            .updates
            .borrow_and_update()
            .as_ref()
            .is_some_and(|u| u.over)
        {
            break;
        }
    }
    engine.create_match("m4").await.unwrap();
    let mut m4 = engine.subscribe("m4").unwrap();
    let m4_offset = phase_offset(&mut m4, start, period).await;
    assert_eq!(
        m4_offset, offsets[1],
        "m4 takes m1's phase (phase offsets of m0..m3: {offsets:?})"
    );
    engine.shutdown().await;
}

/// After shutdown every match's events and a snapshot at its final tick are
/// stored, restore gives exactly the last published state, and a new engine
/// on the same store picks the matches up where they stopped.
#[tokio::test(start_paused = true)]
async fn shutdown_flushes_events_and_final_snapshots() {
    let game = Arena::default();
    let settings = EngineSettings {
        tick_hz: 30,
        shards: 2,
        policy: MatchPolicy {
            max_pending: 1024,
            snapshot_every_ticks: 7,
        },
        ..EngineSettings::default()
    };
    let store = MemoryStore::new();
    let engine = Engine::start(game.clone(), store.clone(), settings.clone(), "main");
    let roots = ["a", "b", "c"];
    let mut feeds = Vec::new();
    let mut bots = Vec::new();
    for (m, root) in roots.iter().enumerate() {
        engine.create_match(root).await.unwrap();
        feeds.push(engine.subscribe(root).unwrap());
        bots.push(
            (1..=4)
                .map(|p| Bot::new(PlayerId(p), (m * 10) as u64 + u64::from(p)))
                .collect::<Vec<_>>(),
        );
    }
    let mut events = vec![Vec::new(); roots.len()];
    let mut states = vec![tickforge::arena::ArenaState::default(); roots.len()];
    for round in 0..31u64 {
        for (m, root) in roots.iter().enumerate() {
            for bot in &mut bots[m] {
                if let Some(command) = bot.next_command(&game, &states[m]) {
                    engine.submit(root, bot.player(), command, None).unwrap();
                }
            }
        }
        for (m, feed) in feeds.iter_mut().enumerate() {
            let update = update_at(feed, round + 1).await;
            states[m] = update.state.clone();
            drain_events(feed, &mut events[m]);
        }
    }
    // A last burst that no tick runs before the stop: each command is
    // still answered, refused.
    let (tx, mut rx) = mpsc::channel(64);
    let mut burst = 0;
    for (m, root) in roots.iter().enumerate() {
        for bot in &mut bots[m] {
            if let Some(command) = bot.next_command(&game, &states[m]) {
                engine
                    .submit(root, bot.player(), command, reply_to(&tx, burst))
                    .unwrap();
                burst += 1;
            }
        }
    }
    assert!(burst > 0);
    engine.shutdown().await;
    let answers = drain_replies(&mut rx);
    assert_eq!(
        answers.len() as u64,
        burst,
        "every queued command is answered"
    );
    for answer in answers {
        assert_eq!(reason(&answer.outcome), Some("the server is shutting down"));
    }

    let mut last_updates = Vec::new();
    for (m, root) in roots.iter().enumerate() {
        let feed = &mut feeds[m];
        drain_events(feed, &mut events[m]);
        let last = feed.updates.borrow().clone().expect("published");
        assert!(
            last.tick >= 31 && last.tick % 7 != 0,
            "final tick {}",
            last.tick
        );
        let key = key(root);

        let head = store.head(&key).await.unwrap().unwrap();
        assert_eq!(head.next_sequence, last.next_sequence, "{root}");
        assert_eq!(head.tick, last.tick, "{root}");
        assert_eq!(head.status, MatchStatus::Live);
        let stored = store.read(&key, 0, usize::MAX).await.unwrap();
        assert_eq!(
            stored.len(),
            events[m].len(),
            "{root}: every event is stored"
        );
        assert_eq!(stored.len() as u64, last.next_sequence);
        for (record, event) in stored.iter().zip(&events[m]) {
            assert_eq!((record.sequence, record.tick), (event.sequence, event.tick));
            assert_eq!(record.payload, codec::encode(&**event).unwrap());
        }

        let snapshot = store
            .load_snapshot(&key)
            .await
            .unwrap()
            .expect("final snapshot");
        assert_eq!(
            snapshot.tick, last.tick,
            "{root}: snapshot at the final tick"
        );
        assert_eq!(snapshot.sequence, last.next_sequence);
        assert_eq!(snapshot.state, bytes(&last.state));

        let restored = engine::restore(&game, &store, &key).await.unwrap();
        assert_eq!(bytes(&restored.state), bytes(&last.state), "{root}");
        assert_eq!(
            (restored.next_sequence, restored.tick),
            (last.next_sequence, last.tick)
        );
        let rebuilt = engine::rebuild_from_start(&game, &store, &key)
            .await
            .unwrap();
        assert_eq!(bytes(&rebuilt.state), bytes(&last.state), "{root}");
        last_updates.push(last);
    }

    // A new engine on the same store resumes each match where it stopped.
    let engine = Engine::start(game.clone(), store.clone(), settings, "main");
    let report = engine.restore_all().await.unwrap();
    let (restored, failed) = (report.restored, report.failed);
    assert_eq!((restored, failed), (3, vec![]));
    let mut feeds = Vec::new();
    for (m, root) in roots.iter().enumerate() {
        feeds.push(engine.subscribe(root).unwrap());
        let bot = &mut bots[m][0];
        if let Some(command) = bot.next_command(&game, &last_updates[m].state) {
            engine.submit(root, bot.player(), command, None).unwrap();
        }
    }
    for (m, feed) in feeds.iter_mut().enumerate() {
        let resumed = update_at(feed, last_updates[m].tick + 1).await;
        assert_eq!(resumed.tick, last_updates[m].tick + 1);
        assert!(resumed.next_sequence >= last_updates[m].next_sequence);
    }
    engine.shutdown().await;
    for root in roots {
        let key = key(root);
        let head = store.head(&key).await.unwrap().unwrap();
        let stored = store.read(&key, 0, usize::MAX).await.unwrap();
        let sequences: Vec<u64> = stored.iter().map(|r| r.sequence).collect();
        assert_eq!(sequences, (0..head.next_sequence).collect::<Vec<_>>());
        let restored = engine::restore(&game, &store, &key).await.unwrap();
        let rebuilt = engine::rebuild_from_start(&game, &store, &key)
            .await
            .unwrap();
        assert_eq!(bytes(&restored.state), bytes(&rebuilt.state));
        assert_eq!(restored.tick, head.tick);
    }
}

/// Tick deadlines stay on the grid past 2^32 ticks (about 50 days at
/// 1000 Hz): a schedule whose deadlines stopped growing would run every
/// later tick at once, back to back, all counted late.
#[test]
fn tick_deadlines_keep_growing_past_u32_ticks() {
    let mut schedule = TickSchedule::new(1000);
    let far = u64::from(u32::MAX) + 5;
    assert_eq!(schedule.due_at(far), Duration::from_millis(far));
    assert!(schedule.due_at(far + 1) > schedule.due_at(far));
    assert_eq!(schedule.due_by(schedule.due_at(far)), far);
    // Polling at the first tick's time runs it and then waits for the second.
    assert!(matches!(
        schedule.poll(schedule.due_at(1)),
        tickforge::engine::schedule::Due::Run {
            tick: 1,
            late: false
        }
    ));
    assert_eq!(
        schedule.poll(schedule.due_at(1)),
        tickforge::engine::schedule::Due::WaitUntil(Duration::from_millis(2))
    );
}
