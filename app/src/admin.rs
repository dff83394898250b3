//! The admin listener: the chaos knobs (`GET`/`PUT /chaos`, with `--chaos`
//! only), `GET /metrics`, `GET /health_check` and `GET /executions` (business
//! requests per `Idempotency-Key`), on a port of its own.
//!
//! It is never registered with discovery, so the gateway never routes a
//! client here: whoever can change how an instance behaves must reach this
//! port directly, which only operators (and `up`, `loadtest`, tests) do.

use crate::{access, chaos, State};
use shared::panics::Panics;
use shared::serve::Limits;
use std::time::Duration;
use tide::http::mime;
use tide::{Request, Response, StatusCode};

/// An operator's port takes few connections and small bodies.
pub fn limits() -> Limits {
    Limits {
        max_connections: 64,
        header_timeout: Duration::from_secs(5),
        max_body_bytes: 64 * 1024,
        ..Limits::default()
    }
}

/// The admin routes; `panics` is what `/metrics` reports.
pub fn routes(state: State, panics: Panics) -> tide::Server<State> {
    let mut app = tide::with_state(state.clone());
    app.with(access::AccessLog::new(
        state.served_by.clone(),
        "/health_check",
    ));
    app.with(shared::api::json_errors());
    // The process is up: unlike the business health check, chaos leaves it alone.
    app.at("/health_check").get(|_: Request<State>| async {
        let mut res = Response::new(StatusCode::Ok);
        res.set_body(r#"{"status":"ok"}"#);
        res.set_content_type(mime::JSON);
        Ok(res)
    });
    app.at("/metrics").get(move |_: Request<State>| {
        let panics = panics.clone();
        async move {
            let mut res = Response::new(StatusCode::Ok);
            res.set_body(metrics(panics.count()));
            res.insert_header("content-type", "text/plain; version=0.0.4");
            Ok(res)
        }
    });
    // Executions per Idempotency-Key (executions.rs).
    app.at("/executions").get(|req: Request<State>| async move {
        let mut res = Response::new(StatusCode::Ok);
        res.set_body(req.state().executions.to_json());
        res.set_content_type(mime::JSON);
        Ok(res)
    });
    if state.chaos.is_some() {
        for path in ["/chaos", "/chaos/"] {
            app.at(path)
                .get(chaos::show)
                .put(chaos::set)
                .all(|_: Request<State>| async {
                    let mut res = Response::new(StatusCode::MethodNotAllowed);
                    res.insert_header("allow", "GET, PUT");
                    Ok(res)
                });
        }
    }
    // Without --chaos, /chaos is tide's 404 like any unknown path.
    app
}

/// The Prometheus text of `/metrics`.
fn metrics(panics: u64) -> String {
    format!(
        "# HELP app_panics_total Panics caught in connections and background loops.\n\
         # TYPE app_panics_total counter\n\
         app_panics_total {panics}\n"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn metrics_are_prometheus_text() {
        let text = super::metrics(3);
        assert!(text.lines().any(|l| l == "app_panics_total 3"), "{text}");
        assert!(text.contains("# TYPE app_panics_total counter"));
    }
}
