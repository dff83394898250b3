//! Several gateways and several discovery URLs.
//!
//! Acceptance 4: two gateway processes share one port (SO_REUSEPORT); one is
//! stopped with SIGTERM under load. Each gateway routes to its own namespace,
//! so `x-served-by` tells which gateway answered: the stopping one routes to
//! app A, the survivor to app B.

use crate::common::Client;
use shared::http1::client::{post, Connection};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::procs::Proc;
use testkit::system::{app_config, gateway_config, ring, status};
use testkit::tempdir::TempDir;

/// Starts a gateway process on `listen` routing `/` to `namespace`, its
/// config written as `<tag>.json` in `dir`.
async fn gateway_proc(
    dir: &TempDir,
    listen: &str,
    discovery: &str,
    namespace: &str,
    tag: &str,
) -> Proc {
    let config = serde_json::json!({
        "listen": listen,
        "admin_listen": "127.0.0.1:0",
        "discovery_url": discovery,
        "routes": [{"prefix": "/", "namespace": namespace}],
        "drain_timeout": "3s",
    });
    // Tests run at once in this process: each pair has its own `dir`.
    let path = dir.join(format!("{tag}.json"));
    std::fs::write(&path, config.to_string()).unwrap();
    Proc::start("gateway", &["--config", path.to_str().unwrap()])
}

/// What one client loop saw.
#[derive(Default, Debug)]
struct Seen {
    /// Answers from the stopping gateway (app A) and from the survivor (app B).
    from_stopping: usize,
    from_survivor: usize,
    /// Failed requests, with why.
    failures: Vec<String>,
    /// Keep-alive connections to the stopping gateway that it closed cleanly.
    closed_by_stopping: usize,
}

/// A keep-alive client that stays on its connection until the gateway closes
/// it, then reconnects. A request on a reused connection that the stopping
/// gateway closed before answering (it was idle between two requests when the
/// gateway stopped) is sent again on a new connection, as HTTP clients do
/// (RFC 9112, section 9.3.1); on the survivor that would be a failure.
async fn keep_alive_client(
    addr: SocketAddr,
    id: usize,
    app_a: String,
    stop: Arc<AtomicBool>,
) -> Seen {
    let mut seen = Seen::default();
    let mut conn: Option<(Connection, Option<bool>)> = None;
    let mut req = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let sent = format!(r#"{{"keep_alive_client": {id}, "n": {n}}}"#);
        post(&mut req, "gw", "/", sent.as_bytes(), "");
        let mut resent = false;
        loop {
            if conn.is_none() {
                match Connection::connect(addr).await {
                    Ok(c) => conn = Some((c, None)),
                    Err(e) => {
                        seen.failures.push(format!("connect: {e}"));
                        break;
                    }
                }
            }
            let (c, to_stopping) = conn.as_mut().unwrap();
            match c.exchange(&req).await {
                Ok(res) => {
                    let by = res.header("x-served-by").unwrap_or_default().to_string();
                    let stopping = by == app_a;
                    if res.status != 200 || res.body != sent.as_bytes() {
                        seen.failures.push(format!("{} from {by}", res.status));
                    } else if stopping {
                        seen.from_stopping += 1;
                    } else {
                        seen.from_survivor += 1;
                    }
                    if to_stopping.is_some_and(|s| s != stopping) {
                        seen.failures
                            .push("one connection answered by both gateways".into());
                    }
                    *to_stopping = Some(stopping);
                    if !res.keep_alive {
                        if stopping {
                            seen.closed_by_stopping += 1;
                        } else {
                            seen.failures
                                .push("the survivor closed a connection".into());
                        }
                        conn = None;
                    }
                    break;
                }
                Err(e) => {
                    let to_stopping = *to_stopping;
                    conn = None;
                    if to_stopping == Some(true) && !resent {
                        seen.closed_by_stopping += 1;
                        resent = true;
                        continue;
                    }
                    seen.failures
                        .push(format!("{e} (to the stopping one: {to_stopping:?})"));
                    break;
                }
            }
        }
    }
    seen
}

/// A client that opens a new connection for every request.
async fn new_connection_client(
    addr: SocketAddr,
    id: usize,
    app_a: String,
    stop: Arc<AtomicBool>,
) -> Seen {
    let mut seen = Seen::default();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let sent = format!(r#"{{"new_connection_client": {id}, "n": {n}}}"#);
        let mut client = Client::new(addr);
        match client.post("/", sent.as_bytes()).await {
            Ok(res) if res.status == 200 && res.body == sent.as_bytes() => {
                if res.header("x-served-by") == Some(app_a.as_str()) {
                    seen.from_stopping += 1;
                } else {
                    seen.from_survivor += 1;
                }
            }
            Ok(res) => seen.failures.push(format!("{}", res.status)),
            Err(e) => seen.failures.push(format!("new connection: {e}")),
        }
    }
    seen
}

