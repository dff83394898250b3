//! Discovery's half: `/metrics` parses as Prometheus
//! text, served with the content type a browser shows, and carries the series
//! the README's alert rules use.

use prometheus_parse::{LineInfo, Scrape, Value as Sample};
use std::time::Duration;
use testkit::client::{register, status_of, Watch};
use testkit::peer::Peer;
use testkit::system::exchange_raw;

fn sample<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| &s.value)
}

/// A content type as its lower-cased parts, parameters in order: spacing and order do not matter.
fn media_type(value: &str) -> Vec<String> {
    let mut parts: Vec<String> = value
        .split(';')
        .map(|p| p.trim().to_ascii_lowercase())
        .collect();
    parts[1..].sort();
    parts
}

#[async_std::test]
async fn metrics_parse_as_prometheus_text() {
    let d = testkit::discovery().await;
    let base = d.url();
    let up = Peer::start().await;
    let down = Peer::start().await;
    down.set_status(500);
    register(&base, "m", up.port()).await;
    register(&base, "m", down.port()).await;
    testkit::wait_until("both are checked", Duration::from_secs(5), || async {
        status_of(&base, "m", up.port()).await.as_deref() == Some("available")
            && status_of(&base, "m", down.port()).await.as_deref() == Some("unavailable")
    })
    .await;
    let _watch = Watch::open(&base, "m").await;

    let res = exchange_raw(
        d.addr(),
        b"GET /metrics HTTP/1.1\r\nHost: discovery\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 200);
    let content_type = res.header("content-type").unwrap_or_default();
    assert_eq!(
        media_type(content_type),
        media_type("text/plain; version=0.0.4; charset=utf-8"),
        "the gateway's type, which a browser shows: {content_type}"
    );
    let text = String::from_utf8(res.body).unwrap();
    assert!(!text.contains("# EOF"), "OpenMetrics-only lines: {text}");
    // The parser skips what it cannot read: every line must be read as something.
    for line in text.lines() {
        assert!(
            !matches!(LineInfo::parse(line), LineInfo::Ignored),
            "not Prometheus text: {line:?}"
        );
    }
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();

    let build = scrape
        .samples
        .iter()
        .find(|s| s.metric == "discovery_build_info")
        .unwrap_or_else(|| panic!("discovery_build_info in {text}"));
    assert_eq!(build.value, Sample::Gauge(1.0));
    assert_eq!(build.labels.get("version"), Some(env!("CARGO_PKG_VERSION")));
    let revision = build.labels.get("revision").unwrap();
    assert!(
        revision == "unknown"
            || (revision.len() >= 7 && revision.chars().all(|c| c.is_ascii_hexdigit())),
        "revision {revision}"
    );

    for (status, n) in [("available", 1.0), ("unavailable", 1.0), ("pending", 0.0)] {
        assert_eq!(
            sample(
                &scrape,
                "discovery_instances",
                &[("namespace", "m"), ("status", status)]
            ),
            Some(&Sample::Gauge(n)),
            "instances {status} in {text}"
        );
    }
    match sample(
        &scrape,
        "discovery_health_checks_total",
        &[("outcome", "bad_status")],
    ) {
        Some(Sample::Counter(n)) => assert!(*n >= 1.0, "{text}"),
        other => panic!("failed checks as a counter, got {other:?} in {text}"),
    }
    assert_eq!(
        sample(
            &scrape,
            "discovery_health_checks_total",
            &[("outcome", "not_made")]
        ),
        Some(&Sample::Counter(0.0)),
        "checks not made: a series at zero from the start"
    );
    assert_eq!(
        sample(&scrape, "discovery_watchers", &[]),
        Some(&Sample::Gauge(1.0))
    );
    match sample(&scrape, "discovery_health_check_oldest_age_seconds", &[]) {
        Some(Sample::Gauge(age)) => assert!(*age < 5.0, "checked recently: {age}"),
        other => panic!("oldest check age, got {other:?}"),
    }
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
    ] {
        assert!(
            scrape.samples.iter().any(|s| s.metric == name),
            "{name} in {text}"
        );
    }
    d.shutdown().await;
}

#[async_std::test]
async fn the_store_says_what_it_is_and_that_it_is_reachable() {
    let d = testkit::discovery().await;
    let (status, store) = testkit::client::get(&format!("{}/api/store", d.url())).await;
    assert_eq!(status, 200);
    assert_eq!(store["backend"], "memory", "{store}");
    assert_eq!(store["reachable"], true, "{store}");
    d.shutdown().await;
}
