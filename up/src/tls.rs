//! `up --tls`: a local CA and its certificates, and the TLS keys of each
//! service's config (docs/tls.md, "Everything over TLS: up --tls").
//!
//! The certificates are made with rcgen (ECDSA P-256) into `<state dir>/tls/`
//! for `localhost`, `127.0.0.1` and `::1`, and reused by the next run while
//! they are whole, chain to the CA, cover those names and stay valid for at
//! least a day more; otherwise all of them are made again. The CA's key is
//! never written: a new set is simply made whole.
//!
//! The configs `up` starts the services with are the shipped ones plus the
//! keys written by [`Keys`], the one place that names them, into
//! `<state dir>/config/`.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::{json, Map, Value};
use shared::config::CertificateConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The names every certificate is for: the services listen on loopback.
pub const NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// How long a new set is valid.
const VALID_FOR: Duration = Duration::from_secs(365 * 24 * 3600);
/// A set that expires sooner than this is made again.
const MARGIN: Duration = Duration::from_secs(24 * 3600);

/// The files of one set, by absolute path.
#[derive(Clone, Debug, PartialEq)]
pub struct Files {
    pub dir: PathBuf,
    /// The CA certificate: what clients trust (`curl --cacert`).
    pub ca: PathBuf,
    /// Every server's certificate and key (serverAuth).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The apps' client certificate and key for registering (clientAuth).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Files {
    /// The set's paths under `state_dir/tls` (made absolute, as the services
    /// may be started from elsewhere: `loadtest --chaos discovery`).
    pub fn under(state_dir: &Path) -> Files {
        let base = if state_dir.is_absolute() {
            state_dir.to_path_buf()
        } else {
            std::env::current_dir()
                .map(|cwd| cwd.join(state_dir))
                .unwrap_or_else(|_| state_dir.to_path_buf())
        };
        let dir = base.join("tls");
        Files {
            ca: dir.join("ca.crt"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
            dir,
        }
    }

    fn pair(cert: &Path, key: &Path) -> CertificateConfig {
        CertificateConfig {
            cert: text(cert),
            key: text(key),
        }
    }
}

fn text(p: &Path) -> String {
    p.display().to_string()
}

/// Whether [`ensure`] made a new set or kept the one there.
#[derive(Clone, Debug, PartialEq)]
pub enum Made {
    New,
    /// The reason the old set (if any) was not kept.
    Replaced(String),
    Reused,
}

/// Reuses the set under `files.dir` if it is still good, else makes one.
pub fn ensure(files: &Files) -> Result<Made, String> {
    let why = match check(files, SystemTime::now() + MARGIN) {
        Ok(()) => return Ok(Made::Reused),
        Err(why) => why,
    };
    let existed = files.ca.exists();
    make(files, SystemTime::now())?;
    check(files, SystemTime::now()).map_err(|e| format!("the certificates just made: {e}"))?;
    Ok(if existed {
        Made::Replaced(why)
    } else {
        Made::New
    })
}

/// That every file is there and whole, each key matches its certificate,
/// and both certificates chain to the CA, cover [`NAMES`] (the server's)
/// and are valid at `at`.
pub fn check(files: &Files, at: SystemTime) -> Result<(), String> {
    let provider = Arc::new(shared::tls::provider());
    let server = shared::tls::load_pair(&Files::pair(&files.cert, &files.key), &provider, at)?;
    let client = shared::tls::load_pair(
        &Files::pair(&files.client_cert, &files.client_key),
        &provider,
        at,
    )?;
    let roots = Arc::new(shared::tls::load_roots(&text(&files.ca))?);
    let at = UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).unwrap_or_default());
    let leaf = |c: &rustls::sign::CertifiedKey| -> Result<CertificateDer<'static>, String> {
        c.cert
            .first()
            .cloned()
            .ok_or_else(|| "a certificate file without a certificate".to_string())
    };
    let servers = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let server_leaf = leaf(&server)?;
    for name in NAMES {
        let name = ServerName::try_from(name).map_err(|e| e.to_string())?;
        servers
            .verify_server_cert(&server_leaf, &[], &name, &[], at)
            .map_err(|e| format!("{}: {e} (for {name:?})", files.cert.display()))?;
    }
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| e.to_string())?;
    clients
        .verify_client_cert(&leaf(&client)?, &[], at)
        .map_err(|e| format!("{}: {e}", files.client_cert.display()))?;
    Ok(())
}