/// Discovery, app A behind the gateway to be stopped, app B behind the
/// survivor, both gateways on one port with their rings ready.
struct Pair {
    d: discovery::Handle,
    app_a: app::Handle,
    app_b: app::Handle,
    stopping: Proc,
    survivor: Proc,
    addr: SocketAddr,
    /// The gateways' config files; last, so removed after the gateways stop
    /// (fields drop in order), also when the test fails.
    _configs: TempDir,
}

impl Pair {
    async fn start() -> Pair {
        // One app per gateway: a health check slowed by the load must not empty a ring.
        let d = discovery::spawn(shared::config::DiscoveryConfig {
            timeout_threshold: Duration::from_secs(1),
            unhealthy_threshold: 3,
            ..testkit::discovery_config()
        })
        .await
        .unwrap();
        let mut config = app_config(&d.url());
        config.namespace = "service A".into();
        let app_a = app::spawn(config.clone()).await.unwrap();
        config.namespace = "service B".into();
        let app_b = app::spawn(config).await.unwrap();
        let configs = TempDir::new("gw-cluster");
        let stopping = gateway_proc(&configs, "127.0.0.1:0", &d.url(), "service A", "a").await;
        let addr = stopping.listening("gateway").await;
        let survivor = gateway_proc(&configs, &addr.to_string(), &d.url(), "service B", "b").await;
        assert_eq!(
            survivor.listening("gateway").await,
            addr,
            "both on one port"
        );
        let admins = [
            (
                stopping.listening("gateway admin").await,
                "service A",
                app_a.served_by(),
            ),
            (
                survivor.listening("gateway admin").await,
                "service B",
                app_b.served_by(),
            ),
        ];
        for (admin, ns, member) in admins {
            let admin = format!("http://{admin}");
            testkit::wait_until(
                "each gateway's ring holds its app",
                Duration::from_secs(10),
                || async { ring(&admin, ns).await == vec![member.to_string()] },
            )
            .await;
        }
        Pair {
            d,
            app_a,
            app_b,
            stopping,
            survivor,
            addr,
            _configs: configs,
        }
    }

    async fn stop(self) {
        drop(self.survivor);
        self.app_a.shutdown().await;
        self.app_b.shutdown().await;
        self.d.shutdown().await;
    }
}

