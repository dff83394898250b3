//! The app's side: the chaos knobs live on an admin port that is
//! never registered; a head the old stack could not take is a 400, not a dead
//! process; heads as large as the gateway forwards are served; the app sends
//! the registration token discovery asks for, and says clearly when refused.

use crate::support::{app_config, instances, send, wait_for_status};
use async_std::io::{ReadExt, WriteExt};
use async_std::net::TcpStream;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use testkit::client::{call, get};
use testkit::procs::Proc;

const TOKEN: &str = "s3cret-token_for.tests";

async fn chaos_app(discovery_url: &str) -> app::Handle {
    let mut config = app_config(discovery_url);
    config.chaos = true;
    app::spawn(config).await.unwrap()
}

/// Sends raw bytes on a fresh connection; the status of the answer, if any.
async fn raw_status(addr: SocketAddr, bytes: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream.write_all(bytes).await.ok()?;
    let mut answer = Vec::new();
    let read =
        async_std::future::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    if !matches!(read, Ok(Ok(_))) && answer.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Discovery requiring `TOKEN` on writes (the config built from JSON, so this
/// file compiles before and after the key exists).
async fn discovery_with_token() -> discovery::Handle {
    let mut config = serde_json::to_value(testkit::discovery_config()).unwrap();
    config["registration_token"] = json!(TOKEN);
    let config = shared::config::parse(&config.to_string())
        .unwrap_or_else(|e| panic!("discovery takes registration_token: {e}"));
    discovery::spawn(config).await.unwrap()
}

#[async_std::test]
async fn chaos_is_not_reachable_on_the_business_port() {
    let d = testkit::discovery().await;
    let app = chaos_app(&d.url()).await;
    assert_ne!(app.admin_addr(), app.addr());
    let calm = json!({"delay_ms": 0, "health": "ok", "fail_rate": 0.0});
    for path in ["/chaos", "/chaos/", "/api/../chaos", "/api/%2e%2e/chaos"] {
        for method in ["GET", "PUT", "POST"] {
            let res = send(app.addr(), method, path, br#"{"health": "fail"}"#).await;
            assert_eq!(res.status, 404, "{method} {path} on the business port");
            assert_eq!(res.json()["error"]["code"], "not_found");
        }
    }
    let (status, knobs) = get(&format!("{}/chaos", app.admin_url())).await;
    assert_eq!((status, &knobs), (200, &calm), "the knobs did not move");
    assert_eq!(
        send(app.addr(), "GET", "/health_check", b"").await.status,
        200
    );

    let (status, knobs) = call(
        "PUT",
        &format!("{}/chaos", app.admin_url()),
        Some(r#"{"fail_rate": 0.5}"#),
    )
    .await;
    assert_eq!(status, 200, "{knobs}");
    assert_eq!(knobs["fail_rate"], 0.5);
    // The admin port answers for its own instance, and serves the process's
    // health and metrics beside the knobs.
    let res = send(app.admin_addr(), "GET", "/chaos", b"").await;
    assert_eq!(res.header("x-served-by"), Some(app.served_by()));
    let res = send(app.admin_addr(), "GET", "/health_check", b"").await;
    assert_eq!(res.status, 200);
    let res = send(app.admin_addr(), "GET", "/metrics", b"").await;
    assert_eq!(res.status, 200);
    let metrics = String::from_utf8(res.body).unwrap();
    assert!(
        metrics.lines().any(|l| l == "app_panics_total 0"),
        "{metrics}"
    );
    // The admin port does no business.
    assert_eq!(send(app.admin_addr(), "POST", "/", b"{}").await.status, 404);
    assert_eq!(
        send(app.admin_addr(), "POST", "/chaos", b"{}").await.status,
        405
    );
    app.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn the_admin_port_is_never_registered() {
    let d = testkit::discovery().await;
    let base = d.url();
    let app = chaos_app(&base).await;
    let port = app.addr().port();
    wait_for_status(
        &base,
        "service A",
        "127.0.0.1",
        port,
        "available",
        Duration::from_secs(3),
    )
    .await;
    // Through a few renewals: still only the business port, in any namespace.
    testkit::wait_until("three renewals", Duration::from_secs(5), || async {
        let (_, m) = get(&format!("{base}/metrics")).await;
        m.as_str().unwrap_or_default().lines().any(|l| {
            l.strip_prefix(r#"discovery_registrations_total{outcome="renewed"} "#)
                .and_then(|n| n.parse::<f64>().ok())
                .is_some_and(|n| n >= 3.0)
        })
    })
    .await;
    let (status, services) = get(&format!("{base}/api/services")).await;
    assert_eq!(status, 200);
    let listed: Vec<(String, String)> = services
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(ns, list)| {
            list.as_array()
                .unwrap()
                .iter()
                .map(|i| (ns.clone(), i["port"].as_str().unwrap().to_string()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(listed, [("service A".to_string(), port.to_string())]);
    app.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn a_non_ascii_header_does_not_kill_the_app() {
    let d = testkit::discovery().await;
    // A process of its own: before the strict front, this head ended it.
    let p = Proc::start(
        "app",
        &["--port", "0", "--discovery-url", &d.url(), "--chaos"],
    );
    let addr = p.listening("app").await;
    let admin = p.listening("app admin").await;
    for target in [addr, admin] {
        let head = format!(
            "POST /api/pay HTTP/1.1\r\nhost: {target}\r\ncontent-type: application/json\r\n\
             X-Note: caf\u{e9}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
        );
        assert!(head.as_bytes().windows(2).any(|w| w == b"\xc3\xa9"));
        assert_eq!(raw_status(target, head.as_bytes()).await, Some(400));
        // Raw bytes that are not even UTF-8.
        let latin1 = b"GET /health_check HTTP/1.1\r\nhost: a\r\nX-Note: caf\xe9\r\n\
            connection: close\r\n\r\n";
        assert_eq!(raw_status(target, latin1).await, Some(400));
    }
    let res = send(addr, "POST", "/api/pay", b"{\"amount\":1}").await;
    assert_eq!(res.status, 200, "the app lives on");
    assert_eq!(res.body, b"{\"amount\":1}");
    assert_eq!(send(admin, "GET", "/health_check", b"").await.status, 200);
    d.shutdown().await;
}

#[async_std::test]
async fn a_head_as_large_as_the_gateway_forwards_is_served() {
    let d = testkit::discovery().await;
    let app = app::spawn(app_config(&d.url())).await.unwrap();
    // The gateway takes 16 KiB heads and adds its own headers: 24 KiB here.
    let big = "x".repeat(24 * 1024);
    let head = format!(
        "POST / HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\nx-big: {big}\r\n\
         content-length: 2\r\nconnection: close\r\n\r\n{{}}"
    );
    assert_eq!(raw_status(app.addr(), head.as_bytes()).await, Some(200));
    // Past the app's own limit (32 KiB by default): refused, not a dead connection.
    let huge = "x".repeat(40 * 1024);
    let head = format!("GET /health_check HTTP/1.1\r\nhost: a\r\nx-big: {huge}\r\n\r\n");
    assert_eq!(raw_status(app.addr(), head.as_bytes()).await, Some(431));
    assert_eq!(
        send(app.addr(), "GET", "/health_check", b"").await.status,
        200
    );
    app.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn the_app_sends_its_registration_token() {
    let d = discovery_with_token().await;
    let base = d.url();
    // Without a token: refused, logged once however often it retries, never listed.
    let anonymous = Proc::start(
        "app",
        &[
            "--port",
            "0",
            "--discovery-url",
            &base,
            "--register-interval",
            "200ms",
            "--log-level",
            "debug",
        ],
    );
    anonymous.listening("app").await;
    let refused = anonymous
        .wait_for_line("discovery refused the registration", Duration::from_secs(5))
        .await;
    assert!(refused.contains("401"), "{refused}");
    assert!(refused.contains("REGISTRATION_TOKEN"), "{refused}");
    testkit::wait_until("three more refusals", Duration::from_secs(5), || async {
        anonymous
            .output()
            .matches("registration still refused")
            .count()
            >= 3
    })
    .await;
    let output = anonymous.output();
    assert_eq!(
        output.matches("discovery refused the registration").count(),
        1,
        "{output}"
    );

    // A wrong token: refused too.
    let mut wrong = app_config(&base);
    wrong.registration_token = Some("not-the-token".into());
    let wrong = app::spawn(wrong).await.unwrap();

    // The right one, from the environment as `just up` passes it.
    let member = Proc::start_with_env(
        "app",
        &[
            "--port",
            "0",
            "--discovery-url",
            &base,
            "--register-interval",
            "200ms",
        ],
        &[("REGISTRATION_TOKEN", TOKEN)],
    );
    let addr = member.listening("app").await;
    wait_for_status(
        &base,
        "service A",
        "127.0.0.1",
        addr.port(),
        "available",
        Duration::from_secs(5),
    )
    .await;
    let listed = instances(&base, "service A").await;
    assert_eq!(listed.len(), 1, "only the app with the token: {listed:?}");
    assert!(!anonymous.output().contains("registered with discovery"));
    // It deregisters with the token too.
    member.terminate();
    testkit::wait_until(
        "the member deregistered",
        Duration::from_secs(5),
        || async { instances(&base, "service A").await.is_empty() },
    )
    .await;
    member
        .wait_for_line("deregistered from discovery", Duration::from_secs(5))
        .await;
    wrong.shutdown().await;
    d.shutdown().await;
}
