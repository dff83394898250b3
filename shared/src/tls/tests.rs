//! The certificate files and their choice by name, on certificates made here.

use super::files::validity;
use super::{Certificates, Upstream};
use crate::config::CertificateConfig;
use crate::config::UpstreamTlsConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::ServerName;
use std::time::{Duration, UNIX_EPOCH};

/// A fresh folder under the system's temporary one, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "shared-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A self-signed certificate for `names`, valid until `not_after` (a year).
fn certificate(names: &[&str], year: i32) -> (String, String) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.not_before = rcgen::date_time_ymd(year - 2, 1, 1);
    params.not_after = rcgen::date_time_ymd(year, 6, 30);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pair(dir: &std::path::Path, tag: &str, pem: &(String, String)) -> CertificateConfig {
    CertificateConfig {
        cert: write(dir, &format!("{tag}.crt"), &pem.0),
        key: write(dir, &format!("{tag}.key"), &pem.1),
    }
}

#[test]
fn the_validity_is_read_from_the_der() {
    let mut ends = Vec::new();
    for year in [2030, 2051] {
        // 2051: GeneralizedTime.
        let (pem, _) = certificate(&["a.test"], year);
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let v = validity(&der).unwrap();
        assert_eq!(v.not_after_text, format!("{year}-06-30 00:00:00 UTC"));
        ends.push(v.not_after);
    }
    let year_2030 = UNIX_EPOCH + Duration::from_secs(1_909_008_000); // 2030-06-30
    assert_eq!(ends[0], year_2030);
    assert!(ends[1] > ends[0]);
    assert!(validity(b"\x30\x03\x02\x01\x01").is_none());
    assert!(validity(&[]).is_none());
}

#[test]
fn certificates_are_chosen_by_name_and_the_first_is_the_default() {
    let dir = TempDir::new("tls-names");
    let a = pair(dir.path(), "a", &certificate(&["a.test"], 2090));
    let b = pair(dir.path(), "b", &certificate(&["b.test", "*.b.test"], 2090));
    let read = |pair: &CertificateConfig| {
        let pem = std::fs::read(&pair.cert).unwrap();
        CertificateDer::from_pem_slice(&pem).unwrap()
    };
    let (first, second) = (read(&a), read(&b));
    let certs = Certificates::load(&[a, b]).unwrap();
    let leaf = |name: Option<&str>| certs.for_name(name).unwrap().cert[0].clone();
    assert_eq!(leaf(Some("a.test")), first);
    assert_eq!(leaf(Some("b.test")), second);
    assert_eq!(leaf(Some("x.b.test")), second);
    assert_eq!(leaf(Some("other.test")), first, "unknown: the first");
    assert_eq!(leaf(None), first, "no SNI: the first");
}

#[test]
fn missing_mismatched_expired_and_garbled_files_are_named() {
    let dir = TempDir::new("tls-errors");
    let good = certificate(&["a.test"], 2090);
    let other = certificate(&["a.test"], 2090);
    let load = |pairs: Vec<CertificateConfig>| Certificates::load(&pairs).map(|_| ());
    let ok = pair(dir.path(), "ok", &good);
    assert_eq!(load(vec![ok.clone()]), Ok(()));

    let missing = CertificateConfig {
        cert: dir.path().join("none.crt").display().to_string(),
        key: ok.key.clone(),
    };
    let err = load(vec![missing.clone()]).unwrap_err();
    assert!(
        err.contains(&missing.cert) && err.contains("cannot read"),
        "{err}"
    );

    let mismatched = CertificateConfig {
        cert: ok.cert.clone(),
        key: pair(dir.path(), "other", &other).key,
    };
    let err = load(vec![mismatched.clone()]).unwrap_err();
    assert!(
        err.contains("does not match") && err.contains(&mismatched.key),
        "{err}"
    );

    let expired = pair(dir.path(), "old", &certificate(&["a.test"], 2020));
    let err = load(vec![ok.clone(), expired.clone()]).unwrap_err();
    assert!(
        err.contains(&expired.cert) && err.contains("expired on 2020-06-30"),
        "{err}"
    );

    let garbled = CertificateConfig {
        cert: write(dir.path(), "garbled.crt", "not a certificate\n"),
        key: ok.key.clone(),
    };
    let err = load(vec![garbled.clone()]).unwrap_err();
    assert!(err.contains(&garbled.cert), "{err}");

    let no_key = CertificateConfig {
        cert: ok.cert.clone(),
        key: write(dir.path(), "empty.key", ""),
    };
    let err = load(vec![no_key.clone()]).unwrap_err();
    assert!(err.contains(&no_key.key), "{err}");

    let dir_as_cert = CertificateConfig {
        cert: dir.path().display().to_string(),
        key: ok.key,
    };
    let err = load(vec![dir_as_cert]).unwrap_err();
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn the_name_an_instance_proves_is_server_name_else_its_host_an_ip_as_an_ip() {
    let dir = TempDir::new("tls-upstream");
    let ca = pair(dir.path(), "ca", &certificate(&["ca.test"], 2090));
    let load = |server_name: Option<&str>| {
        Upstream::load(&UpstreamTlsConfig {
            ca: ca.cert.clone(),
            server_name: server_name.map(str::to_string),
            ..UpstreamTlsConfig::default()
        })
        .unwrap()
    };
    let by_host = load(None);
    let ip = |n: &ServerName| matches!(n, ServerName::IpAddress(_));
    assert!(ip(&by_host.name_for("127.0.0.1").unwrap()));
    assert!(ip(&by_host.name_for("::1").unwrap()));
    assert!(ip(&by_host.name_for("[::1]").unwrap()));
    assert_eq!(
        by_host.name_for("app.test").unwrap(),
        ServerName::try_from("app.test").unwrap()
    );
    let err = by_host.name_for("not a name").unwrap_err();
    assert!(err.contains("set server_name"), "{err}");
    let named = load(Some("payments.internal"));
    assert_eq!(
        named.name_for("127.0.0.1").unwrap(),
        ServerName::try_from("payments.internal").unwrap()
    );
    let err = Upstream::load(&UpstreamTlsConfig {
        ca: ca.cert.clone(),
        server_name: Some("not a name".into()),
        ..UpstreamTlsConfig::default()
    })
    .unwrap_err();
    assert!(err.contains("server_name"), "{err}");
}
