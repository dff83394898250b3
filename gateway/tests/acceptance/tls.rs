//! HTTPS on the gateway's TLS port (`"tls"`, docs/tls.md): certificates
//! from testkit::pki (a CA signing ECDSA P-256 server certificates), real
//! clients (curl, openssl s_client, rustls), real discovery and instances.

use super::common::raw_system;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use nix::sys::signal::Signal;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::json;
use shared::config::{CertificateConfig, GatewayConfig, TlsConfig};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::pki::{p256, Issued, Pki};
use testkit::procs::Proc;
use testkit::raw::Script;

const LIMIT: Duration = Duration::from_secs(20);

fn tls_config(certs: &[&Issued], handshake_timeout: Duration) -> TlsConfig {
    TlsConfig {
        listen: "127.0.0.1:0".into(),
        cert: None,
        key: None,
        certificates: certs
            .iter()
            .map(|c| CertificateConfig {
                cert: c.cert.clone(),
                key: c.key.clone(),
            })
            .collect(),
        handshake_timeout,
    }
}

/// Discovery, one echo instance and a gateway whose TLS port presents a
/// certificate for `gw.test` from `pki`, handshakes bounded by `timeout`.
async fn echo_over_tls(
    pki: &Pki,
    timeout: Duration,
) -> (
    discovery::Handle,
    Vec<testkit::raw::RawInstance>,
    gateway::Handle,
) {
    let server = pki.issue("server", &["gw.test"]);
    let tls = tls_config(&[&server], timeout);
    raw_system(vec![Script::Echo], |c| c.tls = Some(tls)).await
}

type Tls = futures_rustls::client::TlsStream<async_std::net::TcpStream>;

/// A TLS connection to `addr` asking for `name`, trusting only `ca`.
async fn connect(addr: SocketAddr, name: &str, ca: &CertificateDer<'static>) -> Tls {
    connect_with(addr, name, client_config(ca)).await
}

/// A client trusting only `ca`, offering http/1.1; it keeps the sessions
/// its connections get, to resume them.
fn client_config(ca: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

async fn connect_with(addr: SocketAddr, name: &str, config: Arc<rustls::ClientConfig>) -> Tls {
    let connecting = async {
        let tcp = async_std::net::TcpStream::connect(addr).await?;
        let name = ServerName::try_from(name.to_string()).unwrap();
        futures_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
    };
    async_std::future::timeout(LIMIT, connecting)
        .await
        .expect("the handshake ends")
        .expect("the handshake succeeds")
}

/// The server's certificate on `tls`.
fn leaf(tls: &Tls) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// POSTs `body` on `tls` (keep-alive); the status line and the body.
async fn post(tls: &mut Tls, body: &str) -> (String, String) {
    let exchange = async {
        let req = format!(
            "POST /api/tls HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(req.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().unwrap())
                    })
                    .unwrap();
                if got.len() >= end + 4 + len {
                    let body = String::from_utf8_lossy(&got[end + 4..end + 4 + len]).to_string();
                    let status = head.lines().next().unwrap().to_string();
                    return (status, body);
                }
            }
            let n = tls.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed mid-answer: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    };
    async_std::future::timeout(LIMIT, exchange)
        .await
        .expect("answered")
}

