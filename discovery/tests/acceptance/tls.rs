//! Discovery and the app over TLS (docs/tls.md, "Discovery and the app over
//! TLS"): certificates made here with rcgen (testkit::pki), real TLS clients
//! (curl, rustls, the services' own https client), real discovery, apps
//! and a gateway.

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use nix::sys::signal::Signal;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use shared::config::{AppConfig, DiscoveryConfig, ServerTlsConfig};
use shared::https::ClientTls;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::pki::{Issued, Pki};
use testkit::procs::Proc;

const LIMIT: Duration = Duration::from_secs(20);

fn server_tls(server: &Issued, client_ca: Option<&str>) -> ServerTlsConfig {
    ServerTlsConfig {
        cert: Some(server.cert.clone()),
        key: Some(server.key.clone()),
        certificates: Vec::new(),
        handshake_timeout: Duration::from_secs(10),
        client_ca: client_ca.map(String::from),
    }
}

async fn tls_discovery(tls: ServerTlsConfig) -> discovery::Handle {
    discovery::spawn(DiscoveryConfig {
        tls: Some(tls),
        ..testkit::discovery_config()
    })
    .await
    .expect("discovery starts over TLS")
}

/// The services' own https client, trusting `ca`, showing `cert` if given.
fn https(ca: &str, cert: Option<&Issued>) -> surf::Client {
    let tls = ClientTls::load(ca, cert.map(Issued::pair)).unwrap();
    shared::https::client(surf::Config::new().set_timeout(Some(LIMIT)), Some(tls)).unwrap()
}

