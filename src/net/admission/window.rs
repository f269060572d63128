//! The last second of load samples, and the [`Ceiling`] the node learns
//! from sustained overload.

use std::time::Duration;

use super::{AdmissionLimits, Full, Load, RAMP_DIVISOR, RAMP_MIN};

/// The CPU and busy figures published are the highest of this many samples
/// (the last second): joins and bursts make a single quarter second swing
/// widely, and admitting on a trough overshoots.
const PEAK_OF: usize = 4;

/// What the node learned about its own capacity: when the samples of a
/// whole second find it over a headroom limit, it admits no more than seven eighths of the
/// connections then open (at least [`RAMP_MIN`]); each calm sample after
/// that raises the ceiling by one connection (four a second).
///
/// Projections cannot see everything: a node that shares its cores with
/// other work gets its full share of CPU until it nears that share, so its
/// busy figure stays low and then jumps. Admitting again as soon as it
/// dips (when refused clients stop knocking, say) would overload it again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ceiling(Option<usize>);

impl Ceiling {
    /// The connections admitted up to, if the node has been overloaded.
    pub fn get(self) -> Option<usize> {
        self.0
    }

    /// The ceiling after a sample with `connections` open that was
    /// `overloaded` (over a headroom limit) or not.
    pub fn after_sample(self, connections: usize, overloaded: bool) -> Self {
        match (self.0, overloaded) {
            (current, true) => {
                let lowered = (connections - connections / RAMP_DIVISOR).max(RAMP_MIN);
                Self(Some(current.map_or(lowered, |c| c.min(lowered))))
            }
            (Some(current), false) => Self(Some(current.saturating_add(1))),
            (None, false) => Self(None),
        }
    }
}

/// One quarter second's measurements (see [`SAMPLE_EVERY`](super::SAMPLE_EVERY)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Connections open at the end of it.
    pub connections: usize,
    /// CPU the process used, in percent of the cores it may run on.
    pub cpu_percent: u32,
    /// Share of it the runtime's workers were busy, in percent.
    pub busy_percent: u32,
    /// Share of the tick budget the shards used, in percent.
    pub tick_load_percent: u32,
    /// How late the runtime's timers fired, on average.
    pub lag: Duration,
}

/// The last second of samples (four samples) and the [`Ceiling`]: turns
/// each new sample into the [`Load`] the accept path judges.
#[derive(Debug, Default)]
pub struct Window {
    recent: std::collections::VecDeque<Sample>,
    ceiling: Ceiling,
}

impl Window {
    /// Adds `sample` and returns the load to publish: the highest CPU and
    /// busy shares of the window, the connections open at its start, the
    /// ceiling; and the limit the node is over if the whole window was over
    /// it (which lowers the ceiling), not just a join's burst.
    pub fn push(&mut self, sample: Sample, limits: &AdmissionLimits) -> (Load, Option<Full>) {
        if self.recent.len() == PEAK_OF {
            self.recent.pop_front();
        }
        // Connections a second ago: the CPU of ones admitted since hardly
        // shows yet.
        let window_connections = self
            .recent
            .front()
            .map_or(sample.connections, |r| r.connections);
        self.recent.push_back(sample);
        let highest = |share: fn(&Sample) -> u32| self.recent.iter().map(share).max();
        let lowest = |share: fn(&Sample) -> u32| self.recent.iter().map(share).min();
        let mut load = Load {
            connections: sample.connections,
            sampled_connections: window_connections,
            cpu_percent: highest(|s| s.cpu_percent).unwrap_or(sample.cpu_percent),
            busy_percent: highest(|s| s.busy_percent).unwrap_or(sample.busy_percent),
            tick_load_percent: sample.tick_load_percent,
            lag: sample.lag,
            ceiling: None,
        };
        let sustained = Load {
            sampled_connections: sample.connections,
            cpu_percent: lowest(|s| s.cpu_percent).unwrap_or(sample.cpu_percent),
            busy_percent: lowest(|s| s.busy_percent).unwrap_or(sample.busy_percent),
            ..load
        };
        let over = limits.over_headroom(&sustained);
        self.ceiling = self
            .ceiling
            .after_sample(sample.connections, over.is_some());
        load.ceiling = self.ceiling.get();
        (load, over)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::admission::tests::limits;

    #[test]
    fn an_overload_sets_a_ceiling_that_calm_raises_slowly() {
        let none = Ceiling::default();
        assert_eq!(none.after_sample(400, false), none);
        // Overloaded at 400: admit up to 350.
        let lowered = none.after_sample(400, true);
        assert_eq!(lowered.get(), Some(350));
        // Overloaded again with more open: the lower ceiling stays.
        assert_eq!(lowered.after_sample(440, true).get(), Some(350));
        // ... and with fewer, it goes lower; never below RAMP_MIN.
        assert_eq!(lowered.after_sample(320, true).get(), Some(280));
        assert_eq!(lowered.after_sample(3, true).get(), Some(RAMP_MIN));
        // A calm sample raises it by one.
        assert_eq!(lowered.after_sample(340, false).get(), Some(351));

        let limits = AdmissionLimits {
            max_connections: 10_000,
            ..limits()
        };
        let calm_below = Load {
            connections: 349,
            sampled_connections: 349,
            cpu_percent: 40,
            busy_percent: 40,
            ceiling: lowered.get(),
            ..Load::default()
        };
        assert_eq!(limits.verdict(&calm_below), None);
        let at_ceiling = Load {
            connections: 350,
            ..calm_below
        };
        assert_eq!(
            limits.verdict(&at_ceiling),
            Some(Full::Ceiling {
                open: 350,
                ceiling: 350
            })
        );
    }

    #[test]
    fn the_window_publishes_its_peaks_and_lowers_the_ceiling_on_sustained_overload() {
        let limits = limits();
        let mut window = Window::default();
        let calm = Sample {
            connections: 100,
            cpu_percent: 40,
            busy_percent: 40,
            ..Sample::default()
        };
        let (load, over) = window.push(calm, &limits);
        assert_eq!(
            (load.cpu_percent, load.sampled_connections, over),
            (40, 100, None)
        );
        // A join's burst: the peak is published for a second, no ceiling.
        let burst = Sample {
            connections: 140,
            busy_percent: 95,
            ..calm
        };
        let (load, over) = window.push(burst, &limits);
        assert_eq!((load.busy_percent, load.sampled_connections), (95, 100));
        assert_eq!((over, load.ceiling), (None, None));
        for _ in 0..PEAK_OF - 1 {
            let (load, _) = window.push(
                Sample {
                    connections: 140,
                    ..calm
                },
                &limits,
            );
            assert_eq!(load.busy_percent, 95, "the burst stays in the window");
        }
        let (load, _) = window.push(
            Sample {
                connections: 140,
                ..calm
            },
            &limits,
        );
        assert_eq!((load.busy_percent, load.sampled_connections), (40, 140));
        // A whole second over the limit lowers the ceiling.
        let hot = Sample {
            connections: 160,
            busy_percent: 99,
            ..calm
        };
        for _ in 0..PEAK_OF - 1 {
            let (load, over) = window.push(hot, &limits);
            assert_eq!((over, load.ceiling), (None, None));
        }
        let (load, over) = window.push(hot, &limits);
        assert!(matches!(over, Some(Full::Cpu { percent: 99, .. })));
        assert_eq!(load.ceiling, Some(140));
    }
}
