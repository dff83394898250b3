//! Test certificates: a CA made with rcgen and the ECDSA P-256 server and
//! client certificates it signs, as PEM files in a temp dir, and a TLS
//! server config for test instances ([`server_config`]).

use crate::tempdir::TempDir;
use rustls_pki_types::CertificateDer;

/// A test CA and what it signs, as files in a temp dir (removed on drop).
pub struct Pki {
    dir: TempDir,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

/// An issued certificate: its files and its DER.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: String,
    pub key: String,
    pub der: CertificateDer<'static>,
}

impl Issued {
    /// As a `{"cert", "key"}` pair of the configs.
    pub fn pair(&self) -> shared::config::CertificateConfig {
        shared::config::CertificateConfig {
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

/// A fresh ECDSA P-256 key.
pub fn p256() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

impl Pki {
    /// A CA named `name`, its certificate written to `ca.pem`.
    pub fn new(name: &str) -> Pki {
        let dir = TempDir::new(&format!("pki-{name}"));
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = p256();
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    /// The temp dir the files are in.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The CA certificate's PEM file.
    pub fn ca_file(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }

    /// The CA certificate in PEM.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// A server certificate for `names` (DNS names or IP addresses; the
    /// first is also its common name), written to `{file}.crt` and `{file}.key`.
    pub fn issue(&self, file: &str, names: &[&str]) -> Issued {
        self.issue_with(file, names, |_| {})
    }

    /// A server certificate as [`Pki::issue`], its parameters changed by
    /// `edit` before it is signed (a validity period, say).
    pub fn issue_with(
        &self,
        file: &str,
        names: &[&str],
        edit: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> Issued {
        let usage = rcgen::ExtendedKeyUsagePurpose::ServerAuth;
        self.sign(file, names, usage, edit)
    }

    /// A client certificate for `names`, as [`Pki::issue`].
    pub fn issue_client(&self, file: &str, names: &[&str]) -> Issued {
        let usage = rcgen::ExtendedKeyUsagePurpose::ClientAuth;
        self.sign(file, names, usage, |_| {})
    }

    /// Signs a certificate for `names` with the extensions OpenSSL's strict
    /// checks want (`X509_V_FLAG_X509_STRICT`, on in Python 3.13's default
    /// context): the authority and subject key identifiers, `CA:FALSE`.
    fn sign(
        &self,
        file: &str,
        names: &[&str],
        usage: rcgen::ExtendedKeyUsagePurpose,
        edit: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> Issued {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        edit(&mut params);
        let key = p256();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        Issued {
            cert: self.write(&format!("{file}.crt"), &cert.pem()),
            key: self.write(&format!("{file}.key"), &key.serialize_pem()),
            der: cert.der().clone(),
        }
    }

    /// Writes `text` to `name` in the dir, whole (write, then rename, as a
    /// deploy tool replaces a file); its path.
    pub fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path.display().to_string()
    }
}

/// A TLS server's settings for a test instance: the certificate chain and
/// key (PEM text), and with `client_ca` a client certificate required,
/// chaining to it.
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    client_ca: Option<CertificateDer<'static>>,
) -> rustls::ServerConfig {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;
    use std::sync::Arc;
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder.with_single_cert(chain, key).unwrap()
}
