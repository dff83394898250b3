//! `/metrics` as an SRE's scraper reads it, and the per-instance figures of
//! `/status`.

use super::common::{load, raw_system, System};
use prometheus_parse::{Scrape, Value};
use std::time::{Duration, Instant};
use testkit::raw::Script;
use testkit::system::{exchange_raw, metrics_when};

/// GETs `path` on the admin port: the status, content type and body.
async fn admin_get(system: &System, path: &str) -> (u16, String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    let r = exchange_raw(system.gateway.admin_addr(), request.as_bytes()).await;
    let content_type = r.header("content-type").unwrap_or_default().to_string();
    (
        r.status,
        content_type,
        String::from_utf8_lossy(&r.body).into_owned(),
    )
}

fn scrape(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses as Prometheus text")
}

#[async_std::test]
async fn metrics_parse_and_per_upstream_series_are_present_after_traffic() {
    let system = System::start(3).await;
    let tally = load(
        system.gateway.addr(),
        4,
        Instant::now() + Duration::from_millis(600),
    )
    .await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    let counted = |t: &str| -> usize {
        t.lines()
            .filter(|l| l.starts_with("gateway_upstream_requests_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>() as usize
    };
    // The last answers are counted just after they reach the client.
    metrics_when(&system.admin(), "every answer counted", |t| {
        counted(t) >= tally.ok
    })
    .await;

    let (status, content_type, text) = admin_get(&system, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(
        !text.contains("# EOF"),
        "OpenMetrics' end marker is not text format"
    );
    let scrape = scrape(&text);
    let samples = |name: &str| -> Vec<&prometheus_parse::Sample> {
        scrape.samples.iter().filter(|s| s.metric == name).collect()
    };

    let mut answered = 0.0;
    for app in &system.apps {
        let upstream = app.served_by().to_string();
        let of_it = |s: &&prometheus_parse::Sample| {
            s.labels.get("upstream") == Some(upstream.as_str())
                && s.labels.get("namespace") == Some("service A")
        };
        let requests: Vec<_> = samples("gateway_upstream_requests_total")
            .into_iter()
            .filter(of_it)
            .collect();
        assert_eq!(
            requests.len(),
            1,
            "one code, 200, for {upstream}: {requests:?}"
        );
        assert_eq!(requests[0].labels.get("code"), Some("200"));
        let Value::Counter(n) = requests[0].value else {
            panic!("not a counter: {:?}", requests[0].value)
        };
        assert!(n > 0.0, "{upstream} served none");
        answered += n;
        let latency: Vec<_> = samples("gateway_upstream_request_duration_seconds")
            .into_iter()
            .filter(of_it)
            .collect();
        let Some(Value::Histogram(buckets)) = latency.first().map(|s| &s.value) else {
            panic!("no latency histogram for {upstream}: {latency:?}")
        };
        let all = buckets.last().expect("buckets").count;
        assert_eq!(all, n, "every try of {upstream} is in its histogram");
        let failovers: Vec<_> = samples("gateway_upstream_failovers_total")
            .into_iter()
            .filter(of_it)
            .collect();
        assert_eq!(failovers.len(), 4, "one series per cause: {failovers:?}");
    }
    assert_eq!(answered as usize, tally.ok, "every request counted once");

    let info = samples("gateway_build_info");
    assert_eq!(info.len(), 1);
    let revision = info[0].labels.get("revision").unwrap_or_default();
    assert!(
        revision == "unknown" || revision.chars().all(|c| c.is_ascii_hexdigit()),
        "{revision}"
    );
    assert_eq!(
        info[0].labels.get("version"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    for name in [
        "process_open_fds",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
    ] {
        let s = samples(name);
        assert!(
            matches!(s.first().map(|s| &s.value), Some(Value::Gauge(v)) if *v > 0.0),
            "{name}: {s:?}"
        );
    }
    assert!(!samples("process_cpu_seconds_total").is_empty());
    // The counters' own names in HELP/TYPE, as the text format has them.
    assert!(text.contains("# TYPE gateway_upstream_requests_total counter\n"));

    // /status: per-instance figures for the console.
    let (_, _, status) = admin_get(&system, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let members = status["namespaces"][0]["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    for m in members {
        assert!(m["requests"].as_u64().unwrap() > 0, "{m}");
        assert_eq!(m["errors"], 0, "{m}");
        let (p50, p99) = (m["p50_ms"].as_f64().unwrap(), m["p99_ms"].as_f64().unwrap());
        assert!(p50 > 0.0 && p50 <= p99 && p99 < 1000.0, "{m}");
    }
    system.stop().await;
}

#[async_std::test]
async fn failed_tries_are_counted_against_the_instance_that_failed() {
    // One instance closes every connection without answering; the other echoes.
    let (d, raws, g) = raw_system(vec![Script::Close, Script::Echo], |_| {}).await;
    let (closer, echo) = (
        format!("127.0.0.1:{}", raws[0].port()),
        format!("127.0.0.1:{}", raws[1].port()),
    );
    for _ in 0..6 {
        let r = testkit::system::post_once(g.addr(), "/x", b"{}").await;
        assert_eq!(r.status, 200, "failed over to the echo");
    }
    let request = "GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
    let r = exchange_raw(g.admin_addr(), request.as_bytes()).await;
    let scrape = scrape(&String::from_utf8_lossy(&r.body));
    let value = |name: &str, upstream: &str, label: (&str, &str)| -> f64 {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && s.labels.get("upstream") == Some(upstream)
                    && s.labels.get(label.0) == Some(label.1)
            })
            .map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or(0.0)
    };
    let broken = value(
        "gateway_upstream_failovers_total",
        &closer,
        ("cause", "broken"),
    );
    assert!(
        broken >= 1.0,
        "the closing instance's broken tries: {broken}"
    );
    assert_eq!(
        value("gateway_upstream_requests_total", &closer, ("code", "200")),
        0.0
    );
    assert_eq!(
        value("gateway_upstream_requests_total", &echo, ("code", "200")),
        6.0
    );
    assert_eq!(
        value(
            "gateway_upstream_failovers_total",
            &echo,
            ("cause", "broken")
        ),
        0.0
    );
    g.shutdown().await;
    for r in raws {
        r.stop();
    }
    d.shutdown().await;
}

/// On a calm system (no change for seconds) the watch age is measured from the
/// last keep-alive, so it stays below the keep-alive interval (1 s in tests)
/// instead of growing until someone is paged.
#[async_std::test]
async fn the_watch_age_stays_below_the_keep_alive_interval_on_a_calm_system() {
    let system = System::start(1).await;
    let sample = "gateway_watch_snapshot_age_seconds{namespace=\"service A\"}";
    let calm_until = Instant::now() + Duration::from_millis(3500);
    let mut samples = 0;
    while Instant::now() < calm_until {
        let age = testkit::system::metric(&system.admin(), sample).await;
        assert!(
            (0.0..=1.0).contains(&age),
            "{sample} = {age} on a calm system (keep-alive every 1 s)"
        );
        samples += 1;
        async_std::task::sleep(Duration::from_millis(100)).await;
    }
    assert!(samples > 10, "sampled the age {samples} times");
    system.stop().await;
}
