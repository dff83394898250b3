//! Acceptance 2 and 5: an app registers as soon as discovery comes up, is
//! relearned by a restarted discovery within one interval, registers the
//! namespace and health check path it was given, and instances differ by host
//! and by port.

use crate::support::{app_config, instance, instances, send, wait_for_status, Squatter, INTERVAL};
use std::time::{Duration, Instant};
use testkit::wait_until;

/// Scheduling and polling slack on a shared 2-core machine.
const SLACK: Duration = Duration::from_millis(700);

#[async_std::test]
async fn an_app_started_before_discovery_registers_as_soon_as_it_comes_up() {
    let listen = format!("127.0.0.1:{}", crate::support::free_port());
    let squatter = Squatter::start(&listen).await;
    let mut config = app_config(&format!("http://{listen}"));
    // Far longer than the test: only the retry loop can register it in time.
    config.register_interval = Duration::from_secs(60);
    let backoff_max = config.register_backoff_max;
    let app = app::spawn(config).await.unwrap();
    squatter.wait_for_tries(3, Duration::from_secs(5)).await;
    squatter.stop().await;

    let d = discovery::spawn(shared::config::DiscoveryConfig {
        listen,
        ..testkit::discovery_config()
    })
    .await
    .unwrap();
    let up = Instant::now();
    let base = d.url();
    wait_until("discovery lists the app", backoff_max + SLACK, || async {
        instances(&base, "service A").await.len() == 1
    })
    .await;
    let took = up.elapsed();
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
    let listed = instance(&base, "service A", "127.0.0.1", port)
        .await
        .unwrap();
    assert_eq!(listed["health_check_path"], "/health_check");
    assert!(
        took <= backoff_max + SLACK,
        "registered {took:?} after discovery came up"
    );
    app.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn a_restarted_discovery_relearns_the_app_within_one_interval() {
    let config = testkit::discovery_config();
    let d = discovery::spawn(config.clone()).await.unwrap();
    let base = d.url();
    let listen = d.addr().to_string();
    let mut app_config = app_config(&base);
    // The default cap (5 s): the retry wait must still stay within one interval.
    app_config.register_backoff_max = shared::config::AppConfig::default().register_backoff_max;
    let app = app::spawn(app_config).await.unwrap();
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

    // Away long enough that renewals fail and the app is backing off.
    d.shutdown().await;
    let squatter = Squatter::start(&listen).await;
    squatter.wait_for_tries(6, INTERVAL * 10).await;
    squatter.stop().await;

    let d = discovery::spawn(shared::config::DiscoveryConfig { listen, ..config })
        .await
        .unwrap();
    let up = Instant::now();
    wait_until(
        "the restarted discovery lists the app again",
        INTERVAL + SLACK,
        || async { instances(&base, "service A").await.len() == 1 },
    )
    .await;
    let took = up.elapsed();
    wait_for_status(
        &base,
        "service A",
        "127.0.0.1",
        port,
        "available",
        Duration::from_secs(3),
    )
    .await;
    // Later renewals keep the one instance and its id.
    let id = instance(&base, "service A", "127.0.0.1", port)
        .await
        .unwrap()["id"]
        .clone();
    wait_until("a renewal reaches discovery", INTERVAL * 3, || async {
        let (_, m) = testkit::client::get(&format!("{base}/metrics")).await;
        m.as_str()
            .unwrap_or_default()
            .contains(r#"discovery_registrations_total{outcome="renewed"}"#)
    })
    .await;
    let listed = instances(&base, "service A").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], id);
    assert!(
        took <= INTERVAL + SLACK,
        "relearned {took:?} after the restart"
    );
    app.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn the_namespace_and_health_check_path_given_are_registered_and_served() {
    let d = testkit::discovery().await;
    let base = d.url();
    let mut config = app_config(&base);
    config.namespace = "billing v2".into();
    config.health_check_path = "/healthz".into();
    let app = app::spawn(config).await.unwrap();
    let port = app.addr().port();
    // Available means discovery's GET /healthz answered 200.
    wait_for_status(
        &base,
        "billing v2",
        "127.0.0.1",
        port,
        "available",
        Duration::from_secs(3),
    )
    .await;
    let listed = instance(&base, "billing v2", "127.0.0.1", port)
        .await
        .unwrap();
    assert_eq!(listed["health_check_path"], "/healthz");
    assert!(instances(&base, "service A").await.is_empty());
    let res = send(app.addr(), "GET", "/healthz", b"").await;
    assert_eq!(res.status, 200);
    app.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn instances_differ_by_host_and_by_port() {
    let d = testkit::discovery().await;
    let base = d.url();
    let first = app::spawn(app_config(&base)).await.unwrap();
    let other_port = app::spawn(app_config(&base)).await.unwrap();
    // The same port on another loopback address: another host.
    let other_host = app::spawn(shared::config::AppConfig {
        bind: "127.0.0.2".into(),
        advertise_host: "127.0.0.2".into(),
        port: first.addr().port(),
        ..app_config(&base)
    })
    .await
    .unwrap();
    assert_eq!(other_host.addr().port(), first.addr().port());
    assert_ne!(other_port.addr().port(), first.addr().port());

    let expected = [
        ("127.0.0.1", first.addr().port()),
        ("127.0.0.1", other_port.addr().port()),
        ("127.0.0.2", first.addr().port()),
    ];
    for (host, port) in expected {
        wait_for_status(
            &base,
            "service A",
            host,
            port,
            "available",
            Duration::from_secs(3),
        )
        .await;
    }
    let listed = instances(&base, "service A").await;
    assert_eq!(listed.len(), 3, "{listed:?}");
    let ids: std::collections::HashSet<_> = listed.iter().map(|i| i["id"].clone()).collect();
    assert_eq!(ids.len(), 3, "three separate instances: {listed:?}");

    let mut served_by = std::collections::HashSet::new();
    for app in [&first, &other_port, &other_host] {
        let res = send(app.addr(), "POST", "/", b"{}").await;
        assert_eq!(res.status, 200);
        served_by.insert(res.header("x-served-by").unwrap().to_string());
    }
    let want: std::collections::HashSet<_> =
        expected.iter().map(|(h, p)| format!("{h}:{p}")).collect();
    assert_eq!(served_by, want);
    for app in [first, other_port, other_host] {
        app.shutdown().await;
    }
    assert!(
        instances(&base, "service A").await.is_empty(),
        "each shutdown deregistered its own instance"
    );
    d.shutdown().await;
}
