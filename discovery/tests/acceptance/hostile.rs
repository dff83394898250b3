//! The discovery side: each finding of the attack on discovery as a
//! named regression test. Hostile registrations are refused before they touch
//! the registry, the health checker speaks HTTP/1.0 and never blames an
//! instance for discovery's own shortage of descriptors, and only a token
//! holder may register or deregister, and only allowed hosts.

use async_std::net::{TcpListener, TcpStream};
use async_std::task;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use serde_json::{json, Value};
use shared::config::DiscoveryConfig;
use shared::http1::client::{post, Connection};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use testkit::client::{get, status_of};
use testkit::procs::Proc;
use testkit::wait_until;

/// POSTs `body` (any bytes) to `path` with `headers` (`name: value\r\n` each); status and JSON.
async fn send(addr: SocketAddr, path: &str, body: &[u8], headers: &str) -> (u16, Value) {
    let mut conn = Connection::connect(addr).await.unwrap();
    let mut req = Vec::new();
    post(&mut req, "discovery", path, body, headers);
    let res = conn.exchange(&req).await.unwrap();
    let json = serde_json::from_slice(&res.body).unwrap_or(Value::Null);
    (res.status, json)
}

async fn start(config: DiscoveryConfig) -> discovery::Handle {
    discovery::spawn(config).await.unwrap()
}

/// Every instance as `namespace host port`, sorted.
async fn registry(base: &str) -> Vec<String> {
    let (_, services) = get(&format!("{base}/api/services")).await;
    let mut all: Vec<String> = services
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(ns, list)| {
            list.as_array()
                .unwrap()
                .iter()
                .map(move |i| format!("{ns} {} {}", i["host"], i["port"]))
        })
        .collect();
    all.sort();
    all
}

/// Sends each body to `/api/register`; each must be 400 naming `field`, and nothing changes.
async fn all_refused(d: &discovery::Handle, cases: &[(String, &str)]) {
    let base = d.url();
    testkit::client::register(&base, "kept", 9).await;
    let before = registry(&base).await;
    for (body, field) in cases {
        let (status, answer) = send(d.addr(), "/api/register", body.as_bytes(), "").await;
        assert_eq!(status, 400, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(field),
            "{body}: {answer} does not name {field}"
        );
        let (status, _) = get(&format!("{base}/health_check")).await;
        assert_eq!(status, 200, "discovery answers after {body}");
    }
    assert_eq!(registry(&base).await, before, "the registry is unchanged");
}

#[async_std::test]
async fn hosts_that_killed_the_checker_are_400_and_discovery_lives() {
    let d = testkit::discovery().await;
    let cases: Vec<(String, &str)> = ["[127.0.0.2]", "[[[::1", "::1]", "09.1", "xn--a", "a_b"]
        .iter()
        .map(|h| {
            (
                json!({"namespace": "fz", "port": 1, "ip": h}).to_string(),
                "host",
            )
        })
        .collect();
    all_refused(&d, &cases).await;
    // A bracketed IPv6 literal is fine, and stored in its bare canonical form.
    let (status, answer) = send(
        d.addr(),
        "/api/register",
        br#"{"namespace": "v6", "port": 1, "host": "[0::1]"}"#,
        "",
    )
    .await;
    assert_eq!(
        (status, answer["host"].as_str()),
        (201, Some("::1")),
        "{answer}"
    );
    d.shutdown().await;
}

#[async_std::test]
async fn padded_and_zero_led_ports_are_400() {
    let d = testkit::discovery().await;
    let cases: Vec<(String, &str)> = ["08080", " 8081 ", "+80", "8080 "]
        .iter()
        .map(|p| (json!({"namespace": "fz", "port": p}).to_string(), "port"))
        .collect();
    all_refused(&d, &cases).await;
    d.shutdown().await;
}

#[async_std::test]
async fn invisible_and_bidi_namespaces_are_400() {
    let d = testkit::discovery().await;
    let cases: Vec<(String, &str)> = [
        "service\u{202E}A",
        "service\u{200B} A",
        "service\u{2066}A",
        "\u{FEFF}service A",
        "service\u{00A0}A",
    ]
    .iter()
    .map(|ns| (json!({"namespace": ns, "port": 1}).to_string(), "namespace"))
    .collect();
    all_refused(&d, &cases).await;
    d.shutdown().await;
}

#[async_std::test]
async fn trailing_bytes_after_the_json_are_400() {
    let d = testkit::discovery().await;
    let cases: Vec<(String, &str)> = [
        r#"{"namespace": "fz", "port": 1}{"namespace": "fz", "port": 2}"#,
        r#"{"namespace": "fz", "port": 1} x"#,
        "{\"namespace\": \"fz\", \"port\": 1}\n\u{0}",
    ]
    .iter()
    .map(|b| (b.to_string(), "exactly one JSON object"))
    .collect();
    all_refused(&d, &cases).await;
    d.shutdown().await;
}

