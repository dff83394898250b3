//! The retry decision as a pure function of one try's outcome, so every
//! branch of the policy is unit-tested without sockets. [`crate::proxy::failover`]
//! makes the tries and follows what [`decide`] says.
//!
//! The rule: a request goes to a second instance only when the first
//! provably has not answered it.
//! - A refused or failed connect: the request never left. Always retried.
//! - No byte of an answer: the connection closed or broke first, or
//!   `upstream_timeout` passed. The instance has not answered, but it may
//!   have taken the request (and died, or be processing it). Retried for
//!   idempotent methods (RFC 9110 section 9.2.2: a replay is harmless), and
//!   for the others only when `retry_non_idempotent` is on: the seed's flow,
//!   under which an instance killed with requests in flight fails no
//!   request, and a payment may run twice (say so to a payments team).
//! - A 5xx, with `retry_on_5xx`: the same rule.
//! - A request carrying an `Idempotency-Key` on a route that honours it
//!   ([`crate::proxy::keyed`]): only a failed connect. Two instances share
//!   no state, so once the request may have reached one (a timeout, a close
//!   before the answer, a 5xx) sending it to another could run it twice;
//!   its record says "outcome unknown" instead, whatever
//!   `retry_non_idempotent` says.
//! - Any byte of an answer arrived, and it was malformed, cut short, stalled
//!   or carried another request's id: never. The instance has the request;
//!   the client gets 502 and the instance is blamed ([`crate::balance::passive`]).
//!
//! All within `max_attempts` tries and `request_deadline`.

use crate::discover::source::After;
use crate::observe::causes::Failover;
use std::time::Duration;

/// How one try ended, as far as the policy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// An answer went to the client.
    Answered,
    /// No connection: the request never left. `cut_short` when the
    /// request's own deadline, not the instance, ended the connect.
    ConnectFailed { cut_short: bool },
    /// Sent; closed or broken before any byte of an answer.
    ClosedBeforeAnswer,
    /// Sent, and no byte of an answer in time: the instance may be processing it.
    TimedOut,
    /// Some of an answer arrived, and it was wrong.
    BadAnswer,
    /// A 5xx held back to fail over on.
    ServerError,
    /// The gateway itself is out of descriptors or local ports: every other
    /// instance would fail the same way, and no instance is to blame.
    ShortOfResources,
}

/// The request's side of the policy.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    /// An idempotent method, or `retry_non_idempotent`.
    pub(crate) replayable: bool,
    /// It carries an idempotency key: it may go again only if it never left.
    pub(crate) keyed: bool,
    pub(crate) max_attempts: u32,
}

/// Where the request stands after the try.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Attempt {
    /// Tries made so far, this one included.
    pub(crate) number: u32,
    /// Until `request_deadline`.
    pub(crate) left: Duration,
}

/// Why no further try is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// It may be running on the instance, and the method is not idempotent
    /// with `retry_non_idempotent` off.
    NotReplayable,
    /// The instance began an answer: it has the request.
    Answered,
    /// It carries an idempotency key and may have reached the instance.
    Keyed,
    /// `max_attempts` tries made.
    Exhausted,
    /// `request_deadline` passed.
    OutOfTime,
    /// The gateway is short of descriptors or ports: answer 503 at once.
    ShortOfResources,
}

impl Stop {
    /// Why the request was not sent again, for the log and the client's
    /// error message; `None` where running out of tries or time says it.
    pub(crate) fn why_not_retried(self) -> Option<&'static str> {
        match self {
            Stop::NotReplayable => {
                Some("not retried: the method is not idempotent and retry_non_idempotent is off")
            }
            Stop::Answered => Some("not retried: the instance had begun to answer"),
            Stop::Keyed => Some(
                "not retried: the request carries an Idempotency-Key and may have reached the instance",
            ),
            Stop::Exhausted | Stop::OutOfTime | Stop::ShortOfResources => None,
        }
    }
}

/// What to do after a try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The client has its answer.
    Done,
    /// Fail over for `cause`, picking the next instance as `After` says.
    Retry(Failover, After),
    /// Answer the client with an error.
    GiveUp(Failover, Stop),
}

impl Outcome {
    /// How the try ended, in an idempotency record's list of tries.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::ConnectFailed { .. } => "connect_failed",
            Outcome::ClosedBeforeAnswer => "closed_before_answer",
            Outcome::TimedOut => "timed_out",
            Outcome::BadAnswer => "bad_answer",
            Outcome::ServerError => "server_error",
            Outcome::ShortOfResources => "short_of_resources",
        }
    }
}

/// The cause a failed outcome is counted under (`None`: answered).
pub(crate) fn cause(outcome: Outcome) -> Option<Failover> {
    match outcome {
        Outcome::Answered => None,
        Outcome::ConnectFailed { .. } | Outcome::ShortOfResources => Some(Failover::Connect),
        Outcome::TimedOut => Some(Failover::Timeout),
        Outcome::ClosedBeforeAnswer | Outcome::BadAnswer => Some(Failover::Broken),
        Outcome::ServerError => Some(Failover::Status5xx),
    }
}

/// Whether the instance is skipped for `connect_cooldown`: it refused a
/// connection (a connect the request's own deadline cut says nothing).
/// Wrong answers cool it down through their count ([`crate::balance::passive`]).
pub(crate) fn cools_down(outcome: Outcome) -> bool {
    outcome == Outcome::ConnectFailed { cut_short: false }
}