fn p256() -> Result<KeyPair, String> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| format!("cannot make a key: {e}"))
}

fn time(t: SystemTime) -> Result<time::OffsetDateTime, String> {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
        .map_err(|e| format!("the clock: {e}"))
}

/// Makes a CA and the two certificates it signs, valid from an hour before
/// `now` for [`VALID_FOR`], and writes them (keys owner-only).
fn make(files: &Files, now: SystemTime) -> Result<(), String> {
    std::fs::create_dir_all(&files.dir)
        .map_err(|e| format!("cannot create {}: {e}", files.dir.display()))?;
    let not_before = time(now - Duration::from_secs(3600))?;
    let not_after = time(now + VALID_FOR)?;
    let rc = |e: rcgen::Error| format!("cannot make a certificate: {e}");
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "rr-gateway up --tls local CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_key = p256()?;
    let ca = ca.self_signed(&ca_key).map_err(rc)?;
    let leaf = |usage: ExtendedKeyUsagePurpose, cn: &str| -> Result<(String, String), String> {
        let mut p = CertificateParams::new(NAMES.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .map_err(rc)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![usage];
        p.use_authority_key_identifier_extension = true;
        p.not_before = not_before;
        p.not_after = not_after;
        let key = p256()?;
        let cert = p.signed_by(&key, &ca, &ca_key).map_err(rc)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (cert, key) = leaf(ExtendedKeyUsagePurpose::ServerAuth, "localhost")?;
    let (client_cert, client_key) = leaf(ExtendedKeyUsagePurpose::ClientAuth, "up --tls app")?;
    // Keys first, the CA last: a set cut short by a crash fails `check`.
    write(&files.key, &key, 0o600)?;
    write(&files.cert, &cert, 0o644)?;
    write(&files.client_key, &client_key, 0o600)?;
    write(&files.client_cert, &client_cert, 0o644)?;
    write(&files.ca, &ca.pem(), 0o644)
}

/// Writes `text` whole (a temporary file renamed over `path`).
pub fn write(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path));
    result.map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The TLS keys of each service's config: the one place that names them.
#[derive(Clone, Debug)]
pub struct Keys<'a> {
    pub files: &'a Files,
}

impl Keys<'_> {
    fn ca(&self) -> Value {
        json!(text(&self.files.ca))
    }

    /// The gateway: its TLS port at `tls_listen`; each
    /// route's instances over TLS and discovery trusted by the CA.
    pub fn gateway(&self, config: &mut Value, tls_listen: &str) {
        let f = self.files;
        set(
            config,
            "tls",
            json!({"listen": tls_listen, "cert": text(&f.cert), "key": text(&f.key)}),
        );
        set(config, "discovery_ca", self.ca());
        if let Some(routes) = config.get_mut("routes").and_then(Value::as_array_mut) {
            for route in routes {
                set(route, "upstream_tls", json!({"ca": text(&f.ca)}));
            }
        }
    }

    /// Discovery: HTTPS on its port, apps' client
    /// certificates checked against the CA, the instances of `namespaces`
    /// health-checked over TLS, peers trusted by the CA.
    pub fn discovery(&self, config: &mut Value, namespaces: &[String]) {
        let f = self.files;
        set(
            config,
            "tls",
            json!({"cert": text(&f.cert), "key": text(&f.key), "client_ca": text(&f.ca)}),
        );
        let checks: Map<String, Value> = namespaces
            .iter()
            .map(|n| (n.clone(), json!({"ca": text(&f.ca)})))
            .collect();
        set(config, "upstream_tls", Value::Object(checks));
        set(config, "discovery_ca", self.ca());
    }

    /// An app: HTTPS on its port, discovery trusted by the
    /// CA and shown the client certificate when registering.
    pub fn app(&self, config: &mut Value) {
        let f = self.files;
        set(
            config,
            "tls",
            json!({"cert": text(&f.cert), "key": text(&f.key)}),
        );
        set(config, "discovery_ca", self.ca());
        set(config, "discovery_cert", json!(text(&f.client_cert)));
        set(config, "discovery_key", json!(text(&f.client_key)));
    }
}