/// One call; the status and the JSON answer, or why there was none.
async fn call(
    client: &surf::Client,
    method: &str,
    url: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> Result<(u16, Value), String> {
    let method: surf::http::Method = method.parse().unwrap();
    let mut req = surf::Request::new(method, surf::Url::parse(url).unwrap());
    if let Some(body) = body {
        req.set_body(body.to_string());
        req.set_content_type(surf::http::mime::JSON);
    }
    if let Some(token) = token {
        req.insert_header("authorization", format!("Bearer {token}"));
    }
    let mut res = client.send(req).await.map_err(|e| e.to_string())?;
    let text = res.body_string().await.map_err(|e| e.to_string())?;
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((u16::from(res.status()), json))
}

/// The ports registered in `namespace`, read over https.
async fn ports(client: &surf::Client, base: &str, namespace: &str) -> Vec<String> {
    let (status, services) = call(client, "GET", &format!("{base}/api/services"), None, None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{services}");
    services[namespace]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|i| i["port"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `program` with `args` (stdin empty) under a time limit; the exit
/// code and its stdout and stderr together.
async fn run(program: String, args: Vec<String>) -> (Option<i32>, String) {
    async_std::task::spawn_blocking(move || {
        let out = std::process::Command::new("timeout")
            .arg("20")
            .arg(&program)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    })
    .await
}

/// Writes `bytes` on a fresh connection to `addr` and reads until the
/// server closes it; what came back and how long the close took (`None`:
/// not closed within `LIMIT`).
async fn until_closed(addr: SocketAddr, bytes: &[u8]) -> (Vec<u8>, Option<Duration>) {
    let mut stream = async_std::net::TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    if !bytes.is_empty() {
        stream.write_all(bytes).await.unwrap();
    }
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    let closed = async_std::future::timeout(LIMIT, read).await.is_ok();
    (got, closed.then(|| started.elapsed()))
}

/// A sample of discovery's `/metrics`, read over https; 0 if absent.
async fn metric(client: &surf::Client, base: &str, sample: &str) -> f64 {
    let (_, text) = call(client, "GET", &format!("{base}/metrics"), None, None)
        .await
        .unwrap();
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
async fn tls_discovery_answers_curl_and_closes_plain_http_at_once_and_silence_at_the_timeout() {
    let pki = Pki::new("discovery-https");
    let server = pki.issue("discovery", &["localhost", "127.0.0.1"]);
    let handshake_timeout = Duration::from_secs(2);
    let d = tls_discovery(ServerTlsConfig {
        handshake_timeout,
        ..server_tls(&server, None)
    })
    .await;
    assert!(d.url().starts_with("https://"), "{}", d.url());
    let port = d.addr().port();

    let (code, out) = run(
        "curl".into(),
        vec![
            "-sS".into(),
            "--cacert".into(),
            pki.ca_file(),
            format!("https://localhost:{port}/health_check"),
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["status"], "ok");
    // Registration by curl over https: no token configured, so open.
    let (code, out) = run(
        "curl".into(),
        vec![
            "-sS".into(),
            "--cacert".into(),
            pki.ca_file(),
            "-d".into(),
            r#"{"namespace": "curl", "port": "9", "host": "127.0.0.1"}"#.into(),
            format!("https://localhost:{port}/api/register"),
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["port"], "9");

    // A silent client holds its connection until the handshake timeout; it
    // holds up neither plain HTTP's prompt close nor a real client.
    let silent = async_std::task::spawn(until_closed(d.addr(), b""));
    let (got, closed) = until_closed(
        d.addr(),
        b"GET /health_check HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    let closed = closed.expect("plain HTTP to the TLS port is closed");
    assert!(
        closed < Duration::from_secs(1),
        "plain HTTP closed after {closed:?}"
    );
    assert!(
        !String::from_utf8_lossy(&got).contains("200"),
        "no answer in plain HTTP: {got:?}"
    );
    let client = https(&pki.ca_file(), None);
    let (status, _) = call(
        &client,
        "GET",
        &format!("{}/health_check", d.url()),
        None,
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let (_, closed) = silent.await;
    let closed = closed.expect("a silent client is closed");
    assert!(
        closed >= handshake_timeout - Duration::from_millis(100) && closed < handshake_timeout * 3,
        "a silent client closed after {closed:?}"
    );
    let base = d.url();
    assert!(
        metric(
            &client,
            &base,
            "discovery_tls_handshakes_total{result=\"failed\"}"
        )
        .await
            >= 1.0
    );
    assert!(
        metric(
            &client,
            &base,
            "discovery_tls_handshakes_total{result=\"timeout\"}"
        )
        .await
            >= 1.0
    );
    assert!(
        metric(
            &client,
            &base,
            "discovery_tls_handshakes_total{result=\"ok\"}"
        )
        .await
            >= 3.0
    );
    d.shutdown().await;
}

#[async_std::test]
async fn tls_the_app_serves_its_echo_over_https_and_its_admin_port_stays_plain() {
    let pki = Pki::new("app-https");
    let server = pki.issue("app", &["localhost", "127.0.0.1"]);
    // No discovery: the app serves while its registration retries.
    let a = app::spawn(AppConfig {
        tls: Some(server_tls(&server, None)),
        ..testkit::system::app_config("http://127.0.0.1:1")
    })
    .await
    .expect("the app starts over TLS");
    assert!(a.url().starts_with("https://"), "{}", a.url());
    let client = https(&pki.ca_file(), None);
    let body = r#"{"pay": 1, "note": "über"}"#;
    let mut res = client
        .post(format!("{}/api/pay", a.url()))
        .body_string(body.into())
        .content_type(surf::http::mime::JSON)
        .await
        .unwrap();
    assert_eq!(u16::from(res.status()), 200);
    assert_eq!(
        res.header("x-served-by").unwrap().as_str(),
        a.served_by(),
        "x-served-by"
    );
    assert_eq!(res.body_string().await.unwrap(), body, "byte for byte");
    // curl too, by name.
    let (code, out) = run(
        "curl".into(),
        vec![
            "-sS".into(),
            "--cacert".into(),
            pki.ca_file(),
            "-d".into(),
            r#"{"curl":true}"#.into(),
            format!("https://localhost:{}/x", a.addr().port()),
        ],
    )
    .await;
    assert_eq!((code, out.as_str()), (Some(0), r#"{"curl":true}"#));
    let (status, _) = testkit::client::get(&format!("{}/health_check", a.admin_url())).await;
    assert_eq!(status, 200, "the admin port speaks plain HTTP");
    a.shutdown().await;
}

#[async_std::test]
async fn tls_registration_by_client_certificate_stands_for_the_token_and_other_cas_fail_the_handshake(
) {
    let pki = Pki::new("reg-server");
    let clients = Pki::new("reg-clients");
    let strangers = Pki::new("reg-strangers");
    let server = pki.issue("discovery", &["localhost", "127.0.0.1"]);
    let good = clients.issue_client("app", &["app.test"]);
    let foreign = strangers.issue_client("app", &["app.test"]);
    let token = "s3cret-token";
    let d = discovery::spawn(DiscoveryConfig {
        tls: Some(server_tls(&server, Some(&clients.ca_file()))),
        registration_token: Some(token.into()),
        ..testkit::discovery_config()
    })
    .await
    .unwrap();
    let base = d.url();
    let reader = https(&pki.ca_file(), None);
    let register = |port: &str| json!({"namespace": "mtls", "port": port, "host": "127.0.0.1"});

    // An app with a client certificate from client_ca and no token is taken.
    let a = app::spawn(AppConfig {
        namespace: "mtls".into(),
        discovery_ca: Some(pki.ca_file()),
        discovery_cert: Some(good.cert.clone()),
        discovery_key: Some(good.key.clone()),
        ..testkit::system::app_config(&base)
    })
    .await
    .unwrap();
    let app_port = a.addr().port().to_string();
    testkit::wait_until("the app is registered over mTLS", LIMIT, || async {
        ports(&reader, &base, "mtls").await.contains(&app_port)
    })
    .await;

    // The same by hand: a certificate alone, for register and deregister.
    let with_cert = https(&pki.ca_file(), Some(&good));
    let url = |path: &str| format!("{base}{path}");
    let (status, body) = call(
        &with_cert,
        "POST",
        &url("/api/register"),
        Some(register("9001")),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(
        &with_cert,
        "POST",
        &url("/api/deregister"),
        Some(register("9001")),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");

    // A certificate from another CA: the handshake fails, nothing is stored.
    let with_foreign = https(&pki.ca_file(), Some(&foreign));
    let refused = call(
        &with_foreign,
        "POST",
        &url("/api/register"),
        Some(register("9002")),
        None,
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    // Even with the right token: the connection never gets that far.
    let refused = call(
        &with_foreign,
        "POST",
        &url("/api/register"),
        Some(register("9002")),
        Some(token),
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");

    // Neither a certificate nor the token: 401 with the JSON error body.
    let (status, body) = call(
        &reader,
        "POST",
        &url("/api/register"),
        Some(register("9003")),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("client certificate"), "{message}");
    let (status, body) = call(
        &reader,
        "POST",
        &url("/api/register"),
        Some(register("9003")),
        Some("wrong"),
    )
    .await
    .unwrap();
    assert_eq!(status, 401, "{body}");
    // The token alone still works.
    let (status, body) = call(
        &reader,
        "POST",
        &url("/api/register"),
        Some(register("9004")),
        Some(token),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{body}");

    // An app whose certificate is from another CA: refused at the
    // handshake (counted), never stored.
    let failed = "discovery_tls_handshakes_total{result=\"failed\"}";
    let before = metric(&reader, &base, failed).await;
    let b = app::spawn(AppConfig {
        namespace: "mtls".into(),
        discovery_ca: Some(pki.ca_file()),
        discovery_cert: Some(foreign.cert.clone()),
        discovery_key: Some(foreign.key.clone()),
        ..testkit::system::app_config(&base)
    })
    .await
    .unwrap();
    testkit::wait_until("the foreign app's handshakes fail", LIMIT, || async {
        metric(&reader, &base, failed).await >= before + 2.0
    })
    .await;
    let stored = ports(&reader, &base, "mtls").await;
    assert!(!stored.contains(&b.addr().port().to_string()), "{stored:?}");
    for port in ["9001", "9002", "9003"] {
        assert!(!stored.contains(&port.to_string()), "{port}: {stored:?}");
    }
    assert!(stored.contains(&"9004".to_string()), "{stored:?}");
    assert!(stored.contains(&app_port), "{stored:?}");
    b.shutdown().await;
    a.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn tls_a_gateway_with_discovery_ca_watches_an_https_discovery_and_forwards() {
    let pki = Pki::new("gateway-watch");
    let server = pki.issue("discovery", &["localhost", "127.0.0.1"]);
    let d = tls_discovery(server_tls(&server, None)).await;
    let mut apps = Vec::new();
    for _ in 0..2 {
        apps.push(
            app::spawn(AppConfig {
                discovery_ca: Some(pki.ca_file()),
                ..testkit::system::app_config(&d.url())
            })
            .await
            .unwrap(),
        );
    }
    let g = gateway::spawn(shared::config::GatewayConfig {
        discovery_ca: Some(pki.ca_file()),
        // Listens once the readiness check (a lookup over https) or the
        // watch has an instance.
        ready_timeout: LIMIT * 2,
        ..testkit::system::gateway_config(&d.url())
    })
    .await
    .unwrap();
    let members: Vec<String> = apps.iter().map(|a| a.served_by().to_string()).collect();
    testkit::system::wait_ring(&g.admin_url(), &members, LIMIT).await;
    testkit::wait_until("the gateway is ready", LIMIT, || async {
        testkit::client::get(&format!("{}/ready", g.admin_url()))
            .await
            .0
            == 200
    })
    .await;
    let mut served = Vec::new();
    for n in 0..4 {
        let body = format!("{{\"n\":{n}}}");
        let res = testkit::system::post_once(g.addr(), "/api/x", body.as_bytes()).await;
        assert_eq!(res.status, 200, "{res:?}");
        assert_eq!(res.body, body.as_bytes());
        served.push(res.header("x-served-by").unwrap_or_default().to_string());
    }
    for m in &members {
        assert!(served.contains(m), "{m} never served: {served:?}");
    }
    let status = testkit::system::status(&g.admin_url()).await;
    assert!(status.to_string().contains("https://"), "{status}");
    g.shutdown().await;
    for a in apps {
        a.shutdown().await;
    }
    d.shutdown().await;
}

type Tls = futures_rustls::client::TlsStream<async_std::net::TcpStream>;

/// A TLS connection to `addr` (SNI `localhost`), trusting only `ca`.
async fn connect(addr: SocketAddr, ca: &CertificateDer<'static>) -> Tls {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connecting = async {
        let tcp = async_std::net::TcpStream::connect(addr).await?;
        futures_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    };
    async_std::future::timeout(LIMIT, connecting)
        .await
        .expect("the handshake ends")
        .expect("the handshake succeeds")
}

fn leaf(tls: &Tls) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[async_std::test]
async fn tls_sighup_on_discovery_serves_a_new_certificate_to_new_connections_and_keeps_it_on_a_broken_one(
) {
    let pki = Pki::new("discovery-reload");
    let first = pki.issue("server", &["localhost"]);
    let config = json!({
        "listen": "127.0.0.1:0",
        "drain_timeout": "1s",
        "tls": {"cert": first.cert, "key": first.key},
    });
    let config = pki.write("discovery.json", &config.to_string());
    let proc = Proc::start("discovery", &["--config", &config]);
    let addr = proc.listening("discovery").await;
    let ca = pki.ca_der();
    let kept = connect(addr, &ca).await;
    assert!(leaf(&kept) == first.der);

    let second = pki.issue("server", &["localhost"]);
    assert!(second.der != first.der);
    proc.signal(Signal::SIGHUP);
    proc.wait_for_line("TLS certificates reloaded", LIMIT).await;
    let fresh = connect(addr, &ca).await;
    assert!(
        leaf(&fresh) == second.der,
        "a new connection: the new certificate"
    );
    assert!(leaf(&kept) == first.der, "an open one keeps its own");

    // A key that is not the certificate's: refused, logged, the second stays.
    let key = pki.write("server.key", &testkit::pki::p256().serialize_pem());
    proc.signal(Signal::SIGHUP);
    let line = proc.wait_for_line("TLS reload refused", LIMIT).await;
    assert!(
        line.contains("does not match") && line.contains(&key),
        "{line}"
    );
    let after = connect(addr, &ca).await;
    assert!(
        leaf(&after) == second.der,
        "the old certificate is still served"
    );
    let client = https(&pki.ca_file(), None);
    let (status, _) = call(
        &client,
        "GET",
        &format!("https://localhost:{}/health_check", addr.port()),
        None,
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "still serving after both reloads");
    drop(proc);
}

#[async_std::test]
async fn tls_check_config_names_a_missing_discovery_ca_file_and_an_https_url_without_one() {
    let missing = "/nonexistent/tls-test/ca.pem";
    let bin = |name: &str| testkit::procs::bin(name).display().to_string();
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for (program, flags) in [
        (
            "app",
            args(&[
                "--check-config",
                "--discovery-url",
                "https://127.0.0.1:8500",
                "--discovery-ca",
                missing,
            ]),
        ),
        (
            "gateway",
            args(&[
                "--check-config",
                "--discovery-url",
                "https://127.0.0.1:8500",
                "--discovery-ca",
                missing,
            ]),
        ),
        (
            "discovery",
            args(&["--check-config", "--discovery-ca", missing]),
        ),
    ] {
        let (code, out) = run(bin(program), flags).await;
        assert_eq!(code, Some(2), "{program}: {out}");
        assert!(
            out.contains("discovery_ca") && out.contains(missing),
            "{program}: {out}"
        );
    }
    // An https URL and no CA file: refused by name, never the system's roots.
    for program in ["app", "gateway"] {
        let (code, out) = run(
            bin(program),
            args(&[
                "--check-config",
                "--discovery-url",
                "https://127.0.0.1:8500",
            ]),
        )
        .await;
        assert_eq!(code, Some(2), "{program}: {out}");
        assert!(out.contains("needs discovery_ca"), "{program}: {out}");
    }
    // A missing client_ca under tls: named too.
    let pki = Pki::new("check-config");
    let server = pki.issue("server", &["localhost"]);
    let config = json!({"tls": {"cert": server.cert, "key": server.key, "client_ca": missing}});
    let file = pki.write("discovery.json", &config.to_string());
    let (code, out) = run(
        bin("discovery"),
        args(&["--check-config", "--config", &file]),
    )
    .await;
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("tls.client_ca") && out.contains(missing),
        "{out}"
    );
}
