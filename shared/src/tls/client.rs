//! The client side: trust only the CA file given (never the system's
//! roots), and present a client certificate when one is configured.

use super::{files, provider, ALPN, VERSIONS};
use crate::config::{CertificateConfig, UpstreamTlsConfig};
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, SignatureScheme};
use rustls_pki_types::ServerName;
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

/// A namespace's TLS towards its instances (`upstream_tls`, used by the
/// gateway's connections and discovery's health checks alike), files read
/// and checked: the client settings and the name each instance must prove.
#[derive(Debug)]
pub struct Upstream {
    /// The settings a handshake runs under (`futures_rustls::TlsConnector::from`).
    pub config: Arc<ClientConfig>,
    /// `server_name`: sent as SNI and verified instead of the instance's host.
    server_name: Option<ServerName<'static>>,
}

impl Upstream {
    /// Reads and checks the files `config` names (see [`client_config`]);
    /// the error names the file.
    pub fn load(config: &UpstreamTlsConfig) -> Result<Upstream, String> {
        let cert = match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => Some(CertificateConfig {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        let client = client_config(&config.ca, cert.as_ref())?;
        let server_name = match &config.server_name {
            None => None,
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|e| {
                format!("server_name {name:?} is not a DNS name or IP address: {e}")
            })?),
        };
        Ok(Upstream {
            config: Arc::new(client),
            server_name,
        })
    }

    /// The name sent and verified for an instance registered with `host` (a
    /// DNS name, an IP address, or `[v6]`): `server_name` if set, else the
    /// host, an IP address verified as an IP address SAN.
    pub fn name_for(&self, host: &str) -> Result<ServerName<'static>, String> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_string()).map_err(|e| {
            format!(
                "TLS: the instance's host {host:?} is not a name to verify ({e}); set server_name"
            )
        })
    }
}
