//! The retry policy: which instance to try next, and whether to try at all.
//!
//! Which instance comes next is the [`crate::source`]'s answer: with the
//! watch, the ring (and discovery's lookup after a timeout); with a
//! discovery that has no watch, a lookup per try.
//!
//! - Connect failure: the request never left, so the next ring member is
//!   tried at once, and the instance is skipped for `connect_cooldown`.
//! - Timeout: the instance may be processing the request. Retried only for
//!   idempotent methods or with `retry_non_idempotent`; the next instance is
//!   the one discovery's `/api/lookup` names (excluding those tried, which also
//!   makes discovery re-check them at once), or, if discovery does not answer
//!   within `lookup_timeout`, the next untried ring member.
//! - Broken connection (before a complete response head): same method rule,
//!   next ring member.
//! - 5xx answer: only with `retry_on_5xx`, same method rule.
//!
//! All within `max_attempts` tries and `request_deadline`; the decision is
//! [`crate::retry::decide`], a pure function of the try's outcome. When nothing is
//! left: 503 if there was no instance to try, 504 if every try timed out,
//! else 502.

use crate::codec;
use crate::forward::{self, Deadlines, Exchange, Try};
use crate::pool::Upstream;
use crate::retry;
use crate::ring::Balancer;
use crate::runtime::Until;
use crate::session::Session;
use crate::source::{self, After, Pick};
use crate::Context;
use std::sync::Arc;

/// How a request ended.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub client_open: bool,
    /// Instances tried.
    pub attempts: u32,
}

/// Serves one request: tries instances until one answers or the policy says stop.
pub async fn serve(
    ctx: &Context,
    balancer: &Balancer,
    ex: &Exchange<'_>,
    session: &mut Session,
) -> Reply {
    let config = &ctx.config;
    let give_up_at = Until::after(config.request_deadline);
    let mut tried: Vec<Arc<Upstream>> = Vec::new();
    let mut timeouts = 0u32;
    let mut last_failure = String::new();
    // The gateway itself is short of descriptors or ports: no instance is to blame.
    let mut short_of: Option<std::io::Error> = None;
    let mut next = source::next(
        &Pick {
            ctx,
            balancer,
            tried: &tried,
            deadline: session.deadline(),
            left: config.request_deadline,
        },
        After::Start,
    )
    .await;
    while let Some(target) = next.take() {
        let left = give_up_at.left();
        tried.push(target.clone());
        let attempts = tried.len() as u32;
        let another_allowed = attempts < config.max_attempts;
        let deadlines = Deadlines {
            connect: config.connect_timeout.min(left),
            head: config.upstream_timeout.min(left),
            body: config.upstream_timeout,
            client: config.idle_timeout,
        };
        let fail_on_5xx =
            config.retry_on_5xx && ex.replayable && another_allowed && balancer.has_untried(&tried);
        let mut io = forward::Io {
            session: &mut *session,
            limits: deadlines,
        };
        let tried_now = forward::try_once(&target, ex, &mut io, fail_on_5xx, &ctx.metrics).await;
        let outcome = match &tried_now {
            Try::Answered { .. } => retry::Outcome::Answered,
            // A connect cut short by the request's own deadline says nothing about the instance.
            Try::ConnectFailed(e) => retry::Outcome::ConnectFailed {
                cut_short: e.kind() == std::io::ErrorKind::TimedOut
                    && deadlines.connect < config.connect_timeout,
            },
            Try::TimedOut => retry::Outcome::TimedOut,
            Try::Broken(_) => retry::Outcome::Broken,
            Try::ServerError(_) => retry::Outcome::ServerError,
            Try::ShortOfResources(_) => retry::Outcome::ShortOfResources,
        };
        if retry::cools_down(outcome) {
            target.cool_down(config.connect_cooldown);
        }
        match tried_now {
            Try::Answered {
                status,
                client_open,
            } => {
                return Reply {
                    status,
                    client_open,
                    attempts,
                }
            }
            Try::ShortOfResources(e) => {
                // Out of descriptors or local ports: every other instance would fail
                // the same way, and cooling them down would empty the ring for
                // everyone once the shortage is over. Answer 503 and keep the ring.
                short_of = Some(e);
                break;
            }
            Try::ConnectFailed(e) => {
                last_failure = format!("cannot connect to {}: {e}", target.key)
            }
            Try::TimedOut => {
                timeouts += 1;
                last_failure = format!("{} did not answer within {:?}", target.key, deadlines.head);
            }
            Try::Broken(why) => {
                last_failure = format!("{} broke the connection: {why}", target.key)
            }
            Try::ServerError(status) => last_failure = format!("{} answered {status}", target.key),
        }
        let left = give_up_at.left();
        let policy = retry::Policy {
            replayable: ex.replayable,
            max_attempts: config.max_attempts,
        };
        let (cause, after) = match retry::decide(
            outcome,
            retry::Attempt {
                number: attempts,
                left,
            },
            policy,
        ) {
            retry::Decision::Retry(cause, after) => (cause, after),
            retry::Decision::GiveUp(cause, retry::Stop::NotReplayable) => {
                log::warn!(request_id = ex.request_id, upstream = target.key.as_str(), cause = cause.as_str();
                    "not retried: the method is not idempotent and retry_non_idempotent is off");
                last_failure.push_str(
                    "; not retried: the method is not idempotent and retry_non_idempotent is off",
                );
                break;
            }
            retry::Decision::GiveUp(..) | retry::Decision::Done => break,
        };
        let pick = Pick {
            ctx,
            balancer,
            tried: &tried,
            deadline: session.deadline(),
            left,
        };
        next = source::next(&pick, after).await;
        if let Some(n) = &next {
            ctx.metrics.failover(cause);
            log::warn!(request_id = ex.request_id, from = target.key.as_str(), to = n.key.as_str(),
                cause = cause.as_str(), attempt = attempts; "failing over: {last_failure}");
        }
    }
    let attempts = tried.len() as u32;
    let (status, code, message) = if let Some(e) = short_of {
        ctx.metrics.local_shortages.inc();
        (
            503,
            "overloaded",
            format!("the gateway cannot open a connection now: {e}"),
        )
    } else if tried.is_empty() {
        (
            503,
            "no_available_instance",
            format!("no available instance of {:?}", balancer.namespace),
        )
    } else if timeouts == attempts || give_up_at.passed() {
        (504, "upstream_timeout", last_failure)
    } else {
        (502, "bad_gateway", last_failure)
    };
    log::warn!(request_id = ex.request_id, status = status, attempts = attempts; "{message}");
    let keep_alive = ex.keep_alive();
    let framing = codec::ErrorFraming {
        close: !keep_alive,
        head_request: ex.head_request,
    };
    let written = session
        .write_error(
            status,
            code,
            &message,
            ex.request_id,
            framing,
            config.idle_timeout,
        )
        .await;
    Reply {
        status,
        client_open: keep_alive && written,
        attempts,
    }
}
