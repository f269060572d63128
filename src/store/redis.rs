//! The Redis store: single node (through a reconnecting
//! [`ConnectionManager`]) or Redis Cluster (through a
//! [`ClusterConnection`]), chosen by the number of URLs given to
//! [`RedisStore::connect`] (several URLs, or one naming a cluster node).
//!
//! It owns the mapping of the store traits onto the key layout of
//! [`super::keys`] and the Lua scripts in `src/store/lua/`; it leaves
//! encoding to [`crate::codec`] and retry policy to its callers (the engine
//! retries an append that failed as a whole; every write here is safe to
//! retry).
//!
//! How each operation maps onto Redis:
//!
//! - **append**: one `append.lua` call carries many matches' batches. On a
//!   single node every batch of an [`EventStore::append`] call goes into one
//!   script call (split only past [`RedisOptions::max_batches_per_call`] or
//!   [`RedisOptions::max_bytes_per_call`]). In cluster mode the keys of one
//!   script call must share a slot, so batches are grouped by the slot of
//!   their hash tag (CRC16, as Redis computes it) and the groups are sent
//!   concurrently. The script checks and applies each batch atomically:
//!   `meta:{m}` holds `head` and `tick`; a batch must start at `head`,
//!   already-stored events must match byte for byte, new events are
//!   `ZADD`ed with their sequence as score.
//! - **read**: `ZRANGE events:{m} from +inf BYSCORE LIMIT 0 limit` (and,
//!   only when that does not start at `from`, the trimmed floor, below);
//!   each member is an encoded envelope, whose `(sequence, tick)` prefix is
//!   decoded with [`codec::decode_envelope_header`]. Appends therefore
//!   require every payload to be the encoded envelope of its event (checked
//!   before sending), which also keeps members unique per sequence.
//! - **create / finish / live_matches**: `matches:{d:e}` is the set of
//!   *live* roots. `create` first `SADD`s the root, then `create.lua`
//!   writes `meta:{m}` unless it exists; `finish` marks `status ended`
//!   (`finish.lua`), then `SREM`s the root. The set lives in another slot
//!   than the match's keys, hence the separate commands; `live_matches`
//!   therefore trusts `meta:{m}` over the set: it lists roots whose status
//!   is `live`, skips roots without meta (a create cut short), and prunes
//!   ended roots it finds (a finish cut short, or a create that conflicted
//!   with an ended match).
//! - **snapshots**: `snapshot.lua` compare-and-sets `snapshots:{m}` on
//!   `(sequence, tick)`; loading is one `HMGET`.
//! - **trim**: `trim.lua` removes events below the smallest of the asked
//!   sequence, the stored snapshot's sequence and the listed handlers'
//!   positions (`ZREMRANGEBYSCORE`) and records that floor as `trimmed` in
//!   `meta:{m}`; reads and retried appends below it are
//!   [`StoreError::Trimmed`].
//! - **positions**: `position.lua` moves `positions:<handler>:{m}` forward
//!   only; loading is a `GET` (0 when absent).
//! - **leases and fencing**: `lease.lua` keeps `owner:{m}` (a hash: `node`,
//!   `epoch`, `expires` in Redis server milliseconds from `TIME`) and
//!   answers claims, renewals, releases, hand-overs and reads atomically.
//!   A batch carrying an epoch makes its whole script call *fenced*: each
//!   batch then also names `owner:{m}` (same hash tag, same slot) and its
//!   epoch, and `append.lua` refuses a batch whose epoch is not the stored
//!   one before writing anything of it (one `HGET`; unfenced batches of the
//!   same call are not checked); `snapshot.lua` and `trim.lua` check the
//!   same way when given an epoch.
//! - **node directory**: `nodes.lua` keeps `nodes:{d:e}` (node id →
//!   expiry and description) on the same clock; listing is one call that
//!   skips and removes expired registrations.
//! - **followers**: each append that stores new events publishes them
//!   (`PUBLISH`, `SPUBLISH` in cluster mode) on `updates:{m}` while that
//!   channel has a subscriber on the node (`PUBSUB NUMSUB`/`SHARDNUMSUB`
//!   in the script: unfollowed matches pay nothing), unless
//!   [`RedisOptions::publish`] is off; [`RedisStore::follow`] turns that
//!   plus the sorted set into a gap-free stream of events ([`Follower`]).
//!
//! Requirements and limits: Redis 6.2 or later (`ZRANGE … BYSCORE`),
//! checked on connect.
//! Sequences, ticks and positions must stay below 2^53, the largest
//! integers Lua compares exactly; larger values are refused as
//! [`StoreError::Corrupt`] before anything is sent.
//!
//! Errors come in two classes ([`StoreError::class`]):
//! - *transient*, [`StoreError::Unavailable`]: connection refused, reset
//!   or dropped, I/O errors, timeouts, and the replies `LOADING`,
//!   `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `BUSY` (a slow script),
//!   `MOVED`/`ASK` (a resharding the cluster client did not follow in
//!   time), `NOREPLICAS`, `READONLY` (a failover demoted the node; the
//!   reconnect finds the new master. A URL naming a replica for good
//!   therefore looks like an outage that never ends: the engine's write
//!   buffer fills and its matches pause, logging `READONLY`) and
//!   `ERR max number of clients reached`;
//! - *permanent*: data of an unexpected type or shape (`WRONGTYPE`
//!   included) is [`StoreError::Corrupt`]; other refusals are
//!   [`StoreError::Refused`] with a [`Refusal`]: `OOM` (maxmemory with
//!   `noeviction`), `CROSSSLOT`, `NOSCRIPT` (the client reloads a missing
//!   script once; missing again is final), `NOPERM`, `NOAUTH`/`WRONGPASS`,
//!   `MISCONF`, errors raised inside a script (`ERR … script: …`, which is
//!   also how a command the ACL forbids inside a script fails), and any
//!   unknown code. The message is Redis's own (`CODE text`).
//!
//! One URL naming a Redis Cluster node (`INFO cluster` says
//! `cluster_enabled:1`) connects in cluster mode with that node as the
//! only seed, and logs a warning saying to list the nodes in `urls`: as
//! a single node it would answer other slots' keys with `MOVED` and
//! multi-key calls with `CROSSSLOT`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ErrorKind, FromRedisValue, RedisError, Script, ScriptInvocation, TlsCertificates,
};

