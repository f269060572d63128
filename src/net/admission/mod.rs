//! Admission by headroom: whether a new connection is taken, or answered
//! at once with [`CloseCode::ServerFull`](super::CloseCode::ServerFull) and a
//! retry hint instead of being left to time out.
//!
//! Five limits, each from the `[net]` table ([`AdmissionLimits`]):
//! the connections open (`max_connections`), the CPU the process uses of
//! the cores it may run on, counting the time its threads waited for a CPU
//! ([`cpu_demand`]), or the share of time its runtime's workers are busy
//! where that is higher (`admit_max_cpu_percent`), the share of the
//! tick budget the engine's shards use (`admit_max_tick_load_percent`), the
//! scheduling lag of the runtime that sends every state
//! (`admit_max_lag_ms`): when the server has more to send than its threads
//! can keep up with, a timer fires late; and how late the states leave
//! (`admit_max_send_delay_ms`): the 99th percentile of the time from a
//! tick's end until its fan-out handed the state to every connection of
//! the match ([`SendDelays`]), the server's own share of what its players
//! wait.
//!
//! With any of the last four set, the node also admits a join storm in
//! steps (at most an eighth more connections per second, [`RAMP_DIVISOR`];
//! the server's waiting room holds the joins beyond a step until the next)
//! and, after two whole seconds over a limit, no more than a [`Ceiling`] it
//! raises slowly.
//!
//! The decision ([`AdmissionLimits::verdict`]) is pure: it takes a [`Load`].
//! [`Headroom`] holds the latest one for the accept path to read without
//! waiting, and [`sample`] keeps it current: it measures the lag with a
//! short periodic timer, and every [`SAMPLE_EVERY`] reads the shards' tick
//! durations from [`Engine::stats`](crate::engine::Engine::stats), the process's CPU time and
//! demand and the runtime's busy time, and passes them through a [`Window`] of the last
//! second. The listener in [`server`](super::server) applies the verdict.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

pub mod cpu_demand;
mod retry_pacer;
mod sampler;
mod send_delay;
mod window;

pub use retry_pacer::{KNOCKS_PER_SECOND, RetryPacer};
pub use sampler::{NetworkMeasures, TickLoadMeter, cpu_percent, sample};
pub use send_delay::SendDelays;
pub use window::{Ceiling, PLATEAU_SECONDS, Pressure, Reading, Sample, Window};

/// How often the load sample is renewed.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// While headroom is measured, the connections admitted within a second
/// are at most the connections open a second ago over this, and at least
/// [`RAMP_MIN`]: a connection costs little until its session runs, so a
/// join storm admitted on one sample would overshoot the limits before the
/// samples could show it.
pub const RAMP_DIVISOR: usize = 8;
/// Connections admitted within a second, at least (see [`RAMP_DIVISOR`]).
pub const RAMP_MIN: usize = 32;

/// The limits new connections are admitted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Connections open at once, at most.
    pub max_connections: usize,
    /// Refuse while the process uses more than this percentage of the
    /// cores it may run on (0 = no limit).
    pub max_cpu_percent: u32,
    /// Refuse while the shards' ticks use more than this percentage of
    /// their budget (0 = no limit).
    pub max_tick_load_percent: u32,
    /// Refuse while the runtime's timers fire later than this on average
    /// (zero = no limit).
    pub max_lag: Duration,
    /// Refuse while the states of a tick leave later than this after it, at
    /// the 99th percentile (zero = no limit).
    pub max_send_delay: Duration,
    /// Refuse while more than this many bytes wait in the endpoint socket's
    /// receive buffer (0 = no limit).
    pub max_receive_queue_bytes: u64,
    /// The shortest wait a refusal asks the client for ([`RetryPacer`]
    /// asks for longer while many are refused).
    pub retry_after: Duration,
}

