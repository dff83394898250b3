//! Acceptance 6: defaults without a file, a typo'd key fails start-up naming it,
//! durations in both forms; SIGTERM shuts down cleanly.

use std::time::Duration;
use testkit::procs::Proc;

/// A config file, removed when the returned handle drops (a failing test too).
fn write_config(name: &str, text: &str) -> testkit::tempdir::TempFile {
    let path =
        testkit::tempdir::TempFile::new(format!("discovery-{}-{name}.json", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[async_std::test]
async fn defaults_apply_without_a_file_and_sigterm_exits_zero() {
    let mut p = Proc::start("discovery", &["--listen", "127.0.0.1:0"]);
    let addr = p.listening("discovery").await;
    let (status, _) = testkit::client::get(&format!("http://{addr}/health_check")).await;
    assert_eq!(status, 200);
    p.terminate();
    let exit = p.exited(Duration::from_secs(10)).await;
    assert!(exit.success(), "exit {exit:?}: {}", p.output());
}

#[async_std::test]
async fn a_typo_in_a_key_fails_start_up_naming_the_key() {
    let path = write_config("typo", r#"{"health_check_intervl": 5}"#);
    let mut p = Proc::start("discovery", &["--config", path.to_str().unwrap()]);
    let exit = p.exited(Duration::from_secs(10)).await;
    assert!(!exit.success());
    assert!(
        p.output().contains("health_check_intervl"),
        "{}",
        p.output()
    );
    let path = write_config("bad-duration", r#"{"timeout_threshold": "soon"}"#);
    let mut p = Proc::start("discovery", &["--config", path.to_str().unwrap()]);
    assert!(!p.exited(Duration::from_secs(10)).await.success());
    assert!(p.output().contains("timeout_threshold"), "{}", p.output());
}

#[async_std::test]
async fn durations_parse_as_seconds_and_as_strings() {
    let peer = testkit::peer::Peer::start().await;
    for text in [
        r#"{"listen": "127.0.0.1:0", "health_check_time_interval": 0.1, "timeout_threshold": "50ms"}"#,
        r#"{"listen": "127.0.0.1:0", "health_check_time_interval": "100ms", "timeout_threshold": 0.05}"#,
    ] {
        let path = write_config("durations", text);
        let p = Proc::start("discovery", &["--config", path.to_str().unwrap()]);
        let addr = p.listening("discovery").await;
        testkit::client::register(&format!("http://{addr}"), "d", peer.port()).await;
        let before = peer.checks();
        // With the default 5 s interval this would see no check at all.
        testkit::wait_until(
            "checks come every 100 ms",
            Duration::from_secs(3),
            || async { peer.checks() - before >= 5 },
        )
        .await;
    }
}
