//! SIGHUP reloads the gateway's config file: the gateway binary
//! as a child process, a temp config file, real discovery and apps.

use super::common::load;
use nix::sys::signal::Signal;
use serde_json::json;
use shared::http1::client::Response;
use std::time::{Duration, Instant};
use testkit::procs::Proc;
use testkit::system::{app_config, wait_ring};
use testkit::tempdir::TempDir;

/// A config file in a fresh temp dir, removed on drop (also when the test
/// fails); rewritten by `write`.
struct ConfigFile {
    path: std::path::PathBuf,
    _dir: TempDir,
}

impl ConfigFile {
    fn new(name: &str) -> ConfigFile {
        let dir = TempDir::new(&format!("gateway-reload-{name}"));
        ConfigFile {
            path: dir.join("gateway.json"),
            _dir: dir,
        }
    }

    fn write(&self, text: &str) {
        // Write then rename, as an editor or a deploy tool does: never half a file.
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

fn config(discovery_url: &str, routes: serde_json::Value) -> String {
    json!({
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
        "discovery_url": discovery_url,
        "routes": routes,
        "connect_timeout": "500ms",
        "upstream_timeout": "1s",
        "request_deadline": "5s",
        "drain_timeout": "3s",
    })
    .to_string()
}

/// One JSON POST on a fresh connection.
async fn post_via(addr: std::net::SocketAddr, path: &str) -> Response {
    testkit::system::post_once(addr, path, br#"{"probe": true}"#).await
}

/// Starts the gateway binary on `file` (and `flags`); answers it with its
/// address and admin URL.
async fn gateway(file: &ConfigFile, flags: &[&str]) -> (Proc, std::net::SocketAddr, String) {
    let mut args = vec!["--config", file.path()];
    args.extend_from_slice(flags);
    let proc = Proc::start("gateway", &args);
    let addr = proc.listening("gateway").await;
    let admin = format!("http://{}", proc.listening("gateway admin").await);
    (proc, addr, admin)
}

#[async_std::test]
async fn sighup_with_a_changed_route_under_load_fails_no_request() {
    let discovery = testkit::discovery().await;
    let a = testkit::system::apps(&discovery.url(), 2).await;
    let b = app::spawn(shared::config::AppConfig {
        namespace: "service B".into(),
        ..app_config(&discovery.url())
    })
    .await
    .unwrap();
    let file = ConfigFile::new("route");
    // The file names a discovery nobody runs; the flag, which beats the file
    // at start and after every reload, names the real one: the new
    // namespace's watch only finds its instances if the flag still wins.
    let nowhere = "http://127.0.0.1:9";
    file.write(&config(
        nowhere,
        json!([{"prefix": "/", "namespace": "service A"}]),
    ));
    let url = discovery.url();
    let (mut proc, addr, admin) = gateway(&file, &["--discovery-url", &url]).await;
    let members: Vec<String> = a.iter().map(|a| a.served_by().to_string()).collect();
    wait_ring(&admin, &members, Duration::from_secs(5)).await;

    let until = Instant::now() + Duration::from_secs(3);
    let running = async_std::task::spawn(load(addr, 4, until));
    async_std::task::sleep(Duration::from_millis(700)).await;
    let before = post_via(addr, "/b/x").await;
    assert_eq!(before.status, 200);
    assert_ne!(
        before.header("x-served-by"),
        Some(b.served_by()),
        "before the reload /b is service A's"
    );
    file.write(&config(
        nowhere,
        json!([
            {"prefix": "/", "namespace": "service A"},
            {"prefix": "/b", "namespace": "service B"},
        ]),
    ));
    let signalled = Instant::now();
    proc.signal(Signal::SIGHUP);
    let in_force = loop {
        let r = post_via(addr, "/b/x").await;
        if r.status == 200 && r.header("x-served-by") == Some(b.served_by()) {
            break signalled.elapsed();
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "the new route never took: {} {}\n{}",
            r.status,
            String::from_utf8_lossy(&r.body),
            proc.output()
        );
        async_std::task::sleep(Duration::from_millis(10)).await;
    };
    let tally = running.await;
    eprintln!(
        "new route in force {in_force:?} after SIGHUP; {} requests under load, {} failed",
        tally.ok,
        tally.failures.len()
    );
    assert!(
        tally.failures.is_empty(),
        "{} failed of {}: {:?}",
        tally.failures.len(),
        tally.ok + tally.failures.len(),
        &tally.failures[..tally.failures.len().min(5)]
    );
    assert!(
        tally.ok > 100,
        "too little load to mean anything: {}",
        tally.ok
    );
    assert!(
        in_force < Duration::from_secs(1),
        "the new route took {in_force:?}"
    );
    proc.wait_for_line("configuration reloaded", Duration::from_secs(2))
        .await;
    let reloads =
        testkit::system::metric(&admin, r#"gateway_config_reloads_total{result="ok"}"#).await;
    assert_eq!(reloads, 1.0);
    // The old ring survived: service A's instances kept serving /.
    assert_eq!(testkit::system::ring(&admin, "service A").await.len(), 2);

    proc.terminate();
    assert!(proc.exited(Duration::from_secs(10)).await.success());
    b.shutdown().await;
    for a in a {
        a.shutdown().await;
    }
    discovery.shutdown().await;
}

#[async_std::test]
async fn a_broken_config_on_sighup_is_refused_and_the_old_one_kept() {
    let discovery = testkit::discovery().await;
    let apps = testkit::system::apps(&discovery.url(), 1).await;
    let file = ConfigFile::new("broken");
    file.write(&config(
        &discovery.url(),
        json!([{"prefix": "/api", "namespace": "service A"}]),
    ));
    let (proc, addr, admin) = gateway(&file, &[]).await;
    wait_ring(
        &admin,
        &[apps[0].served_by().to_string()],
        Duration::from_secs(5),
    )
    .await;

    // Not JSON at all, then JSON that does not validate (no route).
    let broken = [
        r#"{"routes": [{"prefix": "/", "namespace": "#.to_string(),
        config(&discovery.url(), json!([])),
    ];
    for (i, text) in broken.iter().enumerate() {
        file.write(text);
        proc.signal(Signal::SIGHUP);
        let refusals = i as f64 + 1.0;
        testkit::wait_until("the reload is refused", Duration::from_secs(5), || async {
            testkit::system::metric(&admin, r#"gateway_config_reloads_total{result="error"}"#).await
                == refusals
        })
        .await;
        let r = post_via(addr, "/api/x").await;
        assert_eq!(r.status, 200, "the old routes still serve");
        let r = post_via(addr, "/other").await;
        assert_eq!(
            r.status,
            404,
            "and only they: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let line = proc
        .wait_for_line("configuration refused", Duration::from_secs(2))
        .await;
    assert!(line.contains("config"), "the error is named: {line}");
    proc.wait_for_line(
        "routes must name at least one prefix",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        testkit::system::metric(&admin, r#"gateway_config_reloads_total{result="ok"}"#).await,
        0.0
    );
    assert_eq!(testkit::system::ring(&admin, "service A").await.len(), 1);
    proc.terminate();
    for a in apps {
        a.shutdown().await;
    }
    discovery.shutdown().await;
}
