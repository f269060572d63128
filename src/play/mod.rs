//! Bots that play the arena, for the demo, `tickforge serve --bots` and the
//! benchmarks: a harness around the engine and the network, not part of
//! either (the engine, store and network name no game; the arena game
//! knows nothing of them).
//!
//! - [`autoplay`]: in-process bots submitting to an [`Engine`](crate::engine::Engine).
//! - [`load`]: bots as QUIC clients through the client library, with
//!   latency and bandwidth figures (the `bots` example and the demo).

pub mod autoplay;
pub mod load;
