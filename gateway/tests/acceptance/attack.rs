//! What the tests of misbehaving instances share (misbehaving.rs,
//! invariants.rs): a system of real apps beside scripted instances, two
//! routes to them (one verifying request ids), a client that names each
//! request's id and script, and checks of the gateway's error answers.

use serde_json::Value;
use shared::config::{GatewayConfig, RouteConfig};
use shared::http1::client::{post, Connection, Response};
use shared::wire::ErrorBody;
use std::net::SocketAddr;
use std::time::Duration;
use testkit::raw::{RawInstance, Script};
use testkit::system::{apps, gateway_config, metrics_text, status, wait_ring};

/// The route whose answers must carry the request's id.
pub const STRICT: &str = "/strict";
/// A route without that check (everything not under [`STRICT`]).
pub const PLAIN: &str = "/pay";

/// Discovery, scripted instances and real apps in "service A", and a gateway.
pub struct Mixed {
    pub discovery: discovery::Handle,
    pub raws: Vec<RawInstance>,
    pub apps: Vec<app::Handle>,
    pub gateway: gateway::Handle,
}

/// Routes `/strict` (verify_request_id) and `/` (not) to "service A".
pub fn routes() -> Vec<RouteConfig> {
    let route = |prefix: &str, verify_request_id| RouteConfig {
        prefix: prefix.into(),
        namespace: "service A".into(),
        verify_request_id,
        ..RouteConfig::default()
    };
    vec![route(STRICT, true), route("/", false)]
}

impl Mixed {
    /// `raws` scripted instances (all following `script` unless a request
    /// says otherwise) and `apps` real apps, behind a gateway with [`routes`].
    pub async fn start(
        raws: usize,
        script: Script,
        apps_n: usize,
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> Mixed {
        let discovery = testkit::discovery().await;
        let mut raw_list = Vec::new();
        for _ in 0..raws {
            let raw = RawInstance::start(script.clone()).await;
            testkit::client::register(&discovery.url(), "service A", raw.port()).await;
            raw_list.push(raw);
        }
        let apps = apps(&discovery.url(), apps_n).await;
        let mut config = gateway_config(&discovery.url());
        config.routes = routes();
        tweak(&mut config);
        let gateway = gateway::spawn(config).await.unwrap();
        let mut members: Vec<String> = raw_list.iter().map(RawInstance::key).collect();
        members.extend(apps.iter().map(|a| a.served_by().to_string()));
        wait_ring(&gateway.admin_url(), &members, Duration::from_secs(10)).await;
        Mixed {
            discovery,
            raws: raw_list,
            apps,
            gateway,
        }
    }

    pub fn admin(&self) -> String {
        self.gateway.admin_url()
    }

    /// How many instances (scripted ones from their records, apps from the
    /// answer's `x-served-by`) the request `id` reached.
    pub fn reached(&self, id: &str, res: Option<&Response>) -> usize {
        let raw: usize = self.raws.iter().map(|r| r.received_id(id)).sum();
        raw + usize::from(res.is_some_and(|r| self.served_by_app(r)))
    }

    /// Whether `res` is a 200 that a real app produced.
    pub fn served_by_app(&self, res: &Response) -> bool {
        res.status == 200
            && res
                .header("x-served-by")
                .is_some_and(|by| self.apps.iter().any(|a| a.served_by() == by))
    }

    pub async fn stop(self) {
        self.gateway.shutdown().await;
        for a in self.apps {
            a.shutdown().await;
        }
        self.discovery.shutdown().await;
    }
}

/// A client connection that POSTs with a chosen `x-request-id` and `x-script`,
/// reconnecting when the gateway closes it.
pub struct Caller {
    addr: SocketAddr,
    conn: Option<Connection>,
    req: Vec<u8>,
}

impl Caller {
    pub fn new(addr: SocketAddr) -> Caller {
        Caller {
            addr,
            conn: None,
            req: Vec::new(),
        }
    }

    /// One POST to `path`; `script` is sent as `x-script` unless empty.
    pub async fn send(
        &mut self,
        path: &str,
        id: &str,
        script: &str,
        body: &[u8],
    ) -> std::io::Result<Response> {
        self.send_method("POST", path, id, script, body).await
    }

