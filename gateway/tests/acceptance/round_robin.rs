//! Acceptance 1: exact round robin with byte-for-byte echoes and no discovery
//! calls on the hot path; proxy headers as a proxy should set them.

use crate::common::{body, Client, System};
use std::collections::HashMap;
use std::time::Duration;
use testkit::raw::{RawInstance, Script};
use testkit::system::metric;

#[async_std::test]
async fn thirty_sequential_posts_over_three_apps_give_each_ten_byte_for_byte() {
    let sys = System::start(3).await;
    let mut client = Client::new(sys.gateway.addr());
    let mut counts: HashMap<String, usize> = HashMap::new();
    for i in 0..30 {
        let sent = format!(
            r#"{{"z": 1, "a": [1.0, 1, 1e2],  "nested": {{"é": "ünïcödé ✓", "i": {i}}} }}"#
        );
        let res = client.post("/api/example", sent.as_bytes()).await.unwrap();
        assert_eq!(res.status, 200);
        assert_eq!(res.body, sent.as_bytes(), "echo differs");
        assert!(res.header("x-request-id").is_some());
        *counts
            .entry(res.header("x-served-by").unwrap().to_string())
            .or_default() += 1;
    }
    for app in &sys.apps {
        assert_eq!(counts.get(app.served_by()), Some(&10), "{counts:?}");
    }
    for outcome in ["ok", "none_available", "error", "timeout"] {
        let sample = format!("gateway_discovery_lookups_total{{outcome=\"{outcome}\"}}");
        assert_eq!(
            metric(&sys.admin(), &sample).await,
            0.0,
            "steady traffic asked discovery"
        );
    }
    // Counted once its answer is written: the last may reach us first.
    let admin = sys.admin();
    testkit::wait_until("all 30 are counted", Duration::from_secs(5), || async {
        metric(&admin, "gateway_requests_total{code=\"200\"}").await == 30.0
    })
    .await;
    sys.stop().await;
}

#[async_std::test]
async fn three_hundred_posts_from_ten_clients_give_each_app_a_hundred() {
    let sys = System::start(3).await;
    let addr = sys.gateway.addr();
    let mut tasks = Vec::new();
    for c in 0..10 {
        tasks.push(async_std::task::spawn(async move {
            let mut client = Client::new(addr);
            let mut seen = Vec::new();
            for n in 0..30 {
                let sent = body(c, n);
                let res = client.post("/", &sent).await.unwrap();
                assert_eq!((res.status, &res.body), (200, &sent));
                seen.push(res.header("x-served-by").unwrap().to_string());
            }
            seen
        }));
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        for by in t.await {
            *counts.entry(by).or_default() += 1;
        }
    }
    for app in &sys.apps {
        let n = counts.get(app.served_by()).copied().unwrap_or(0);
        assert!((99..=101).contains(&n), "{counts:?}");
    }
    sys.stop().await;
}

#[async_std::test]
async fn headers_are_rewritten_as_a_proxy_should() {
    let d = testkit::discovery().await;
    let raw = RawInstance::start(Script::Echo).await;
    testkit::client::register(&d.url(), "service A", raw.port()).await;
    let g = gateway::spawn(testkit::system::gateway_config(&d.url()))
        .await
        .unwrap();
    testkit::system::wait_ring(
        &g.admin_url(),
        &[format!("127.0.0.1:{}", raw.port())],
        std::time::Duration::from_secs(5),
    )
    .await;

    let mut conn = shared::http1::client::Connection::connect(g.addr())
        .await
        .unwrap();
    let req = "POST /pay?x=1 HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: basic abc\r\nTE: trailers\r\nX-Forwarded-For: 203.0.113.7\r\nX-Request-Id: req-42\r\nIdempotency-Key: pay-123\r\nContent-Length: 2\r\n\r\n{}";
    let res = conn.exchange(req.as_bytes()).await.unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(
        res.header("x-request-id"),
        Some("req-42"),
        "the client's request id comes back"
    );
    let got = raw.received().pop().unwrap();
    assert!(
        got.head.starts_with("POST /pay?x=1 HTTP/1.1\r\n"),
        "{}",
        got.head
    );
    assert_eq!(got.header("host").as_deref(), Some("shop.example"));
    assert_eq!(
        got.header("x-forwarded-for").as_deref(),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(got.header("x-request-id").as_deref(), Some("req-42"));
    assert_eq!(got.header("idempotency-key").as_deref(), Some("pay-123"));
    for hop in [
        "connection",
        "x-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
    ] {
        assert_eq!(got.header(hop), None, "{hop} was forwarded");
    }
    assert_eq!(got.body, b"{}");

    // Without a request id, one is made up and sent both ways.
    let res = conn
        .exchange(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let made = res.header("x-request-id").unwrap().to_string();
    assert_eq!(
        raw.received().pop().unwrap().header("x-request-id"),
        Some(made)
    );
    g.shutdown().await;
    d.shutdown().await;
}
