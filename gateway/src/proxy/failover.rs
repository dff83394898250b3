//! The tries of one request: which instance next, and whether to try at all.
//!
//! Which instance comes next is the [`crate::discover::source`]'s answer: with the
//! watch, the ring (and discovery's lookup after a timeout); with a
//! discovery that has no watch, a lookup per try. Whether there is a next
//! try is [`crate::proxy::retry::decide`], a pure function of the try's outcome,
//! whose comment has the rule: a request goes to a second instance only
//! when the first provably has not answered it.
//!
//! A refused connect skips the instance for `connect_cooldown`; a wrong
//! answer counts against it ([`crate::balance::passive`]). When nothing is left: 503
//! if there was no instance to try, 504 if every try timed out, else 502.
//! What the client reads says what happened, never where: the instance's
//! address and the parser's details go to the log and `/status`.

use crate::balance::passive::Fault;
use crate::balance::pool::{self, Upstream};
use crate::balance::ring::Balancer;
use crate::context::Context;
use crate::discover::source::{self, After, Pick};
use crate::http::codec;
use crate::http::session::Session;
use crate::proxy::forward::{self, Deadlines, Exchange, Try};
use crate::proxy::retry;
use crate::runtime::Until;
use std::sync::Arc;

/// How a request ended.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) client_open: bool,
    /// Instances tried.
    pub(crate) attempts: u32,
}

/// What the failed tries of one request add up to.
#[derive(Default)]
struct Failures {
    tried: Vec<Arc<Upstream>>,
    timeouts: u32,
    /// For the log: which instance, and what exactly went wrong.
    detail: String,
    /// For the client: what went wrong, without addresses or parser internals.
    public: String,
    /// The gateway itself is short of descriptors or ports: no instance is to blame.
    short_of: Option<std::io::Error>,
}

/// Serves one request: tries instances until one answers or the policy says stop.
pub(crate) async fn serve(
    ctx: &Context,
    balancer: &Balancer,
    ex: &Exchange<'_>,
    session: &mut Session,
) -> Reply {
    let config = &ctx.config;
    let give_up_at = Until::after(config.request_deadline);
    let mut failures = Failures::default();
    let mut next = pick_next(
        ctx,
        balancer,
        &failures.tried,
        session,
        &give_up_at,
        After::Start,
    )
    .await;
    while let Some(target) = next.take() {
        failures.tried.push(target.clone());
        let attempts = failures.tried.len() as u32;
        let (tried_now, deadlines) = try_one(
            ctx,
            balancer,
            ex,
            session,
            &target,
            &failures.tried,
            &give_up_at,
        )
        .await;
        let outcome = outcome_of(&tried_now, deadlines.connect < config.connect_timeout);
        // A member allowed_upstreams refuses, or that does not resolve,
        // fails over like a refused connect: counted, logged once per member
        // and reason, never per request.
        let skipped = match &tried_now {
            Try::ConnectFailed(e) => pool::skipped(e).map(|why| (why, e.to_string())),
            _ => None,
        };
        if let Some((why, detail)) = &skipped {
            if ctx.metrics.skipped(*why, &target.key) {
                log::warn!(upstream = target.key.as_str(), reason = why.as_str();
                    "skipping this instance on every request, as if it refused connections: {detail}");
            }
        }
        if retry::cools_down(outcome) {
            target.cool_down(config.connect_cooldown);
        }
        if let Try::Answered {
            status,
            client_open,
        } = tried_now
        {
            return Reply {
                status,
                client_open,
                attempts,
            };
        }
        failures.note(&target, tried_now, deadlines.head);
        let policy = retry::Policy {
            replayable: ex.replayable,
            max_attempts: config.max_attempts,
        };
        let attempt = retry::Attempt {
            number: attempts,
            left: give_up_at.left(),
        };
        let (cause, after) = match retry::decide(outcome, attempt, policy) {
            retry::Decision::Retry(cause, after) => (cause, after),
            retry::Decision::GiveUp(cause, stop) => {
                if let Some(why) = stop.why_not_retried() {
                    log::warn!(request_id = ex.request_id, upstream = target.key.as_str(), cause = cause.as_str(); "{why}");
                    failures.public.push_str("; ");
                    failures.public.push_str(why);
                }
                break;
            }
            retry::Decision::Done => break,
        };
        next = pick_next(ctx, balancer, &failures.tried, session, &give_up_at, after).await;
        if let Some(n) = &next {
            ctx.metrics.failover(cause);
            if skipped.is_some() {
                log::debug!(request_id = ex.request_id, from = target.key.as_str(), to = n.key.as_str();
                    "skipped: {}", failures.detail);
            } else {
                log::warn!(request_id = ex.request_id, from = target.key.as_str(), to = n.key.as_str(),
                    cause = cause.as_str(), attempt = attempts; "failing over: {}", failures.detail);
            }
        }
    }
    failures
        .answer(ctx, balancer, ex, session, &give_up_at)
        .await
}

/// The next instance, or `None` when the source has none left to try.
async fn pick_next(
    ctx: &Context,
    balancer: &Balancer,
    tried: &[Arc<Upstream>],
    session: &Session,
    give_up_at: &Until,
    after: After,
) -> Option<Arc<Upstream>> {
    let pick = Pick {
        ctx,
        balancer,
        tried,
        deadline: session.deadline(),
        left: give_up_at.left(),
    };
    source::next(&pick, after).await
}

