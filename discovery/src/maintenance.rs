//! `PUT /api/maintenance` and `DELETE /api/maintenance`, body
//! `{"namespace", "port", "host"?}`: take an instance out of rotation, and
//! put it back.
//!
//! An instance in maintenance is not routable (it leaves lookups and the set
//! pushed to watchers, so gateways drain it: their rings follow the pushed
//! set and requests in flight finish), is still health-checked, and stays in
//! maintenance when its app re-registers, until it is lifted. The state is
//! part of the stored record, so every replica sharing a store agrees.
//!
//! Guarded like register and deregister: the bearer token when one is
//! configured (401, nothing changes), exactly one JSON object with valid
//! fields (400 naming the field); an instance that is not registered is a 404.
//! `host` defaults to the caller's IP, as in a registration. Putting an
//! instance in maintenance twice keeps its first `maintenance_since_unix_ms`;
//! lifting one that is not in maintenance is a no-op: both answer 200 with
//! the instance.

use crate::registration::{authorize, checked, one_json_object, refused, unknown, Counted};
use crate::State;
use shared::api::json_response;
use shared::wire::MaintenanceRequest;
use tide::{Request, StatusCode};

/// `PUT`: into maintenance.
pub async fn start(mut req: Request<State>) -> tide::Result {
    Ok(change(&mut req, true).await.unwrap_or_else(|r| r).1)
}

/// `DELETE`: out of maintenance.
pub async fn lift(mut req: Request<State>) -> tide::Result {
    Ok(change(&mut req, false).await.unwrap_or_else(|r| r).1)
}

async fn change(req: &mut Request<State>, on: bool) -> Result<Counted, Counted> {
    authorize(req)?;
    let body: MaintenanceRequest = one_json_object(req).await?;
    let host = checked(req, &body.namespace, body.host.as_deref())?;
    let Some(record) = req
        .state()
        .registry
        .set_maintenance(&body.namespace, &host, body.port, on)
        .await
        .map_err(refused)?
    else {
        return Err(unknown(&body.namespace, &host, body.port));
    };
    log::info!(namespace = body.namespace.as_str(), instance = record.authority().as_str(),
        id = record.id.as_str(), maintenance = on;
        "instance {}", if on { "in maintenance: out of rotation" } else { "out of maintenance" });
    Ok((
        "changed",
        json_response(StatusCode::Ok, &record.maintenance()),
    ))
}
