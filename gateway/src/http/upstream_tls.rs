//! TLS to instances (a route's `"upstream_tls"`, docs/tls.md "Instances
//! over TLS"): the client side of the handshake, and [`UpstreamStream`], a
//! connection to an instance plain or encrypted, which the pool keeps and
//! [`crate::proxy::forward`] reads and writes.
//!
//! rustls (TLS 1.2 and 1.3, the ring provider) through futures-rustls over
//! the worker's own sockets, as on the client port. An instance's
//! certificate is verified against the route's CA file only, never the
//! system's roots.

use crate::http::maybe_tls::MaybeTls;
use crate::runtime::net::{Stream, Unread};
use futures_rustls::client::TlsStream;
use futures_rustls::TlsConnector;
use shared::config::UpstreamTlsConfig;
use shared::tls::Upstream;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// Numbers each loaded setting, so a pooled connection made under older
/// settings (before a reload) is told apart.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

/// One namespace's TLS settings towards its instances, files read and checked.
pub(crate) struct UpstreamTls {
    connector: TlsConnector,
    upstream: Upstream,
    /// Which load this is (see [`GENERATIONS`]); never 0.
    pub(crate) generation: u64,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("upstream", &self.upstream)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// Reads and checks the files `config` names (see
    /// [`shared::tls::Upstream::load`]). The error names the file.
    pub(crate) fn load(config: &UpstreamTlsConfig) -> Result<UpstreamTls, String> {
        let upstream = Upstream::load(config).map_err(|e| format!("upstream_tls: {e}"))?;
        Ok(UpstreamTls {
            connector: TlsConnector::from(upstream.config.clone()),
            upstream,
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The client side of the handshake on `stream` to the instance
    /// registered as `key` (`host:port`): SNI and the name verified are
    /// `server_name`, else the host (an IP address verified as an IP SAN).
    /// Unbounded here; the caller bounds it with the connect deadline.
    pub(crate) async fn connect(&self, key: &str, stream: Stream) -> io::Result<UpstreamStream> {
        let host = key.rsplit_once(':').map_or(key, |(host, _)| host);
        let name = self
            .upstream
            .name_for(host)
            .map_err(|why| io::Error::new(io::ErrorKind::InvalidInput, why))?;
        let tls = self.connector.connect(name, stream).await?;
        Ok(MaybeTls::Tls(Box::new(tls)))
    }
}

/// Every namespace's settings in `routes` (routes to one namespace agree
/// on them: the config's validation checks it), files read and checked.
pub(crate) fn load_all(
    routes: &[shared::config::RouteConfig],
) -> Result<Vec<(String, UpstreamTls)>, String> {
    let mut loaded: Vec<(String, UpstreamTls)> = Vec::new();
    for route in routes {
        let Some(config) = &route.upstream_tls else {
            continue;
        };
        if loaded.iter().any(|(ns, _)| *ns == route.namespace) {
            continue;
        }
        let tls = UpstreamTls::load(config)
            .map_err(|e| format!("route {} ({}): {e}", route.prefix, route.namespace))?;
        loaded.push((route.namespace.clone(), tls));
    }
    Ok(loaded)
}

/// Whether `e` is the instance refusing the handshake by an alert (with
/// TLS 1.3 the client's side is over before the instance has checked the
/// client's certificate, so its refusal arrives on the first read).
pub(crate) fn refused_by_alert(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::AlertReceived(_)))
}

/// A connection to an instance: the socket as it is, or TLS over it.
pub(crate) type UpstreamStream = MaybeTls<TlsStream<Stream>>;

impl UpstreamStream {
    /// Whether a read is worth trying now (no waiting, no system call).
    pub(crate) fn is_readable_now(&mut self) -> bool {
        self.decrypted() || self.socket().is_readable_now()
    }

    /// What arrived on a connection nobody was reading (see
    /// [`Stream::unread`]). Over TLS, input already decrypted is bytes;
    /// records on the socket are taken as the end: without decrypting them
    /// a close_notify cannot be told from a stray answer, so the connection
    /// is dropped without blaming the instance.
    pub(crate) fn unread(&mut self) -> Unread {
        match self {
            MaybeTls::Plain(s) => s.unread(),
            MaybeTls::Tls(t) => {
                let (socket, tls) = t.get_mut();
                match tls.process_new_packets() {
                    Ok(state) if state.plaintext_bytes_to_read() > 0 => return Unread::Bytes,
                    Ok(state) if !state.peer_has_closed() => {}
                    _ => return Unread::Closed,
                }
                match socket.unread() {
                    Unread::Nothing => Unread::Nothing,
                    Unread::Closed | Unread::Bytes => Unread::Closed,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_is_named() {
        let dir = testkit::tempdir::TempDir::new("upstream-tls-load");
        let missing = dir.path().join("none.pem").display().to_string();
        let config = |ca: &str| UpstreamTlsConfig {
            ca: ca.into(),
            ..UpstreamTlsConfig::default()
        };
        let err = UpstreamTls::load(&config(&missing)).unwrap_err();
        assert!(
            err.contains(&missing) && err.contains("cannot read CA file"),
            "{err}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let empty = empty.display().to_string();
        let err = UpstreamTls::load(&config(&empty)).unwrap_err();
        assert!(
            err.contains(&empty) && err.contains("no CERTIFICATE"),
            "{err}"
        );
    }
}
