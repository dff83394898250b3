//! Small HTTP manners: `Retry-After` on 503s, `Allow` on 405s,
//! the request id in the tide services' error bodies, and absolute-form
//! request targets (RFC 9112 section 3.2.2).

use super::common::{raw_system, System};
use shared::config::RouteConfig;
use testkit::raw::Script;
use testkit::system::exchange_raw;

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

#[async_std::test]
async fn a_gateway_503_says_when_to_retry() {
    let system = System::start_with(1, |c| {
        c.routes.push(RouteConfig {
            prefix: "/none".into(),
            namespace: "nobody".into(),
            verify_request_id: false,
            ..RouteConfig::default()
        })
    })
    .await;
    let r = testkit::system::post_once(system.gateway.addr(), "/none/x", b"{}").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(json(&r.body)["error"]["code"], "no_available_instance");
    system.stop().await;
}

#[async_std::test]
async fn an_absolute_form_target_is_routed_by_its_path_with_its_authority_as_host() {
    let (d, raws, g) = raw_system(vec![Script::Echo], |_| {}).await;
    let request = b"POST http://elsewhere.test:9/api/../load?q=1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}";
    let r = exchange_raw(g.addr(), request).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, b"{}");
    let seen = raws[0].received();
    let last = seen.last().expect("the instance got it");
    assert_eq!(last.header("host").as_deref(), Some("elsewhere.test:9"));
    assert!(
        last.head.starts_with("POST /load?q=1 HTTP/1.1\r\n"),
        "forwarded in origin form, normalized: {}",
        last.head
    );
    g.shutdown().await;
    for r in raws {
        r.stop();
    }
    d.shutdown().await;
}

#[async_std::test]
async fn tide_services_answer_405_with_allow_503_with_retry_after_and_errors_with_the_request_id() {
    let discovery = testkit::discovery().await;
    let apps = testkit::system::apps(&discovery.url(), 1).await;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n");

    let r = exchange_raw(discovery.addr(), get("/api/register").as_bytes()).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(json(&r.body)["error"]["code"], "method_not_allowed");
    let r = exchange_raw(apps[0].addr(), get("/business").as_bytes()).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = exchange_raw(apps[0].addr(), get("/health_check").as_bytes()).await;
    assert_eq!(r.status, 200, "a GET route is still a GET route");

    // Registered, never healthy (nobody listens there): lookup has none available.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    testkit::client::register(&discovery.url(), "ghosts", port).await;
    let r = exchange_raw(
        discovery.addr(),
        get("/api/lookup?namespace=ghosts").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("retry-after"), Some("1"));

    // The app's error bodies carry the request id: the client's, or a new one.
    let bad =
        b"POST /x HTTP/1.1\r\nHost: h\r\nX-Request-Id: trace-42\r\nContent-Length: 3\r\n\r\n{x}";
    let r = exchange_raw(apps[0].addr(), bad).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("x-request-id"), Some("trace-42"));
    assert_eq!(json(&r.body)["error"]["request_id"], "trace-42");
    let bad = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n{x}";
    let r = exchange_raw(apps[0].addr(), bad).await;
    let id = r
        .header("x-request-id")
        .expect("an id is made up")
        .to_string();
    assert_eq!(json(&r.body)["error"]["request_id"], id.as_str());
    for a in apps {
        a.shutdown().await;
    }
    discovery.shutdown().await;
}
