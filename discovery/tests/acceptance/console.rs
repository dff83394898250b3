//! Discovery's half: the live console in a real
//! headless Chromium lists the live instances, follows changes without a
//! reload, and keeps its last view, marked stale, while discovery is away.

use serde_json::Value;
use std::time::Duration;
use testkit::browser::{Browser, Page};
use testkit::client::{call, register};
use testkit::peer::Peer;

const NS: &str = "service A";
const LIMIT: Duration = Duration::from_secs(15);

/// What a user sees: the page's state, the banner's text if shown, and per
/// row its namespace, then the cells address, status, time in state, last
/// check, latency and maintenance.
const VIEW: &str = r#"(() => {
  const banner = document.getElementById("banner");
  return {
    state: document.body.dataset.state,
    stale_class: document.body.classList.contains("stale"),
    banner: banner.hidden ? "" : banner.textContent,
    rows: [...document.querySelectorAll("tr[data-instance]")].map((r) =>
      [r.dataset.namespace, r.cells[0].textContent, r.cells[1].textContent,
       r.cells[2].textContent, r.cells[3].textContent, r.cells[4].textContent,
       r.cells[6].textContent]),
  };
})()"#;

const HOSTILE: &str = r#"<img src=x onerror="document.title='owned'">"#;

/// The namespace headings, how many images the page holds, and its title.
const HOSTILE_VIEW: &str = r#"(() => ({
  headings: [...document.querySelectorAll("section h2")].map((h) => h.textContent),
  images: document.querySelectorAll("img").length,
  title: document.title,
}))()"#;

