//! A gateway accepts on its client port only once it is ready (every
//! route has an available instance, or `ready_timeout` passed), so one
//! that cannot serve never takes connections from its peers on a shared
//! port. The admin port is up at once: `/health_check` is liveness (200),
//! `/ready` readiness (503 with a JSON body until ready).

use crate::common::Client;
use shared::config::{GatewayConfig, RouteConfig};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::system::{apps, gateway_config, metric, wait_ring};

/// `/ready` of the gateway at `admin`: its status code and body.
async fn ready(admin: &str) -> (u16, serde_json::Value) {
    testkit::client::get(&format!("{admin}/ready")).await
}

async fn wait_ready(admin: &str) {
    testkit::wait_until("the gateway is ready", Duration::from_secs(10), || async {
        ready(admin).await.0 == 200
    })
    .await;
}

fn routed_to(namespace: &str) -> Vec<RouteConfig> {
    vec![RouteConfig {
        prefix: "/".into(),
        namespace: namespace.into(),
        verify_request_id: false,
        ..RouteConfig::default()
    }]
}

#[async_std::test]
async fn the_client_port_is_refused_until_a_route_has_an_instance() {
    let d = testkit::discovery().await;
    let config = GatewayConfig {
        // Longer than the test: only an instance can make it ready.
        ready_timeout: Duration::from_secs(120),
        ..gateway_config(&d.url())
    };
    let g = gateway::spawn(config).await.unwrap();
    let admin = g.admin_url();
    // The port is known (bound) but nothing listens on it yet.
    let refused = async_std::net::TcpStream::connect(g.addr()).await;
    assert_eq!(
        refused.map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionRefused)
    );
    let (code, body) = ready(&admin).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["status"], "starting");
    assert_eq!(body["waiting_for"], serde_json::json!(["service A"]));
    let (code, _) = testkit::client::get(&format!("{admin}/health_check")).await;
    assert_eq!(code, 200, "liveness is not readiness");
    assert_eq!(metric(&admin, "gateway_ready").await, 0.0);

    let apps = apps(&d.url(), 1).await;
    wait_ready(&admin).await;
    assert_eq!(metric(&admin, "gateway_ready").await, 1.0);
    let r = testkit::system::post_once(g.addr(), "/x", b"{\"ok\": 1}").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-served-by"), Some(apps[0].served_by()));
    g.shutdown().await;
    for a in apps {
        a.shutdown().await;
    }
    d.shutdown().await;
}

#[async_std::test]
async fn after_ready_timeout_it_listens_anyway_and_answers_503() {
    let d = testkit::discovery().await;
    let config = GatewayConfig {
        routes: routed_to("nobody"),
        ready_timeout: Duration::from_millis(300),
        ..gateway_config(&d.url())
    };
    let g = gateway::spawn(config).await.unwrap();
    wait_ready(&g.admin_url()).await;
    let r = testkit::system::post_once(g.addr(), "/x", b"{}").await;
    assert_eq!(r.status, 503);
    assert!(String::from_utf8_lossy(&r.body).contains("no_available_instance"));
    g.shutdown().await;
    d.shutdown().await;
}

/// What the clients of the shared port saw.
#[derive(Default, Debug)]
struct Seen {
    ok: usize,
    failures: Vec<String>,
}

