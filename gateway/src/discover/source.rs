//! Where the request path gets its instances from: the seam between
//! [`crate::proxy::failover`] and discovery, in the spirit of Pingora's
//! `ServiceDiscovery`.
//!
//! Two sources implement [`DiscoverySource`]:
//!
//! - [`Push`] (the default): discovery pushes each namespace's available set
//!   over `/api/watch` ([`crate::discover::watch`]) and requests pick from the local
//!   ring; the hot path makes no discovery call. Only after a timeout does it
//!   ask `/api/lookup`, to learn which instance is available now.
//! - [`Lookup`]: for a discovery without a watch stream (the seed's Go
//!   discovery answers 404 on `/api/watch`). Every try asks `POST /api/lookup
//!   {"namespace", "exclude"}`, as the seed's own flow does, and falls back to
//!   the ring (whatever a watch left in it) only when discovery does not answer.
//!
//! The watcher chooses per namespace: a whole round of `discovery_url`s that
//! opened no stream, one of them answering 404, switches the namespace to
//! [`Lookup`]; the watch is retried every [`LOOKUP_RECHECK`], and its first
//! snapshot switches back to [`Push`]. `/status` shows the source and URL.

use crate::balance::origin::Kind;
use crate::balance::pool::{resolve, Upstream};
use crate::balance::ring::Balancer;
use crate::context::Context;
use crate::runtime::deadline::Deadline;
use serde::Deserialize;
use serde_json::{json, Value};
use shared::wire::{authority, LookupRequest, Port};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How often a namespace in lookup mode tries the watch again, in case
/// discovery was upgraded to one that has it.
pub(crate) const LOOKUP_RECHECK: Duration = Duration::from_secs(10);

/// Lookups more when discovery names an instance the request already tried.
const MAX_REASKS: usize = 3;

/// Why the request path wants another instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum After {
    /// The request's first try.
    Start,
    /// The previous try timed out: the instance may be busy, ask discovery.
    Timeout,
    /// The previous try was refused, broke, or answered 5xx.
    Failure,
}

/// What a pick needs to know about the request.
#[derive(Debug)]
pub(crate) struct Pick<'a> {
    pub(crate) ctx: &'a Context,
    pub(crate) balancer: &'a Balancer,
    /// Instances this request already tried (excluded).
    pub(crate) tried: &'a [Arc<Upstream>],
    pub(crate) deadline: &'a Deadline,
    /// Time left of the request's deadline.
    pub(crate) left: Duration,
}

/// One way of finding the instance for a request's next try.
pub(crate) trait DiscoverySource {
    /// The instance for the next try, or `None` when there is none to try.
    fn next<'a>(
        &'a self,
        pick: &'a Pick<'a>,
        after: After,
    ) -> impl Future<Output = Option<Arc<Upstream>>> + Send + 'a;
}

/// Largest lookup answer read: one instance's JSON is a few hundred bytes.
const MAX_LOOKUP_ANSWER: u64 = 64 * 1024;

/// Pushed sets: the ring, and a lookup only after a timeout.
#[derive(Debug)]
pub(crate) struct Push;

/// The seed's flow: a lookup per try.
#[derive(Debug)]
pub(crate) struct Lookup;

impl DiscoverySource for Push {
    async fn next<'a>(&'a self, pick: &'a Pick<'a>, after: After) -> Option<Arc<Upstream>> {
        if after == After::Timeout {
            if let Some(found) = lookup(pick).await {
                return Some(found);
            }
        }
        pick.balancer.pick(pick.tried)
    }
}

impl DiscoverySource for Lookup {
    async fn next<'a>(&'a self, pick: &'a Pick<'a>, _after: After) -> Option<Arc<Upstream>> {
        match lookup(pick).await {
            Some(found) => Some(found),
            None => pick.balancer.pick(pick.tried),
        }
    }
}

/// The next instance for a request of `pick.balancer`'s namespace, from the
/// namespace's current source.
pub(crate) async fn next(pick: &Pick<'_>, after: After) -> Option<Arc<Upstream>> {
    match pick.balancer.source.kind() {
        Kind::Watch => Push.next(pick, after).await,
        Kind::Lookup => Lookup.next(pick, after).await,
    }
}

/// `/status` of one namespace's source.
pub(crate) fn status(ctx: &Context, balancer: &Balancer) -> Value {
    let urls = ctx.config.discovery_urls();
    let s = &balancer.source;
    let url = |i: Option<usize>| i.and_then(|i| urls.get(i).cloned());
    json!({
        "source": s.kind().as_str(),
        "watch_url": url(s.watching()),
        "lookup_url": url(s.lookup_order(urls.len()).first().copied()),
    })
}

