//! Game code is untrusted for availability: a panic in `decide`, `apply`,
//! `step` or the view ends that match only, with the panic message as its
//! recorded reason; the shard and every other match keep ticking, and the
//! match's players are closed with `MatchFailed`.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tickforge::client::{Client, ClientConfig, JoinRequest, SessionEvent};
use tickforge::engine::{Engine, EngineSettings, MatchUpdate};
use tickforge::game::{Game, MatchSetup, PlayerId, Rejection, Tick, Viewer};
use tickforge::net::{CloseCode, NetConfig, Server, TlsSource};
use tickforge::store::{EventStore, MatchStatus, MemoryStore};

const WAIT: Duration = Duration::from_secs(20);

/// A counter whose code breaks on demand.
struct Fragile;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Counter {
    count: u64,
    players: Vec<PlayerId>,
    /// Set by a `StepBoom` event: the next step panics.
    step_bomb: bool,
    /// Set by a `ViewBoom` event: the view panics.
    view_bomb: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Command {
    Join,
    Bump,
    /// `decide` panics.
    DecideBoom,
    /// Accepted; `apply` of its event panics.
    ApplyBoom,
    /// Arms the step.
    StepBoom,
    /// Arms the view.
    ViewBoom,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Event {
    Joined(PlayerId),
    Bumped,
    ApplyBoom,
    StepArmed,
    ViewArmed,
}

impl Game for Fragile {
    type State = Counter;
    type Command = Command;
    type Event = Event;
    type Params = ();
    type View = Counter;
    type Join = ();
    const SCHEMA: u32 = 1;

    fn domain(&self) -> &str {
        "fragile"
    }

    fn setup(&self, _: &MatchSetup<()>) -> Result<Counter, Rejection> {
        Ok(Counter::default())
    }

    fn decide(
        &self,
        _: &Counter,
        _: Tick,
        p: PlayerId,
        c: &Command,
    ) -> Result<Vec<Event>, Rejection> {
        Ok(match c {
            Command::Join => vec![Event::Joined(p)],
            Command::Bump => vec![Event::Bumped],
            Command::DecideBoom => panic!("decide exploded on purpose"),
            Command::ApplyBoom => vec![Event::ApplyBoom],
            Command::StepBoom => vec![Event::StepArmed],
            Command::ViewBoom => vec![Event::ViewArmed],
        })
    }

    fn apply(&self, s: &mut Counter, _: Tick, e: &Event) {
        match e {
            Event::Joined(p) => s.players.push(*p),
            Event::Bumped => s.count += 1,
            Event::ApplyBoom => panic!("apply exploded on purpose"),
            Event::StepArmed => s.step_bomb = true,
            Event::ViewArmed => s.view_bomb = true,
        }
    }

    fn step(&self, s: &mut Counter, _: Tick) -> Vec<Event> {
        assert!(!s.step_bomb, "step exploded on purpose");
        Vec::new()
    }

    fn is_over(&self, _: &Counter) -> bool {
        false
    }

    fn view<'s>(&self, s: &'s Counter, _: Viewer) -> Cow<'s, Counter> {
        assert!(!s.view_bomb, "view exploded on purpose");
        Cow::Borrowed(s)
    }

    fn join(&self, _: PlayerId, _: &()) -> Result<Command, Rejection> {
        Ok(Command::Join)
    }

    fn leave(&self) -> Command {
        Command::Bump
    }

    fn players(&self, s: &Counter) -> Vec<PlayerId> {
        s.players.clone()
    }
}

fn one_shard() -> EngineSettings {
    EngineSettings {
        shards: 1,
        ..EngineSettings::default()
    }
}

