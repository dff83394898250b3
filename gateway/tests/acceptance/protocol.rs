//! Protocol corners: HTTP/1.0 clients, HEAD answers the gateway makes itself,
//! and instances with unusual (but legal) status lines.

use crate::common::raw_system;
use shared::http1::client::{Connection, Response};
use std::time::Duration;
use testkit::raw::Script;

async fn answer_then_close(conn: &mut Connection) -> String {
    let bytes = async_std::future::timeout(Duration::from_secs(3), conn.read_to_close())
        .await
        .expect("the gateway closed the connection after the answer")
        .unwrap();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[async_std::test]
async fn http10_clients_get_plain_bodies_and_a_close_when_no_length_is_known() {
    let req = "POST / HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 9\r\n\r\n{\"a\": 42}";
    for script in [Script::ChunkedEcho(3), Script::EchoUntilClose] {
        let (d, _raws, g) = raw_system(vec![script.clone()], |_| {}).await;
        let mut conn = Connection::connect(g.addr()).await.unwrap();
        conn.send(req.as_bytes()).await.unwrap();
        let text = answer_then_close(&mut conn).await;
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 "), "{script:?}: {text}");
        assert!(
            !head.to_ascii_lowercase().contains("transfer-encoding"),
            "{script:?}: {head}"
        );
        assert!(head.contains("connection: close"), "{script:?}: {head}");
        assert_eq!(
            body, "{\"a\": 42}",
            "{script:?}: the data, without chunk framing"
        );
        g.shutdown().await;
        d.shutdown().await;
    }
}

#[async_std::test]
async fn a_head_request_gets_a_bodiless_error_and_the_connection_stays_in_step() {
    let d = testkit::discovery().await;
    let g = gateway::spawn(testkit::system::gateway_config(&d.url()))
        .await
        .unwrap();
    let mut conn = Connection::connect(g.addr()).await.unwrap();
    conn.send(b"HEAD /x HTTP/1.1\r\nHost: gw\r\n\r\nGET /y HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut head = Response::default();
    conn.read_into(&mut head, true).await.unwrap();
    assert_eq!(head.status, 503, "nothing in the ring");
    assert!(head.body.is_empty());
    let get = conn.read().await.unwrap();
    assert_eq!(get.status, 503, "the next answer parses as an answer");
    assert!(String::from_utf8_lossy(&get.body).contains("no_available_instance"));
    g.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn status_lines_without_a_usual_reason_phrase_pass_through() {
    let cases: [&[u8]; 2] = [
        b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\n{}",
        "HTTP/1.1 201 \u{e7}a va\r\nContent-Length: 2\r\n\r\n{}".as_bytes(),
    ];
    for fixed in cases {
        let (d, _raws, g) = raw_system(vec![Script::Fixed(fixed.to_vec())], |_| {}).await;
        let mut conn = Connection::connect(g.addr()).await.unwrap();
        for _ in 0..3 {
            let res = conn
                .exchange(b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}")
                .await
                .unwrap();
            assert!(res.status == 200 || res.status == 201);
            assert_eq!(res.body, b"{}");
        }
        let (status, _) = testkit::client::get(&format!("{}/health_check", g.admin_url())).await;
        assert_eq!(status, 200, "the gateway is still up");
        g.shutdown().await;
        d.shutdown().await;
    }
}
