//! Acceptance 3: slow, failing and dead instances become unavailable within one
//! interval plus the threshold, are never looked up, and come back when checks pass;
//! a hanging instance does not delay the others.

use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use testkit::client::{get, post, register, status_of};
use testkit::peer::Peer;
use testkit::wait_until;

/// Polling and scheduling slack on a shared 2-core machine.
const SLACK: Duration = Duration::from_millis(300);

async fn statuses(base: &str, ns: &str) -> HashMap<String, String> {
    let (_, services): (u16, Value) = get(&format!("{base}/api/services")).await;
    services[ns]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|i| {
                    (
                        i["port"].as_str().unwrap().to_string(),
                        i["status"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[async_std::test]
async fn slow_failing_and_dead_instances_are_marked_within_one_interval_plus_threshold() {
    let config = testkit::discovery_config();
    let bound = config.health_check_time_interval + config.timeout_threshold + SLACK;
    let d = discovery::spawn(config.clone()).await.unwrap();
    let base = d.url();

    let healthy = Peer::start().await;
    let slow = Peer::start().await;
    let failing = Peer::start().await;
    let dead = Peer::start().await;
    let hanging = Peer::start().await;
    for p in [&healthy, &slow, &failing, &dead, &hanging] {
        register(&base, "h", p.port()).await;
    }
    wait_until("all five are available", Duration::from_secs(5), || async {
        let s = statuses(&base, "h").await;
        s.len() == 5 && s.values().all(|v| v == "available")
    })
    .await;

    let dead_port = dead.port().to_string();
    hanging.set_delay(Duration::from_secs(30));
    slow.set_delay(config.timeout_threshold * 3);
    failing.set_status(500);
    dead.stop().await;
    let changed = Instant::now();

    let mut marked: HashMap<String, Duration> = HashMap::new();
    let faulty = [
        slow.port().to_string(),
        failing.port().to_string(),
        dead_port.clone(),
        hanging.port().to_string(),
    ];
    while marked.len() < faulty.len() && changed.elapsed() < Duration::from_secs(5) {
        for (port, status) in statuses(&base, "h").await {
            if status == "unavailable" && !marked.contains_key(&port) {
                marked.insert(port, changed.elapsed());
            }
        }
        async_std::task::sleep(Duration::from_millis(5)).await;
    }
    for port in &faulty {
        let took = marked.get(port).copied();
        assert!(
            took.is_some_and(|t| t <= bound),
            "instance on port {port} marked after {took:?}, bound {bound:?} ({marked:?})"
        );
    }
    assert!(
        !marked.contains_key(&healthy.port().to_string()),
        "the healthy one stays available"
    );

    for _ in 0..20 {
        let (status, found) = post(&format!("{base}/api/lookup"), r#"{"namespace": "h"}"#).await;
        assert_eq!(status, 200);
        assert_eq!(
            found["port"],
            healthy.port().to_string(),
            "only the healthy one is looked up"
        );
        assert_eq!(found["service_available_count"], 1);
    }

    slow.set_delay(Duration::ZERO);
    failing.set_status(200);
    let healed = Instant::now();
    for p in [&slow, &failing] {
        wait_until(
            "recovered instances are available again",
            bound * 2,
            || async { status_of(&base, "h", p.port()).await.as_deref() == Some("available") },
        )
        .await;
    }
    assert!(
        healed.elapsed() <= bound,
        "recovery took {:?}",
        healed.elapsed()
    );

    let (_, services) = get(&format!("{base}/api/services")).await;
    let failing_info = services["h"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["port"] == dead_port)
        .unwrap()
        .clone();
    assert!(failing_info["consecutive_failures"].as_u64().unwrap() >= 1);
    assert!(failing_info["last_check_latency_ms"].is_number());
    assert!(failing_info["last_check_error"].is_string());
    d.shutdown().await;
}

#[async_std::test]
async fn hanging_instances_do_not_delay_checks_of_the_others() {
    let config = testkit::discovery_config();
    let interval = config.health_check_time_interval;
    let d = discovery::spawn(config.clone()).await.unwrap();
    let base = d.url();
    // Five hangs cost 5 x timeout_threshold per round if checks ran one after another:
    // more than an interval, so the healthy ones would fall behind.
    let mut hanging = Vec::new();
    for _ in 0..5 {
        let p = Peer::start().await;
        p.set_delay(Duration::from_secs(30));
        register(&base, "hang", p.port()).await;
        hanging.push(p);
    }
    let mut others = Vec::new();
    for _ in 0..3 {
        let p = Peer::start().await;
        register(&base, "hang", p.port()).await;
        others.push(p);
    }
    let before: Vec<u64> = others.iter().map(Peer::checks).collect();
    wait_until(
        "every healthy peer got 4 more checks",
        interval * 5 + SLACK,
        || async { others.iter().zip(&before).all(|(p, b)| p.checks() - b >= 4) },
    )
    .await;
    for p in &hanging {
        assert_eq!(
            status_of(&base, "hang", p.port()).await.as_deref(),
            Some("unavailable")
        );
    }
    for p in &others {
        assert_eq!(
            status_of(&base, "hang", p.port()).await.as_deref(),
            Some("available")
        );
    }
    d.shutdown().await;
}
