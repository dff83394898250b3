//! Acceptance 4: with `--chaos`, a delay or a failing health check makes
//! discovery mark the instance unavailable and undoing it brings it back;
//! fail_rate fails business requests; invalid knobs are a 400 that changes
//! nothing; without `--chaos` the paths are 404. The knobs are on the admin port.

use crate::support::{app_config, send, wait_for_status};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use testkit::client::{call, get};

async fn chaos_app(discovery_url: &str) -> app::Handle {
    let mut config = app_config(discovery_url);
    config.chaos = true;
    app::spawn(config).await.unwrap()
}

async fn put(app: &app::Handle, body: &str) -> (u16, Value) {
    call("PUT", &format!("{}/chaos", app.admin_url()), Some(body)).await
}

#[async_std::test]
async fn a_delay_or_a_failing_health_check_makes_the_instance_unavailable_until_undone() {
    let config = testkit::discovery_config();
    let d = discovery::spawn(config.clone()).await.unwrap();
    let base = d.url();
    let app = chaos_app(&base).await;
    let port = app.addr().port();
    let limit = Duration::from_secs(3);
    wait_for_status(&base, "service A", "127.0.0.1", port, "available", limit).await;

    let delay = config.timeout_threshold * 8;
    let (status, knobs) = put(&app, &format!(r#"{{"delay_ms": {}}}"#, delay.as_millis())).await;
    assert_eq!(status, 200, "{knobs}");
    assert_eq!(
        knobs,
        json!({"delay_ms": delay.as_millis() as u64, "health": "ok", "fail_rate": 0.0})
    );
    wait_for_status(&base, "service A", "127.0.0.1", port, "unavailable", limit).await;
    // The delay holds business requests too.
    let started = Instant::now();
    let res = send(app.addr(), "POST", "/", b"{\"slow\":true}").await;
    assert_eq!(res.status, 200);
    assert!(
        started.elapsed() >= delay,
        "answered after {:?}",
        started.elapsed()
    );

    let (status, _) = put(&app, r#"{"delay_ms": 0}"#).await;
    assert_eq!(status, 200);
    wait_for_status(&base, "service A", "127.0.0.1", port, "available", limit).await;

    let (status, knobs) = put(&app, r#"{"health": "fail"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(knobs["health"], "fail");
    let res = send(app.addr(), "GET", "/health_check", b"").await;
    assert_eq!(res.status, 503);
    assert_eq!(res.json()["error"]["code"], "unhealthy");
    wait_for_status(&base, "service A", "127.0.0.1", port, "unavailable", limit).await;
    let res = send(app.addr(), "POST", "/", b"[1]").await;
    assert_eq!(
        res.status, 200,
        "a failing health check leaves business alone"
    );

    let (status, _) = put(&app, r#"{"health": "ok"}"#).await;
    assert_eq!(status, 200);
    wait_for_status(&base, "service A", "127.0.0.1", port, "available", limit).await;
    app.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn invalid_knob_values_are_400_and_change_nothing() {
    let d = testkit::discovery().await;
    let app = chaos_app(&d.url()).await;
    let (status, before) = put(
        &app,
        r#"{"delay_ms": 5, "health": "fail", "fail_rate": 0.25}"#,
    )
    .await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(
        before,
        json!({"delay_ms": 5, "health": "fail", "fail_rate": 0.25})
    );
    for bad in [
        r#"{"delay_ms": -1}"#,
        r#"{"delay_ms": 60001}"#,
        r#"{"delay_ms": 1.5}"#,
        r#"{"delay_ms": "10"}"#,
        r#"{"fail_rate": 1.5}"#,
        r#"{"fail_rate": -0.1}"#,
        r#"{"fail_rate": "half"}"#,
        r#"{"health": "sick"}"#,
        r#"{"health": "OK"}"#,
        r#"{"delay_ms": 0, "speed": 1}"#,
        r#"{"delay_ms": 0, "fail_rate": 2}"#,
        r#"{"delay_ms": 0, "health": "ok", "fail_rate": 0.0"#,
        r#"[{"delay_ms": 0}]"#,
        "",
    ] {
        let (status, error) = put(&app, bad).await;
        assert_eq!(status, 400, "{bad}: {error}");
        assert!(error["error"]["code"].is_string(), "{bad}: {error}");
        let (_, now) = get(&format!("{}/chaos", app.admin_url())).await;
        assert_eq!(now, before, "{bad} changed the knobs");
    }
    let (_, error) = put(&app, r#"{"speed": 1}"#).await;
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("speed"),
        "{error}"
    );
    let (_, error) = put(&app, r#"{"delay_ms": 60001}"#).await;
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("delay_ms"),
        "{error}"
    );
    app.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn fail_rate_one_fails_business_requests_and_zero_brings_them_back() {
    let d = testkit::discovery().await;
    let app = chaos_app(&d.url()).await;
    let (status, _) = put(&app, r#"{"fail_rate": 1.0}"#).await;
    assert_eq!(status, 200);
    for _ in 0..20 {
        let res = send(app.addr(), "POST", "/api/example", b"{\"a\":1}").await;
        assert_eq!(res.status, 500);
        assert_eq!(res.header("content-type"), Some("application/json"));
        assert_eq!(res.json()["error"]["code"], "chaos_failure");
    }
    let res = send(app.addr(), "GET", "/health_check", b"").await;
    assert_eq!(res.status, 200, "fail_rate leaves health checks alone");

    let (status, _) = put(&app, r#"{"fail_rate": 0.5}"#).await;
    assert_eq!(status, 200);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..100 {
        seen.insert(send(app.addr(), "POST", "/", b"{}").await.status);
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        [200, 500],
        "a mix at 0.5"
    );

    let (status, _) = put(&app, r#"{"fail_rate": 0.0}"#).await;
    assert_eq!(status, 200);
    for _ in 0..20 {
        let res = send(app.addr(), "POST", "/api/example", b"{\"a\":1}").await;
        assert_eq!(res.status, 200);
        assert_eq!(res.body, b"{\"a\":1}");
    }
    app.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn without_chaos_the_chaos_paths_are_404_and_with_it_post_is_not_echoed() {
    let d = testkit::discovery().await;
    let plain = app::spawn(app_config(&d.url())).await.unwrap();
    for addr in [plain.addr(), plain.admin_addr()] {
        for path in ["/chaos", "/chaos/"] {
            for method in ["GET", "PUT", "POST", "DELETE"] {
                let res = send(addr, method, path, br#"{"delay_ms": 800}"#).await;
                assert_eq!(res.status, 404, "{method} {path} on {addr}");
                assert_eq!(res.json()["error"]["code"], "not_found");
            }
        }
    }
    let res = send(plain.addr(), "POST", "/chaotic", b"{}").await;
    assert_eq!(res.status, 200, "only /chaos itself is taken");

    let chaotic = chaos_app(&d.url()).await;
    let (status, knobs) = get(&format!("{}/chaos", chaotic.admin_url())).await;
    assert_eq!(status, 200);
    assert_eq!(
        knobs,
        json!({"delay_ms": 0, "health": "ok", "fail_rate": 0.0})
    );
    let res = send(
        chaotic.admin_addr(),
        "POST",
        "/chaos",
        br#"{"delay_ms": 800}"#,
    )
    .await;
    assert_eq!(res.status, 405);
    assert_eq!(res.header("allow"), Some("GET, PUT"));
    let res = send(chaotic.addr(), "POST", "/chaos", br#"{"delay_ms": 800}"#).await;
    assert_eq!(res.status, 404, "not echoed on the business port either");
    let (_, knobs) = get(&format!("{}/chaos", chaotic.admin_url())).await;
    assert_eq!(knobs["delay_ms"], 0);
    plain.shutdown().await;
    chaotic.shutdown().await;
    d.shutdown().await;
}
