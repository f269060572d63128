//! Watches the run's matches in Redis every 20 ms: each match's lease
//! (`owner:{d:e:r}`: node, epoch) and head (`meta:{d:e:r}`: next sequence,
//! tick), kept as a history of changes. The takeover and migration figures
//! are read from it afterwards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tickforge::store::MatchKey;
use tickforge::store::keys::index_key;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::report::now_ms;

/// How often the leases and heads are read.
const POLL: Duration = Duration::from_millis(20);

/// A match's lease and head at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// When (ms since the run started).
    pub at: u64,
    /// The lease holder ("" when released or unknown).
    pub node: String,
    /// The lease epoch.
    pub epoch: u64,
    /// The next sequence.
    pub head: u64,
    /// The head tick.
    pub tick: u64,
}

/// What the watcher saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Each match's observations, one per change.
    pub history: HashMap<String, Vec<Observation>>,
}

impl Seen {
    /// The lease holder of `root` at `at` (the last observation before).
    pub fn owner_at(&self, root: &str, at: u64) -> Option<&Observation> {
        self.history
            .get(root)?
            .iter()
            .take_while(|o| o.at <= at)
            .last()
    }

    /// How many matches each node holds at the latest observation.
    pub fn matches_per_node(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for observations in self.history.values() {
            if let Some(last) = observations.last() {
                *counts.entry(last.node.clone()).or_insert(0) += 1;
            }
        }
        counts
    }
}

/// The running watcher.
pub struct Watcher {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
    /// What it saw so far.
    pub seen: Arc<Mutex<Seen>>,
    /// Failed polls.
    pub errors: Arc<AtomicU64>,
}

impl Watcher {
    /// Connects and starts polling the matches listed in the edition's
    /// index (`matches:{arena:<edition>}`).
    pub async fn start(url: &str, edition: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).context("parsing the Redis URL")?;
        let con = client
            .get_multiplexed_async_connection()
            .await
            .context("connecting the watcher to Redis")?;
        let (stop, stop_rx) = watch::channel(false);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let errors = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(poll(
            con,
            edition.to_owned(),
            seen.clone(),
            errors.clone(),
            stop_rx,
        ));
        Ok(Self {
            task,
            stop,
            seen,
            errors,
        })
    }

    /// Stops polling and hands over what was seen.
    pub async fn stop(self) -> Seen {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

async fn poll(
    mut con: redis::aio::MultiplexedConnection,
    edition: String,
    seen: Arc<Mutex<Seen>>,
    errors: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    let index = index_key("arena", &edition);
    let mut roots: Vec<String> = Vec::new();
    let mut listed_at = 0u64;
    let mut interval = tokio::time::interval(POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        let now = now_ms();
        if roots.is_empty() || now >= listed_at + 500 {
            match redis::cmd("SMEMBERS")
                .arg(&index)
                .query_async::<Vec<String>>(&mut con)
                .await
            {
                Ok(mut listed) => {
                    // Finished matches may leave the index: keep watching them.
                    listed.retain(|r| !roots.contains(r));
                    roots.extend(listed);
                    listed_at = now;
                }
                Err(_) => {
                    errors.fetch_add(1, Relaxed);
                }
            }
        }
        if roots.is_empty() {
            continue;
        }
        let keys: Vec<MatchKey> = roots
            .iter()
            .filter_map(|r| MatchKey::new("arena", &edition, r).ok())
            .collect();
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("HMGET")
                .arg(key.owner_key())
                .arg("node")
                .arg("epoch");
            pipe.cmd("HMGET")
                .arg(key.meta_key())
                .arg("head")
                .arg("tick");
        }
        let replies: Vec<Vec<Option<String>>> = match pipe.query_async(&mut con).await {
            Ok(replies) => replies,
            Err(_) => {
                errors.fetch_add(1, Relaxed);
                continue;
            }
        };
        let at = now_ms();
        let number = |v: Option<&Option<String>>| {
            v.and_then(|v| v.as_deref())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        for (key, pair) in keys.iter().zip(replies.chunks(2)) {
            let [owner, meta] = pair else { continue };
            let observation = Observation {
                at,
                node: owner.first().cloned().flatten().unwrap_or_default(),
                epoch: number(owner.get(1)),
                head: number(meta.first()),
                tick: number(meta.get(1)),
            };
            let history = seen.history.entry(key.root().to_owned()).or_default();
            let unchanged = history.last().is_some_and(|last| {
                (last.node.as_str(), last.epoch, last.head, last.tick)
                    == (
                        observation.node.as_str(),
                        observation.epoch,
                        observation.head,
                        observation.tick,
                    )
            });
            if !unchanged {
                history.push(observation);
            }
        }
    }
}
