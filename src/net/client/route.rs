//! Where a session says its `Hello`, and what it does when the answer is
//! not a `Welcome`: follow a [`Redirect`](CloseCode::Redirect) to the node
//! it names, wait as a [`ServerFull`](CloseCode::ServerFull) or
//! [`MatchMoving`](CloseCode::MatchMoving) close asks, or fail over to the
//! next address of the fleet when a server cannot be reached.
//!
//! No I/O here: [`Route`] keeps the current server and the rotation and
//! turns each failure into a [`Next`] step, given the time and a random
//! number for the jitter; the join path and the session driver connect,
//! resolve names and sleep.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{ClientConfig, ClientError};
use crate::net::protocol::{self, CloseCode};

/// Redirects followed in a row before a join or resume gives up with
/// [`ClientError::TooManyRedirects`].
pub const MAX_REDIRECTS: u32 = 8;

/// The wait when a `ServerFull` or `MatchMoving` reason names none.
const DEFAULT_RETRY_WAIT: Duration = Duration::from_millis(500);
/// Consecutive `ServerFull` refusals double the asked wait up to this many
/// times (then [`protocol::MAX_RETRY_AFTER`] caps it): a full node's clients come back
/// ever less often, so refusing them costs it less.
const FULL_BACKOFF_DOUBLINGS: u32 = 3;
/// The first wait before trying again after a server could not be reached.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between attempts at unreachable servers.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How long a join or resume keeps trying.
#[derive(Debug, Clone, Copy)]
pub(super) struct Budget {
    /// No wait ends after this; a step that would is a give-up.
    pub(super) deadline: Instant,
    /// Give up once every address failed to answer in a row (a join:
    /// fail fast when the whole fleet is unreachable), instead of going
    /// round until the deadline (a resume).
    pub(super) one_round: bool,
}

impl Budget {
    /// A fresh join: server-asked waits within `retry_for`, unreachable
    /// servers tried once each.
    pub(super) fn join(now: Instant, retry_for: Duration) -> Self {
        Self {
            deadline: now + retry_for,
            one_round: true,
        }
    }

    /// A resume: everything within `window` of when the loss was detected.
    pub(super) fn resume(detected: Instant, window: Duration) -> Self {
        Self {
            deadline: detected + window,
            one_round: false,
        }
    }
}

/// What to do after an attempt failed.
#[derive(Debug)]
pub(super) enum Next {
    /// Resolve this `host:port` and say the `Hello` there, now.
    Redirect(String),
    /// Wait this long, then say the `Hello` to the (new) current server.
    Retry(Duration),
    /// Stop trying: this is the session's error.
    GiveUp(ClientError),
}

/// How a failure is handled.
enum Failure {
    Redirect(Option<String>),
    Wait {
        asked: Option<Duration>,
        move_on: bool,
    },
    Unreachable,
    Final,
}

fn classify(error: &ClientError) -> Failure {
    match error {
        ClientError::Refused {
            code: Some(CloseCode::Redirect),
            reason,
        } => Failure::Redirect(protocol::parse_redirect(reason).map(str::to_owned)),
        ClientError::Refused {
            code: Some(code @ (CloseCode::ServerFull | CloseCode::MatchMoving)),
            reason,
        } => Failure::Wait {
            asked: protocol::parse_retry_after(reason),
            // A full node may have neighbours with room; a moving match is
            // found through any node, so the current one will do.
            move_on: *code == CloseCode::ServerFull,
        },
        ClientError::Refused { code, .. } if code.is_none_or(CloseCode::may_resume) => {
            Failure::Unreachable
        }
        ClientError::Connect { .. } | ClientError::Lost(_) | ClientError::BadRedirect { .. } => {
            Failure::Unreachable
        }
        _ => Failure::Final,
    }
}

/// A session's way to its match: the current server (it changes with
/// redirects and fail-overs) and the rotation (the configured server, then
/// the fallbacks) to fail over along.
#[derive(Debug, Clone)]
pub(super) struct Route {
    rotation: Vec<SocketAddr>,
    current: SocketAddr,
    /// The rotation address used last (where a failed redirect target
    /// falls back to the next one).
    cursor: usize,
    /// A redirect target to resolve before the next attempt.
    pending: Option<String>,
    redirects: u32,
    unreachable: usize,
    backoff: Duration,
    /// `ServerFull` refusals in a row.
    full_refusals: u32,
}