/// A server that answers every connection `HTTP/1.0 200 OK` and closes, as Python's http.server does.
async fn http_1_0_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    task::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            task::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\n{}").await;
            });
        }
    });
    port
}

#[async_std::test]
async fn an_http_1_0_instance_becomes_available() {
    let d = testkit::discovery().await;
    let port = http_1_0_server().await;
    testkit::client::register(&d.url(), "old", port).await;
    wait_until(
        "the HTTP/1.0 instance is available",
        Duration::from_secs(5),
        || async { status_of(&d.url(), "old", port).await.as_deref() == Some("available") },
    )
    .await;
    d.shutdown().await;
}

#[async_std::test]
async fn metadata_and_names_resolving_to_refused_addresses_are_403() {
    let d = testkit::discovery().await;
    for host in [
        "169.254.169.254",
        "fd00:ec2::254",
        "0.0.0.0",
        "224.0.0.1",
        "8.8.8.8",
    ] {
        let body = json!({"namespace": "scan", "port": 80, "host": host}).to_string();
        let (status, answer) = send(d.addr(), "/api/register", body.as_bytes(), "").await;
        assert_eq!(status, 403, "{host}: {answer}");
        assert_eq!(answer["error"]["code"], "host_not_allowed");
    }
    assert!(registry(&d.url()).await.is_empty());
    d.shutdown().await;

    // localhost resolves to loopback, which this discovery does not allow.
    let d = start(DiscoveryConfig {
        allowed_hosts: vec!["10.0.0.0/8".into()],
        ..testkit::discovery_config()
    })
    .await;
    let body = json!({"namespace": "scan", "port": 80, "host": "localhost"}).to_string();
    let (status, answer) = send(d.addr(), "/api/register", body.as_bytes(), "").await;
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1"),
        "{answer}"
    );
    assert!(registry(&d.url()).await.is_empty());
    d.shutdown().await;
}

#[async_std::test]
async fn only_the_token_registers_and_deregisters() {
    let d = start(DiscoveryConfig {
        registration_token: Some("s3cret-token".into()),
        ..testkit::discovery_config()
    })
    .await;
    let base = d.url();
    let body = br#"{"namespace": "service A", "port": 9, "host": "127.0.0.1"}"#;
    let right = "authorization: Bearer s3cret-token\r\n";
    for path in ["/api/register", "/api/deregister"] {
        for headers in [
            "",
            "authorization: Bearer wrong\r\n",
            "authorization: Bearer s3cret-token-and-more\r\n",
            "authorization: Basic s3cret-token\r\n",
        ] {
            let (status, answer) = send(d.addr(), path, body, headers).await;
            assert_eq!(status, 401, "{path} with {headers:?}: {answer}");
            assert_eq!(answer["error"]["code"], "unauthorized");
        }
        assert!(registry(&base).await.is_empty(), "nothing changed");
    }
    let (status, _) = send(d.addr(), "/api/register", body, right).await;
    assert_eq!(status, 201);
    let before = registry(&base).await;
    for headers in ["", "authorization: Bearer wrong\r\n"] {
        let (status, _) = send(d.addr(), "/api/deregister", body, headers).await;
        assert_eq!(status, 401);
    }
    assert_eq!(
        registry(&base).await,
        before,
        "anonymous deregisters changed nothing"
    );
    // Reads stay open.
    let (status, _) = get(&format!("{base}/api/lookup?namespace=service%20A")).await;
    assert!(status == 200 || status == 503, "lookup is open: {status}");
    let (status, _) = send(d.addr(), "/api/deregister", body, right).await;
    assert_eq!(status, 200);
    assert!(registry(&base).await.is_empty());
    d.shutdown().await;
}

#[async_std::test]
async fn registrations_beyond_max_instances_are_429() {
    let d = start(DiscoveryConfig {
        max_instances_per_namespace: 2,
        max_instances: 3,
        ..testkit::discovery_config()
    })
    .await;
    let reg = |ns: &'static str, port: u16| {
        let addr = d.addr();
        async move {
            let body = json!({"namespace": ns, "port": port, "host": "127.0.0.1"}).to_string();
            send(addr, "/api/register", body.as_bytes(), "").await
        }
    };
    assert_eq!(reg("a", 1).await.0, 201);
    assert_eq!(reg("a", 2).await.0, 201);
    let (status, answer) = reg("a", 3).await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["error"]["code"], "too_many_instances");
    assert_eq!(reg("b", 1).await.0, 201);
    let (status, answer) = reg("c", 1).await;
    assert_eq!(status, 429, "{answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_instances"));
    assert_eq!(reg("a", 1).await.0, 200, "a renewal always passes");
    assert_eq!(registry(&d.url()).await.len(), 3);
    d.shutdown().await;
}

