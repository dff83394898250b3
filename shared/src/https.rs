//! The HTTP client the services reach discovery with (the app's
//! registration, the gateway's watch, lookups and readiness check,
//! discovery's questions to its peer replicas): surf, whose transport for
//! `http://` URLs is its usual async-h1 client, and for `https://` URLs this
//! module's: TCP, a rustls handshake trusting only the configured CA file
//! (and showing a client certificate when one is configured), then async-h1
//! over the encrypted stream.
//!
//! surf is built with `h1-client-no-tls` (its TLS would be native-tls or an
//! old rustls); [`client`] plugs [`HttpsClient`] in with
//! `surf::Config::set_http_client`. An `https://` URL without a CA file
//! configured is an error naming what to set: the system's roots are never
//! trusted silently (the config's validation refuses such a URL first).
//!
//! An https connection serves one request (`Connection: close`): these
//! clients send one small request every few seconds or hold one long watch
//! stream, and a pooled connection to a discovery that restarted would only
//! fail the next call.

use arc_swap::ArcSwap;
use async_std::net::TcpStream;
use futures_rustls::TlsConnector;
use http_client::h1::H1Client;
use http_client::{Config as HttpConfig, Error, HttpClient, Request, Response};
use http_types::url::Host;
use http_types::StatusCode;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::CertificateConfig;

/// The trust and the client certificate of an https client, read from
/// their files and replaceable ([`ClientTls::reload`]): a new connection
/// uses what is in force when it starts.
pub struct ClientTls {
    ca: String,
    cert: Option<CertificateConfig>,
    config: ArcSwap<ClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca)
            .field("cert", &self.cert.as_ref().map(|c| c.cert.as_str()))
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads `ca` (the CA certificates a server must chain to) and, when
    /// given, the client certificate and its key; the error names the file.
    pub fn load(ca: &str, cert: Option<CertificateConfig>) -> Result<Arc<ClientTls>, String> {
        let config = crate::tls::client_config(ca, cert.as_ref())?;
        Ok(Arc::new(ClientTls {
            ca: ca.to_string(),
            cert,
            config: ArcSwap::from_pointee(config),
        }))
    }

    /// Reads the same files again; on an error the old settings stay.
    pub fn reload(&self) -> Result<(), String> {
        let config = crate::tls::client_config(&self.ca, self.cert.as_ref())?;
        self.config.store(Arc::new(config));
        Ok(())
    }

    /// The CA file's path.
    pub fn ca(&self) -> &str {
        &self.ca
    }
}

/// surf's transport: async-h1 over TCP for `http://`, over rustls for `https://`.
pub struct HttpsClient {
    plain: H1Client,
    tls: Option<Arc<ClientTls>>,
    timeout: Option<Duration>,
    no_delay: bool,
}

impl std::fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsClient")
            .field("tls", &self.tls)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A surf client with `config`'s settings (its `http_config`: keep-alive,
/// no-delay and the timeout to the answer's head, for both schemes) whose
/// `https://` requests use `tls`; without it an https URL is an error.
pub fn client(config: surf::Config, tls: Option<Arc<ClientTls>>) -> Result<surf::Client, String> {
    let http: HttpConfig = config.http_config.clone();
    let plain = H1Client::try_from(http.clone())
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let transport = HttpsClient {
        plain,
        tls,
        timeout: http.timeout,
        no_delay: http.tcp_no_delay,
    };
    config
        .set_http_client(transport)
        .try_into()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

#[http_client::async_trait]
impl HttpClient for HttpsClient {
    async fn send(&self, req: Request) -> Result<Response, Error> {
        match req.url().scheme() {
            "http" => self.plain.send(req).await,
            "https" => self.send_tls(req).await,
            other => Err(Error::from_str(
                StatusCode::BadRequest,
                format!("invalid url scheme {other:?}"),
            )),
        }
    }
}

impl HttpsClient {
    async fn send_tls(&self, mut req: Request) -> Result<Response, Error> {
        let Some(tls) = &self.tls else {
            return Err(Error::from_str(
                StatusCode::BadRequest,
                format!(
                    "{} is https, and no CA file is configured to verify it (discovery_ca)",
                    req.url()
                ),
            ));
        };
        let url = req.url();
        let port = url.port_or_known_default().unwrap_or(443);
        let (connect_host, name) = match url.host() {
            Some(Host::Domain(d)) => (d.to_string(), ServerName::try_from(d.to_string())),
            Some(Host::Ipv4(ip)) => (ip.to_string(), Ok(ServerName::from(IpAddr::V4(ip)))),
            Some(Host::Ipv6(ip)) => (ip.to_string(), Ok(ServerName::from(IpAddr::V6(ip)))),
            None => {
                return Err(Error::from_str(
                    StatusCode::BadRequest,
                    format!("{url} names no host"),
                ))
            }
        };
        let name = name.map_err(|e| {
            Error::from_str(
                StatusCode::BadRequest,
                format!("{url}: not a name TLS can verify: {e}"),
            )
        })?;
        // One request per connection (see the module's documentation).
        req.insert_header("connection", "close");
        let connector = TlsConnector::from(tls.config.load_full());
        let no_delay = self.no_delay;
        let exchange = async move {
            let tcp = TcpStream::connect((connect_host.as_str(), port)).await?;
            if no_delay {
                tcp.set_nodelay(true)?;
            }
            req.set_peer_addr(tcp.peer_addr().ok());
            req.set_local_addr(tcp.local_addr().ok());
            let stream = connector.connect(name, tcp).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("TLS handshake with {connect_host}: {e}"))
            })?;
            async_h1::client::connect(stream, req).await
        };
        match self.timeout {
            Some(limit) => async_std::future::timeout(limit, exchange).await?,
            None => exchange.await,
        }
    }
}
