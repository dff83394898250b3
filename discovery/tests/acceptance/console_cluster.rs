//! Discovery's console in a real headless Chromium, beyond its tables: the
//! per-namespace charts gain points from `/api/trends` while a gateway
//! carries load, maintenance switched from the page (with the registration
//! token typed into it) takes an instance out of a running gateway's ring
//! and puts it back, and the cluster view shows a SIGKILLed replica down
//! within 5 s, with the gateway that watches it named.
//!
//! `CONSOLE_SCREENSHOTS=<dir>` also saves the page under load there as
//! `discovery-console.png` (how docs/images/discovery-console.png is made).

use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::browser::{Browser, Page};
use testkit::etcd::Cluster;
use testkit::procs::Proc;
use testkit::system::{gateway_config, post_once, ring, wait_ring};

const NS: &str = "service A";
const TOKEN: &str = "console-test-token";
/// Time for a trends sample (every 5 s) and the page's next trends fetch (every 5 s).
const LIMIT: Duration = Duration::from_secs(25);

/// The "available" chart of namespace NS: per line, its key, points and path;
/// the maintenance action line; per row, address, maintenance cell and button.
const VIEW: &str = r#"(() => {
  const section = document.querySelector('section.namespace[data-namespace="service A"]');
  const action = document.getElementById("action");
  return {
    lines: section ? [...section.querySelectorAll('figure[data-chart="available"] path')]
      .map((p) => [p.dataset.key, Number(p.dataset.points), p.getAttribute("d")]) : [],
    action: action.hidden ? null : [action.dataset.result, action.textContent],
    rows: [...document.querySelectorAll("tr[data-instance]")].map((r) =>
      [r.dataset.instance, r.cells[6].textContent, r.querySelector("button.maintenance-toggle").dataset.action]),
  };
})()"#;

fn line(view: &Value, key: &str) -> Option<(u64, String)> {
    view["lines"]
        .as_array()?
        .iter()
        .find(|l| l[0] == key)
        .map(|l| {
            (
                l[1].as_u64().unwrap_or(0),
                l[2].as_str().unwrap_or("").to_string(),
            )
        })
}

fn row<'a>(view: &'a Value, address: &str) -> Option<&'a Value> {
    view["rows"].as_array()?.iter().find(|r| r[0] == address)
}

/// Clicks the maintenance button of `address`'s row, as a user would.
async fn click(browser: &Browser, page: &Page, address: &str) {
    let clicked = browser
        .evaluate(
            page,
            &format!(
                r#"(() => {{ const b = document.querySelector('tr[data-instance="{address}"] button.maintenance-toggle');
                   if (!b) return false; b.click(); return true; }})()"#
            ),
        )
        .await
        .unwrap();
    assert_eq!(clicked, Value::Bool(true), "no button for {address}");
}

