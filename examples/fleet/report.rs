//! Output: one clock for the whole run, timestamped progress lines on
//! stderr, distributions, and the final `summary:` line on stdout.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Starts the run's clock (the first call wins).
pub fn start_clock() {
    let _ = START.get_or_init(Instant::now);
}

/// The run's clock origin.
pub fn origin() -> Instant {
    *START.get_or_init(Instant::now)
}

/// Milliseconds since the clock started.
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// `at` as milliseconds since the clock started (0 before it).
pub fn ms_at(at: Instant) -> u64 {
    at.saturating_duration_since(origin()).as_millis() as u64
}

/// A progress line on stderr, stamped with the run's clock.
pub fn progress(line: impl AsRef<str>) {
    eprintln!("[{:>6.1}s] {}", now_ms() as f64 / 1000.0, line.as_ref());
}

/// Samples in milliseconds, summarised as p50, p99 and max.
#[derive(Debug, Clone, Default)]
pub struct Distribution {
    samples: Vec<u64>,
}

impl Distribution {
    /// Adds one sample.
    pub fn add(&mut self, ms: u64) {
        self.samples.push(ms);
    }

    /// The `q` quantile (nearest rank), 0 without samples.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.samples.is_empty() {
            return 0;
        }
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    /// The largest sample, 0 without samples.
    pub fn max(&self) -> u64 {
        self.samples.iter().copied().max().unwrap_or(0)
    }
}

/// The figures of one run.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub nodes: usize,
    pub killed: usize,
    pub drained: usize,
    pub matches: usize,
    pub takeovers: usize,
    pub takeover: Distribution,
    pub migrations: usize,
    pub migration_pause: Distribution,
    pub sessions_lost: usize,
    pub events_lost: u64,
    pub log_gaps: usize,
}

impl Summary {
    /// The final line, in the documented format.
    pub fn line(&self) -> String {
        let mut line = String::from("summary:");
        let _ = write!(
            line,
            " nodes={} killed={} drained={} matches={} takeovers={} takeover_p50_ms={} \
             takeover_p99_ms={} takeover_max_ms={} migrations={} migration_pause_p50_ms={} \
             migration_pause_p99_ms={} migration_pause_max_ms={} sessions_lost={} events_lost={} \
             log_gaps={}",
            self.nodes,
            self.killed,
            self.drained,
            self.matches,
            self.takeovers,
            self.takeover.quantile(0.5),
            self.takeover.quantile(0.99),
            self.takeover.max(),
            self.migrations,
            self.migration_pause.quantile(0.5),
            self.migration_pause.quantile(0.99),
            self.migration_pause.max(),
            self.sessions_lost,
            self.events_lost,
            self.log_gaps,
        );
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let mut d = Distribution::default();
        assert_eq!((d.quantile(0.5), d.max()), (0, 0));
        for ms in [30, 10, 20, 40] {
            d.add(ms);
        }
        assert_eq!(d.quantile(0.5), 20);
        assert_eq!(d.quantile(0.99), 40);
        assert_eq!(d.max(), 40);
    }
}