mod follow;
mod lease;
mod tls;

pub use follow::{FOLLOW_POLL, Follower, updates_channel};
pub use tls::RedisTls;

use super::{
    AppendBatch, EventStore, Head, MatchKey, MatchStatus, PositionStore, RecordedEvent, Refusal,
    Snapshot, SnapshotStore, StoreError, Trimmed,
};
use crate::codec;

/// Largest sequence, tick or position this store accepts: 2^53, the
/// largest integer below which Lua (doubles) compares exactly.
pub const MAX_EXACT: u64 = 1 << 53;

/// Number of Redis Cluster hash slots.
const CLUSTER_SLOTS: u16 = 16_384;

const STATUS_LIVE: &str = "live";
const STATUS_ENDED: &str = "ended";
const STATUS_FAILED: &str = "failed";

struct Scripts {
    append: Script,
    trim: Script,
    create: Script,
    finish: Script,
    snapshot: Script,
    position: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    append: Script::new(include_str!("lua/append.lua")),
    trim: Script::new(include_str!("lua/trim.lua")),
    create: Script::new(include_str!("lua/create.lua")),
    finish: Script::new(include_str!("lua/finish.lua")),
    snapshot: Script::new(include_str!("lua/snapshot.lua")),
    position: Script::new(include_str!("lua/position.lua")),
});

/// Connection settings for [`RedisStore::connect_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisOptions {
    /// How long one connection attempt may take.
    pub connection_timeout: Duration,
    /// How long a command may wait for its reply before the call fails as
    /// [`StoreError::Unavailable`] (writes are safe to retry).
    pub response_timeout: Duration,
    /// Single node: connection attempts after the first, with exponential
    /// backoff from 100 ms, before a call fails as unavailable (the first
    /// connection, and each reconnection after a drop; the next call tries
    /// again).
    pub reconnect_retries: usize,
    /// Most batches carried by one append script call.
    pub max_batches_per_call: usize,
    /// Soft cap on the payload bytes of one append script call (a single
    /// larger batch still goes out whole, in a call of its own).
    pub max_bytes_per_call: usize,
    /// Publish each batch's new events on the match's `updates:{m}`
    /// channel (`PUBLISH`; `SPUBLISH` in cluster mode) for
    /// [`RedisStore::follow`]ers, when the channel has a subscriber on the
    /// node the script runs on. Off, followers see new events by polling
    /// the store every [`FOLLOW_POLL`].
    pub publish: bool,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            connection_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
            reconnect_retries: 3,
            max_batches_per_call: 2_048,
            max_bytes_per_call: 4 * 1024 * 1024,
            publish: true,
        }
    }
}

#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, RedisError> {
        match self {
            Connection::Single(con) => cmd.query_async(&mut con.clone()).await,
            Connection::Cluster(con) => cmd.query_async(&mut con.clone()).await,
        }
    }

    async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        match self {
            Connection::Single(con) => invocation.invoke_async(&mut con.clone()).await,
            Connection::Cluster(con) => invocation.invoke_async(&mut con.clone()).await,
        }
    }

    /// Runs independent commands: one pipeline on a single node,
    /// concurrently in cluster mode (a cluster pipeline must stay in one
    /// slot). Replies come back in order.
    async fn query_many<T: FromRedisValue>(&self, cmds: Vec<Cmd>) -> Result<Vec<T>, RedisError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Connection::Single(con) => {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                pipe.query_async(&mut con.clone()).await
            }
            Connection::Cluster(con) => join_all(cmds.iter().map(|cmd| {
                let mut con = con.clone();
                async move { cmd.query_async::<T>(&mut con).await }
            }))
            .await
            .into_iter()
            .collect(),
        }
    }
}

/// The Redis backend of the store traits; clones share the connection.
///
/// ```no_run
/// use tickforge::store::{EventStore, MatchKey, RedisStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // One URL: a single node. Several: the seed nodes of a cluster.
/// let store = RedisStore::connect(&["redis://127.0.0.1:6379".to_owned()]).await?;
/// let key = MatchKey::new("arena", "main", "m1")?;
/// store.create(&key, &[]).await?;
/// assert_eq!(store.head(&key).await?.map(|h| h.next_sequence), Some(0));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    options: RedisOptions,
    /// The URLs connected to: followers open their own subscriptions.
    urls: Arc<[String]>,
    /// The TLS material given to [`RedisStore::connect_tls`], checked.
    tls: Option<Arc<TlsCertificates>>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &self.is_cluster())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Marks a match ended or failed (with `reason`) and drops it from
    /// the live index.
    async fn mark_over(
        &self,
        key: &MatchKey,
        status: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let meta_key = key.meta_key();
        let mut invocation = SCRIPTS.finish.key(&meta_key);
        invocation.arg(status).arg(reason);
        let marked: i64 = self
            .connection
            .invoke(&invocation)
            .await
            .map_err(|e| redis_error(&meta_key, e))?;
        if marked == 0 {
            return Err(StoreError::UnknownMatch(key.to_string()));
        }
        let index_key = key.index_key();
        let mut srem = redis::cmd("SREM");
        srem.arg(&index_key).arg(key.root());
        let _: i64 = self
            .connection
            .query(&srem)
            .await
            .map_err(|e| redis_error(&index_key, e))?;
        Ok(())
    }
}

