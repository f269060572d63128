//! The embedded in-memory store: the default backend, and the reference
//! behaviour the Redis store is tested against.
//!
//! It keeps every rule of the [`super`] traits (gap-free heads, idempotent
//! retries, snapshot compare-and-set, forward-only positions, leases with
//! fencing and the node directory, on a monotonic clock) but nothing
//! survives the process.
//!
//! For long runs it can free finished matches: [`MemoryStore::with_retention`]
//! drops a match's log, snapshot and positions a while after
//! [`EventStore::finish`], keeping only its head (next sequence, tick,
//! `Ended`), so the match is still known as over and its sequences never
//! restart. Reading a freed log is a [`StoreError::Trimmed`]. Expired
//! matches are freed by the next store call that changes something (append,
//! create, finish), so an idle store frees nothing until it is used again.
//! [`EventStore::trim`] works as on Redis (the engine calls it when
//! `engine.trim_events_below_snapshot` is on).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

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
    /// Finished and freed: only the head is kept.
    freed: bool,
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
            freed: false,
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

    /// Drops everything but the head: the log (as if trimmed to its end),
    /// the snapshot and the positions.
    fn free(&mut self) {
        self.retained_from = self.next_sequence();
        self.events = VecDeque::new();
        self.snapshot = None;
        self.positions = HashMap::new();
        self.freed = true;
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
    inner: Arc<Mutex<Inner>>,
    /// How long a finished match keeps its log; `None` = for ever.
    retain_finished: Option<Duration>,
    /// Leases and the node directory. Lock order: `inner` first.
    leases: Arc<Mutex<Leases>>,
}

#[derive(Debug, Default)]
struct Inner {
    matches: BTreeMap<MatchKey, MatchRecord>,
    /// Finished matches not freed yet, in the order they finished (so in
    /// the order they expire: the retention is the same for all).
    finished: VecDeque<(Instant, MatchKey)>,
}

impl Inner {
    /// Frees the finished matches whose retention ran out by `now`.
    fn free_expired(&mut self, retain: Option<Duration>, now: Instant) {
        let Some(retain) = retain else { return };
        while let Some((at, _)) = self.finished.front()
            && now.saturating_duration_since(*at) >= retain
        {
            if let Some((_, key)) = self.finished.pop_front()
                && let Some(record) = self.matches.get_mut(&key)
            {
                record.free();
            }
        }
    }
}

impl MemoryStore {
    /// An empty store that keeps every match, finished ones included, for
    /// the life of the process (what tests and replays of finished matches
    /// need).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that frees a finished match's log, snapshot and
    /// positions `retain_finished` after it finished (at once for zero),
    /// keeping its head. For servers that run for long.
    pub fn with_retention(retain_finished: Duration) -> Self {
        Self {
            retain_finished: Some(retain_finished),
            ..Self::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave a record half-written
        // (every mutation is a single push/insert), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lock, after freeing what expired.
    fn lock_for_write(&self) -> MutexGuard<'_, Inner> {
        let mut inner = self.lock();
        inner.free_expired(self.retain_finished, Instant::now());
        inner
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
        let mut inner = self.lock();
        let record = inner
            .matches
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

impl MemoryStore {
    /// Marks a match ended or failed; its retention starts.
    fn mark_over(
        &self,
        key: &MatchKey,
        status: MatchStatus,
        failure: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut inner = self.lock_for_write();
        let record = inner
            .matches
            .get_mut(key)
            .ok_or_else(|| StoreError::UnknownMatch(key.to_string()))?;
        if record.status != MatchStatus::Live {
            return Ok(()); // a retry: its retention already runs
        }
        record.status = status;
        record.failure = failure.map(str::to_owned);
        if self.retain_finished.is_some() {
            inner.finished.push_back((now, key.clone()));
            inner.free_expired(self.retain_finished, now);
        }
        Ok(())
    }
}

impl EventStore for MemoryStore {
    async fn append(
        &self,
        batches: &[AppendBatch],
    ) -> Result<Vec<Result<Head, StoreError>>, StoreError> {
        let mut inner = self.lock_for_write();
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
                let record = inner
                    .matches
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
        match self.lock().matches.get(key) {
            Some(record) => record.read(key, from, limit),
            None => Ok(Vec::new()),
        }
    }

    async fn head(&self, key: &MatchKey) -> Result<Option<Head>, StoreError> {
        Ok(self.lock().matches.get(key).map(MatchRecord::head))
    }

    async fn create(&self, key: &MatchKey, setup: &[u8]) -> Result<(), StoreError> {
        let mut inner = self.lock_for_write();
        if let Some(existing) = inner.matches.get(key) {
            return Err(StoreError::Conflict {
                key: key.to_string(),
                expected: existing.next_sequence(),
                found: 0,
            });
        }
        inner
            .matches
            .insert(key.clone(), MatchRecord::new(setup.to_vec()));
        Ok(())
    }

    async fn load_setup(&self, key: &MatchKey) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().matches.get(key).map(|r| r.setup.clone()))
    }

    async fn fail(&self, key: &MatchKey, reason: &str) -> Result<(), StoreError> {
        self.mark_over(key, MatchStatus::Failed, Some(reason))
    }

    async fn failure(&self, key: &MatchKey) -> Result<Option<String>, StoreError> {
        Ok(self.lock().matches.get(key).and_then(|r| r.failure.clone()))
    }

    async fn finish(&self, key: &MatchKey) -> Result<(), StoreError> {
        self.mark_over(key, MatchStatus::Ended, None)
    }

    async fn live_matches(&self, domain: &str, edition: &str) -> Result<Vec<MatchKey>, StoreError> {
        let inner = self.lock();
        let live: BTreeSet<&MatchKey> = inner
            .matches
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
            if newer_stored || record.freed {
                return Ok(false);
            }
            record.snapshot = Some(snapshot.clone());
            Ok(true)
        })
    }

    async fn load_snapshot(&self, key: &MatchKey) -> Result<Option<Snapshot>, StoreError> {
        Ok(self
            .lock()
            .matches
            .get(key)
            .and_then(|r| r.snapshot.clone()))
    }
}

