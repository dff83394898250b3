//! The gateway's side: hostile heads, targets, hosts and slow or
//! heavy bodies are answered by the gateway itself and reach no app.

use crate::common::{raw_system, Client, System};
use async_std::io::WriteExt;
use async_std::net::TcpStream;
use shared::config::RouteConfig;
use shared::http1::client::Connection;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use testkit::procs::Proc;
use testkit::raw::Script;
use testkit::system::{exchange_raw, metric, metrics_text, refused};

const CLOSE: Duration = Duration::from_secs(5);

/// A JSON body of exactly `len` bytes.
fn json_of_len(len: usize) -> Vec<u8> {
    let mut body = b"{\"pad\":\"".to_vec();
    body.resize(len - 2, b'x');
    body.extend_from_slice(b"\"}");
    body
}

fn assert_refused(answer: &str, status: u16, what: &str) {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status} ")),
        "{what}: {answer}"
    );
    assert!(
        answer.contains("\"error\""),
        "{what}: no JSON error: {answer}"
    );
    assert!(answer.contains("connection: close"), "{what}: {answer}");
}

/// Every app of the system echoes a POST sent through the gateway.
async fn every_app_answers(sys: &System) {
    let mut client = Client::new(sys.gateway.addr());
    let mut seen = HashSet::new();
    for n in 0..sys.apps.len() * 2 {
        let sent = crate::common::body(9, n);
        let res = client.post("/api/pay", &sent).await.unwrap();
        assert_eq!((res.status, &res.body), (200, &sent));
        seen.insert(res.header("x-served-by").unwrap().to_string());
    }
    assert_eq!(seen.len(), sys.apps.len(), "every app served: {seen:?}");
}

#[async_std::test]
async fn a_non_ascii_header_value_is_refused_400_and_every_app_survives() {
    let sys = System::start(3).await;
    let heads: [&[u8]; 3] = [
        b"POST /api/pay HTTP/1.1\r\nHost: a\r\nX-Note: caf\xc3\xa9\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /api/pay HTTP/1.1\r\nHost: a\r\nX-Note: \xff\xfe\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /api/pay HTTP/1.1\r\nHost: a\r\nX-Note: a\x01b\r\nContent-Length: 2\r\n\r\n{}",
    ];
    for head in heads {
        let answer = refused(sys.gateway.addr(), head, CLOSE).await;
        assert_refused(&answer, 400, &String::from_utf8_lossy(head));
        // The admin port is a tide front too: it must refuse (or drop) it, not die.
        let mut admin = Connection::connect(sys.gateway.admin_addr()).await.unwrap();
        let _ = admin.send(head).await;
        if let Ok(Ok(res)) = async_std::future::timeout(CLOSE, admin.read()).await {
            assert!((400..500).contains(&res.status), "admin: {}", res.status);
        }
        let (status, _) = testkit::client::get(&format!("{}/health_check", sys.admin())).await;
        assert_eq!(status, 200, "the admin port still serves");
    }
    every_app_answers(&sys).await;
    let text = metrics_text(&sys.admin()).await;
    assert!(
        text.lines().any(|l| l == "gateway_panics_total 0"),
        "the panic counter is served, and nothing panicked:\n{text}"
    );
    sys.stop().await;
}

/// A raw instance behind only `/api`, recording what it receives.
async fn api_only() -> (
    discovery::Handle,
    Vec<testkit::raw::RawInstance>,
    gateway::Handle,
) {
    raw_system(vec![Script::Echo], |c| {
        c.routes = vec![RouteConfig {
            prefix: "/api".into(),
            namespace: "service A".into(),
            verify_request_id: false,
            ..RouteConfig::default()
        }]
    })
    .await
}

fn get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: gateway\r\n\r\n").into_bytes()
}

