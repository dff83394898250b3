//! Certificates rotated on SIGHUP while the gateway works (docs/tls.md
//! "Errors and reloads", "Instances over TLS"): the gateway binary as a
//! child process with a config file, real discovery, real instances.
//!
//! - The client port's certificate under load from another TLS stack
//!   (Python's `ssl` over OpenSSL, `tls_reload.py` beside this file):
//!   no request fails, and new connections get the new certificate.
//! - A route's `upstream_tls` CA file: a new one takes effect on SIGHUP
//!   (connections pooled under the old one are not used again), a broken
//!   one is refused and the one in force stays.

use super::tls::{base_file_config, reloads, TlsGateway};
use super::upstream_tls::tls_instance;
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::pki::Pki;
use testkit::procs::Proc;
use testkit::system::{metric, post_once, wait_ring};

const LIMIT: Duration = Duration::from_secs(20);

/// The load script (see its docstring).
const LOAD_SCRIPT: &str = include_str!("tls_reload.py");

/// A certificate's SHA-256 in hex, as the script prints it.
fn fingerprint(der: &[u8]) -> String {
    format!("{:x}", Sha256::digest(der))
}

/// What the load script printed: its lines, and whether its stdout ended.
#[derive(Default)]
struct Printed {
    lines: Vec<String>,
    ended: bool,
}

/// The load script running as a child process: its stdout lines as they
/// come, its stdin to tell it of the reload. Killed on drop.
struct Load {
    child: Child,
    stdin: ChildStdin,
    out: Arc<Mutex<Printed>>,
    stderr: Arc<Mutex<String>>,
}

