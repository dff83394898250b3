//! The gateway console's charts in a real headless Chromium: under POST load
//! the per-ring charts (requests/s, error rate, p99 over the last 15
//! minutes, one line per instance) gain points from `/status/history`, and
//! the client line shows connections and bytes, which `/status` and
//! `/metrics` export too.
//!
//! `CONSOLE_SCREENSHOTS=<dir>` also saves the page under load there as
//! `gateway-console.png` (how docs/images/gateway-console.png is made).

use crate::common::System;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use testkit::browser::Browser;
use testkit::system::{metric, post_once, status};

/// Time for a history sample (every 5 s) and the page's next history fetch (every 5 s).
const LIMIT: Duration = Duration::from_secs(25);

/// Per chart line of ring "service A": chart, instance, points drawn, path.
const CHARTS: &str = r#"(() => ({
  state: document.body.dataset.state,
  lines: [...document.querySelectorAll('section.ring[data-namespace="service A"] figure[data-chart] path')]
    .map((p) => [p.closest("figure").dataset.chart, p.dataset.key, Number(p.dataset.points), p.getAttribute("d")]),
  clients: Object.assign({}, document.getElementById("clients").dataset),
  clientsText: document.getElementById("clients").textContent,
}))()"#;

/// `(chart, instance) -> (points, path)`.
fn lines(view: &Value) -> BTreeMap<(String, String), (u64, String)> {
    view["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            (
                (
                    l[0].as_str().unwrap_or("").to_string(),
                    l[1].as_str().unwrap_or("").to_string(),
                ),
                (
                    l[2].as_u64().unwrap_or(0),
                    l[3].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect()
}

#[async_std::test]
async fn gateway_console_charts_gain_points_under_load_and_show_client_traffic() {
    let system = System::start(3).await;
    let mut members: Vec<String> = system
        .apps
        .iter()
        .map(|a| a.served_by().to_string())
        .collect();
    members.sort();
    let admin = system.admin();
    let browser = Browser::launch();
    let page = browser.open(&format!("{admin}/")).await;
    let first = browser
        .wait_for(
            &page,
            "a line per instance in each of the three charts",
            CHARTS,
            LIMIT,
            |v| {
                let l = lines(v);
                ["requests", "errors", "p99"].iter().all(|chart| {
                    let mut keys: Vec<&String> = l
                        .keys()
                        .filter(|(c, _)| c == chart)
                        .map(|(_, k)| k)
                        .collect();
                    keys.sort();
                    keys == members.iter().collect::<Vec<_>>()
                })
            },
        )
        .await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut traffic = Vec::new();
    for _ in 0..2 {
        let (stop, addr) = (stop.clone(), system.gateway.addr());
        traffic.push(async_std::task::spawn(async move {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let res = post_once(addr, "/echo", br#"{"n": 1}"#).await;
                assert_eq!(res.status, 200);
                sent += 1;
                async_std::task::sleep(Duration::from_millis(5)).await;
            }
            sent
        }));
    }
    // Under load every requests line gains points (a history sample) and changes.
    let before = lines(&first);
    browser
        .wait_for(
            &page,
            "every instance's requests line gains a history point and changes under load",
            CHARTS,
            LIMIT,
            |v| {
                let now = lines(v);
                members.iter().all(|m| {
                    let key = ("requests".to_string(), m.clone());
                    match (before.get(&key), now.get(&key)) {
                        (Some(b), Some(n)) => n.0 >= b.0 + 2 && n.1 != b.1,
                        _ => false,
                    }
                })
            },
        )
        .await;
    // The history behind them: a point with requests per second on each instance.
    let history = testkit::client::get(&format!("{admin}/status/history"))
        .await
        .1;
    let ring = history["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["namespace"] == "service A")
        .unwrap_or_else(|| panic!("{history}"));
    for member in ring["members"].as_array().unwrap() {
        let busy = member["points"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p[1].as_f64().is_some_and(|rps| rps > 0.0));
        assert!(busy, "a point with requests: {member}");
    }
    assert_eq!(history["points_kept"], 180, "{history}");

    // Client connections and bytes: on the page, in /status and on /metrics.
    let shown = browser
        .wait_for(
            &page,
            "the client line shows connections and bytes",
            CHARTS,
            LIMIT,
            |v| {
                let n = |k: &str| {
                    v["clients"][k]
                        .as_str()
                        .and_then(|s| s.parse::<f64>().ok())
                        .unwrap_or(0.0)
                };
                n("connectionsMax") >= 1.0 && n("bytesReceived") > 0.0 && n("bytesSent") > 0.0
            },
        )
        .await;
    assert!(
        shown["clientsText"]
            .as_str()
            .unwrap()
            .starts_with("Client connections:"),
        "{shown}"
    );
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for t in traffic {
        sent += t.await;
    }
    let clients = status(&admin).await["clients"].clone();
    let received = clients["bytes_received"].as_u64().unwrap();
    let written = clients["bytes_sent"].as_u64().unwrap();
    // Each request carries at least its 8-byte body; each answer at least a status line.
    assert!(received >= sent * 8, "{clients} after {sent} requests");
    assert!(written >= sent * 12, "{clients} after {sent} requests");
    assert!(
        clients["connections_max"].as_i64().unwrap() >= 1,
        "{clients}"
    );
    assert!(
        metric(&admin, "gateway_client_bytes_received_total").await >= received as f64,
        "the counter only grows"
    );
    assert!(metric(&admin, "gateway_client_bytes_sent_total").await >= written as f64);
    assert!(metric(&admin, "gateway_client_connections_max").await >= 1.0);

    let png = browser.screenshot(&page, 1280).await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG: {} bytes", png.len());
    if let Some(dir) = std::env::var_os("CONSOLE_SCREENSHOTS") {
        std::fs::write(std::path::Path::new(&dir).join("gateway-console.png"), &png).unwrap();
    }
    drop(browser);
    system.stop().await;
}
