//! Load over HTTPS: the gateway's TLS port (`"tls"`, docs/tls.md) with a
//! CA and an ECDSA P-256 certificate made here, `--cacert` trusting it.

use crate::common::{exclusive, members, System};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use loadtest::{Chaos, Options};
use shared::config::{CertificateConfig, TlsConfig};
use shared::runstate::Process;
use std::sync::Arc;
use std::time::Duration;
use testkit::procs::Proc;
use testkit::system::wait_ring;
use testkit::tempdir::TempDir;

/// A CA and a server certificate for localhost and 127.0.0.1, as PEM files.
pub struct Pki {
    pub dir: TempDir,
    pub ca: String,
    pub cert: String,
    pub key: String,
}

fn p256() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = TempDir::new(&format!("loadtest-tls-{name}"));
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "loadtest test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = p256();
        let ca = params.self_signed(&ca_key).unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = p256();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let write = |file: &str, text: String| {
            let path = dir.join(file);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        Pki {
            ca: write("ca.crt", ca.pem()),
            cert: write("server.crt", cert.pem()),
            key: write("server.key", key.serialize_pem()),
            dir,
        }
    }

    /// The gateway's `tls` key: a TLS port on any free loopback port.
    pub fn gateway_tls(&self) -> TlsConfig {
        TlsConfig {
            listen: "127.0.0.1:0".into(),
            cert: Some(self.cert.clone()),
            key: Some(self.key.clone()),
            certificates: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// The system with a TLS port, and options aimed at that port by `host`.
async fn tls_system(pki: &Pki, tweak: impl FnOnce(&mut shared::config::GatewayConfig)) -> System {
    let tls = pki.gateway_tls();
    System::start(|c| {
        c.tls = Some(tls);
        tweak(c);
    })
    .await
}

fn https_options(system: &System, pki: &Pki, host: &str, duration: Duration) -> Options {
    let port = system.gateway.tls_addr().unwrap().port();
    Options {
        url: format!("https://{host}:{port}"),
        cacert: Some(pki.ca.clone().into()),
        ..system.options(duration)
    }
}

#[async_std::test]
async fn load_over_https_is_clean_verified_and_says_it_ran_over_tls() {
    let _one = exclusive().await;
    let pki = Pki::new("load");
    let system = tls_system(&pki, |_| {}).await;
    for host in ["localhost", "127.0.0.1"] {
        let options = https_options(&system, &pki, host, Duration::from_millis(1500));
        let summary = loadtest::run(options).await.unwrap();
        println!("{summary}");
        assert!(summary.passed, "{summary}");
        assert!(summary.verified);
        assert_eq!(summary.failed, 0, "{summary}");
        assert_eq!(summary.transport_errors.total, 0, "{summary}");
        assert_eq!(summary.mismatches + summary.unattributed, 0, "{summary}");
        assert!(
            summary.ok > 100,
            "only {} OK answers: {summary}",
            summary.ok
        );
        assert_eq!(summary.ok, summary.requests);
        assert!(summary.target.starts_with("POST https://"), "{summary}");
        let tls = summary.tls.as_ref().unwrap();
        // One handshake per keep-alive connection, nothing reopened.
        assert_eq!(tls.handshakes, 16, "{summary}");
        assert!(tls.negotiated.contains("TLSv1_3"), "{summary}");
        let text = summary.to_string();
        assert!(text.contains("tls          TLSv1_3"), "{text}");
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["tls"]["handshakes"], 16);
        let mut seen: Vec<String> = summary
            .spread
            .instances
            .iter()
            .map(|s| s.instance.clone())
            .collect();
        let mut want = members(&system.apps);
        seen.sort();
        want.sort();
        assert_eq!(seen, want);
    }
    // The gateway counted the handshakes too.
    let metrics = testkit::system::metrics_text(&system.gateway.admin_url()).await;
    assert!(
        metrics.contains("gateway_tls_handshakes_total{result=\"ok\"} 32"),
        "{metrics}"
    );
    system.stop().await;
}

#[async_std::test]
async fn https_needs_a_ca_and_one_the_gateway_does_not_chain_to_fails_every_connect() {
    let _one = exclusive().await;
    let pki = Pki::new("wrong-ca");
    let system = tls_system(&pki, |_| {}).await;
    let options = https_options(&system, &pki, "localhost", Duration::from_millis(300));
    let err = loadtest::run(Options {
        cacert: None,
        ..options.clone()
    })
    .await
    .unwrap_err();
    assert!(err.contains("--cacert"), "{err}");
    // Another CA: every handshake refused, counted as connect errors.
    let other = Pki::new("other-ca");
    let summary = loadtest::run(Options {
        cacert: Some(other.ca.clone().into()),
        connections: 2,
        ..options.clone()
    })
    .await
    .unwrap();
    assert!(!summary.passed);
    assert_eq!(summary.answered, 0, "{summary}");
    assert!(summary.transport_errors.by_kind.connect > 0, "{summary}");
    assert!(
        summary.failure_samples[0].what.contains("certificate"),
        "{summary}"
    );
    // A CA file that is not there: the run does not start, naming it.
    let err = loadtest::run(Options {
        cacert: Some(pki.dir.join("missing.crt")),
        ..options
    })
    .await
    .unwrap_err();
    assert!(err.contains("missing.crt"), "{err}");
    system.stop().await;
}

/// A TLS server that echoes each POST's body with `x-served-by` and
/// `connection: close`, then closes: every request needs a new connection.
async fn closing_tls_echo(pki: &Pki) -> std::net::SocketAddr {
    let certificates = shared::tls::Certificates::load(&[CertificateConfig {
        cert: pki.cert.clone(),
        key: pki.key.clone(),
    }])
    .unwrap();
    let server = shared::tls::ServerTls::new(certificates, None).unwrap();
    let acceptor = futures_rustls::TlsAcceptor::from(server.config());
    let listener = async_std::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = Arc::new(acceptor);
    async_std::task::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            async_std::task::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head_end, length) = loop {
                    let Ok(n) = tls.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                        break (i + 4, length);
                    }
                };
                while buf.len() < head_end + length {
                    let Ok(n) = tls.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = &buf[head_end..head_end + length];
                let mut answer = format!(
                    "HTTP/1.1 200 OK\r\nx-served-by: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                answer.extend_from_slice(body);
                let _ = tls.write_all(&answer).await;
                let _ = tls.close().await;
            });
        }
    });
    addr
}