/// One measurement of how busy the server is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Connections open (admitted or being admitted).
    pub connections: usize,
    /// Connections open at the start of the sampled window (a second ago,
    /// four samples): the CPU of those admitted since hardly shows yet.
    pub sampled_connections: usize,
    /// CPU the process used, in percent of the cores it may run on: the
    /// highest of the last second's samples.
    pub cpu_percent: u32,
    /// Share of the time the runtime's workers were busy (polling tasks,
    /// not parked), in percent of the workers: the highest of the last
    /// second's samples. Wall time: a worker
    /// preempted by other work on its core stays busy, so this reaches 100
    /// when the server's cores are shared and it gets less CPU than it
    /// wants, where `cpu_percent` stops at its share.
    pub busy_percent: u32,
    /// CPU the process used plus the time its threads were ready to run but
    /// waited for a CPU, in percent of the cores it may run on: the highest
    /// of the last second's samples (0 where not measured). Equal to
    /// `cpu_percent` on cores of its own; on shared cores it reaches 100
    /// when the process gets no more than its share (see
    /// [`cpu_demand`]).
    pub demand_percent: u32,
    /// Share of the tick budget the shards used over the last sample, in
    /// percent (time spent ticking over wall time, summed over shards).
    pub tick_load_percent: u32,
    /// How late the runtime's timers fired, on average over the last sample.
    pub lag: Duration,
    /// How late states left after their tick, at the 99th percentile: the
    /// highest of the last second's samples.
    pub send_delay: Duration,
    /// Bytes waiting in the endpoint socket's receive buffer: the highest
    /// of the last second's samples.
    pub receive_queue_bytes: u64,
    /// The connections the node admits up to after it found itself over a
    /// headroom limit (see [`Ceiling`]); `None` until then.
    pub ceiling: Option<usize>,
}

/// Why a connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    /// Every connection place is taken.
    #[error("server full: {open} connections open, the limit is {limit}")]
    Connections {
        /// Connections open.
        open: usize,
        /// `max_connections`.
        limit: usize,
    },
    /// The process uses or waits for too much of its cores, or its runtime
    /// is busy too much of the time (its cores are shared and it gets less
    /// than it wants).
    #[error(
        "server busy: {percent}% of its CPU in use or waited for (or its workers busy) with the connections open now, the limit is {limit}%"
    )]
    Cpu {
        /// Measured, and projected over the connections admitted since
        /// (see [`Load::projected_cpu_percent`]).
        percent: u32,
        /// `admit_max_cpu_percent`.
        limit: u32,
    },
    /// More connections arrived within the sampled second than may be
    /// admitted before the samples show what they cost.
    #[error(
        "server busy: {admitted} connections admitted within the last second, at most {ramp} until the load shows what they cost"
    )]
    Ramp {
        /// Connections open now over those open at the sample.
        admitted: usize,
        /// How many may be, [`RAMP_MIN`] or the sampled count over [`RAMP_DIVISOR`].
        ramp: usize,
    },
    /// The node was over a headroom limit with more connections open
    /// than this, and has not yet had room long enough to take more.
    #[error(
        "server busy: it was overloaded lately and admits up to {ceiling} connections for now, {open} are open"
    )]
    Ceiling {
        /// Connections open.
        open: usize,
        /// The [`Ceiling`].
        ceiling: usize,
    },
    /// The shards use too much of their tick budget.
    #[error("server busy: ticks use {percent}% of their budget, the limit is {limit}%")]
    TickLoad {
        /// Measured.
        percent: u32,
        /// `admit_max_tick_load_percent`.
        limit: u32,
    },
    /// The runtime is behind: states go out late.
    #[error("server busy: sends run {lag_ms} ms late, the limit is {limit_ms} ms")]
    Lag {
        /// Measured, in milliseconds.
        lag_ms: u128,
        /// `admit_max_lag_ms`.
        limit_ms: u128,
    },
    /// States leave too long after their tick.
    #[error(
        "server busy: states leave up to {delay_ms} ms after their tick, the limit is {limit_ms} ms"
    )]
    SendDelay {
        /// Measured (99th percentile), in milliseconds.
        delay_ms: u128,
        /// `admit_max_send_delay_ms`.
        limit_ms: u128,
    },
    /// Packets wait in the socket: the node reads them slower than they come.
    #[error(
        "server busy: {queued_kib} KiB of packets wait to be read, the limit is {limit_kib} KiB"
    )]
    ReceiveQueue {
        /// Measured, in KiB.
        queued_kib: u64,
        /// `admit_max_receive_queue_kib`.
        limit_kib: u64,
    },
}

