//! Storage behind traits: the per-match event log, snapshots and positions.
//!
//! The engine only talks to these traits. [`memory::MemoryStore`] is the
//! embedded default; [`redis::RedisStore`] (single node or cluster)
//! implements the same traits. Key names live in [`keys`].
//!
//! Rules every implementation keeps:
//! - sequences per match are 0, 1, 2, … with no gaps, enforced by the
//!   store: a batch must start at the stored head, else
//!   [`StoreError::Conflict`];
//! - a retried batch whose events are already stored byte for byte
//!   succeeds without duplicating them;
//! - a snapshot never replaces a newer one; positions only move forward;
//! - events are only ever removed by [`EventStore::trim`], never at or
//!   above the stored snapshot's sequence, and reading below what was
//!   trimmed is a [`StoreError::Trimmed`], never a silent skip.
//!
//! Ownership for fleets of nodes ([`lease`]): a match's lease (node, epoch,
//! expiry) is taken, renewed, released and handed over through
//! [`LeaseStore`], on the store's clock. Every write of a match can carry
//! the writer's epoch ([`AppendBatch::epoch`],
//! [`SnapshotStore::save_fenced_snapshot`], [`EventStore::trim_fenced`]);
//! the store checks it atomically with the write and refuses a stale one
//! as [`StoreError::Fenced`], so a node that lost its lease (paused past
//! its expiry, or handed the match over) can never write the match again.
//! Writes without an epoch are unchecked: a single node owns every match
//! and needs no lease. Live nodes find each other in the [`NodeDirectory`].
//! Design notes:
//! - the lease lives in the match's hash tag (`owner:{d:e:r}`), so the
//!   Lua scripts writing the match read it in the same atomic call, on
//!   Redis Cluster too; the check costs one `HGET` per fenced batch, none
//!   for an unfenced one;
//! - epochs only grow: the lease record outlives expiry and release, so a
//!   stale writer's epoch can never become valid again;
//! - fencing compares epochs only, not expiry: a holder whose lease
//!   expired while nobody claimed the match may still write and renew,
//!   which is safe because nobody else can have written under another
//!   epoch;
//! - positions ([`PositionStore`]) are not fenced: handlers that advance
//!   them need not own the match.
//!
//! Every [`StoreError`] has a [`class`](StoreError::class): transient
//! ([`StoreError::Unavailable`]: retry later) or permanent (the same call
//! fails again; [`StoreError::Refused`] carries the store's own message
//! and a [`Refusal`] kind). [`StoreError::label`] names the cause for
//! metrics.

use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::game::Tick;

pub mod backend;
pub mod keys;
pub mod lease;
pub mod memory;
pub mod redis;

pub use self::redis::{RedisOptions, RedisStore, RedisTls};
pub use backend::AnyStore;
pub use keys::{KeyError, MatchKey};
pub use lease::{Lease, LeaseStore, NodeDirectory, NodeInfo};
pub use memory::MemoryStore;

/// One stored event: its sequence, the tick it was applied on, and its
/// encoded envelope (see [`crate::engine::EventEnvelope`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Position in the match log, from 0.
    pub sequence: u64,
    /// Tick the event was applied on.
    pub tick: Tick,
    /// The encoded envelope, exactly as stored.
    pub payload: Vec<u8>,
}

/// The events one match produced since its last append, plus its head tick.
///
/// An empty `events` list only moves the head tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendBatch {
    /// The match.
    pub key: MatchKey,
    /// Sequence the batch starts at: the head the writer believes is stored.
    pub first_sequence: u64,
    /// Consecutive events from `first_sequence`.
    pub events: Vec<RecordedEvent>,
    /// The match's tick after these events.
    pub head_tick: Tick,
    /// The writer's lease epoch ([`lease`]): when given, the store refuses
    /// the batch as [`StoreError::Fenced`] unless the match's lease is at
    /// exactly this epoch (checked atomically with the write). `None`
    /// writes unfenced, as a single node owning every match does.
    pub epoch: Option<u64>,
    /// With `epoch`: when the batch is accepted, extend the lease to this
    /// long from the store's now, in the same call (a renewal that costs
    /// no round trip of its own). A released lease is not renewed.
    /// Ignored without `epoch`.
    pub renew_lease: Option<std::time::Duration>,
}

