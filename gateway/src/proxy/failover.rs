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
use crate::observe::causes::Failover;
use crate::proxy::forward::{self, ClientSide, Deadlines, Exchange, Try};
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
    /// Some try may have reached an instance (it was sent).
    pub(crate) sent: bool,
    /// For a keyed request's record: each try, `host:port outcome`.
    pub(crate) tries: Vec<String>,
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
    /// Some try was sent (not a failed connect).
    sent: bool,
    /// Each try, for a keyed request's record.
    tries: Vec<String>,
}

/// One request's tries: what they share, and what the failed ones add up to.
struct Tries<'a> {
    ctx: &'a Context,
    balancer: &'a Balancer,
    ex: &'a Exchange<'a>,
    /// `request_deadline`, from the first try.
    give_up_at: Until,
    failures: Failures,
}

/// Serves one request: tries instances until one answers or the policy says
/// stop, then answers the client with what the failures add up to.
pub(crate) async fn serve_request(
    ctx: &Context,
    balancer: &Balancer,
    ex: &Exchange<'_>,
    session: &mut Session,
) -> Reply {
    let config = &ctx.config;
    let mut tries = Tries {
        ctx,
        balancer,
        ex,
        give_up_at: Until::after(config.request_deadline),
        failures: Failures::default(),
    };
    let mut next = tries.pick_next(session, After::Start).await;
    while let Some(target) = next.take() {
        let (tried_now, deadlines) = tries.try_one(session, &target).await;
        let outcome = outcome_of(&tried_now, deadlines.connect < config.connect_timeout);
        tries.record(&target, outcome);
        let skipped = tries.note_skipped(&target, &tried_now);
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
                attempts: tries.attempts(),
                sent: true,
                tries: std::mem::take(&mut tries.failures.tries),
            };
        }
        tries.failures.note(&target, tried_now, deadlines.head);
        let Some((cause, after)) = tries.decide_retry(&target, outcome) else {
            break;
        };
        next = tries.pick_next(session, after).await;
        if let Some(to) = &next {
            tries.log_failover(&target, to, cause, skipped);
        }
    }
    tries.give_up(session).await
}

