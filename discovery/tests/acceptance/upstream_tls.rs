//! Health checks over TLS for the namespaces in `upstream_tls` (docs/tls.md,
//! "Instances over TLS"): a TLS instance in the test (futures-rustls over
//! async-std, answering 200 to any GET), certificates made with rcgen.

use async_std::net::TcpListener;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use serde_json::Value;
use shared::config::{DiscoveryConfig, UpstreamTlsConfig};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use testkit::client::{get, register};
use testkit::peer::Peer;
use testkit::tempdir::TempDir;
use testkit::wait_until;

/// Long enough for a few checks at the test config's 200 ms interval on a
/// busy 2-core machine.
const LIMIT: Duration = Duration::from_secs(10);

fn p256() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

/// A CA: its certificate file, and what signs with it.
struct Ca {
    file: String,
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn make_ca(dir: &TempDir, name: &str) -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = p256();
    let cert = params.self_signed(&key).unwrap();
    let file = write(dir, &format!("{name}.pem"), &cert.pem());
    Ca { file, cert, key }
}

/// A certificate for `names` signed by `ca`: (chain, key) in PEM.
fn issue(ca: &Ca, names: &[&str]) -> (String, String) {
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let key = p256();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &TempDir, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// An instance on 127.0.0.1 speaking TLS only with `server`, requiring a
/// client certificate signed by `client_ca` if given. Each request over TLS
/// is answered 200 and the connection closed; the count of those answers
/// is returned with the port.
async fn tls_instance(server: (String, String), client_ca: Option<&Ca>) -> (u16, Arc<AtomicUsize>) {
    let config = testkit::pki::server_config(
        &server.0,
        &server.1,
        client_ca.map(|ca| ca.cert.der().clone()),
    );
    let acceptor = futures_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let answered = Arc::new(AtomicUsize::new(0));
    let counts = answered.clone();
    async_std::task::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, counts) = (acceptor.clone(), counts.clone());
            async_std::task::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                if !head.starts_with(b"GET /health_check HTTP/1.1\r\n") {
                    return;
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                if tls.write_all(answer).await.is_ok() && tls.flush().await.is_ok() {
                    counts.fetch_add(1, Ordering::SeqCst);
                }
                let _ = tls.close().await;
            });
        }
    });
    (port, answered)
}

/// Discovery with the test config and `upstream_tls`.
async fn discovery(tls: &[(&str, UpstreamTlsConfig)]) -> discovery::Handle {
    let config = DiscoveryConfig {
        upstream_tls: tls
            .iter()
            .map(|(ns, t)| (ns.to_string(), t.clone()))
            .collect(),
        ..testkit::discovery_config()
    };
    discovery::spawn(config).await.unwrap()
}

fn trusting(ca: &Ca) -> UpstreamTlsConfig {
    UpstreamTlsConfig {
        ca: ca.file.clone(),
        ..UpstreamTlsConfig::default()
    }
}

/// What `/api/services` says of `port` in `namespace`.
async fn instance(base: &str, namespace: &str, port: u16) -> Option<Value> {
    let (_, services) = get(&format!("{base}/api/services")).await;
    services[namespace]
        .as_array()?
        .iter()
        .find(|i| i["port"].as_str() == Some(port.to_string().as_str()))
        .cloned()
}

async fn wait_available(base: &str, namespace: &str, port: u16) {
    wait_until(
        &format!("{namespace}:{port} is available"),
        LIMIT,
        || async {
            instance(base, namespace, port)
                .await
                .is_some_and(|i| i["status"] == "available")
        },
    )
    .await;
}

/// Waits until `port` in `namespace` has failed a check, then checks it is
/// unavailable and gives the reason, which must contain each of `says`.
async fn wait_refused(base: &str, namespace: &str, port: u16, says: &[&str]) -> String {
    wait_until(
        &format!("{namespace}:{port} has failed a check"),
        LIMIT,
        || async {
            instance(base, namespace, port)
                .await
                .is_some_and(|i| i["last_check_error"].is_string())
        },
    )
    .await;
    let info = instance(base, namespace, port).await.unwrap();
    assert_eq!(info["status"], "unavailable", "{info}");
    let reason = info["last_check_error"].as_str().unwrap().to_string();
    for word in says {
        assert!(reason.contains(word), "{word:?} not in {reason:?}");
    }
    reason
}

#[async_std::test]
async fn a_tls_instance_in_a_tls_namespace_becomes_available_and_other_namespaces_stay_plain() {
    let dir = TempDir::new("discovery-tls-ok");
    let ca = make_ca(&dir, "instances");
    let (port, answered) = tls_instance(issue(&ca, &["127.0.0.1"]), None).await;
    let d = discovery(&[("secure", trusting(&ca))]).await;
    let base = d.url();
    register(&base, "secure", port).await;
    // A namespace without upstream_tls is checked in plain HTTP as before.
    let plain = Peer::start().await;
    register(&base, "plain", plain.port()).await;
    wait_available(&base, "secure", port).await;
    wait_available(&base, "plain", plain.port()).await;
    assert!(answered.load(Ordering::SeqCst) >= 1);
    assert!(plain.checks() >= 1);
    let info = instance(&base, "secure", port).await.unwrap();
    assert!(info["last_check_error"].is_null(), "{info}");
    // The TLS instance in the plain namespace gets plain HTTP, which it
    // cannot read.
    register(&base, "plain", port).await;
    wait_refused(&base, "plain", port, &[]).await;
    d.shutdown().await;
}