impl Route {
    /// Starts at `current` (the configured server, or the one a
    /// [`Connected`](super::Connected) reached).
    pub(super) fn new(config: &ClientConfig, current: SocketAddr) -> Self {
        let mut rotation = vec![config.server];
        for addr in &config.fallback {
            if !rotation.contains(addr) {
                rotation.push(*addr);
            }
        }
        let cursor = rotation.iter().position(|a| *a == current).unwrap_or(0);
        Self {
            rotation,
            current,
            cursor,
            pending: None,
            redirects: 0,
            unreachable: 0,
            backoff: FIRST_BACKOFF,
            full_refusals: 0,
        }
    }

    /// The server the next `Hello` goes to (the last one that welcomed
    /// the session, once it is admitted).
    pub(super) fn current(&self) -> SocketAddr {
        self.current
    }

    /// The redirect target to resolve before the next attempt, if any.
    pub(super) fn take_redirect(&mut self) -> Option<String> {
        self.pending.take()
    }

    /// The redirect target resolved to `addr`: it is the current server.
    pub(super) fn arrive(&mut self, addr: SocketAddr) {
        self.current = addr;
        if let Some(i) = self.rotation.iter().position(|a| *a == addr) {
            self.cursor = i;
        }
    }

    /// A server welcomed the `Hello`: the counts start again.
    pub(super) fn admitted(&mut self) {
        self.pending = None;
        self.redirects = 0;
        self.unreachable = 0;
        self.backoff = FIRST_BACKOFF;
        self.full_refusals = 0;
    }

    /// An attempt at the current server failed with `error`. A connection
    /// lost before the `Welcome` came from a server that answered the
    /// handshake: reachable, but too busy to answer in time (an overloaded
    /// node drops packets). The join waits and tries again, with growing
    /// waits, within its budget, instead of giving that server up as
    /// unreachable; the newer connection replaces the old one's slot.
    pub(super) fn after_attempt(
        &mut self,
        error: ClientError,
        now: Instant,
        budget: &Budget,
        random: u64,
    ) -> Next {
        let failure = match &error {
            ClientError::Lost(_) => Failure::Wait {
                asked: None,
                move_on: true,
            },
            other => classify(other),
        };
        self.step(failure, error, now, budget, random, true)
    }

    /// A live session's connection ended with `error` (one the session
    /// resumes from): like [`after_attempt`](Route::after_attempt), but a
    /// shut down or misbehaving server is tried again first (it may be
    /// restarting in place) before the rotation moves on. A server that
    /// went silent (the connection timed out) is tried last when there are
    /// other nodes: it is likely dead, and each attempt at a dead server
    /// costs a whole handshake timeout.
    pub(super) fn after_close(
        &mut self,
        error: ClientError,
        now: Instant,
        budget: &Budget,
        random: u64,
    ) -> Next {
        let silent = matches!(error, ClientError::Lost(_)) && self.rotation.len() > 1;
        let failure = match classify(&error) {
            Failure::Final if !silent => Failure::Unreachable,
            failure => failure,
        };
        self.step(failure, error, now, budget, random, silent)
    }

    /// The next step after `failure` (what `error` means for the route);
    /// `fail_over`: an unreachable server counts against the rotation.
    fn step(
        &mut self,
        failure: Failure,
        error: ClientError,
        now: Instant,
        budget: &Budget,
        random: u64,
        fail_over: bool,
    ) -> Next {
        match failure {
            Failure::Redirect(None) => Next::GiveUp(ClientError::Protocol(format!(
                "a redirect that names no address: {error}"
            ))),
            Failure::Redirect(Some(target)) => {
                if self.redirects >= MAX_REDIRECTS {
                    return Next::GiveUp(ClientError::TooManyRedirects {
                        limit: MAX_REDIRECTS,
                        last: target,
                    });
                }
                self.redirects += 1;
                self.unreachable = 0;
                self.pending = Some(target.clone());
                Next::Redirect(target)
            }
            Failure::Wait { asked, move_on } => {
                self.redirects = 0;
                self.unreachable = 0;
                let mut asked = asked.unwrap_or(DEFAULT_RETRY_WAIT);
                if move_on {
                    // ServerFull: each refusal in a row doubles the wait.
                    asked *= 1 << self.full_refusals.min(FULL_BACKOFF_DOUBLINGS);
                    self.full_refusals += 1;
                }
                let wait = jitter(asked.min(protocol::MAX_RETRY_AFTER), random);
                if now + wait > budget.deadline {
                    return Next::GiveUp(error);
                }
                if move_on {
                    self.move_on();
                }
                Next::Retry(wait)
            }
            Failure::Unreachable => {
                self.redirects = 0;
                if fail_over {
                    self.unreachable += 1;
                    if budget.one_round && self.unreachable >= self.rotation.len() {
                        return Next::GiveUp(error);
                    }
                    self.move_on();
                }
                let wait = jitter(self.backoff, random);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                if !budget.one_round && now + wait > budget.deadline {
                    return Next::GiveUp(error);
                }
                Next::Retry(wait)
            }
            Failure::Final => Next::GiveUp(error),
        }
    }

