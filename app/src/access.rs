//! One log line per request (method, path, status, latency, `x-request-id`)
//! and the `x-served-by` header on every answer, so a response seen through
//! the gateway names the instance that produced it. A valid `x-request-id`
//! the request carried is echoed on the answer: a gateway route with
//! `verify_request_id` checks it, so an answer can only reach the request it
//! belongs to.
//!
//! Routine lines (business POSTs and health checks that did not fail with a
//! 5xx) are at debug level: at tens of thousands of requests per second an
//! info line each would cost a write to stdout per request. Everything else
//! is at info, and 5xx answers at warn.

use shared::logging::valid_request_id;
use std::sync::Arc;
use std::time::Instant;
use tide::http::Method;
use tide::{Middleware, Next, Request};

/// The request's `x-request-id` if it is one a log line may carry (visible
/// ASCII, at most 128 bytes): anything else is neither logged nor echoed.
fn echoed_request_id<S>(req: &Request<S>) -> Option<String> {
    req.header("x-request-id")
        .map(|v| v.as_str())
        .filter(|id| valid_request_id(id.as_bytes()))
        .map(str::to_string)
}

/// The middleware; holds the `host:port` it stamps.
pub struct AccessLog {
    served_by: Arc<str>,
    health_check_path: String,
}

impl AccessLog {
    pub fn new(served_by: Arc<str>, health_check_path: &str) -> Self {
        AccessLog {
            served_by,
            health_check_path: health_check_path.to_string(),
        }
    }

    /// Names the instance on the answer, and echoes the request's id.
    fn stamp(&self, res: &mut tide::Response, request_id: Option<&str>) {
        res.insert_header("x-served-by", &*self.served_by);
        if let Some(id) = request_id {
            res.insert_header("x-request-id", id);
        }
    }
}

#[tide::utils::async_trait]
impl<S: Clone + Send + Sync + 'static> Middleware<S> for AccessLog {
    async fn handle(&self, req: Request<S>, next: Next<'_, S>) -> tide::Result {
        let request_id = echoed_request_id(&req);
        // Nothing else is copied out of the request unless some line could be printed.
        if !log::log_enabled!(log::Level::Warn) {
            let mut res = next.run(req).await;
            self.stamp(&mut res, request_id.as_deref());
            return Ok(res);
        }
        let started = Instant::now();
        let method = req.method();
        let path = req.url().path().to_string();
        let mut res = next.run(req).await;
        self.stamp(&mut res, request_id.as_deref());
        let status = res.status();
        let routine =
            method == Method::Post || path == "/health_check" || path == self.health_check_path;
        let level = if status.is_server_error() {
            log::Level::Warn
        } else if routine {
            log::Level::Debug
        } else {
            log::Level::Info
        };
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        log::log!(level, method:% = method, path = path.as_str(), status = u16::from(status),
            latency_ms = latency_ms, request_id = request_id.as_deref().unwrap_or("-");
            "{method} {path} {}", u16::from(status));
        Ok(res)
    }
}
