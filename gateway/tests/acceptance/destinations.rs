//! The gateway's own destination policy (`allowed_upstreams`). A record
//! that reaches its ring by another way than a strict discovery (put straight
//! into etcd, or a discovery configured to allow more) must never make it
//! connect where it may not, nor show a client anything but a normal answer.
//!
//! The denied address here is 0.0.0.0 (unspecified: denied by the default
//! policy). Nothing in these tests sends traffic beyond loopback: on Linux a
//! connect to 0.0.0.0 reaches the local host, so a gateway that wrongly
//! connected would reach the decoy below, which records it.

use shared::config::GatewayConfig;
use std::time::Duration;
use testkit::raw::{RawInstance, Script};
use testkit::system::{apps, gateway_config, metric, post_once, status, wait_ring};

/// A discovery that allows 0.0.0.0 beside its defaults (the gateway keeps its own).
async fn lenient_discovery() -> discovery::Handle {
    let mut config = testkit::discovery_config();
    config.allowed_hosts.push("0.0.0.0/32".into());
    discovery::spawn(config).await.unwrap()
}

/// Registers `port` at host 0.0.0.0 in "service A"; the decoy's key.
async fn register_at_unspecified(discovery_url: &str, port: u16) -> String {
    let body = serde_json::json!({"namespace": "service A", "port": port, "host": "0.0.0.0"});
    let (code, answer) =
        testkit::client::post(&format!("{discovery_url}/api/register"), &body.to_string()).await;
    assert!(code == 200 || code == 201, "register: {code} {answer}");
    format!("0.0.0.0:{port}")
}

/// The `/status` entry of ring member `key`.
async fn member(admin: &str, key: &str) -> serde_json::Value {
    let s = status(admin).await;
    s["namespaces"][0]["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["upstream"] == key).cloned())
        .unwrap_or_else(|| panic!("{key} not in the ring: {s}"))
}

#[async_std::test]
async fn a_member_at_a_denied_address_is_skipped_like_a_refused_connect() {
    let d = lenient_discovery().await;
    // Health checks to 0.0.0.0:PORT reach it, so discovery calls it available.
    let decoy = RawInstance::start(Script::Echo).await;
    let denied = register_at_unspecified(&d.url(), decoy.port()).await;
    let apps = apps(&d.url(), 1).await;
    let app = apps[0].served_by().to_string();
    let config = GatewayConfig {
        // Long enough that the member is still cooling when /status is read.
        connect_cooldown: Duration::from_secs(60),
        ..gateway_config(&d.url())
    };
    assert_eq!(
        config.allowed_upstreams,
        GatewayConfig::default().allowed_upstreams
    );
    let g = gateway::spawn(config).await.unwrap();
    let admin = g.admin_url();
    wait_ring(
        &admin,
        &[denied.clone(), app.clone()],
        Duration::from_secs(5),
    )
    .await;

    for n in 0..30 {
        let sent = format!(r#"{{"n": {n}}}"#);
        let r = post_once(g.addr(), "/pay", sent.as_bytes()).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.body, sent.as_bytes());
        assert_eq!(r.header("x-served-by"), Some(app.as_str()));
    }
    assert!(
        decoy.received().is_empty(),
        "the gateway connected to a denied address"
    );
    let skipped = r#"gateway_upstreams_skipped_total{reason="denied"}"#;
    assert!(
        metric(&admin, skipped).await >= 1.0,
        "the denial is counted"
    );
    // Counted once its answer is written: the last may reach us first.
    testkit::wait_until("all 30 are counted", Duration::from_secs(5), || async {
        metric(&admin, r#"gateway_requests_total{code="200"}"#).await == 30.0
    })
    .await;
    let m = member(&admin, &denied).await;
    assert_eq!(m["cooling_down"], true, "{m}");
    g.shutdown().await;
    for a in apps {
        a.shutdown().await;
    }
    d.shutdown().await;
}

#[async_std::test]
async fn a_ring_of_denied_members_only_is_a_gateway_error_never_a_403() {
    let d = lenient_discovery().await;
    let decoy = RawInstance::start(Script::Echo).await;
    let denied = register_at_unspecified(&d.url(), decoy.port()).await;
    let g = gateway::spawn(gateway_config(&d.url())).await.unwrap();
    let admin = g.admin_url();
    wait_ring(
        &admin,
        std::slice::from_ref(&denied),
        Duration::from_secs(5),
    )
    .await;
    for _ in 0..3 {
        let r = post_once(g.addr(), "/pay", b"{}").await;
        assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert!(
            !body.contains("0.0.0.0"),
            "no address reaches the client: {body}"
        );
    }
    assert!(decoy.received().is_empty());
    let skipped = r#"gateway_upstreams_skipped_total{reason="denied"}"#;
    assert_eq!(metric(&admin, skipped).await, 3.0);
    g.shutdown().await;
    d.shutdown().await;
}
