//! The envelope every stored event travels in, and reading it back
//! through the game's schema upgrades.

use serde::{Deserialize, Serialize};

use crate::codec::{self, DecodeError};
use crate::game::{Game, Legacy, PlayerId, Tick, UpgradeError};

/// One event with its place in the match log.
///
/// Envelopes are what the event log stores (encoded by [`crate::codec`])
/// and what clients receive as reliable, sequenced events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventEnvelope<E> {
    /// Position in the match log: 0, 1, 2, … with no gaps.
    pub sequence: u64,
    /// The tick the event was applied on.
    pub tick: Tick,
    /// The player whose command caused it; `None` for events the game's
    /// `step` emitted.
    pub player: Option<PlayerId>,
    /// The game's schema version the event was written with.
    pub schema: u32,
    /// The game event.
    pub event: E,
}

/// The fields before the event, in declaration order.
type Header = (u64, Tick, Option<PlayerId>, u32);

/// Why a stored event could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The bytes are not an envelope.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Written by a newer version of the game than this build knows.
    #[error("written with schema version {found}, newer than this build's {supported}")]
    NewerSchema {
        /// The version in the data.
        found: u32,
        /// The game's [`Game::SCHEMA`].
        supported: u32,
    },
    /// Written by an older version the game could not upgrade.
    #[error("schema version {version} could not be upgraded: {source}")]
    Upgrade {
        /// The version in the data.
        version: u32,
        /// Why.
        source: UpgradeError,
    },
}

/// Decodes a stored envelope of `game`'s events, upgrading events of an
/// older schema version through [`Game::upgrade_event`]. The envelope
/// returned carries the current version.
pub fn decode_event<G: Game>(game: &G, bytes: &[u8]) -> Result<EventEnvelope<G::Event>, ReadError> {
    let ((sequence, tick, player, schema), rest) = codec::decode_prefix::<Header>(bytes)?;
    let event = if schema == G::SCHEMA {
        codec::decode_body(rest)?
    } else if schema > G::SCHEMA {
        return Err(ReadError::NewerSchema {
            found: schema,
            supported: G::SCHEMA,
        });
    } else {
        game.upgrade_event(Legacy::new(schema, rest))
            .map_err(|source| ReadError::Upgrade {
                version: schema,
                source,
            })?
    };
    Ok(EventEnvelope {
        sequence,
        tick,
        player,
        schema: G::SCHEMA,
        event,
    })
}

/// Decodes a snapshot state written with schema `schema`, upgrading an
/// older one through [`Game::upgrade_state`].
pub fn decode_state<G: Game>(game: &G, schema: u32, bytes: &[u8]) -> Result<G::State, ReadError> {
    if schema == G::SCHEMA {
        Ok(codec::decode(bytes)?)
    } else if schema > G::SCHEMA {
        Err(ReadError::NewerSchema {
            found: schema,
            supported: G::SCHEMA,
        })
    } else {
        game.upgrade_state(Legacy::new(schema, codec::body(bytes)?))
            .map_err(|source| ReadError::Upgrade {
                version: schema,
                source,
            })
    }
}