impl RedisStore {
    /// Runs a script of another module (projections) on this store's
    /// connection; `key` names the data in errors.
    pub(crate) async fn invoke_script<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
        key: &str,
    ) -> Result<T, StoreError> {
        self.connection
            .invoke(invocation)
            .await
            .map_err(|e| redis_error(key, e))
    }

    /// Runs one command of another module (projections) on this store's
    /// connection; `key` names the data in errors.
    pub(crate) async fn query_command<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
        key: &str,
    ) -> Result<T, StoreError> {
        self.connection
            .query(cmd)
            .await
            .map_err(|e| redis_error(key, e))
    }

    /// Connects with [`RedisOptions::default`]: one URL means a single node
    /// (reconnected automatically after a drop), several mean the seed
    /// nodes of a Redis Cluster. `rediss://` URLs use TLS, trusting the
    /// system's roots ([`RedisStore::connect_tls`] for a private CA or a
    /// client certificate); a password (and user name) may be given in the
    /// URL.
    pub async fn connect(urls: &[String]) -> Result<RedisStore, StoreError> {
        Self::connect_with(urls, RedisOptions::default()).await
    }

    /// Connects like [`RedisStore::connect`], with explicit options.
    pub async fn connect_with(
        urls: &[String],
        options: RedisOptions,
    ) -> Result<RedisStore, StoreError> {
        Self::connect_inner(urls, options, None).await
    }

    /// Connects like [`RedisStore::connect_with`] over TLS with `tls`'s
    /// root CA and client certificate (followers use them too). Every URL
    /// must be `rediss://`; bad PEM or another scheme is refused as
    /// [`StoreError::Unavailable`] before anything is sent.
    ///
    /// ```no_run
    /// use tickforge::store::{RedisOptions, RedisStore, RedisTls};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let tls = RedisTls::new().with_root_ca_pem(std::fs::read("/etc/redis/ca.pem")?);
    /// let urls = ["rediss://:password@redis.internal:6380".to_owned()];
    /// let store = RedisStore::connect_tls(&urls, RedisOptions::default(), &tls).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_tls(
        urls: &[String],
        options: RedisOptions,
        tls: &RedisTls,
    ) -> Result<RedisStore, StoreError> {
        if let Some(url) = urls.iter().find(|url| !url.starts_with("rediss://")) {
            return Err(StoreError::Unavailable(format!(
                "TLS material was given for {}, which is not a rediss:// URL",
                redact(url)
            )));
        }
        let certs = tls.certificates()?;
        Self::connect_inner(urls, options, Some(Arc::new(certs))).await
    }

    async fn connect_inner(
        urls: &[String],
        options: RedisOptions,
        tls: Option<Arc<TlsCertificates>>,
    ) -> Result<RedisStore, StoreError> {
        if urls.iter().any(|url| url.starts_with("rediss://")) {
            // redis-rs builds its rustls config from the process-wide
            // provider; an error only means one is installed already.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let shown = urls
            .iter()
            .map(|u| redact(u))
            .collect::<Vec<_>>()
            .join(", ");
        let unavailable =
            |e: RedisError| StoreError::Unavailable(format!("cannot connect to {shown}: {e}"));
        let connection = match urls {
            [] => {
                return Err(StoreError::Unavailable("no Redis URL given".to_owned()));
            }
            [url] => {
                let client = tls::single_client(url, tls.as_deref()).map_err(unavailable)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(options.connection_timeout))
                    .set_response_timeout(Some(options.response_timeout))
                    .set_number_of_retries(options.reconnect_retries);
                let manager = ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(unavailable)?;
                if cluster_enabled(&manager).await.map_err(unavailable)? {
                    tracing::warn!(url = %shown,
                        "this Redis is a cluster node: using cluster mode with it as the only seed \
                         (list several nodes in [storage.redis] urls so that start-up survives one being down)");
                    cluster_connection(urls, &options, tls.as_deref())
                        .await
                        .map_err(unavailable)?
                } else {
                    Connection::Single(manager)
                }
            }
            seeds => cluster_connection(seeds, &options, tls.as_deref())
                .await
                .map_err(unavailable)?,
        };
        let store = RedisStore {
            connection,
            options,
            urls: urls.into(),
            tls,
        };
        // Fail now, not on the first append, if the server is unusable.
        let mut info = redis::cmd("INFO");
        info.arg("server");
        // One text on a single node; a map of node to text in cluster mode.
        let info: redis::Value = store.connection.query(&info).await.map_err(unavailable)?;
        let mut texts = Vec::new();
        collect_texts(&info, &mut texts);
        let versions: Vec<&str> = texts
            .iter()
            .flat_map(|text| text.lines())
            .filter_map(|line| line.strip_prefix("redis_version:"))
            .map(str::trim)
            .collect();
        if versions.is_empty() {
            return Err(StoreError::Unavailable(format!(
                "{shown} did not report a redis_version"
            )));
        }
        if let Some(old) = versions.iter().find(|v| !at_least_6_2(v)) {
            return Err(StoreError::Unavailable(format!(
                "{shown} runs Redis {old}; tickforge needs 6.2 or later"
            )));
        }
        Ok(store)
    }

    /// Whether this store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.connection, Connection::Cluster(_))
    }

    /// The lowest sequence `key`'s log still holds: the `trimmed` field of
    /// its meta hash, 0 when never trimmed.
    async fn retained_from(&self, key: &MatchKey) -> Result<u64, StoreError> {
        let meta_key = key.meta_key();
        let mut cmd = redis::cmd("HGET");
        cmd.arg(&meta_key).arg("trimmed");
        let floor: Option<String> = self
            .connection
            .query(&cmd)
            .await
            .map_err(|e| redis_error(&meta_key, e))?;
        floor.map_or(Ok(0), |f| parse_u64(&meta_key, "trimmed", &f))
    }

    /// Sends one group of already-validated batches as one script call and
    /// returns each batch's result, in the group's order.
    async fn append_group(
        &self,
        batches: &[&AppendBatch],
    ) -> Result<Vec<Result<Head, StoreError>>, StoreError> {
        let mut invocation = SCRIPTS.append.prepare_invoke();
        invocation.arg(match (self.options.publish, self.is_cluster()) {
            (false, _) => "",
            (true, false) => "PUBLISH",
            (true, true) => "SPUBLISH",
        });
        // Unfenced calls (the single-node default) keep the lean layout:
        // no owner key, no epoch argument.
        let fenced = batches.iter().any(|batch| batch.epoch.is_some());
        invocation.arg(if fenced { "fenced" } else { "" });
        for batch in batches {
            invocation
                .key(batch.key.meta_key())
                .key(batch.key.events_key())
                .arg(batch.first_sequence.to_string())
                .arg(batch.next_sequence().to_string())
                .arg(batch.head_tick.to_string());
            if fenced {
                let renew = match (batch.epoch, batch.renew_lease) {
                    (Some(_), Some(ttl)) => super::lease::ttl_millis(ttl).to_string(),
                    _ => String::new(),
                };
                invocation
                    .key(batch.key.owner_key())
                    .arg(batch.epoch.map(|e| e.to_string()).unwrap_or_default())
                    .arg(renew);
            }
            for event in &batch.events {
                invocation.arg(event.payload.as_slice());
            }
        }
        let context = batches
            .first()
            .map(|b| b.key.events_key())
            .unwrap_or_default();
        let reply: Vec<i64> = self
            .connection
            .invoke(&invocation)
            .await
            .map_err(|e| redis_error(&context, e))?;
        if reply.len() != batches.len() * 3 {
            return Err(StoreError::Corrupt {
                key: context,
                reason: format!(
                    "append script answered {} numbers for {} batches",
                    reply.len(),
                    batches.len()
                ),
            });
        }
        Ok(batches
            .iter()
            .zip(reply.chunks_exact(3))
            .map(|(batch, r)| append_outcome(batch, r[0], r[1], r[2]))
            .collect())
    }

    /// Splits `indices` (into `batches`) into script calls within the
    /// per-call caps.
    fn chunk_calls(&self, batches: &[AppendBatch], indices: Vec<usize>) -> Vec<Vec<usize>> {
        let mut calls = Vec::new();
        let mut current = Vec::new();
        let mut bytes = 0;
        for index in indices {
            let size: usize = batches[index].events.iter().map(|e| e.payload.len()).sum();
            if !current.is_empty()
                && (current.len() >= self.options.max_batches_per_call
                    || bytes + size > self.options.max_bytes_per_call)
            {
                calls.push(std::mem::take(&mut current));
                bytes = 0;
            }
            bytes += size;
            current.push(index);
        }
        if !current.is_empty() {
            calls.push(current);
        }
        calls
    }
}

