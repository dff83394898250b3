//! End to end: the system started the way `just up` starts it (the `up`
//! binary, the same service binaries, the shipped config files; free ports
//! instead of the configured ones), driven by the load generator, stopped by
//! SIGTERM as Ctrl-C would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use shared::runstate::RunState;
use std::path::PathBuf;
use std::time::Duration;
use testkit::procs::{bin, Proc};

#[async_std::test]
async fn the_system_as_just_up_runs_it_serves_load_without_an_error() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for service in ["discovery", "app", "gateway"] {
        bin(service);
    }
    let bin_dir = bin("up").parent().unwrap().to_path_buf();
    // Removed when the test ends, with the logs in it.
    let dir = testkit::tempdir::TempDir::new("up-e2e");
    let state_path = dir.join("state.json");
    let mut up = Proc::start(
        "up",
        &[
            "--free-ports",
            "--config-dir",
            root.join("config").to_str().unwrap(),
            "--bin-dir",
            bin_dir.to_str().unwrap(),
            "--state",
            state_path.to_str().unwrap(),
        ],
    );
    up.wait_for_line("Ctrl-C stops everything", Duration::from_secs(60))
        .await;
    let state = RunState::load(&state_path).unwrap();
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
