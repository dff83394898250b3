//! TLS on the client port (`"tls"` in the config, docs/tls.md): the
//! certificates, chosen by the name the client asks for (SNI), the
//! handshake, and [`ClientStream`], the client's socket plain or encrypted,
//! which [`crate::http::session`] reads and writes.
//!
//! rustls (TLS 1.2 and 1.3, the ring provider) over the worker's own
//! sockets through futures-rustls. One `ServerConfig` lives as long as the
//! gateway, so its session tickets survive reloads; a reload swaps the
//! certificates it resolves ([`Tls::replace`]), which only new handshakes see.

use crate::http::maybe_tls::MaybeTls;
use crate::runtime::net::Stream;
use arc_swap::ArcSwap;
use futures_lite::AsyncWriteExt;
use futures_rustls::server::TlsStream;
use futures_rustls::TlsAcceptor;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use shared::config::{CertificateConfig, TlsConfig};
use std::io;
use std::net::Shutdown;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The protocols offered by ALPN, in order of preference (`h2` would go first).
const ALPN: [&[u8]; 1] = [b"http/1.1"];

/// Largest certificate or key file read.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The certificates in force, in the order the config lists them; the first
/// answers a client that names no server, or one no certificate is for.
#[derive(Debug)]
pub(crate) struct Certificates {
    keys: Vec<Arc<CertifiedKey>>,
}

impl Certificates {
    /// Reads and checks every certificate `config` names: each file must be
    /// readable PEM, each key must match its certificate, and no
    /// certificate may have expired. The error names the file.
    pub(crate) fn load(config: &TlsConfig) -> Result<Certificates, String> {
        let provider = provider();
        let keys = config
            .pairs()
            .iter()
            .map(|pair| load_pair(pair, &provider, SystemTime::now()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err("tls: no certificate configured".into());
        }
        Ok(Certificates { keys })
    }

    /// The certificate for `name` (the client's SNI): the first whose
    /// subject alternative names cover it, else the first of all.
    fn for_name(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let wanted = name.and_then(|n| ServerName::try_from(n).ok());
        if let Some(wanted) = wanted {
            let found = self.keys.iter().find(|k| {
                k.cert.first().is_some_and(|der| {
                    webpki::EndEntityCert::try_from(der)
                        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&wanted).is_ok())
                })
            });
            if let Some(found) = found {
                return Some(found.clone());
            }
        }
        self.keys.first().cloned()
    }
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// One certificate chain and its key, checked.
pub(crate) fn load_pair(
    pair: &CertificateConfig,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<CertifiedKey, String> {
    let (cert_path, key_path) = (&pair.cert, &pair.key);
    let read = |path: &str, what: &str| {
        shared::config::read_regular(std::path::Path::new(path), MAX_PEM_BYTES)
            .map_err(|why| format!("tls: cannot read {what} {path}: {why}"))
    };
    let pem = read(cert_path, "certificate")?;
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls: certificate {cert_path} is not PEM: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err(format!(
            "tls: certificate {cert_path} holds no CERTIFICATE block"
        ));
    };
    webpki::EndEntityCert::try_from(leaf).map_err(|e| {
        format!("tls: certificate {cert_path} is not a valid X.509 certificate: {e}")
    })?;
    match validity(leaf) {
        None => {
            return Err(format!(
                "tls: certificate {cert_path}: cannot read its validity period"
            ))
        }
        Some(v) if v.not_after < now => {
            return Err(format!(
                "tls: certificate {cert_path} expired on {}",
                v.not_after_text
            ))
        }
        Some(_) => {}
    }
    let pem = read(key_path, "key")?;
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
        format!("tls: key {key_path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}")
    })?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("tls: key {key_path} cannot be used: {e}"))?;
    let certified = CertifiedKey::new(chain, key);
    certified
        .keys_match()
        .map_err(|e| format!("tls: key {key_path} does not match certificate {cert_path}: {e}"))?;
    Ok(certified)
}

/// Picks a certificate for each handshake from those in force.
#[derive(Debug)]
struct Resolver {
    current: ArcSwap<Certificates>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().for_name(hello.server_name())
    }
}