/// A plain HTTP server that answers whatever arrives with a 400 and closes,
/// as nginx answers a TLS ClientHello on a plain port.
async fn plain_400() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    async_std::task::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            async_std::task::spawn(async move {
                let mut chunk = [0u8; 4096];
                if matches!(stream.read(&mut chunk).await, Ok(n) if n > 0) {
                    let answer = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                    let _ = stream.write_all(answer).await;
                }
            });
        }
    });
    port
}

#[async_std::test]
async fn a_plain_http_instance_in_a_tls_namespace_is_unhealthy() {
    let dir = TempDir::new("discovery-tls-plain");
    let ca = make_ca(&dir, "instances");
    let d = discovery(&[("secure", trusting(&ca))]).await;
    let base = d.url();
    // One that answers the ClientHello at once, as plain HTTP.
    let answering = plain_400().await;
    register(&base, "secure", answering).await;
    let reason = wait_refused(
        &base,
        "secure",
        answering,
        &["TLS handshake failed", "plain HTTP"],
    )
    .await;
    println!("plain HTTP answering: {reason}");
    // One that waits for the rest of a request head it will never get: the
    // check runs out of time.
    let waiting = Peer::start().await;
    register(&base, "secure", waiting.port()).await;
    let reason = wait_refused(&base, "secure", waiting.port(), &["no answer within"]).await;
    println!("plain HTTP waiting: {reason}");
    assert_eq!(waiting.checks(), 0, "no check reached it as HTTP");
    d.shutdown().await;
}

#[async_std::test]
async fn an_instance_another_ca_signed_or_for_another_name_stays_unavailable_saying_why() {
    let dir = TempDir::new("discovery-tls-wrong");
    let ca = make_ca(&dir, "instances");
    let other = make_ca(&dir, "other");
    let (port, answered) = tls_instance(issue(&ca, &["127.0.0.1"]), None).await;
    let named = UpstreamTlsConfig {
        server_name: Some("payments.internal".into()),
        ..trusting(&ca)
    };
    let d = discovery(&[("wrong-ca", trusting(&other)), ("wrong-name", named)]).await;
    let base = d.url();
    register(&base, "wrong-ca", port).await;
    register(&base, "wrong-name", port).await;
    let reason = wait_refused(
        &base,
        "wrong-ca",
        port,
        &["TLS handshake failed", "certificate"],
    )
    .await;
    println!("another CA: {reason}");
    let reason = wait_refused(
        &base,
        "wrong-name",
        port,
        &["TLS handshake failed", "certificate", "payments.internal"],
    )
    .await;
    println!("another name: {reason}");
    assert_eq!(answered.load(Ordering::SeqCst), 0, "no check got through");
    d.shutdown().await;
}

#[async_std::test]
async fn an_instance_requiring_a_client_certificate_is_available_only_with_one() {
    let dir = TempDir::new("discovery-tls-mtls");
    let ca = make_ca(&dir, "instances");
    let clients = make_ca(&dir, "clients");
    let (port, answered) = tls_instance(issue(&ca, &["127.0.0.1"]), Some(&clients)).await;
    let (cert, key) = issue(&clients, &["discovery"]);
    let with_cert = UpstreamTlsConfig {
        cert: Some(write(&dir, "client.pem", &cert)),
        key: Some(write(&dir, "client.key", &key)),
        ..trusting(&ca)
    };
    let d = discovery(&[("without", trusting(&ca)), ("with", with_cert)]).await;
    let base = d.url();
    register(&base, "without", port).await;
    let reason = wait_refused(&base, "without", port, &["TLS"]).await;
    println!("no client certificate: {reason}");
    assert!(reason.contains("CertificateRequired"), "{reason}");
    assert_eq!(answered.load(Ordering::SeqCst), 0);
    register(&base, "with", port).await;
    wait_available(&base, "with", port).await;
    assert!(answered.load(Ordering::SeqCst) >= 1);
    d.shutdown().await;
}

#[async_std::test]
async fn a_missing_ca_file_stops_the_start_and_check_config_naming_it() {
    let dir = TempDir::new("discovery-tls-files");
    let absent = dir.join("absent.pem").display().to_string();
    let config = DiscoveryConfig {
        upstream_tls: [(
            "secure".to_string(),
            UpstreamTlsConfig {
                ca: absent.clone(),
                ..UpstreamTlsConfig::default()
            },
        )]
        .into(),
        ..testkit::discovery_config()
    };
    let err = discovery::spawn(config).await.unwrap_err().to_string();
    assert!(
        err.contains(&absent) && err.contains("cannot read CA file") && err.contains("secure"),
        "{err}"
    );

    let bad = write(
        &dir,
        "bad.json",
        &format!(r#"{{"upstream_tls": {{"secure": {{"ca": "{absent}"}}}}}}"#),
    );
    let out = std::process::Command::new(testkit::procs::bin("discovery"))
        .args(["--config", &bad, "--check-config"])
        .env_remove("DISCOVERY_REGISTRATION_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&absent) && stderr.contains("cannot read CA file"),
        "{stderr}"
    );

    let ca = make_ca(&dir, "instances");
    let good = write(
        &dir,
        "good.json",
        &format!(
            r#"{{"upstream_tls": {{"secure": {{"ca": "{}"}}}}}}"#,
            ca.file
        ),
    );
    let out = std::process::Command::new(testkit::procs::bin("discovery"))
        .args(["--config", &good, "--check-config"])
        .env_remove("DISCOVERY_REGISTRATION_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("upstream_tls") && stdout.contains(&ca.file),
        "{stdout}"
    );
}