/// Checks what Redis cannot: consecutive sequences, payloads that are the
/// envelopes of their events, numbers Lua compares exactly.
fn validate(batch: &AppendBatch) -> Result<(), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: batch.key.events_key(),
        reason,
    };
    if batch.next_sequence() > MAX_EXACT
        || batch.head_tick > MAX_EXACT
        || batch.epoch.is_some_and(|e| e > MAX_EXACT)
    {
        return Err(corrupt(format!(
            "sequence, tick or epoch beyond 2^53 (next sequence {}, tick {}, epoch {:?})",
            batch.next_sequence(),
            batch.head_tick,
            batch.epoch
        )));
    }
    for (offset, event) in batch.events.iter().enumerate() {
        let sequence = batch.first_sequence + offset as u64;
        if event.sequence != sequence {
            return Err(corrupt(format!(
                "batch is not consecutive: event {} at position {sequence}",
                event.sequence
            )));
        }
        match codec::decode_envelope_header(&event.payload) {
            Ok(header) if header == (event.sequence, event.tick) => {}
            Ok((s, t)) => {
                return Err(corrupt(format!(
                    "payload of event {sequence} (tick {}) is the envelope of event {s} (tick {t})",
                    event.tick
                )));
            }
            Err(e) => {
                return Err(corrupt(format!(
                    "payload of event {sequence} is not an event envelope: {e}"
                )));
            }
        }
    }
    Ok(())
}

/// One batch's result from the three numbers `append.lua` answers.
fn append_outcome(batch: &AppendBatch, code: i64, a: i64, b: i64) -> Result<Head, StoreError> {
    let key = &batch.key;
    let number = |n: i64| {
        u64::try_from(n).map_err(|_| StoreError::Corrupt {
            key: key.meta_key(),
            reason: format!("append script answered a negative number {n}"),
        })
    };
    let head = |status| {
        Ok(Head {
            next_sequence: number(a)?,
            tick: number(b)?,
            status,
        })
    };
    match code {
        0 => head(MatchStatus::Live),
        1 => head(MatchStatus::Ended),
        2 => Err(StoreError::Conflict {
            key: key.to_string(),
            expected: number(a)?,
            found: batch.first_sequence,
        }),
        3 => Err(StoreError::Diverged {
            key: key.to_string(),
            sequence: number(a)?,
        }),
        4 => Err(StoreError::UnknownMatch(key.to_string())),
        5 => Err(StoreError::Corrupt {
            key: key.meta_key(),
            reason: "meta hash or event log is not what tickforge writes".to_owned(),
        }),
        6 => Err(StoreError::Trimmed {
            key: key.to_string(),
            requested: batch.first_sequence,
            retained_from: number(a)?,
        }),
        7 => Err(StoreError::Fenced {
            key: key.to_string(),
            epoch: batch.epoch.unwrap_or(0),
            current: number(a)?,
        }),
        other => Err(StoreError::Corrupt {
            key: key.meta_key(),
            reason: format!("append script answered unknown code {other}"),
        }),
    }
}

/// A script's epoch argument: decimal, or empty for an unfenced write.
fn epoch_arg(key: &str, epoch: Option<u64>) -> Result<String, StoreError> {
    match epoch {
        None => Ok(String::new()),
        Some(epoch) if epoch <= MAX_EXACT => Ok(epoch.to_string()),
        Some(epoch) => Err(StoreError::Corrupt {
            key: key.to_owned(),
            reason: format!("epoch {epoch} beyond 2^53"),
        }),
    }
}

/// The [`StoreError::Fenced`] of a write under `epoch` that a script
/// refused, the lease being at `current`.
fn fenced(key: &MatchKey, epoch: Option<u64>, current: i64) -> StoreError {
    StoreError::Fenced {
        key: key.to_string(),
        epoch: epoch.unwrap_or(0),
        current: u64::try_from(current).unwrap_or(0),
    }
}

/// The cluster slot of a match's keys: CRC16 of the hash tag's content.
fn slot(key: &MatchKey) -> u16 {
    let tag = format!("{}:{}:{}", key.domain(), key.edition(), key.root());
    crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % CLUSTER_SLOTS
}

/// Connects to the Redis Cluster that `seeds` belong to.
async fn cluster_connection(
    seeds: &[String],
    options: &RedisOptions,
    tls: Option<&TlsCertificates>,
) -> Result<Connection, RedisError> {
    let client = tls::cluster_builder(seeds, tls)
        .connection_timeout(options.connection_timeout)
        .response_timeout(options.response_timeout)
        .build()?;
    Ok(Connection::Cluster(client.get_async_connection().await?))
}

