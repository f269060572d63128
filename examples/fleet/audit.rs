//! The audit at the end of a run, read from Redis: every event log of the
//! run's edition is gap-free from sequence 0 up to its stored head, and
//! every event a client saw is stored, under its sequence, exactly as the
//! client saw it (a node that sent an event it never stored, or a new
//! owner that wrote something else under that sequence, both show here).

use std::collections::HashMap;

use anyhow::Context;
use tickforge::arena::Arena;
use tickforge::engine::decode_event;
use tickforge::store::MatchKey;

use crate::bots::envelope_hash;

/// What the audit found.
#[derive(Debug, Clone, Default)]
pub struct Findings {
    /// Event logs read.
    pub logs: usize,
    /// Events read.
    pub events: u64,
    /// Logs whose sequences are not exactly 0, 1, … up to the head.
    pub log_gaps: usize,
    /// Events a client saw that are missing from the log or stored
    /// differently.
    pub events_lost: u64,
    /// Stored events that did not decode.
    pub undecodable: u64,
    /// A few descriptions of what was wrong.
    pub notes: Vec<String>,
}

impl Findings {
    fn note(&mut self, text: String) {
        if self.notes.len() < 10 {
            self.notes.push(text);
        }
    }
}

/// Reads every event log of `edition` and checks it against `seen`
/// (match id → sequence → hash of the envelope a client received).
pub async fn audit(
    url: &str,
    edition: &str,
    seen: &HashMap<String, HashMap<u64, u64>>,
) -> anyhow::Result<Findings> {
    let client = redis::Client::open(url).context("parsing the Redis URL")?;
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting the audit to Redis")?;
    let prefix = format!("events:{{arena:{edition}:");
    let mut roots = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut con)
            .await
            .context("SCAN for event logs")?;
        roots.extend(keys.iter().filter_map(|k| {
            k.strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix('}'))
                .map(str::to_owned)
        }));
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let arena = Arena::default();
    let mut findings = Findings::default();
    for root in seen.keys() {
        if !roots.contains(root) {
            findings.events_lost += seen[root].len() as u64;
            findings.note(format!("{root}: clients saw events, Redis has no log"));
        }
    }
    for root in &roots {
        let key = MatchKey::new("arena", edition, root).context("a run's match key")?;
        let stored: Vec<(Vec<u8>, f64)> = redis::cmd("ZRANGE")
            .arg(key.events_key())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut con)
            .await
            .with_context(|| format!("reading {}", key.events_key()))?;
        let head: Option<u64> = redis::cmd("HGET")
            .arg(key.meta_key())
            .arg("head")
            .query_async(&mut con)
            .await
            .with_context(|| format!("reading {}", key.meta_key()))?;
        findings.logs += 1;
        findings.events += stored.len() as u64;
        let consecutive = stored
            .iter()
            .enumerate()
            .all(|(i, (_, score))| *score == i as f64);
        if !consecutive || head.is_some_and(|h| h != stored.len() as u64) {
            findings.log_gaps += 1;
            findings.note(format!(
                "{root}: {} events, head {head:?}, sequences not 0..{}",
                stored.len(),
                stored.len()
            ));
        }
        let Some(seen) = seen.get(root) else { continue };
        let mut hashes = HashMap::with_capacity(stored.len());
        for (payload, score) in &stored {
            match decode_event(&arena, payload) {
                Ok(envelope) => {
                    hashes.insert(envelope.sequence, envelope_hash(&envelope));
                }
                Err(error) => {
                    findings.undecodable += 1;
                    findings.note(format!("{root}: event {score} does not decode: {error}"));
                }
            }
        }
        let mut lost = 0u64;
        for (sequence, hash) in seen {
            if hashes.get(sequence) != Some(hash) {
                lost += 1;
            }
        }
        if lost > 0 {
            findings.events_lost += lost;
            findings.note(format!(
                "{root}: {lost} events clients saw are missing or different in Redis (log of {})",
                stored.len()
            ));
        }
    }
    Ok(findings)
}