impl Full {
    /// The `reason` label of the refusal counter.
    pub fn reason(&self) -> &'static str {
        match self {
            Full::Connections { .. } => "connections",
            Full::Ramp { .. } => "ramp",
            Full::Ceiling { .. } => "ceiling",
            Full::Cpu { .. } => "cpu",
            Full::TickLoad { .. } => "tick_load",
            Full::Lag { .. } => "lag",
            Full::SendDelay { .. } => "send_delay",
            Full::ReceiveQueue { .. } => "receive_queue",
        }
    }
}

impl Load {
    /// This load with an eighth more connections open, so that the CPU
    /// figures project 9/8 of what they would now.
    pub fn with_an_eighth_more(&self) -> Self {
        let sampled = match self.sampled_connections {
            0 => self.connections.max(1),
            sampled => sampled,
        };
        let connections = self.connections.max(sampled);
        Self {
            sampled_connections: sampled,
            connections: connections + connections.div_ceil(RAMP_DIVISOR),
            ..*self
        }
    }

    /// The CPU the connections open now will use: the highest of the CPU,
    /// busy and demand figures, scaled by how many more connections are open than at
    /// the start of the sampled window. A connection admitted just now
    /// costs nothing yet in the sample; without this, every client of a
    /// join storm would be admitted on the same low figure, and together
    /// they would overshoot the limit.
    pub fn projected_cpu_percent(&self) -> u32 {
        let sampled = self
            .cpu_percent
            .max(self.busy_percent)
            .max(self.demand_percent);
        if self.sampled_connections == 0 || self.connections <= self.sampled_connections {
            return sampled;
        }
        let scaled = u64::from(sampled) * self.connections as u64 / self.sampled_connections as u64;
        u32::try_from(scaled).unwrap_or(u32::MAX)
    }
}

impl AdmissionLimits {
    /// Whether any limit needs the load sampled (all but the connection cap).
    pub fn measures_headroom(&self) -> bool {
        self.max_cpu_percent > 0
            || self.max_tick_load_percent > 0
            || !self.max_lag.is_zero()
            || !self.max_send_delay.is_zero()
            || self.max_receive_queue_bytes > 0
    }

    /// `None` to admit, else why not. With headroom measured, no more than
    /// the [`Ceiling`] the node learned when it was last overloaded, and a
    /// join storm in steps: at most [`RAMP_MIN`] or an eighth of the
    /// connections open a second before within that second. The ramp is
    /// judged last, so [`Full::Ramp`] means nothing else refuses: the
    /// connection may wait for the next step.
    pub fn verdict(&self, load: &Load) -> Option<Full> {
        if load.connections >= self.max_connections {
            return Some(Full::Connections {
                open: load.connections,
                limit: self.max_connections,
            });
        }
        if !self.measures_headroom() {
            return None;
        }
        if let Some(ceiling) = load.ceiling.filter(|c| load.connections >= *c) {
            return Some(Full::Ceiling {
                open: load.connections,
                ceiling,
            });
        }
        if let Some(full) = self.over_headroom(load) {
            return Some(full);
        }
        // Last: a connection held back only by the ramp may wait for it
        // (the server's waiting room); any other limit refuses it now.
        let admitted = load.connections.saturating_sub(load.sampled_connections);
        let ramp = (load.sampled_connections / RAMP_DIVISOR).max(RAMP_MIN);
        (admitted >= ramp).then_some(Full::Ramp { admitted, ramp })
    }

    /// Which headroom limit `load` is over (the CPU projected over the
    /// connections open now), if any.
    fn over_headroom(&self, load: &Load) -> Option<Full> {
        let cpu_percent = load.projected_cpu_percent();
        if self.max_cpu_percent > 0 && cpu_percent > self.max_cpu_percent {
            return Some(Full::Cpu {
                percent: cpu_percent,
                limit: self.max_cpu_percent,
            });
        }
        if self.max_tick_load_percent > 0 && load.tick_load_percent > self.max_tick_load_percent {
            return Some(Full::TickLoad {
                percent: load.tick_load_percent,
                limit: self.max_tick_load_percent,
            });
        }
        if !self.max_lag.is_zero() && load.lag > self.max_lag {
            return Some(Full::Lag {
                lag_ms: load.lag.as_millis(),
                limit_ms: self.max_lag.as_millis(),
            });
        }
        if !self.max_send_delay.is_zero() && load.send_delay > self.max_send_delay {
            return Some(Full::SendDelay {
                delay_ms: load.send_delay.as_millis(),
                limit_ms: self.max_send_delay.as_millis(),
            });
        }
        if self.max_receive_queue_bytes > 0
            && load.receive_queue_bytes > self.max_receive_queue_bytes
        {
            return Some(Full::ReceiveQueue {
                queued_kib: load.receive_queue_bytes / 1024,
                limit_kib: self.max_receive_queue_bytes / 1024,
            });
        }
        None
    }
}