    /// The next address of the rotation becomes the current server.
    fn move_on(&mut self) {
        self.pending = None;
        let next = match self.rotation.iter().position(|a| *a == self.current) {
            Some(i) => (i + 1) % self.rotation.len(),
            // A redirect target failed: on with the rotation where it left off.
            None => (self.cursor + 1) % self.rotation.len(),
        };
        self.cursor = next;
        self.current = self.rotation[next];
    }
}

/// `wait` lengthened by up to a quarter, so clients told the same wait do
/// not all come back at once.
fn jitter(wait: Duration, random: u64) -> Duration {
    wait + wait.mul_f64((random % 1024) as f64 / 4096.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn route(fallback: &[u16]) -> Route {
        let mut config = ClientConfig::new(addr(1), Vec::new());
        config.fallback = fallback.iter().map(|p| addr(*p)).collect();
        Route::new(&config, addr(1))
    }

    fn refused(code: CloseCode, reason: &str) -> ClientError {
        ClientError::Refused {
            code: Some(code),
            reason: reason.into(),
        }
    }

    fn unreachable(port: u16) -> ClientError {
        ClientError::Connect {
            server: addr(port),
            reason: "handshake timed out".into(),
        }
    }

    #[test]
    fn a_redirect_is_followed_at_most_eight_times_in_a_row() {
        let now = Instant::now();
        let budget = Budget::join(now, Duration::from_secs(30));
        let mut route = route(&[]);
        for hop in 1..=MAX_REDIRECTS {
            let next = route.after_attempt(
                refused(CloseCode::Redirect, "127.0.0.1:7 moved"),
                now,
                &budget,
                0,
            );
            assert!(
                matches!(&next, Next::Redirect(t) if t == "127.0.0.1:7"),
                "hop {hop}: {next:?}"
            );
            assert_eq!(route.take_redirect().as_deref(), Some("127.0.0.1:7"));
            route.arrive(addr(7));
        }
        assert_eq!(route.current(), addr(7));
        let next = route.after_attempt(
            refused(CloseCode::Redirect, "node-b:9 moved"),
            now,
            &budget,
            0,
        );
        assert!(
            matches!(&next, Next::GiveUp(ClientError::TooManyRedirects { limit: 8, last }) if last == "node-b:9"),
            "{next:?}"
        );
    }

    #[test]
    fn a_wait_in_between_starts_the_redirect_count_again() {
        let now = Instant::now();
        let budget = Budget::join(now, Duration::from_secs(30));
        let mut route = route(&[]);
        for _ in 0..MAX_REDIRECTS {
            route.after_attempt(
                refused(CloseCode::Redirect, "127.0.0.1:7 x"),
                now,
                &budget,
                0,
            );
        }
        let next = route.after_attempt(
            refused(CloseCode::MatchMoving, "200 moving"),
            now,
            &budget,
            0,
        );
        assert!(matches!(next, Next::Retry(_)), "{next:?}");
        let next = route.after_attempt(
            refused(CloseCode::Redirect, "127.0.0.1:7 x"),
            now,
            &budget,
            0,
        );
        assert!(matches!(next, Next::Redirect(_)), "{next:?}");
    }

    #[test]
    fn a_redirect_without_an_address_is_a_protocol_error() {
        let now = Instant::now();
        let budget = Budget::join(now, Duration::from_secs(30));
        let next =
            route(&[]).after_attempt(refused(CloseCode::Redirect, "elsewhere"), now, &budget, 0);
        assert!(
            matches!(next, Next::GiveUp(ClientError::Protocol(_))),
            "{next:?}"
        );
    }

    #[test]
    fn server_full_refusals_in_a_row_double_the_wait_up_to_the_cap() {
        let now = Instant::now();
        let mut route = route(&[]);
        let full = || ClientError::Refused {
            code: Some(CloseCode::ServerFull),
            reason: "5000 server full".into(),
        };
        let budget = Budget::join(now, Duration::from_secs(120));
        let mut waits = Vec::new();
        for _ in 0..5 {
            match route.after_attempt(full(), now, &budget, 0) {
                Next::Retry(wait) => waits.push(wait.as_millis()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(waits, [5000, 10_000, 20_000, 30_000, 30_000]);
        // Admitted: the next refusal asks the plain wait again.
        route.admitted();
        assert!(matches!(
            route.after_attempt(full(), now, &budget, 0),
            Next::Retry(wait) if wait == Duration::from_secs(5)
        ));
    }

    #[test]
    fn waits_are_the_asked_time_capped_and_jittered_up_to_a_quarter() {
        let now = Instant::now();
        let budget = Budget::join(now, Duration::from_secs(30));
        let mut route = route(&[]);
        for (reason, random, expected) in [
            ("200 moving", 0, Duration::from_millis(200)),
            (
                "200 moving",
                1023,
                Duration::from_millis(200) + Duration::from_millis(200).mul_f64(1023.0 / 4096.0),
            ),
            ("60000 moving", 0, protocol::MAX_RETRY_AFTER),
            ("moving", 0, DEFAULT_RETRY_WAIT),
        ] {
            let next = route.after_attempt(
                refused(CloseCode::MatchMoving, reason),
                now,
                &budget,
                random,
            );
            let Next::Retry(wait) = next else {
                panic!("{reason}: {next:?}")
            };
            assert_eq!(wait, expected, "{reason}");
            assert_eq!(
                route.current(),
                addr(1),
                "a moving match is retried in place"
            );
        }
    }

    #[test]
    fn no_retry_budget_returns_the_refusal() {
        let now = Instant::now();
        let budget = Budget::join(now, Duration::ZERO);
        for code in [CloseCode::ServerFull, CloseCode::MatchMoving] {
            let next = route(&[2]).after_attempt(refused(code, "100 later"), now, &budget, 0);
            assert!(
                matches!(next, Next::GiveUp(ClientError::Refused { code: Some(c), .. }) if c == code),
                "{next:?}"
            );
        }
    }

    #[test]
    fn a_full_server_sends_the_retry_to_the_next_node() {
        let now = Instant::now();
        let budget = Budget::join(now, Duration::from_secs(30));
        let mut route = route(&[2, 3]);
        let next = route.after_attempt(refused(CloseCode::ServerFull, "100 full"), now, &budget, 0);
        assert!(matches!(next, Next::Retry(_)), "{next:?}");
        assert_eq!(route.current(), addr(2));
    }

    #[test]
    fn a_join_tries_each_unreachable_address_once() {
        let now = Instant::now();
        let budget = Budget::join(now, Duration::ZERO);
        let mut route = route(&[2, 3]);
        for expected in [2, 3] {
            let next = route.after_attempt(unreachable(route.current().port()), now, &budget, 0);
            assert!(matches!(next, Next::Retry(_)), "{next:?}");
            assert_eq!(route.current(), addr(expected));
        }
        let next = route.after_attempt(unreachable(3), now, &budget, 0);
        assert!(
            matches!(next, Next::GiveUp(ClientError::Connect { .. })),
            "{next:?}"
        );
    }

    #[test]
    fn a_join_lost_before_the_welcome_tries_again_within_its_budget() {
        let now = Instant::now();
        let lost = || ClientError::Lost("timed out".into());
        let budget = Budget::join(now, Duration::from_secs(30));
        let mut route = route(&[]);
        let mut waits = Vec::new();
        for _ in 0..3 {
            match route.after_attempt(lost(), now, &budget, 0) {
                Next::Retry(wait) => waits.push(wait),
                other => panic!("a lost join is retried: {other:?}"),
            }
        }
        assert_eq!(route.current(), addr(1), "the only server, again");
        assert_eq!(
            waits,
            [500, 1_000, 2_000].map(Duration::from_millis),
            "growing waits"
        );
        // ... but not past the budget.
        let spent = Budget::join(now, Duration::from_millis(100));
        let next = self::route(&[]).after_attempt(lost(), now, &spent, 0);
        assert!(
            matches!(next, Next::GiveUp(ClientError::Lost(_))),
            "{next:?}"
        );
    }

    #[test]
    fn a_join_without_fallbacks_fails_at_the_first_unreachable_server() {
        let now = Instant::now();
        let budget = Budget::join(now, Duration::from_secs(30));
        let next = route(&[]).after_attempt(unreachable(1), now, &budget, 0);
        assert!(
            matches!(next, Next::GiveUp(ClientError::Connect { .. })),
            "{next:?}"
        );
    }

    #[test]
    fn a_resume_goes_round_with_growing_backoff_until_the_deadline() {
        let start = Instant::now();
        let budget = Budget::resume(start, Duration::from_secs(3));
        let mut route = route(&[2]);
        // A server gone silent is likely dead: the other node first.
        let next = route.after_close(ClientError::Lost("timed out".into()), start, &budget, 0);
        assert!(
            matches!(next, Next::Retry(w) if w == FIRST_BACKOFF),
            "{next:?}"
        );
        assert_eq!(route.current(), addr(2));
        let mut now = start;
        let mut seen = Vec::new();
        let mut waits = Vec::new();
        loop {
            match route.after_attempt(unreachable(route.current().port()), now, &budget, 0) {
                Next::Retry(wait) => {
                    seen.push(route.current().port());
                    waits.push(wait);
                    now += wait;
                }
                Next::GiveUp(ClientError::Connect { .. }) => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(&seen[..4], &[1, 2, 1, 2]);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert_eq!(*waits.last().unwrap(), MAX_BACKOFF);
        assert!(now <= budget.deadline);
    }

    #[test]
    fn a_session_closed_for_a_broken_frame_is_resumed_in_place() {
        let now = Instant::now();
        let budget = Budget::resume(now, Duration::from_secs(30));
        let mut route = route(&[2]);
        let next = route.after_close(ClientError::Protocol("bad frame".into()), now, &budget, 0);
        assert!(matches!(next, Next::Retry(_)), "{next:?}");
        assert_eq!(route.current(), addr(1));
    }

    #[test]
    fn a_live_session_moved_away_follows_the_redirect_or_waits() {
        let now = Instant::now();
        let budget = Budget::resume(now, Duration::from_secs(30));
        let mut route = route(&[2]);
        let next = route.after_close(
            refused(CloseCode::Redirect, "127.0.0.1:9 handed over"),
            now,
            &budget,
            0,
        );
        assert!(
            matches!(&next, Next::Redirect(t) if t == "127.0.0.1:9"),
            "{next:?}"
        );
        let next = route.after_close(
            refused(CloseCode::MatchMoving, "1500 lease"),
            now,
            &budget,
            0,
        );
        assert!(
            matches!(next, Next::Retry(w) if w == Duration::from_millis(1500)),
            "{next:?}"
        );
        assert_eq!(route.current(), addr(1));
    }

    #[test]
    fn a_failed_redirect_target_falls_back_to_the_rotation() {
        let now = Instant::now();
        let budget = Budget::resume(now, Duration::from_secs(30));
        let mut route = route(&[2, 3]);
        route.after_attempt(
            refused(CloseCode::Redirect, "127.0.0.1:9 moved"),
            now,
            &budget,
            0,
        );
        route.take_redirect();
        route.arrive(addr(9));
        let next = route.after_attempt(unreachable(9), now, &budget, 0);
        assert!(matches!(next, Next::Retry(_)), "{next:?}");
        assert_eq!(route.current(), addr(2));
    }

    #[test]
    fn final_refusals_are_not_retried() {
        let now = Instant::now();
        let budget = Budget::resume(now, Duration::from_secs(30));
        let next = route(&[2]).after_attempt(
            refused(CloseCode::TicketExpired, "expired"),
            now,
            &budget,
            0,
        );
        assert!(
            matches!(next, Next::GiveUp(ClientError::Refused { .. })),
            "{next:?}"
        );
    }
}