/// Runs `program` with `args` (stdin empty) under a time limit; its stdout
/// and stderr together.
async fn run(program: &str, args: Vec<String>) -> String {
    let program = program.to_string();
    async_std::task::spawn_blocking(move || {
        let out = std::process::Command::new("timeout")
            .arg("20")
            .arg(&program)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
    .await
}

/// `openssl s_client` to `addr`, SNI `name` (none: no SNI), with `extra` flags.
async fn s_client(addr: SocketAddr, ca: &str, name: Option<&str>, extra: &[&str]) -> String {
    let mut args: Vec<String> = ["s_client", "-connect", &addr.to_string(), "-CAfile", ca]
        .iter()
        .map(|s| s.to_string())
        .collect();
    match name {
        Some(name) => args.extend(["-servername".into(), name.into()]),
        None => args.push("-noservername".into()),
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    run("openssl", args).await
}

#[async_std::test]
async fn tls_curl_gets_the_echo_and_the_instance_sees_x_forwarded_proto_https() {
    let pki = Pki::new("curl");
    let (d, raws, g) = echo_over_tls(&pki, Duration::from_secs(10)).await;
    let port = g.tls_addr().unwrap().port();
    let body = r#"{"hello": "tls", "n": 1.0}"#;
    let out = run(
        "curl",
        vec![
            "-sS".into(),
            "--max-time".into(),
            "10".into(),
            "--cacert".into(),
            pki.ca_file(),
            "--resolve".into(),
            format!("gw.test:{port}:127.0.0.1"),
            "-H".into(),
            "X-Forwarded-Proto: ftp".into(),
            "-d".into(),
            body.into(),
            format!("https://gw.test:{port}/api/echo"),
        ],
    )
    .await;
    assert_eq!(out, body, "curl over https");
    let seen = raws[0].received().pop().unwrap();
    let protos: Vec<&str> = seen
        .head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("x-forwarded-proto:"))
        .collect();
    assert_eq!(protos, ["x-forwarded-proto: https"], "{}", seen.head);

    // The plain port: `http`, whatever the client claims.
    let mut conn = shared::http1::client::Connection::connect(g.addr())
        .await
        .unwrap();
    let req = "POST /api/echo HTTP/1.1\r\nHost: gw\r\nX-Forwarded-Proto: https\r\nContent-Length: 2\r\n\r\n{}";
    let res = conn.exchange(req.as_bytes()).await.unwrap();
    assert_eq!((res.status, res.body.as_slice()), (200, &b"{}"[..]));
    let seen = raws[0].received().pop().unwrap();
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        seen.head
            .to_ascii_lowercase()
            .matches("x-forwarded-proto")
            .count(),
        1
    );
    g.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn tls_s_client_negotiates_tls13_and_tls12_with_alpn_http11() {
    let pki = Pki::new("versions");
    let (d, _raws, g) = echo_over_tls(&pki, Duration::from_secs(10)).await;
    let addr = g.tls_addr().unwrap();
    for (flag, version) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
        let flags = [
            flag,
            "-alpn",
            "http/1.1",
            "-verify_return_error",
            "-verify_hostname",
            "gw.test",
        ];
        let out = s_client(addr, &pki.ca_file(), Some("gw.test"), &flags).await;
        assert!(out.contains(&format!("New, {version}, Cipher is")), "{out}");
        assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
        assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    }
    // A client that offers only h2 gets no protocol it can use.
    let out = s_client(addr, &pki.ca_file(), Some("gw.test"), &["-alpn", "h2"]).await;
    assert!(!out.contains("ALPN protocol: h2"), "{out}");
    // And the rustls client: TLS 1.3 and http/1.1, an echo on it.
    let mut tls = connect(addr, "gw.test", &pki.ca_der()).await;
    let conn = tls.get_ref().1;
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, body) = post(&mut tls, r#"{"a":1}"#).await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", r#"{"a":1}"#)
    );
    g.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn tls_sessions_resume_with_the_one_ticket_that_comes_with_the_first_answer() {
    let pki = Pki::new("resume");
    let (d, _raws, g) = echo_over_tls(&pki, Duration::from_secs(10)).await;
    let addr = g.tls_addr().unwrap();
    let config = client_config(&pki.ca_der());
    let mut first = connect_with(addr, "gw.test", config.clone()).await;
    assert_eq!(
        first.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    // The handshake is over and the gateway sent its ticket at once before:
    // now nothing comes until there is an answer to carry it.
    async_std::task::sleep(Duration::from_millis(200)).await;
    let mut byte = [0u8; 1];
    let early =
        async_std::future::timeout(Duration::from_millis(1), first.get_ref().0.peek(&mut byte));
    assert!(early.await.is_err(), "bytes before any request");
    let (status, body) = post(&mut first, r#"{"n":1}"#).await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", r#"{"n":1}"#)
    );
    assert_eq!(first.get_ref().1.tls13_tickets_received(), 1, "one ticket");
    // A new connection resumes the session that ticket holds, and gets one.
    let mut second = connect_with(addr, "gw.test", config).await;
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    let (status, body) = post(&mut second, r#"{"n":2}"#).await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", r#"{"n":2}"#)
    );
    assert_eq!(second.get_ref().1.tls13_tickets_received(), 1);
    g.shutdown().await;
    d.shutdown().await;
}

/// The subject's common name `s_client` printed, spaces removed.
fn subject(out: &str) -> String {
    out.lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_else(|| panic!("no subject: {out}"))
        .replace(' ', "")
}

#[async_std::test]
async fn tls_each_sni_name_gets_its_own_certificate_and_others_the_first() {
    let pki = Pki::new("sni");
    let a = pki.issue("a", &["a.test"]);
    let b = pki.issue("b", &["b.test", "*.b.test"]);
    let tls = tls_config(&[&a, &b], Duration::from_secs(10));
    let (d, _raws, g) = raw_system(vec![Script::Echo], |c| c.tls = Some(tls)).await;
    let addr = g.tls_addr().unwrap();
    for (name, want) in [("a.test", &a), ("b.test", &b), ("x.b.test", &b)] {
        let mut tls = connect(addr, name, &pki.ca_der()).await;
        assert!(leaf(&tls) == want.der, "{name} got another certificate");
        let (status, _) = post(&mut tls, "{}").await;
        assert_eq!(status, "HTTP/1.1 200 OK", "{name}");
    }
    let ca = pki.ca_file();
    let unknown = s_client(addr, &ca, Some("other.test"), &[]).await;
    assert_eq!(subject(&unknown), "subject=CN=a.test", "{unknown}");
    let without = s_client(addr, &ca, None, &[]).await;
    assert_eq!(subject(&without), "subject=CN=a.test", "{without}");
    let named = s_client(addr, &ca, Some("b.test"), &[]).await;
    assert_eq!(subject(&named), "subject=CN=b.test", "{named}");
    g.shutdown().await;
    d.shutdown().await;
}

/// Connects to `addr`, sends `bytes`, and reads until the gateway closes:
/// what it sent and how long that took (`None`: still open after `LIMIT`).
async fn sent_then_closed(addr: SocketAddr, bytes: Vec<u8>) -> (Vec<u8>, Option<Duration>) {
    async_std::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        let started = Instant::now();
        let _ = s.write_all(&bytes);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return (got, Some(started.elapsed())),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return (got, None),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return (got, None),
                // Reset: closed with unread input.
                Err(_) => return (got, Some(started.elapsed())),
            }
        }
    })
    .await
}

