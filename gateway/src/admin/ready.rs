//! Readiness: the gateway accepts on its client port only once it can serve.
//!
//! The client sockets are bound at start (so a taken address fails the start
//! at once, and port 0 gives its port), but `listen()` waits until every
//! routed namespace has an available instance, or `ready_timeout` has passed
//! (0: at once). On Linux a SO_REUSEPORT socket joins its port's group only
//! at `listen()`, so until then a gateway that cannot serve (a route to a
//! namespace nobody registered, discovery out of reach) takes no connection
//! from its peers on a shared port, and a load balancer in front sees a
//! refused connection rather than a 503.
//!
//! After `ready_timeout` it listens anyway, saying loudly which namespaces
//! still have no instance: a gateway that never listened would look dead to
//! an operator, and a lone gateway (no peers on its port) serves its other
//! routes. On a shared port, set `ready_timeout` past the longest discovery
//! outage a start should wait out.
//!
//! A namespace served by lookups (a discovery without `/api/watch`) has no
//! ring to look at: it counts once a lookup for it answers 200.
//!
//! The admin port is up at once. `GET /health_check` stays liveness (200
//! while the process serves: a liveness probe that failed while a gateway
//! waits for discovery would have it restarted in a loop); `GET /ready` is
//! readiness: 503 with a JSON body until the client port is listened on,
//! and again once the gateway drains.

use crate::balance::origin::Kind;
use crate::context::Context;
use async_std::task;
use futures_lite::FutureExt;
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tide::{Request, StatusCode};

/// How often a starting gateway looks at its rings.
const POLL: Duration = Duration::from_millis(50);

/// Opens the gate once every routed namespace has an available instance, or
/// when `ready_timeout` has passed since the start; ends early if the
/// gateway stops first.
pub(crate) async fn open_when_ready(ctx: Arc<Context>) {
    let gate = ctx.gate.clone();
    let mut answered: HashSet<String> = HashSet::new();
    while !gate.is_closed() && !gate.has_opened() {
        let now = ctx.current();
        let waiting = waiting_for(&now, &mut answered).await;
        let timed_out = gate.age() >= now.config.ready_timeout;
        if waiting.is_empty() || timed_out {
            if waiting.is_empty() {
                log::info!("ready: every route has an available instance");
            } else {
                log::warn!(waiting_for = waiting.join(", ").as_str();
                    "NOT READY after ready_timeout ({}), listening anyway: requests for {} get 503 until an instance is available",
                    shared::config::format_duration(now.config.ready_timeout), waiting.join(", "));
            }
            open(&ctx);
            return;
        }
        task::sleep(POLL).or(gate.closes()).await;
    }
}

/// Opens the gate, or says loudly why the client port cannot be listened on.
pub(crate) fn open(ctx: &Context) {
    match ctx.gate.open() {
        Ok(()) if ctx.gate.is_open() => {
            ctx.metrics.ready.set(1);
        }
        Ok(()) => {}
        Err(e) => log::error!(addr:% = ctx.gate.addr();
            "cannot listen on {}: {e}; the gateway accepts no client", ctx.gate.addr()),
    }
}

/// The routed namespaces with no instance to send a request to: an empty
/// ring, or one whose every member `allowed_upstreams` refuses. One served
/// by lookups counts once a lookup for it answered (`answered` remembers).
async fn waiting_for(ctx: &Context, answered: &mut HashSet<String>) -> Vec<String> {
    let mut waiting = Vec::new();
    for b in ctx.router.balancers() {
        if has_instance(b) || answered.contains(&b.namespace) {
            continue;
        }
        if b.source.kind() == Kind::Lookup && lookup_answers(ctx, &b.namespace).await {
            answered.insert(b.namespace.clone());
            continue;
        }
        waiting.push(b.namespace.clone());
    }
    waiting
}

fn has_instance(b: &crate::balance::ring::Balancer) -> bool {
    b.ring().members.iter().any(|m| !m.is_refused())
}

/// Whether some discovery URL answers a lookup for `namespace` with an instance.
async fn lookup_answers(ctx: &Context, namespace: &str) -> bool {
    let request = shared::wire::LookupRequest {
        namespace: namespace.to_string(),
        exclude: Vec::new(),
    };
    for base in ctx.config.discovery_urls() {
        let Ok(ask) = ctx
            .discovery
            .post(format!("{base}/api/lookup"))
            .body_json(&request)
        else {
            return false;
        };
        let answer = async_std::future::timeout(ctx.config.lookup_timeout, ask).await;
        if matches!(answer, Ok(Ok(res)) if res.status() == surf::StatusCode::Ok) {
            return true;
        }
    }
    false
}

/// `GET /ready` on the admin port (see the module comment).
pub(crate) fn routes(app: &mut tide::Server<Arc<Context>>) {
    app.at("/ready")
        .get(|req: Request<Arc<Context>>| async move {
            let ctx = req.state().current();
            let (status, body) = if ctx.gate.is_open() {
                (StatusCode::Ok, json!({"status": "ready", "ready": true}))
            } else if ctx.gate.is_closed() {
                let body = json!({"status": "draining", "ready": false});
                (StatusCode::ServiceUnavailable, body)
            } else {
                let mut waiting: Vec<&str> = ctx
                    .router
                    .balancers()
                    .iter()
                    .filter(|b| !has_instance(b))
                    .map(|b| b.namespace.as_str())
                    .collect();
                waiting.sort_unstable();
                let left = ctx.config.ready_timeout.saturating_sub(ctx.gate.age());
                let body = json!({"status": "starting", "ready": false, "waiting_for": waiting,
                "ready_timeout_left_seconds": left.as_secs_f64()});
                (StatusCode::ServiceUnavailable, body)
            };
            Ok(shared::api::json_response(status, &body))
        });
}
