//! A stand-in for the seed's Go discovery (`shared/seed/...`), for tests of
//! wire compatibility: it serves only what the seed describes.
//!
//! - `POST /api/register` (and `/api/register/`): `{"namespace", "port":
//!   "8080", "ip"?}`; the host is `ip`, else the caller's IP. Unknown fields
//!   are ignored, as Go's `encoding/json` does.
//! - `POST /api/unregister`: the same body; 200, or 404 when unknown.
//! - `POST /api/lookup`: `{"namespace"}`; the next instance round robin as
//!   `{"namespace", "ip", "port": "8080", "service_available_count"}`, 404
//!   for a namespace with none.
//!
//! Nothing else: `/api/watch` and `/api/deregister` are 404, and there are no
//! health checks (an instance stays until it unregisters). It runs in-process
//! on port 0 and counts the calls, so a test can tell what its clients used.

use serde::Deserialize;
use serde_json::json;
use shared::serve::Served;
use shared::wire::Port;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tide::{Request, Response, StatusCode};

/// A namespace's `(ip, port)`s in registration order, and its lookup cursor.
type Members = (Vec<(String, Port)>, usize);

/// What the stand-in holds and counts.
#[derive(Default)]
struct Registry {
    namespaces: Mutex<BTreeMap<String, Members>>,
    registers: AtomicU64,
    unregisters: AtomicU64,
    lookups: AtomicU64,
}

type State = Arc<Registry>;

/// A running stand-in.
pub struct Seed {
    served: Served,
    registry: State,
}

/// The seed's register and unregister body.
#[derive(Deserialize)]
struct Instance {
    namespace: String,
    port: Port,
    #[serde(default)]
    ip: Option<String>,
}

#[derive(Deserialize)]
struct LookupBody {
    namespace: String,
}

impl Seed {
    /// Starts it on a free port of 127.0.0.1.
    pub async fn start() -> Seed {
        let registry = State::default();
        let mut app = tide::with_state(registry.clone());
        for path in ["/api/register", "/api/register/"] {
            app.at(path).post(register);
        }
        app.at("/api/unregister").post(unregister);
        app.at("/api/lookup").post(lookup);
        let served = shared::serve::serve(app, "127.0.0.1:0")
            .await
            .expect("the seed stand-in starts");
        Seed { served, registry }
    }

    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `ip:port` of the instances registered in `namespace`, in order.
    pub fn instances(&self, namespace: &str) -> Vec<String> {
        let namespaces = self.registry.namespaces.lock().unwrap();
        namespaces
            .get(namespace)
            .map(|(list, _)| {
                list.iter()
                    .map(|(ip, port)| format!("{ip}:{port}"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Calls answered so far: (register, unregister, lookup).
    pub fn calls(&self) -> (u64, u64, u64) {
        let r = &self.registry;
        (
            r.registers.load(Ordering::Relaxed),
            r.unregisters.load(Ordering::Relaxed),
            r.lookups.load(Ordering::Relaxed),
        )
    }

    pub async fn shutdown(self) {
        self.served.shutdown(Duration::from_secs(1)).await;
    }
}

/// The body as the seed would read it, or a 400.
async fn body<T: serde::de::DeserializeOwned>(req: &mut Request<State>) -> Result<T, Response> {
    let bytes = req.body_bytes().await.unwrap_or_default();
    serde_json::from_slice(&bytes)
        .map_err(|e| answer(StatusCode::BadRequest, json!({"message": e.to_string()})))
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    let mut res = Response::new(status);
    res.set_body(body);
    res
}

/// `ip` from the body, else the caller's IP.
fn host_of(req: &Request<State>, ip: Option<String>) -> String {
    ip.filter(|ip| !ip.is_empty()).unwrap_or_else(|| {
        req.peer_addr()
            .and_then(|p| p.parse::<SocketAddr>().ok())
            .map(|p| p.ip().to_string())
            .unwrap_or_else(|| "127.0.0.1".into())
    })
}

async fn register(mut req: Request<State>) -> tide::Result {
    let instance: Instance = match body(&mut req).await {
        Ok(i) => i,
        Err(res) => return Ok(res),
    };
    let host = host_of(&req, instance.ip);
    let state = req.state();
    state.registers.fetch_add(1, Ordering::Relaxed);
    let mut namespaces = state.namespaces.lock().unwrap();
    let (list, _) = namespaces.entry(instance.namespace.clone()).or_default();
    if !list
        .iter()
        .any(|(ip, port)| *ip == host && *port == instance.port)
    {
        list.push((host.clone(), instance.port));
    }
    Ok(answer(
        StatusCode::Ok,
        json!({"namespace": instance.namespace, "ip": host, "port": instance.port}),
    ))
}

async fn unregister(mut req: Request<State>) -> tide::Result {
    let instance: Instance = match body(&mut req).await {
        Ok(i) => i,
        Err(res) => return Ok(res),
    };
    let host = host_of(&req, instance.ip);
    let state = req.state();
    state.unregisters.fetch_add(1, Ordering::Relaxed);
    let mut namespaces = state.namespaces.lock().unwrap();
    let Some((list, _)) = namespaces.get_mut(&instance.namespace) else {
        return Ok(answer(
            StatusCode::NotFound,
            json!({"message": "not found"}),
        ));
    };
    let before = list.len();
    list.retain(|(ip, port)| !(*ip == host && *port == instance.port));
    if list.len() == before {
        return Ok(answer(
            StatusCode::NotFound,
            json!({"message": "not found"}),
        ));
    }
    Ok(answer(StatusCode::Ok, json!({"message": "unregistered"})))
}

async fn lookup(mut req: Request<State>) -> tide::Result {
    let wanted: LookupBody = match body(&mut req).await {
        Ok(b) => b,
        Err(res) => return Ok(res),
    };
    let state = req.state();
    state.lookups.fetch_add(1, Ordering::Relaxed);
    let mut namespaces = state.namespaces.lock().unwrap();
    let found = namespaces
        .get_mut(&wanted.namespace)
        .filter(|(list, _)| !list.is_empty())
        .map(|(list, cursor)| {
            let (ip, port) = list[*cursor % list.len()].clone();
            *cursor = cursor.wrapping_add(1);
            (ip, port, list.len())
        });
    Ok(match found {
        Some((ip, port, count)) => answer(
            StatusCode::Ok,
            json!({"namespace": wanted.namespace, "ip": ip, "port": port, "service_available_count": count}),
        ),
        None => answer(
            StatusCode::NotFound,
            json!({"message": "no service available"}),
        ),
    })
}
