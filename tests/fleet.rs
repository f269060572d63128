//! A fleet of `tickforge serve` processes on one real Redis, with players
//! as QUIC clients that know every node: a node killed with SIGKILL has
//! its matches taken over and its players resume on the survivor; a
//! drained node hands its matches over with no session or event lost; a
//! join or a resume through the wrong node reaches the match.

#![cfg(feature = "redis")]

mod serve_support;
mod support;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::FutureExt;
use rustls::pki_types::CertificateDer;
use serve_support::{ServeProcess, tickforge_serve};
use support::TestRedis;
use tickforge::arena::{Arena, ArenaCommand, ArenaEvent, Dir};
use tickforge::client::{Client, ClientConfig, JoinRequest, Session, SessionEvent};
use tickforge::engine::{EventEnvelope, decode_event};
use tickforge::game::Tick;
use tickforge::net::TlsSource;
use tickforge::net::protocol::CommandStatus;
use tickforge::store::{EventStore, LeaseStore, RedisStore};

/// An upper bound for anything awaited.
const WAIT: Duration = Duration::from_secs(30);

/// Lease TTL of the test nodes: short, so takeovers come quickly.
const LEASE_TTL_MS: u64 = 1_000;

/// Nodes on one test Redis, sharing a secret and a certificate.
struct TestFleet {
    redis: TestRedis,
    store: RedisStore,
    dir: tempfile::TempDir,
    trusted: Vec<CertificateDer<'static>>,
    addrs: Vec<SocketAddr>,
    nodes: Vec<Option<ServeProcess>>,
}

impl TestFleet {
    /// Starts `count` nodes, `node-1` first, each up once it accepts players.
    async fn start(count: usize) -> TestFleet {
        let redis = TestRedis::start().await;
        let store = redis.store().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let cert = dir.path().join("cert.der");
        let key = dir.path().join("key.der");
        let server_cert = tickforge::net::tls::load_server_cert(&TlsSource::Dev {
            cert: cert.clone(),
            key: key.clone(),
        })
        .expect("the fleet's certificate");
        let trusted = server_cert.leaf().cloned().into_iter().collect();
        let mut fleet = TestFleet {
            redis,
            store,
            dir,
            trusted,
            addrs: Vec::new(),
            nodes: Vec::new(),
        };
        for index in 1..=count {
            let (config, addr) = fleet.write_config(index, &cert, &key);
            fleet.addrs.push(addr);
            fleet.nodes.push(Some(tickforge_serve(&config, &[])));
        }
        fleet
    }

    fn write_config(&self, index: usize, cert: &Path, key: &Path) -> (PathBuf, SocketAddr) {
        let addr = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free UDP port");
        let path = self.dir.path().join(format!("node-{index}.toml"));
        let text = format!(
            "[engine]\nedition = \"{edition}\"\nshards = 1\ndurability = \"sync\"\n\n\
             [storage]\nbackend = \"redis\"\n\n[storage.redis]\nurl = \"{url}\"\n\n\
             [net]\nlisten = \"{addr}\"\nopen_mode = true\nsecret = \"a fleet test secret\"\n\
             dev_cert = \"{cert}\"\ndev_key = \"{key}\"\ngrace_seconds = 30\n\n\
             [admin]\nlisten = \"\"\n\n\
             [fleet]\nnode_id = \"node-{index}\"\nlease_ttl_ms = {LEASE_TTL_MS}\nmax_matches = 100\n",
            edition = self.redis.edition(),
            url = self.redis.url(),
            cert = cert.display(),
            key = key.display(),
        );
        std::fs::write(&path, text).expect("write config");
        (path, addr)
    }

    /// A client that enters the fleet through node `entry` and knows every node.
    fn client(&self, entry: usize) -> Client {
        let mut config = ClientConfig::new(self.addrs[entry], self.trusted.clone());
        config.idle_timeout = Duration::from_millis(1_500);
        config.retry_for = Duration::from_secs(10);
        config.fallback = self.addrs.clone();
        Client::new(config).expect("a client endpoint")
    }

    /// The node holding `root`'s lease now.
    async fn owner(&self, root: &str) -> Option<String> {
        let key = self.redis.key(root);
        self.store
            .lease(&key)
            .await
            .expect("read the lease")
            .map(|l| l.node)
    }

