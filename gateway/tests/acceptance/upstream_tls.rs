//! TLS from the gateway to instances (a route's `"upstream_tls"`,
//! docs/tls.md "Instances over TLS"): a TLS echo instance in the test
//! (futures-rustls over async-std), certificates from testkit::pki.

use async_std::net::TcpListener;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use shared::config::{GatewayConfig, RouteConfig, UpstreamTlsConfig};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use testkit::pki::{Issued, Pki};
use testkit::system::{gateway_config, post_once, wait_ring};
use testkit::tempdir::TempDir;

/// What the TLS instance saw.
#[derive(Default)]
pub(super) struct Seen {
    pub(super) tls_connections: AtomicUsize,
    pub(super) requests: AtomicUsize,
    /// Set by a test: answer with `connection: close` and close, so that
    /// every request is a new connection and handshake.
    pub(super) close: AtomicBool,
}

/// An instance on 127.0.0.1 speaking TLS with `server` (a certificate for
/// 127.0.0.1), requiring a client certificate signed by `client_ca` if
/// given. Plain connections (discovery's health checks: the discovery
/// here has no `upstream_tls`, so it checks in plain HTTP) get 200.
/// Answers each request with its body.
pub(super) async fn tls_instance(server: &Issued, client_ca: Option<&Pki>) -> (u16, Arc<Seen>) {
    let read = |path: &str| std::fs::read_to_string(path).unwrap();
    let config = testkit::pki::server_config(
        &read(&server.cert),
        &read(&server.key),
        client_ca.map(Pki::ca_der),
    );
    let acceptor = futures_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    async_std::task::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, seen) = (acceptor.clone(), counts.clone());
            async_std::task::spawn(async move {
                let mut first = [0u8; 1];
                if stream.peek(&mut first).await.unwrap_or(0) == 0 {
                    return;
                }
                if first[0] != 0x16 {
                    let mut plain = stream;
                    let mut buf = [0u8; 4096];
                    let _ = plain.read(&mut buf).await;
                    let _ = plain
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    return;
                }
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                seen.tls_connections.fetch_add(1, Ordering::SeqCst);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < end + 4 + length {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf.drain(..end + 4 + length).skip(end + 4).collect();
                    seen.requests.fetch_add(1, Ordering::SeqCst);
                    let close = seen.close.load(Ordering::SeqCst);
                    let header = if close { "connection: close\r\n" } else { "" };
                    let mut answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{header}\r\n",
                        body.len()
                    )
                    .into_bytes();
                    answer.extend_from_slice(&body);
                    if tls.write_all(&answer).await.is_err() || tls.flush().await.is_err() {
                        return;
                    }
                    if close {
                        let _ = tls.close().await;
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

/// Discovery, the instance registered in "service A", and a gateway routing
/// `/` there with `tls`.
async fn system(port: u16, tls: UpstreamTlsConfig) -> (discovery::Handle, gateway::Handle) {
    let d = testkit::discovery().await;
    testkit::client::register(&d.url(), "service A", port).await;
    let mut config = gateway_config(&d.url());
    // One worker: each worker pools its own connections.
    config.worker_threads = 1;
    config.routes = vec![RouteConfig {
        prefix: "/".into(),
        namespace: "service A".into(),
        upstream_tls: Some(tls),
        ..RouteConfig::default()
    }];
    let g = gateway::spawn(config).await.unwrap();
    wait_ring(
        &g.admin_url(),
        &[format!("127.0.0.1:{port}")],
        Duration::from_secs(5),
    )
    .await;
    (d, g)
}

async fn handshakes(admin: &str, result: &str) -> f64 {
    let sample = format!("gateway_upstream_tls_handshakes_total{{result=\"{result}\"}}");
    testkit::system::metric(admin, &sample).await
}

#[async_std::test]
async fn upstream_tls_requests_reach_the_instance_over_tls_on_one_pooled_connection() {
    let ca = Pki::new("upstream-tls-ok");
    let (port, seen) = tls_instance(&ca.issue("server", &["127.0.0.1"]), None).await;
    let tls = UpstreamTlsConfig {
        ca: ca.ca_file(),
        ..UpstreamTlsConfig::default()
    };
    let (d, g) = system(port, tls).await;
    for n in 0..5 {
        let body = format!("{{\"n\":{n}}}");
        let res = post_once(g.addr(), "/api/x", body.as_bytes()).await;
        assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
        assert_eq!(res.body, body.as_bytes());
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 5);
    assert_eq!(
        seen.tls_connections.load(Ordering::SeqCst),
        1,
        "one pooled TLS connection"
    );
    assert_eq!(handshakes(&g.admin_url(), "ok").await, 1.0);
    g.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn upstream_tls_with_a_wrong_ca_is_a_502_and_the_instance_sees_no_request() {
    let right = Pki::new("upstream-tls-right");
    let wrong = Pki::new("upstream-tls-wrong");
    let (port, seen) = tls_instance(&right.issue("server", &["127.0.0.1"]), None).await;
    let tls = UpstreamTlsConfig {
        ca: wrong.ca_file(),
        ..UpstreamTlsConfig::default()
    };
    let (d, g) = system(port, tls).await;
    let res = post_once(g.addr(), "/api/x", b"{}").await;
    assert_eq!(res.status, 502, "{}", String::from_utf8_lossy(&res.body));
    let json: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
    assert!(json.is_object(), "{json}");
    assert_eq!(seen.requests.load(Ordering::SeqCst), 0);
    assert_eq!(seen.tls_connections.load(Ordering::SeqCst), 0);
    assert!(handshakes(&g.admin_url(), "failed").await >= 1.0);
    g.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn upstream_tls_mtls_works_with_a_client_certificate_and_is_a_502_without() {
    let ca = Pki::new("upstream-tls-instances");
    let clients = Pki::new("upstream-tls-clients");
    let (port, seen) = tls_instance(&ca.issue("server", &["127.0.0.1"]), Some(&clients)).await;
    let client = clients.issue_client("client", &["gateway.test"]);
    let with = UpstreamTlsConfig {
        ca: ca.ca_file(),
        cert: Some(client.cert),
        key: Some(client.key),
        server_name: None,
    };
    let (d, g) = system(port, with).await;
    let res = post_once(g.addr(), "/api/x", b"{\"m\":1}").await;
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    assert_eq!(res.body, b"{\"m\":1}");
    g.shutdown().await;
    d.shutdown().await;

    let without = UpstreamTlsConfig {
        ca: ca.ca_file(),
        ..UpstreamTlsConfig::default()
    };
    let (d, g) = system(port, without).await;
    let res = post_once(g.addr(), "/api/x", b"{\"m\":2}").await;
    assert_eq!(res.status, 502, "{}", String::from_utf8_lossy(&res.body));
    let json: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
    assert!(json.is_object(), "{json}");
    assert_eq!(
        seen.requests.load(Ordering::SeqCst),
        1,
        "only the first gateway's"
    );
    g.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn upstream_tls_a_missing_ca_file_stops_the_start_naming_it() {
    let dir = TempDir::new("upstream-tls-missing");
    let missing = dir.join("none.pem").display().to_string();
    let mut config: GatewayConfig = gateway_config("http://127.0.0.1:1");
    config.routes[0].upstream_tls = Some(UpstreamTlsConfig {
        ca: missing.clone(),
        ..UpstreamTlsConfig::default()
    });
    let err = gateway::spawn(config).await.unwrap_err().to_string();
    assert!(err.contains(&missing) && err.contains("CA file"), "{err}");
}