impl AppendBatch {
    /// The sequence following the last event of the batch.
    pub fn next_sequence(&self) -> u64 {
        self.first_sequence + self.events.len() as u64
    }
}

/// Whether a match is still being played.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchStatus {
    /// Ticking (or waiting to be restored after a restart).
    Live,
    /// Finished; not restored on start.
    Ended,
    /// Stopped by a failure of the game code (a panic), with the reason
    /// stored beside it; not restored on start.
    Failed,
}

/// What the store holds as the head of a match's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The sequence the next event must have (= number of stored events).
    pub next_sequence: u64,
    /// The last tick persisted for the match.
    pub tick: Tick,
    /// Live or ended.
    pub status: MatchStatus,
}

/// A match state at a tick, with the number of events folded into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Events `0..sequence` are folded into `state`.
    pub sequence: u64,
    /// The tick the state was taken after (events and step included).
    pub tick: Tick,
    /// The encoded state.
    pub state: Vec<u8>,
    /// The game's schema version the state was written with.
    pub schema: u32,
    /// [`codec::state_hash`](crate::codec::state_hash) of `state` when it
    /// was taken: replays that reach this tick must arrive at this hash.
    pub hash: u64,
}

impl Snapshot {
    /// A snapshot of the encoded `state`, hashing it.
    pub fn new(sequence: u64, tick: Tick, state: Vec<u8>, schema: u32) -> Self {
        let hash = crate::codec::state_hash(&state);
        Self {
            sequence,
            tick,
            state,
            schema,
            hash,
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The batch does not start at the stored head, or disagrees with
    /// events already stored: another writer owns the match, or the store
    /// lost acknowledged events.
    #[error("append conflict on {key}: store head is {expected}, batch starts at {found}")]
    Conflict {
        /// The match.
        key: String,
        /// The stored head (the sequence the store expected).
        expected: u64,
        /// The batch's first sequence.
        found: u64,
    },
    /// An event already stored at a sequence differs from the batch's.
    #[error("event {sequence} of {key} is already stored with different content")]
    Diverged {
        /// The match.
        key: String,
        /// The differing sequence.
        sequence: u64,
    },
    /// The match was never created in this store.
    #[error("unknown match {0}")]
    UnknownMatch(String),
    /// The store could not be reached, or is busy for now (connection
    /// lost, timeout, loading, failover, cluster reconfiguring): the call
    /// may succeed later ([`ErrorClass::Transient`]).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store refused the call in a way that retrying does not change
    /// (a script error, out of memory, an ACL, …): [`ErrorClass::Permanent`].
    #[error("store refused the call on {key} ({refusal}): {message}")]
    Refused {
        /// The key (or the first key) of the call.
        key: String,
        /// What kind of refusal.
        refusal: Refusal,
        /// The store's own message (for Redis: the error code and text).
        message: String,
    },
    /// Stored data is not what tickforge wrote.
    #[error("corrupt data at {key}: {reason}")]
    Corrupt {
        /// The key holding it.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The events asked for were removed by [`EventStore::trim`] (the
    /// match's state below `retained_from` lives only in its snapshot).
    #[error(
        "events of {key} below sequence {retained_from} were trimmed (engine.trim_events_below_snapshot); \
         sequence {requested} was asked for"
    )]
    Trimmed {
        /// The match.
        key: String,
        /// The first sequence asked for.
        requested: u64,
        /// The lowest sequence still stored.
        retained_from: u64,
    },
    /// A key part was invalid.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The lease of the match is held by another node
    /// ([`LeaseStore::claim`]).
    #[error("match {key} is owned by node {owner} (epoch {epoch}) for {expires_in:?} more")]
    Owned {
        /// The match.
        key: String,
        /// The node holding the lease.
        owner: String,
        /// Its epoch.
        epoch: u64,
        /// Time left on its lease when the store answered.
        expires_in: std::time::Duration,
    },
    /// A write or lease call carried an epoch that is not the match's
    /// current lease (another node claimed it, it was handed over or
    /// released, or it was never claimed): the writer must stop writing
    /// the match. Nothing of the call was stored.
    #[error("write to {key} under epoch {epoch} refused: the lease is at epoch {current}")]
    Fenced {
        /// The match.
        key: String,
        /// The epoch the call carried.
        epoch: u64,
        /// The match's current lease epoch (0 when never claimed).
        current: u64,
    },
}

impl StoreError {
    /// Whether retrying the same call can succeed.
    pub fn class(&self) -> ErrorClass {
        match self {
            StoreError::Unavailable(_) => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        }
    }