/// A sample of discovery's `/metrics`, 0 if absent.
async fn metric(base: &str, sample: &str) -> f64 {
    let (_, text) = get(&format!("{base}/metrics")).await;
    text.as_str()
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

#[async_std::test]
async fn with_128_descriptors_and_400_idle_connections_no_instance_is_marked_unavailable() {
    let config =
        testkit::tempdir::TempFile::new(format!("discovery-{}-fd128.json", std::process::id()));
    std::fs::write(
        &config,
        r#"{"listen": "127.0.0.1:0", "health_check_time_interval": "250ms",
            "timeout_threshold": "1s", "idle_timeout": "3s", "client_header_timeout": "3s"}"#,
    )
    .unwrap();
    let path = config.to_string_lossy();
    let d = Proc::start_limited("discovery", &["--config", &path], &[], 128);
    let addr = d.listening("discovery").await;
    let base = format!("http://{addr}");
    let apps = testkit::system::apps(&base, 3).await;
    let gateway = gateway::spawn(testkit::system::gateway_config(&base))
        .await
        .unwrap();
    let members: Vec<String> = apps.iter().map(|a| a.served_by().to_string()).collect();
    testkit::system::wait_ring(&gateway.admin_url(), &members, Duration::from_secs(10)).await;
    let checks_before = metric(&base, r#"discovery_health_checks_total{outcome="ok"}"#).await;

    // 400 idle connections, as many as the kernel lets through in a second.
    let attempts: Vec<_> = (0..400)
        .map(|_| {
            task::spawn(async move {
                async_std::future::timeout(Duration::from_secs(1), TcpStream::connect(addr))
                    .await
                    .ok()
                    .and_then(Result::ok)
            })
        })
        .collect();
    let mut idle = Vec::new();
    for a in attempts {
        idle.extend(a.await);
    }
    assert!(
        idle.len() >= 128,
        "only {} idle connections opened",
        idle.len()
    );
    let held = d.open_descriptors();
    eprintln!(
        "idle connections opened: {}, descriptors held by discovery: {held}",
        idle.len()
    );
    assert!(held <= 128, "over the limit? {held}");

    // A few health intervals: every POST is served and the ring never shrinks.
    let window = Instant::now();
    let mut answered = 0;
    for i in 0..200 {
        let res = testkit::system::post_once(gateway.addr(), "/api/pay", br#"{"n":1}"#).await;
        assert_eq!(
            res.status,
            200,
            "POST {i}: {}",
            String::from_utf8_lossy(&res.body)
        );
        answered += 1;
        if i % 10 == 0 {
            let ring = testkit::system::ring(&gateway.admin_url(), "service A").await;
            assert_eq!(ring.len(), 3, "the ring shrank: {ring:?}\n{}", d.output());
        }
    }
    while window.elapsed() < Duration::from_millis(1500) {
        let ring = testkit::system::ring(&gateway.admin_url(), "service A").await;
        assert_eq!(ring.len(), 3, "the ring shrank: {ring:?}\n{}", d.output());
        task::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(answered, 200);
    drop(idle);

    // Checks went on meanwhile, and none of them blamed an instance.
    let (_, services) = get(&format!("{base}/api/services")).await;
    for i in services["service A"].as_array().unwrap() {
        assert_eq!(i["status"], "available", "{i}");
        assert_eq!(i["consecutive_failures"], 0, "{i}");
    }
    let checks_after = metric(&base, r#"discovery_health_checks_total{outcome="ok"}"#).await;
    let not_made = metric(
        &base,
        r#"discovery_health_checks_total{outcome="not_made"}"#,
    )
    .await;
    eprintln!(
        "checks ok during the window: {}, not made: {not_made}",
        checks_after - checks_before
    );
    assert!(
        checks_after - checks_before >= 6.0,
        "checks stalled: {checks_before} then {checks_after}"
    );
    assert!(
        !d.output().contains("is now unavailable"),
        "an instance was marked unavailable (descriptors held at peak: {held}):\n{}",
        d.output()
    );
    gateway.shutdown().await;
    for a in apps {
        a.shutdown().await;
    }
    let _ = std::fs::remove_file(&config);
}

#[async_std::test]
async fn a_non_ascii_header_to_discovery_is_400_and_discovery_lives() {
    let d = start(testkit::discovery_config()).await;
    let heads: [&[u8]; 2] = [
        b"POST /api/register HTTP/1.1\r\nHost: d\r\nX-Note: caf\xc3\xa9\r\nContent-Length: 2\r\n\r\n{}",
        b"GET /api/services HTTP/1.1\r\nHost: d\r\nAuthorization: Bearer \xff\r\n\r\n",
    ];
    for head in heads {
        let mut stream = TcpStream::connect(d.addr()).await.unwrap();
        stream.write_all(head).await.unwrap();
        let mut answer = Vec::new();
        let _ =
            async_std::io::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(answer.contains("\"error\""), "a JSON error body: {answer}");
        let (status, _) = get(&format!("{}/health_check", d.url())).await;
        assert_eq!(status, 200, "discovery lives on");
    }
    assert!(
        registry(&d.url()).await.is_empty(),
        "nothing was registered"
    );
    d.shutdown().await;
}
