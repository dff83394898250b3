//! `up --tls` as `just up --tls` runs it (the `up` binary, the service
//! binaries, the shipped config files; free ports): certificates made in the
//! state folder, an echo through the gateway's HTTPS port with curl trusting
//! only that CA, a short load test over HTTPS, and the certificates reused by
//! the next run; and every `loadtest --chaos` mode against it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use shared::runstate::RunState;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use testkit::procs::{bin, Proc};
use testkit::tempdir::TempDir;

const READY: &str = "Ctrl-C stops everything";

fn start(dir: &Path) -> Proc {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for service in ["discovery", "app", "gateway"] {
        bin(service);
    }
    let bin_dir = bin("up").parent().unwrap().to_path_buf();
    Proc::start_with_env(
        "up",
        &[
            "--tls",
            "--free-ports",
            "--config-dir",
            root.join("config").to_str().unwrap(),
            "--bin-dir",
            bin_dir.to_str().unwrap(),
            "--state",
            dir.join("state.json").to_str().unwrap(),
        ],
        &[("NO_COLOR", "1")],
    )
}

async fn stop(mut up: Proc) {
    up.terminate();
    let exit = up.exited(Duration::from_secs(20)).await;
    assert!(exit.success(), "{exit:?}\n{}", up.output());
}

#[async_std::test]
async fn up_tls_serves_https_with_its_own_ca_and_reuses_it_next_time() {
    let dir = TempDir::new("up-tls");
    let up = start(dir.path());
    up.wait_for_line(READY, Duration::from_secs(60)).await;
    let state = RunState::load(&dir.join("state.json")).unwrap();
    let ca = state.ca_file.clone().unwrap();
    assert_eq!(ca, dir.join("tls/ca.crt"));
    assert!(
        state.gateway_url.starts_with("https://127.0.0.1:"),
        "{state:?}"
    );
    let port = state.gateway_url.rsplit(':').next().unwrap().to_string();
    let out = up.output();
    assert!(out.contains("made for this run"), "{out}");
    // The line it prints is the one to copy: run it as printed.
    let line = up.wait_for_line("curl -s --cacert", Duration::ZERO).await;
    let curl = line[line.find("curl").unwrap()..].trim().to_string();
    assert_eq!(
        curl,
        format!(
            "curl -s --cacert {} https://localhost:{port}/api/example -d '{{\"hello\": \"tls\"}}'",
            ca.display()
        )
    );
    let echoed = Command::new("sh").args(["-c", &curl]).output().unwrap();
    assert!(echoed.status.success(), "{echoed:?}");
    assert_eq!(
        String::from_utf8_lossy(&echoed.stdout),
        r#"{"hello": "tls"}"#
    );
    // Without the CA curl refuses the certificate (exit 60).
    let refused = Command::new("curl")
        .args(["-s", &format!("https://localhost:{port}/"), "-d", "{}"])
        .status()
        .unwrap();
    assert_eq!(refused.code(), Some(60));

    // `just loadtest` finds the https URL and the CA in the state file.
    let endpoints =
        loadtest::options::Endpoints::resolve(None, None, None, &dir.join("state.json"));
    assert_eq!(endpoints.url, state.gateway_url);
    let summary = loadtest::run(loadtest::Options {
        url: endpoints.url,
        cacert: endpoints.cacert,
        admin_url: endpoints.admin_url,
        discovery_url: endpoints.discovery_url,
        state: dir.join("state.json"),
        duration: Duration::from_secs(2),
        connections: 16,
        ..Default::default()
    })
    .await
    .unwrap();
    println!("{summary}");
    assert!(summary.passed, "{summary}");
    assert_eq!(
        (summary.failed, summary.mismatches, summary.unattributed),
        (0, 0, 0)
    );
    assert_eq!(summary.transport_errors.total, 0);
    assert!(summary.ok > 100, "{summary}");
    assert_eq!(summary.spread.instances.len(), 3, "{summary}");
    assert_eq!(summary.tls.as_ref().unwrap().handshakes, 16, "{summary}");
    stop(up).await;

    // The next run keeps the CA a client may already trust.
    let before = std::fs::read(&ca).unwrap();
    let up = start(dir.path());
    up.wait_for_line(READY, Duration::from_secs(60)).await;
    assert!(
        up.output().contains("reused from an earlier run"),
        "{}",
        up.output()
    );
    assert_eq!(std::fs::read(&ca).unwrap(), before);
    stop(up).await;
}

/// Each chaos mode of `just loadtest` against `up --tls`, as `just loadtest
/// --chaos MODE` runs it (the state file's URLs and CA): no failed request,
/// no step that did not work. Kill's own instance is started as `up` starts
/// its apps (from a running app's command line: with everything over TLS,
/// its config serves HTTPS and reaches discovery over https), and joins the
/// ring; slow reads discovery's instances (over https with everything);
/// discovery is restarted from its command line.
#[async_std::test]
async fn every_chaos_mode_runs_over_tls_without_a_failed_request() {
    let dir = TempDir::new("up-tls-chaos");
    let up = start(dir.path());
    up.wait_for_line(READY, Duration::from_secs(60)).await;
    let state_path = dir.join("state.json");
    let endpoints = loadtest::options::Endpoints::resolve(None, None, None, &state_path);
    assert!(endpoints.url.starts_with("https://"), "{endpoints:?}");
    assert_eq!(endpoints.discovery_ca, endpoints.cacert);
    // Everything is over TLS: slow reads an https discovery.
    assert!(
        up.output().contains("everything over TLS")
            && endpoints.discovery_url.starts_with("https://"),
        "{endpoints:?}\n{}",
        up.output()
    );
    for chaos in [
        loadtest::Chaos::Kill,
        loadtest::Chaos::Slow,
        loadtest::Chaos::Discovery,
    ] {
        let summary = loadtest::run(loadtest::Options {
            url: endpoints.url.clone(),
            cacert: endpoints.cacert.clone(),
            admin_url: endpoints.admin_url.clone(),
            discovery_url: endpoints.discovery_url.clone(),
            discovery_ca: endpoints.discovery_ca.clone(),
            state: state_path.clone(),
            duration: Duration::from_secs(4),
            connections: 16,
            chaos: Some(chaos),
            app_bin: Some(bin("app")),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("--chaos {chaos}: {e}\n{}", up.output()));
        println!("--chaos {chaos}:\n{summary}");
        let report = summary.chaos.as_ref().unwrap();
        assert!(report.problems.is_empty(), "{chaos}: {summary}");
        assert!(summary.passed, "{chaos}: {summary}");
        assert_eq!(report.errors_during_fault, 0, "{chaos}: {summary}");
        assert_eq!(summary.transport_errors.total, 0, "{chaos}: {summary}");
        assert!(summary.tls.is_some(), "{chaos}: {summary}");
        if chaos == loadtest::Chaos::Kill {
            // The own instance served too: it joined the ring over whatever the others use.
            assert_eq!(summary.spread.instances.len(), 4, "{summary}");
            assert!(report.timeline.rejoined_s.is_some(), "{summary}");
        }
    }
    stop(up).await;
}