#[async_std::test]
async fn a_body_for_no_route_is_answered_404_before_it_is_read() {
    let (d, raws, g) = api_only().await;
    // A megabyte announced, 100-continue asked for, not a byte sent: the answer
    // comes from the head alone (waiting for the body would end in a 408 after
    // client_body_timeout), and it is not a 100 Continue.
    let head = "POST /nowhere HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
                Content-Length: 1000000\r\nExpect: 100-continue\r\n\r\n";
    let res = exchange_raw(g.addr(), head.as_bytes()).await;
    assert_eq!(res.status, 404, "{}", String::from_utf8_lossy(&res.body));
    assert!(String::from_utf8_lossy(&res.body).contains("no_route"));
    assert_eq!(
        res.header("connection"),
        Some("close"),
        "the unread body ends the connection"
    );
    // A body that did come along: the same answer, and nothing reached an instance.
    let small = "POST /nowhere HTTP/1.1\r\nHost: gateway\r\nContent-Length: 2\r\n\r\n{}";
    let res = exchange_raw(g.addr(), small.as_bytes()).await;
    assert_eq!(res.status, 404);
    assert!(
        raws[0].received().is_empty(),
        "no instance saw either request"
    );
    g.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn dot_segments_cannot_escape_a_route() {
    let (d, raws, g) = api_only().await;
    for escape in [
        "/api/../chaos",
        "/api/%2e%2e/chaos",
        "/api/%2E%2e/chaos",
        "/api/.%2e/chaos",
        "/api/x/../../chaos",
        "/api/..",
    ] {
        let res = exchange_raw(g.addr(), &get(escape)).await;
        assert_eq!(
            res.status,
            404,
            "{escape}: {}",
            String::from_utf8_lossy(&res.body)
        );
        assert!(String::from_utf8_lossy(&res.body).contains("no_route"));
    }
    // Ambiguous to the instances' URL parser: refused, never forwarded.
    for ambiguous in [
        "/api/..\\chaos",
        "/api/x#/../../chaos",
        "/api/%2",
        "/api/caf\u{e9}",
    ] {
        let answer = refused(g.addr(), &get(ambiguous), CLOSE).await;
        assert_refused(&answer, 400, ambiguous);
    }
    assert!(
        raws[0].received().is_empty(),
        "nothing reached the instance"
    );

    // Routed, and forwarded in the normalized form the route was matched on.
    let forwarded = [
        ("/api/./x", "/api/x"),
        ("/api/%2e%2e/api/y", "/api/y"),
        ("/api/%7e%41?q=/../x", "/api/~A?q=/../x"),
        ("/api/..%2Fchaos", "/api/..%2Fchaos"),
        ("/api", "/api"),
    ];
    for (sent, want) in forwarded {
        let res = exchange_raw(g.addr(), &get(sent)).await;
        assert_eq!(res.status, 200, "{sent}");
        let line = raws[0]
            .received()
            .last()
            .unwrap()
            .head
            .lines()
            .next()
            .unwrap()
            .to_string();
        assert_eq!(line, format!("GET {want} HTTP/1.1"), "{sent}");
    }
    g.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn a_host_with_a_path_is_refused_400() {
    let (d, raws, g) = api_only().await;
    for host in [
        "x/chaos?", "x/chaos", "a?b", "a#b", "user@a", "a b", "a:b", "[::1", "",
    ] {
        let request = format!("GET /api HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let answer = refused(g.addr(), request.as_bytes(), CLOSE).await;
        assert_refused(&answer, 400, host);
    }
    let two = b"GET /api HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
    assert_refused(&refused(g.addr(), two, CLOSE).await, 400, "two Hosts");
    assert!(
        raws[0].received().is_empty(),
        "nothing reached the instance"
    );
    for host in ["gateway", "gateway:8000", "127.0.0.1:1", "[::1]:8000"] {
        let request = format!("GET /api HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let res = exchange_raw(g.addr(), request.as_bytes()).await;
        assert_eq!(res.status, 200, "{host}");
        assert_eq!(
            raws[0].received().last().unwrap().header("host").unwrap(),
            host
        );
    }
    g.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn a_12kb_head_reaches_an_app() {
    let sys = System::start(2).await;
    let pad = "p".repeat(12 * 1024);
    let mut seen = HashSet::new();
    for n in 0..2 {
        let sent = crate::common::body(12, n);
        let request = [
            format!(
                "POST /api/pay HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nX-Pad: {pad}\r\nContent-Length: {}\r\n\r\n",
                sent.len()
            )
            .into_bytes(),
            sent.clone(),
        ]
        .concat();
        let res = exchange_raw(sys.gateway.addr(), &request).await;
        assert_eq!(
            (res.status, &res.body),
            (200, &sent),
            "{}",
            String::from_utf8_lossy(&res.body)
        );
        seen.insert(res.header("x-served-by").unwrap().to_string());
    }
    assert_eq!(seen.len(), 2, "each app took a 12 KB head");
    // Over max_header_bytes: the gateway answers 431 itself.
    let big = format!(
        "POST /api/pay HTTP/1.1\r\nHost: gateway\r\nX-Pad: {}\r\nContent-Length: 2\r\n\r\n{{}}",
        "p".repeat(17 * 1024)
    );
    assert_refused(
        &refused(sys.gateway.addr(), big.as_bytes(), CLOSE).await,
        431,
        "17 KB head",
    );
    sys.stop().await;
}

#[async_std::test]
async fn a_dripping_body_is_cut_at_client_body_timeout() {
    let sys = System::start_with(1, |c| {
        c.client_body_timeout = Duration::from_secs(1);
        c.client_header_timeout = Duration::from_secs(1);
    })
    .await;
    let stream = TcpStream::connect(sys.gateway.addr()).await.unwrap();
    let mut writer = stream.clone();
    writer
        .write_all(b"POST /api/pay HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    writer.write_all(&vec![b' '; 64 * 1024]).await.unwrap();
    let drip = async_std::task::spawn(async move {
        // One byte every 200 ms: never a stall of client_header_timeout.
        while writer.write_all(b" ").await.is_ok() {
            async_std::task::sleep(Duration::from_millis(200)).await;
            if started.elapsed() > Duration::from_secs(5) {
                break;
            }
        }
    });
    let mut conn = Connection::from_stream(stream);
    let res = async_std::future::timeout(Duration::from_secs(3), conn.read())
        .await
        .expect("cut within client_body_timeout")
        .unwrap();
    let took = started.elapsed();
    let body = String::from_utf8_lossy(&res.body);
    assert_eq!(res.status, 408, "{body}");
    assert!(body.contains("client_body_timeout"), "{body}");
    assert!(!res.keep_alive, "the connection closes");
    assert!(
        took >= Duration::from_millis(900) && took <= Duration::from_millis(2000),
        "cut after {took:?}"
    );
    drip.cancel().await;
    every_app_answers(&sys).await;
    sys.stop().await;
}

#[async_std::test]
async fn max_buffered_bytes_sheds_with_503() {
    let sys = System::start_with(1, |c| {
        c.max_body_bytes = 48 * 1024;
        c.max_buffered_bytes = 64 * 1024;
        c.client_header_timeout = Duration::from_secs(5);
        c.client_body_timeout = Duration::from_secs(10);
    })
    .await;
    let admin = sys.admin();
    let len = 40 * 1024;
    let head = format!("POST /api/pay HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\n\r\n");
    let body = json_of_len(len);

    // A slow large body holds its declared length...
    let mut slow = Connection::connect(sys.gateway.addr()).await.unwrap();
    slow.send(head.as_bytes()).await.unwrap();
    slow.send(&body[..1024]).await.unwrap();
    testkit::wait_until("the slow body is reserved", CLOSE, || async {
        metric(&admin, "gateway_buffered_request_bytes").await == len as f64
    })
    .await;

    // ...so a second one does not fit: 503 at once, before its body, and close.
    let started = Instant::now();
    let answer = refused(sys.gateway.addr(), head.as_bytes(), CLOSE).await;
    assert_refused(&answer, 503, "second large body");
    assert!(answer.contains("max_buffered_bytes"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(2), "shed at once");
    // A chunked body is counted as it arrives.
    let mut chunked =
        b"POST /api/pay HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in body.chunks(8 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_refused(
        &refused(sys.gateway.addr(), &chunked, CLOSE).await,
        503,
        "chunked",
    );
    // Small requests still fit beside the slow one.
    let mut client = Client::new(sys.gateway.addr());
    let res = client.post("/api/pay", b"{\"small\": 1}").await.unwrap();
    assert_eq!(res.status, 200);

    // The slow body completes, is answered, and gives its bytes back.
    slow.send(&body[1024..]).await.unwrap();
    let res = slow.read().await.unwrap();
    assert_eq!((res.status, res.body.len()), (200, len));
    testkit::wait_until("the reservation is given back", CLOSE, || async {
        metric(&admin, "gateway_buffered_request_bytes").await == 0.0
    })
    .await;
    let res = exchange_raw(
        sys.gateway.addr(),
        &[head.into_bytes(), body.clone()].concat(),
    )
    .await;
    assert_eq!((res.status, res.body), (200, body));
    assert!(metric(&admin, "gateway_requests_total{code=\"503\"}").await >= 2.0);
    sys.stop().await;
}

/// An instance that speaks only HTTP/1.0, as Python's `http.server` does: every
/// answer is `HTTP/1.0 200` with no length, ended by closing the connection.
async fn http_1_0_instance() -> (u16, async_std::task::JoinHandle<()>) {
    use async_std::io::ReadExt;
    let listener = async_std::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = async_std::task::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            async_std::task::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                // The head, then as much body as Content-Length says.
                let body_len = loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break end + 4 + len;
                    }
                };
                while seen.len() < body_len {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"served\":\"http/1.0\"}")
                    .await;
            });
        }
    });
    (port, task)
}

