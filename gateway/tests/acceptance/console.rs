//! The gateway's half: the admin console in a real
//! headless Chromium lists each ring's instances with request rates computed
//! from successive `/status` polls, follows an instance leaving without a
//! reload, and keeps its last view, marked stale, when the gateway stops.

use crate::common::System;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use testkit::browser::Browser;
use testkit::system::post_once;

const LIMIT: Duration = Duration::from_secs(15);

/// The page's state, and per member row: upstream, the req/s cell, the rate as a number.
const VIEW: &str = r#"(() => ({
  state: document.body.dataset.state,
  banner: document.getElementById("banner").hidden ? "" : document.getElementById("banner").textContent,
  watch: [...document.querySelectorAll("[data-watch]")].map((p) => p.dataset.watch),
  rows: [...document.querySelectorAll("tr[data-upstream]")].map((r) =>
    [r.dataset.namespace, r.cells[0].textContent, r.cells[1].textContent, r.dataset.rate]),
}))()"#;

fn upstreams(view: &Value) -> Vec<String> {
    let mut got: Vec<String> = view["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r[0] == "service A")
        .map(|r| r[1].as_str().unwrap_or("").to_string())
        .collect();
    got.sort();
    got
}

fn busiest(view: &Value) -> f64 {
    view["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r[3].as_str()?.parse::<f64>().ok())
        .fold(0.0, f64::max)
}

#[async_std::test]
async fn gateway_console_lists_the_ring_and_updates_when_an_instance_leaves() {
    let System {
        discovery,
        mut apps,
        gateway,
    } = System::start(3).await;
    let mut members: Vec<String> = apps.iter().map(|a| a.served_by().to_string()).collect();
    members.sort();
    let browser = Browser::launch();
    let page = browser.open(&format!("{}/", gateway.admin_url())).await;
    browser
        .wait_for(
            &page,
            "the console lists the ring's three instances and a connected watch",
            VIEW,
            LIMIT,
            |v| v["state"] == "live" && upstreams(v) == members && v["watch"][0] == "connected",
        )
        .await;
    browser
        .evaluate(&page, "window.__sameDocument = true")
        .await
        .unwrap();

    // Traffic: the page computes a request rate from two polls' counters.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, addr) = (stop.clone(), gateway.addr());
        async_std::task::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let res = post_once(addr, "/echo", br#"{"n": 1}"#).await;
                assert_eq!(res.status, 200);
                async_std::task::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let busy = browser
        .wait_for(
            &page,
            "the console shows a request rate",
            VIEW,
            LIMIT,
            |v| busiest(v) > 1.0,
        )
        .await;
    stop.store(true, Ordering::Relaxed);
    traffic.await;
    assert!(
        busy["rows"].as_array().unwrap().iter().any(|r| r[2]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .is_ok_and(|n| n > 1.0)),
        "the req/s cell shows it: {busy}"
    );

    let leaving = apps.pop().unwrap();
    let gone = leaving.served_by().to_string();
    leaving.shutdown().await;
    members.retain(|m| *m != gone);
    browser
        .wait_for(
            &page,
            "the console drops the instance that left",
            VIEW,
            LIMIT,
            |v| v["state"] == "live" && upstreams(v) == members,
        )
        .await;

    gateway.shutdown().await;
    let stale = browser
        .wait_for(
            &page,
            "the console marks its view stale",
            VIEW,
            LIMIT,
            |v| v["state"] == "stale",
        )
        .await;
    assert_eq!(upstreams(&stale), members, "the last view is kept: {stale}");
    assert!(
        stale["banner"]
            .as_str()
            .unwrap()
            .contains("last view, from"),
        "{stale}"
    );
    let same = browser
        .evaluate(&page, "window.__sameDocument === true")
        .await
        .unwrap();
    assert_eq!(same, Value::Bool(true), "the page was reloaded");

    drop(browser);
    for a in apps {
        a.shutdown().await;
    }
    discovery.shutdown().await;
}

/// Passive health on the console: an instance that cut its answers short is
/// shown cooling down, with its wrong answers by kind.
#[async_std::test]
async fn gateway_console_shows_an_instance_cooled_down_by_its_wrong_answers() {
    let (discovery, raws, gateway) =
        crate::common::raw_system(vec![testkit::raw::Script::HalfAnswer], |c| {
            c.passive_health_failures = 2;
            c.connect_cooldown = Duration::from_secs(60);
        })
        .await;
    for _ in 0..2 {
        assert_eq!(post_once(gateway.addr(), "/x", b"{}").await.status, 502);
    }
    let browser = Browser::launch();
    let page = browser.open(&format!("{}/", gateway.admin_url())).await;
    let state = r#"[...document.querySelectorAll("tr[data-upstream]")].map((r) => r.cells[r.cells.length - 1].textContent)"#;
    let shown = browser
        .wait_for(
            &page,
            "the console shows the instance cooling down with its wrong answers",
            state,
            LIMIT,
            |v| {
                v[0].as_str()
                    .is_some_and(|s| s.contains("cooling down") && s.contains("cut short 2"))
            },
        )
        .await;
    assert_eq!(shown.as_array().map(Vec::len), Some(1), "{shown}");
    drop(raws);
    gateway.shutdown().await;
    discovery.shutdown().await;
}