#[async_std::test]
async fn a_connection_the_server_closes_is_opened_again_with_a_new_handshake() {
    let _one = exclusive().await;
    let pki = Pki::new("reopen");
    let addr = closing_tls_echo(&pki).await;
    let summary = loadtest::run(Options {
        url: format!("https://localhost:{}", addr.port()),
        cacert: Some(pki.ca.clone().into()),
        duration: Duration::from_millis(500),
        connections: 2,
        drain_timeout: Duration::from_secs(5),
        ..Options::default()
    })
    .await
    .unwrap();
    println!("{summary}");
    assert!(summary.passed, "{summary}");
    assert!(summary.ok > 10, "{summary}");
    // One handshake per request: each answer closed its connection.
    assert_eq!(summary.tls.as_ref().unwrap().handshakes, summary.requests);
}

#[async_std::test]
async fn a_slow_instance_is_routed_around_over_https_without_errors() {
    let _one = exclusive().await;
    let pki = Pki::new("slow");
    let system = tls_system(&pki, |c| c.upstream_timeout = Duration::from_millis(500)).await;
    let state = system.write_state("tls-slow");
    let options = Options {
        chaos: Some(Chaos::Slow),
        chaos_at: Some(Duration::from_secs(1)),
        chaos_for: Some(Duration::from_millis(1500)),
        state: state.to_path_buf(),
        ..https_options(&system, &pki, "localhost", Duration::from_secs(4))
    };
    let summary = loadtest::run(options).await.unwrap();
    println!("{summary}");
    assert!(summary.passed, "{summary}");
    assert_eq!(summary.failed, 0, "{summary}");
    let chaos = summary.chaos.as_ref().unwrap();
    assert!(chaos.problems.is_empty(), "{:?}", chaos.problems);
    assert_eq!(chaos.errors_during_fault, 0);
    let t = &chaos.timeline;
    assert!(t.rejoined_s.unwrap() > t.lifted_s.unwrap(), "{summary}");
    assert_eq!(summary.tls.as_ref().unwrap().handshakes, 16, "{summary}");
    system.stop().await;
}

