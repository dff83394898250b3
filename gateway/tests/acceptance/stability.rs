//! Discovery dies and comes back empty; the gateway
//! serves from its last ring throughout and follows the refilled registry.

use crate::common::load;
use std::time::{Duration, Instant};
use testkit::system::{apps, gateway_config, ring, status, wait_ring};

#[async_std::test]
async fn a_discovery_restart_with_an_empty_registry_fails_no_request() {
    let d = testkit::discovery().await;
    let addr = d.addr();
    let url = d.url();
    let running = apps(&url, 3).await;
    let g = gateway::spawn(gateway_config(&url)).await.unwrap();
    let admin = g.admin_url();
    let members: Vec<String> = running.iter().map(|a| a.served_by().to_string()).collect();
    wait_ring(&admin, &members, Duration::from_secs(5)).await;

    // Traffic the whole time, over all that follows.
    let traffic =
        async_std::task::spawn(load(g.addr(), 4, Instant::now() + Duration::from_secs(8)));

    d.shutdown().await;
    testkit::wait_until(
        "the gateway sees the watch drop",
        Duration::from_secs(3),
        || async { status(&admin).await["namespaces"][0]["watch"]["state"] != "connected" },
    )
    .await;
    let before = testkit::system::metric(&admin, "gateway_requests_total{code=\"200\"}").await;
    testkit::wait_until(
        "1,000 requests served from the cached ring",
        Duration::from_secs(5),
        || async {
            testkit::system::metric(&admin, "gateway_requests_total{code=\"200\"}").await - before
                >= 1000.0
        },
    )
    .await;
    let mut cached = ring(&admin, "service A").await;
    cached.sort();
    let mut want = members.clone();
    want.sort();
    assert_eq!(cached, want, "the ring survived discovery's absence");

    // Back, on the same address, with nothing registered.
    let config = shared::config::DiscoveryConfig {
        listen: addr.to_string(),
        ..testkit::discovery_config()
    };
    let d = discovery::spawn(config).await.unwrap();
    testkit::wait_until("the watch reconnects", Duration::from_secs(8), || async {
        let s = status(&admin).await;
        s["namespaces"][0]["watch"]["state"] == "connected"
            && s["namespaces"][0]["watch"]["reconnects"].as_u64() >= Some(1)
    })
    .await;
    wait_ring(&admin, &members, Duration::from_secs(5)).await;
    let s = status(&admin).await;
    assert!(s["namespaces"][0]["watch"]["snapshot_age_seconds"]
        .as_f64()
        .is_some());

    // A newcomer gets traffic within a second of becoming available.
    let newcomer = app::spawn(testkit::system::app_config(&url)).await.unwrap();
    let port = newcomer.addr().port();
    testkit::wait_until(
        "discovery marks the newcomer available",
        Duration::from_secs(5),
        || async {
            testkit::client::status_of(&url, "service A", port)
                .await
                .as_deref()
                == Some("available")
        },
    )
    .await;
    let available = Instant::now();
    testkit::wait_until(
        "the newcomer serves traffic",
        Duration::from_secs(1),
        || async {
            testkit::system::metric(
                &admin,
                &format!(
                    "gateway_pool_idle_connections{{upstream=\"{}\"}}",
                    newcomer.served_by()
                ),
            )
            .await
                > 0.0
        },
    )
    .await;
    assert!(available.elapsed() <= Duration::from_secs(1));

    let tally = traffic.await;
    assert!(
        tally.failures.is_empty(),
        "{} failed: {:?}",
        tally.failures.len(),
        &tally.failures[..tally.failures.len().min(5)]
    );
    assert!(
        tally.served_by.contains_key(newcomer.served_by()),
        "{:?}",
        tally.served_by
    );
    g.shutdown().await;
    newcomer.shutdown().await;
    for a in running {
        a.shutdown().await;
    }
    d.shutdown().await;
}