/// A lookup answer, read leniently: the seed answers `{"ip", "port", ...}`
/// (no `host`, no `id`, port as a string), ours both `host` and `ip`.
#[derive(Deserialize)]
struct Found {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    ip: Option<String>,
    port: Port,
}

/// Asks discovery for an available instance other than those tried, trying
/// the URLs in [`crate::balance::origin::Origin::lookup_order`] within `lookup_timeout`; `None` if no
/// discovery names one in time.
pub(crate) async fn lookup(pick: &Pick<'_>) -> Option<Arc<Upstream>> {
    let (ctx, balancer) = (pick.ctx, pick.balancer);
    let urls = ctx.config.discovery_urls();
    let request = LookupRequest {
        namespace: balancer.namespace.clone(),
        exclude: pick.tried.iter().map(|t| t.key.clone()).collect(),
    };
    let asking = async {
        let mut outcome = Err("error");
        // The seed's discovery ignores `exclude`, but its round robin names
        // the next instance when asked again.
        for _ in 0..=pick.tried.len().min(MAX_REASKS) {
            outcome = Err("error");
            for at in balancer.source.lookup_order(urls.len()) {
                outcome = ask(ctx, balancer, &urls[at], &request).await;
                if !matches!(outcome, Err("error")) {
                    // It answered: the next lookup starts there.
                    balancer.source.set_answered(at);
                    break;
                }
            }
            match &outcome {
                Ok(found) if pick.tried.iter().any(|t| t.key == found.key) => continue,
                _ => break,
            }
        }
        outcome
    };
    let limit = ctx.config.lookup_timeout.min(pick.left);
    let outcome = match pick.deadline.within(limit, asking).await {
        Ok(Ok(found)) if !pick.tried.iter().any(|t| t.key == found.key) => Ok(found),
        Ok(Ok(_)) => Err("error"),
        Ok(Err(outcome)) => Err(outcome),
        Err(_) => Err("timeout"),
    };
    match outcome {
        Ok(found) => {
            ctx.metrics.lookup("ok");
            Some(found)
        }
        Err(outcome) => {
            ctx.metrics.lookup(outcome);
            log::debug!(namespace = balancer.namespace.as_str(), outcome = outcome;
                "discovery lookup gave nothing; falling back to the ring");
            None
        }
    }
}

/// One lookup at one discovery URL. `Err("none_available")`: it answered
/// that it has none; `Err("error")`: it did not answer usefully.
async fn ask(
    ctx: &Context,
    balancer: &Balancer,
    base: &str,
    request: &LookupRequest,
) -> Result<Arc<Upstream>, &'static str> {
    let url = format!("{base}/api/lookup");
    let mut res = ctx
        .discovery
        .post(&url)
        .body_json(request)
        .map_err(|_| "error")?
        .await
        .map_err(|_| "error")?;
    match u16::from(res.status()) {
        200 => {}
        503 | 404 => return Err("none_available"),
        _ => return Err("error"),
    }
    // Read with a cap: a lookup answer is one instance, and a hostile or
    // broken discovery must not grow the gateway for `lookup_timeout`.
    let mut body = Vec::new();
    futures_lite::AsyncReadExt::read_to_end(
        &mut futures_lite::AsyncReadExt::take(&mut res, MAX_LOOKUP_ANSWER + 1),
        &mut body,
    )
    .await
    .map_err(|_| "error")?;
    if body.len() as u64 > MAX_LOOKUP_ANSWER {
        return Err("error");
    }
    let found: Found = serde_json::from_slice(&body).map_err(|_| "error")?;
    let host = found.host.or(found.ip).ok_or("error")?;
    let key = authority(&host, found.port);
    if let Some(member) = balancer.ring().members.iter().find(|m| m.key == key) {
        return Ok(member.clone());
    }
    // An instance whose host does not resolve is still an answer: made
    // without addresses, its try fails at once as a skipped connect, is
    // counted and logged once, and the next lookup excludes it.
    let addrs = resolve(&host, found.port.0).await.unwrap_or_default();
    Ok(ctx.upstreams.get(&key, addrs, &balancer.namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_lookup_answers_are_read() {
        let f: Found =
            serde_json::from_str(r#"{"ip":"127.0.0.1","port":"8080","namespace":"service A"}"#)
                .unwrap();
        assert_eq!(
            (f.host, f.ip.as_deref(), f.port),
            (None, Some("127.0.0.1"), Port(8080))
        );
    }
}