/// The next published update of `root` satisfying `pred`.
async fn update_where(
    feed: &mut tokio::sync::watch::Receiver<Option<Arc<MatchUpdate<Counter>>>>,
    pred: impl Fn(&MatchUpdate<Counter>) -> bool,
) -> Arc<MatchUpdate<Counter>> {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(update) = feed.borrow_and_update().clone()
                && pred(&update)
            {
                return update;
            }
            feed.changed().await.expect("the feed stays open");
        }
    })
    .await
    .expect("an update in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_decide_apply_or_step_ends_only_that_match() {
    for (bomb, message) in [
        (Command::DecideBoom, "decide exploded on purpose"),
        (Command::ApplyBoom, "apply exploded on purpose"),
        (Command::StepBoom, "step exploded on purpose"),
    ] {
        let store = MemoryStore::new();
        let engine = Engine::start(Fragile, store.clone(), one_shard(), "main");
        let others: Vec<String> = (0..50).map(|i| format!("other-{i}")).collect();
        for root in others.iter().map(String::as_str).chain(["victim"]) {
            engine.create_match(root).await.unwrap();
        }
        let mut feeds: Vec<_> = others
            .iter()
            .map(|root| engine.subscribe(root).unwrap().updates)
            .collect();
        let mut victim = engine.subscribe("victim").unwrap().updates;
        update_where(&mut victim, |u| u.tick >= 2).await;
        let before: Vec<Tick> = feeds
            .iter_mut()
            .map(|f| f.borrow_and_update().as_ref().map_or(0, |u| u.tick))
            .collect();

        engine
            .submit("victim", PlayerId(1), bomb.clone(), None)
            .unwrap();
        let failed = update_where(&mut victim, |u| u.failure.is_some()).await;
        let reason = failed.failure.as_deref().unwrap();
        assert!(reason.contains(message), "{bomb:?}: reason {reason:?}");
        assert!(failed.over, "a failed match is over for its subscribers");

        // Every other match on the same shard goes on ticking and taking commands.
        for (i, feed) in feeds.iter_mut().enumerate() {
            engine
                .submit(&others[i], PlayerId(1), Command::Bump, None)
                .unwrap();
            let later = update_where(feed, |u| u.tick > before[i] + 5 && u.state.count == 1).await;
            assert!(later.failure.is_none());
        }
        assert!(
            !engine.is_hosted("victim"),
            "the failed match is no longer hosted"
        );
        assert!(matches!(
            engine.submit("victim", PlayerId(1), Command::Bump, None),
            Err(tickforge::engine::EngineError::UnknownMatch(_))
        ));
        assert_eq!(engine.stats().failed_matches, 1);
        engine.shutdown().await;

        // The store records the failure, and restarts do not bring it back.
        let key = tickforge::store::MatchKey::new("fragile", "main", "victim").unwrap();
        let head = store.head(&key).await.unwrap().unwrap();
        assert_eq!(head.status, MatchStatus::Failed);
        let stored = store.failure(&key).await.unwrap().unwrap();
        assert!(stored.contains(message), "stored reason {stored:?}");
        let live = store.live_matches("fragile", "main").await.unwrap();
        assert_eq!(
            live.len(),
            50,
            "the 50 others stay live, the victim does not"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_view_fails_the_match_and_closes_its_players_with_match_failed() {
    let engine = Arc::new(Engine::start(
        Fragile,
        MemoryStore::new(),
        one_shard(),
        "main",
    ));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::bind(
        engine.clone(),
        NetConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: TlsSource::Dev {
                cert: dir.path().join("cert.der"),
                key: dir.path().join("key.der"),
            },
            open_mode: true,
            ..NetConfig::default()
        },
    )
    .unwrap();
    let client = Client::new(ClientConfig::new(
        server.local_addr(),
        vec![server.certificate().clone()],
    ))
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    engine.create_match("calm").await.unwrap();
    let mut calm = engine.subscribe("calm").unwrap().updates;

    let mut session = tokio::time::timeout(
        WAIT,
        client.join::<Fragile>(JoinRequest::open_player("victim", &())),
    )
    .await
    .expect("join in time")
    .expect("joined");
    session.send(Command::ViewBoom).unwrap();
    let code = tokio::time::timeout(WAIT, async {
        loop {
            match session.next_event().await {
                Some(SessionEvent::Disconnected { code, .. }) => return code,
                Some(SessionEvent::Closed { code, .. }) => return code,
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await
    .expect("closed in time");
    assert_eq!(code, Some(CloseCode::MatchFailed));
    assert!(!engine.is_hosted("victim"));
    let now = calm.borrow_and_update().as_ref().map_or(0, |u| u.tick);
    update_where(&mut calm, |u| u.tick > now + 3).await;
    let _ = stop.send(());
    task.await.unwrap();
    engine.shutdown().await;
}