    /// Shorthand for `class() == ErrorClass::Transient`.
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// A short, fixed name of the error's cause, fit as a metrics label:
    /// `unavailable`, `conflict`, `corrupt`, …, or the [`Refusal`]'s name.
    pub fn label(&self) -> &'static str {
        match self {
            StoreError::Conflict { .. } => "conflict",
            StoreError::Diverged { .. } => "diverged",
            StoreError::UnknownMatch(_) => "unknown_match",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Refused { refusal, .. } => refusal.as_str(),
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::Trimmed { .. } => "trimmed",
            StoreError::Key(_) => "key",
            StoreError::Owned { .. } => "owned",
            StoreError::Fenced { .. } => "fenced",
        }
    }
}

/// Whether a failed store call is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The store is out of reach or busy for now: retry with backoff
    /// (the engine does, within its write buffer).
    Transient,
    /// The same call fails again: the engine pauses the affected matches.
    Permanent,
}

impl ErrorClass {
    /// `"transient"` or `"permanent"` (a metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
        }
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a store refused a call for good ([`StoreError::Refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// A Lua script failed (Redis `ERR … script: …`), including a command
    /// inside it that the user's ACL does not allow.
    Script,
    /// The server is out of memory and may not evict (Redis `OOM`, with
    /// `maxmemory-policy noeviction`).
    OutOfMemory,
    /// The keys of one call live in different cluster slots (Redis
    /// `CROSSSLOT`: e.g. a managed cluster endpoint used as one node).
    CrossSlot,
    /// A script is unknown and loading it failed (Redis `NOSCRIPT`).
    NoScript,
    /// The user may not run the command (Redis `NOPERM`, ACLs).
    NoPermission,
    /// Authentication failed (Redis `NOAUTH`, `WRONGPASS`).
    Authentication,
    /// The server cannot persist and refuses writes (Redis `MISCONF`).
    Persistence,
    /// Any other refusal (an unknown error code, a client-side error).
    Other,
}

impl Refusal {
    /// A fixed lower-case name (a metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Script => "script",
            Refusal::OutOfMemory => "oom",
            Refusal::CrossSlot => "crossslot",
            Refusal::NoScript => "noscript",
            Refusal::NoPermission => "noperm",
            Refusal::Authentication => "auth",
            Refusal::Persistence => "misconf",
            Refusal::Other => "other",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`EventStore::trim`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    /// The lowest sequence still stored (0 when nothing was ever trimmed).
    pub retained_from: u64,
    /// Events this call removed.
    pub removed: u64,
}

/// The per-match event log.
pub trait EventStore: Send + Sync + 'static {
    /// Appends several matches' batches in one round trip. The outer error
    /// means nothing was confirmed (some batches may be stored: retrying
    /// them is safe); otherwise each batch has its own result, the new head
    /// on success. The batches are borrowed, so a caller retrying after an
    /// outage does not copy them for every attempt.
    fn append(
        &self,
        batches: &[AppendBatch],
    ) -> impl Future<Output = Result<Vec<Result<Head, StoreError>>, StoreError>> + Send;

    /// Reads up to `limit` events from sequence `from` on, in order.
    /// Reading from below the events [`EventStore::trim`] kept is a
    /// [`StoreError::Trimmed`].
    fn read(
        &self,
        key: &MatchKey,
        from: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// The stored head of a match, `None` if it was never created.
    fn head(&self, key: &MatchKey)
    -> impl Future<Output = Result<Option<Head>, StoreError>> + Send;

    /// Records a new match (head 0, tick 0, live) with its encoded setup
    /// (the parameters and seed it was created with; may be empty).
    /// Creating an existing match is a [`StoreError::Conflict`].
    fn create(
        &self,
        key: &MatchKey,
        setup: &[u8],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The setup a match was created with (empty if none was given),
    /// `None` if the match was never created.
    fn load_setup(
        &self,
        key: &MatchKey,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// Marks a match ended so it is not restored on start.
    fn finish(&self, key: &MatchKey) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Marks a match failed with `reason` (the game code broke): it is not
    /// restored on start, and the reason is kept for whoever looks.
    fn fail(
        &self,
        key: &MatchKey,
        reason: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The reason stored by [`EventStore::fail`], if the match failed.
    fn failure(
        &self,
        key: &MatchKey,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// The live matches of a domain and edition.
    fn live_matches(
        &self,
        domain: &str,
        edition: &str,
    ) -> impl Future<Output = Result<Vec<MatchKey>, StoreError>> + Send;

    /// Removes the events of `key` below `below` that nothing needs any
    /// more, atomically: never an event at or above the stored snapshot's
    /// sequence (nothing without a snapshot), nor one a handler named in
    /// `keep_for` has not processed (a handler that never ran is at 0).
    /// Rebuilding from sequence 0 is impossible afterwards. Unfenced:
    /// [`EventStore::trim_fenced`] with no epoch.
    fn trim(
        &self,
        key: &MatchKey,
        below: u64,
        keep_for: &[String],
    ) -> impl Future<Output = Result<Trimmed, StoreError>> + Send {
        self.trim_fenced(key, below, keep_for, None)
    }

    /// [`EventStore::trim`] by the holder of lease `epoch`: refused as
    /// [`StoreError::Fenced`], removing nothing, unless the match's lease
    /// is at that epoch (`None`: unchecked).
    fn trim_fenced(
        &self,
        key: &MatchKey,
        below: u64,
        keep_for: &[String],
        epoch: Option<u64>,
    ) -> impl Future<Output = Result<Trimmed, StoreError>> + Send;
}

/// The latest snapshot of each match.
pub trait SnapshotStore: Send + Sync + 'static {
    /// Stores `snapshot` unless a snapshot with a higher sequence (or the
    /// same sequence and a later tick) is stored. Returns whether it was
    /// stored. Unfenced: [`SnapshotStore::save_fenced_snapshot`] with no
    /// epoch.
    fn save_snapshot(
        &self,
        key: &MatchKey,
        snapshot: &Snapshot,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        self.save_fenced_snapshot(key, snapshot, None)
    }

    /// [`SnapshotStore::save_snapshot`] by the holder of lease `epoch`:
    /// refused as [`StoreError::Fenced`], storing nothing, unless the
    /// match's lease is at that epoch (`None`: unchecked).
    fn save_fenced_snapshot(
        &self,
        key: &MatchKey,
        snapshot: &Snapshot,
        epoch: Option<u64>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The latest snapshot, if any.
    fn load_snapshot(
        &self,
        key: &MatchKey,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send;
}

/// How far each handler (projection, follower) has processed each log.
pub trait PositionStore: Send + Sync + 'static {
    /// The next sequence `handler` will process (0 if it never ran).
    fn load_position(
        &self,
        handler: &str,
        key: &MatchKey,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Moves `handler`'s position forward to `to`; a lower `to` is ignored.
    /// Returns the position now stored.
    fn advance_position(
        &self,
        handler: &str,
        key: &MatchKey,
        to: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// Everything a node needs from storage: the log, snapshots, positions,
/// and for fleets the leases and the node directory ([`LeaseStore`],
/// [`NodeDirectory`]).
pub trait Store:
    EventStore + SnapshotStore + PositionStore + LeaseStore + NodeDirectory + Clone
{
}

impl<T> Store for T where
    T: EventStore + SnapshotStore + PositionStore + LeaseStore + NodeDirectory + Clone
{
}
