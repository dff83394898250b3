//! The binaries' logging as an operator meets it: the format
//! chosen by `--log-format` or `LOG_FORMAT` (JSON when stdout is not a
//! terminal), and a closed stdout that costs the log lines, never the service.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use testkit::procs::Proc;

/// Kills the child if the test fails half-way.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The app's stdout is a pipe nobody reads (its read end closed before the
/// start): every log line fails with EPIPE. femme panicked on that at the
/// first line; now the app registers, serves and stops cleanly.
#[async_std::test]
async fn a_closed_stdout_costs_log_lines_not_the_service() {
    let discovery = testkit::discovery().await;
    let base = discovery.url();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = Command::new(testkit::procs::bin("app"))
        .args(["--port", "0", "--discovery-url", &base])
        .env("LOG_LEVEL", "debug") // a line per request too
        .env_remove("LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut app = Killed(child);

    // It logged "app listening" into the closed pipe, then registered.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let port = loop {
        let (_, services) = testkit::client::get(&format!("{base}/api/services")).await;
        let available = services["service A"].as_array().and_then(|instances| {
            instances
                .iter()
                .find(|i| i["status"] == "available")
                .and_then(|i| i["port"].as_str()?.parse::<u16>().ok())
        });
        if let Some(port) = available {
            break port;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the app never became available: {services}"
        );
        async_std::task::sleep(Duration::from_millis(20)).await;
    };
    let url = format!("http://127.0.0.1:{port}");
    for i in 0..20 {
        let body = format!(r#"{{"n": {i}}}"#);
        let (status, echo) = testkit::client::post(&format!("{url}/api/echo"), &body).await;
        assert_eq!((status, echo), (200, serde_json::json!({ "n": i })));
    }
    let (status, _) = testkit::client::get(&format!("{url}/health_check")).await;
    assert_eq!(status, 200);
    assert!(app.0.try_wait().unwrap().is_none(), "the app exited");

    // SIGTERM: it deregisters (logging all the way) and exits 0.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(app.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = app.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        async_std::task::sleep(Duration::from_millis(10)).await;
    };
    let mut stderr = String::new();
    app.0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{status}; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    discovery.shutdown().await;
}

/// Without a flag, a pipe gets JSON lines with femme's fields and an RFC
/// 3339 time; `LOG_FORMAT=pretty` and `--log-format` choose, the flag winning.
#[async_std::test]
async fn the_log_format_follows_the_flag_then_the_environment() {
    let json = Proc::start_with_env(
        "discovery",
        &["--listen", "127.0.0.1:0"],
        &[("LOG_FORMAT", "")],
    );
    let addr = json.listening("discovery").await;
    let line = json
        .wait_for_line("discovery listening on", Duration::from_secs(5))
        .await;
    let fields: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(fields["level"], 30, "{line}");
    assert_eq!(
        fields["msg"],
        format!("discovery listening on http://{addr}")
    );
    let time = fields["time"].as_str().unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{time}"
    );
    for line in json.output().lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }

    let pretty = Proc::start_with_env(
        "discovery",
        &["--listen", "127.0.0.1:0"],
        &[("LOG_FORMAT", "pretty")],
    );
    let addr = pretty.listening("discovery").await;
    let line = pretty
        .wait_for_line("discovery listening on", Duration::from_secs(5))
        .await;
    assert!(
        serde_json::from_str::<serde_json::Value>(&line).is_err(),
        "{line}"
    );
    let (clock, rest) = line.split_once(' ').unwrap();
    assert_eq!(
        (clock.len(), &clock[2..3], &clock[8..9]),
        (12, ":", "."),
        "{line}"
    );
    assert!(rest.starts_with("INFO "), "{line}");
    assert!(
        rest.contains(&format!(
            "discovery listening on http://{addr}  addr={addr}"
        )),
        "{line}"
    );

    let flag = Proc::start_with_env(
        "discovery",
        &["--listen", "127.0.0.1:0", "--log-format", "json"],
        &[("LOG_FORMAT", "pretty")],
    );
    flag.listening("discovery").await;
    let line = flag
        .wait_for_line("discovery listening on", Duration::from_secs(5))
        .await;
    assert!(
        serde_json::from_str::<serde_json::Value>(&line).is_ok(),
        "{line}"
    );
}