/// The latest load sample, shared by the sampler and the accept path. The
/// lock is held only to copy the sample in or out, so the accept path never
/// sees half of one sample and half of the next.
#[derive(Debug, Default)]
pub struct Headroom {
    latest: Mutex<Load>,
    /// Signalled at each new sample, for the accept loop's waiting room.
    renewed: tokio::sync::Notify,
}

impl Headroom {
    /// The latest sample, with `connections` open now.
    pub fn load(&self, connections: usize) -> Load {
        Load {
            connections,
            ..*self.latest()
        }
    }

    fn publish(&self, sample: &Load) {
        *self.latest() = *sample;
        self.renewed.notify_one();
    }

    /// Resolves once a sample newer than the last one waited for is
    /// published (at once if one was published meanwhile). For one waiter,
    /// the accept loop: the ramp opens only with a new sample.
    pub async fn renewed(&self) {
        self.renewed.notified().await;
    }

    fn latest(&self) -> MutexGuard<'_, Load> {
        // Copying a `Copy` value cannot panic half way: a poisoned lock
        // still holds a whole sample.
        self.latest.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn limits() -> AdmissionLimits {
        AdmissionLimits {
            max_connections: 10,
            max_cpu_percent: 85,
            max_tick_load_percent: 80,
            max_lag: Duration::from_millis(15),
            max_send_delay: Duration::from_millis(8),
            max_receive_queue_bytes: 64 << 10,
            retry_after: Duration::from_secs(1),
        }
    }

    #[test]
    fn each_limit_refuses_on_its_own_and_zero_turns_it_off() {
        let calm = Load {
            connections: 9,
            sampled_connections: 9,
            cpu_percent: 85,
            busy_percent: 85,
            demand_percent: 85,
            tick_load_percent: 80,
            lag: Duration::from_millis(15),
            send_delay: Duration::from_millis(8),
            receive_queue_bytes: 64 << 10,
            ceiling: None,
        };
        assert_eq!(limits().verdict(&calm), None);
        let full = Load {
            connections: 10,
            ..calm
        };
        assert_eq!(
            limits().verdict(&full),
            Some(Full::Connections {
                open: 10,
                limit: 10
            })
        );
        let busy = Load {
            tick_load_percent: 81,
            ..calm
        };
        assert!(matches!(
            limits().verdict(&busy),
            Some(Full::TickLoad { percent: 81, .. })
        ));
        let hot = Load {
            cpu_percent: 86,
            ..calm
        };
        assert_eq!(
            limits().verdict(&hot),
            Some(Full::Cpu {
                percent: 86,
                limit: 85
            })
        );
        // A process on shared cores: its CPU stops at its share and its
        // workers look idle, but its threads wait for a CPU.
        let waiting = Load {
            cpu_percent: 45,
            busy_percent: 50,
            demand_percent: 90,
            ..calm
        };
        assert_eq!(
            limits().verdict(&waiting),
            Some(Full::Cpu {
                percent: 90,
                limit: 85
            })
        );
        let late = Load {
            lag: Duration::from_millis(16),
            ..calm
        };
        assert!(matches!(
            limits().verdict(&late),
            Some(Full::Lag { lag_ms: 16, .. })
        ));
        let states_late = Load {
            send_delay: Duration::from_millis(9),
            ..calm
        };
        assert_eq!(
            limits().verdict(&states_late),
            Some(Full::SendDelay {
                delay_ms: 9,
                limit_ms: 8
            })
        );
        let inputs_waiting = Load {
            receive_queue_bytes: (64 << 10) + 1,
            ..calm
        };
        assert_eq!(
            limits().verdict(&inputs_waiting),
            Some(Full::ReceiveQueue {
                queued_kib: 64,
                limit_kib: 64
            })
        );
        let off = AdmissionLimits {
            max_cpu_percent: 0,
            max_tick_load_percent: 0,
            max_lag: Duration::ZERO,
            max_send_delay: Duration::ZERO,
            max_receive_queue_bytes: 0,
            ..limits()
        };
        let swamped = Load {
            connections: 0,
            sampled_connections: 0,
            cpu_percent: 400,
            busy_percent: 400,
            demand_percent: 400,
            tick_load_percent: 500,
            lag: Duration::from_secs(1),
            send_delay: Duration::from_secs(1),
            receive_queue_bytes: 1 << 30,
            ceiling: None,
        };
        assert_eq!(off.verdict(&swamped), None);
        assert!(limits().measures_headroom());
        assert!(!off.measures_headroom());
    }

