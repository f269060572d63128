//! The embedded in-memory store: the default backend, and the reference
//! behaviour the Redis store is tested against.
//!
//! It keeps every rule of the [`super`] traits (gap-free heads, idempotent
//! retries, snapshot compare-and-set, forward-only positions, leases with
//! fencing and the node directory, on a monotonic clock) but nothing
//! survives the process.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    AppendBatch, EventStore, Head, MatchKey, MatchStatus, PositionStore, RecordedEvent, Snapshot,
    SnapshotStore, StoreError, Trimmed,
};

mod lease;

use lease::Leases;

#[derive(Debug)]
struct MatchRecord {
    /// Events `retained_from..`; the ones below were trimmed.
    events: VecDeque<RecordedEvent>,
    retained_from: u64,
    tick: u64,
    status: MatchStatus,
    snapshot: Option<Snapshot>,
    positions: HashMap<String, u64>,
    setup: Vec<u8>,
    failure: Option<String>,
}

impl MatchRecord {
    fn new(setup: Vec<u8>) -> Self {
        Self {
            setup,
            failure: None,
            events: VecDeque::new(),
            retained_from: 0,
            tick: 0,
            status: MatchStatus::Live,
            snapshot: None,
            positions: HashMap::new(),
        }
    }

    fn next_sequence(&self) -> u64 {
        self.retained_from + self.events.len() as u64
    }

    fn head(&self) -> Head {
        Head {
            next_sequence: self.next_sequence(),
            tick: self.tick,
            status: self.status,
        }
    }

    fn append(&mut self, key: &MatchKey, batch: &AppendBatch) -> Result<Head, StoreError> {
        let head = self.next_sequence();
        if batch.first_sequence > head {
            return Err(StoreError::Conflict {
                key: key.to_string(),
                expected: head,
                found: batch.first_sequence,
            });
        }
        for (offset, event) in batch.events.iter().enumerate() {
            let sequence = batch.first_sequence + offset as u64;
            if event.sequence != sequence {
                return Err(StoreError::Corrupt {
                    key: key.events_key(),
                    reason: format!(
                        "batch is not consecutive: event {} at position {sequence}",
                        event.sequence
                    ),
                });
            }
            if sequence < self.retained_from {
                // Cannot be compared any more: only a stale writer gets here.
                return Err(StoreError::Trimmed {
                    key: key.to_string(),
                    requested: batch.first_sequence,
                    retained_from: self.retained_from,
                });
            }
            if let Some(stored) = self.events.get((sequence - self.retained_from) as usize)
                && stored.payload != event.payload
            {
                return Err(StoreError::Diverged {
                    key: key.to_string(),
                    sequence,
                });
            }
        }
        if batch.first_sequence < head && batch.events.is_empty() {
            // An empty batch from a writer that is behind: it owns nothing here.
            return Err(StoreError::Conflict {
                key: key.to_string(),
                expected: head,
                found: batch.first_sequence,
            });
        }
        let skip = (head - batch.first_sequence) as usize;
        // The only copy of the payloads: the store keeps them.
        self.events.extend(batch.events.iter().skip(skip).cloned());
        self.tick = self.tick.max(batch.head_tick);
        Ok(self.head())
    }

    fn read(
        &self,
        key: &MatchKey,
        from: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if from < self.retained_from {
            return Err(StoreError::Trimmed {
                key: key.to_string(),
                requested: from,
                retained_from: self.retained_from,
            });
        }
        let start = usize::try_from(from - self.retained_from)
            .unwrap_or(usize::MAX)
            .min(self.events.len());
        Ok(self.events.range(start..).take(limit).cloned().collect())
    }

    fn trim(&mut self, below: u64, keep_for: &[String]) -> Trimmed {
        let snapshot = self.snapshot.as_ref().map_or(0, |s| s.sequence);
        let limit = keep_for
            .iter()
            .map(|handler| self.positions.get(handler).copied().unwrap_or(0))
            .fold(below.min(snapshot), u64::min)
            .min(self.next_sequence());
        let removed = limit.saturating_sub(self.retained_from);
        self.events.drain(..removed as usize);
        self.retained_from += removed;
        Trimmed {
            retained_from: self.retained_from,
            removed,
        }
    }
}

/// An in-process store; clones share the same data.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    matches: Arc<Mutex<BTreeMap<MatchKey, MatchRecord>>>,
    /// Leases and the node directory. Lock order: `matches` first.
    leases: Arc<Mutex<Leases>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<MatchKey, MatchRecord>> {
        // A panic while holding this lock cannot leave a record half-written
        // (every mutation is a single push/insert), so poisoning is ignored.
        self.matches.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_leases(&self) -> MutexGuard<'_, Leases> {
        // Every lease mutation is a single insert: poisoning is ignored.
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_match<T>(
        &self,
        key: &MatchKey,
        f: impl FnOnce(&mut MatchRecord) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut matches = self.lock();
        let record = matches
            .get_mut(key)
            .ok_or_else(|| StoreError::UnknownMatch(key.to_string()))?;
        f(record)
    }

    /// [`MemoryStore::with_match`] for a write fenced by `epoch`: the
    /// match's lease must be at that epoch, and stays there (its lock is
    /// held) until the write is done.
    fn with_fenced_match<T>(
        &self,
        key: &MatchKey,
        epoch: Option<u64>,
        f: impl FnOnce(&mut MatchRecord) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with_match(key, |record| {
            let _leases = match epoch {
                Some(epoch) => {
                    let leases = self.lock_leases();
                    leases.check_fence(key, epoch)?;
                    Some(leases)
                }
                None => None,
            };
            f(record)
        })
    }
}

