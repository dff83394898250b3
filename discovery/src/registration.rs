//! `POST /api/register`, `POST /api/deregister` and `GET /api/services`: the
//! HTTP side of the registry. A write is checked in full before the registry
//! is touched, in this order: the bearer token (401), the body as exactly one
//! JSON object with valid fields (400 naming the field), the host's addresses
//! against `allowed_hosts` (403), the caps (429). A refused request never
//! changes stored state.

use crate::access::{bearer_matches, resolve, ResolveError};
use crate::counters::Counters;
use crate::store::StoreError;
use crate::State;
use serde::de::DeserializeOwned;
use shared::api::{error_response, json_body, json_response};
use shared::wire::{
    normalize_host, validate_namespace, validate_path, DeregisterRequest, RegisterRequest,
    MAX_WEIGHT,
};
use tide::{Request, Response, StatusCode};

const MAX_BODY: usize = 64 * 1024;

/// An answer and the outcome label it is counted under.
pub(crate) type Counted = (&'static str, Response);

pub async fn register(mut req: Request<State>) -> tide::Result {
    let (outcome, res) = try_register(&mut req)
        .await
        .unwrap_or_else(|refused| refused);
    Counters::outcome(&req.state().counters.registrations, outcome);
    Ok(res)
}

pub async fn deregister(mut req: Request<State>) -> tide::Result {
    let (outcome, res) = try_deregister(&mut req)
        .await
        .unwrap_or_else(|refused| refused);
    Counters::outcome(&req.state().counters.deregistrations, outcome);
    Ok(res)
}

pub async fn services(req: Request<State>) -> tide::Result {
    Ok(json_response(
        StatusCode::Ok,
        &req.state().registry.services(),
    ))
}

async fn try_register(req: &mut Request<State>) -> Result<Counted, Counted> {
    authorize(req)?;
    let body: RegisterRequest = one_json_object(req).await?;
    let state = req.state();
    let path = body
        .health_check_path
        .unwrap_or_else(|| state.config.health_check_path.clone());
    let host = checked(req, &body.namespace, body.host.as_deref())?;
    validate_path(&path).map_err(invalid)?;
    let weight = body.weight.unwrap_or(1);
    if !(1..=MAX_WEIGHT).contains(&weight) {
        return Err(invalid(format!(
            "weight must be 1 to {MAX_WEIGHT}, not {weight}"
        )));
    }
    allowed(state, &host, body.port.0).await?;
    let done = state
        .registry
        .register(&body.namespace, &host, body.port, (&path, weight))
        .await
        .map_err(refused)?;
    let registration = done.record.registration();
    if !done.created {
        return Ok(("renewed", json_response(StatusCode::Ok, &registration)));
    }
    log::info!(namespace = body.namespace.as_str(), host = host.as_str(), port:% = body.port,
        id = registration.id.as_str(); "instance registered");
    Ok(("created", json_response(StatusCode::Created, &registration)))
}

async fn try_deregister(req: &mut Request<State>) -> Result<Counted, Counted> {
    authorize(req)?;
    let body: DeregisterRequest = one_json_object(req).await?;
    let host = checked(req, &body.namespace, body.host.as_deref())?;
    let Some(gone) = req
        .state()
        .registry
        .deregister(&body.namespace, &host, body.port)
        .await
        .map_err(refused)?
    else {
        return Ok(unknown(&body.namespace, &host, body.port));
    };
    log::info!(namespace = body.namespace.as_str(), host = host.as_str(), port:% = body.port,
        id = gone.id.as_str(); "instance deregistered");
    Ok((
        "removed",
        json_response(StatusCode::Ok, &gone.registration()),
    ))
}

/// 404 for a write naming an instance that is not registered.
pub(crate) fn unknown(namespace: &str, host: &str, port: shared::wire::Port) -> Counted {
    let message = format!(
        "{} is not registered in namespace {namespace:?}",
        shared::wire::authority(host, port),
    );
    (
        "unknown",
        error_response(StatusCode::NotFound, "unknown_instance", message),
    )
}

/// A write the store did not take: 429 at a cap, 503 when it cannot be reached.
pub(crate) fn refused(e: StoreError) -> Counted {
    match e {
        StoreError::Full(m) => (
            "full",
            error_response(StatusCode::TooManyRequests, "too_many_instances", m),
        ),
        StoreError::Unavailable(m) => {
            log::warn!(reason = m.as_str(); "registry write refused: the store is unavailable");
            let mut res = error_response(
                StatusCode::ServiceUnavailable,
                "store_unavailable",
                format!("the registry cannot be changed now: {m}"),
            );
            res.insert_header("retry-after", "1");
            ("unavailable", res)
        }
    }
}

pub(crate) fn invalid(message: String) -> Counted {
    (
        "rejected",
        error_response(StatusCode::BadRequest, "invalid_field", message),
    )
}

/// Who may write: with a `registration_token` configured, a request that
/// carries it as a bearer token; with `tls.client_ca` configured, a request
/// on a connection whose client certificate verified against it (the
/// handshake refuses one from another CA). With either configured, a
/// request with neither is a 401; with neither configured, anyone.
///
/// The certificate stands for the token: it is not matched against the
/// registered host (`allowed_hosts` still applies), as the token is not.
pub(crate) fn authorize(req: &Request<State>) -> Result<(), Counted> {
    let config = &req.state().config;
    let token = config.registration_token.as_deref();
    let by_certificate = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    if token.is_none() && !by_certificate {
        return Ok(());
    }
    if by_certificate && req.ext::<shared::serve::PeerCertificate>().is_some() {
        return Ok(());
    }
    if let Some(token) = token {
        let values = req.header("authorization");
        let given = values.into_iter().flatten().map(|v| v.as_str());
        if bearer_matches(given, token) {
            return Ok(());
        }
    }
    let wanted = match (token.is_some(), by_certificate) {
        (true, false) => "Authorization: Bearer <registration_token>",
        (false, _) => "a client certificate from its tls.client_ca",
        (true, true) => {
            "Authorization: Bearer <registration_token> or a client certificate from its tls.client_ca"
        }
    };
    let mut res = error_response(
        StatusCode::Unauthorized,
        "unauthorized",
        format!("this discovery requires {wanted} to register, deregister or change maintenance"),
    );
    if token.is_some() {
        res.insert_header("www-authenticate", "Bearer realm=\"discovery\"");
    }
    Err(("unauthorized", res))
}

/// The body as exactly one JSON object of `T` ([`shared::api::json_body`]:
/// trailing bytes after it are a 400), counted as rejected when refused.
pub(crate) async fn one_json_object<T: DeserializeOwned>(
    req: &mut Request<State>,
) -> Result<T, Counted> {
    json_body(req, MAX_BODY)
        .await
        .map_err(|res| ("rejected", res))
}

/// Validates the namespace and normalizes the host (given, or the caller's IP).
pub(crate) fn checked(
    req: &Request<State>,
    namespace: &str,
    host: Option<&str>,
) -> Result<String, Counted> {
    validate_namespace(namespace).map_err(invalid)?;
    match host {
        Some(h) => normalize_host(h).map_err(invalid),
        None => caller_ip(req)
            .ok_or_else(|| invalid("host is missing and the caller's address is unknown".into())),
    }
}

/// Resolves the host (a name within `resolve_timeout`) and holds every address to `allowed_hosts`.
async fn allowed(state: &State, host: &str, port: u16) -> Result<(), Counted> {
    let addrs = match resolve(host, port, state.config.resolve_timeout).await {
        Ok(addrs) => addrs,
        Err(e @ ResolveError::Local(_)) => {
            return Err((
                "rejected",
                error_response(
                    StatusCode::ServiceUnavailable,
                    "cannot_resolve",
                    e.to_string(),
                ),
            ))
        }
        Err(e) => return Err(invalid(format!("host: {e}"))),
    };
    state.allowed.check_all(&addrs).map_err(|why| {
        (
            "forbidden",
            error_response(
                StatusCode::Forbidden,
                "host_not_allowed",
                format!("host {host}: {why}"),
            ),
        )
    })
}

fn caller_ip(req: &Request<State>) -> Option<String> {
    let peer: std::net::SocketAddr = req.peer_addr()?.parse().ok()?;
    Some(peer.ip().to_canonical().to_string())
}