#[async_std::test]
async fn tls_plain_http_and_oversized_hellos_are_closed_at_once_and_a_silent_client_at_the_handshake_timeout(
) {
    let pki = Pki::new("hostile");
    let server = pki.issue("server", &["gw.test"]);
    let timeout = Duration::from_secs(3);
    let tls = tls_config(&[&server], timeout);
    let (d, _raws, g) = raw_system(vec![Script::Echo], |c| c.tls = Some(tls)).await;
    let addr = g.tls_addr().unwrap();
    let admin = g.admin_url();

    let silent = async_std::task::spawn(sent_then_closed(addr, Vec::new()));
    // A record header promising a ClientHello that never comes.
    let partial = async_std::task::spawn(sent_then_closed(addr, vec![0x16, 3, 1, 0, 200, 1]));

    let plain = b"GET / HTTP/1.1\r\nHost: gw.test\r\n\r\n".to_vec();
    // A handshake record far over TLS's 16 KiB (plus expansion) limit.
    let mut oversized = vec![0x16, 3, 1, 0xff, 0xff];
    oversized.extend(std::iter::repeat_n(0u8, 70_000));
    // A ClientHello claiming 16 MiB, in records of the largest lawful size:
    // refused at its header (rustls takes handshake messages up to 64 KiB),
    // not buffered until the rest comes.
    let mut huge_hello = Vec::new();
    for i in 0..4 {
        huge_hello.extend([0x16, 3, 1, 0x40, 0x00]);
        let mut record = vec![0u8; 0x4000];
        if i == 0 {
            record[..4].copy_from_slice(&[1, 0xff, 0xff, 0xff]);
        }
        huge_hello.extend(record);
    }
    let cases = [
        ("plain HTTP", plain),
        ("an oversized record", oversized),
        ("an oversized ClientHello", huge_hello),
    ];
    for (what, bytes) in cases {
        let (got, took) = sent_then_closed(addr, bytes).await;
        let took = took.unwrap_or_else(|| panic!("{what}: still open"));
        assert!(took < timeout, "{what}: closed after {took:?}, not at once");
        assert!(
            got.is_empty() || got[0] == 0x15,
            "{what}: nothing but a TLS alert: {got:?}"
        );
        assert!(!String::from_utf8_lossy(&got).contains("HTTP/"), "{what}");
    }
    for (what, waiting) in [("silent", silent), ("partial", partial)] {
        let (got, took) = waiting.await;
        let took = took.unwrap_or_else(|| panic!("{what}: still open"));
        // Deadlines keep the worker's clock, read once per turn.
        assert!(
            took >= timeout - Duration::from_millis(100) && took < LIMIT,
            "{what}: closed after {took:?}"
        );
        assert!(got.is_empty() || got[0] == 0x15, "{what}: {got:?}");
    }
    let count = |result: &'static str| {
        let admin = admin.clone();
        async move {
            let sample = format!("gateway_tls_handshakes_total{{result=\"{result}\"}}");
            testkit::system::metric(&admin, &sample).await
        }
    };
    // Counted as the connection ends, which its client may see first.
    testkit::wait_until("2 timeouts and 3 failures counted", LIMIT, || async {
        (count("timeout").await, count("failed").await) == (2.0, 3.0)
    })
    .await;
    assert_eq!(count("ok").await, 0.0);
    g.shutdown().await;
    d.shutdown().await;
}

