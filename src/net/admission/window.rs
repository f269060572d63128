//! The last seconds of load samples, and the [`Ceiling`] the node learns
//! from sustained overload.

use std::time::Duration;

use super::{AdmissionLimits, Full, Load, RAMP_DIVISOR, RAMP_MIN};

/// The CPU and busy figures published are the highest of this many samples
/// (the last second): joins and bursts make a single quarter second swing
/// widely, and admitting on a trough overshoots.
const PEAK_OF: usize = 4;
/// Overload is judged on this many samples (two seconds), all over a limit:
/// a join storm's handshakes, and refusing the clients it could not take,
/// can keep a node busy for a second without its sessions being too many.
const SUSTAINED_OF: usize = 8;

/// What the node learned about its own capacity: when the samples of two
/// whole seconds find it over a headroom limit, it admits no more than seven
/// eighths of the connections then open (at least [`RAMP_MIN`]); each calm
/// second after that raises the ceiling by one connection, and each calm
/// [`PLATEAU_SECONDS`] near the count it was overloaded at (within a
/// sixteenth of it either way): there it is most likely to overload again,
/// which costs every player hundreds of milliseconds until the shedding.
/// A second whose peaks are over a limit, without being sustained, is not
/// calm: it raises nothing; nor is one that would be over a limit with an
/// eighth more connections (the CPU figures scaled by 9/8). A node that
/// overloaded at its limit would otherwise creep back up to it, where the
/// next burst takes it over again.
///
/// Projections cannot see everything: a node that shares its cores with
/// other work gets its full share of CPU until it nears that share, so its
/// busy figure stays low and then jumps. Admitting again as soon as it
/// dips (when refused clients stop knocking, say) would overload it again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ceiling {
    at: Option<usize>,
    /// Calm samples since the ceiling last rose.
    calm: usize,
    /// Connections open when the node was last found overloaded.
    overloaded_at: usize,
}

/// Calm seconds per connection the ceiling rises near the count the node
/// was last overloaded at.
pub const PLATEAU_SECONDS: usize = 8;

/// What one sample says about the node, for its [`Ceiling`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    /// Over a headroom limit for two whole seconds.
    Overloaded,
    /// The last second's peaks are over a limit, not (yet) for long, or
    /// would be with an eighth more connections.
    Busy,
    /// Under every limit, with room for an eighth more connections.
    Calm,
}

impl Ceiling {
    /// The connections admitted up to, if the node has been overloaded.
    pub fn get(self) -> Option<usize> {
        self.at
    }

    /// The ceiling after a sample with `connections` open.
    pub fn after_sample(self, connections: usize, pressure: Pressure) -> Self {
        match (self.at, pressure) {
            (current, Pressure::Overloaded) => {
                let lowered = (connections - connections / RAMP_DIVISOR).max(RAMP_MIN);
                Self {
                    at: Some(current.map_or(lowered, |c| c.min(lowered))),
                    calm: 0,
                    overloaded_at: connections,
                }
            }
            (Some(_), Pressure::Busy) => Self { calm: 0, ..self },
            (Some(current), Pressure::Calm) if self.calm + 1 >= self.calm_needed(current) => Self {
                at: Some(current.saturating_add(1)),
                calm: 0,
                ..self
            },
            (Some(_), Pressure::Calm) => Self {
                calm: self.calm + 1,
                ..self
            },
            (None, _) => self,
        }
    }