    /// Like `send`, with another method (the body is sent all the same).
    pub async fn send_method(
        &mut self,
        method: &str,
        path: &str,
        id: &str,
        script: &str,
        body: &[u8],
    ) -> std::io::Result<Response> {
        if self.conn.is_none() {
            self.conn = Some(Connection::connect(self.addr).await?);
        }
        let script = if script.is_empty() {
            String::new()
        } else {
            format!("x-script: {script}\r\n")
        };
        post(
            &mut self.req,
            "gateway",
            path,
            body,
            &format!("x-request-id: {id}\r\n{script}"),
        );
        if method != "POST" {
            self.req.splice(0..4, method.bytes());
        }
        let conn = self.conn.as_mut().unwrap();
        let res = conn.exchange(&self.req).await;
        if !matches!(&res, Ok(r) if r.keep_alive) {
            self.conn = None;
        }
        res
    }

    /// Drops the connection: the next request opens a new one.
    pub fn disconnect(&mut self) {
        self.conn = None;
    }
}

/// A JSON body that no other request of the test carries.
pub fn unique_body(id: &str, pad: usize) -> Vec<u8> {
    format!(r#"{{"payment": "{id}", "pad": "{}"}}"#, "p".repeat(pad)).into_bytes()
}

/// The gateway's own error answer (JSON error body with this request's id),
/// if `res` is one; `None` for anything else.
pub fn gateway_error(res: &Response, id: &str) -> Option<ErrorBody> {
    let body: ErrorBody = serde_json::from_slice(&res.body).ok()?;
    let ours = body.error.request_id.as_deref() == Some(id)
        && res.header("x-request-id") == Some(id)
        && res.header("content-type") == Some("application/json");
    ours.then_some(body)
}

/// Asserts `res` is the gateway's 502 `bad_gateway` for request `id`, which
/// does not name the instance (`key`) to the client.
pub fn assert_bad_gateway(res: &Response, id: &str, key: &str, what: &str) {
    let text = String::from_utf8_lossy(&res.body);
    assert_eq!(res.status, 502, "{what}: {text}");
    let body = gateway_error(res, id)
        .unwrap_or_else(|| panic!("{what}: not the gateway's error body: {text}"));
    assert_eq!(body.error.code, "bad_gateway", "{what}: {text}");
    assert!(
        !text.contains(key),
        "{what}: the error names the instance: {text}"
    );
}

/// Asserts `res` is a 200 carrying exactly `body`.
pub fn assert_own(res: &Response, body: &[u8], what: &str) {
    assert_eq!(
        (res.status, String::from_utf8_lossy(&res.body)),
        (200, String::from_utf8_lossy(body)),
        "{what}: not its own answer"
    );
}

/// `gateway_upstream_faults_total` for instance `key` and `fault`, 0 if absent.
pub async fn faults(admin: &str, key: &str, fault: &str) -> f64 {
    let text = metrics_text(admin).await;
    let (up, kind) = (format!("upstream=\"{key}\""), format!("fault=\"{fault}\""));
    text.lines()
        .filter(|l| l.starts_with("gateway_upstream_faults_total{"))
        .filter(|l| l.contains(&up) && l.contains(&kind))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Whether `/status` shows instance `key` cooling down.
pub async fn cooling_down(admin: &str, key: &str) -> bool {
    let status = status(admin).await;
    members(&status)
        .iter()
        .find(|m| m["upstream"].as_str() == Some(key))
        .is_some_and(|m| m["cooling_down"] == Value::Bool(true))
}

fn members(status: &Value) -> Vec<Value> {
    let namespaces = status["namespaces"].as_array().cloned().unwrap_or_default();
    namespaces
        .iter()
        .flat_map(|n| n["members"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// Polls `cond` until it holds or `limit` passes; answers whether it held.
/// For waits whose failure a later assertion explains better.
pub async fn holds_within<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        async_std::task::sleep(Duration::from_millis(10)).await;
    }
}