/// What every config file of the gateway binary in these tests holds:
/// ports the kernel picks, `discovery_url`, no wait for readiness, a short
/// drain.
pub(super) fn base_file_config(discovery_url: &str) -> serde_json::Value {
    json!({
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
        "discovery_url": discovery_url,
        "ready_timeout": 0,
        "drain_timeout": "2s",
    })
}

/// A config file for the gateway binary with a TLS port on `server`.
pub(super) fn file_config(discovery_url: &str, server: &Issued) -> String {
    let mut config = base_file_config(discovery_url);
    config["tls"] = json!({"listen": "127.0.0.1:0", "cert": server.cert, "key": server.key});
    config.to_string()
}

/// The TLS port the gateway binary logged.
pub(super) async fn tls_port(proc: &Proc) -> SocketAddr {
    let needle = "gateway TLS port on https://";
    let line = proc.wait_for_line(needle, LIMIT).await;
    let rest = &line[line.find(needle).unwrap() + needle.len()..];
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | ':'))
        .collect();
    addr.parse().unwrap()
}

/// `gateway_config_reloads_total{result}` on `admin`.
pub(super) async fn reloads(admin: &str, result: &str) -> f64 {
    let sample = format!("gateway_config_reloads_total{{result=\"{result}\"}}");
    testkit::system::metric(admin, &sample).await
}

/// The gateway binary with a config file ([`file_config`]) whose TLS port
/// presents `first`, a certificate for `gw.test` from `pki`, in front of
/// real discovery and apps.
pub(super) struct TlsGateway {
    pub discovery: discovery::Handle,
    pub apps: Vec<app::Handle>,
    pub pki: Pki,
    pub first: Issued,
    pub proc: Proc,
    pub admin: String,
    pub addr: SocketAddr,
}

impl TlsGateway {
    /// Starts it with `apps` apps; `name` names the PKI's folder.
    pub(super) async fn start(name: &str, apps: usize) -> TlsGateway {
        let discovery = testkit::discovery().await;
        let apps = testkit::system::apps(&discovery.url(), apps).await;
        let pki = Pki::new(name);
        let first = pki.issue("server", &["gw.test"]);
        let config = pki.write("gateway.json", &file_config(&discovery.url(), &first));
        let proc = Proc::start("gateway", &["--config", &config]);
        let admin = format!("http://{}", proc.listening("gateway admin").await);
        proc.listening("gateway").await;
        let addr = tls_port(&proc).await;
        TlsGateway {
            discovery,
            apps,
            pki,
            first,
            proc,
            admin,
            addr,
        }
    }

    /// Stops the gateway, then the apps and discovery.
    pub(super) async fn stop(self) {
        drop(self.proc);
        for a in self.apps {
            a.shutdown().await;
        }
        self.discovery.shutdown().await;
    }
}

#[async_std::test]
async fn tls_sighup_serves_a_new_certificate_to_new_connections_and_refuses_a_broken_one() {
    let gw = TlsGateway::start("reload", 1).await;
    let (pki, first, proc, admin, addr) =
        (&gw.pki, &gw.first, &gw.proc, gw.admin.as_str(), gw.addr);
    let ca = pki.ca_der();

    let mut kept = connect(addr, "gw.test", &ca).await;
    assert!(leaf(&kept) == first.der);
    assert_eq!(post(&mut kept, "{\"n\":1}").await.1, "{\"n\":1}");

    // A new certificate in the same files, then SIGHUP.
    let second = pki.issue("server", &["gw.test"]);
    assert!(second.der != first.der);
    proc.signal(Signal::SIGHUP);
    testkit::wait_until("the reload", LIMIT, || async {
        reloads(admin, "ok").await == 1.0
    })
    .await;
    let mut fresh = connect(addr, "gw.test", &ca).await;
    assert!(
        leaf(&fresh) == second.der,
        "a new connection: the new certificate"
    );
    assert_eq!(post(&mut fresh, "{\"n\":2}").await.1, "{\"n\":2}");
    // The connection opened before goes on, on its certificate.
    assert_eq!(post(&mut kept, "{\"n\":3}").await.1, "{\"n\":3}");
    assert!(leaf(&kept) == first.der);

    // A key that is not the certificate's: refused, the second one stays.
    let stranger = p256().serialize_pem();
    let key = pki.write("server.key", &stranger);
    proc.signal(Signal::SIGHUP);
    testkit::wait_until("the refusal", LIMIT, || async {
        reloads(admin, "error").await == 1.0
    })
    .await;
    let line = proc.wait_for_line("configuration refused", LIMIT).await;
    assert!(
        line.contains("does not match") && line.contains(&key),
        "{line}"
    );
    let mut after = connect(addr, "gw.test", &ca).await;
    assert!(
        leaf(&after) == second.der,
        "the old certificate is still served"
    );
    assert_eq!(post(&mut after, "{\"n\":4}").await.1, "{\"n\":4}");
    assert_eq!(post(&mut kept, "{\"n\":5}").await.1, "{\"n\":5}");
    gw.stop().await;
}

