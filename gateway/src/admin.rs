//! The admin port: `/metrics`, `/status` (rings and watch streams as JSON)
//! and `/health_check`. tide is fine here: it is off the request path.

use crate::pool::clock;
use crate::Context;
use serde_json::{json, Value};
use shared::api::json_response;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tide::{Request, Response, StatusCode};

type State = Arc<Context>;

pub fn routes(ctx: State) -> tide::Server<State> {
    let mut app = tide::with_state(ctx);
    app.with(shared::api::json_errors());
    app.at("/health_check")
        .get(|_| async { Ok(json_response(StatusCode::Ok, &json!({"status": "ok"}))) });
    app.at("/status").get(|req: Request<State>| async move {
        Ok(json_response(StatusCode::Ok, &status(req.state())))
    });
    app.at("/metrics").get(|req: Request<State>| async move {
        let mut res = Response::new(StatusCode::Ok);
        res.set_body(req.state().metrics.render());
        res.set_content_type("application/openmetrics-text; version=1.0.0; charset=utf-8");
        Ok(res)
    });
    app
}

/// The rings, their members and the watch streams feeding them.
pub fn status(ctx: &Context) -> Value {
    let now = clock();
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
                    json!({
                        "upstream": m.key,
                        "cooling_down": m.is_cooling(),
                        "idle_connections": m.idle_count(),
                        "held_from_before_reconnect": i >= fresh,
                    })
                })
                .collect();
            let last = b.watch.last_event_ms.load(Ordering::Relaxed);
            let grace = b.watch.grace_until_ms.load(Ordering::Relaxed).saturating_sub(now);
            json!({
                "namespace": b.namespace,
                "ring_version": ring.version,
                "members": members,
                "watch": {
                    "state": b.watch.get().as_str(),
                    "version": ring.version,
                    "snapshot_age_seconds": (last > 0).then(|| now.saturating_sub(last) as f64 / 1000.0),
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
        .map(|r| json!({"prefix": r.prefix, "namespace": r.namespace}))
        .collect();
    json!({"namespaces": namespaces, "routes": routes, "discovery_url": ctx.config.discovery_url})
}