/// The TLS side of the client port: the acceptor and its certificates.
pub(crate) struct Tls {
    acceptor: TlsAcceptor,
    resolver: Arc<Resolver>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("certificates", &self.resolver.current.load().keys.len())
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// A TLS server with `certificates` (see [`Certificates::load`]).
    pub(crate) fn new(certificates: Certificates) -> Result<Tls, String> {
        let resolver = Arc::new(Resolver {
            current: ArcSwap::from_pointee(certificates),
        });
        let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("tls: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        // Stateless resumption tickets (TLS 1.2 and 1.3), keys rotated by
        // rustls; the session-id cache stays for clients without tickets.
        config.ticketer =
            rustls::crypto::ring::Ticketer::new().map_err(|e| format!("tls: tickets: {e}"))?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            resolver,
        })
    }

    /// New handshakes get `certificates`; connections already open keep theirs.
    pub(crate) fn replace(&self, certificates: Certificates) {
        self.resolver.current.store(Arc::new(certificates));
    }

    /// The server side of the handshake on `stream`; unbounded here, the
    /// caller bounds it (`tls.handshake_timeout`).
    pub(crate) async fn accept(&self, stream: Stream) -> io::Result<ClientStream> {
        let tls = self.acceptor.accept(stream).await?;
        Ok(MaybeTls::Tls(Box::new(tls)))
    }
}

/// A client's connection: its socket as it is, or TLS over it.
pub(crate) type ClientStream = MaybeTls<TlsStream<Stream>>;

impl ClientStream {
    /// Whether this connection is TLS.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }

    /// Waits until a read may find something: input TLS already holds, or
    /// bytes (or the end) on the socket. Over TLS the bytes may be less than
    /// a record; the read that follows waits for the rest.
    pub(crate) async fn readable(&mut self) {
        if !self.decrypted() {
            self.socket().readable().await;
        }
    }

    /// Whether a read is worth trying now (no waiting, no system call).
    pub(crate) fn is_readable_now(&mut self) -> bool {
        self.decrypted() || self.socket().is_readable_now()
    }

    /// Waits until the client sent something (true) or closed (false),
    /// consuming nothing.
    pub(crate) async fn sent_something(&mut self) -> bool {
        if self.decrypted() {
            return true;
        }
        let mut byte = [0u8; 1];
        matches!(self.socket().peek(&mut byte).await, Ok(n) if n > 0)
    }

    pub(crate) fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.socket().set_nodelay(on)
    }

    /// Ends the sending side: over TLS a close_notify first.
    pub(crate) async fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            MaybeTls::Plain(s) => s.shutdown(Shutdown::Write),
            MaybeTls::Tls(t) => t.close().await,
        }
    }
}

/// When a certificate stops being valid.
struct Validity {
    not_after: SystemTime,
    /// As `2025-01-31 23:59:59 UTC`.
    not_after_text: String,
}

/// The end of `cert`'s validity period, read by x509-parser. `None` if it
/// does not parse.
fn validity(cert: &[u8]) -> Option<Validity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let end = parsed.validity().not_after;
    let secs = u64::try_from(end.timestamp()).unwrap_or(0);
    let at = end.to_datetime();
    let (year, month, day) = (at.year(), u8::from(at.month()), at.day());
    let (hour, minute, second) = (at.hour(), at.minute(), at.second());
    Some(Validity {
        not_after: UNIX_EPOCH + Duration::from_secs(secs),
        not_after_text: format!(
            "{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02} UTC"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn config(certificates: Vec<CertificateConfig>) -> TlsConfig {
        TlsConfig {
            listen: "127.0.0.1:0".into(),
            cert: None,
            key: None,
            certificates,
            handshake_timeout: Duration::from_secs(10),
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
        let dir = testkit::tempdir::TempDir::new("tls-names");
        let a = pair(dir.path(), "a", &certificate(&["a.test"], 2090));
        let b = pair(dir.path(), "b", &certificate(&["b.test", "*.b.test"], 2090));
        let certs = Certificates::load(&config(vec![a, b])).unwrap();
        let leaf = |name: Option<&str>| certs.for_name(name).unwrap().cert[0].clone();
        let (first, second) = (certs.keys[0].cert[0].clone(), certs.keys[1].cert[0].clone());
        assert_eq!(leaf(Some("a.test")), first);
        assert_eq!(leaf(Some("b.test")), second);
        assert_eq!(leaf(Some("x.b.test")), second);
        assert_eq!(leaf(Some("other.test")), first, "unknown: the first");
        assert_eq!(leaf(None), first, "no SNI: the first");
    }

    #[test]
    fn missing_mismatched_expired_and_garbled_files_are_named() {
        let dir = testkit::tempdir::TempDir::new("tls-errors");
        let good = certificate(&["a.test"], 2090);
        let other = certificate(&["a.test"], 2090);
        let load = |pairs| Certificates::load(&config(pairs)).map(|_| ());
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
}
