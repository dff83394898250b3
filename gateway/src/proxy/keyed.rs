//! `Idempotency-Key` on the request path: a route that honours keys serves
//! each request here ([`crate::idempotency`] has the records and stores).
//!
//! A keyed request is claimed in the store (in flight), forwarded through
//! [`failover`] with the keyed retry rule (only a failed connect goes to
//! another instance) while the session's tap copies the answer, then
//! settled: completed with its answer, not stored, outcome unknown, or
//! forgotten when it never reached an instance. A repeat is answered from
//! the record without reaching an instance.

use crate::balance::ring::{Balancer, Route};
use crate::context::Context;
use crate::http::codec::{AnswerTo, ErrorFraming};
use crate::http::session::Session;
use crate::idempotency::key::{self, KeyRead, Keyed};
use crate::idempotency::record::{self, Record, Seen, State};
use crate::idempotency::store::StoreError;
use crate::idempotency::{self as idem};
use crate::observe::idempotency::Event;
use crate::proxy::failover::{self, Reply};
use crate::proxy::forward::Exchange;
use shared::config::IdempotencyConfig;
use std::time::Duration;

/// The idempotency rule of a route, if it honours keys.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rule<'a> {
    pub(crate) prefix: &'a str,
    pub(crate) config: &'a IdempotencyConfig,
}

/// The rule of `route` in the context `now`, if its mode is not off.
pub(crate) fn rule_of(now: &Context, route: Route) -> Option<Rule<'_>> {
    let prefix = now.router.prefix(route)?;
    let config = now.router.idempotency(route)?;
    Some(Rule { prefix, config })
}

/// Serves a request on a route that honours keys.
pub(crate) async fn serve(
    now: &Context,
    rule: Rule<'_>,
    balancer: &Balancer,
    ex: &Exchange<'_>,
    session: &mut Session,
) -> Reply {
    let counts = &now.metrics.idempotency;
    let (event, code, why) = match key::read(ex.request, rule.prefix, rule.config) {
        KeyRead::Pass => return failover::serve_request(now, balancer, ex, session).await,
        KeyRead::Keyed(keyed) => {
            counts.count(rule.prefix, Event::Keyed);
            // Not boxed again: the connection boxes this whole future.
            return serve_keyed(now, rule, balancer, ex, session, &keyed).await;
        }
        KeyRead::Missing => (
            Event::Missing,
            "idempotency_key_missing",
            "this route requires an Idempotency-Key header on this method: send a unique key (a UUID, say) and the same key again when retrying",
        ),
        KeyRead::Invalid(why) => (Event::Invalid, "idempotency_key_invalid", why),
    };
    counts.count(rule.prefix, event);
    refuse(now, ex, session, (400, code, why), None).await
}

/// Claims the key, then runs the request or answers from the record.
async fn serve_keyed(
    now: &Context,
    rule: Rule<'_>,
    balancer: &Balancer,
    ex: &Exchange<'_>,
    session: &mut Session,
    keyed: &Keyed,
) -> Reply {
    let record = Record {
        fingerprint: keyed.fingerprint,
        state: State::InFlight,
        since_ms: idem::now_ms(),
        request_id: ex.request_id.to_string(),
        token: String::new(),
        tries: Vec::new(),
    };
    let store = &now.idempotency;
    match claim(now, rule, keyed, &record, session).await {
        Ok(None) => execute(now, rule, balancer, ex, session, keyed, record).await,
        Ok(Some(seen)) => answer_repeat(now, rule, ex, session, seen).await,
        Err(e) if store.fail_open => {
            log::warn!(request_id = ex.request_id, route = rule.prefix; "idempotency store unavailable, forwarding without the at-most-once guarantee (idempotency_fail_open): {e}");
            now.metrics
                .idempotency
                .count(rule.prefix, Event::FailedOpen);
            failover::serve_request(now, balancer, ex, session).await
        }
        Err(e) => {
            log::warn!(request_id = ex.request_id, route = rule.prefix; "idempotency store unavailable, refusing the keyed request: {e}");
            now.metrics
                .idempotency
                .count(rule.prefix, Event::FailedClosed);
            let why = "the idempotency store cannot be reached, so the request was not run; try again with the same key";
            refuse(
                now,
                ex,
                session,
                (503, "idempotency_store_unavailable", why),
                None,
            )
            .await
        }
    }
}

/// Pauses before a repeat that found its key in flight asks again, then a
/// 409. The first request's record settles just after the last byte of its
/// answer went out, so a client that repeats the moment it has the answer
/// would otherwise get a 409 where the replay is a few microseconds away.
const IN_FLIGHT_GRACE: [Duration; 4] = [
    Duration::from_millis(5),
    Duration::from_millis(15),
    Duration::from_millis(30),
    Duration::from_millis(50),
];

/// Claims the key: `None` when this request is the one to run, else what
/// the record means to it (asked again after each [`IN_FLIGHT_GRACE`]
/// pause while it is in flight).
async fn claim(
    now: &Context,
    rule: Rule<'_>,
    keyed: &Keyed,
    record: &Record,
    session: &Session,
) -> Result<Option<Seen>, StoreError> {
    let stale = idem::stale_after(&now.config);
    let mut pauses = IN_FLIGHT_GRACE.iter();
    loop {
        let claimed = now.idempotency.claim(&keyed.id, record, rule.config.ttl);
        let Some(found) = claimed.await? else {
            return Ok(None);
        };
        let seen = record::seen(found, &keyed.fingerprint, idem::now_ms(), stale);
        match pauses.next() {
            Some(pause) if seen == Seen::InFlight => session.pause(*pause).await,
            _ => return Ok(Some(seen)),
        }
    }
}

