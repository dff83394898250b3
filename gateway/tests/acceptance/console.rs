//! The gateway's half: the admin console in a real
//! headless Chromium lists each ring's instances with request rates computed
//! from successive `/status` polls, follows an instance leaving without a
//! reload, and keeps its last view, marked stale, when the gateway stops. Its
//! Idempotency-Key panel counts each route's keyed requests.

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
  keys: document.getElementById("idempotency").textContent,
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
    let first = browser
        .wait_for(
            &page,
            "the console lists the ring's three instances and a connected watch",
            VIEW,
            LIMIT,
            |v| v["state"] == "live" && upstreams(v) == members && v["watch"][0] == "connected",
        )
        .await;
    assert!(
        first["keys"]
            .as_str()
            .is_some_and(|t| t.contains("No route honours Idempotency-Key.")),
        "no route has the rule, and the panel says so: {first}"
    );
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

/// The Idempotency-Key panel: the store line, and per route that honours
/// keys each event's count, with the route prefix as text.
const KEYS: &str = r#"(() => {
  const panel = document.getElementById("idempotency");
  const store = document.getElementById("idempotency-store");
  return {
    state: document.body.dataset.state,
    hidden: panel.hidden,
    markup: panel.querySelectorAll("b").length,
    store: store ? Object.assign({}, store.dataset) : null,
    rows: [...panel.querySelectorAll("tr[data-route]")].map((r) => ({
      route: r.dataset.route,
      shown: r.cells[0].textContent,
      rule: r.cells[1].textContent,
      counts: Object.fromEntries([...r.querySelectorAll("td[data-event]")].map((c) => [c.dataset.event, c.textContent])),
    })),
  };
})()"#;

/// A route prefix with markup in it: the page must show it as text.
const MARKUP_PREFIX: &str = "/<b>bold</b>";

/// Routes: `/` ignores keys, `/pay` and [`MARKUP_PREFIX`] honour them.
fn keyed_routes(c: &mut shared::config::GatewayConfig) {
    use shared::config::{IdempotencyConfig, IdempotencyMode, RouteConfig};
    let route = |prefix: &str, mode| RouteConfig {
        prefix: prefix.into(),
        namespace: "service A".into(),
        idempotency: IdempotencyConfig {
            mode,
            ..IdempotencyConfig::default()
        },
        ..RouteConfig::default()
    };
    c.routes = vec![
        route("/", IdempotencyMode::Off),
        route("/pay", IdempotencyMode::Honor),
        route(MARKUP_PREFIX, IdempotencyMode::Honor),
    ];
    // Room for a busy machine: a keyed try that timed out would be kept as
    // outcome unknown, not executed.
    c.upstream_timeout = Duration::from_secs(10);
    c.request_deadline = Duration::from_secs(20);
}

/// One keyed POST to `/pay` on a new connection; its status.
async fn pay(addr: std::net::SocketAddr, key: &str, body: &[u8]) -> u16 {
    let mut req = Vec::new();
    let fields = format!("idempotency-key: {key}\r\n");
    shared::http1::client::post(&mut req, "gw", "/pay", body, &fields);
    let mut c = shared::http1::client::Connection::connect(addr)
        .await
        .unwrap();
    c.exchange(&req).await.unwrap().status
}

/// The repeat of a key: its replay. The gateway settles a record after the
/// answer's last byte, so a repeat sent at once may still find it in flight
/// (409, Retry-After: 1); a client would send it again, and so does this.
async fn replay(addr: std::net::SocketAddr, key: &str, body: &[u8]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match pay(addr, key, body).await {
            200 => return,
            409 if std::time::Instant::now() < deadline => {
                async_std::task::sleep(Duration::from_millis(100)).await
            }
            other => panic!("the repeat of {key} answered {other}"),
        }
    }
}

fn key_row<'a>(view: &'a Value, route: &str) -> Option<&'a Value> {
    view["rows"]
        .as_array()?
        .iter()
        .find(|r| r["route"] == route)
}

#[async_std::test]
async fn gateway_console_shows_idempotency_keys_per_route_as_text() {
    let System {
        discovery,
        apps,
        gateway,
    } = System::start_with(2, keyed_routes).await;
    let addr = gateway.addr();
    assert_eq!(pay(addr, "k-console", br#"{"amount": 5}"#).await, 200);
    replay(addr, "k-console", br#"{"amount": 5}"#).await;
    assert_eq!(pay(addr, "k-console", br#"{"amount": 500}"#).await, 422);

    let browser = Browser::launch();
    let page = browser.open(&format!("{}/", gateway.admin_url())).await;
    let shown = browser
        .wait_for(
            &page,
            "the panel's /pay row shows executed 1, replayed 1, mismatch 1",
            KEYS,
            LIMIT,
            |v| {
                key_row(v, "/pay").is_some_and(|r| {
                    r["counts"]["executed"] == "1"
                        && r["counts"]["replayed"] == "1"
                        && r["counts"]["mismatch"] == "1"
                })
            },
        )
        .await;
    assert_eq!(shown["state"], "live", "{shown}");
    assert_eq!(shown["hidden"], false, "{shown}");
    let routes: Vec<&str> = shown["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["route"].as_str())
        .collect();
    assert_eq!(
        routes,
        ["/pay", MARKUP_PREFIX],
        "only routes that honour keys: {shown}"
    );
    let pay_row = key_row(&shown, "/pay").unwrap();
    assert_eq!(pay_row["rule"], "honor: POST, PATCH", "{shown}");
    assert_eq!(pay_row["counts"]["outcome_unknown"], "0", "{shown}");
    let marked = key_row(&shown, MARKUP_PREFIX).unwrap();
    assert_eq!(
        marked["shown"], MARKUP_PREFIX,
        "the prefix is text: {shown}"
    );
    assert_eq!(marked["counts"]["keyed"], "0", "{shown}");
    assert_eq!(
        shown["markup"], 0,
        "no element made from the prefix: {shown}"
    );
    assert_eq!(shown["store"]["store"], "memory", "{shown}");
    assert_eq!(shown["store"]["failOpen"], "false", "{shown}");
    assert_eq!(shown["store"]["entries"], "1", "one key stored: {shown}");

    drop(browser);
    gateway.shutdown().await;
    for a in apps {
        a.shutdown().await;
    }
    discovery.shutdown().await;
}