    /// Waits until `root`'s lease is held by `node`.
    async fn await_owner(&self, root: &str, node: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let owner = self.owner(root).await;
            if owner.as_deref() == Some(node) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{root} still owned by {owner:?}, not {node}"
            );
            // A poll interval for a lease in Redis.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every stored event of `root`, decoded; asserts sequences 0, 1, … .
    async fn stored_events(&self, root: &str) -> Vec<EventEnvelope<ArenaEvent>> {
        let key = self.redis.key(root);
        let stored = self
            .store
            .read(&key, 0, 100_000)
            .await
            .expect("read events");
        let events: Vec<_> = stored
            .iter()
            .map(|e| decode_event(&Arena::default(), &e.payload).expect("a stored event decodes"))
            .collect();
        for (index, event) in events.iter().enumerate() {
            assert_eq!(event.sequence, index as u64, "{root}: the log has a gap");
        }
        events
    }

    fn node(&mut self, index: usize) -> ServeProcess {
        self.nodes[index].take().expect("a running node")
    }
}

/// A player and every reliable event it received.
struct Player {
    root: String,
    session: Session<Arena>,
    events: Vec<EventEnvelope<ArenaEvent>>,
    turns: usize,
}

impl Player {
    async fn join(client: &Client, root: &str, name: &str) -> Player {
        let session = tokio::time::timeout(
            WAIT,
            client.join::<Arena>(JoinRequest::open_player(root, name)),
        )
        .await
        .expect("join in time")
        .unwrap_or_else(|e| panic!("{name} joins {root}: {e}"));
        let mut player = Player {
            root: root.to_owned(),
            session,
            events: Vec::new(),
            turns: 0,
        };
        player.state_after(0).await;
        player
    }

    /// Waits for a state after `tick`; returns its tick.
    async fn state_after(&mut self, tick: Tick) -> Tick {
        let mut states = self.session.states();
        let got = tokio::time::timeout(
            WAIT,
            states.wait_for(|s| s.as_ref().is_some_and(|s| s.tick > tick)),
        )
        .await
        .unwrap_or_else(|_| panic!("{}: no state after tick {tick}", self.root))
        .expect("the session is alive")
        .as_ref()
        .map(|s| s.tick);
        got.expect("a state")
    }

    /// The last tick received.
    fn tick(&self) -> Tick {
        self.session.state().map_or(0, |s| s.tick)
    }

    /// Reads session events (keeping reliable ones) until `Resumed`;
    /// a `Closed` fails the test.
    async fn await_resumed(&mut self) {
        loop {
            let event = tokio::time::timeout(WAIT, self.session.next_event())
                .await
                .unwrap_or_else(|_| panic!("{}: no resume in time", self.root));
            match event {
                Some(SessionEvent::Event(envelope)) => self.events.push(envelope),
                Some(SessionEvent::Resumed { .. }) => return,
                Some(SessionEvent::Closed { code, reason }) => {
                    panic!("{}: session closed ({code:?}): {reason}", self.root)
                }
                None => panic!("{}: session ended", self.root),
                Some(_) => {}
            }
        }
    }

    /// Turns (never blocked by a wall) and waits for the verdict
    /// (accepted) and a state at its tick.
    async fn play_a_move(&mut self) {
        self.turns += 1;
        let dir = [Dir::North, Dir::East, Dir::South, Dir::West][self.turns % 4];
        let status = tokio::time::timeout(WAIT, self.session.command(ArenaCommand::Turn(dir)))
            .await
            .expect("a verdict in time")
            .expect("a verdict");
        let CommandStatus::Accepted { tick, .. } = status else {
            panic!("{}: move not accepted: {status:?}", self.root)
        };
        self.state_after(tick.saturating_sub(1)).await;
    }

    /// Reads the reliable events already delivered.
    fn collect_events(&mut self) {
        while let Some(Some(event)) = self.session.next_event().now_or_never() {
            if let SessionEvent::Event(envelope) = event {
                self.events.push(envelope);
            }
        }
    }
}

/// Every event each player saw is stored under its sequence as seen.
async fn assert_events_stored(fleet: &TestFleet, players: &mut [Player]) {
    for player in players.iter_mut() {
        player.collect_events();
        let stored = fleet.stored_events(&player.root).await;
        assert!(!player.events.is_empty(), "{}: no events seen", player.root);
        for seen in &player.events {
            let sequence = usize::try_from(seen.sequence).expect("a sequence");
            assert_eq!(
                stored.get(sequence),
                Some(seen),
                "{}: an event a client saw is not stored as seen",
                player.root
            );
        }
    }
}

