//! The seed's discovery contract. A stand-in serving
//! only `/api/register`, `/api/unregister` and `/api/lookup` the way the seed
//! describes (no watch, no `/api/deregister`) is used by our apps and our
//! gateway end to end.

use shared::http1::client::{post, Connection};
use std::collections::HashMap;
use std::time::Duration;
use testkit::seed::Seed;
use testkit::system::{app_config, gateway_config, status};

/// The source a gateway's `/status` names for "service A".
async fn source_of(admin: &str) -> String {
    let s = status(admin).await;
    s["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["namespace"] == "service A")
        .and_then(|r| r["source"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// POSTs `n` bodies on one keep-alive connection; who served each (all must echo).
async fn served_by(addr: std::net::SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut conn = Connection::connect(addr).await.unwrap();
    let mut seen = HashMap::new();
    let mut req = Vec::new();
    for i in 0..n {
        let sent = format!(r#"{{"seed": {i}}}"#);
        post(&mut req, "gw", "/pay", sent.as_bytes(), "");
        let res = conn.exchange(&req).await.unwrap();
        assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
        assert_eq!(res.body, sent.as_bytes());
        let by = res.header("x-served-by").unwrap().to_string();
        *seen.entry(by).or_insert(0) += 1;
    }
    seen
}

#[async_std::test]
async fn apps_and_gateway_work_with_a_seed_style_discovery() {
    let seed = Seed::start().await;
    let mut apps = Vec::new();
    for i in 0..3 {
        let mut config = app_config(&seed.url());
        if i == 0 {
            // Knows its host: sent as the seed's `ip`.
            config.advertise_host = "127.0.0.1".into();
        }
        apps.push(app::spawn(config).await.unwrap());
    }
    let mut want: Vec<String> = apps.iter().map(|a| a.served_by().to_string()).collect();
    want.sort();
    testkit::wait_until(
        "every app registered with the seed",
        Duration::from_secs(5),
        || async {
            let mut got = seed.instances("service A");
            got.sort();
            got == want
        },
    )
    .await;

    let g = gateway::spawn(gateway_config(&seed.url())).await.unwrap();
    let admin = g.admin_url();
    testkit::wait_until(
        "the gateway falls back to lookups",
        Duration::from_secs(5),
        || async { source_of(&admin).await == "lookup" },
    )
    .await;
    let s = status(&admin).await;
    assert_eq!(s["namespaces"][0]["discovery"]["source"], "lookup", "{s}");
    assert_eq!(
        s["namespaces"][0]["discovery"]["lookup_url"],
        seed.url(),
        "{s}"
    );

    // One lookup per request, round robin at the seed: each app gets a third.
    let (_, _, lookups_before) = seed.calls();
    let seen = served_by(g.addr(), 9).await;
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|n| *n == 3), "{seen:?}");
    let (_, _, lookups_after) = seed.calls();
    assert!(
        lookups_after - lookups_before >= 9,
        "{lookups_before} -> {lookups_after}"
    );

    // No health checks at the seed: an instance that died stays listed. Its
    // refused connections are retried on the instance the next lookup names.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let body = format!(r#"{{"namespace": "service A", "port": "{dead_port}"}}"#);
    let (code, _) = testkit::client::post(&format!("{}/api/register", seed.url()), &body).await;
    assert_eq!(code, 200);
    let seen = served_by(g.addr(), 8).await;
    assert_eq!(seen.values().sum::<usize>(), 8, "{seen:?}");
    let (code, _) = testkit::client::post(&format!("{}/api/unregister", seed.url()), &body).await;
    assert_eq!(code, 200);

    // An app's shutdown unregisters it through the seed's /api/unregister.
    let leaving = apps.remove(0);
    let gone = leaving.served_by().to_string();
    leaving.shutdown().await;
    let (_, unregisters, _) = seed.calls();
    assert_eq!(unregisters, 2, "the dead one by hand, then the app");
    assert!(!seed.instances("service A").contains(&gone));
    let seen = served_by(g.addr(), 6).await;
    assert!(!seen.contains_key(&gone), "{seen:?}");
    assert_eq!(seen.len(), 2, "{seen:?}");

    g.shutdown().await;
    for a in apps {
        a.shutdown().await;
    }
    seed.shutdown().await;
}

#[async_std::test]
async fn our_discovery_takes_the_seed_fields_from_the_app() {
    let d = testkit::discovery().await;
    let mut config = app_config(&d.url());
    config.advertise_host = "127.0.0.1".into();
    let a = app::spawn(config).await.unwrap();
    let port = a.addr().port();
    testkit::wait_until("registered by ip", Duration::from_secs(5), || async {
        testkit::client::status_of(&d.url(), "service A", port)
            .await
            .is_some()
    })
    .await;
    a.shutdown().await;
    assert_eq!(
        testkit::client::status_of(&d.url(), "service A", port).await,
        None,
        "deregistered on /api/deregister"
    );
    d.shutdown().await;
}
