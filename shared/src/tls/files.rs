//! PEM files to rustls' types, checked: each error names the file and says
//! what is wrong with it.

use crate::config::CertificateConfig;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Largest certificate, key or CA file read.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

fn read(path: &str, what: &str) -> Result<String, String> {
    crate::config::read_regular(std::path::Path::new(path), MAX_PEM_BYTES)
        .map_err(|why| format!("cannot read {what} {path}: {why}"))
}

/// One certificate chain and its key: the chain must be PEM with a valid
/// X.509 leaf that has not expired at `now`, and the key must match it.
pub fn load_pair(
    pair: &CertificateConfig,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<CertifiedKey, String> {
    let (cert_path, key_path) = (&pair.cert, &pair.key);
    let pem = read(cert_path, "certificate")?;
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate {cert_path} is not PEM: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err(format!(
            "certificate {cert_path} holds no CERTIFICATE block"
        ));
    };
    webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("certificate {cert_path} is not a valid X.509 certificate: {e}"))?;
    match validity(leaf) {
        None => {
            return Err(format!(
                "certificate {cert_path}: cannot read its validity period"
            ))
        }
        Some(v) if v.not_after < now => {
            return Err(format!(
                "certificate {cert_path} expired on {}",
                v.not_after_text
            ))
        }
        Some(_) => {}
    }
    let pem = read(key_path, "key")?;
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
        format!("key {key_path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}")
    })?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("key {key_path} cannot be used: {e}"))?;
    let certified = CertifiedKey::new(chain, key);
    certified
        .keys_match()
        .map_err(|e| format!("key {key_path} does not match certificate {cert_path}: {e}"))?;
    Ok(certified)
}

/// The CA certificates in the PEM file `path`: at least one, each usable as
/// a trust anchor.
pub fn load_roots(path: &str) -> Result<RootCertStore, String> {
    let pem = read(path, "CA file")?;
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let der = der.map_err(|e| format!("CA file {path} is not PEM: {e}"))?;
        roots
            .add(der)
            .map_err(|e| format!("CA file {path} holds a certificate that cannot be used: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("CA file {path} holds no CERTIFICATE block"));
    }
    Ok(roots)
}

/// When a certificate stops being valid.
pub(crate) struct Validity {
    pub(crate) not_after: SystemTime,
    /// As `2025-01-31 23:59:59 UTC`.
    pub(crate) not_after_text: String,
}

/// The end of `cert`'s validity period, read by x509-parser. `None` if it
/// does not parse.
pub(crate) fn validity(cert: &[u8]) -> Option<Validity> {
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
