//! The app echoes a valid `x-request-id` on every answer (business echo,
//! error, health check), so a gateway route with `verify_request_id` can tell
//! an answer that belongs to its request from a stray one. An invalid id is
//! neither echoed nor replaced.

use crate::support::app_config;
use shared::http1::client::{Connection, Response};

/// One request on a fresh connection, with `id` as its `x-request-id` (if any).
async fn send(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    id: Option<&str>,
) -> Response {
    let id_header = id
        .map(|id| format!("x-request-id: {id}\r\n"))
        .unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: app\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n{id_header}\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    let mut conn = Connection::connect(addr).await.unwrap();
    conn.exchange(&req).await.unwrap()
}

#[async_std::test]
async fn a_valid_request_id_is_echoed_on_every_kind_of_answer() {
    let d = testkit::discovery().await;
    let app = app::spawn(app_config(&d.url())).await.unwrap();
    let cases: [(&str, &str, &[u8], u16); 4] = [
        ("POST", "/api/pay", br#"{"amount": 1}"#, 200),
        ("POST", "/api/pay", b"{not json", 400),
        ("GET", "/health_check", b"", 200),
        ("GET", "/nowhere", b"", 405),
    ];
    for (i, (method, path, body, status)) in cases.into_iter().enumerate() {
        let id = format!("req-{i}-abc.DEF_~!");
        let res = send(app.addr(), method, path, body, Some(&id)).await;
        let what = format!("{method} {path}");
        assert_eq!(res.header("x-request-id"), Some(id.as_str()), "{what}");
        if status == 200 && method == "POST" {
            assert_eq!(res.body, body, "{what}: the echo is unchanged");
        }
        // The status itself is not under test; it only shows which path answered.
        assert!(
            res.status == status || status == 405,
            "{what}: {}",
            res.status
        );
    }
    app.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn an_invalid_or_missing_request_id_is_not_echoed() {
    let d = testkit::discovery().await;
    let app = app::spawn(app_config(&d.url())).await.unwrap();
    let too_long = "a".repeat(129);
    let longest = "b".repeat(128);
    let invalid = ["has space", "tab\there", too_long.as_str()];
    for id in invalid {
        let res = send(app.addr(), "POST", "/api/pay", b"{}", Some(id)).await;
        assert_eq!(res.status, 200, "{id:?}");
        assert_eq!(res.header("x-request-id"), None, "{id:?} is not echoed");
    }
    let res = send(app.addr(), "POST", "/api/pay", b"{}", None).await;
    assert_eq!(res.header("x-request-id"), None, "no id is made up");
    let res = send(app.addr(), "POST", "/api/pay", b"{}", Some(&longest)).await;
    assert_eq!(
        res.header("x-request-id"),
        Some(longest.as_str()),
        "128 bytes is valid"
    );
    app.shutdown().await;
    d.shutdown().await;
}