/// Two players in each of `roots`, all joined through node `entry`.
async fn players_via(fleet: &TestFleet, entry: usize, roots: &[&str]) -> Vec<Player> {
    let client = fleet.client(entry);
    let mut players = Vec::new();
    for root in roots {
        for name in ["ada", "bob"] {
            let mut player = Player::join(&client, root, name).await;
            player.play_a_move().await;
            players.push(player);
        }
    }
    players
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_matches_are_taken_over_and_its_players_resume_on_the_survivor() {
    let mut fleet = TestFleet::start(2).await;
    let roots = ["k0", "k1", "k2"];
    let mut players = players_via(&fleet, 0, &roots).await;
    for root in roots {
        assert_eq!(fleet.owner(root).await.as_deref(), Some("node-1"));
    }

    fleet.node(0).kill();
    for player in &mut players {
        let before = player.tick();
        player.await_resumed().await;
        player.state_after(before).await;
        player.play_a_move().await;
        assert_eq!(player.session.server(), fleet.addrs[1], "resumed on node-2");
    }
    for root in roots {
        fleet.await_owner(root, "node-2").await;
    }
    assert_events_stored(&fleet, &mut players).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_hands_its_matches_over_losing_no_session_and_no_event() {
    let mut fleet = TestFleet::start(2).await;
    let roots = ["d0", "d1", "d2"];
    let mut players = players_via(&fleet, 0, &roots).await;

    let mut drained = fleet.node(0);
    let status = drained.terminate();
    assert!(
        status.success(),
        "the drained node exits 0, not {status}; log:\n{}",
        drained.log()
    );
    for player in &mut players {
        let before = player.tick();
        player.await_resumed().await;
        player.state_after(before).await;
        player.play_a_move().await;
        assert_eq!(player.session.server(), fleet.addrs[1], "resumed on node-2");
    }
    for root in roots {
        fleet.await_owner(root, "node-2").await;
    }
    assert!(
        drained.seen.iter().any(|l| l.contains("match handed over")),
        "the drain handed matches over; log:\n{}",
        drained.log()
    );
    assert_events_stored(&fleet, &mut players).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_through_the_wrong_node_reaches_the_match() {
    let fleet = TestFleet::start(2).await;
    let mut host = Player::join(&fleet.client(0), "r0", "ada").await;
    assert_eq!(fleet.owner("r0").await.as_deref(), Some("node-1"));

    let guest = Player::join(&fleet.client(1), "r0", "bob").await;
    let (host_id, guest_id) = (host.session.player(), guest.session.player());
    assert_ne!(host_id, guest_id, "two slots of one match");
    // Both players are in the one match node-1 hosts (the first state a
    // client gets may predate its own join: wait for the one after it).
    let ids = [host_id.expect("a player"), guest_id.expect("a player")];
    let mut states = guest.session.states();
    tokio::time::timeout(
        WAIT,
        states.wait_for(|s| {
            s.as_ref()
                .is_some_and(|s| ids.iter().all(|id| s.state.players.contains_key(id)))
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("the guest never saw both players in r0"))
    .expect("the session is alive");
    let tick = guest.tick();
    host.state_after(tick).await;
    assert_eq!(
        guest.session.server(),
        fleet.addrs[0],
        "redirected to node-1"
    );
    assert_eq!(fleet.owner("r0").await.as_deref(), Some("node-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_token_used_on_another_node_reaches_the_match() {
    let fleet = TestFleet::start(2).await;
    let mut first = Player::join(&fleet.client(0), "t0", "ada").await;
    first.play_a_move().await;
    let player = first.session.player();
    let token = first.session.resume_token().expect("a resume token");
    let tick = first.tick();
    first.session.close();

    let session = tokio::time::timeout(
        WAIT,
        fleet
            .client(1)
            .join::<Arena>(JoinRequest::resume("t0", &token)),
    )
    .await
    .expect("resume in time")
    .expect("the token is good on another node");
    assert_eq!(session.player(), player, "back in the same slot");
    let mut again = Player {
        root: "t0".into(),
        session,
        events: Vec::new(),
        turns: 0,
    };
    again.state_after(tick).await;
    again.play_a_move().await;
    assert_eq!(
        again.session.server(),
        fleet.addrs[0],
        "redirected to node-1"
    );
    assert_eq!(fleet.owner("t0").await.as_deref(), Some("node-1"));
}