/// Chaos kill over https, its own instance started as `up` starts its apps:
/// from the command line of a running app the state file lists (relative to
/// the state file's folder), only the ports, discovery's URL and `--chaos`
/// its own. Here that app's config holds the registration token, which
/// neither the state file nor the environment has: the own instance can
/// only join the ring with that config.
#[async_std::test]
async fn a_killed_instance_over_https_is_started_as_the_listed_apps_are() {
    let _one = exclusive().await;
    let pki = Pki::new("kill");
    let token = "kill-config-t0k3n";
    let tls = pki.gateway_tls();
    let system = System::start_with_token(Some(token), |c| c.tls = Some(tls)).await;
    let dir = TempDir::new("loadtest-tls-kill");
    std::fs::write(
        dir.join("app.json"),
        format!(r#"{{"registration_token": "{token}"}}"#),
    )
    .unwrap();
    let app_bin = testkit::procs::bin("app");
    let config = dir.join("app.json").display().to_string();
    let discovery_url = system.discovery.url();
    let listed = Proc::start(
        "app",
        &[
            "--config",
            &config,
            "--port",
            "0",
            "--discovery-url",
            &discovery_url,
        ],
    );
    let listed_addr = listed.listening("app").await;
    let mut four = members(&system.apps);
    four.push(listed_addr.to_string());
    wait_ring(&system.gateway.admin_url(), &four, Duration::from_secs(5)).await;
    let state = system.write_state_with("tls-kill", |s| {
        s.cwd = dir.to_path_buf();
        s.processes.insert(
            format!("app-{}", listed_addr.port()),
            Process {
                pid: listed.pid(),
                argv: [
                    app_bin.display().to_string().as_str(),
                    "--config",
                    "app.json",
                    "--port",
                    &listed_addr.port().to_string(),
                    "--admin-port",
                    "0",
                    "--discovery-url",
                    &discovery_url,
                ]
                .map(String::from)
                .to_vec(),
                log: "app.log".into(),
            },
        );
    });
    let options = Options {
        chaos: Some(Chaos::Kill),
        chaos_at: Some(Duration::from_secs(1)),
        chaos_for: Some(Duration::from_secs(1)),
        app_bin: Some(app_bin.clone()),
        state: state.to_path_buf(),
        ..https_options(&system, &pki, "localhost", Duration::from_secs(4))
    };
    let summary = loadtest::run(options).await.unwrap();
    println!("{summary}");
    assert!(summary.passed, "{summary}");
    let chaos = summary.chaos.as_ref().unwrap();
    assert!(chaos.problems.is_empty(), "{:?}", chaos.problems);
    assert_eq!(chaos.errors_during_fault, 0, "{summary}");
    let own = chaos.target.split_whitespace().next().unwrap().to_string();
    // The three, the listed one and the own instance all served.
    assert_eq!(summary.spread.instances.len(), 5, "{summary}");
    assert!(
        summary.spread.instances.iter().any(|s| s.instance == own),
        "{summary}"
    );
    let t = &chaos.timeline;
    assert!(t.rejoined_s.unwrap() > t.lifted_s.unwrap(), "{summary}");
    assert_eq!(summary.tls.as_ref().unwrap().handshakes, 16, "{summary}");
    // Stopped at the end: it deregistered and left the ring.
    wait_ring(&system.gateway.admin_url(), &four, Duration::from_secs(5)).await;
    system.stop().await;
    drop(listed);
}
