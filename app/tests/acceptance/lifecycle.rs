//! Acceptance 3 and the binary's flags: SIGTERM deregisters before the process
//! exits 0, requests in progress finish; flags beat the config file, which
//! beats the defaults; a typo in the file stops start-up naming the key.

use crate::support::{begin, instance, instances, send, wait_for_status};
use std::time::{Duration, Instant};
use testkit::procs::Proc;
use testkit::tempdir::TempFile;

/// A config file, removed when the answer is dropped (also when the test
/// fails): keep it before the `Proc` that reads it.
fn write_config(name: &str, text: &str) -> TempFile {
    let path = TempFile::new(format!("app-{}-{name}.json", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[async_std::test]
async fn sigterm_deregisters_before_exiting_zero() {
    let d = testkit::discovery().await;
    let base = d.url();
    let mut p = Proc::start(
        "app",
        &[
            "--port",
            "0",
            "--discovery-url",
            &base,
            "--register-interval",
            "300ms",
        ],
    );
    let addr = p.listening("app").await;
    wait_for_status(
        &base,
        "service A",
        "127.0.0.1",
        addr.port(),
        "available",
        Duration::from_secs(5),
    )
    .await;

    p.terminate();
    let exit = p.exited(Duration::from_secs(10)).await;
    assert!(exit.success(), "exit {exit:?}: {}", p.output());
    // Discovery keeps an instance that merely stopped answering for
    // deregister_after (60 s): gone right after exit means it deregistered.
    assert!(instances(&base, "service A").await.is_empty());
    let (_, metrics) = testkit::client::get(&format!("{base}/metrics")).await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains(r#"discovery_deregistrations_total{outcome="removed"} 1"#),
        "{metrics}"
    );
    // The output is collected by threads that may lag behind the exit.
    let line = Duration::from_secs(5);
    p.wait_for_line("deregistered from discovery", line).await;
    p.wait_for_line("app stopped", line).await;
    let output = p.output();
    let deregistered = output.find("deregistered from discovery").unwrap();
    let stopped = output.find("app stopped").unwrap();
    assert!(
        deregistered < stopped,
        "deregistered, then stopped:\n{output}"
    );
    d.shutdown().await;
}

#[async_std::test]
async fn a_request_in_progress_finishes_after_sigterm() {
    let d = testkit::discovery().await;
    let base = d.url();
    let mut p = Proc::start("app", &["--port", "0", "--discovery-url", &base, "--chaos"]);
    let addr = p.listening("app").await;
    let admin = p.listening("app admin").await;
    let delay = Duration::from_millis(700);
    let (status, _) = testkit::client::call(
        "PUT",
        &format!("http://{admin}/chaos"),
        Some(&format!(r#"{{"delay_ms": {}}}"#, delay.as_millis())),
    )
    .await;
    assert_eq!(status, 200);

    let started = Instant::now();
    let slow = begin(addr, "POST", "/api/example", br#"{"in": "flight"}"#).await;
    // Connections are accepted in order: once a later one is answered, the
    // slow one is being served. And the app deregisters (a round trip to
    // discovery) before it stops reading requests.
    // (A 404 the delay does not hold.)
    let res = send(addr, "GET", "/chaos", b"").await;
    assert_eq!(res.status, 404);
    p.terminate();
    let res = slow.await;
    assert_eq!(res.status, 200);
    assert_eq!(res.body, br#"{"in": "flight"}"#);
    assert!(started.elapsed() >= delay);
    let exit = p.exited(Duration::from_secs(10)).await;
    assert!(exit.success(), "exit {exit:?}: {}", p.output());
    assert!(
        async_std::net::TcpStream::connect(addr).await.is_err(),
        "the port is closed after exit"
    );
    d.shutdown().await;
}

#[async_std::test]
async fn flags_beat_the_file_and_the_file_beats_the_defaults() {
    let d = testkit::discovery().await;
    let base = d.url();
    let path = write_config(
        "layers",
        &format!(
            r#"{{"namespace": "from file", "discovery_url": "{base}", "chaos": true,
                "max_body_bytes": 64, "register_interval": "300ms", "port": 1}}"#
        ),
    );
    let admin_port = crate::support::free_port().to_string();
    let mut p = Proc::start(
        "app",
        &[
            "--config",
            path.to_str().unwrap(),
            "--port",
            "0",
            "--namespace",
            "from flag",
            "--health-check-path",
            "/healthz",
            "--admin-port",
            &admin_port,
        ],
    );
    let addr = p.listening("app").await;
    let admin = p.listening("app admin").await;
    assert_ne!(addr.port(), 1, "--port beats the file");
    assert_eq!(admin.port().to_string(), admin_port);
    wait_for_status(
        &base,
        "from flag",
        "127.0.0.1",
        addr.port(),
        "available",
        Duration::from_secs(5),
    )
    .await;
    let listed = instance(&base, "from flag", "127.0.0.1", addr.port())
        .await
        .unwrap();
    assert_eq!(listed["health_check_path"], "/healthz");
    assert!(instances(&base, "from file").await.is_empty());
    // From the file, over the defaults: chaos on, a 64-byte body limit.
    let res = send(admin, "GET", "/chaos", b"").await;
    assert_eq!(res.status, 200);
    let res = send(
        addr,
        "POST",
        "/",
        format!("[{}]", " ".repeat(62)).as_bytes(),
    )
    .await;
    assert_eq!(res.status, 200);
    let res = send(
        addr,
        "POST",
        "/",
        format!("[{}]", " ".repeat(63)).as_bytes(),
    )
    .await;
    assert_eq!(res.status, 413);
    p.terminate();
    assert!(p.exited(Duration::from_secs(10)).await.success());

    // --chaos=false beats a file that turns it on.
    let mut p = Proc::start(
        "app",
        &[
            "--config",
            path.to_str().unwrap(),
            "--port",
            "0",
            "--chaos=false",
        ],
    );
    let admin = p.listening("app admin").await;
    assert_eq!(send(admin, "GET", "/chaos", b"").await.status, 404);
    p.terminate();
    assert!(p.exited(Duration::from_secs(10)).await.success());
    d.shutdown().await;
}

#[async_std::test]
async fn a_typo_in_the_config_stops_start_up_naming_the_key() {
    let path = write_config("typo", r#"{"register_intervl": "1s"}"#);
    let mut p = Proc::start("app", &["--config", path.to_str().unwrap(), "--port", "0"]);
    let exit = p.exited(Duration::from_secs(10)).await;
    assert!(!exit.success());
    // The output is collected by threads that may lag behind the exit.
    p.wait_for_line("register_intervl", Duration::from_secs(5))
        .await;

    let mut p = Proc::start("app", &["--port", "0", "--namespace", ""]);
    let exit = p.exited(Duration::from_secs(10)).await;
    assert!(!exit.success(), "an empty namespace is refused");
    p.wait_for_line("namespace must be", Duration::from_secs(5))
        .await;
}