/// New-connection clients on `addr` until `stop`; every answer must be the app's echo.
async fn clients(addr: SocketAddr, n: usize, app: String, stop: Arc<AtomicBool>) -> Seen {
    let mut tasks = Vec::new();
    for c in 0..n {
        let (app, stop) = (app.clone(), stop.clone());
        tasks.push(async_std::task::spawn(async move {
            let mut seen = Seen::default();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let sent = format!(r#"{{"client": {c}, "n": {i}}}"#);
                match Client::new(addr).post("/", sent.as_bytes()).await {
                    Ok(r) if r.status == 200 && r.body == sent.as_bytes() => {
                        if r.header("x-served-by") == Some(app.as_str()) {
                            seen.ok += 1;
                        } else {
                            seen.failures
                                .push(format!("served by {:?}", r.header("x-served-by")));
                        }
                    }
                    Ok(r) => seen.failures.push(format!(
                        "{} {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    )),
                    Err(e) => seen.failures.push(format!("transport: {e}")),
                }
            }
            seen
        }));
    }
    let mut all = Seen::default();
    for t in tasks {
        let s = t.await;
        all.ok += s.ok;
        all.failures.extend(s.failures);
    }
    all
}

/// Acceptance 3: a gateway routing to a namespace that does not exist,
/// started on the port a good gateway serves (SO_REUSEPORT), takes none of
/// the clients' new connections while it starts and while it runs.
#[async_std::test]
async fn a_broken_gateway_on_a_shared_port_takes_no_connection() {
    let d = testkit::discovery().await;
    let apps = apps(&d.url(), 1).await;
    let app = apps[0].served_by().to_string();
    let good = gateway::spawn(gateway_config(&d.url())).await.unwrap();
    wait_ring(
        &good.admin_url(),
        std::slice::from_ref(&app),
        Duration::from_secs(5),
    )
    .await;
    let addr = good.addr();
    let broken_config = |ready_timeout| GatewayConfig {
        listen: addr.to_string(),
        routes: routed_to("no such namespace"),
        ready_timeout,
        ..gateway_config(&d.url())
    };

    let stop = Arc::new(AtomicBool::new(false));
    let load = async_std::task::spawn(clients(addr, 4, app.clone(), stop.clone()));
    let until = |n: f64| {
        let admin = good.admin_url();
        async move {
            testkit::wait_until("the good gateway answered more", Duration::from_secs(20), || {
                let admin = admin.clone();
                async move { metric(&admin, r#"gateway_requests_total{code="200"}"#).await >= n }
            })
            .await
        }
    };
    until(50.0).await;
    // ready_timeout longer than the test: it stays unready, so unlistened.
    let broken = gateway::spawn(broken_config(Duration::from_secs(120)))
        .await
        .unwrap();
    assert_eq!(broken.addr(), addr, "it bound the shared port");
    let before = metric(&good.admin_url(), r#"gateway_requests_total{code="200"}"#).await;
    until(before + 300.0).await;
    stop.store(true, Ordering::Relaxed);
    let seen = load.await;
    let (code, body) = ready(&broken.admin_url()).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(
        body["waiting_for"],
        serde_json::json!(["no such namespace"])
    );
    assert_eq!(
        metric(&broken.admin_url(), "gateway_client_connections").await,
        0.0
    );
    eprintln!(
        "{} requests through the shared port while the broken gateway ran",
        seen.ok
    );
    assert!(
        seen.failures.is_empty(),
        "{} failed: {:?}",
        seen.failures.len(),
        &seen.failures[..seen.failures.len().min(5)]
    );
    broken.shutdown().await;

    // The control: listening at once (ready_timeout 0, the old behaviour),
    // the same gateway takes a share of new connections and answers 503.
    let eager = gateway::spawn(broken_config(Duration::ZERO)).await.unwrap();
    let mut unavailable = 0;
    for _ in 0..100 {
        let r = testkit::system::post_once(addr, "/", b"{}").await;
        unavailable += usize::from(r.status == 503);
    }
    eprintln!("the eager broken gateway answered {unavailable} of 100 with 503");
    assert!(
        unavailable > 0,
        "the control never reached the broken gateway"
    );
    eager.shutdown().await;
    good.shutdown().await;
    for a in apps {
        a.shutdown().await;
    }
    d.shutdown().await;
}

#[async_std::test]
async fn a_gateway_stopped_before_it_was_ready_never_listened() {
    let d = testkit::discovery().await;
    let config = GatewayConfig {
        ready_timeout: Duration::from_secs(120),
        ..gateway_config(&d.url())
    };
    let g = gateway::spawn(config).await.unwrap();
    let addr = g.addr();
    let started = Instant::now();
    g.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it stops at once"
    );
    assert!(async_std::net::TcpStream::connect(addr).await.is_err());
    d.shutdown().await;
}
