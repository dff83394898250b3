//! Helpers for the tide services: JSON in with a size limit and field-naming
//! errors, JSON out, and every error answered with the JSON error body.

use crate::wire::ErrorBody;
use futures_lite::AsyncReadExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tide::http::{mime, Method};
use tide::{Request, Response, StatusCode};

/// A response with the JSON error body.
pub fn error_response(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    json_response(status, &ErrorBody::new(code, message))
}

/// A response with `value` as its JSON body.
pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut res = Response::new(status);
    res.set_body(body);
    res.set_content_type(mime::JSON);
    res
}

/// The error code used for a bare status, e.g. `method_not_allowed` for 405.
pub fn code_for(status: StatusCode) -> String {
    status
        .canonical_reason()
        .to_ascii_lowercase()
        .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
}

/// Reads the whole body, up to `limit` bytes; more is a 413.
pub async fn read_body<S>(req: &mut Request<S>, limit: usize) -> Result<Vec<u8>, Response> {
    let too_large = || {
        error_response(
            StatusCode::PayloadTooLarge,
            "payload_too_large",
            format!("request body is larger than {limit} bytes"),
        )
    };
    if req.len().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    let read = req
        .take_body()
        .into_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
        .await;
    match read {
        Ok(n) if n > limit => Err(too_large()),
        Ok(_) => Ok(body),
        Err(e) => Err(error_response(
            StatusCode::BadRequest,
            "bad_request",
            format!("cannot read request body: {e}"),
        )),
    }
}

/// Parses a JSON body into `T`; a 400 names the field that is wrong.
pub async fn json_body<T: DeserializeOwned, S>(
    req: &mut Request<S>,
    limit: usize,
) -> Result<T, Response> {
    let body = read_body(req, limit).await?;
    parse_json(&body)
}

/// Parses a JSON object into `T`; a 400 names the field that is wrong.
///
/// Anything but an object is refused up front: serde would otherwise read a
/// struct from an array, positionally.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(error_response(
                StatusCode::BadRequest,
                "invalid_json",
                "request body is empty; expected a JSON object",
            ))
        }
        Some(b'{') => {}
        Some(_) => {
            return Err(error_response(
                StatusCode::BadRequest,
                "invalid_json",
                "request body must be a JSON object",
            ))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let (code, message) = if e.inner().is_syntax() || e.inner().is_eof() {
            (
                "invalid_json",
                format!("request body is not valid JSON: {}", e.inner()),
            )
        } else if path == "." {
            ("invalid_field", e.inner().to_string())
        } else {
            ("invalid_field", format!("{path}: {}", e.inner()))
        };
        error_response(StatusCode::BadRequest, code, message)
    })?;
    // Exactly one object: bytes after it (white space aside) are refused.
    de.end().map_err(|e| {
        error_response(
            StatusCode::BadRequest,
            "invalid_json",
            format!("request body must be exactly one JSON object; bytes follow it ({e})"),
        )
    })?;
    Ok(value)
}

/// Seconds a client is asked to wait after a 503 (`Retry-After`) when the
/// answer names none: the condition (no instance, overload, a restart) is
/// usually over within a health-check interval.
pub const RETRY_AFTER_SECONDS: u32 = 1;

/// Middleware of HTTP manners for every tide service:
///
/// - any 4xx/5xx without a body gets the JSON error body (tide's own 404
///   and 405 included, and errors returned by handlers);
/// - every error body carries the request id (`X-Request-Id` from the
///   request when it is sane, else a new one), which is also echoed in the
///   response's `X-Request-Id` header (on every answer when the client sent one);
/// - a 503 without `Retry-After` gets one.
pub fn json_errors<S: Clone + Send + Sync + 'static>() -> impl tide::Middleware<S> {
    Manners
}

struct Manners;

#[tide::utils::async_trait]
impl<S: Clone + Send + Sync + 'static> tide::Middleware<S> for Manners {
    async fn handle(&self, req: Request<S>, next: tide::Next<'_, S>) -> tide::Result {
        let sent_id = req
            .header("x-request-id")
            .map(|v| v.as_str())
            .filter(|id| crate::logging::valid_request_id(id.as_bytes()))
            .map(str::to_string);
        let mut res = next.run(req).await;
        let status = res.status();
        if status == StatusCode::ServiceUnavailable && res.header("retry-after").is_none() {
            res.insert_header("retry-after", RETRY_AFTER_SECONDS.to_string());
        }
        if !(status.is_client_error() || status.is_server_error()) {
            if let Some(id) = sent_id {
                res.insert_header("x-request-id", id);
            }
            return Ok(res);
        }
        let id = sent_id.unwrap_or_else(crate::logging::new_request_id);
        let body = if res.is_empty() != Some(false) {
            let message = res
                .error()
                .map(|e| e.to_string())
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| status.canonical_reason().to_string());
            Some(ErrorBody::new(code_for(status), message))
        } else if res
            .content_type()
            .is_some_and(|m| m.essence() == mime::JSON.essence())
        {
            // A handler's own error body: the request id goes into it. Error
            // bodies are small; one that is not ours is left as it is.
            let bytes = res.take_body().into_bytes().await.unwrap_or_default();
            match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => Some(body),
                Err(_) => {
                    res.set_body(bytes);
                    res.set_content_type(mime::JSON);
                    None
                }
            }
        } else {
            None
        };
        if let Some(body) = body {
            res.set_body(body.with_request_id(id.clone()).to_json());
            res.set_content_type(mime::JSON);
        }
        res.insert_header("x-request-id", id);
        Ok(res)
    }
}

/// The methods a route is given one by one (HEAD aside: tide serves it from GET).
pub const ROUTED_METHODS: [Method; 8] = [
    Method::Get,
    Method::Post,
    Method::Put,
    Method::Delete,
    Method::Patch,
    Method::Options,
    Method::Trace,
    Method::Connect,
];

/// Answers the methods a route does not serve with 405 and `Allow`
/// (RFC 9110 section 15.5.6), rather than tide's bare 405. `allowed` lists
/// what the route serves; HEAD is implied by GET, as tide serves it.
///
/// Each other method is registered on the route explicitly (not with
/// `all`, which would also take HEAD from a GET route elsewhere).
pub fn allow<S: Clone + Send + Sync + 'static>(route: &mut tide::Route<'_, S>, allowed: &[Method]) {
    let mut names: Vec<&str> = allowed.iter().map(|m| m.as_ref()).collect();
    if allowed.contains(&Method::Get) && !allowed.contains(&Method::Head) {
        names.push("HEAD");
    }
    let header = names.join(", ");
    for method in ROUTED_METHODS {
        if allowed.contains(&method) {
            continue;
        }
        let header = header.clone();
        route.method(method, move |_req: Request<S>| {
            let header = header.clone();
            async move {
                let mut res = error_response(
                    StatusCode::MethodNotAllowed,
                    "method_not_allowed",
                    format!("Method Not Allowed: this path serves {header} only"),
                );
                res.insert_header("allow", header);
                Ok(res)
            }
        });
    }
}
