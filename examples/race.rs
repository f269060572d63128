//! The smallest game worth hosting, from docs/GAME.md: players click; the
//! first to `target` clicks wins, or the most clicks after `limit_ticks`.
//!
//! ```text
//! cargo run --example race -- serve --config race.toml   # [net] open_mode = true
//! cargo run --example race -- bots 127.0.0.1:4433        # four bots play match m1
//! ```

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use tickforge::client::{Client, ClientConfig, ClientError, JoinRequest, SessionEvent};
use tickforge::game::{Game, MatchSetup, PlayerId, Rejection, Tick, Viewer};

/// First to `target` clicks wins; after `limit_ticks` the most clicks win.
#[derive(Debug, Default)]
pub struct Race;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub target: u32,
    pub limit_ticks: Tick,
}
impl Default for Params {
    fn default() -> Self {
        Params {
            target: 10,
            limit_ticks: 30 * 60,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub params: Params,
    pub clicks: BTreeMap<PlayerId, u32>,
    pub winner: Option<PlayerId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    Join,
    Click,
    Leave,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Event {
    Joined(PlayerId),
    Clicked(PlayerId),
    Left(PlayerId),
    Won(PlayerId),
}

impl Game for Race {
    type State = State;
    type Command = Command;
    type Event = Event;
    type Params = Params;
    type View = State;
    type Join = ();
    const SCHEMA: u32 = 1;

    fn domain(&self) -> &str {
        "race"
    }

    fn setup(&self, setup: &MatchSetup<Params>) -> Result<State, Rejection> {
        if setup.params.target == 0 {
            return Err(Rejection::new("target must be at least 1"));
        }
        Ok(State {
            params: setup.params.clone(),
            clicks: BTreeMap::new(),
            winner: None,
        })
    }

    fn decide(
        &self,
        s: &State,
        _: Tick,
        p: PlayerId,
        c: &Command,
    ) -> Result<Vec<Event>, Rejection> {
        match c {
            Command::Join if s.clicks.contains_key(&p) => Err(Rejection::new("already in")),
            Command::Join => Ok(vec![Event::Joined(p)]),
            Command::Click if !s.clicks.contains_key(&p) => Err(Rejection::new("join first")),
            Command::Click => Ok(vec![Event::Clicked(p)]),
            Command::Leave => Ok(vec![Event::Left(p)]),
        }
    }

    fn apply(&self, s: &mut State, _: Tick, e: &Event) {
        match e {
            Event::Joined(p) => {
                s.clicks.insert(*p, 0);
            }
            Event::Clicked(p) => {
                *s.clicks.entry(*p).or_default() += 1;
            }
            Event::Left(p) => {
                s.clicks.remove(p);
            }
            Event::Won(p) => s.winner = Some(*p),
        }
    }

    fn step(&self, s: &mut State, tick: Tick) -> Vec<Event> {
        let best = s
            .clicks
            .iter()
            .max_by_key(|(p, n)| (**n, std::cmp::Reverse(**p)));
        match best {
            Some((p, n)) if *n >= s.params.target || tick >= s.params.limit_ticks => {
                vec![Event::Won(*p)]
            }
            _ => Vec::new(),
        }
    }

    fn is_over(&self, s: &State) -> bool {
        s.winner.is_some()
    }
    fn view<'s>(&self, s: &'s State, _: Viewer) -> Cow<'s, State> {
        Cow::Borrowed(s)
    }
    fn shared_view(&self) -> bool {
        true
    }
    fn join(&self, _: PlayerId, _: &()) -> Result<Command, Rejection> {
        Ok(Command::Join)
    }
    fn leave(&self) -> Command {
        Command::Leave
    }
    fn players(&self, s: &State) -> Vec<PlayerId> {
        s.clicks.keys().copied().collect()
    }
}

/// One bot: joins `root` (creating it with `params` if first), clicks
/// ten times a second until the match is over.
async fn bot(client: Client, root: String) -> Result<(), ClientError> {
    let join = JoinRequest::open_player(&root, &()).with_params(&Params::default());
    let mut session = client.join::<Race>(join).await?;
    let mut every = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = every.tick() => { let _ = session.send(Command::Click); }
            event = session.next_event() => match event {
                Some(SessionEvent::MatchOver { .. } | SessionEvent::Closed { .. }) | None => return Ok(()),
                Some(_) => {}
            },
        }
    }
}

fn main() -> std::process::ExitCode {
    if std::env::args().nth(1).as_deref() != Some("bots") {
        return tickforge::cli::main(Race); // serve, inspect, follow, ticket, check-config
    }
    tickforge::cli::block_on(async {
        let server = std::env::args()
            .nth(2)
            .unwrap_or_else(|| "127.0.0.1:4433".into());
        let config = ClientConfig::trusting_file(
            server.parse()?,
            tickforge::net::DEFAULT_DEV_CERT.as_ref(),
        )?;
        let client = Client::new(config)?;
        let bots: Vec<_> = (0..4)
            .map(|_| tokio::spawn(bot(client.clone(), "m1".into())))
            .collect();
        for bot in bots {
            bot.await??;
        }
        println!("match m1 over");
        Ok(())
    })
}
