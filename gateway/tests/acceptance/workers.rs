//! The per-worker hot path. Connections spread over the workers' own
//! listeners; the one shared rotation keeps every instance within one pick
//! of N/k, and the workers' metric shards add up to every request on
//! `/metrics`.

use crate::common::{body, served_by_concurrent, Client, System};
use std::time::Duration;

const WORKERS: usize = 4;
const CLIENTS: usize = 40;
const PER_CLIENT: usize = 30;

/// The sum of every sample of `/metrics` named `name` whose labels contain `with`.
async fn summed(admin: &str, name: &str, with: &str) -> f64 {
    let (_, text) = testkit::client::get(&format!("{admin}/metrics")).await;
    let text = text.as_str().unwrap_or_default().to_string();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let bare = series.split('{').next() == Some(name);
            bare && series.contains(with)
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

#[async_std::test]
async fn concurrent_clients_across_four_workers_get_an_even_spread() {
    let sys = System::start_with(3, |c| c.worker_threads = WORKERS).await;
    let counts = served_by_concurrent(sys.gateway.addr(), CLIENTS, PER_CLIENT).await;
    let total = CLIENTS * PER_CLIENT;
    assert_eq!(counts.values().sum::<usize>(), total);
    let fair = total / sys.apps.len();
    for app in &sys.apps {
        let n = counts.get(app.served_by()).copied().unwrap_or(0);
        assert!(
            n.abs_diff(fair) <= 1,
            "{n} answers from {}, want {fair} within one: {counts:?}",
            app.served_by()
        );
    }
    sys.stop().await;
}

#[async_std::test]
async fn the_workers_counters_add_up_to_every_request_on_metrics() {
    let sys = System::start_with(3, |c| c.worker_threads = WORKERS).await;
    served_by_concurrent(sys.gateway.addr(), CLIENTS, PER_CLIENT).await;
    let total = (CLIENTS * PER_CLIENT) as f64;
    let admin = sys.admin();
    // A request is counted once its answer is written, so the last one can
    // reach its client a moment before its worker counts it.
    testkit::wait_until(
        "every request is counted",
        Duration::from_secs(5),
        || async { summed(&admin, "gateway_requests_total", "code=\"200\"").await == total },
    )
    .await;
    assert_eq!(
        summed(&admin, "gateway_requests_total", "").await,
        total,
        "only 200s"
    );
    for histogram in [
        "gateway_request_duration_seconds_count",
        "gateway_attempts_per_request_count",
        "gateway_upstream_request_duration_seconds_count",
    ] {
        assert_eq!(summed(&admin, histogram, "").await, total, "{histogram}");
    }
    assert_eq!(
        summed(&admin, "gateway_attempts_per_request_sum", "").await,
        total,
        "one try each"
    );
    let per_upstream = summed(&admin, "gateway_upstream_requests_total", "code=\"200\"").await;
    assert_eq!(per_upstream, total);
    let inf = summed(
        &admin,
        "gateway_request_duration_seconds_bucket",
        "le=\"+Inf\"",
    )
    .await;
    assert_eq!(inf, total, "the +Inf bucket holds every request");
    sys.stop().await;
}

#[async_std::test]
async fn a_four_worker_gateway_stops_every_listener_and_its_threads() {
    let sys = System::start_with(2, |c| c.worker_threads = WORKERS).await;
    let addr = sys.gateway.addr();
    // Connections on every worker, idle and keep-alive when the stop comes.
    let mut clients = Vec::new();
    for c in 0..16 {
        let mut client = Client::new(addr);
        let sent = body(c, 0);
        let res = client.post("/", &sent).await.unwrap();
        assert_eq!((res.status, &res.body), (200, &sent));
        clients.push(client);
    }
    let started = std::time::Instant::now();
    sys.stop().await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "idle connections end at once: {:?}",
        started.elapsed()
    );
    for _ in 0..8 {
        assert!(
            async_std::net::TcpStream::connect(addr).await.is_err(),
            "a worker's listener is still open"
        );
    }
    drop(clients);
}