#[async_std::test]
async fn tls_a_missing_or_expired_certificate_stops_the_start_naming_the_file() {
    let pki = Pki::new("start");
    let good = pki.issue("good", &["gw.test"]);
    let missing = Issued {
        cert: pki.dir().join("missing.crt").display().to_string(),
        ..good.clone()
    };
    let expired = pki.issue_with("expired", &["gw.test"], |params| {
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    });
    for (server, says) in [
        (&missing, "cannot read certificate"),
        (&expired, "expired on 2020-01-01"),
    ] {
        let config = pki.write("gateway.json", &file_config("http://127.0.0.1:9", server));
        let mut proc = Proc::start("gateway", &["--config", &config]);
        let status = proc.exited(LIMIT).await;
        let out = proc.output();
        assert!(!status.success(), "{out}");
        assert!(out.contains(says) && out.contains(&server.cert), "{out}");
    }
    // In process: the same refusal, as an error.
    let config = GatewayConfig {
        tls: Some(tls_config(&[&expired], Duration::from_secs(1))),
        ..testkit::system::gateway_config("http://127.0.0.1:9")
    };
    let err = gateway::spawn(config).await.unwrap_err().to_string();
    assert!(err.contains(&expired.cert), "{err}");
}

/// A real client's first flight (its ClientHello) for `name`.
fn client_hello(name: &str, ca: &CertificateDer<'static>) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(name.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

#[async_std::test]
async fn tls_a_flood_of_client_hellos_never_finished_leaves_real_clients_served() {
    const FLOOD: usize = 300;
    let pki = Pki::new("flood");
    let server = pki.issue("server", &["gw.test"]);
    let timeout = Duration::from_secs(2);
    let tls = tls_config(&[&server], timeout);
    let (d, _raws, g) = raw_system(vec![Script::Echo], |c| c.tls = Some(tls)).await;
    let addr = g.tls_addr().unwrap();
    let hello = client_hello("gw.test", &pki.ca_der());
    // Each sends a whole ClientHello (the gateway answers it: key exchange
    // and signature done), then never finishes the handshake.
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(&hello).unwrap();
        flood.push(s);
    }
    let started = Instant::now();
    let mut real = connect(addr, "gw.test", &pki.ca_der()).await;
    let (status, body) = post(&mut real, r#"{"during": "flood"}"#).await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", r#"{"during": "flood"}"#)
    );
    assert!(
        started.elapsed() < timeout,
        "a real client waited {:?} behind the flood",
        started.elapsed()
    );
    // Every flooding connection is closed at the handshake timeout.
    let closed = async_std::task::spawn_blocking(move || {
        flood
            .into_iter()
            .filter(|s| {
                let mut s = s;
                s.set_read_timeout(Some(LIMIT)).unwrap();
                let mut sink = Vec::new();
                // EOF (Ok) or a reset: closed; a read timeout: still open.
                !matches!(s.read_to_end(&mut sink), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut)
            })
            .count()
    })
    .await;
    assert_eq!(closed, FLOOD, "flooding connections left open");
    let admin = g.admin_url();
    let sample = "gateway_tls_handshakes_total{result=\"timeout\"}";
    testkit::wait_until(
        "every flooding handshake counted as timed out",
        LIMIT,
        || {
            let admin = admin.clone();
            async move { testkit::system::metric(&admin, sample).await == FLOOD as f64 }
        },
    )
    .await;
    // And the real client's keep-alive connection still works.
    let (status, _) = post(&mut real, "{}").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    g.shutdown().await;
    d.shutdown().await;
}
