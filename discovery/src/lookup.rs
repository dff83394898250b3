//! `POST /api/lookup` and `GET /api/lookup?namespace=&exclude=`: round robin
//! over the available instances, honouring `exclude`.

use crate::counters::Counters;
use crate::mirror::LookupError;
use crate::State;
use serde::Deserialize;
use shared::api::{error_response, json_body, json_response};
use shared::wire::{validate_namespace, LookupRequest};
use tide::{Request, Response, StatusCode};

const MAX_BODY: usize = 64 * 1024;

pub async fn post(mut req: Request<State>) -> tide::Result {
    let body = json_body::<LookupRequest, _>(&mut req, MAX_BODY).await;
    Ok(counted(
        req.state(),
        body.and_then(|b| answer(req.state(), b)),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Query {
    namespace: Option<String>,
    exclude: Option<String>,
}

pub async fn get(req: Request<State>) -> tide::Result {
    Ok(counted(
        req.state(),
        from_query(&req).and_then(|b| answer(req.state(), b)),
    ))
}

fn from_query(req: &Request<State>) -> Result<LookupRequest, Response> {
    let query: Query = req.query().map_err(|e| invalid(e.to_string()))?;
    let namespace = query
        .namespace
        .ok_or_else(|| invalid("namespace is required".into()))?;
    let exclude = query
        .exclude
        .map(|e| {
            e.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Ok(LookupRequest { namespace, exclude })
}

fn invalid(message: String) -> Response {
    error_response(StatusCode::BadRequest, "invalid_field", message)
}

fn counted(state: &State, answer: Result<(&'static str, Response), Response>) -> Response {
    let (outcome, res) = answer.unwrap_or_else(|res| ("rejected", res));
    Counters::outcome(&state.counters.lookups, outcome);
    res
}

/// Looks the namespace up; `Err` only for bad input.
fn answer(state: &State, body: LookupRequest) -> Result<(&'static str, Response), Response> {
    validate_namespace(&body.namespace).map_err(invalid)?;
    Ok(
        match state.registry.lookup(&body.namespace, &body.exclude) {
            Ok(found) => ("ok", json_response(StatusCode::Ok, &found)),
            Err(LookupError::UnknownNamespace) => (
                "unknown_namespace",
                error_response(
                    StatusCode::NotFound,
                    "unknown_namespace",
                    format!(
                        "no instance was ever registered in namespace {:?}",
                        body.namespace
                    ),
                ),
            ),
            Err(LookupError::NoneAvailable) => (
                "none_available",
                error_response(
                    StatusCode::ServiceUnavailable,
                    "no_available_instance",
                    format!("no available instance in namespace {:?}", body.namespace),
                ),
            ),
        },
    )
}
