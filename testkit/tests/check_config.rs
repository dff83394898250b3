//! `--check-config` on discovery, gateway and app, as an operator runs it
//! (like `nginx -t`): the real binaries as child processes. A good config
//! prints the effective config (file, then flags and environment on top) as
//! JSON on stdout and "configuration ok" on stderr, exit 0; a typo'd key or
//! a value a start would refuse prints one error naming it, exit 2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Longest a check may take: it binds nothing and contacts nothing.
const LIMIT: Duration = Duration::from_secs(30);

/// A config file in the temporary directory, removed when dropped (also
/// when the test fails).
struct File(testkit::tempdir::TempFile);

impl File {
    fn new(name: &str, text: &str) -> File {
        let file = testkit::tempdir::TempFile::new(format!(
            "check-config-{}-{name}.json",
            std::process::id()
        ));
        std::fs::write(&file, text).unwrap();
        File(file)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

/// What a run printed, and how it ended.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `bin args` to its end (killed past `LIMIT`), stdout and stderr apart.
fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let child = Command::new(testkit::procs::bin(bin))
        .args(args)
        .env_remove("LOG_FORMAT")
        .env_remove("DISCOVERY_REGISTRATION_TOKEN")
        .env_remove("REGISTRATION_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(LIMIT) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("{bin} {args:?} did not exit within {LIMIT:?}");
        }
    };
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `bin args` with stdout and stderr on one pipe, as on a terminal or
/// with `2>&1`: everything it printed, in order.
fn run_merged(bin: &str, args: &[&str]) -> (Option<i32>, String) {
    let (mut reader, writer) = std::io::pipe().unwrap();
    let mut child = Command::new(testkit::procs::bin(bin))
        .args(args)
        .env_remove("LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        // Ends when the child (the last writer) exits.
        let _ = reader.read_to_string(&mut text);
        let _ = tx.send((child.wait().map(|s| s.code()), text));
    });
    match rx.recv_timeout(LIMIT) {
        Ok((code, text)) => (code.unwrap(), text),
        Err(_) => {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("{bin} {args:?} did not exit within {LIMIT:?}");
        }
    }
}

/// A good check: exit 0, the effective config on stdout, "configuration ok" on stderr.
fn good(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Value {
    let run = run(bin, args, env);
    assert_eq!(run.code, Some(0), "{bin}: {run}");
    assert_eq!(run.stderr.trim(), "configuration ok", "{bin}: {run}");
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{bin}: {e}: {run}"))
}

/// A refused check: exit 2, nothing on stdout, `needle` once on stderr.
fn refused(bin: &str, args: &[&str], needle: &str) -> Run {
    let run = run(bin, args, &[]);
    assert_eq!(run.code, Some(2), "{bin}: {run}");
    assert_eq!(run.stdout, "", "{bin}: only the error is printed: {run}");
    assert_eq!(run.stderr.matches(needle).count(), 1, "{bin}: {run}");
    assert!(run.stderr.starts_with("error: "), "{bin}: {run}");
    assert!(!run.stderr.contains("configuration ok"), "{bin}: {run}");
    run
}

#[test]
fn a_good_config_prints_the_effective_config_and_exits_zero() {
    // Discovery: the flag beats the file, the environment beats the file
    // and the token is not shown.
    let file = File::new(
        "discovery-good",
        r#"{"listen": "127.0.0.1:7001", "healthy_threshold": 2, "timeout_threshold": 0.25}"#,
    );
    let config = good(
        "discovery",
        &[
            "--config",
            file.path(),
            "--listen",
            "127.0.0.1:0",
            "--check-config",
        ],
        &[("DISCOVERY_REGISTRATION_TOKEN", "s3cret-token")],
    );
    assert_eq!(config["listen"], "127.0.0.1:0");
    assert_eq!(config["healthy_threshold"], 2);
    assert_eq!(config["timeout_threshold"], "250ms");
    assert_eq!(config["health_check_time_interval"], "5s", "a default");
    assert_eq!(config["registration_token"], "(redacted)");
    assert!(!config.to_string().contains("s3cret-token"));

    let file = File::new(
        "gateway-good",
        r#"{"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", "max_attempts": 2,
            "routes": [{"prefix": "/a", "namespace": "service A"}]}"#,
    );
    let urls = "http://127.0.0.1:8500,http://127.0.0.1:8501";
    let config = good(
        "gateway",
        &[
            "--check-config",
            "--config",
            file.path(),
            "--discovery-url",
            urls,
        ],
        &[],
    );
    assert_eq!(config["max_attempts"], 2);
    assert_eq!(config["discovery_url"], urls);
    assert_eq!(config["routes"][0]["prefix"], "/a");
    assert_eq!(config["idle_timeout"], "60s", "a default");

    let file = File::new(
        "app-good",
        r#"{"port": 0, "register_interval": "250ms", "namespace": "file"}"#,
    );
    let config = good(
        "app",
        &[
            "--config",
            file.path(),
            "--namespace",
            "flag",
            "--discovery-url",
            "http://127.0.0.1:1,http://127.0.0.1:8500",
            "--check-config",
        ],
        &[],
    );
    assert_eq!(config["port"], 0);
    assert_eq!(config["register_interval"], "250ms");
    assert_eq!(config["namespace"], "flag");
    assert_eq!(
        config["discovery_url"],
        "http://127.0.0.1:1,http://127.0.0.1:8500"
    );
    assert_eq!(config["registration_token"], Value::Null);

    // No file: the defaults, every key.
    let config = good("app", &["--check-config"], &[]);
    assert_eq!(config["discovery_url"], "http://127.0.0.1:8500");
}