    /// Calm samples before a ceiling at `current` rises by one.
    fn calm_needed(self, current: usize) -> usize {
        let margin = self.overloaded_at / 16;
        let near = self.overloaded_at - margin..=self.overloaded_at + margin;
        if near.contains(&current) {
            PEAK_OF * PLATEAU_SECONDS
        } else {
            PEAK_OF
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
    /// CPU the process used or waited for, in percent of the cores it may
    /// run on (0 where not measured).
    pub demand_percent: u32,
    /// Share of the tick budget the shards used, in percent.
    pub tick_load_percent: u32,
    /// How late the runtime's timers fired, on average.
    pub lag: Duration,
    /// How late states left after their tick, at the 99th percentile.
    pub send_delay: Duration,
    /// Bytes waiting in the endpoint socket's receive buffer.
    pub receive_queue_bytes: u64,
}

/// What the sampler makes of one more sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// What the accept path judges until the next sample.
    pub load: Load,
    /// The limit the last two seconds were over throughout, if any.
    pub over: Option<Full>,
    /// Sessions to close (the newest, with `ServerFull`) to get back under
    /// the ceiling: admitted connections beyond it after two seconds over a
    /// limit. Their cost would otherwise keep every session late.
    pub shed: usize,
}

/// The last two seconds of samples and the [`Ceiling`]: turns
/// each new sample into the [`Load`] the accept path judges.
#[derive(Debug, Default)]
pub struct Window {
    recent: std::collections::VecDeque<Sample>,
    ceiling: Ceiling,
    /// Samples left before overload is judged again after shedding.
    hold: usize,
}

/// The highest `measure` of `samples` (never empty in [`Window::push`]:
/// the newest is among them).
fn highest<'a, T: Ord + Default>(
    samples: impl Iterator<Item = &'a Sample>,
    measure: impl Fn(&Sample) -> T,
) -> T {
    samples.map(measure).max().unwrap_or_default()
}

/// The lowest `measure` of `samples` (see [`highest`]).
fn lowest<'a, T: Ord + Default>(
    samples: impl Iterator<Item = &'a Sample>,
    measure: impl Fn(&Sample) -> T,
) -> T {
    samples.map(measure).min().unwrap_or_default()
}

/// After shedding, overload is not judged again for this many samples (four
/// seconds): the refused and shed clients knock again for a while, and the
/// node would otherwise shed again for the cost of turning them away.
const HOLD_AFTER_SHED: usize = 16;