#[async_std::test]
async fn discovery_console_charts_under_load_and_switches_maintenance_out_of_a_gateway_ring() {
    let d = discovery::spawn(shared::config::DiscoveryConfig {
        registration_token: Some(TOKEN.into()),
        ..testkit::discovery_config()
    })
    .await
    .unwrap();
    let base = d.url();
    let mut apps = testkit::system::apps_with_token(&base, 3, TOKEN).await;
    let mut members: Vec<String> = apps.iter().map(|a| a.served_by().to_string()).collect();
    members.sort();
    let gateway = gateway::spawn(gateway_config(&base)).await.unwrap();
    let admin = gateway.admin_url();
    wait_ring(&admin, &members, Duration::from_secs(5)).await;

    let browser = Browser::launch();
    let page = browser.open(&format!("{base}/")).await;
    let first = browser
        .wait_for(
            &page,
            "the namespace's chart with its available and registered lines",
            VIEW,
            LIMIT,
            |v| line(v, "available").is_some() && line(v, "registered").is_some(),
        )
        .await;

    // Load through the gateway while the charts are watched.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, addr) = (stop.clone(), gateway.addr());
        async_std::task::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let res = post_once(addr, "/echo", br#"{"n": 1}"#).await;
                assert!(res.status == 200 || res.status == 503, "{}", res.status);
                async_std::task::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let (points, path) = line(&first, "available").unwrap();
    let charted = browser
        .wait_for(
            &page,
            "the available line gains points from /api/trends and moves",
            VIEW,
            LIMIT,
            |v| line(v, "available").is_some_and(|(n, d)| n >= points + 2 && d != path),
        )
        .await;
    let (_, trends) = testkit::client::get(&format!("{base}/api/trends")).await;
    let newest = trends["points"]
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert_eq!(
        newest["namespaces"][NS],
        serde_json::json!([3, 3]),
        "{trends}"
    );
    assert!(line(&charted, "registered").is_some_and(|(n, _)| n >= points + 2));

    let out = apps[0].served_by().to_string();
    // Without the token: refused, and the ring keeps every instance.
    click(&browser, &page, &out).await;
    let refused = browser
        .wait_for(
            &page,
            "the page says the change was refused",
            VIEW,
            LIMIT,
            |v| v["action"][0] == "error",
        )
        .await;
    assert!(
        refused["action"][1]
            .as_str()
            .unwrap()
            .contains("registration token"),
        "{refused}"
    );
    assert_eq!(ring(&admin, NS).await.len(), 3);

    // With the token typed in the page: out of the gateway's ring.
    browser
        .evaluate(
            &page,
            &format!(r#"document.getElementById("token").value = "{TOKEN}""#),
        )
        .await
        .unwrap();
    click(&browser, &page, &out).await;
    browser
        .wait_for(
            &page,
            "the row shows maintenance and offers to end it",
            VIEW,
            LIMIT,
            |v| {
                v["action"][0] == "ok"
                    && row(v, &out)
                        .is_some_and(|r| r[1].as_str().unwrap().starts_with("yes") && r[2] == "end")
            },
        )
        .await;
    let rest: Vec<String> = members.iter().filter(|m| **m != out).cloned().collect();
    wait_ring(&admin, &rest, Duration::from_secs(5)).await;

    if let Some(dir) = std::env::var_os("CONSOLE_SCREENSHOTS") {
        let png = browser.screenshot(&page, 1280).await;
        assert!(png.starts_with(b"\x89PNG"));
        std::fs::write(
            std::path::Path::new(&dir).join("discovery-console.png"),
            &png,
        )
        .unwrap();
    }

    // And back into it.
    click(&browser, &page, &out).await;
    browser
        .wait_for(&page, "the row is out of maintenance", VIEW, LIMIT, |v| {
            row(v, &out).is_some_and(|r| r[1] == "no" && r[2] == "start")
        })
        .await;
    wait_ring(&admin, &members, Duration::from_secs(5)).await;
    // The page never kept the token anywhere but its field.
    let kept = browser
        .evaluate(
            &page,
            "JSON.stringify([localStorage.length, sessionStorage.length, document.cookie])",
        )
        .await
        .unwrap();
    assert_eq!(kept, Value::String(r#"[0,0,""]"#.into()));

    stop.store(true, Ordering::Relaxed);
    traffic.await;
    drop(browser);
    gateway.shutdown().await;
    for a in apps.drain(..) {
        a.shutdown().await;
    }
    d.shutdown().await;
}

/// A port free now (for a replica's `advertise_url`, which must be known before it starts).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A discovery replica as a child process on `store`, advertising its URL.
async fn replica(store: &str, id: &str, dir: &std::path::Path) -> (Proc, String) {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let config = serde_json::json!({
        "listen": format!("127.0.0.1:{port}"),
        "store": store,
        "replica_id": id,
        "advertise_url": url,
        "health_check_time_interval": "200ms",
        "timeout_threshold": "100ms",
        "watch_keepalive": "1s",
        "drain_timeout": "1s",
    });
    let file = dir.join(format!("{id}.json"));
    std::fs::write(&file, config.to_string()).unwrap();
    let proc = Proc::start("discovery", &["--config", file.to_str().unwrap()]);
    let addr = proc.listening("discovery").await;
    assert_eq!(addr.port(), port);
    (proc, url)
}

/// Per replica row: id, state, what "watched by" says; and the etcd line.
const CLUSTER: &str = r##"(() => {
  const etcd = document.getElementById("etcd");
  return {
    replicas: [...document.querySelectorAll("#cluster tr[data-replica]")].map((r) =>
      [r.dataset.replica, r.dataset.state, r.cells[3].textContent]),
    etcd: etcd ? [etcd.dataset.connected, etcd.dataset.writable, etcd.textContent] : null,
    members: [...document.querySelectorAll("#cluster tr[data-member]")].map((r) => r.cells[1].textContent),
  };
})()"##;

fn replica_row<'a>(view: &'a Value, id: &str) -> Option<&'a Value> {
    view["replicas"].as_array()?.iter().find(|r| r[0] == id)
}

#[async_std::test]
async fn discovery_console_shows_a_killed_replica_down_within_five_seconds() {
    let Some(etcd) = Cluster::start(1).await else {
        return;
    };
    let dir = testkit::tempdir::TempDir::new("console-cluster");
    let store = etcd.store_url("console");
    let (_p1, b1) = replica(&store, "c1", dir.path()).await;
    let (mut p2, b2) = replica(&store, "c2", dir.path()).await;
    let peer = testkit::peer::Peer::start().await;
    testkit::client::register(&b2, NS, peer.port()).await;
    // A gateway following replica c2 only: c2's row names it.
    let gateway = gateway::spawn(gateway_config(&b2)).await.unwrap();
    let admin = gateway.admin_url();

    let browser = Browser::launch();
    let page = browser.open(&format!("{b1}/")).await;
    let both = browser
        .wait_for(
            &page,
            "both replicas up, c2 watched by the gateway, etcd connected",
            CLUSTER,
            LIMIT,
            |v| {
                replica_row(v, "c1").is_some_and(|r| r[1] == "up")
                    && replica_row(v, "c2")
                        .is_some_and(|r| r[1] == "up" && r[2].as_str().unwrap().contains(&admin))
                    && v["etcd"][0] == "true"
                    && v["etcd"][1] == "true"
            },
        )
        .await;
    assert_eq!(both["members"], serde_json::json!(["yes"]), "{both}");
    let c2 = replica_row(&both, "c2").unwrap()[2]
        .as_str()
        .unwrap()
        .to_string();
    assert!(c2.contains(NS), "the namespace it watches: {c2}");

    p2.kill();
    let killed = Instant::now();
    let down = browser
        .wait_for(
            &page,
            "the killed replica shown down",
            CLUSTER,
            Duration::from_secs(5),
            |v| replica_row(v, "c2").is_some_and(|r| r[1] == "down"),
        )
        .await;
    let took = killed.elapsed();
    assert!(took <= Duration::from_secs(5), "{took:?}");
    assert_eq!(replica_row(&down, "c1").unwrap()[1], "up", "{down}");

    // Once its lease ends it has left the store, and is still listed down.
    let (_, cluster) = testkit::client::get(&format!("{b1}/api/cluster")).await;
    let gone = cluster["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["replica_id"] == "c2")
        .cloned()
        .unwrap_or_else(|| panic!("{cluster}"));
    assert_eq!(gone["state"], "down", "{cluster}");

    drop(browser);
    gateway.shutdown().await;
    peer.stop().await;
}