#[test]
fn a_typo_in_a_key_names_it_once_with_the_key_meant() {
    for (bin, text, typo, meant) in [
        (
            "discovery",
            "{\n  \"listne\": \"127.0.0.1:0\"\n}",
            "listne",
            "listen",
        ),
        (
            "gateway",
            "{\n  \"listne\": \"127.0.0.1:0\"\n}",
            "listne",
            "listen",
        ),
        (
            "app",
            "{\n  \"discovery_ulr\": \"http://127.0.0.1:8500\"\n}",
            "discovery_ulr",
            "discovery_url",
        ),
    ] {
        let file = File::new(&format!("{bin}-typo"), text);
        let checked = refused(bin, &["--config", file.path(), "--check-config"], typo);
        let hint = format!("did you mean `{meant}`?");
        assert!(checked.stderr.contains(&hint), "{bin}: {checked}");
        assert!(checked.stderr.contains("line 2 column"), "{bin}: {checked}");
        assert!(checked.stderr.contains(file.path()), "{bin}: {checked}");
        // Serde's list of every key is gone.
        assert!(
            !checked.stderr.contains("expected one of"),
            "{bin}: {checked}"
        );
        assert_eq!(checked.stderr.lines().count(), 1, "{bin}: {checked}");

        // A start refuses it the same way, printed once even where stdout
        // and stderr are one (a terminal, `2>&1`).
        let (code, text) = run_merged(bin, &["--config", file.path()]);
        assert_eq!(code, Some(2), "{bin}: {text}");
        assert_eq!(text.matches(typo).count(), 1, "{bin}: {text}");
        assert!(text.contains(&hint), "{bin}: {text}");
        // Apart (a collector on stdout): the error on stderr, and a log line
        // on stdout so the collector learns why it ended.
        let apart = run(bin, &["--config", file.path()], &[]);
        assert_eq!(apart.code, Some(2), "{bin}: {apart}");
        assert_eq!(apart.stderr.matches(typo).count(), 1, "{bin}: {apart}");
        let logged: Value = serde_json::from_str(apart.stdout.trim()).unwrap();
        assert!(
            logged["msg"].as_str().unwrap().contains(&hint),
            "{bin}: {apart}"
        );
    }
}

#[test]
fn an_invalid_value_is_named_and_exits_two() {
    let file = File::new("discovery-bad", r#"{"listen": "127.0.0.1:99999"}"#);
    let run = refused(
        "discovery",
        &["--config", file.path(), "--check-config"],
        "listen must be HOST:PORT",
    );
    assert!(run.stderr.contains("127.0.0.1:99999"), "{run}");
    refused(
        "discovery",
        &["--check-config", "--listen", "nowhere"],
        "listen must be HOST:PORT",
    );

    let file = File::new(
        "gateway-bad",
        r#"{"admin_listen": "127.0.0.1", "allowed_upstreams": ["10.0.0.0/33"]}"#,
    );
    let run = refused(
        "gateway",
        &["--config", file.path(), "--check-config"],
        "admin_listen must be HOST:PORT",
    );
    assert!(run.stderr.contains("allowed_upstreams"), "{run}");
    refused(
        "gateway",
        &[
            "--check-config",
            "--discovery-url",
            "http://127.0.0.1:8500,ftp://x",
        ],
        "discovery_url",
    );

    let file = File::new(
        "app-bad",
        r#"{"discovery_url": "http://127.0.0.1:8500,http://127.0.0.1:99999"}"#,
    );
    refused(
        "app",
        &["--config", file.path(), "--check-config"],
        "discovery_url must be http://HOST[:PORT]",
    );
    let file = File::new("app-bad-type", r#"{"port": "eighty"}"#);
    refused(
        "app",
        &["--config", file.path(), "--check-config"],
        "port: invalid type",
    );
    // What validation refuses at a start is printed once too.
    let (code, text) = run_merged("app", &["--namespace", "", "--port", "0"]);
    assert_eq!(code, Some(2), "{text}");
    assert_eq!(text.matches("namespace must be").count(), 1, "{text}");
}

#[test]
fn the_gateway_check_reads_the_tls_files_the_config_names() {
    let absent =
        std::env::temp_dir().join(format!("check-config-{}-absent.pem", std::process::id()));
    let absent = absent.to_str().unwrap();
    let tls = File::new(
        "gateway-tls",
        &format!(
            r#"{{"tls": {{"listen": "127.0.0.1:0", "cert": "{absent}", "key": "{absent}"}}}}"#
        ),
    );
    let run = refused(
        "gateway",
        &["--config", tls.path(), "--check-config"],
        "tls: cannot read certificate",
    );
    assert!(run.stderr.contains(absent), "{run}");
    let upstream = File::new(
        "gateway-upstream-tls",
        &format!(
            r#"{{"routes": [{{"prefix": "/", "namespace": "a", "upstream_tls": {{"ca": "{absent}"}}}}]}}"#
        ),
    );
    let run = refused(
        "gateway",
        &["--config", upstream.path(), "--check-config"],
        "upstream_tls: cannot read CA file",
    );
    assert!(run.stderr.contains(absent), "{run}");
}