impl Load {
    fn start(script: &str, args: &[String]) -> Load {
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("python3 cannot be started ({e}): this test needs Python 3 (.ci/install-python3)")
            });
        let out = Arc::new(Mutex::new(Printed::default()));
        let stdout = child.stdout.take().unwrap();
        let printed = out.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                printed.lock().unwrap().lines.push(line);
            }
            printed.lock().unwrap().ended = true;
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let said = stderr.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            said.lock().unwrap().push_str(&text);
        });
        Load {
            stdin: child.stdin.take().unwrap(),
            child,
            out,
            stderr,
        }
    }

    /// Waits until the script prints a line starting with `prefix`: the line.
    async fn wait_for(&self, prefix: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            {
                let out = self.out.lock().unwrap();
                if let Some(line) = out.lines.iter().find(|l| l.starts_with(prefix)) {
                    return line.clone();
                }
                assert!(!out.ended, "no {prefix:?} line: {}", self.describe(&out));
                assert!(
                    Instant::now() < deadline,
                    "no {prefix:?} line within {LIMIT:?}: {}",
                    self.describe(&out)
                );
            }
            async_std::task::sleep(Duration::from_millis(10)).await;
        }
    }

    fn tell(&mut self, line: &str) {
        let told = self.stdin.write_all(format!("{line}\n").as_bytes());
        if let Err(e) = told.and_then(|()| self.stdin.flush()) {
            let out = self.out.lock().unwrap();
            panic!("cannot tell it {line:?} ({e}): {}", self.describe(&out));
        }
    }

    fn describe(&self, out: &Printed) -> String {
        format!(
            "the load script printed:\n{}\nstderr:\n{}",
            out.lines.join("\n"),
            self.stderr.lock().unwrap()
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[async_std::test]
async fn tls_reload_under_load_from_python_ssl_drops_no_request() {
    // Threads of each kind; requests answered before the reload; requests
    // of each kind started after it.
    const THREADS: usize = 3;
    const WARM: u64 = 600;
    const AFTER: u64 = 300;
    let gw = TlsGateway::start("reload-load", 3).await;
    let (pki, first, proc, addr) = (&gw.pki, &gw.first, &gw.proc, gw.addr);
    let admin = gw.admin.as_str();
    let members: Vec<String> = gw.apps.iter().map(|a| a.served_by().to_string()).collect();
    wait_ring(admin, &members, LIMIT).await;

    let script = pki.write("tls_reload.py", LOAD_SCRIPT);
    let args = [
        addr.port().to_string(),
        pki.ca_file(),
        THREADS.to_string(),
        WARM.to_string(),
        AFTER.to_string(),
        // Its own bound, well inside the test's waits.
        "15".into(),
    ];
    let mut load = Load::start(&script, &args);
    load.wait_for("WARM").await;

    // Rotate: a new certificate from the same CA in the same files (each
    // written whole), then SIGHUP, while the load goes on.
    let second = pki.issue("server", &["gw.test"]);
    let (old, new) = (fingerprint(&first.der), fingerprint(&second.der));
    assert_ne!(old, new);
    proc.signal(Signal::SIGHUP);
    testkit::wait_until("the reload", LIMIT, || async move {
        reloads(admin, "ok").await == 1.0
    })
    .await;
    // Counted after the swap: every handshake from here on is on the new one.
    load.tell("RELOADED");
    let line = load.wait_for("SUMMARY ").await;
    let summary: Value = serde_json::from_str(&line["SUMMARY ".len()..]).unwrap();
    let count = |v: &Value| v.as_u64().unwrap();
    let connections = summary["connections"].as_array().unwrap();
    eprintln!(
        "load: {} ok ({} before the reload, {} after), {} connections, {:.2} s",
        summary["ok"],
        summary["ok_before_reload"],
        summary["ok_after_reload"],
        connections.len(),
        summary["elapsed"].as_f64().unwrap()
    );

    assert_eq!(
        (count(&summary["failed"]), &summary["failures"]),
        (0, &json!([])),
        "failed requests (the first 50)"
    );
    assert_eq!(summary["timed_out"], json!(false), "{summary}");
    assert!(count(&summary["ok_before_reload"]) >= WARM, "{summary}");
    let after = &summary["ok_after_reload"];
    assert!(count(&after["keep_alive"]) >= AFTER, "{after}");
    assert!(count(&after["new_connection"]) >= AFTER, "{after}");

    let reload_at = summary["reload_at"].as_f64().unwrap();
    let seconds = |c: &Value, key: &str| c[key].as_f64().unwrap();
    let print = |c: &Value| {
        let fp = c["fingerprint"].as_str().unwrap();
        let which = if fp == old {
            "old"
        } else if fp == new {
            "new"
        } else {
            fp
        };
        format!(
            "{} {}..{} {which}",
            c["thread"],
            seconds(c, "started"),
            seconds(c, "done")
        )
    };
    for c in connections {
        let fp = c["fingerprint"].as_str().unwrap();
        assert!(
            fp == old || fp == new,
            "an unknown certificate: {}",
            print(c)
        );
    }
    // Open connections go on with the certificate they began with, and are
    // not dropped: each keep-alive thread made one connection, before the
    // reload, and went on sending on it after.
    for i in 0..THREADS {
        let thread = format!("ka-{i}");
        let made: Vec<&Value> = connections
            .iter()
            .filter(|c| c["thread"] == thread.as_str())
            .collect();
        assert_eq!(made.len(), 1, "{thread} made a connection again");
        assert_eq!(made[0]["fingerprint"], old.as_str(), "{}", print(made[0]));
    }
    // Every connection begun after the gateway said it reloaded gets the
    // new certificate; many did.
    let late: Vec<&Value> = connections
        .iter()
        .filter(|c| seconds(c, "started") > reload_at)
        .collect();
    assert!(
        late.len() as u64 >= AFTER,
        "{} after the reload",
        late.len()
    );
    for c in &late {
        assert_eq!(
            c["fingerprint"],
            new.as_str(),
            "after the reload: {}",
            print(c)
        );
    }
    // And none gets the old one once a handshake has ended with the new
    // one (the swap is one for all the workers): the first such handshake's
    // end, then every handshake begun later.
    let first_new = connections
        .iter()
        .filter(|c| c["fingerprint"] == new.as_str())
        .map(|c| seconds(c, "done"))
        .fold(f64::INFINITY, f64::min);
    for c in connections {
        if seconds(c, "started") > first_new {
            assert_eq!(
                c["fingerprint"],
                new.as_str(),
                "old after new: {}",
                print(c)
            );
        }
    }
    let before = connections
        .iter()
        .filter(|c| c["fingerprint"] == old.as_str() && c["kind"] == "new_connection")
        .count();
    assert!(
        before as u64 >= WARM / 10,
        "{before} new connections before the reload"
    );
    proc.wait_for_line("configuration reloaded", LIMIT).await;
    drop(load);
    gw.stop().await;
}

/// A gateway config file routing `/` to "service A" over TLS, trusting `ca`.
fn upstream_tls_config(discovery_url: &str, ca: &str) -> String {
    let mut config = base_file_config(discovery_url);
    // One worker: each worker pools its own connections.
    config["worker_threads"] = json!(1);
    config["routes"] =
        json!([{"prefix": "/", "namespace": "service A", "upstream_tls": {"ca": ca}}]);
    config.to_string()
}

#[async_std::test]
async fn upstream_tls_files_are_reloaded_on_sighup() {
    let ca1 = Pki::new("upstream-tls-reload-ca1");
    let ca2 = Pki::new("upstream-tls-reload-ca2");
    // The instance's certificate is from CA2.
    let server = ca2.issue("server", &["127.0.0.1"]);
    let (port, seen) = tls_instance(&server, None).await;
    let discovery = testkit::discovery().await;
    testkit::client::register(&discovery.url(), "service A", port).await;
    // The file the route names (in CA1's dir) holds CA1 first.
    let ca_file = ca1.write("instances-ca.pem", &ca1.ca_pem());
    let config = ca1.write(
        "gateway.json",
        &upstream_tls_config(&discovery.url(), &ca_file),
    );
    let proc = Proc::start("gateway", &["--config", &config]);
    let admin = format!("http://{}", proc.listening("gateway admin").await);
    let addr = proc.listening("gateway").await;
    wait_ring(&admin, &[format!("127.0.0.1:{port}")], LIMIT).await;
    let admin = admin.as_str();
    let handshakes = |result: &'static str| async move {
        let sample = format!("gateway_upstream_tls_handshakes_total{{result=\"{result}\"}}");
        metric(admin, &sample).await
    };
    // Puts `pem` in the CA file, sends SIGHUP and waits until the gateway
    // has counted the reload as `result` (`n` such so far).
    let reload = |pem: String, result: &'static str, n: f64| {
        ca1.write("instances-ca.pem", &pem);
        proc.signal(Signal::SIGHUP);
        testkit::wait_until("the reload counted", LIMIT, move || async move {
            reloads(admin, result).await == n
        })
    };
    let post = |n: u32| async move {
        let body = format!("{{\"step\":{n}}}");
        let res = post_once(addr, "/api/x", body.as_bytes()).await;
        let text = String::from_utf8_lossy(&res.body).to_string();
        (res.status, text == body, text)
    };
    let connections = || seen.tls_connections.load(Ordering::SeqCst);
    let requests = || seen.requests.load(Ordering::SeqCst);

    // Trusting CA1: the instance's certificate is refused, nothing reaches it.
    let (status, _, text) = post(1).await;
    assert_eq!(status, 502, "{text}");
    assert_eq!((connections(), requests()), (0, 0));
    assert!(handshakes("failed").await >= 1.0);
    assert_eq!(handshakes("ok").await, 0.0);

    // CA2 in the same file, then SIGHUP: the instance is trusted, and its
    // connection is pooled.
    reload(ca2.ca_pem(), "ok", 1.0).await;
    for n in [2, 3] {
        let (status, echoed, text) = post(n).await;
        assert!(status == 200 && echoed, "{status} {text}");
    }
    assert_eq!((connections(), requests()), (1, 2), "one pooled connection");

    // CA1 again: the connection pooled under CA2 is not handed out, and a
    // new one is refused.
    reload(ca1.ca_pem(), "ok", 2.0).await;
    let (status, _, text) = post(4).await;
    assert_eq!(status, 502, "{text}");
    assert_eq!((connections(), requests()), (1, 2));

    // CA2 again, and from here the instance closes each connection after
    // its answer: every request is a new handshake.
    reload(ca2.ca_pem(), "ok", 3.0).await;
    seen.close.store(true, Ordering::SeqCst);
    let (status, echoed, text) = post(5).await;
    assert!(status == 200 && echoed, "{status} {text}");
    assert_eq!((connections(), requests()), (2, 3));

    // A broken CA file: the reload is refused naming it, and CA2 stays in
    // force for new connections.
    reload("not a certificate\n".into(), "error", 1.0).await;
    let line = proc.wait_for_line("configuration refused", LIMIT).await;
    assert!(
        line.contains(&ca_file) && line.contains("upstream_tls"),
        "{line}"
    );
    assert_eq!(reloads(admin, "ok").await, 3.0);
    let (status, echoed, text) = post(6).await;
    assert!(status == 200 && echoed, "{status} {text}");
    assert_eq!(
        (connections(), requests()),
        (3, 4),
        "a new connection, verified with CA2"
    );
    assert_eq!(handshakes("ok").await, 3.0);
    drop(proc);
    discovery.shutdown().await;
}
