//! What the gateway makes of an instance's answer before a client sees it:
//! its errors name no instance, trailers are dropped unless kept, an
//! oversized head is reported as the answer's, and an instance in two
//! namespaces is one set of series.

use crate::common::raw_system;
use shared::config::RouteConfig;
use std::time::Duration;
use testkit::raw::Script;
use testkit::system::{metrics_when, refused};

/// One POST on a fresh connection that asks to close; everything the gateway sent back.
async fn post_and_read_all(addr: std::net::SocketAddr, path: &str) -> String {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    refused(addr, request.as_bytes(), Duration::from_secs(10)).await
}

fn chunked_with_trailers() -> Script {
    Script::Fixed(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;ext=1\r\n{}\r\n0\r\nset-cookie: session=stolen\r\nx-t: 1\r\n\r\n"
            .to_vec(),
    )
}

#[async_std::test]
async fn f8_error_bodies_name_no_instance_and_no_parser_detail() {
    // An answer head over 64 KiB: the parser's limit, reported as the answer's.
    let huge = format!(
        "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\n{{}}",
        "a".repeat(70 * 1024)
    );
    let scripts = [
        Script::Fixed(huge.into_bytes()),
        Script::Fixed(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!".to_vec(),
        ),
        Script::HalfAnswer,
    ];
    for script in scripts {
        let (d, raws, g) = raw_system(vec![script.clone()], |_| {}).await;
        let answer = post_and_read_all(g.addr(), "/x").await;
        assert!(answer.starts_with("HTTP/1.1 502 "), "{script:?}: {answer}");
        let port = raws[0].port().to_string();
        for leak in [
            "127.0.0.1",
            port.as_str(),
            "max_header_bytes",
            "request head",
            "content-length",
        ] {
            let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
            assert!(!body.contains(leak), "{script:?} leaks {leak:?}: {body}");
        }
        assert!(answer.contains("\"code\":\"bad_gateway\""), "{answer}");
        g.shutdown().await;
        d.shutdown().await;
    }
}

#[async_std::test]
async fn f8_answer_trailers_are_dropped_unless_forward_trailers_keeps_them() {
    for keep in [false, true] {
        let (d, _raws, g) =
            raw_system(vec![chunked_with_trailers()], |c| c.forward_trailers = keep).await;
        let answer = post_and_read_all(g.addr(), "/x").await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        let (_, body) = answer.split_once("\r\n\r\n").unwrap();
        if keep {
            assert_eq!(
                body,
                "2\r\n{}\r\n0\r\nset-cookie: session=stolen\r\nx-t: 1\r\n\r\n"
            );
        } else {
            assert_eq!(
                body, "2\r\n{}\r\n0\r\n\r\n",
                "no trailer, no chunk extension"
            );
        }
        g.shutdown().await;
        d.shutdown().await;
    }
}

#[async_std::test]
async fn f8_an_instance_in_two_namespaces_has_its_series_once() {
    let (d, raws, g) = raw_system(vec![Script::Echo], |c| {
        c.routes.push(RouteConfig {
            prefix: "/b".into(),
            namespace: "service B".into(),
            verify_request_id: false,
            ..RouteConfig::default()
        })
    })
    .await;
    testkit::client::register(&d.url(), "service B", raws[0].port()).await;
    let member = format!("127.0.0.1:{}", raws[0].port());
    testkit::wait_until(
        "service B's ring has it",
        Duration::from_secs(10),
        || async { testkit::system::ring(&g.admin_url(), "service B").await == [member.clone()] },
    )
    .await;
    for path in ["/a", "/b"] {
        let r = testkit::system::post_once(g.addr(), path, b"{}").await;
        assert_eq!(r.status, 200);
    }
    let expected = format!(
        "gateway_upstream_requests_total{{namespace=\"service A,service B\",upstream=\"{member}\",code=\"200\"}} 2"
    );
    let text = metrics_when(&g.admin_url(), "both tries counted", |t| {
        t.lines().any(|l| l == expected)
    })
    .await;
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("gateway_upstream_requests_total{"))
        .collect();
    assert_eq!(
        series,
        [expected],
        "one series for the one instance, counting both requests"
    );
    g.shutdown().await;
    d.shutdown().await;
}