impl EventStore for MemoryStore {
    async fn append(
        &self,
        batches: &[AppendBatch],
    ) -> Result<Vec<Result<Head, StoreError>>, StoreError> {
        let mut matches = self.lock();
        // Held for the whole call when a batch is fenced: no lease moves
        // between a batch's check and its write.
        let mut leases = batches
            .iter()
            .any(|b| b.epoch.is_some())
            .then(|| self.lock_leases());
        Ok(batches
            .iter()
            .map(|batch| {
                let key = &batch.key;
                let record = matches
                    .get_mut(key)
                    .ok_or_else(|| StoreError::UnknownMatch(key.to_string()))?;
                let Some((epoch, leases)) = batch.epoch.zip(leases.as_deref_mut()) else {
                    return record.append(key, batch);
                };
                leases.check_fence(key, epoch)?;
                let head = record.append(key, batch)?;
                if let Some(ttl) = batch.renew_lease {
                    leases.extend(key, ttl);
                }
                Ok(head)
            })
            .collect())
    }

    async fn read(
        &self,
        key: &MatchKey,
        from: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        match self.lock().get(key) {
            Some(record) => record.read(key, from, limit),
            None => Ok(Vec::new()),
        }
    }

    async fn head(&self, key: &MatchKey) -> Result<Option<Head>, StoreError> {
        Ok(self.lock().get(key).map(MatchRecord::head))
    }

    async fn create(&self, key: &MatchKey, setup: &[u8]) -> Result<(), StoreError> {
        let mut matches = self.lock();
        if let Some(existing) = matches.get(key) {
            return Err(StoreError::Conflict {
                key: key.to_string(),
                expected: existing.next_sequence(),
                found: 0,
            });
        }
        matches.insert(key.clone(), MatchRecord::new(setup.to_vec()));
        Ok(())
    }

    async fn load_setup(&self, key: &MatchKey) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().get(key).map(|r| r.setup.clone()))
    }

    async fn fail(&self, key: &MatchKey, reason: &str) -> Result<(), StoreError> {
        self.with_match(key, |record| {
            record.status = MatchStatus::Failed;
            record.failure = Some(reason.to_owned());
            Ok(())
        })
    }

    async fn failure(&self, key: &MatchKey) -> Result<Option<String>, StoreError> {
        Ok(self.lock().get(key).and_then(|r| r.failure.clone()))
    }

    async fn finish(&self, key: &MatchKey) -> Result<(), StoreError> {
        self.with_match(key, |record| {
            record.status = MatchStatus::Ended;
            Ok(())
        })
    }

    async fn live_matches(&self, domain: &str, edition: &str) -> Result<Vec<MatchKey>, StoreError> {
        let matches = self.lock();
        let live: BTreeSet<&MatchKey> = matches
            .iter()
            .filter(|(key, record)| {
                key.domain() == domain
                    && key.edition() == edition
                    && record.status == MatchStatus::Live
            })
            .map(|(key, _)| key)
            .collect();
        Ok(live.into_iter().cloned().collect())
    }

    async fn trim_fenced(
        &self,
        key: &MatchKey,
        below: u64,
        keep_for: &[String],
        epoch: Option<u64>,
    ) -> Result<Trimmed, StoreError> {
        for handler in keep_for {
            key.position_key(handler)?;
        }
        self.with_fenced_match(key, epoch, |record| Ok(record.trim(below, keep_for)))
    }
}

impl SnapshotStore for MemoryStore {
    async fn save_fenced_snapshot(
        &self,
        key: &MatchKey,
        snapshot: &Snapshot,
        epoch: Option<u64>,
    ) -> Result<bool, StoreError> {
        self.with_fenced_match(key, epoch, |record| {
            let newer_stored = record
                .snapshot
                .as_ref()
                .is_some_and(|s| (s.sequence, s.tick) > (snapshot.sequence, snapshot.tick));
            if newer_stored {
                return Ok(false);
            }
            record.snapshot = Some(snapshot.clone());
            Ok(true)
        })
    }

    async fn load_snapshot(&self, key: &MatchKey) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.lock().get(key).and_then(|r| r.snapshot.clone()))
    }
}

impl PositionStore for MemoryStore {
    async fn load_position(&self, handler: &str, key: &MatchKey) -> Result<u64, StoreError> {
        key.position_key(handler)?;
        Ok(self
            .lock()
            .get(key)
            .and_then(|r| r.positions.get(handler).copied())
            .unwrap_or(0))
    }

    async fn advance_position(
        &self,
        handler: &str,
        key: &MatchKey,
        to: u64,
    ) -> Result<u64, StoreError> {
        key.position_key(handler)?;
        self.with_match(key, |record| {
            let position = record.positions.entry(handler.to_owned()).or_insert(0);
            *position = (*position).max(to);
            Ok(*position)
        })
    }
}
