//! `POST /api/register`, `POST /api/deregister` and `GET /api/services`: the
//! HTTP side of the registry. Input is checked in full before the registry is
//! touched, so a bad request never changes stored state.

use crate::metrics::Metrics;
use crate::State;
use shared::api::{error_response, json_body, json_response};
use shared::wire::{
    validate_host, validate_namespace, validate_path, DeregisterRequest, RegisterRequest,
};
use tide::{Request, Response, StatusCode};

const MAX_BODY: usize = 64 * 1024;

/// An answer and the outcome label it is counted under.
type Counted = (&'static str, Response);

pub async fn register(mut req: Request<State>) -> tide::Result {
    let (outcome, res) = try_register(&mut req)
        .await
        .unwrap_or_else(|res| ("rejected", res));
    Metrics::outcome(&req.state().metrics.registrations, outcome);
    Ok(res)
}

pub async fn deregister(mut req: Request<State>) -> tide::Result {
    let (outcome, res) = try_deregister(&mut req)
        .await
        .unwrap_or_else(|res| ("rejected", res));
    Metrics::outcome(&req.state().metrics.deregistrations, outcome);
    Ok(res)
}

pub async fn services(req: Request<State>) -> tide::Result {
    Ok(json_response(
        StatusCode::Ok,
        &req.state().registry.services(),
    ))
}

async fn try_register(req: &mut Request<State>) -> Result<Counted, Response> {
    let body: RegisterRequest = json_body(req, MAX_BODY).await?;
    let state = req.state();
    let path = body
        .health_check_path
        .unwrap_or_else(|| state.config.health_check_path.clone());
    let host = checked(req, &body.namespace, body.host.as_deref())?;
    validate_path(&path).map_err(invalid)?;
    let done = state
        .registry
        .register(&body.namespace, &host, body.port, &path);
    if !done.created {
        return Ok(("renewed", json_response(StatusCode::Ok, &done.registration)));
    }
    log::info!(namespace = body.namespace.as_str(), host = host.as_str(), port:% = body.port,
        id = done.registration.id.as_str(); "instance registered");
    Ok((
        "created",
        json_response(StatusCode::Created, &done.registration),
    ))
}

async fn try_deregister(req: &mut Request<State>) -> Result<Counted, Response> {
    let body: DeregisterRequest = json_body(req, MAX_BODY).await?;
    let host = checked(req, &body.namespace, body.host.as_deref())?;
    let Some(gone) = req
        .state()
        .registry
        .deregister(&body.namespace, &host, body.port)
    else {
        let message = format!(
            "{} is not registered in namespace {:?}",
            shared::wire::authority(&host, body.port),
            body.namespace
        );
        return Ok((
            "unknown",
            error_response(StatusCode::NotFound, "unknown_instance", message),
        ));
    };
    log::info!(namespace = body.namespace.as_str(), host = host.as_str(), port:% = body.port,
        id = gone.id.as_str(); "instance deregistered");
    Ok(("removed", json_response(StatusCode::Ok, &gone)))
}

fn invalid(message: String) -> Response {
    error_response(StatusCode::BadRequest, "invalid_field", message)
}

/// Validates the namespace and resolves the host (given, or the caller's IP).
fn checked(req: &Request<State>, namespace: &str, host: Option<&str>) -> Result<String, Response> {
    validate_namespace(namespace).map_err(invalid)?;
    let host = match host {
        Some(h) => h.to_string(),
        None => caller_ip(req)
            .ok_or_else(|| invalid("host is missing and the caller's address is unknown".into()))?,
    };
    validate_host(&host).map_err(invalid)?;
    Ok(host)
}

fn caller_ip(req: &Request<State>) -> Option<String> {
    let peer: std::net::SocketAddr = req.peer_addr()?.parse().ok()?;
    Some(peer.ip().to_canonical().to_string())
}