/// One try on `target`, and the deadlines it had.
async fn try_one(
    ctx: &Context,
    balancer: &Balancer,
    ex: &Exchange<'_>,
    session: &mut Session,
    target: &Upstream,
    tried: &[Arc<Upstream>],
    give_up_at: &Until,
) -> (Try, Deadlines) {
    let config = &ctx.config;
    let left = give_up_at.left();
    let deadlines = Deadlines {
        connect: config.connect_timeout.min(left),
        head: config.upstream_timeout.min(left),
        body: config.upstream_timeout,
        client: config.idle_timeout,
    };
    let another_allowed = (tried.len() as u32) < config.max_attempts;
    let fail_on_5xx =
        config.retry_on_5xx && ex.replayable && another_allowed && balancer.has_untried(tried);
    let mut io = forward::Io {
        session,
        limits: deadlines,
    };
    let tried_now = forward::try_once(target, ex, &mut io, fail_on_5xx, &ctx.metrics).await;
    (tried_now, deadlines)
}

/// The policy's view of a try. A connect cut short by the request's own
/// deadline (`connect_cut`: its deadline was below `connect_timeout`) says
/// nothing about the instance.
fn outcome_of(tried: &Try, connect_cut: bool) -> retry::Outcome {
    match tried {
        Try::Answered { .. } => retry::Outcome::Answered,
        Try::ConnectFailed(e) => retry::Outcome::ConnectFailed {
            cut_short: e.kind() == std::io::ErrorKind::TimedOut && connect_cut,
        },
        Try::ClosedBeforeAnswer(_) => retry::Outcome::ClosedBeforeAnswer,
        Try::TimedOut => retry::Outcome::TimedOut,
        Try::BadAnswer(..) => retry::Outcome::BadAnswer,
        Try::ServerError(_) => retry::Outcome::ServerError,
        Try::ShortOfResources(_) => retry::Outcome::ShortOfResources,
    }
}

impl Failures {
    /// Records a failed try: the detail for the log, the gist for the client.
    fn note(&mut self, target: &Upstream, tried: Try, head: std::time::Duration) {
        let key = &target.key;
        let (detail, public) = match tried {
            Try::Answered { .. } => return,
            Try::ShortOfResources(e) => {
                self.short_of = Some(e);
                return;
            }
            Try::ConnectFailed(e) => (
                format!("cannot connect to {key}: {e}"),
                "no instance could be reached".to_string(),
            ),
            Try::TimedOut => {
                self.timeouts += 1;
                (
                    format!("{key} did not answer within {head:?}"),
                    format!("no instance answered within {head:?}"),
                )
            }
            Try::ClosedBeforeAnswer(why) => (
                format!("{key} closed the connection before answering: {why}"),
                "the instance closed the connection before answering".to_string(),
            ),
            Try::BadAnswer(fault, why) => (
                format!("{key} sent a bad answer ({}): {why}", fault.as_str()),
                match fault {
                    Fault::CutShort => "the instance's answer was cut short",
                    Fault::WrongRequestId => {
                        "the instance's answer did not carry this request's x-request-id"
                    }
                    Fault::Malformed | Fault::StrayBytes => "the instance's answer was malformed",
                }
                .to_string(),
            ),
            Try::ServerError(status) => (
                format!("{key} answered {status}"),
                format!("the instance answered {status}"),
            ),
        };
        self.detail = detail;
        self.public = public;
    }

    /// Answers the client with the error the failed tries add up to.
    async fn answer(
        self,
        ctx: &Context,
        balancer: &Balancer,
        ex: &Exchange<'_>,
        session: &mut Session,
        give_up_at: &Until,
    ) -> Reply {
        let attempts = self.tried.len() as u32;
        let (status, code, message) = if let Some(e) = &self.short_of {
            ctx.metrics.local_shortages.inc();
            log::warn!(request_id = ex.request_id; "cannot open an upstream connection: {e}");
            (
                503,
                "overloaded",
                "the gateway cannot open a connection now".to_string(),
            )
        } else if self.tried.is_empty() {
            (
                503,
                "no_available_instance",
                format!("no available instance of {:?}", balancer.namespace),
            )
        } else if self.timeouts == attempts || give_up_at.passed() {
            (504, "upstream_timeout", self.public)
        } else {
            (502, "bad_gateway", self.public)
        };
        if self.detail.is_empty() {
            log::warn!(request_id = ex.request_id, status = status, attempts = attempts; "{message}");
        } else {
            log::warn!(request_id = ex.request_id, status = status, attempts = attempts; "{message} ({})", self.detail);
        }
        let keep_alive = ex.keep_alive();
        let framing = codec::ErrorFraming {
            close: !keep_alive,
            head_request: ex.head_request,
        };
        let idle = ctx.config.idle_timeout;
        let written = session
            .write_error(status, code, &message, ex.request_id, framing, idle)
            .await;
        Reply {
            status,
            client_open: keep_alive && written,
            attempts,
        }
    }
}
