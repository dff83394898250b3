//! An instance that accepts and closes without answering is failed over for
//! idempotent requests, and for POSTs only under retry_non_idempotent; one
//! that began an answer is never failed over; the client never hangs.

use crate::common::raw_system;
use shared::http1::client::Connection;
use std::time::{Duration, Instant};
use testkit::raw::{RawInstance, Script};
use testkit::system::metric;

async fn system(
    retry_non_idempotent: bool,
) -> (discovery::Handle, Vec<RawInstance>, gateway::Handle) {
    let scripts = vec![Script::Close, Script::Echo, Script::Echo];
    raw_system(scripts, |c| c.retry_non_idempotent = retry_non_idempotent).await
}

async fn send(conn: &mut Connection, method: &str, body: &str) -> (u16, Vec<u8>, Duration) {
    let req = format!(
        "{method} /x HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let started = Instant::now();
    let res = conn.exchange(req.as_bytes()).await.unwrap();
    (res.status, res.body, started.elapsed())
}

#[async_std::test]
async fn broken_connections_fail_over_by_method_and_policy() {
    for retry_posts in [false, true] {
        let (d, raws, g) = system(retry_posts).await;
        let mut conn = Connection::connect(g.addr()).await.unwrap();
        for i in 0..6 {
            let body = format!("{{\"i\": {i}}}");
            let (status, echoed, took) = send(&mut conn, "PUT", &body).await;
            assert_eq!(
                (status, echoed.as_slice()),
                (200, body.as_bytes()),
                "PUT is idempotent: always failed over"
            );
            assert!(took < Duration::from_secs(1), "took {took:?}");
        }
        // Six in a row: round robin puts two of them on the broken instance.
        let mut post_502 = 0;
        for i in 0..6 {
            let body = format!("{{\"i\": {i}}}");
            let (status, echoed, took) = send(&mut conn, "POST", &body).await;
            assert!(took < Duration::from_secs(1), "took {took:?}");
            match status {
                200 => assert_eq!(echoed, body.as_bytes()),
                502 if !retry_posts => post_502 += 1,
                other => panic!("POST answered {other} with retry_non_idempotent={retry_posts}"),
            }
        }
        assert_eq!(
            post_502,
            if retry_posts { 0 } else { 2 },
            "POSTs that met the broken instance"
        );
        assert!(
            !raws[0].received().is_empty(),
            "the broken instance was tried"
        );
        assert!(metric(&g.admin_url(), "gateway_failovers_total{cause=\"broken\"}").await >= 1.0);
        g.shutdown().await;
        d.shutdown().await;
    }
}

/// Half an answer means the instance has the request: it is never sent to
/// a second instance (whatever `retry_non_idempotent` says), the client gets
/// 502, and after `passive_health_failures` such answers in a row the
/// instance is cooled down, so the requests after it are served.
#[async_std::test]
async fn an_instance_dying_mid_answer_is_not_sent_the_request_again_and_is_cooled_down() {
    let (d, raws, g) = raw_system(vec![Script::HalfAnswer], |c| {
        c.passive_health_failures = 2;
        c.connect_cooldown = Duration::from_secs(30);
    })
    .await;
    let echo = RawInstance::start(Script::Echo).await;
    let mut conn = Connection::connect(g.addr()).await.unwrap();
    for i in 0..2 {
        let body = format!("{{\"i\": {i}}}");
        let (status, answer, _) = send(&mut conn, "POST", &body).await;
        let answer = String::from_utf8_lossy(&answer).to_string();
        assert_eq!(status, 502, "{answer}");
        assert!(
            !answer.contains("127.0.0.1"),
            "no instance address reaches the client: {answer}"
        );
        assert_eq!(raws[0].received().len(), i + 1, "each POST reached it once");
        conn = Connection::connect(g.addr()).await.unwrap();
    }
    let cut = metric(
        &g.admin_url(),
        &format!(
            "gateway_upstream_faults_total{{namespace=\"service A\",upstream=\"127.0.0.1:{}\",fault=\"cut_short\"}}",
            raws[0].port()
        ),
    )
    .await;
    assert_eq!(cut, 2.0);
    let status = testkit::system::status(&g.admin_url()).await;
    let member = &status["namespaces"][0]["members"][0];
    assert_eq!(member["cooling_down"], true, "{member}");
    assert_eq!(member["faults"]["cut_short"], 2, "{member}");
    // With a second instance in the ring, the cooled one is skipped.
    testkit::client::register(&d.url(), "service A", echo.port()).await;
    let members = [raws[0].port(), echo.port()].map(|p| format!("127.0.0.1:{p}"));
    testkit::system::wait_ring(&g.admin_url(), &members, Duration::from_secs(10)).await;
    for i in 0..4 {
        let body = format!("{{\"after\": {i}}}");
        let (status, answer, _) = send(&mut conn, "POST", &body).await;
        assert_eq!((status, answer.as_slice()), (200, body.as_bytes()));
    }
    assert_eq!(
        raws[0].received().len(),
        2,
        "the cooled instance got nothing more"
    );
    g.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn a_post_on_a_pooled_connection_that_breaks_after_the_write_is_not_sent_again() {
    let (d, raws, g) = raw_system(vec![Script::Echo], |c| c.retry_non_idempotent = false).await;
    let mut conn = Connection::connect(g.addr()).await.unwrap();
    let (status, _, _) = send(&mut conn, "POST", "{\"first\": 1}").await;
    assert_eq!(status, 200, "the upstream connection is now pooled");
    raws[0].set(Script::Close);
    let (status, body, _) = send(&mut conn, "POST", "{\"second\": 2}").await;
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        raws[0].received().len(),
        2,
        "the second POST reached the instance once, and only once"
    );
    g.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn a_pooled_connection_closed_while_idle_is_found_before_writing() {
    let (d, raws, g) = raw_system(vec![Script::EchoThenClose], |c| {
        c.retry_non_idempotent = false
    })
    .await;
    let mut conn = Connection::connect(g.addr()).await.unwrap();
    let (status, _, _) = send(&mut conn, "POST", "{\"first\": 1}").await;
    assert_eq!(status, 200);
    // The instance closed its side right after answering; let the connection idle
    // past the point where the gateway checks pooled connections before use.
    async_std::task::sleep(Duration::from_millis(1200)).await;
    let (status, body, _) = send(&mut conn, "POST", "{\"second\": 2}").await;
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"{\"second\": 2}"[..]),
        "a fresh connection, not a failure"
    );
    assert_eq!(raws[0].received().len(), 2);
    assert_eq!(
        metric(&g.admin_url(), "gateway_keepalive_retries_total").await,
        0.0,
        "found before the write"
    );
    g.shutdown().await;
    d.shutdown().await;
}
