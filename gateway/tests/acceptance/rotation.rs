//! Round robin as a client sees it: one rotation shared by every worker, so
//! sequential clients on new connections get the instances strictly in turn
//! at any `worker_threads`; smooth weighted round robin by registered
//! weight; and slow start, an instance's share ramped up after it joins.

use crate::common::{body, served_by_concurrent, Client, System};
use shared::config::{Balance, GatewayConfig, RouteConfig};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Who served each of `n` POSTs, each on a new connection, one after another.
async fn sequential_on_new_connections(sys: &System, n: usize) -> Vec<String> {
    let mut served = Vec::with_capacity(n);
    for i in 0..n {
        let mut client = Client::new(sys.gateway.addr());
        let sent = body(0, i);
        let res = client.post("/", &sent).await.unwrap();
        assert_eq!((res.status, &res.body), (200, &sent));
        served.push(res.header("x-served-by").unwrap().to_string());
    }
    served
}

fn assert_strict_turns(served: &[String], k: usize) {
    for (i, window) in served.chunks(k).enumerate() {
        let mut distinct = window.to_vec();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            k,
            "window {i} repeats an instance: {served:?}"
        );
    }
    for w in served.windows(2) {
        assert_ne!(w[0], w[1], "an instance twice in a row: {served:?}");
    }
}

async fn rotation_is_exact_with(workers: usize) {
    let sys = System::start_with(3, |c| c.worker_threads = workers).await;
    let served = sequential_on_new_connections(&sys, 3 * 12).await;
    assert_strict_turns(&served, 3);
    let counts = served_by_concurrent(sys.gateway.addr(), 8, 30).await;
    for app in &sys.apps {
        let n = counts.get(app.served_by()).copied().unwrap_or(0);
        assert!((79..=81).contains(&n), "8 x 30 over 3: {counts:?}");
    }
    sys.stop().await;
}

#[async_std::test]
async fn sequential_clients_see_strict_turns_at_the_default_worker_count() {
    rotation_is_exact_with(0).await;
}

#[async_std::test]
async fn sequential_clients_see_strict_turns_with_four_workers() {
    rotation_is_exact_with(4).await;
}

fn weighted(config: &mut GatewayConfig, slow_start: Duration) {
    config.worker_threads = 4;
    config.routes = vec![RouteConfig {
        prefix: "/".into(),
        namespace: "service A".into(),
        balance: Balance::WeightedRoundRobin,
        slow_start,
        ..RouteConfig::default()
    }];
}

#[async_std::test]
async fn weights_one_two_three_share_six_hundred_requests_smoothly() {
    let sys = System::start_weighted(&[1, 2, 3], |c| weighted(c, Duration::ZERO)).await;
    let served = sequential_on_new_connections(&sys, 600).await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for s in &served {
        *counts.entry(s.as_str()).or_default() += 1;
    }
    for (app, weight) in sys.apps.iter().zip([1, 2, 3]) {
        let n = counts.get(app.served_by()).copied().unwrap_or(0);
        assert!(n.abs_diff(100 * weight) <= 1, "weight {weight}: {counts:?}");
    }
    // Smooth: the heaviest never runs more than twice in a row, the others never twice.
    let heaviest = sys.apps[2].served_by();
    let runs = served
        .windows(3)
        .filter(|w| w.iter().all(|s| s == heaviest))
        .count();
    assert_eq!(runs, 0, "three in a row: {served:?}");
    for light in [sys.apps[0].served_by(), sys.apps[1].served_by()] {
        assert!(
            !served.windows(2).any(|w| w[0] == light && w[1] == light),
            "{light} twice in a row"
        );
    }
    sys.stop().await;
}

#[async_std::test]
async fn equal_weights_under_weighted_round_robin_never_repeat_an_instance() {
    let sys = System::start_weighted(&[5, 5, 5], |c| weighted(c, Duration::ZERO)).await;
    let served = sequential_on_new_connections(&sys, 30).await;
    assert_strict_turns(&served, 3);
    sys.stop().await;
}

#[async_std::test]
async fn a_new_instance_under_slow_start_ramps_its_share_up() {
    let slow_start = Duration::from_secs(4);
    let mut sys = System::start_weighted(&[1, 1], |c| weighted(c, slow_start)).await;
    // Let the first two finish their own ramp (they joined at start).
    async_std::task::sleep(slow_start).await;
    let joined = Instant::now();
    let newcomer = sys.add_app(1).await;
    // Shares of the newcomer in windows of a second, from when it is in the ring.
    let mut shares = Vec::new();
    let addr = sys.gateway.addr();
    let mut client = Client::new(addr);
    while joined.elapsed() < slow_start + Duration::from_secs(2) {
        let window = Instant::now();
        let (mut mine, mut all) = (0usize, 0usize);
        while window.elapsed() < Duration::from_millis(1000) {
            let sent = body(0, all);
            let res = client.post("/", &sent).await.unwrap();
            assert_eq!(res.status, 200);
            all += 1;
            mine += usize::from(res.header("x-served-by") == Some(newcomer.as_str()));
        }
        shares.push(mine as f64 / all as f64);
    }
    // Full share is a third. It starts well below, rises, and ends there.
    let (first, last) = (shares[0], shares[shares.len() - 1]);
    assert!(first < 0.2, "first window already {first}: {shares:?}");
    assert!(
        (last - 1.0 / 3.0).abs() < 0.05,
        "last window {last}: {shares:?}"
    );
    let middle = shares[shares.len() / 2 - 1];
    assert!(
        first < middle && middle < last + 0.05,
        "not rising: {shares:?}"
    );
    sys.stop().await;
}