/// Whether the policy lets this outcome go to another instance at all.
fn may_go_again(outcome: Outcome, policy: Policy) -> Result<(), Stop> {
    match outcome {
        Outcome::ShortOfResources => Err(Stop::ShortOfResources),
        Outcome::BadAnswer => Err(Stop::Answered),
        Outcome::ClosedBeforeAnswer | Outcome::TimedOut | Outcome::ServerError if policy.keyed => {
            Err(Stop::Keyed)
        }
        Outcome::ClosedBeforeAnswer | Outcome::TimedOut | Outcome::ServerError
            if !policy.replayable =>
        {
            Err(Stop::NotReplayable)
        }
        _ => Ok(()),
    }
}

/// The policy (see the module's comment), then `max_attempts` and the
/// request deadline. After a timeout the next instance comes from
/// discovery's lookup, otherwise from the ring.
pub(crate) fn decide(outcome: Outcome, attempt: Attempt, policy: Policy) -> Decision {
    let Some(cause) = cause(outcome) else {
        return Decision::Done;
    };
    if let Err(stop) = may_go_again(outcome, policy) {
        return Decision::GiveUp(cause, stop);
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

    const ALL: [Outcome; 7] = [
        Outcome::Answered,
        Outcome::ConnectFailed { cut_short: false },
        Outcome::ConnectFailed { cut_short: true },
        Outcome::ClosedBeforeAnswer,
        Outcome::TimedOut,
        Outcome::BadAnswer,
        Outcome::ServerError,
    ];

    fn first(left_ms: u64) -> Attempt {
        Attempt {
            number: 1,
            left: Duration::from_millis(left_ms),
        }
    }

    /// An idempotent method, or `retry_non_idempotent`, or neither.
    fn policy(replayable: bool) -> Policy {
        Policy {
            replayable,
            keyed: false,
            max_attempts: 3,
        }
    }

    /// A keyed request goes to another instance only when it never left,
    /// even where the method or `retry_non_idempotent` would replay it.
    #[test]
    fn a_keyed_request_is_retried_only_after_a_failed_connect() {
        for replayable in [true, false] {
            let keyed = Policy {
                keyed: true,
                ..policy(replayable)
            };
            for outcome in ALL {
                let got = decide(outcome, first(1000), keyed);
                match (outcome, got) {
                    (Outcome::Answered, Decision::Done) => {}
                    (Outcome::ConnectFailed { .. }, Decision::Retry(Failover::Connect, _)) => {}
                    (Outcome::BadAnswer, Decision::GiveUp(_, Stop::Answered)) => {}
                    (
                        Outcome::ClosedBeforeAnswer | Outcome::TimedOut | Outcome::ServerError,
                        Decision::GiveUp(_, Stop::Keyed),
                    ) => {}
                    _ => panic!("{outcome:?}: {got:?}"),
                }
            }
        }
    }

    /// An answer ends the request; a local shortage and a begun answer are
    /// never retried, whatever the method, attempts and time left.
    #[test]
    fn an_answer_a_local_shortage_or_a_begun_answer_ends_the_request_whatever_the_policy() {
        let want = [
            (Outcome::Answered, Decision::Done),
            (
                Outcome::ShortOfResources,
                Decision::GiveUp(Failover::Connect, Stop::ShortOfResources),
            ),
            (
                Outcome::BadAnswer,
                Decision::GiveUp(Failover::Broken, Stop::Answered),
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
    fn a_replayable_request_fails_over_on_everything_but_a_begun_answer() {
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
                Outcome::ClosedBeforeAnswer,
                Decision::Retry(Failover::Broken, After::Failure),
            ),
            (
                Outcome::TimedOut,
                Decision::Retry(Failover::Timeout, After::Timeout),
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
    fn only_a_failed_connect_is_retried_when_not_replayable() {
        for outcome in ALL {
            let got = decide(outcome, first(1000), policy(false));
            match (outcome, got) {
                (Outcome::Answered, Decision::Done) => {}
                (Outcome::ConnectFailed { .. }, Decision::Retry(Failover::Connect, _)) => {}
                (Outcome::BadAnswer, Decision::GiveUp(_, Stop::Answered)) => {}
                (_, Decision::GiveUp(_, Stop::NotReplayable)) => {}
                _ => panic!("{outcome:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn attempts_and_time_bound_every_failure_that_may_go_again() {
        let retryable = [
            Outcome::ConnectFailed { cut_short: false },
            Outcome::ConnectFailed { cut_short: true },
            Outcome::ClosedBeforeAnswer,
            Outcome::TimedOut,
            Outcome::ServerError,
        ];
        for outcome in retryable {
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
    fn only_a_connect_refused_by_the_instance_cools_it_down_at_once() {
        let cooling: Vec<bool> = ALL.into_iter().map(cools_down).collect();
        assert_eq!(cooling, [false, true, false, false, false, false, false]);
        assert!(!cools_down(Outcome::ShortOfResources));
    }

    #[test]
    fn every_stop_for_the_policy_says_why_and_running_out_does_not() {
        for stop in [Stop::NotReplayable, Stop::Answered, Stop::Keyed] {
            assert!(stop.why_not_retried().is_some(), "{stop:?}");
        }
        for stop in [Stop::Exhausted, Stop::OutOfTime, Stop::ShortOfResources] {
            assert!(stop.why_not_retried().is_none(), "{stop:?}");
        }
    }
}
