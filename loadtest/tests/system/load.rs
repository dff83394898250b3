//! Closed and open loop through the gateway, and what counts as a failure.

use crate::common::{exclusive, members, System};
use loadtest::Options;
use std::time::Duration;
use testkit::raw::{RawInstance, Script};
use testkit::system::{gateway_config, wait_ring};

#[async_std::test]
async fn a_closed_loop_through_the_gateway_is_clean_and_evenly_spread() {
    let _one = exclusive().await;
    let system = System::start(|_| {}).await;
    let summary = loadtest::run(system.options(Duration::from_secs(2)))
        .await
        .unwrap();
    println!("{summary}");
    assert!(summary.passed, "{summary}");
    assert_eq!(summary.exit_code(), 0);
    assert_eq!(summary.failed, 0, "{summary}");
    assert_eq!(summary.mismatches, 0);
    assert_eq!(summary.transport_errors.total, 0);
    assert!(summary.ok > 300, "only {} OK answers in 2 s", summary.ok);
    assert_eq!(summary.ok, summary.requests);
    assert_eq!(summary.statuses.get(&200), Some(&summary.ok));
    // Every app, and nothing else, in near-equal shares (round robin).
    let mut seen: Vec<String> = summary
        .spread
        .instances
        .iter()
        .map(|s| s.instance.clone())
        .collect();
    let mut want = members(&system.apps);
    seen.sort();
    want.sort();
    assert_eq!(seen, want);
    assert!(
        summary.spread.max_deviation_pct < 5.0,
        "uneven spread: {summary}"
    );
    let l = &summary.latency_us;
    assert!(0 < l.p50 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max);
    // The JSON file says the same.
    let path =
        testkit::tempdir::TempFile::new(format!("loadtest-summary-{}.json", std::process::id()));
    summary.write_json(&path).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    drop(path);
    assert_eq!(json["ok"], summary.ok);
    assert_eq!(json["passed"], true);
    assert_eq!(json["statuses"]["200"], summary.ok);
    assert_eq!(json["spread"]["instances"].as_array().unwrap().len(), 3);
    system.stop().await;
}

#[async_std::test]
async fn an_open_loop_run_holds_its_rate() {
    let _one = exclusive().await;
    let system = System::start(|_| {}).await;
    let options = Options {
        rate: Some(400.0),
        connections: 8,
        ..system.options(Duration::from_secs(2))
    };
    let summary = loadtest::run(options).await.unwrap();
    println!("{summary}");
    assert!(summary.passed, "{summary}");
    assert_eq!(summary.mode, "open");
    // 400/s for 2 s: 800 due, all sent, all answered.
    assert_eq!(summary.not_sent, Some(0), "{summary}");
    assert!(
        (780..=800).contains(&summary.ok),
        "expected about 800 requests, got {}",
        summary.ok
    );
    let rate = summary.throughput_rps;
    assert!((340.0..=410.0).contains(&rate), "rate {rate}: {summary}");
    system.stop().await;
}

#[async_std::test]
async fn a_wrong_echo_is_a_mismatch_and_fails_the_run() {
    let _one = exclusive().await;
    let discovery = testkit::discovery().await;
    // Answers 200 with a fixed body: the status is right, the echo is not.
    let raw = RawInstance::start(Script::Status(200)).await;
    testkit::client::register(&discovery.url(), "service A", raw.port()).await;
    let gateway = gateway::spawn(gateway_config(&discovery.url()))
        .await
        .unwrap();
    let member = format!("127.0.0.1:{}", raw.port());
    wait_ring(&gateway.admin_url(), &[member], Duration::from_secs(5)).await;
    let options = Options {
        url: gateway.url(),
        duration: Duration::from_millis(700),
        connections: 4,
        ..Options::default()
    };
    let summary = loadtest::run(options.clone()).await.unwrap();
    assert!(summary.answered > 10, "{summary}");
    assert_eq!(summary.statuses.get(&200), Some(&summary.answered));
    assert_eq!(summary.mismatches, summary.answered, "{summary}");
    assert_eq!(summary.ok, 0);
    assert_eq!(summary.transport_errors.total, 0);
    assert!(!summary.passed);
    assert_eq!(summary.exit_code(), 1);
    assert!(summary.failure_samples[0]
        .what
        .contains("200 with a different body"));
    assert!(summary.to_string().contains("FAIL"), "{summary}");
    // Without verification the same answers pass (the load generator's benchmark mode).
    let unverified = loadtest::run(Options {
        verify: false,
        ..options
    })
    .await
    .unwrap();
    assert!(unverified.passed, "{unverified}");
    assert_eq!(unverified.mismatches, 0);
    assert!(unverified.to_string().contains("verification OFF"));
    gateway.shutdown().await;
    discovery.shutdown().await;
}

#[async_std::test]
async fn unanswered_requests_are_transport_errors() {
    let _one = exclusive().await;
    // Reads each request, then closes without a byte of answer.
    let closing = RawInstance::start(Script::Close).await;
    let options = Options {
        url: format!("http://127.0.0.1:{}", closing.port()),
        duration: Duration::from_millis(300),
        connections: 2,
        verify: false,
        drain_timeout: Duration::from_millis(300),
        ..Options::default()
    };
    let summary = loadtest::run(options.clone()).await.unwrap();
    assert_eq!(summary.answered, 0);
    assert!(summary.transport_errors.by_kind.closed > 0, "{summary}");
    assert_eq!(summary.transport_errors.total, summary.requests);
    assert!(!summary.passed);
    // Never answers: the requests in flight at the end time out after the drain time.
    let hanging = RawInstance::start(Script::Hang).await;
    let summary = loadtest::run(Options {
        url: format!("http://127.0.0.1:{}", hanging.port()),
        ..options.clone()
    })
    .await
    .unwrap();
    assert_eq!(summary.transport_errors.by_kind.timeout, 2, "{summary}");
    assert_eq!(summary.requests, 2);
    assert!(summary.elapsed_s < 1.5, "the drain time bounds the run");
    assert!(!summary.passed);
    // Nothing listening: connect errors.
    let port = closing.port();
    closing.stop();
    drop(closing);
    let summary = loadtest::run(Options {
        url: format!("http://127.0.0.1:{port}"),
        ..options
    })
    .await
    .unwrap();
    assert!(summary.transport_errors.by_kind.connect > 0, "{summary}");
    assert!(!summary.passed);
}