/// The first arrival: forwarded under the keyed retry rule with the answer
/// tapped, then the record settled (or released).
async fn execute(
    now: &Context,
    rule: Rule<'_>,
    balancer: &Balancer,
    ex: &Exchange<'_>,
    session: &mut Session,
    keyed: &Keyed,
    mut record: Record,
) -> Reply {
    now.metrics.idempotency.count(rule.prefix, Event::Executed);
    let ex = Exchange {
        keyed: true,
        replayable: false,
        ..*ex
    };
    session.start_tap(rule.config.max_stored_body);
    let mut reply = failover::serve_request(now, balancer, &ex, session).await;
    let captured = session.take_tap();
    let settled = record::settle(captured, reply.sent, reply.status);
    if let Some(State::Unknown { why }) = &settled {
        log::warn!(request_id = ex.request_id, route = rule.prefix, tries:? = reply.tries; "idempotency key's outcome unknown, kept so that it does not run again: {why}");
    }
    if let Some(State::NotStored { body_bytes, .. }) = &settled {
        log::info!(request_id = ex.request_id, route = rule.prefix, body_bytes = *body_bytes; "answer over max_stored_body: the key is kept as executed, not replayable");
    }
    record.tries = std::mem::take(&mut reply.tries);
    let kept = settled.map(|state| Record { state, ..record });
    if let Err(e) = now
        .idempotency
        .finish(&keyed.id, kept, rule.config.ttl)
        .await
    {
        // The record stays in flight, and reads as outcome unknown once stale.
        log::warn!(request_id = ex.request_id, route = rule.prefix; "cannot record how the keyed request ended: {e}");
    }
    reply
}

/// A repeat of a key: the stored answer, or why not.
async fn answer_repeat(
    now: &Context,
    rule: Rule<'_>,
    ex: &Exchange<'_>,
    session: &mut Session,
    seen: Seen,
) -> Reply {
    let counts = &now.metrics.idempotency;
    let (event, refusal, retry_after) = match seen {
        Seen::Replay(answer) => {
            counts.count(rule.prefix, Event::Replayed);
            return replay(now, ex, session, &answer).await;
        }
        Seen::Mismatch => (
            Event::Mismatch,
            (422, "idempotency_key_reused", "this Idempotency-Key was used with another request (method, target or body); use a new key for a new request".to_string()),
            None,
        ),
        Seen::InFlight => (
            Event::Conflict,
            (409, "idempotency_key_in_flight", "a request with this Idempotency-Key is still being processed; retry after it finishes".to_string()),
            Some(1),
        ),
        Seen::NotStored { status, body_bytes } => (
            Event::NotStored,
            (409, "idempotency_answer_not_stored", format!("the request with this Idempotency-Key was executed (status {status}) but its {body_bytes}-byte answer was larger than max_stored_body and cannot be replayed; it will not run again")),
            None,
        ),
        Seen::Unknown(why) => (
            Event::OutcomeUnknown,
            (409, "idempotency_outcome_unknown", format!("the request with this Idempotency-Key may have been executed and its outcome is unknown ({why}); it will not run again under this key: check its effect before retrying with a new key")),
            None,
        ),
    };
    counts.count(rule.prefix, event);
    let (status, code, message) = refusal;
    refuse(now, ex, session, (status, code, &message), retry_after).await
}

/// Replays a stored answer.
async fn replay(
    now: &Context,
    ex: &Exchange<'_>,
    session: &mut Session,
    answer: &crate::http::session::stored::StoredAnswer,
) -> Reply {
    let to = AnswerTo {
        request_id: ex.request_id,
        client_minor: ex.client_minor,
        keep_alive: ex.keep_alive(),
        head_request: ex.head_request,
    };
    let written = session
        .write_stored(answer, to, now.config.idle_timeout)
        .await;
    log::debug!(request_id = ex.request_id, status = answer.status; "idempotency key replayed");
    reply(answer.status, written.unwrap_or(false))
}

/// Answers the gateway's own JSON error (with `Retry-After` if given).
async fn refuse(
    now: &Context,
    ex: &Exchange<'_>,
    session: &mut Session,
    (status, code, message): (u16, &str, &str),
    retry_after: Option<u32>,
) -> Reply {
    log::info!(request_id = ex.request_id, status = status, code = code; "refused: {message}");
    let framing = ErrorFraming {
        retry_after,
        ..ErrorFraming::answering(ex.keep_alive(), ex.head_request)
    };
    let (id, idle) = (ex.request_id, now.config.idle_timeout);
    let written = session
        .write_error(status, code, message, id, framing, idle)
        .await;
    reply(status, written && !framing.close)
}

/// An answer the gateway gave without trying an instance.
fn reply(status: u16, client_open: bool) -> Reply {
    Reply {
        status,
        client_open,
        attempts: 0,
        sent: false,
        tries: Vec::new(),
    }
}