impl PositionStore for MemoryStore {
    async fn load_position(&self, handler: &str, key: &MatchKey) -> Result<u64, StoreError> {
        key.position_key(handler)?;
        Ok(self
            .lock()
            .matches
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(root: &str) -> MatchKey {
        MatchKey::new("arena", "main", root).unwrap()
    }

    fn event(sequence: u64) -> RecordedEvent {
        RecordedEvent {
            sequence,
            tick: sequence,
            payload: vec![sequence as u8; 64],
        }
    }

    /// Creates `root` with `events` events and a snapshot at sequence 2.
    async fn played(store: &MemoryStore, root: &str, events: u64) -> MatchKey {
        let key = key(root);
        store.create(&key, &[]).await.unwrap();
        let batch = AppendBatch {
            key: key.clone(),
            first_sequence: 0,
            events: (0..events).map(event).collect(),
            head_tick: events,
            epoch: None,
            renew_lease: None,
        };
        store.append(&[batch]).await.unwrap().remove(0).unwrap();
        let snapshot = Snapshot::new(2, 2, vec![1; 32], 1);
        assert!(store.save_snapshot(&key, &snapshot).await.unwrap());
        key
    }

    #[tokio::test]
    async fn a_finished_match_is_freed_at_once_with_zero_retention() {
        let store = MemoryStore::with_retention(Duration::ZERO);
        let key = played(&store, "m1", 5).await;
        store.finish(&key).await.unwrap();

        // The head stays: the match is known as over, at its sequence.
        let head = store.head(&key).await.unwrap().unwrap();
        assert_eq!(head.next_sequence, 5);
        assert_eq!(head.tick, 5);
        assert_eq!(head.status, MatchStatus::Ended);
        // Log and snapshot are gone; reading the log says so.
        assert_eq!(store.load_snapshot(&key).await.unwrap(), None);
        assert!(matches!(
            store.read(&key, 0, 10).await,
            Err(StoreError::Trimmed {
                retained_from: 5,
                ..
            })
        ));
        assert!(store.lock().matches[&key].events.is_empty());
        // A late snapshot is not stored again, and creating it anew conflicts.
        let late = Snapshot::new(5, 5, vec![2; 32], 1);
        assert!(!store.save_snapshot(&key, &late).await.unwrap());
        assert!(matches!(
            store.create(&key, &[]).await,
            Err(StoreError::Conflict { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_match_is_kept_for_its_retention_then_freed() {
        let store = MemoryStore::with_retention(Duration::from_secs(60));
        let old = played(&store, "old", 4).await;
        let live = played(&store, "live", 4).await;
        store.finish(&old).await.unwrap();

        tokio::time::advance(Duration::from_secs(59)).await;
        let other = played(&store, "other", 1).await;
        assert_eq!(store.read(&old, 0, 10).await.unwrap().len(), 4);
        assert!(store.load_snapshot(&old).await.unwrap().is_some());

        tokio::time::advance(Duration::from_secs(1)).await;
        // The next change frees what expired.
        store.finish(&other).await.unwrap();
        assert!(store.read(&old, 0, 10).await.is_err());
        assert_eq!(store.load_snapshot(&old).await.unwrap(), None);
        // Only finished matches are freed, and only once their time is up.
        assert_eq!(store.read(&live, 0, 10).await.unwrap().len(), 4);
        assert_eq!(store.read(&other, 0, 10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_default_store_keeps_finished_matches() {
        let store = MemoryStore::new();
        let key = played(&store, "m1", 3).await;
        store.finish(&key).await.unwrap();
        played(&store, "m2", 1).await;
        assert_eq!(store.read(&key, 0, 10).await.unwrap().len(), 3);
        assert!(store.load_snapshot(&key).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn trimming_removes_events_below_the_snapshot_only() {
        let store = MemoryStore::new();
        let key = played(&store, "m1", 5).await;
        let trimmed = store.trim(&key, 5, &[]).await.unwrap();
        assert_eq!(trimmed.retained_from, 2, "held back by the snapshot at 2");
        assert_eq!(trimmed.removed, 2);
        assert!(store.read(&key, 0, 10).await.is_err());
        assert_eq!(store.read(&key, 2, 10).await.unwrap().len(), 3);
    }
}