/// Sends SIGSTOP or SIGCONT to a process.
fn signal(pid: u32, which: &str) {
    let status = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[async_std::test]
async fn connections_queued_on_a_stopping_gateway_are_served_not_reset() {
    let mut pair = Pair::start().await;
    let a = pair.app_a.served_by().to_string();
    // Frozen, the stopping gateway accepts nothing: the kernel queues on its
    // socket the connections it hashes there, handshake done, request sent.
    signal(pair.stopping.pid(), "-STOP");
    let mut conns = Vec::new();
    for i in 0..24 {
        let mut c = Connection::connect(pair.addr).await.unwrap();
        let sent = format!(r#"{{"queued": {i}}}"#);
        let mut req = Vec::new();
        post(&mut req, "gw", "/", sent.as_bytes(), "");
        c.send(&req).await.unwrap();
        conns.push((c, sent));
    }
    // It wakes up to the SIGTERM with its queue full.
    pair.stopping.terminate();
    signal(pair.stopping.pid(), "-CONT");
    let mut by_stopping = 0;
    for (mut c, sent) in conns {
        let res = c.read().await.unwrap();
        assert_eq!(res.status, 200);
        assert_eq!(res.body, sent.as_bytes());
        by_stopping += usize::from(res.header("x-served-by") == Some(a.as_str()));
    }
    assert!(by_stopping > 0, "none was queued on the stopping gateway");
    let exit = pair.stopping.exited(Duration::from_secs(10)).await;
    eprintln!("{by_stopping} of 24 were queued on the stopping gateway");
    for line in pair
        .stopping
        .output()
        .lines()
        .filter(|l| l.contains("accept queue"))
    {
        eprintln!("{line}");
    }
    assert!(exit.success(), "{exit:?}\n{}", pair.stopping.output());
    pair.stop().await;
}

#[async_std::test]
async fn sigterm_one_of_two_gateways_sharing_a_port_fails_no_request() {
    let pair = Pair::start().await;
    let addr = pair.addr;
    let a = pair.app_a.served_by().to_string();
    let b = pair.app_b.served_by().to_string();
    let mut stopping = pair.stopping;

    // Keep-alive clients until each gateway holds at least four of them.
    let mut on = [0usize; 2];
    let mut conns = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while on[0] < 4 || on[1] < 4 {
        assert!(
            Instant::now() < deadline,
            "connections never spread: {on:?}"
        );
        let mut c = Connection::connect(addr).await.unwrap();
        let mut req = Vec::new();
        post(&mut req, "gw", "/", b"{}", "");
        let res = c.exchange(&req).await.unwrap();
        assert_eq!(res.status, 200);
        let i = usize::from(res.header("x-served-by") != Some(a.as_str()));
        on[i] += 1;
        conns.push(c);
    }
    drop(conns);
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for id in 0..12 {
        let (a, stop) = (a.clone(), stop.clone());
        clients.push(async_std::task::spawn(keep_alive_client(addr, id, a, stop)));
    }
    for id in 0..8 {
        let (a, stop) = (a.clone(), stop.clone());
        clients.push(async_std::task::spawn(new_connection_client(
            addr, id, a, stop,
        )));
    }
    async_std::task::sleep(Duration::from_millis(700)).await;
    stopping.terminate();
    let exit = stopping.exited(Duration::from_secs(10)).await;
    let stopped_at = Instant::now();
    async_std::task::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Seen::default();
    for c in clients {
        let s = c.await;
        all.from_stopping += s.from_stopping;
        all.from_survivor += s.from_survivor;
        all.closed_by_stopping += s.closed_by_stopping;
        all.failures.extend(s.failures);
    }
    eprintln!(
        "answered by the stopping gateway {}, by the survivor {}, closed by the stopping one {}",
        all.from_stopping, all.from_survivor, all.closed_by_stopping
    );
    for line in stopping
        .output()
        .lines()
        .filter(|l| l.contains("accept queue"))
    {
        eprintln!("{line}");
    }
    assert!(exit.success(), "{exit:?}\n{}", stopping.output());
    assert!(
        stopping.output().contains("gateway stopped"),
        "{}",
        stopping.output()
    );
    assert!(
        all.failures.is_empty(),
        "{} failed: {:?}",
        all.failures.len(),
        &all.failures[..all.failures.len().min(8)]
    );
    assert!(all.from_stopping > 20 && all.from_survivor > 20, "{all:?}");
    assert!(all.closed_by_stopping >= 1, "{all:?}");
    // After the stop, the port is the survivor's alone.
    for _ in 0..20 {
        let mut c = Client::new(addr);
        let res = c.post("/", b"{\"after\": 1}").await.unwrap();
        assert_eq!(res.header("x-served-by"), Some(b.as_str()));
    }
    assert!(stopped_at.elapsed() < Duration::from_secs(5));
    drop(pair.survivor);
    pair.app_a.shutdown().await;
    pair.app_b.shutdown().await;
    pair.d.shutdown().await;
}

#[async_std::test]
async fn the_watch_moves_to_the_next_discovery_url_when_one_fails() {
    let first = testkit::discovery().await;
    let second = testkit::discovery().await;
    // Memory stores are not shared: the apps register with the first, and the
    // second learns them by hand.
    let apps = testkit::system::apps(&first.url(), 2).await;
    for a in &apps {
        testkit::client::register(&second.url(), "service A", a.addr().port()).await;
    }
    let members: Vec<String> = apps.iter().map(|a| a.served_by().to_string()).collect();
    // A dead URL first: skipped at once.
    let urls = format!("http://127.0.0.1:1, {},{}/", first.url(), second.url());
    let g = gateway::spawn(gateway_config(&urls)).await.unwrap();
    let admin = g.admin_url();
    testkit::system::wait_ring(&admin, &members, Duration::from_secs(5)).await;
    let watching = || async {
        status(&admin).await["namespaces"][0]["discovery"]["watch_url"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    testkit::wait_until(
        "the watch follows the first live URL",
        Duration::from_secs(5),
        || async { watching().await == first.url() },
    )
    .await;
    assert_eq!(
        status(&admin).await["discovery_urls"],
        serde_json::json!(["http://127.0.0.1:1", first.url(), second.url()])
    );

    let until = Instant::now() + Duration::from_secs(2);
    let traffic = async_std::task::spawn(crate::common::load(g.addr(), 4, until));
    async_std::task::sleep(Duration::from_millis(300)).await;
    first.shutdown().await;
    testkit::wait_until(
        "the watch moved to the second URL",
        Duration::from_secs(5),
        || async { watching().await == second.url() },
    )
    .await;
    let tally = traffic.await;
    assert!(
        tally.failures.is_empty(),
        "{:?}",
        &tally.failures[..tally.failures.len().min(5)]
    );
    assert!(tally.ok > 50, "only {} requests", tally.ok);
    for m in &members {
        assert!(
            tally.served_by.get(m).copied().unwrap_or(0) > 0,
            "{tally:?}"
        );
    }
    testkit::system::wait_ring(&admin, &members, Duration::from_secs(1)).await;
    g.shutdown().await;
    for a in apps {
        a.shutdown().await;
    }
    second.shutdown().await;
}
