//! `loadtest --idempotency` against real systems: every key must run
//! exactly once (the apps' own counts) and every replay be identical,
//! through one gateway with the memory store and two gateways on one port
//! sharing a 3-member etcd; a route that does not honour keys is refused.

use crate::common::{exclusive, members, System};
use loadtest::idempotency::{IdempotencySummary, AFTER, AT_ONCE};
use loadtest::Options;
use shared::config::{GatewayConfig, IdempotencyMode};
use std::time::Duration;
use testkit::system::{gateway_config, wait_ring};

fn honour(c: &mut GatewayConfig) {
    for r in &mut c.routes {
        r.idempotency.mode = IdempotencyMode::Honor;
    }
    // Room for a busy machine: a slow answer must not become a 504.
    c.upstream_timeout = Duration::from_secs(10);
    c.request_deadline = Duration::from_secs(20);
}

fn idempotency_options(system: &System, gateway_admins: Vec<String>) -> Options {
    Options {
        idempotency: true,
        connections: 4,
        gateway_admin_urls: gateway_admins,
        app_admin_urls: system.apps.iter().map(app::Handle::admin_url).collect(),
        drain_timeout: Duration::from_secs(15),
        ..system.options(Duration::from_secs(2))
    }
}

/// What every passing run must show, whatever the timing.
fn assert_exactly_once(s: &IdempotencySummary) {
    assert!(s.passed, "{s}");
    assert!(s.keys >= 20, "only {} keys in 2 s: {s}", s.keys);
    assert_eq!((s.executions.min, s.executions.max), (1, 1), "{s}");
    assert_eq!(s.executions.not_once, 0, "{s}");
    assert_eq!(s.executions.untracked, 0, "{s}");
    assert_eq!(s.mismatches, 0, "{s}");
    assert_eq!(s.failures, 0, "{s}");
    assert_eq!(s.executed, s.keys, "one executed answer per key: {s}");
    // Every copy after the answers is a replay; each copy sent at once
    // but the executed one is a replay or a 409.
    assert!(s.replays >= AFTER as u64 * s.keys, "{s}");
    assert_eq!(
        s.replays + s.conflicts,
        (AT_ONCE + AFTER - 1) as u64 * s.keys,
        "{s}"
    );
    assert_eq!(
        s.sends,
        (AT_ONCE + AFTER) as u64 * s.keys + s.late_conflicts,
        "{s}"
    );
    assert!(s.to_string().contains("PASS"), "{s}");
}

/// The gateways' own counts for route "/", summed over `admins`.
async fn gateway_counts(admins: &[String], event: &str) -> u64 {
    let mut n = 0;
    for admin in admins {
        let status = testkit::system::status(admin).await;
        n += status["idempotency"]["routes"]["/"][event]
            .as_u64()
            .unwrap_or(0);
    }
    n
}

#[async_std::test]
async fn each_key_runs_exactly_once_and_every_replay_is_identical() {
    let _one = exclusive().await;
    let system = System::start(honour).await;
    let admins = vec![system.gateway.admin_url()];
    let summary = loadtest::idempotency::run(&idempotency_options(&system, admins.clone()))
        .await
        .unwrap();
    println!("{summary}");
    assert_exactly_once(&summary);
    assert_eq!(summary.gateways.len(), 1);
    assert_eq!(summary.gateways[0].store, "memory");
    assert_eq!(summary.gateways[0].mode, "honor");
    // The gateway saw the same run.
    assert_eq!(gateway_counts(&admins, "executed").await, summary.keys);
    assert_eq!(gateway_counts(&admins, "replayed").await, summary.replays);
    assert_eq!(
        gateway_counts(&admins, "conflict").await,
        summary.conflicts + summary.late_conflicts
    );
    // The JSON file says the same.
    let path =
        testkit::tempdir::TempFile::new(format!("loadtest-idem-{}.json", std::process::id()));
    summary.write_json(&path).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["keys"], summary.keys);
    assert_eq!(json["executions"]["max"], 1);
    assert_eq!(json["passed"], true);
    system.stop().await;
}

#[async_std::test]
async fn a_route_without_keys_or_unknown_apps_is_refused_before_any_send() {
    let _one = exclusive().await;
    let system = System::start(|_| {}).await;
    let admins = vec![system.gateway.admin_url()];
    let options = idempotency_options(&system, admins.clone());
    let err = loadtest::idempotency::run(&options).await.unwrap_err();
    assert!(err.contains("idempotency mode is off"), "{err}");
    let err = loadtest::idempotency::run(&Options {
        app_admin_urls: Vec::new(),
        ..options.clone()
    })
    .await
    .unwrap_err();
    assert!(err.contains("--app-admin-urls"), "{err}");
    // Nothing was sent: no app counted a key.
    for a in &system.apps {
        let (status, v) = testkit::client::get(&format!("{}/executions", a.admin_url())).await;
        assert_eq!(status, 200);
        assert_eq!(v["executions"], serde_json::json!({}), "{v}");
    }
    system.stop().await;
}

/// `just cluster`'s shape: two gateways on one port. With their own memory
/// stores the run is refused; sharing a 3-member etcd, each key runs once.
#[async_std::test]
async fn two_gateways_on_one_port_sharing_etcd_run_each_key_once() {
    let _one = exclusive().await;
    let Some(etcd) = testkit::etcd::Cluster::start(3).await else {
        return;
    };
    let url = etcd.store_url("loadtest-idem");
    let system = System::start(|c| {
        honour(c);
        c.idempotency_store = url.clone();
    })
    .await;
    let mut config = gateway_config(&system.discovery.url());
    honour(&mut config);
    config.idempotency_store = url.clone();
    config.listen = system.gateway.addr().to_string();
    let second = gateway::spawn(config.clone()).await.unwrap();
    wait_ring(
        &second.admin_url(),
        &members(&system.apps),
        Duration::from_secs(5),
    )
    .await;
    let admins = vec![system.gateway.admin_url(), second.admin_url()];
    let summary = loadtest::idempotency::run(&idempotency_options(&system, admins.clone()))
        .await
        .unwrap();
    println!("{summary}");
    assert_exactly_once(&summary);
    assert!(summary.gateways.iter().all(|g| g.store == "etcd"));
    // Both gateways took keyed requests, and together saw the run.
    for admin in &admins {
        let keyed = gateway_counts(std::slice::from_ref(admin), "keyed").await;
        assert!(keyed > 0, "{admin} took no keyed request");
    }
    assert_eq!(gateway_counts(&admins, "executed").await, summary.keys);
    assert_eq!(gateway_counts(&admins, "replayed").await, summary.replays);
    second.shutdown().await;
    // The same two gateways with memory stores: refused, as each would dedupe alone.
    config.idempotency_store = "memory".into();
    let memory = gateway::spawn(config).await.unwrap();
    let err = loadtest::idempotency::run(&idempotency_options(
        &system,
        vec![system.gateway.admin_url(), memory.admin_url()],
    ))
    .await
    .unwrap_err();
    assert!(err.contains("in memory"), "{err}");
    memory.shutdown().await;
    system.stop().await;
}
