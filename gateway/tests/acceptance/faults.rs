//! Acceptance 5: SIGKILL one of three apps under load: no client request fails.

use crate::common::load;
use std::time::{Duration, Instant};
use testkit::procs::Proc;

pub async fn start_app(discovery_url: &str) -> (Proc, String) {
    let p = Proc::start(
        "app",
        &[
            "--port",
            "0",
            "--discovery-url",
            discovery_url,
            "--register-interval",
            "300ms",
            "--chaos",
        ],
    );
    let addr = p.listening("app").await.to_string();
    (p, addr)
}

#[async_std::test]
async fn killing_an_app_under_load_fails_no_request() {
    let d = testkit::discovery().await;
    let mut apps = Vec::new();
    for _ in 0..3 {
        apps.push(start_app(&d.url()).await);
    }
    let g = gateway::spawn(testkit::system::gateway_config(&d.url()))
        .await
        .unwrap();
    let members: Vec<String> = apps.iter().map(|(_, a)| a.clone()).collect();
    testkit::system::wait_ring(&g.admin_url(), &members, Duration::from_secs(10)).await;

    let until = Instant::now() + Duration::from_secs(4);
    let traffic = async_std::task::spawn(load(g.addr(), 4, until));
    async_std::task::sleep(Duration::from_secs(1)).await;
    let (mut victim, victim_addr) = apps.remove(1);
    victim.kill();
    let killed = Instant::now();
    let tally = traffic.await;
    assert!(
        tally.failures.is_empty(),
        "{} failed: {:?}",
        tally.failures.len(),
        &tally.failures[..tally.failures.len().min(5)]
    );
    assert!(tally.ok > 100, "only {} requests went through", tally.ok);
    for (_, addr) in &apps {
        assert!(tally.served_by.get(addr).copied().unwrap_or(0) > 0);
    }
    // Refused connections moved on through the ring, without asking discovery.
    let admin = g.admin_url();
    for outcome in ["ok", "none_available", "error", "timeout"] {
        let sample = format!("gateway_discovery_lookups_total{{outcome=\"{outcome}\"}}");
        assert_eq!(
            testkit::system::metric(&admin, &sample).await,
            0.0,
            "{sample}"
        );
    }
    // Discovery drops it from the ring once its health check fails.
    testkit::system::wait_ring(
        &g.admin_url(),
        &members
            .iter()
            .filter(|m| **m != victim_addr)
            .cloned()
            .collect::<Vec<_>>(),
        Duration::from_secs(3),
    )
    .await;
    assert!(killed.elapsed() < Duration::from_secs(10));
    g.shutdown().await;
    d.shutdown().await;
}