#[async_std::test]
async fn an_http_1_0_instance_becomes_available_and_receives_traffic_through_the_gateway() {
    let discovery = testkit::discovery().await;
    let (port, _instance) = http_1_0_instance().await;
    testkit::client::register(&discovery.url(), "service A", port).await;
    testkit::wait_until(
        "discovery marks the HTTP/1.0 instance available",
        Duration::from_secs(5),
        || async {
            testkit::client::status_of(&discovery.url(), "service A", port)
                .await
                .as_deref()
                == Some("available")
        },
    )
    .await;
    let gateway = gateway::spawn(testkit::system::gateway_config(&discovery.url()))
        .await
        .unwrap();
    testkit::system::wait_ring(
        &gateway.admin_url(),
        &[format!("127.0.0.1:{port}")],
        Duration::from_secs(5),
    )
    .await;
    let mut client = Client::new(gateway.addr());
    for _ in 0..5 {
        let res = client.post("/api/pay", br#"{"a":1}"#).await.unwrap();
        assert_eq!(res.status, 200);
        assert_eq!(res.body, br#"{"served":"http/1.0"}"#);
    }
    gateway.shutdown().await;
    discovery.shutdown().await;
}

/// The gateway out of descriptors must not blame the instances: before, every
/// failed connect cooled an instance down, so once the shortage was over the
/// ring was empty for everyone (503 for every request) until the cool-downs
/// ended. Now such a request is a 503 `overloaded`, no instance is cooled
/// down, and the next request after the shortage is served at once.
#[async_std::test]
async fn a_gateway_out_of_descriptors_blames_no_instance() {
    const LIMIT: u32 = 64;
    let discovery = testkit::discovery().await;
    let apps = testkit::system::apps(&discovery.url(), 3).await;
    let discovery_url = discovery.url();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--discovery-url",
        &discovery_url,
        "--worker-threads",
        "1",
    ];
    let gateway = Proc::start_limited("gateway", &args, &[("LOG_FORMAT", "json")], LIMIT);
    let addr = gateway.listening("gateway").await;
    let admin = format!("http://{}", gateway.listening("gateway admin").await);
    let members: Vec<String> = apps.iter().map(|a| a.served_by().to_string()).collect();
    testkit::system::wait_ring(&admin, &members, Duration::from_secs(10)).await;

    // Idle client connections until the gateway holds every descriptor it may
    // (no business request yet, so no pooled upstream connection to reuse).
    let mut idle: Vec<TcpStream> = Vec::new();
    let filling = Instant::now();
    let full = || gateway.output().contains("accept failed");
    while !full() {
        assert!(
            filling.elapsed() < Duration::from_secs(10),
            "the gateway never ran out of its {LIMIT} descriptors"
        );
        idle.push(TcpStream::connect(addr).await.unwrap());
        async_std::task::sleep(Duration::from_millis(2)).await;
    }
    // The first connection was accepted first: it asks.
    let mut asker = idle.remove(0);
    let body = br#"{"pay": 1}"#;
    let mut req = Vec::new();
    shared::http1::client::post(&mut req, "gateway", "/api/pay", body, "");
    asker.write_all(&req).await.unwrap();
    let mut conn = Connection::from_stream(asker);
    let res = conn.read().await.unwrap();
    assert_eq!(
        res.status,
        503,
        "{}; {} descriptors open; the gateway printed:\n{}",
        String::from_utf8_lossy(&res.body),
        gateway.open_descriptors(),
        gateway.output()
    );
    let answer = String::from_utf8_lossy(&res.body).to_string();
    assert!(answer.contains("overloaded"), "{answer}");
    assert!(res.header("retry-after").is_some(), "says when to retry");

    // The shortage ends: the very next request is served, by a ring still whole.
    drop(idle);
    drop(conn);
    testkit::wait_until(
        "the idle connections are gone",
        Duration::from_secs(10),
        || {
            let low = gateway.open_descriptors() < LIMIT as usize - 8;
            async move { low }
        },
    )
    .await;
    let mut client = Client::new(addr);
    for _ in 0..3 {
        let res = client.post("/api/pay", body).await.unwrap();
        assert_eq!(
            (res.status, res.body.as_slice()),
            (200, &body[..]),
            "{}",
            String::from_utf8_lossy(&res.body)
        );
    }
    let shortages = metric(&admin, "gateway_local_shortages_total").await;
    assert!(shortages >= 1.0, "counted: {shortages}");
    for a in apps {
        a.shutdown().await;
    }
    discovery.shutdown().await;
}