    #[test]
    fn cpu_is_projected_over_connections_admitted_since_the_sample() {
        let limits = AdmissionLimits {
            max_connections: 1000,
            ..limits()
        };
        // 60 % with 300 open; 100 more arrived within the sample: 80 %.
        let storm = Load {
            connections: 400,
            sampled_connections: 300,
            cpu_percent: 60,
            ..Load::default()
        };
        assert_eq!(storm.projected_cpu_percent(), 80);
        // Within the ramp (160 / 8 = 20 more): 80 % with 160 open, 10 more
        // make 85 %, which is admitted; 12 more make 86 %, over the limit
        // of 85 though the sample says 80.
        let busy = Load {
            connections: 170,
            sampled_connections: 160,
            cpu_percent: 80,
            ..Load::default()
        };
        assert_eq!(limits.verdict(&busy), None);
        let more = Load {
            connections: 172,
            ..busy
        };
        assert_eq!(
            limits.verdict(&more),
            Some(Full::Cpu {
                percent: 86,
                limit: 85
            })
        );
        // Fewer open than sampled, or nothing sampled yet: the sample as it is.
        let left = Load {
            connections: 100,
            ..storm
        };
        assert_eq!(left.projected_cpu_percent(), 60);
        let first = Load {
            sampled_connections: 0,
            ..storm
        };
        assert_eq!(first.projected_cpu_percent(), 60);
    }

    #[test]
    fn a_join_storm_is_admitted_a_step_per_sample() {
        let limits = AdmissionLimits {
            max_connections: 10_000,
            ..limits()
        };
        let sampled = Load {
            connections: 400,
            sampled_connections: 400,
            cpu_percent: 20,
            busy_percent: 20,
            ..Load::default()
        };
        // An eighth of 400 = 50 more before the next sample.
        let joining = Load {
            connections: 449,
            ..sampled
        };
        assert_eq!(limits.verdict(&joining), None);
        let storm = Load {
            connections: 450,
            ..sampled
        };
        assert_eq!(
            limits.verdict(&storm),
            Some(Full::Ramp {
                admitted: 50,
                ramp: 50
            })
        );
        // A quiet server (or the first sample) still takes RAMP_MIN at once.
        let fresh = Load {
            connections: RAMP_MIN - 1,
            sampled_connections: 0,
            ..Load::default()
        };
        assert_eq!(limits.verdict(&fresh), None);
        let fresh_storm = Load {
            connections: RAMP_MIN,
            ..fresh
        };
        assert!(matches!(
            limits.verdict(&fresh_storm),
            Some(Full::Ramp { .. })
        ));
        // Without headroom limits only the connection cap applies.
        let capped_only = AdmissionLimits {
            max_cpu_percent: 0,
            max_tick_load_percent: 0,
            max_lag: Duration::ZERO,
            max_send_delay: Duration::ZERO,
            max_receive_queue_bytes: 0,
            ..limits
        };
        assert_eq!(capped_only.verdict(&storm), None);
    }

    #[test]
    fn busy_workers_fill_the_cpu_limit_when_the_cores_are_shared() {
        // A neighbour takes half the core: the process gets 50 % of it, but
        // its workers never rest.
        let shared_core = Load {
            connections: 5,
            sampled_connections: 5,
            cpu_percent: 50,
            busy_percent: 97,
            ..Load::default()
        };
        assert_eq!(shared_core.projected_cpu_percent(), 97);
        assert_eq!(
            limits().verdict(&shared_core),
            Some(Full::Cpu {
                percent: 97,
                limit: 85
            })
        );
        // Busy share scales over new connections like the CPU does.
        let joining = Load {
            connections: 6,
            busy_percent: 75,
            ..shared_core
        };
        assert_eq!(joining.projected_cpu_percent(), 90);
    }
}
