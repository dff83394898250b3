//! Acceptance 3: framing errors and smuggling attempts get their 4xx and the
//! connection closes; the gateway serves normally afterwards.

use crate::common::{Client, System};
use shared::http1::client::Connection;

#[async_std::test]
async fn framing_and_smuggling_cases_are_refused_and_closed() {
    let sys = System::start_with(1, |c| c.max_body_bytes = 1024).await;
    let big_head = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "v".repeat(20_000)
    );
    let cases: Vec<(&str, String, u16)> = vec![
        ("CL and TE", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(), 400),
        ("duplicate CL", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}".into(), 400),
        ("conflicting CL", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".into(), 400),
        ("non-digit CL", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2x\r\n\r\n{}".into(), 400),
        ("negative CL", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -2\r\n\r\n{}".into(), 400),
        ("bad chunk size", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n".into(), 400),
        ("chunk without CRLF", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n".into(), 400),
        ("TE not chunked last", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n".into(), 400),
        ("TE gzip", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n".into(), 400),
        ("space before colon", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 2\r\n\r\n{}".into(), 400),
        ("NUL in head", "POST / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\nContent-Length: 2\r\n\r\n{}".into(), 400),
        ("bare CR in head", "POST / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\nContent-Length: 2\r\n\r\n{}".into(), 400),
        ("obsolete folding", "POST / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\nContent-Length: 2\r\n\r\n{}".into(), 400),
        ("no Host", "POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}".into(), 400),
        ("HTTP/2.0", "POST / HTTP/2.0\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}".into(), 505),
        ("head too large", big_head, 431),
        ("body too large", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n".into(), 413),
        ("chunked body too large", format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n{}\r\n0\r\n\r\n", "x".repeat(2048)), 413),
    ];
    for (name, request, status) in cases {
        let mut conn = Connection::connect(sys.gateway.addr()).await.unwrap();
        conn.send(request.as_bytes()).await.unwrap();
        let answer =
            async_std::future::timeout(std::time::Duration::from_secs(5), conn.read_to_close())
                .await
                .unwrap_or_else(|_| panic!("{name}: the connection was not closed"))
                .unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status} ")),
            "{name}: {text}"
        );
        assert!(
            text.contains("\"error\""),
            "{name}: no JSON error body: {text}"
        );
        assert!(text.contains("connection: close"), "{name}: {text}");
    }
    // A smuggled request hidden in a refused body is never forwarded.
    let served =
        testkit::system::metric(&sys.admin(), "gateway_requests_total{code=\"200\"}").await;
    assert_eq!(served, 0.0);
    let mut client = Client::new(sys.gateway.addr());
    let res = client
        .post("/after", b"{\"still\": \"fine\"}")
        .await
        .unwrap();
    assert_eq!(
        (res.status, res.body.as_slice()),
        (200, &b"{\"still\": \"fine\"}"[..])
    );
    sys.stop().await;
}
