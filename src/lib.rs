//! tickforge: an authoritative game-server state engine.
//!
//! A match is an event-sourced aggregate. Players' commands reach the
//! match's shard through bounded queues; each tick the shard asks the game
//! to [`decide`](game::Game::decide) every command (events or a rejection),
//! [`apply`](game::Game::apply)s the events, runs the fixed-step
//! [`step`](game::Game::step), hands the tick's events to the store as one
//! batch, snapshots every N ticks, and publishes the new state. A match is
//! restored from its latest snapshot plus the events after it, exactly.
//!
//! - [`game`]: the contract a game implements; [`arena`]: the reference game.
//! - [`engine`]: the sans-IO match core, replay, pacing, and the shard loops.
//! - [`store`]: storage traits, key layout, the embedded memory store.
//! - [`codec`]: the one place that encodes and decodes bytes.
//! - [`config`]: TOML plus environment into a validated [`config::Config`].
//! - [`projection`]: read models fed by match logs exactly once (the arena leaderboard).
//! - [`fleet`]: many nodes on one store: leases, the node directory, takeover, hand-over.
//! - [`admin`]: the admin HTTP listener: Prometheus metrics, health and readiness.
//! - [`net`]: the QUIC server and [`client`] library: tickets, commands,
//!   state deltas over datagrams, sequenced events, rejoin, spectators.
//!
//! ```
//! use tickforge::arena::{Arena, ArenaCommand};
//! use tickforge::engine::{CommandOutcome, Engine, EngineSettings, ReplyTo};
//! use tickforge::game::PlayerId;
//! use tickforge::store::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Engine::start(Arena::default(), MemoryStore::new(), EngineSettings::default(), "main");
//! engine.create_match("m1").await?;
//! let mut feed = engine.subscribe("m1")?;
//!
//! // A command is answered: accepted with its events' sequences, or rejected with a reason.
//! let (tx, mut replies) = tokio::sync::mpsc::channel(8);
//! let join = ArenaCommand::Join { name: "ada".into() };
//! engine.submit("m1", PlayerId(1), join, Some(ReplyTo { tx, client_seq: 1 }))?;
//! let reply = replies.recv().await.expect("every command is answered");
//! assert!(matches!(reply.outcome, CommandOutcome::Accepted { first_sequence: 0, .. }));
//!
//! // Every tick publishes the new state; wait for the one holding the join.
//! let update = loop {
//!     feed.updates.changed().await?;
//!     let update = feed.updates.borrow_and_update().clone().expect("a state after a tick");
//!     if update.next_sequence > 0 { break update; }
//! };
//! assert!(update.state.players.contains_key(&PlayerId(1)));
//! engine.shutdown().await;
//! # Ok(()) }
//! ```

#![warn(missing_docs, unreachable_pub)]

pub mod admin;
pub mod arena;
pub mod cli;
pub mod codec;
pub mod config;
pub mod engine;
pub mod fleet;
pub mod game;
pub mod net;
pub mod play;
pub mod projection;
pub mod server;
pub mod store;

pub use net::client;
