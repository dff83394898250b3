//! Acceptance 2: exact round robin, exclude, 404 for an unknown namespace, 503 for none available.

use std::collections::HashMap;
use std::time::Duration;
use testkit::client::{get, post, register, status_of};
use testkit::peer::Peer;
use testkit::wait_until;

#[async_std::test]
async fn thirty_lookups_over_three_instances_give_each_ten_and_exclude_is_honoured() {
    let d = testkit::discovery().await;
    let base = d.url();
    let mut peers = Vec::new();
    for _ in 0..3 {
        let p = Peer::start().await;
        register(&base, "rr", p.port()).await;
        peers.push(p);
    }
    for p in &peers {
        wait_until(
            "all three are available",
            Duration::from_secs(5),
            || async { status_of(&base, "rr", p.port()).await.as_deref() == Some("available") },
        )
        .await;
    }

    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..30 {
        let (status, found) = post(&format!("{base}/api/lookup"), r#"{"namespace": "rr"}"#).await;
        assert_eq!(status, 200, "{found}");
        assert_eq!(found["service_available_count"], 3);
        *counts
            .entry(found["port"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for p in &peers {
        assert_eq!(counts.get(&p.port().to_string()), Some(&10), "{counts:?}");
    }

    let skip = format!("127.0.0.1:{}", peers[0].port());
    for _ in 0..12 {
        let body = format!(r#"{{"namespace": "rr", "exclude": ["{skip}"]}}"#);
        let (status, found) = post(&format!("{base}/api/lookup"), &body).await;
        assert_eq!(status, 200);
        assert_ne!(
            found["port"],
            peers[0].port().to_string(),
            "excluded instance returned"
        );
    }
    let all: Vec<String> = peers
        .iter()
        .map(|p| format!("127.0.0.1:{}", p.port()))
        .collect();
    let (status, none) = get(&format!(
        "{base}/api/lookup?namespace=rr&exclude={}",
        all.join(",")
    ))
    .await;
    assert_eq!(status, 503, "everything excluded: {none}");
    d.shutdown().await;
}

#[async_std::test]
async fn unknown_namespace_is_404_and_none_available_is_503() {
    let d = testkit::discovery().await;
    let base = d.url();
    let (status, body) = post(&format!("{base}/api/lookup"), r#"{"namespace": "nobody"}"#).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "unknown_namespace");

    // Registered, but nothing listens there: never available.
    let dead = {
        let p = Peer::start().await;
        let port = p.port();
        p.stop().await;
        port
    };
    register(&base, "empty", dead).await;
    let (status, body) = post(&format!("{base}/api/lookup"), r#"{"namespace": "empty"}"#).await;
    assert_eq!(status, 503, "pending is not routable: {body}");
    assert_eq!(body["error"]["code"], "no_available_instance");
    wait_until(
        "the dead instance is unavailable",
        Duration::from_secs(5),
        || async { status_of(&base, "empty", dead).await.as_deref() == Some("unavailable") },
    )
    .await;
    let (status, _) = post(&format!("{base}/api/lookup"), r#"{"namespace": "empty"}"#).await;
    assert_eq!(status, 503);
    d.shutdown().await;
}
