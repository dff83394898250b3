//! End to end: the system started the way `just up` starts it (the `up`
//! binary, the same service binaries, the shipped config files; free ports
//! instead of the configured ones), driven by the load generator, stopped by
//! SIGTERM as Ctrl-C would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

#[async_std::test]
async fn the_system_as_just_up_runs_it_serves_load_without_an_error() {
    // Removed when the test ends, with the logs in it.
    let mut system = testkit::procs::up_system("up-e2e").await;
    let (state_path, state) = (system.state_path.clone(), system.state.clone());
    let up = &mut system.up;
    assert_eq!(state.processes.len(), 5, "{:?}", state.processes.keys());

    let (status, echoed) = testkit::client::post(
        &format!("{}/api/example", state.gateway_url),
        r#"{"hello": "world"}"#,
    )
    .await;
    assert_eq!(
        (status, echoed),
        (200, serde_json::json!({"hello": "world"}))
    );

    let summary = loadtest::run(loadtest::Options {
        url: state.gateway_url.clone(),
        admin_url: state.admin_url.clone(),
        discovery_url: state.discovery_url.clone(),
        state: state_path.clone(),
        duration: Duration::from_secs(3),
        connections: 16,
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(summary.passed, "{summary:?}");
    assert_eq!((summary.failed, summary.mismatches), (0, 0));
    assert!(summary.ok > 100, "only {} requests answered", summary.ok);
    assert_eq!(summary.spread.instances.len(), 3, "{:?}", summary.spread);
    assert!(
        summary.spread.max_deviation_pct < 5.0,
        "{:?}",
        summary.spread
    );

    up.terminate();
    let exit = up.exited(Duration::from_secs(20)).await;
    assert!(exit.success(), "{exit:?}\n{}", up.output());
    for (name, p) in &state.processes {
        assert!(
            !PathBuf::from(format!("/proc/{}", p.pid)).exists(),
            "{name} still runs"
        );
    }
    assert!(!state_path.exists(), "the state file is removed at exit");
}
