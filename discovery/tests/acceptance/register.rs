//! Acceptance 1: the seed's payloads register, idempotently, and lookups answer the seed's fields.

use std::time::Duration;
use testkit::client::{get, post, register};
use testkit::peer::Peer;
use testkit::wait_until;

#[async_std::test]
async fn the_seed_payload_registers_at_both_paths_and_renewal_keeps_the_id() {
    let d = testkit::discovery().await;
    let base = d.url();
    let seed = r#"{"namespace": "service A", "port": "8080"}"#;

    let (status, first) = post(&format!("{base}/api/register/"), seed).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["namespace"], "service A");
    assert_eq!(first["port"], "8080");
    assert_eq!(
        first["host"], "127.0.0.1",
        "host defaults to the caller's IP"
    );
    assert_eq!(first["status"], "pending");

    let (status, again) = post(&format!("{base}/api/register"), seed).await;
    assert_eq!(status, 200, "re-registration is a 200: {again}");
    assert_eq!(again["id"], first["id"], "same host:port keeps its id");

    let (status, numeric) = post(
        &format!("{base}/api/register"),
        r#"{"namespace": "service A", "port": 8081}"#,
    )
    .await;
    assert_eq!(status, 201, "{numeric}");
    assert_eq!(numeric["port"], "8081", "ports are answered as strings");
    assert_ne!(numeric["id"], first["id"]);

    let (status, by_ip) = post(
        &format!("{base}/api/register"),
        r#"{"namespace": "service A", "port": "8082", "ip": "10.1.2.3"}"#,
    )
    .await;
    assert_eq!(status, 201, "{by_ip}");
    assert_eq!(by_ip["host"], "10.1.2.3", "ip is the alias of host");

    let (status, by_name) = post(
        &format!("{base}/api/register"),
        r#"{"namespace": "service A", "port": "8080", "host": "localhost"}"#,
    )
    .await;
    assert_eq!(
        status, 201,
        "localhost:8080 differs from 127.0.0.1:8080: {by_name}"
    );
    assert_eq!(by_name["host"], "localhost");

    let (_, services) = get(&format!("{base}/api/services")).await;
    assert_eq!(services["service A"].as_array().unwrap().len(), 4);
    d.shutdown().await;
}

#[async_std::test]
async fn lookup_answers_carry_the_seed_fields() {
    let d = testkit::discovery().await;
    let base = d.url();
    let peer = Peer::start().await;
    register(&base, "service A", peer.port()).await;
    wait_until("the peer is available", Duration::from_secs(5), || async {
        testkit::client::status_of(&base, "service A", peer.port())
            .await
            .as_deref()
            == Some("available")
    })
    .await;

    let (status, found) = post(
        &format!("{base}/api/lookup"),
        r#"{"namespace": "service A"}"#,
    )
    .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["ip"], "127.0.0.1");
    assert_eq!(found["host"], "127.0.0.1");
    assert_eq!(found["port"], peer.port().to_string());
    assert_eq!(found["service_available_count"], 1);
    assert_eq!(found["namespace"], "service A");
    assert!(found["id"].is_string());

    let (status, by_get) = get(&format!("{base}/api/lookup?namespace=service%20A")).await;
    assert_eq!(status, 200, "{by_get}");
    assert_eq!(by_get["port"], found["port"]);

    let (status, gone) = post(
        &format!("{base}/api/deregister"),
        &format!(r#"{{"namespace": "service A", "port": "{}"}}"#, peer.port()),
    )
    .await;
    assert_eq!(status, 200, "{gone}");
    let (status, _) = post(
        &format!("{base}/api/unregister"),
        &format!(r#"{{"namespace": "service A", "port": "{}"}}"#, peer.port()),
    )
    .await;
    assert_eq!(status, 404, "deregistering twice: unknown the second time");
    d.shutdown().await;
}
