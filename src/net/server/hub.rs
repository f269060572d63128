//! Per-match data shared by its connections, and forgetting matches that left
//! the engine.

use super::*;

/// Per-match data shared by its connections: each distinct view of the
/// latest tick encoded once, each state datagram built once per
/// (view, baseline), however many clients need it, and the way into the
/// match's state fan-out.
pub(super) struct Hub<G: Game> {
    pub(super) tick: std::sync::Mutex<TickCache>,
    /// Whether players found in the match without a slot got their grace window.
    pub(super) adopted: std::sync::atomic::AtomicBool,
    /// Where sessions hand their state stream to the match's fan-out
    /// (`None` while no fan-out runs).
    pub(super) fanout: std::sync::Mutex<Option<FanoutJoin<G>>>,
}

impl<G: Game> Default for Hub<G> {
    fn default() -> Self {
        Self {
            tick: std::sync::Mutex::default(),
            adopted: std::sync::atomic::AtomicBool::default(),
            fanout: std::sync::Mutex::new(None),
        }
    }
}

/// What a hub has built for one tick.
#[derive(Debug, Default)]
pub(super) struct TickCache {
    pub(super) tick: Option<Tick>,
    /// Encoded views by view key (`None` when the view could not be encoded).
    pub(super) views: std::collections::HashMap<Viewer, Option<Arc<[u8]>>>,
    /// State messages by view key and baseline tick: (datagram bytes, is a delta).
    pub(super) messages: std::collections::HashMap<(Viewer, Option<Tick>), (Bytes, bool)>,
}

impl<G: Game> Hub<G> {
    /// Locks the way into the fan-out (sessions joining, the fan-out ending).
    pub(super) fn fanout(&self) -> std::sync::MutexGuard<'_, Option<FanoutJoin<G>>> {
        // Each holder does one send or one swap: a panic cannot leave it half done.
        self.fanout.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks the tick cache, emptying it when `tick` is a newer tick.
    pub(super) fn at(&self, tick: Tick) -> std::sync::MutexGuard<'_, TickCache> {
        let mut cache = self.tick.lock().unwrap_or_else(|e| e.into_inner());
        if cache.tick != Some(tick) {
            cache.tick = Some(tick);
            cache.views.clear();
            cache.messages.clear();
        }
        cache
    }

    /// The encoded view `key` of `tick`, built by `encode` at most once per tick.
    pub(super) fn view(
        &self,
        tick: Tick,
        key: Viewer,
        encode: impl FnOnce() -> Option<Arc<[u8]>>,
    ) -> Option<Arc<[u8]>> {
        self.at(tick)
            .views
            .entry(key)
            .or_insert_with(encode)
            .clone()
    }

    /// The state message for view `key` of `tick` against `baseline`,
    /// built by `build` at most once per tick.
    pub(super) fn message(
        &self,
        tick: Tick,
        key: Viewer,
        baseline: Option<Tick>,
        build: impl FnOnce() -> Option<(Bytes, bool)>,
    ) -> Option<(Bytes, bool)> {
        let mut cache = self.at(tick);
        if let Some(message) = cache.messages.get(&(key, baseline)) {
            return Some(message.clone());
        }
        let message = build()?;
        cache.messages.insert((key, baseline), message.clone());
        Some(message)
    }
}

/// The hub of match `root`.
pub(super) fn ensure_hub<G: Game, S: Store>(shared: &Shared<G, S>, root: &Arc<str>) -> Arc<Hub<G>> {
    match shared.hubs.entry(root.clone()) {
        dashmap::mapref::entry::Entry::Occupied(hub) => hub.get().clone(),
        dashmap::mapref::entry::Entry::Vacant(vacant) => {
            shared.stats.matches_tracked.fetch_add(1, Relaxed);
            vacant.insert(Arc::default()).clone()
        }
    }
}

/// Forgets the hub and the slots of a match that ended.
pub(super) fn forget_match<G: Game, S: Store>(shared: &Shared<G, S>, root: &str) {
    shared.slots().remove_match(root);
    if shared.hubs.remove(root).is_some() {
        shared.stats.matches_tracked.fetch_sub(1, Relaxed);
    }
}

/// Forgets, every [`SWEEP_EVERY`], the hubs and slots of matches the
/// engine no longer hosts (they ended, with or without anyone connected;
/// an ended match is never hosted again). Stops at shutdown, so slots
/// survive it.
pub(super) async fn forget_ended_matches<G: Game, S: Store>(shared: Arc<Shared<G, S>>) {
    let mut shutdown = Shutdown {
        rx: shared.shutdown.clone(),
    };
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.recv() => return,
        }
        let gone: Vec<Arc<str>> = shared
            .hubs
            .iter()
            .filter(|hub| !shared.engine.is_hosted(hub.key()))
            .map(|hub| hub.key().clone())
            .collect();
        for root in gone {
            tracing::debug!(r#match = %root, "match left the engine; its slots are forgotten");
            forget_match(&shared, &root);
        }
    }
}