/// `(address, status)` per row of namespace "service A".
fn rows(view: &Value) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = view["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r[0] == NS)
        .map(|r| {
            (
                r[1].as_str().unwrap_or("").to_string(),
                r[2].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// The row of `address`, if shown.
fn row<'a>(view: &'a Value, address: &str) -> Option<&'a Value> {
    view["rows"]
        .as_array()?
        .iter()
        .find(|r| r[0] == NS && r[1] == address)
}

fn expect(addrs: &[&str], status: &str) -> Vec<(String, String)> {
    let mut want: Vec<(String, String)> = addrs
        .iter()
        .map(|a| (a.to_string(), status.to_string()))
        .collect();
    want.sort();
    want
}

/// Marks the document, so a later check can tell it was never reloaded.
async fn mark(browser: &Browser, page: &Page) {
    browser
        .evaluate(page, "window.__sameDocument = true")
        .await
        .unwrap();
}

async fn still_marked(browser: &Browser, page: &Page) {
    let same = browser
        .evaluate(page, "window.__sameDocument === true")
        .await
        .unwrap();
    assert_eq!(same, Value::Bool(true), "the page was reloaded");
}

#[async_std::test]
async fn discovery_console_lists_live_instances_and_updates_when_one_is_killed() {
    let d = testkit::discovery().await;
    let base = d.url();
    let mut apps = testkit::system::apps(&base, 3).await;
    let addrs: Vec<String> = apps.iter().map(|a| a.served_by().to_string()).collect();
    // A namespace is whatever a registrant sends: the console must show it as text.
    let hostile = Peer::start().await;
    register(&base, HOSTILE, hostile.port()).await;
    let browser = Browser::launch();
    let page = browser.open(&format!("{base}/")).await;
    browser
        .wait_for(
            &page,
            "the hostile namespace is shown as text, and no markup of it ran",
            HOSTILE_VIEW,
            LIMIT,
            |v| {
                v["headings"]
                    .as_array()
                    .is_some_and(|h| h.iter().any(|h| h == HOSTILE))
            },
        )
        .await;
    let hostile_view = browser.evaluate(&page, HOSTILE_VIEW).await.unwrap();
    assert_eq!(hostile_view["images"], 0, "{hostile_view}");
    assert_eq!(hostile_view["title"], "discovery", "{hostile_view}");
    let all: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let want = expect(&all, "available");
    browser
        .wait_for(
            &page,
            "the console lists the three instances as available",
            VIEW,
            LIMIT,
            |v| v["state"] == "live" && rows(v) == want,
        )
        .await;
    mark(&browser, &page).await;
    // The page follows a watch stream per namespace (not only its poll).
    testkit::wait_until("the page holds a watch stream", LIMIT, || async {
        let (_, text) = testkit::client::get(&format!("{base}/metrics")).await;
        text.as_str()
            .unwrap_or_default()
            .lines()
            .any(|l| l == "discovery_watchers 2")
    })
    .await;

    // Time in state, last check age and latency, and maintenance, as text.
    let (status, answer) = call(
        "PUT",
        &format!("{base}/api/maintenance"),
        Some(&format!(
            r#"{{"namespace": "{NS}", "host": "127.0.0.1", "port": {}}}"#,
            apps[0].addr().port()
        )),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let shown = browser
        .wait_for(
            &page,
            "the console shows the instance in maintenance",
            VIEW,
            LIMIT,
            |v| row(v, &addrs[0]).is_some_and(|r| r[6].as_str().unwrap().starts_with("yes")),
        )
        .await;
    for r in shown["rows"].as_array().unwrap() {
        let cells: Vec<&str> = r
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert!(cells[3].ends_with('s'), "time in state: {r}");
        assert!(cells[4].ends_with(" ago"), "last check age: {r}");
        assert!(cells[5].ends_with(" ms"), "last check latency: {r}");
    }
    assert_eq!(
        rows(&shown),
        want,
        "maintenance keeps the health status shown"
    );

    // One instance fails its health checks (as a hung process would); another is stopped.
    let (status, knobs) = call(
        "PUT",
        &format!("{}/chaos", apps[1].admin_url()),
        Some(r#"{"health": "fail"}"#),
    )
    .await;
    assert_eq!(status, 200, "{knobs}");
    let stopped = apps.pop().unwrap();
    stopped.shutdown().await;

    let mut want = expect(&[&addrs[0]], "available");
    want.extend(expect(&[&addrs[1]], "unavailable"));
    want.sort();
    let seen = browser
        .wait_for(
            &page,
            "the console shows one instance unavailable and the stopped one gone",
            VIEW,
            LIMIT,
            |v| rows(v) == want,
        )
        .await;
    assert_eq!(seen["state"], "live", "{seen}");
    still_marked(&browser, &page).await;

    drop(browser);
    for a in apps {
        a.shutdown().await;
    }
    hostile.stop().await;
    d.shutdown().await;
}

#[async_std::test]
async fn discovery_console_keeps_its_last_view_marked_stale_when_discovery_stops() {
    let config = testkit::discovery_config();
    let d = discovery::spawn(config.clone()).await.unwrap();
    let (addr, base) = (d.addr(), d.url());
    let apps = testkit::system::apps(&base, 2).await;
    let addrs: Vec<&str> = apps.iter().map(|a| a.served_by()).collect();
    let want = expect(&addrs, "available");
    let browser = Browser::launch();
    let page = browser.open(&format!("{base}/")).await;
    browser
        .wait_for(
            &page,
            "the console lists both instances as available",
            VIEW,
            LIMIT,
            |v| v["state"] == "live" && rows(v) == want && v["banner"] == "",
        )
        .await;
    mark(&browser, &page).await;

    d.shutdown().await;
    let stale = browser
        .wait_for(
            &page,
            "the console marks its view stale",
            VIEW,
            LIMIT,
            |v| v["state"] == "stale",
        )
        .await;
    assert_eq!(rows(&stale), want, "the last view is kept: {stale}");
    assert_eq!(stale["stale_class"], true, "{stale}");
    let banner = stale["banner"].as_str().unwrap();
    assert!(
        banner.contains("unreachable") && banner.contains("last view, from"),
        "the banner says so, with the time of the last update: {banner}"
    );
    still_marked(&browser, &page).await;

    // Discovery comes back on the same address; the apps re-register and the view is live again.
    let d = discovery::spawn(shared::config::DiscoveryConfig {
        listen: addr.to_string(),
        ..config
    })
    .await
    .unwrap();
    browser
        .wait_for(&page, "the console is live again", VIEW, LIMIT, |v| {
            v["state"] == "live"
                && v["stale_class"] == false
                && v["banner"] == ""
                && rows(v) == want
        })
        .await;
    still_marked(&browser, &page).await;

    drop(browser);
    for a in apps {
        a.shutdown().await;
    }
    d.shutdown().await;
}