impl Window {
    /// Adds `sample` and returns the load to publish: the highest CPU and
    /// busy shares, send delay and receive queue of the last second, the
    /// connections open at its start, the ceiling; and the limit the node
    /// is over if two whole seconds were over it (each measure's lowest),
    /// not just a join's burst. That lowers the ceiling, asks for the
    /// sessions beyond it to be shed, and starts a new window; the next
    /// verdict on overload waits [`HOLD_AFTER_SHED`] samples, while the
    /// clients turned away stop knocking.
    pub fn push(&mut self, sample: Sample, limits: &AdmissionLimits) -> Reading {
        if self.recent.len() == SUSTAINED_OF {
            self.recent.pop_front();
        }
        // Connections a second ago: the CPU of ones admitted since hardly
        // shows yet.
        let window_connections = self
            .recent
            .iter()
            .rev()
            .nth(PEAK_OF - 1)
            .or(self.recent.front())
            .map_or(sample.connections, |r| r.connections);
        self.recent.push_back(sample);
        let last_second = || self.recent.iter().rev().take(PEAK_OF);
        let all = || self.recent.iter();
        let mut load = Load {
            connections: sample.connections,
            sampled_connections: window_connections,
            cpu_percent: highest(last_second(), |s| s.cpu_percent),
            busy_percent: highest(last_second(), |s| s.busy_percent),
            demand_percent: highest(last_second(), |s| s.demand_percent),
            tick_load_percent: sample.tick_load_percent,
            lag: sample.lag,
            send_delay: highest(last_second(), |s| s.send_delay),
            receive_queue_bytes: highest(last_second(), |s| s.receive_queue_bytes),
            ceiling: None,
        };
        let sustained = Load {
            sampled_connections: sample.connections,
            cpu_percent: lowest(all(), |s| s.cpu_percent),
            busy_percent: lowest(all(), |s| s.busy_percent),
            demand_percent: lowest(all(), |s| s.demand_percent),
            tick_load_percent: lowest(all(), |s| s.tick_load_percent),
            lag: lowest(all(), |s| s.lag),
            send_delay: lowest(all(), |s| s.send_delay),
            receive_queue_bytes: lowest(all(), |s| s.receive_queue_bytes),
            ..load
        };
        let mut over = None;
        let mut shed = 0;
        if self.hold > 0 {
            self.hold -= 1;
        } else {
            if self.recent.len() == SUSTAINED_OF {
                over = limits.over_headroom(&sustained);
            }
            let pressure = if over.is_some() {
                Pressure::Overloaded
            } else if limits.over_headroom(&load.with_an_eighth_more()).is_some() {
                Pressure::Busy
            } else {
                Pressure::Calm
            };
            self.ceiling = self.ceiling.after_sample(sample.connections, pressure);
            if over.is_some() {
                shed = self
                    .ceiling
                    .get()
                    .map_or(0, |ceiling| sample.connections.saturating_sub(ceiling));
                self.recent.clear();
                self.hold = HOLD_AFTER_SHED;
            }
        }
        load.ceiling = self.ceiling.get();
        Reading { load, over, shed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::admission::tests::limits;

    /// The test limits with room for any number of connections, so that
    /// only the headroom limits and the ceiling decide.
    fn uncapped() -> AdmissionLimits {
        AdmissionLimits {
            max_connections: 10_000,
            ..limits()
        }
    }

    /// 100 connections at 40 % CPU, busy and demand: well under the limits.
    const CALM: Sample = Sample {
        connections: 100,
        cpu_percent: 40,
        busy_percent: 40,
        demand_percent: 40,
        tick_load_percent: 0,
        lag: Duration::ZERO,
        send_delay: Duration::ZERO,
        receive_queue_bytes: 0,
    };

    #[test]
    fn an_overload_sets_a_ceiling_that_calm_raises_slowly() {
        use Pressure::{Busy, Calm, Overloaded};
        let none = Ceiling::default();
        assert_eq!(none.after_sample(400, Calm), none);
        assert_eq!(none.after_sample(400, Busy), none);
        // Overloaded at 400: admit up to 350.
        let lowered = none.after_sample(400, Overloaded);
        assert_eq!(lowered.get(), Some(350));
        // Overloaded again with more open: the lower ceiling stays.
        assert_eq!(lowered.after_sample(440, Overloaded).get(), Some(350));
        // ... and with fewer, it goes lower; never below RAMP_MIN.
        assert_eq!(lowered.after_sample(320, Overloaded).get(), Some(280));
        assert_eq!(lowered.after_sample(3, Overloaded).get(), Some(RAMP_MIN));
        // A calm second (four samples) raises it by one.
        let mut calm = lowered;
        for _ in 0..PEAK_OF - 1 {
            calm = calm.after_sample(340, Calm);
            assert_eq!(calm.get(), Some(350));
        }
        assert_eq!(calm.after_sample(340, Calm).get(), Some(351));
        // A busy sample starts the calm second again.
        let mut interrupted = lowered;
        for _ in 0..PEAK_OF - 1 {
            interrupted = interrupted.after_sample(340, Calm);
        }
        interrupted = interrupted.after_sample(340, Busy);
        for _ in 0..PEAK_OF - 1 {
            interrupted = interrupted.after_sample(340, Calm);
            assert_eq!(interrupted.get(), Some(350));
        }
        assert_eq!(interrupted.after_sample(340, Calm).get(), Some(351));

        let limits = uncapped();
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
    fn near_where_it_overloaded_the_ceiling_rises_eight_times_slower() {
        use Pressure::{Calm, Overloaded};
        // Overloaded at 400: the ceiling is 350; 375..=425 is near.
        let mut ceiling = Ceiling::default().after_sample(400, Overloaded);
        let mut seconds = 0;
        while ceiling.get() < Some(375) {
            for _ in 0..PEAK_OF {
                ceiling = ceiling.after_sample(300, Calm);
            }
            seconds += 1;
        }
        assert_eq!(seconds, 25, "one connection a calm second below 375");
        let mut seconds = 0;
        while ceiling.get() < Some(376) {
            for _ in 0..PEAK_OF {
                ceiling = ceiling.after_sample(300, Calm);
            }
            seconds += 1;
        }
        assert_eq!(
            seconds, PLATEAU_SECONDS,
            "one per {PLATEAU_SECONDS} s near 400"
        );
    }

    #[test]
    fn the_ceiling_rises_only_with_room_for_an_eighth_more() {
        let limits = uncapped();
        let hot = Sample {
            connections: 160,
            demand_percent: 99,
            ..CALM
        };
        let mut window = Window::default();
        for _ in 0..SUSTAINED_OF {
            window.push(hot, &limits);
        }
        assert_eq!(window.ceiling.get(), Some(140));
        // Shed to the ceiling, the node runs at 80 % against a limit of
        // 85: under it, but not with an eighth more (90 %). It stays.
        let near = Sample {
            connections: 140,
            demand_percent: 80,
            ..CALM
        };
        for _ in 0..HOLD_AFTER_SHED + 10 * PEAK_OF {
            assert_eq!(window.push(near, &limits).load.ceiling, Some(140));
        }
        // At 72 % (81 % with an eighth more) it rises again: once the 80 %
        // samples have left the last second, after a calm second.
        let roomy = Sample {
            demand_percent: 72,
            ..near
        };
        let samples = (1..=4 * PEAK_OF)
            .find(|_| window.push(roomy, &limits).load.ceiling == Some(141))
            .expect("the ceiling rises");
        assert_eq!(samples, 2 * PEAK_OF - 1);
    }

    #[test]
    fn one_late_sample_is_no_sustained_overload() {
        let limits = uncapped();
        let mut window = Window::default();
        let calm = CALM;
        for _ in 0..SUSTAINED_OF {
            assert_eq!(window.push(calm, &limits).over, None);
        }
        let late = Sample {
            lag: Duration::from_secs(1),
            tick_load_percent: 400,
            ..calm
        };
        let reading = window.push(late, &limits);
        assert_eq!((reading.over, reading.shed), (None, 0));
        // ... though the accept path refuses while it is the latest.
        assert!(matches!(
            limits.verdict(&reading.load),
            Some(Full::TickLoad { .. })
        ));
    }

    #[test]
    fn the_window_publishes_its_peaks_and_lowers_the_ceiling_on_sustained_overload() {
        let limits = limits();
        let mut window = Window::default();
        let calm = CALM;
        let Reading { load, over, .. } = window.push(calm, &limits);
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
        let Reading { load, over, .. } = window.push(burst, &limits);
        assert_eq!((load.busy_percent, load.sampled_connections), (95, 100));
        assert_eq!((over, load.ceiling), (None, None));
        for _ in 0..PEAK_OF - 1 {
            let Reading { load, .. } = window.push(
                Sample {
                    connections: 140,
                    ..calm
                },
                &limits,
            );
            assert_eq!(load.busy_percent, 95, "the burst stays in the window");
        }
        let Reading { load, .. } = window.push(
            Sample {
                connections: 140,
                ..calm
            },
            &limits,
        );
        assert_eq!((load.busy_percent, load.sampled_connections), (40, 140));
        // Two whole seconds over the limit lower the ceiling.
        let hot = Sample {
            connections: 160,
            busy_percent: 99,
            ..calm
        };
        for _ in 0..SUSTAINED_OF - 1 {
            let Reading { load, over, .. } = window.push(hot, &limits);
            assert_eq!((over, load.ceiling), (None, None));
        }
        let reading = window.push(hot, &limits);
        assert!(matches!(reading.over, Some(Full::Cpu { percent: 99, .. })));
        assert_eq!(reading.load.ceiling, Some(140));
        // The 20 sessions beyond the ceiling are shed, and overload is not
        // judged again while the turned-away clients knock: hot samples
        // change nothing for HOLD_AFTER_SHED samples.
        assert_eq!(reading.shed, 20);
        let still_hot = Sample {
            connections: 140,
            ..hot
        };
        for _ in 0..HOLD_AFTER_SHED {
            let held = window.push(still_hot, &limits);
            assert_eq!(
                (held.over, held.shed, held.load.ceiling),
                (None, 0, Some(140))
            );
        }
        // Then the last two seconds, all after the shedding, are judged:
        // still hot, so it sheds again.
        let again = window.push(still_hot, &limits);
        assert!(again.over.is_some());
        assert_eq!((again.load.ceiling, again.shed), (Some(123), 17));
    }
}
