//! The server side: the certificates in force, chosen by the name the
//! client asks for (SNI), and one `ServerConfig` that lives as long as the
//! listener, so its session tickets survive reloads; a reload swaps the
//! certificates it resolves ([`ServerTls::replace`]), which only new
//! handshakes see.

use super::{files::load_pair, provider, ALPN, VERSIONS};
use crate::config::{CertificateConfig, ServerTlsConfig};
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use std::sync::Arc;
use std::time::SystemTime;

/// The certificates in force, in the order the config lists them; the first
/// answers a client that names no server, or one no certificate is for.
#[derive(Debug)]
pub struct Certificates {
    keys: Vec<Arc<CertifiedKey>>,
}

impl Certificates {
    /// Reads and checks every pair (see [`load_pair`]); at least one.
    pub fn load(pairs: &[CertificateConfig]) -> Result<Certificates, String> {
        let provider = provider();
        let keys = pairs
            .iter()
            .map(|pair| load_pair(pair, &provider, SystemTime::now()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err("no certificate configured".into());
        }
        Ok(Certificates { keys })
    }

    /// The certificates a listener's `tls` names (see [`Certificates::load`]).
    pub fn from_config(tls: &ServerTlsConfig) -> Result<Certificates, String> {
        Certificates::load(&tls.pairs()).map_err(|e| format!("tls: {e}"))
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never: [`Certificates::load`] refuses an empty list.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The certificate for `name` (the client's SNI): the first whose
    /// subject alternative names cover it, else the first of all.
    pub fn for_name(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
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

/// A TLS server's settings: its `ServerConfig` and the certificates it
/// resolves, replaceable.
pub struct ServerTls {
    config: Arc<ServerConfig>,
    resolver: Arc<Resolver>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("certificates", &self.resolver.current.load().len())
            .finish_non_exhaustive()
    }
}

/// TLS 1.3 session tickets sent after each handshake. One: a client keeps
/// the newest session for a server (curl's, OpenSSL's and Go's clients do),
/// and OpenSSL's servers (nginx, HAProxy) send one after a resumed
/// handshake too. rustls' default of two costs every new connection a
/// second ticket's encryption here and a session object the client throws
/// away: with one, the same client core made about 4% more TLS connections
/// a second (bench/results-tls.md).
const TLS13_TICKETS: usize = 1;

impl ServerTls {
    /// A server presenting `certificates`. With `client_ca`, a client may
    /// present a certificate, which must chain to it (one from another CA
    /// fails the handshake); a client without one is let in, and what it
    /// may do is the service's to decide.
    pub fn new(
        certificates: Certificates,
        client_ca: Option<RootCertStore>,
    ) -> Result<ServerTls, String> {
        let resolver = Arc::new(Resolver {
            current: ArcSwap::from_pointee(certificates),
        });
        let provider = Arc::new(provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&VERSIONS)
            .map_err(|e| e.to_string())?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(roots) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| format!("client CA: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        // Stateless resumption tickets (TLS 1.2 and 1.3), keys rotated by
        // rustls; the session-id cache stays for clients without tickets.
        config.ticketer =
            rustls::crypto::ring::Ticketer::new().map_err(|e| format!("tickets: {e}"))?;
        config.send_tls13_tickets = TLS13_TICKETS;
        Ok(ServerTls {
            config: Arc::new(config),
            resolver,
        })
    }

    /// A listener's `tls`: its certificates, and its `client_ca` if any; the
    /// error names the key and the file.
    pub fn from_config(tls: &ServerTlsConfig) -> Result<ServerTls, String> {
        let certificates = Certificates::from_config(tls)?;
        let client_ca = match &tls.client_ca {
            Some(ca) => Some(super::load_roots(ca).map_err(|e| format!("tls.client_ca: {e}"))?),
            None => None,
        };
        ServerTls::new(certificates, client_ca).map_err(|e| format!("tls: {e}"))
    }

    /// The settings a handshake runs under (`futures_rustls::TlsAcceptor::from`).
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// New handshakes get `certificates`; connections already open keep theirs.
    pub fn replace(&self, certificates: Certificates) {
        self.resolver.current.store(Arc::new(certificates));
    }
}
