//! The admin port: `/metrics`, `/status` (rings and watch streams as JSON)
//! and `/health_check`. tide is fine here: it is off the request path.

use crate::context::Context;
use crate::observe::history;
use crate::runtime::clock;
use serde_json::{json, Value};
use shared::api::json_response;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tide::{Request, Response, StatusCode};

type State = Arc<Context>;

pub(crate) fn routes(ctx: State) -> tide::Server<State> {
    let mut app = tide::with_state(ctx);
    app.with(shared::api::json_errors());
    super::console::routes(&mut app);
    app.at("/health_check")
        .get(|_| async { Ok(json_response(StatusCode::Ok, &json!({"status": "ok"}))) });
    app.at("/status").get(|req: Request<State>| async move {
        Ok(json_response(
            StatusCode::Ok,
            &status(&req.state().current()),
        ))
    });
    app.at("/status/history").get(history_route);
    app.at("/metrics").get(|req: Request<State>| async move {
        let mut res = Response::new(StatusCode::Ok);
        res.set_body(crate::admin::metrics::render(req.state()));
        // As written: set_content_type would reorder the parameters.
        res.insert_header("content-type", super::metrics::CONTENT_TYPE);
        Ok(res)
    });
    app
}

/// Idempotency-Key handling: the store, and per route prefix the count of
/// each event (keyed, executed, replayed, conflict, mismatch, ...).
fn idempotency(ctx: &Context) -> Value {
    let m = &ctx.metrics.idempotency;
    let routes: serde_json::Map<String, Value> = m
        .per_route()
        .into_iter()
        .map(|(prefix, counts)| {
            let counts = counts.into_iter().map(|(e, n)| (e.to_string(), n.into()));
            (prefix, Value::Object(counts.collect()))
        })
        .collect();
    json!({
        "store": ctx.idempotency.kind,
        "fail_open": ctx.idempotency.fail_open,
        "entries": m.entries.get(),
        "stored_bytes": m.bytes.get(),
        "evictions": m.evictions.get(),
        "expirations": m.expirations.get(),
        "store_errors": m.store_errors(),
        "routes": routes,
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    since: Option<u64>,
}

/// `/status/history[?since=<unix ms>]`: see [`history`]; a
/// query it cannot read is a 400.
async fn history_route(req: Request<State>) -> tide::Result {
    let since = match req.query::<HistoryQuery>() {
        Ok(q) => q.since.unwrap_or(0),
        Err(e) => {
            return Ok(shared::api::error_response(
                StatusCode::BadRequest,
                "invalid_field",
                format!("since: {e}"),
            ))
        }
    };
    Ok(json_response(
        StatusCode::Ok,
        &history(&req.state().current(), since),
    ))
}

/// The rings, their members and the watch streams feeding them.
///
/// Each member carries its statistics: `requests` (answered tries) and
/// `errors` (5xx answers and tries with no answer) since it joined, counters
/// a reader turns into rates; and over the last `window_seconds` (up to
/// about half a minute) `requests_per_second`, `errors_per_second`, and the
/// `p50_ms` and `p99_ms` latency of its tries (`null` without any).
///
/// `clients`: client connections open now and the most at once, bytes
/// received from and sent to clients ([`crate::observe::traffic`]).
pub(crate) fn status(ctx: &Context) -> Value {
    let now = clock();
    let instant = std::time::Instant::now();
    let namespaces: Vec<Value> = ctx
        .router
        .balancers()
        .iter()
        .map(|b| {
            let ring = b.ring();
            let fresh = ring.members.len() - ring.held;
            let members: Vec<Value> = ring
                .members
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let window = m.stats.window(instant);
                    let per_second = |n: u64| {
                        (window.seconds > 0.0).then(|| n as f64 / window.seconds)
                    };
                    json!({
                        "upstream": m.key,
                        "weight": ring.weights.get(i).copied().unwrap_or(1),
                        "in_flight": m.in_flight(),
                        "cooling_down": m.is_cooling(),
                        "faults_in_a_row": m.health.in_a_row(),
                        "faults": crate::balance::passive::FAULTS
                            .iter()
                            .map(|f| (f.as_str().to_string(), m.health.count(*f).into()))
                            .collect::<serde_json::Map<_, _>>(),
                        "idle_connections": m.idle_count(),
                        "held_from_before_reconnect": i >= fresh,
                        "requests": m.stats.requests(),
                        "errors": m.stats.errors(),
                        "window_seconds": window.seconds,
                        "requests_per_second": per_second(window.requests),
                        "errors_per_second": per_second(window.errors),
                        "p50_ms": window.p50_ms,
                        "p99_ms": window.p99_ms,
                    })
                })
                .collect();
            let last = b.watch.last_event_ms.load(Ordering::Relaxed);
            let confirmed = b.watch.last_confirmed_ms.load(Ordering::Relaxed);
            let grace = b.watch.grace_until_ms.load(Ordering::Relaxed).saturating_sub(now);
            json!({
                "namespace": b.namespace,
                "ring_version": ring.version,
                "members": members,
                // "watch" or "lookup" (a discovery without /api/watch), and the URLs in use.
                "discovery": crate::discover::source::status(ctx, b),
                "watch": {
                    "state": b.watch.get().as_str(),
                    "version": ring.version,
                    "snapshot_age_seconds": (last > 0).then(|| now.saturating_sub(last) as f64 / 1000.0),
                    "confirmed_age_seconds": (confirmed > 0).then(|| now.saturating_sub(confirmed) as f64 / 1000.0),
                    "reconnects": b.watch.reconnects.load(Ordering::Relaxed),
                    "relearn_grace_remaining_seconds": grace as f64 / 1000.0,
                },
            })
        })
        .collect();
    let routes: Vec<Value> = ctx
        .config
        .routes
        .iter()
        .map(|r| {
            let source = ctx
                .router
                .balancers()
                .iter()
                .find(|b| b.namespace == r.namespace)
                .map(|b| b.source.kind().as_str());
            json!({"prefix": r.prefix, "namespace": r.namespace, "source": source,
                "idempotency": r.idempotency})
        })
        .collect();
    let open = ctx.metrics.client_connections.get();
    json!({"namespaces": namespaces, "routes": routes, "discovery_url": ctx.config.discovery_url,
        "discovery_urls": ctx.config.discovery_urls(),
        "clients": ctx.metrics.traffic.status(open),
        "history_url": "/status/history", "idempotency": idempotency(ctx)})
}

/// `GET /status/history[?since=<unix ms>]`: per ring, per member, the points
/// taken after `since` (all of the last 15 minutes without it), so a console
/// fetches the whole history once and then only what is new.
pub(crate) fn history(ctx: &Context, since: u64) -> Value {
    let namespaces: Vec<Value> = ctx
        .router
        .balancers()
        .iter()
        .map(|b| {
            let ring = b.ring();
            let members: Vec<Value> = ring
                .members
                .iter()
                .map(|m| {
                    let points: Vec<Value> = m
                        .stats
                        .history(since)
                        .into_iter()
                        .map(history::Point::to_json)
                        .collect();
                    json!({"upstream": m.key, "points": points})
                })
                .collect();
            json!({"namespace": b.namespace, "members": members})
        })
        .collect();
    json!({
        "now_unix_ms": history::now_unix_ms(),
        "interval_seconds": crate::observe::stats::SAMPLE_EVERY.as_secs_f64(),
        "points_kept": history::POINTS,
        "fields": ["at_unix_ms", "requests_per_second", "errors_per_second", "p99_ms"],
        "namespaces": namespaces,
    })
}