impl Tries<'_> {
    /// Instances tried so far.
    fn attempts(&self) -> u32 {
        self.failures.tried.len() as u32
    }

    /// Whether the try may have reached `target`, and (for a keyed
    /// request's record) how it ended.
    fn record(&mut self, target: &Upstream, outcome: retry::Outcome) {
        let never_left = matches!(
            outcome,
            retry::Outcome::ConnectFailed { .. } | retry::Outcome::ShortOfResources
        );
        self.failures.sent |= !never_left;
        if self.ex.keyed {
            let note = format!("{} {}", target.key, outcome.as_str());
            self.failures.tries.push(note);
        }
    }

    /// The next instance, or `None` when the source has none left to try.
    async fn pick_next(&self, session: &Session, after: After) -> Option<Arc<Upstream>> {
        let pick = Pick {
            ctx: self.ctx,
            balancer: self.balancer,
            tried: &self.failures.tried,
            deadline: session.deadline(),
            left: self.give_up_at.left(),
        };
        source::next(&pick, after).await
    }

    /// One try on `target` (counted as tried), and the deadlines it had.
    async fn try_one(&mut self, session: &mut Session, target: &Arc<Upstream>) -> (Try, Deadlines) {
        self.failures.tried.push(target.clone());
        let config = &self.ctx.config;
        let left = self.give_up_at.left();
        let deadlines = Deadlines {
            connect: config.connect_timeout.min(left),
            head: config.upstream_timeout.min(left),
            body: config.upstream_timeout,
            client: config.idle_timeout,
        };
        let tried = &self.failures.tried;
        let another_allowed = (tried.len() as u32) < config.max_attempts;
        let fail_on_5xx = config.retry_on_5xx
            && self.ex.replayable
            && another_allowed
            && self.balancer.has_untried(tried);
        let mut client = ClientSide {
            session,
            limits: deadlines,
        };
        let metrics = &self.ctx.metrics;
        let _in_flight = target.begin_try();
        let tried_now = forward::try_once(target, self.ex, &mut client, fail_on_5xx, metrics).await;
        (tried_now, deadlines)
    }

    /// A member allowed_upstreams refuses, or that does not resolve, fails
    /// over like a refused connect: counted, logged once per member and
    /// reason, never per request. Whether `tried` was such a skip.
    fn note_skipped(&self, target: &Upstream, tried: &Try) -> bool {
        let Try::ConnectFailed(e) = tried else {
            return false;
        };
        let Some(why) = pool::skipped(e) else {
            return false;
        };
        if self.ctx.metrics.skipped(why, &target.key) {
            log::warn!(upstream = target.key.as_str(), reason = why.as_str();
                "skipping this instance on every request, as if it refused connections: {e}");
        }
        true
    }

    /// What the policy says after a failed try on `target`: the cause to
    /// fail over for and where the next instance comes from, or `None` (the
    /// reason it was not retried, if the policy has one, goes to the log and
    /// the client's message).
    fn decide_retry(
        &mut self,
        target: &Upstream,
        outcome: retry::Outcome,
    ) -> Option<(Failover, After)> {
        let config = &self.ctx.config;
        let policy = retry::Policy {
            replayable: self.ex.replayable,
            keyed: self.ex.keyed,
            max_attempts: config.max_attempts,
        };
        let attempt = retry::Attempt {
            number: self.attempts(),
            left: self.give_up_at.left(),
        };
        match retry::decide(outcome, attempt, policy) {
            retry::Decision::Retry(cause, after) => Some((cause, after)),
            retry::Decision::GiveUp(cause, stop) => {
                if let Some(why) = stop.why_not_retried() {
                    log::warn!(request_id = self.ex.request_id, upstream = target.key.as_str(), cause = cause.as_str(); "{why}");
                    self.failures.public.push_str("; ");
                    self.failures.public.push_str(why);
                }
                None
            }
            retry::Decision::Done => None,
        }
    }

    /// Counts a failover from `from` to `to`, and logs it (a skipped member
    /// only at debug: it was logged once already).
    fn log_failover(&self, from: &Upstream, to: &Upstream, cause: Failover, skipped: bool) {
        self.ctx.metrics.failover(cause);
        let (request_id, detail) = (self.ex.request_id, &self.failures.detail);
        let (from, to) = (from.key.as_str(), to.key.as_str());
        if skipped {
            log::debug!(request_id = request_id, from = from, to = to; "skipped: {detail}");
        } else {
            log::warn!(request_id = request_id, from = from, to = to,
                cause = cause.as_str(), attempt = self.attempts(); "failing over: {detail}");
        }
    }

    /// Answers the client with the error the failed tries add up to.
    async fn give_up(mut self, session: &mut Session) -> Reply {
        let attempts = self.attempts();
        let (sent, tries) = (self.failures.sent, std::mem::take(&mut self.failures.tries));
        let ex = self.ex;
        let (status, code, message) =
            self.failures
                .verdict(self.ctx, self.balancer, ex.request_id, &self.give_up_at);
        let framing = codec::ErrorFraming::answering(ex.keep_alive(), ex.head_request);
        let idle = self.ctx.config.idle_timeout;
        let written = session
            .write_error(status, code, &message, ex.request_id, framing, idle)
            .await;
        Reply {
            status,
            client_open: !framing.close && written,
            attempts,
            sent,
            tries,
        }
    }
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

    /// The error the failed tries add up to (status, code, message), logged
    /// with the detail the client is not told.
    fn verdict(
        self,
        ctx: &Context,
        balancer: &Balancer,
        request_id: &str,
        give_up_at: &Until,
    ) -> (u16, &'static str, String) {
        let attempts = self.tried.len() as u32;
        let (status, code, message) = if let Some(e) = &self.short_of {
            ctx.metrics.local_shortages.inc();
            log::warn!(request_id = request_id; "cannot open an upstream connection: {e}");
            let message = "the gateway cannot open a connection now".to_string();
            (503, "overloaded", message)
        } else if self.tried.is_empty() {
            let message = format!("no available instance of {:?}", balancer.namespace);
            (503, "no_available_instance", message)
        } else if self.timeouts == attempts || give_up_at.passed() {
            (504, "upstream_timeout", self.public)
        } else {
            (502, "bad_gateway", self.public)
        };
        if self.detail.is_empty() {
            log::warn!(request_id = request_id, status = status, attempts = attempts; "{message}");
        } else {
            log::warn!(request_id = request_id, status = status, attempts = attempts; "{message} ({})", self.detail);
        }
        (status, code, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::test_support::{on_worker, read_to_end, session, socket_pair};
    use crate::proxy::test_support::{
        answering, balancer, config, context, instance, refusing_addr, upstream,
    };
    use shared::shutdown::Trigger;
    use std::sync::atomic::Ordering;

    const POST: &[u8] = b"POST /pay HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n{}";

    /// Serves `request` `times` on `ctx`'s first route, one after the other
    /// on one worker (whose pooled connections they share), each for a
    /// client of its own that reads to the end: how each ended, and what
    /// its client read.
    fn serve(
        ctx: &Arc<Context>,
        times: usize,
        request: &'static [u8],
        replayable: bool,
    ) -> Vec<(Reply, String)> {
        let (ours, clients): (Vec<_>, Vec<_>) = (0..times)
            .map(|_| {
                let (ours, mut peer) = socket_pair();
                (ours, std::thread::spawn(move || read_to_end(&mut peer)))
            })
            .unzip();
        let ctx = ctx.clone();
        let replies = on_worker(async move {
            let stop = Trigger::new();
            let ex = Exchange {
                request,
                request_id: "rid",
                head_request: false,
                client_minor: 1,
                wants_keep_alive: true,
                replayable,
                keyed: false,
                verify_request_id: false,
                forward_trailers: false,
                stop: &stop,
            };
            let mut replies = Vec::new();
            for ours in ours {
                let mut session = session(ours);
                replies.push(serve_request(&ctx, balancer(&ctx), &ex, &mut session).await);
            }
            replies
        });
        let read = clients
            .into_iter()
            .map(|c| String::from_utf8(c.join().unwrap()).unwrap());
        replies.into_iter().zip(read).collect()
    }

    /// The JSON error of an answer the gateway made.
    fn error_of(answer: &str) -> serde_json::Value {
        let body = answer.split_once("\r\n\r\n").unwrap().1;
        serde_json::from_str::<serde_json::Value>(body).unwrap()["error"].clone()
    }

    /// Two requests, so that one of them meets the refusing instance first
    /// whichever member the rotation starts at: that one goes on to the
    /// next, though the POST may not be sent twice (it never left), and
    /// the refusing instance cools down.
    #[test]
    fn a_refused_connect_goes_on_to_the_next_instance() {
        let (live, seen) = answering("paid");
        let dead = refusing_addr();
        let ctx = context(config(), &[dead, live]);
        let mut attempts = 0;
        for (reply, read) in serve(&ctx, 2, POST, false) {
            assert_eq!((reply.status, reply.client_open), (200, true), "{read}");
            assert!(read.ends_with("\r\n\r\npaid"), "{read}");
            attempts += reply.attempts;
        }
        assert_eq!(
            attempts, 3,
            "one of the two tried the refusing instance first"
        );
        assert_eq!(seen.load(Ordering::SeqCst), 2);
        assert!(upstream(&ctx, dead).is_cooling());
    }

    /// An instance that began an answer has the request: even a replayable
    /// POST is not sent to another, and the client learns why.
    #[test]
    fn a_post_is_not_retried_after_an_answer_began() {
        let cut = b"HTTP/1.1 200 OK\r\nContent-Le".to_vec();
        let (broken, broken_seen) = instance(Box::new(move |_| (vec![cut.clone()], true)));
        let (good, good_seen) = answering("paid");
        let ctx = context(config(), &[broken, good]);
        let mut statuses = Vec::new();
        for (reply, read) in serve(&ctx, 2, POST, true) {
            assert_eq!(reply.attempts, 1, "{read}");
            if reply.status == 502 {
                let error = error_of(&read);
                assert_eq!(error["code"], "bad_gateway");
                let message = error["message"].as_str().unwrap();
                assert!(message.contains("cut short"), "{message}");
                assert!(message.contains("not retried: the instance had begun to answer"));
            }
            statuses.push(reply.status);
        }
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 502]);
        assert_eq!(broken_seen.load(Ordering::SeqCst), 1);
        assert_eq!(good_seen.load(Ordering::SeqCst), 1);
    }

    /// An instance that closed without a byte of an answer may have taken
    /// the request: it goes to another instance only if it is replayable.
    #[test]
    fn a_request_that_may_have_reached_an_instance_is_retried_only_if_replayable() {
        for replayable in [false, true] {
            let (closing, _) = instance(Box::new(|_| (Vec::new(), true)));
            let (good, _) = answering("paid");
            let ctx = context(config(), &[closing, good]);
            let mut statuses: Vec<u16> = serve(&ctx, 2, POST, replayable)
                .iter()
                .map(|(reply, _)| reply.status)
                .collect();
            statuses.sort_unstable();
            let want = if replayable { [200, 200] } else { [200, 502] };
            assert_eq!(statuses, want, "replayable: {replayable}");
        }
    }

    #[test]
    fn no_instance_to_try_is_503_with_retry_after() {
        let ctx = context(config(), &[]);
        let (reply, read) = serve(&ctx, 1, POST, true).remove(0);
        assert_eq!((reply.status, reply.attempts), (503, 0));
        assert!(read.contains("\r\nretry-after: 1\r\n"), "{read}");
        assert_eq!(error_of(&read)["code"], "no_available_instance");
        assert_eq!(error_of(&read)["request_id"], "rid");
    }
}
