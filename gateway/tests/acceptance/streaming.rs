//! Acceptance 2: pipelining in order, chunked bodies both ways, and a large
//! answer streamed through with bounded gateway memory.

use crate::common::System;
use shared::http1::client::{post, Connection};
use std::time::Duration;
use testkit::procs::Proc;
use testkit::raw::{RawInstance, Script};

#[async_std::test]
async fn pipelined_requests_are_answered_in_order() {
    let sys = System::start(3).await;
    let mut conn = Connection::connect(sys.gateway.addr()).await.unwrap();
    let mut all = Vec::new();
    let mut one = Vec::new();
    for i in 0..8 {
        post(
            &mut one,
            "gw",
            &format!("/p/{i}"),
            format!("{{\"seq\": {i}}}").as_bytes(),
            "",
        );
        all.extend_from_slice(&one);
    }
    conn.send(&all).await.unwrap();
    for i in 0..8 {
        let res = conn.read().await.unwrap();
        assert_eq!(res.status, 200);
        assert_eq!(
            res.body,
            format!("{{\"seq\": {i}}}").as_bytes(),
            "answer {i} out of order"
        );
    }
    sys.stop().await;
}

#[async_std::test]
async fn chunked_request_and_response_bodies_round_trip() {
    let sys = System::start(1).await;
    let mut conn = Connection::connect(sys.gateway.addr()).await.unwrap();
    let req = "POST /c HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n3;ext=1\r\n [1\r\n2\r\n]}\r\n0\r\nX-Trailer: t\r\n\r\n";
    let res = conn.exchange(req.as_bytes()).await.unwrap();
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    assert_eq!(res.body, br#"{"a": [1]}"#);
    sys.stop().await;

    // An instance that answers chunked: passed through to the client as chunked.
    let d = testkit::discovery().await;
    let raw = RawInstance::start(Script::ChunkedEcho(7)).await;
    testkit::client::register(&d.url(), "service A", raw.port()).await;
    let g = gateway::spawn(testkit::system::gateway_config(&d.url()))
        .await
        .unwrap();
    testkit::system::wait_ring(
        &g.admin_url(),
        &[format!("127.0.0.1:{}", raw.port())],
        Duration::from_secs(5),
    )
    .await;
    let mut conn = Connection::connect(g.addr()).await.unwrap();
    let sent = br#"{"long": "a body that spans several chunks of seven bytes"}"#;
    let mut req = Vec::new();
    post(&mut req, "gw", "/", sent, "");
    for _ in 0..3 {
        let res = conn.exchange(&req).await.unwrap();
        assert_eq!(res.header("transfer-encoding"), Some("chunked"));
        assert_eq!(res.body, sent);
    }
    g.shutdown().await;
    d.shutdown().await;
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

#[async_std::test]
async fn a_large_answer_streams_through_with_bounded_memory() {
    const SIZE: usize = 10 * 1024 * 1024;
    let d = testkit::discovery().await;
    let raw = RawInstance::start(Script::Big(SIZE)).await;
    testkit::client::register(&d.url(), "service A", raw.port()).await;
    let config = format!(
        r#"{{"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", "discovery_url": "{}"}}"#,
        d.url()
    );
    let path = testkit::tempdir::TempFile::new(format!("gw-stream-{}.json", std::process::id()));
    std::fs::write(&path, config).unwrap();
    let gw = Proc::start("gateway", &["--config", path.to_str().unwrap()]);
    let addr = gw.listening("gateway").await;
    let admin = format!("http://{}", gw.listening("gateway admin").await);
    testkit::system::wait_ring(
        &admin,
        &[format!("127.0.0.1:{}", raw.port())],
        Duration::from_secs(5),
    )
    .await;

    let mut conn = Connection::connect(addr).await.unwrap();
    let mut req = Vec::new();
    post(&mut req, "gw", "/", b"{}", "");
    // Warm up, so the baseline includes the buffers any request needs.
    raw.set(Script::Echo);
    conn.exchange(&req).await.unwrap();
    let before = peak_rss_kib(gw.pid());
    raw.set(Script::Big(SIZE));
    for _ in 0..3 {
        let res = conn.exchange(&req).await.unwrap();
        assert_eq!(res.status, 200);
        assert_eq!(res.body.len(), SIZE);
        assert!(res.body.iter().all(|b| *b == b'x'));
    }
    let grown = peak_rss_kib(gw.pid()).saturating_sub(before);
    assert!(
        grown < 2 * 1024,
        "peak RSS grew by {grown} KiB for a 10 MiB answer"
    );
}
