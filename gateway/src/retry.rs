//! The retry decision as a pure function of one try's outcome, so every
//! branch of the policy is unit-tested without sockets. [`crate::failover`]
//! makes the tries and follows what [`decide`] says.

use crate::metrics::Failover;
use crate::source::After;
use std::time::Duration;

/// How one try ended, as far as the policy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An answer went to the client.
    Answered,
    /// No connection: the request never left. `cut_short` when the
    /// request's own deadline, not the instance, ended the connect.
    ConnectFailed { cut_short: bool },
    /// Sent, but no answer in time: the instance may be processing it.
    TimedOut,
    /// The connection broke before a complete answer.
    Broken,
    /// A 5xx held back to fail over on.
    ServerError,
    /// The gateway itself is out of descriptors or local ports: every other
    /// instance would fail the same way, and no instance is to blame.
    ShortOfResources,
}

/// The request's side of the policy.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// An idempotent method, or `retry_non_idempotent`.
    pub replayable: bool,
    pub max_attempts: u32,
}

/// Where the request stands after the try.
#[derive(Clone, Copy, Debug)]
pub struct Attempt {
    /// Tries made so far, this one included.
    pub number: u32,
    /// Until `request_deadline`.
    pub left: Duration,
}

/// Why no further try is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The instance may have processed a request that must not run twice.
    NotReplayable,
    /// `max_attempts` tries made.
    Exhausted,
    /// `request_deadline` passed.
    OutOfTime,
    /// The gateway is short of descriptors or ports: answer 503 at once.
    ShortOfResources,
}

/// What to do after a try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The client has its answer.
    Done,
    /// Fail over for `cause`, picking the next instance as `After` says.
    Retry(Failover, After),
    /// Answer the client with an error.
    GiveUp(Failover, Stop),
}

/// The cause a failed outcome is counted under (`None`: answered).
pub fn cause(outcome: Outcome) -> Option<Failover> {
    match outcome {
        Outcome::Answered => None,
        Outcome::ConnectFailed { .. } | Outcome::ShortOfResources => Some(Failover::Connect),
        Outcome::TimedOut => Some(Failover::Timeout),
        Outcome::Broken => Some(Failover::Broken),
        Outcome::ServerError => Some(Failover::Status5xx),
    }
}

/// Whether the instance is skipped for `connect_cooldown`: it refused a
/// connection (a connect the request's own deadline cut says nothing).
pub fn cools_down(outcome: Outcome) -> bool {
    outcome == Outcome::ConnectFailed { cut_short: false }
}

/// The policy: only a refused connection proves the instance never saw the
/// request, so everything else is retried only when replayable; then within
/// `max_attempts` and the request deadline. After a timeout the next
/// instance comes from discovery's lookup, otherwise from the ring.
pub fn decide(outcome: Outcome, attempt: Attempt, policy: Policy) -> Decision {
    let Some(cause) = cause(outcome) else {
        return Decision::Done;
    };
    if outcome == Outcome::ShortOfResources {
        return Decision::GiveUp(cause, Stop::ShortOfResources);
    }
    if cause != Failover::Connect && !policy.replayable {
        return Decision::GiveUp(cause, Stop::NotReplayable);
    }
    if attempt.number >= policy.max_attempts {
        return Decision::GiveUp(cause, Stop::Exhausted);
    }
    if attempt.left.is_zero() {
        return Decision::GiveUp(cause, Stop::OutOfTime);
    }
    let after = match cause {
        Failover::Timeout => After::Timeout,
        _ => After::Failure,
    };
    Decision::Retry(cause, after)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Outcome; 6] = [
        Outcome::Answered,
        Outcome::ConnectFailed { cut_short: false },
        Outcome::ConnectFailed { cut_short: true },
        Outcome::TimedOut,
        Outcome::Broken,
        Outcome::ServerError,
    ];

    fn first(left_ms: u64) -> Attempt {
        Attempt {
            number: 1,
            left: Duration::from_millis(left_ms),
        }
    }

    fn policy(replayable: bool) -> Policy {
        Policy {
            replayable,
            max_attempts: 3,
        }
    }

    /// An answer ends the request, and a local shortage is never retried,
    /// whatever the method, attempts and time left.
    #[test]
    fn an_answer_or_a_local_shortage_ends_the_request_whatever_the_policy() {
        let want = [
            (Outcome::Answered, Decision::Done),
            (
                Outcome::ShortOfResources,
                Decision::GiveUp(Failover::Connect, Stop::ShortOfResources),
            ),
        ];
        for (outcome, decision) in want {
            for replayable in [true, false] {
                for attempt in [first(0), first(1000)] {
                    assert_eq!(
                        decide(outcome, attempt, policy(replayable)),
                        decision,
                        "{outcome:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn replayable_failures_fail_over_the_timeout_through_discovery() {
        let want = [
            (
                Outcome::ConnectFailed { cut_short: false },
                Decision::Retry(Failover::Connect, After::Failure),
            ),
            (
                Outcome::ConnectFailed { cut_short: true },
                Decision::Retry(Failover::Connect, After::Failure),
            ),
            (
                Outcome::TimedOut,
                Decision::Retry(Failover::Timeout, After::Timeout),
            ),
            (
                Outcome::Broken,
                Decision::Retry(Failover::Broken, After::Failure),
            ),
            (
                Outcome::ServerError,
                Decision::Retry(Failover::Status5xx, After::Failure),
            ),
        ];
        for (outcome, decision) in want {
            assert_eq!(decide(outcome, first(1000), policy(true)), decision);
        }
    }

    #[test]
    fn only_a_refused_connect_is_retried_when_not_replayable() {
        for outcome in ALL {
            let got = decide(outcome, first(1000), policy(false));
            let want = match cause(outcome) {
                None => Decision::Done,
                Some(Failover::Connect) => Decision::Retry(Failover::Connect, After::Failure),
                Some(c) => Decision::GiveUp(c, Stop::NotReplayable),
            };
            assert_eq!(got, want, "{outcome:?}");
        }
    }

    #[test]
    fn attempts_and_time_bound_every_failure() {
        for outcome in ALL.into_iter().skip(1) {
            let c = cause(outcome).unwrap();
            let last = Attempt {
                number: 3,
                left: Duration::from_secs(1),
            };
            assert_eq!(
                decide(outcome, last, policy(true)),
                Decision::GiveUp(c, Stop::Exhausted),
                "{outcome:?}"
            );
            assert_eq!(
                decide(outcome, first(0), policy(true)),
                Decision::GiveUp(c, Stop::OutOfTime),
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn only_a_connect_refused_by_the_instance_cools_it_down() {
        let cooling: Vec<bool> = ALL.into_iter().map(cools_down).collect();
        assert_eq!(cooling, [false, true, false, false, false, false]);
        assert!(!cools_down(Outcome::ShortOfResources));
    }
}
