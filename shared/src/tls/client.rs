//! The client side: trust only the CA file given (never the system's
//! roots), and present a client certificate when one is configured.

use super::{files, provider, ALPN, VERSIONS};
use crate::config::CertificateConfig;
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, SignatureScheme};
use std::sync::Arc;
use std::time::SystemTime;

/// The client certificate, whenever a server asks for one.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client trusting the CA certificates in the PEM file `ca`, presenting
/// `cert` (checked like a server's: valid, unexpired, matching its key)
/// when a server asks. ALPN `http/1.1`. The error names the file.
pub fn client_config(ca: &str, cert: Option<&CertificateConfig>) -> Result<ClientConfig, String> {
    let roots = files::load_roots(ca)?;
    let provider = Arc::new(provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&VERSIONS)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match cert {
        Some(pair) => {
            let certified = files::load_pair(pair, &provider, SystemTime::now())?;
            builder.with_client_cert_resolver(Arc::new(ClientCert(Arc::new(certified))))
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}