/// Whether the server behind a single-node connection runs in cluster
/// mode (`INFO cluster` says `cluster_enabled:1`): it would answer keys of
/// other nodes' slots with `MOVED`, and multi-key calls with `CROSSSLOT`.
async fn cluster_enabled(manager: &ConnectionManager) -> Result<bool, RedisError> {
    let mut info = redis::cmd("INFO");
    info.arg("cluster");
    let info: redis::Value = info.query_async(&mut manager.clone()).await?;
    let mut texts = Vec::new();
    collect_texts(&info, &mut texts);
    Ok(texts
        .iter()
        .flat_map(|text| text.lines())
        .any(|line| line.trim() == "cluster_enabled:1"))
}

/// How a Redis error is reported: see "Errors" in the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorOrigin {
    /// Worth retrying: [`StoreError::Unavailable`].
    Transient,
    /// Data of an unexpected type or shape: [`StoreError::Corrupt`].
    Corrupt,
    /// Refused for good: [`StoreError::Refused`].
    Refused(Refusal),
}

/// Maps a client error onto the store's errors and their classes.
fn redis_error(key: &str, error: RedisError) -> StoreError {
    let message = redis_message(&error);
    match classify(&error) {
        ErrorOrigin::Transient => StoreError::Unavailable(format!("{key}: {message}")),
        ErrorOrigin::Corrupt => StoreError::Corrupt {
            key: key.to_owned(),
            reason: message,
        },
        ErrorOrigin::Refused(refusal) => StoreError::Refused {
            key: key.to_owned(),
            refusal,
            message,
        },
    }
}

/// The first error reply inside `error` (a plain reply or a pipeline's).
fn server_reply(error: &RedisError) -> Option<redis::ServerError> {
    let replies = error.clone().into_server_errors()?;
    replies.first().map(|(_, reply)| reply.clone())
}

/// The error as Redis worded it (`CODE text`) for a reply, else the
/// client's description.
fn redis_message(error: &RedisError) -> String {
    match server_reply(error) {
        Some(reply) => match reply.details() {
            Some(detail) => format!("{} {detail}", reply.code()),
            None => reply.code().to_owned(),
        },
        None => error.to_string(),
    }
}

fn classify(error: &RedisError) -> ErrorOrigin {
    match error.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => return ErrorOrigin::Corrupt,
        ErrorKind::Io
        | ErrorKind::ClusterConnectionNotFound
        | ErrorKind::MasterNameNotFoundBySentinel
        | ErrorKind::NoValidReplicasFoundBySentinel => return ErrorOrigin::Transient,
        ErrorKind::AuthenticationFailed => {
            return ErrorOrigin::Refused(Refusal::Authentication);
        }
        _ => {}
    }
    if error.is_timeout() || error.is_connection_dropped() || error.is_connection_refusal() {
        return ErrorOrigin::Transient;
    }
    match server_reply(error) {
        Some(reply) => classify_reply(reply.code(), reply.details().unwrap_or_default()),
        // Errors raised by the client itself (bad configuration, …).
        None => ErrorOrigin::Refused(Refusal::Other),
    }
}

/// Classifies an error reply by its code (its first word) and text. A
/// command failing inside a script keeps its own code (`OOM …, script: …`).
fn classify_reply(code: &str, detail: &str) -> ErrorOrigin {
    use ErrorOrigin::{Corrupt, Refused, Transient};
    match code {
        // Loading a dataset, resharding, failover, a slow script: passes.
        "LOADING" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "BUSY" | "MOVED" | "ASK"
        | "NOREPLICAS" => Transient,
        // A failover demoted the node (the reconnect finds the new master).
        "READONLY" => Transient,
        "ERR" if detail.starts_with("max number of clients") => Transient,
        "WRONGTYPE" => Corrupt,
        "OOM" => Refused(Refusal::OutOfMemory),
        "CROSSSLOT" => Refused(Refusal::CrossSlot),
        // The client reloads a missing script once; still missing is final.
        "NOSCRIPT" => Refused(Refusal::NoScript),
        "NOPERM" => Refused(Refusal::NoPermission),
        "NOAUTH" | "WRONGPASS" => Refused(Refusal::Authentication),
        "MISCONF" => Refused(Refusal::Persistence),
        _ if detail.contains("script") => Refused(Refusal::Script),
        _ => Refused(Refusal::Other),
    }
}

fn parse_u64(key: &str, field: &str, value: &str) -> Result<u64, StoreError> {
    value.parse().map_err(|_| StoreError::Corrupt {
        key: key.to_owned(),
        reason: format!("{field} is {value:?}, not a number"),
    })
}

