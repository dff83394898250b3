//! The business logic: a POST's JSON body comes back byte for byte.
//!
//! The body is only checked to be JSON (`IgnoredAny` builds nothing), never
//! re-encoded, so key order, spacing and number spelling (`1.0` vs `1`)
//! survive: what the gateway forwarded is exactly what the client sees.

use crate::State;
use serde::de::IgnoredAny;
use shared::api::{error_response, read_body};
use tide::http::mime;
use tide::{Body, Request, Response, StatusCode};

/// `POST /<any path>`: 200 with the body, 400 if it is not JSON, 413 if too large.
pub async fn echo(mut req: Request<State>) -> tide::Result {
    let limit = req.state().max_body_bytes;
    // Read first, whatever happens next, so the connection stays in step.
    let body = match read_body(&mut req, limit).await {
        Ok(body) => body,
        Err(res) => return Ok(res),
    };
    if let Some(chaos) = req.state().chaos.as_deref() {
        chaos.delay().await;
        if chaos.should_fail() {
            return Ok(error_response(
                StatusCode::InternalServerError,
                "chaos_failure",
                "failed on purpose: chaos fail_rate",
            ));
        }
    }
    // Executed from here on: counted per Idempotency-Key, if it has one.
    if let Some(key) = req.header("idempotency-key") {
        req.state().executions.count(key.as_str());
    }
    if let Err(e) = check_json(&body) {
        return Ok(error_response(StatusCode::BadRequest, "invalid_json", e));
    }
    let mut res = Response::new(StatusCode::Ok);
    res.set_body(Body::from_bytes(body));
    res.set_content_type(mime::JSON);
    Ok(res)
}

/// Checks that `body` is one JSON value in UTF-8 (RFC 8259), building nothing.
fn check_json(body: &[u8]) -> Result<(), String> {
    // serde_json skips over string contents without checking their UTF-8.
    std::str::from_utf8(body).map_err(|e| format!("request body is not UTF-8: {e}"))?;
    serde_json::from_slice::<IgnoredAny>(body)
        .map(|_| ())
        .map_err(|e| format!("request body is not valid JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::check_json;

    #[test]
    fn any_json_value_passes_and_anything_else_fails() {
        for good in [
            &b"{}"[..],
            b" {\"b\":1, \"a\" : [1.0, 1e3, -0, null, true]}\n",
            b"[]",
            b"\"text \\u00e9 \xc3\xa9\"",
            b"12.50",
            b"{\"a\":1,\"a\":2}",
        ] {
            assert!(
                check_json(good).is_ok(),
                "{}",
                String::from_utf8_lossy(good)
            );
        }
        for bad in [
            &b""[..],
            b"   ",
            b"{\"a\":}",
            b"{} {}",
            b"{\"a\":1} x",
            b"\"\xff\"",
            b"NaN",
            b"{'a':1}",
        ] {
            assert!(check_json(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