fn set(config: &mut Value, key: &str, value: Value) {
    if let Some(object) = config.as_object_mut() {
        object.insert(key.to_string(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Files {
        Files::under(dir)
    }

    #[test]
    fn a_set_is_made_then_reused_and_made_again_when_broken_or_expiring() {
        let tmp = testkit::tempdir::TempDir::new("up-tls-certs");
        let f = files(tmp.path());
        assert!(f.ca.is_absolute());
        assert_eq!(ensure(&f).unwrap(), Made::New);
        let ca = std::fs::read_to_string(&f.ca).unwrap();
        assert_eq!(ensure(&f).unwrap(), Made::Reused);
        assert_eq!(std::fs::read_to_string(&f.ca).unwrap(), ca);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&f.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Valid for a year, not for two.
        check(&f, SystemTime::now() + Duration::from_secs(300 * 24 * 3600)).unwrap();
        let late = check(&f, SystemTime::now() + 2 * VALID_FOR).unwrap_err();
        assert!(late.contains("expired"), "{late}");
        // A key that is not the certificate's: all made again, a new CA.
        std::fs::copy(&f.client_key, &f.key).unwrap();
        match ensure(&f).unwrap() {
            Made::Replaced(why) => assert!(why.contains("does not match"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_ne!(std::fs::read_to_string(&f.ca).unwrap(), ca);
        // A certificate from another CA.
        let other = testkit::tempdir::TempDir::new("up-tls-other");
        let g = files(other.path());
        ensure(&g).unwrap();
        std::fs::copy(&g.ca, &f.ca).unwrap();
        assert!(check(&f, SystemTime::now()).is_err());
        assert!(matches!(ensure(&f).unwrap(), Made::Replaced(_)));
        // A missing file.
        std::fs::remove_file(&f.client_cert).unwrap();
        assert!(matches!(ensure(&f).unwrap(), Made::Replaced(_)));
    }

    #[test]
    fn every_service_gets_its_tls_keys() {
        let f = files(Path::new("/state"));
        let gateway = json!({"listen": "127.0.0.1:8000", "routes": [{"prefix": "/", "namespace": "service A"}]});
        let (discovery, app) = (
            json!({"listen": "127.0.0.1:8500"}),
            json!({"namespace": "service A"}),
        );
        let all = Keys { files: &f };
        let (mut g, mut d, mut a) = (gateway, discovery, app);
        all.gateway(&mut g, "127.0.0.1:8443");
        all.discovery(&mut d, &["service A".into()]);
        all.app(&mut a);
        assert_eq!(
            g["tls"],
            json!({"listen": "127.0.0.1:8443", "cert": "/state/tls/server.crt", "key": "/state/tls/server.key"})
        );
        // The shipped gateway config takes the keys as they are.
        let parsed: shared::config::GatewayConfig = serde_json::from_value(g.clone()).unwrap();
        assert_eq!(parsed.tls.unwrap().listen, "127.0.0.1:8443");
        assert_eq!(g["discovery_ca"], "/state/tls/ca.crt");
        assert_eq!(
            g["routes"][0]["upstream_tls"],
            json!({"ca": "/state/tls/ca.crt"})
        );
        assert_eq!(
            d["tls"],
            json!({"cert": "/state/tls/server.crt", "key": "/state/tls/server.key", "client_ca": "/state/tls/ca.crt"})
        );
        assert_eq!(
            d["upstream_tls"],
            json!({"service A": {"ca": "/state/tls/ca.crt"}})
        );
        assert_eq!(d["discovery_ca"], "/state/tls/ca.crt");
        assert_eq!(
            a["tls"],
            json!({"cert": "/state/tls/server.crt", "key": "/state/tls/server.key"})
        );
        assert_eq!(a["discovery_ca"], "/state/tls/ca.crt");
        assert_eq!(a["discovery_cert"], "/state/tls/client.crt");
        assert_eq!(a["discovery_key"], "/state/tls/client.key");
    }
}