/// Every text in a reply, however nested (maps, arrays).
fn collect_texts(value: &redis::Value, out: &mut Vec<String>) {
    use redis::Value;
    match value {
        Value::BulkString(bytes) => out.push(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => out.push(text.clone()),
        Value::VerbatimString { text, .. } => out.push(text.clone()),
        Value::Array(items) | Value::Set(items) => {
            items.iter().for_each(|item| collect_texts(item, out));
        }
        Value::Map(pairs) => pairs.iter().for_each(|(_, v)| collect_texts(v, out)),
        _ => {}
    }
}

/// Whether a `redis_version` is 6.2 or later.
fn at_least_6_2(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= (6, 2)
}

/// A URL with its password replaced, fit for error messages and logs.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(user, _)| user);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

impl EventStore for RedisStore {
    async fn append(
        &self,
        batches: &[AppendBatch],
    ) -> Result<Vec<Result<Head, StoreError>>, StoreError> {
        let mut results: Vec<Option<Result<Head, StoreError>>> = vec![None; batches.len()];
        // Batches of one match must stay in one call, in order: they do,
        // since a match always maps to one slot and chunks keep order.
        let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (index, batch) in batches.iter().enumerate() {
            match validate(batch) {
                Ok(()) => {
                    let group = if self.is_cluster() {
                        slot(&batch.key)
                    } else {
                        0
                    };
                    groups.entry(group).or_default().push(index);
                }
                Err(e) => results[index] = Some(Err(e)),
            }
        }
        let calls: Vec<Vec<usize>> = groups
            .into_values()
            .flat_map(|indices| self.chunk_calls(batches, indices))
            .collect();
        // All calls go out at once: pipelined on the single connection (in
        // order), spread over the nodes in cluster mode.
        let replies = join_all(calls.iter().map(|call| {
            let group: Vec<&AppendBatch> = call.iter().map(|&i| &batches[i]).collect();
            async move { self.append_group(&group).await }
        }))
        .await;
        for (call, reply) in calls.iter().zip(replies) {
            // A failed call fails the whole append (a script stops at its
            // first error, keeping the batches it stored before): callers
            // retry it whole or batch by batch, which is safe since stored
            // events are skipped.
            for (&index, result) in call.iter().zip(reply?) {
                results[index] = Some(result);
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.ok_or_else(|| StoreError::Corrupt {
                    key: String::new(),
                    reason: "append script skipped a batch".to_owned(),
                })
            })
            .collect()
    }

    async fn read(
        &self,
        key: &MatchKey,
        from: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events_key = key.events_key();
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(&events_key)
            .arg(from)
            .arg("+inf")
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(i64::try_from(limit).unwrap_or(i64::MAX));
        let members: Vec<Vec<u8>> = self
            .connection
            .query(&cmd)
            .await
            .map_err(|e| redis_error(&events_key, e))?;
        // Events from `from` on came back: nothing below it matters. Else
        // (none, or a later first one) the log may be trimmed past `from`;
        // the floor only rises, so reading it after the range is safe.
        let first = members
            .first()
            .map(|payload| codec::decode_envelope_header(payload).map(|(sequence, _)| sequence));
        if !matches!(first, Some(Ok(sequence)) if sequence == from) {
            let retained_from = self.retained_from(key).await?;
            if from < retained_from {
                return Err(StoreError::Trimmed {
                    key: key.to_string(),
                    requested: from,
                    retained_from,
                });
            }
        }
        members
            .into_iter()
            .enumerate()
            .map(|(offset, payload)| {
                let expected = from + offset as u64;
                let (sequence, tick) =
                    codec::decode_envelope_header(&payload).map_err(|e| StoreError::Corrupt {
                        key: events_key.clone(),
                        reason: format!("member {offset} from sequence {from}: {e}"),
                    })?;
                if sequence != expected {
                    return Err(StoreError::Corrupt {
                        key: events_key.clone(),
                        reason: format!("expected event {expected}, found event {sequence}"),
                    });
                }
                Ok(RecordedEvent {
                    sequence,
                    tick,
                    payload,
                })
            })
            .collect()
    }

    async fn head(&self, key: &MatchKey) -> Result<Option<Head>, StoreError> {
        let meta_key = key.meta_key();
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&meta_key).arg("head").arg("tick").arg("status");
        let (head, tick, status): (Option<String>, Option<String>, Option<String>) = self
            .connection
            .query(&cmd)
            .await
            .map_err(|e| redis_error(&meta_key, e))?;
        match (head, tick, status) {
            (None, None, None) => Ok(None),
            (Some(head), Some(tick), Some(status)) => Ok(Some(Head {
                next_sequence: parse_u64(&meta_key, "head", &head)?,
                tick: parse_u64(&meta_key, "tick", &tick)?,
                status: match status.as_str() {
                    STATUS_LIVE => MatchStatus::Live,
                    STATUS_ENDED => MatchStatus::Ended,
                    STATUS_FAILED => MatchStatus::Failed,
                    _ => {
                        return Err(StoreError::Corrupt {
                            key: meta_key,
                            reason: format!("status is {status:?}"),
                        });
                    }
                },
            })),
            _ => Err(StoreError::Corrupt {
                key: meta_key,
                reason: "head, tick or status missing".to_owned(),
            }),
        }
    }

    async fn create(&self, key: &MatchKey, setup: &[u8]) -> Result<(), StoreError> {
        // Index first: a create cut short leaves a root without meta, which
        // live_matches skips, rather than a match nobody lists.
        let index_key = key.index_key();
        let mut sadd = redis::cmd("SADD");
        sadd.arg(&index_key).arg(key.root());
        let _: i64 = self
            .connection
            .query(&sadd)
            .await
            .map_err(|e| redis_error(&index_key, e))?;
        let meta_key = key.meta_key();
        let mut invocation = SCRIPTS.create.key(&meta_key);
        invocation.arg(setup);
        let reply: i64 = self
            .connection
            .invoke(&invocation)
            .await
            .map_err(|e| redis_error(&meta_key, e))?;
        match reply {
            -1 => Ok(()),
            head if head >= 0 => Err(StoreError::Conflict {
                key: key.to_string(),
                expected: head as u64,
                found: 0,
            }),
            _ => Err(StoreError::Corrupt {
                key: meta_key,
                reason: "existing meta hash has no numeric head".to_owned(),
            }),
        }
    }

    async fn load_setup(&self, key: &MatchKey) -> Result<Option<Vec<u8>>, StoreError> {
        let meta_key = key.meta_key();
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&meta_key).arg("head").arg("setup");
        let (head, setup): (Option<String>, Option<Vec<u8>>) = self
            .connection
            .query(&cmd)
            .await
            .map_err(|e| redis_error(&meta_key, e))?;
        Ok(head.map(|_| setup.unwrap_or_default()))
    }

    async fn finish(&self, key: &MatchKey) -> Result<(), StoreError> {
        self.mark_over(key, STATUS_ENDED, "").await
    }

    async fn fail(&self, key: &MatchKey, reason: &str) -> Result<(), StoreError> {
        self.mark_over(key, STATUS_FAILED, reason).await
    }

    async fn failure(&self, key: &MatchKey) -> Result<Option<String>, StoreError> {
        let meta_key = key.meta_key();
        let mut cmd = redis::cmd("HGET");
        cmd.arg(&meta_key).arg("failure");
        self.connection
            .query(&cmd)
            .await
            .map_err(|e| redis_error(&meta_key, e))
    }

    async fn live_matches(&self, domain: &str, edition: &str) -> Result<Vec<MatchKey>, StoreError> {
        // Checks domain and edition (they become part of a key name).
        let index_key = MatchKey::new(domain, edition, "_")?.index_key();
        let mut smembers = redis::cmd("SMEMBERS");
        smembers.arg(&index_key);
        let roots: Vec<String> = self
            .connection
            .query(&smembers)
            .await
            .map_err(|e| redis_error(&index_key, e))?;
        let keys = roots
            .iter()
            .map(|root| {
                MatchKey::new(domain, edition, root).map_err(|e| StoreError::Corrupt {
                    key: index_key.clone(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let lookups = keys
            .iter()
            .map(|key| {
                let mut cmd = redis::cmd("HGET");
                cmd.arg(key.meta_key()).arg("status");
                cmd
            })
            .collect();
        let statuses: Vec<Option<String>> = self
            .connection
            .query_many(lookups)
            .await
            .map_err(|e| redis_error(&index_key, e))?;
        let mut live = Vec::new();
        let mut ended = Vec::new();
        for (key, status) in keys.into_iter().zip(statuses) {
            match status.as_deref() {
                Some(STATUS_LIVE) => live.push(key),
                Some(STATUS_ENDED | STATUS_FAILED) => ended.push(key),
                // No meta: a create still running or cut short.
                None => {}
                Some(other) => {
                    return Err(StoreError::Corrupt {
                        key: key.meta_key(),
                        reason: format!("status is {other:?}"),
                    });
                }
            }
        }
        if !ended.is_empty() {
            let mut srem = redis::cmd("SREM");
            srem.arg(&index_key);
            for key in &ended {
                srem.arg(key.root());
            }
            // Pruning is housekeeping; the listing is right either way.
            if let Err(error) = self.connection.query::<i64>(&srem).await {
                tracing::debug!(%error, index = %index_key, "pruning ended matches failed");
            }
        }
        live.sort();
        Ok(live)
    }

    async fn trim_fenced(
        &self,
        key: &MatchKey,
        below: u64,
        keep_for: &[String],
        epoch: Option<u64>,
    ) -> Result<Trimmed, StoreError> {
        let meta_key = key.meta_key();
        let mut invocation = SCRIPTS.trim.key(&meta_key);
        invocation
            .key(key.snapshot_key())
            .key(key.events_key())
            .key(key.owner_key());
        for handler in keep_for {
            invocation.key(key.position_key(handler)?);
        }
        invocation
            .arg(below.min(MAX_EXACT).to_string())
            .arg(epoch_arg(&meta_key, epoch)?);
        let (retained_from, removed): (i64, i64) = self
            .connection
            .invoke(&invocation)
            .await
            .map_err(|e| redis_error(&meta_key, e))?;
        match (u64::try_from(retained_from), u64::try_from(removed)) {
            (Ok(retained_from), Ok(removed)) => Ok(Trimmed {
                retained_from,
                removed,
            }),
            _ if retained_from == -1 => Err(StoreError::UnknownMatch(key.to_string())),
            _ if retained_from == -3 => Err(fenced(key, epoch, removed)),
            _ => Err(StoreError::Corrupt {
                key: meta_key,
                reason: "trimmed floor, head, snapshot sequence or a position is not a number"
                    .to_owned(),
            }),
        }
    }
}

impl SnapshotStore for RedisStore {
    async fn save_fenced_snapshot(
        &self,
        key: &MatchKey,
        snapshot: &Snapshot,
        epoch: Option<u64>,
    ) -> Result<bool, StoreError> {
        let snapshot_key = key.snapshot_key();
        if snapshot.sequence > MAX_EXACT || snapshot.tick > MAX_EXACT {
            return Err(StoreError::Corrupt {
                key: snapshot_key,
                reason: format!(
                    "snapshot sequence {} or tick {} beyond 2^53",
                    snapshot.sequence, snapshot.tick
                ),
            });
        }
        let mut invocation = SCRIPTS.snapshot.key(&snapshot_key);
        invocation
            .key(key.meta_key())
            .key(key.owner_key())
            .arg(snapshot.sequence.to_string())
            .arg(snapshot.tick.to_string())
            .arg(snapshot.state.as_slice())
            .arg(snapshot.schema)
            .arg(snapshot.hash.to_string())
            .arg(epoch_arg(&snapshot_key, epoch)?);
        let reply: Vec<i64> = self
            .connection
            .invoke(&invocation)
            .await
            .map_err(|e| redis_error(&snapshot_key, e))?;
        match reply.as_slice() {
            [1] => Ok(true),
            [0] => Ok(false),
            [-1] => Err(StoreError::UnknownMatch(key.to_string())),
            [-3, current] => Err(fenced(key, epoch, *current)),
            _ => Err(StoreError::Corrupt {
                key: snapshot_key,
                reason: "stored sequence or tick is not a number".to_owned(),
            }),
        }
    }

    async fn load_snapshot(&self, key: &MatchKey) -> Result<Option<Snapshot>, StoreError> {
        let snapshot_key = key.snapshot_key();
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&snapshot_key)
            .arg("sequence")
            .arg("tick")
            .arg("state")
            .arg("schema")
            .arg("hash");
        type Fields = (
            Option<String>,
            Option<String>,
            Option<Vec<u8>>,
            Option<String>,
            Option<String>,
        );
        let (sequence, tick, state, schema, hash): Fields = self
            .connection
            .query(&cmd)
            .await
            .map_err(|e| redis_error(&snapshot_key, e))?;
        match (sequence, tick, state, schema, hash) {
            (None, None, None, None, None) => Ok(None),
            (Some(sequence), Some(tick), Some(state), Some(schema), Some(hash)) => {
                Ok(Some(Snapshot {
                    sequence: parse_u64(&snapshot_key, "sequence", &sequence)?,
                    tick: parse_u64(&snapshot_key, "tick", &tick)?,
                    state,
                    schema: u32::try_from(parse_u64(&snapshot_key, "schema", &schema)?).map_err(
                        |_| StoreError::Corrupt {
                            key: snapshot_key.clone(),
                            reason: format!("schema {schema} is not a 32-bit version"),
                        },
                    )?,
                    hash: parse_u64(&snapshot_key, "hash", &hash)?,
                }))
            }
            _ => Err(StoreError::Corrupt {
                key: snapshot_key,
                reason: "sequence, tick, state, schema or hash missing".to_owned(),
            }),
        }
    }
}

impl PositionStore for RedisStore {
    async fn load_position(&self, handler: &str, key: &MatchKey) -> Result<u64, StoreError> {
        let position_key = key.position_key(handler)?;
        let mut cmd = redis::cmd("GET");
        cmd.arg(&position_key);
        let value: Option<String> = self
            .connection
            .query(&cmd)
            .await
            .map_err(|e| redis_error(&position_key, e))?;
        value.map_or(Ok(0), |v| parse_u64(&position_key, "position", &v))
    }

    async fn advance_position(
        &self,
        handler: &str,
        key: &MatchKey,
        to: u64,
    ) -> Result<u64, StoreError> {
        let position_key = key.position_key(handler)?;
        if to > MAX_EXACT {
            return Err(StoreError::Corrupt {
                key: position_key,
                reason: format!("position {to} beyond 2^53"),
            });
        }
        let mut invocation = SCRIPTS.position.key(&position_key);
        invocation.key(key.meta_key()).arg(to.to_string());
        let reply: i64 = self
            .connection
            .invoke(&invocation)
            .await
            .map_err(|e| redis_error(&position_key, e))?;
        match reply {
            -1 => Err(StoreError::UnknownMatch(key.to_string())),
            position if position >= 0 => Ok(position as u64),
            _ => Err(StoreError::Corrupt {
                key: position_key,
                reason: "stored position is not a number".to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from CLUSTER KEYSLOT on Redis 7.0.
        let slot_of = |root| slot(&MatchKey::new("arena", "main", root).unwrap());
        assert_eq!(slot_of("m1"), 12677);
        assert_eq!(slot_of("m42"), 2710);
    }

    #[test]
    fn versions_from_6_2_on_are_accepted() {
        assert!(at_least_6_2("7.0.15"));
        assert!(at_least_6_2("6.2.0"));
        assert!(at_least_6_2("10.0"));
        assert!(!at_least_6_2("6.0.20"));
        assert!(!at_least_6_2("5.0.7"));
        assert!(!at_least_6_2("unknown"));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("rediss://user:secret@host:6380/0"),
            "rediss://user:***@host:6380/0"
        );
        assert_eq!(redact("redis://:secret@host"), "redis://:***@host");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }

    /// The error redis-rs makes of an error reply `line` from the server.
    fn reply_error(line: &str) -> RedisError {
        let value = redis::parse_redis_value(format!("-{line}\r\n").as_bytes())
            .expect("an error reply parses");
        value
            .extract_error()
            .expect_err("an error reply is an error")
    }

    fn class_of(error: RedisError) -> (crate::store::ErrorClass, &'static str) {
        let error = redis_error("events:{arena:main:m1}", error);
        (error.class(), error.label())
    }

    #[test]
    fn connection_failures_and_passing_states_are_transient() {
        use crate::store::ErrorClass::Transient;
        use std::io::ErrorKind as Io;
        for kind in [
            Io::ConnectionRefused,
            Io::ConnectionReset,
            Io::BrokenPipe,
            Io::TimedOut,
            Io::UnexpectedEof,
        ] {
            let error = RedisError::from(std::io::Error::from(kind));
            assert_eq!(class_of(error), (Transient, "unavailable"), "{kind:?}");
        }
        for line in [
            "LOADING Redis is loading the dataset in memory",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
            "MOVED 3999 127.0.0.1:6381",
            "READONLY You can't write against a read only replica.",
            "NOREPLICAS Not enough good replicas to write.",
            "ERR max number of clients reached",
        ] {
            assert_eq!(
                class_of(reply_error(line)),
                (Transient, "unavailable"),
                "{line}"
            );
        }
    }

    #[test]
    fn refusals_are_permanent_and_keep_the_redis_message() {
        use crate::store::ErrorClass::Permanent;
        for (line, label) in [
            (
                "OOM command not allowed when used memory > 'maxmemory'. script: 219bb3, on @user_script:1.",
                "oom",
            ),
            (
                "CROSSSLOT Keys in request don't hash to the same slot",
                "crossslot",
            ),
            ("NOSCRIPT No matching script. Please use EVAL.", "noscript"),
            (
                "NOPERM this user has no permissions to run the 'evalsha' command",
                "noperm",
            ),
            (
                "ERR The user executing the script can't run this command or subcommand script: 37df4d, on @user_script:1.",
                "script",
            ),
            (
                "ERR user_script:1: Script attempted to access nonexistent global variable 'x' script: 42dc45, on @user_script:1.",
                "script",
            ),
            (
                "WRONGPASS invalid username-password pair or user is disabled.",
                "auth",
            ),
            ("NOAUTH Authentication required.", "auth"),
            (
                "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
                "misconf",
            ),
            ("ERR unknown command 'ZRANGE'", "other"),
            ("SOMENEWCODE from a later Redis", "other"),
            (
                "WRONGTYPE Operation against a key holding the wrong kind of value script: 37df4d, on @user_script:1.",
                "corrupt",
            ),
        ] {
            let error = redis_error("events:{arena:main:m1}", reply_error(line));
            assert_eq!((error.class(), error.label()), (Permanent, label), "{line}");
            assert!(!error.is_transient());
            // The message is Redis's own, code first.
            assert!(error.to_string().contains(line), "{line}: {error}");
        }
    }

    #[test]
    fn outcomes_map_to_errors() {
        let key = MatchKey::new("arena", "main", "m1").unwrap();
        let batch = AppendBatch {
            key,
            first_sequence: 5,
            events: Vec::new(),
            head_tick: 9,
            epoch: Some(4),
            renew_lease: None,
        };
        assert_eq!(
            append_outcome(&batch, 0, 3, 9),
            Ok(Head {
                next_sequence: 3,
                tick: 9,
                status: MatchStatus::Live
            })
        );
        assert!(matches!(
            append_outcome(&batch, 2, 3, 0),
            Err(StoreError::Conflict {
                expected: 3,
                found: 5,
                ..
            })
        ));
        assert!(matches!(
            append_outcome(&batch, 3, 2, 0),
            Err(StoreError::Diverged { sequence: 2, .. })
        ));
        assert!(matches!(
            append_outcome(&batch, 4, 0, 0),
            Err(StoreError::UnknownMatch(_))
        ));
        assert_eq!(
            append_outcome(&batch, 7, 6, 0),
            Err(StoreError::Fenced {
                key: "arena:main:m1".to_owned(),
                epoch: 4,
                current: 6
            })
        );
        assert!(matches!(
            append_outcome(&batch, 9, 0, 0),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
