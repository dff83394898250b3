//! Whole systems for the gateway's tests: discovery, apps and a gateway,
//! in-process on port 0, with timings short enough for tests.

use serde_json::Value;
use shared::config::{AppConfig, GatewayConfig};
use shared::http1::client::{post, Connection, Response};
use std::time::Duration;

/// A gateway config for tests: any free ports, short timeouts.
pub fn gateway_config(discovery_url: &str) -> GatewayConfig {
    GatewayConfig {
        listen: "127.0.0.1:0".into(),
        admin_listen: "127.0.0.1:0".into(),
        discovery_url: discovery_url.into(),
        connect_timeout: Duration::from_millis(500),
        upstream_timeout: Duration::from_secs(1),
        request_deadline: Duration::from_secs(5),
        lookup_timeout: Duration::from_millis(300),
        relearn_grace: Duration::from_secs(2),
        client_header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(3),
        // worker_threads stays at its default (one per core): the rotation
        // is one for every worker, so exact round robin holds at any count.
        // Listen at once, as these tests expect (several want a 503 from a
        // namespace with no instance); readiness has tests of its own
        // (gateway/tests/acceptance/readiness.rs).
        ready_timeout: Duration::ZERO,
        ..GatewayConfig::default()
    }
}

/// An app config for tests: a free port, chaos knobs on, quick re-registration.
pub fn app_config(discovery_url: &str) -> AppConfig {
    AppConfig {
        port: 0,
        discovery_url: discovery_url.into(),
        register_interval: Duration::from_millis(300),
        register_backoff_max: Duration::from_millis(200),
        drain_timeout: Duration::from_secs(2),
        chaos: true,
        ..AppConfig::default()
    }
}

/// Starts `n` apps in-process, registered with discovery at `discovery_url`.
pub async fn apps(discovery_url: &str, n: usize) -> Vec<app::Handle> {
    let mut apps = Vec::new();
    for _ in 0..n {
        apps.push(
            app::spawn(app_config(discovery_url))
                .await
                .expect("app starts"),
        );
    }
    apps
}

/// Like [`apps`], registering with `Authorization: Bearer <token>` (a
/// discovery with a `registration_token`).
pub async fn apps_with_token(discovery_url: &str, n: usize, token: &str) -> Vec<app::Handle> {
    let mut apps = Vec::new();
    for _ in 0..n {
        let config = AppConfig {
            registration_token: Some(token.into()),
            ..app_config(discovery_url)
        };
        apps.push(app::spawn(config).await.expect("app starts"));
    }
    apps
}

/// The members of the gateway's ring for `namespace`, from its `/status`.
pub async fn ring(admin_url: &str, namespace: &str) -> Vec<String> {
    let (_, status) = crate::client::get(&format!("{admin_url}/status")).await;
    shared::wire::ring_members(&status, namespace)
}

/// Waits until the gateway's ring for "service A" has exactly `members`.
pub async fn wait_ring(admin_url: &str, members: &[String], limit: Duration) {
    let mut want = members.to_vec();
    want.sort();
    crate::wait_until("the gateway's ring matches", limit, || async {
        let mut got = ring(admin_url, "service A").await;
        got.sort();
        got == want
    })
    .await;
}

/// The `/status` JSON of the gateway.
pub async fn status(admin_url: &str) -> Value {
    crate::client::get(&format!("{admin_url}/status")).await.1
}

/// The value of one sample in the gateway's `/metrics`, e.g.
/// `gateway_requests_total{code="200"}`; 0 if absent.
pub async fn metric(admin_url: &str, sample: &str) -> f64 {
    let (_, text) = crate::client::get(&format!("{admin_url}/metrics")).await;
    let text = text.as_str().unwrap_or_default().to_string();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Sends one JSON POST on a fresh connection and reads the answer.
pub async fn post_once(addr: std::net::SocketAddr, path: &str, body: &[u8]) -> Response {
    let mut conn = Connection::connect(addr).await.expect("gateway accepts");
    let mut req = Vec::new();
    post(&mut req, "gateway", path, body, "");
    conn.exchange(&req).await.expect("gateway answers")
}

/// The gateway's whole `/metrics` text.
pub async fn metrics_text(admin_url: &str) -> String {
    let (_, text) = crate::client::get(&format!("{admin_url}/metrics")).await;
    text.as_str().unwrap_or_default().to_string()
}

/// `/metrics` once `settled` holds for its text (panics after 10 s). The
/// gateway counts a try when the answer has been relayed, so a client can
/// hold its whole answer a moment before the try shows in `/metrics`.
pub async fn metrics_when(admin_url: &str, what: &str, settled: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics_text(admin_url).await;
        if settled(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until /metrics shows {what}:\n{text}"
        );
        async_std::task::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends raw request bytes on a fresh connection and returns what came back
/// until the server closed it (panics after `limit`: a refusal must close).
pub async fn refused(addr: std::net::SocketAddr, request: &[u8], limit: Duration) -> String {
    let mut conn = Connection::connect(addr).await.expect("server accepts");
    // The server may answer and close before all of a refused request is written.
    let _ = conn.send(request).await;
    let answer = async_std::future::timeout(limit, conn.read_to_close())
        .await
        .expect("the server closes a refused connection")
        .unwrap_or_default();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends one raw request on a fresh connection and reads one answer.
pub async fn exchange_raw(addr: std::net::SocketAddr, request: &[u8]) -> Response {
    let mut conn = Connection::connect(addr).await.expect("server accepts");
    conn.exchange(request).await.expect("server answers")
}
