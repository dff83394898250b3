//! `GET /health_check` (and the configured health check path): what
//! discovery polls to decide whether this instance is routable.

use crate::State;
use shared::api::error_response;
use tide::http::mime;
use tide::{Request, Response, StatusCode};

/// 200 `{"status": "ok"}`; with `--chaos`, delayed and failed by the knobs.
pub async fn check(req: Request<State>) -> tide::Result {
    if let Some(chaos) = req.state().chaos.as_deref() {
        chaos.delay().await;
        if !chaos.healthy() {
            return Ok(error_response(
                StatusCode::ServiceUnavailable,
                "unhealthy",
                "health set to fail by chaos",
            ));
        }
    }
    let mut res = Response::new(StatusCode::Ok);
    res.set_body(r#"{"status":"ok"}"#);
    res.set_content_type(mime::JSON);
    Ok(res)
}
