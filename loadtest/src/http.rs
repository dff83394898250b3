//! URLs and the few JSON calls of the chaos scenarios (gateway `/status`,
//! discovery's `/api/services`, an app's `/chaos`), on the same HTTP/1.1
//! client as the load itself: one short connection per call, bounded in time.
//! Admin ports are plain HTTP; discovery may be `https://` (`up --tls` with
//! everything), reached trusting one CA file ([`Trust`]).

use futures_lite::{AsyncRead, AsyncWrite};
use futures_rustls::TlsConnector;
use rustls_pki_types::ServerName;
use serde_json::Value;
use shared::http1::client::{Connection, Response};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a control-plane call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// An `http://` or `https://authority/path` URL, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// `https://`: TLS to the target.
    pub tls: bool,
    /// `host:port`, sent as `Host` and resolved to connect.
    pub authority: String,
    /// The path, without a trailing `/` (empty for the root).
    pub path: String,
}

impl Url {
    /// `http://` (the port defaults to 80) or `https://` (443).
    pub fn parse(text: &str) -> Result<Url, String> {
        let (tls, rest) = if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err(format!(
                "{text:?}: only http:// and https:// URLs are supported"
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("{text:?}: no host"));
        }
        let authority = if authority.ends_with(']') || !authority.contains(':') {
            format!("{authority}:{}", if tls { 443 } else { 80 })
        } else {
            authority.to_string()
        };
        Ok(Url {
            tls,
            authority,
            path: path.trim_end_matches('/').to_string(),
        })
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// The host without the port (an IPv6 address without its brackets):
    /// the name a server's certificate must be for.
    pub fn host(&self) -> &str {
        let host = match self.authority.rfind(':') {
            Some(i) => &self.authority[..i],
            None => &self.authority,
        };
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }

    /// The request target for `path` under this URL's path.
    pub fn target(&self, path: &str) -> String {
        format!("{}{path}", self.path)
    }

    /// The first address the authority resolves to (resolved once, not per connection).
    pub fn resolve(&self) -> Result<SocketAddr, String> {
        self.authority
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.authority))?
            .next()
            .ok_or_else(|| format!("{} resolves to no address", self.authority))
    }
}

/// What an `https://` control-plane call trusts: the CA certificates in one
/// PEM file, never the system's roots (`shared::tls::client_config`). No
/// client certificate: these calls only read (discovery's reads are open),
/// and the apps' certificate stands for their registration token.
#[derive(Clone)]
pub struct Trust {
    connector: TlsConnector,
    ca: PathBuf,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust").field("ca", &self.ca).finish()
    }
}

impl Trust {
    /// Reads and checks the CA file; the error names it.
    pub fn new(ca: &Path) -> Result<Trust, String> {
        let config = shared::tls::client_config(&ca.display().to_string(), None)?;
        Ok(Trust {
            connector: TlsConnector::from(Arc::new(config)),
            ca: ca.to_path_buf(),
        })
    }
}

/// `method url` with an optional JSON body; the status and the answer as JSON
/// (a string if it is not JSON). Plain HTTP only (admin ports); see
/// [`call_with`] for `https://`.
pub async fn call(method: &str, url: &str, body: Option<&str>) -> Result<(u16, Value), String> {
    call_with(method, url, body, None).await
}

/// [`call`], and an `https://` URL over TLS trusting `trust` (required for one).
pub async fn call_with(
    method: &str,
    url: &str,
    body: Option<&str>,
    trust: Option<&Trust>,
) -> Result<(u16, Value), String> {
    let parsed = Url::parse(url)?;
    let trust = match (parsed.tls, trust) {
        (true, None) => {
            return Err(format!(
                "{method} {url}: an https:// URL needs the CA its certificate chains to"
            ))
        }
        (true, Some(trust)) => Some(trust),
        (false, _) => None,
    };
    let target = if parsed.path.is_empty() {
        "/".to_string()
    } else {
        parsed.path.clone()
    };
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\naccept: application/json\r\n",
        parsed.authority
    );
    if let Some(body) = body {
        request.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or(""));
    let exchange = async {
        match trust {
            None => {
                let mut conn = Connection::connect(parsed.authority.as_str()).await?;
                conn.exchange(request.as_bytes()).await
            }
            Some(trust) => {
                let name = ServerName::try_from(parsed.host().to_string())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let tcp = async_std::net::TcpStream::connect(parsed.authority.as_str()).await?;
                let _ = tcp.set_nodelay(true);
                let tls = trust.connector.connect(name, tcp).await?;
                exchange_over(tls, request.as_bytes()).await
            }
        }
    };
    let res = async_std::future::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{method} {url}: no answer within {CALL_TIMEOUT:?}"))?
        .map_err(|e| match trust {
            Some(t) => format!("{method} {url} (trusting {}): {e}", t.ca.display()),
            None => format!("{method} {url}: {e}"),
        })?;
    let json = serde_json::from_slice(&res.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&res.body).into_owned()));
    Ok((res.status, json))
}

async fn exchange_over<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    request: &[u8],
) -> std::io::Result<Response> {
    Connection::over(stream).exchange(request).await
}

/// `GET url`, requiring a 200 (plain HTTP).
pub async fn get_json(url: &str) -> Result<Value, String> {
    get_json_with(url, None).await
}

/// [`get_json`], an `https://` URL trusting `trust`.
pub async fn get_json_with(url: &str, trust: Option<&Trust>) -> Result<Value, String> {
    match call_with("GET", url, None, trust).await? {
        (200, json) => Ok(json),
        (status, json) => Err(format!("GET {url}: {status} {json}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_path() {
        let u = Url::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!(u.authority, "127.0.0.1:8000");
        assert_eq!(u.target("/"), "/");
        let u = Url::parse("http://localhost/api/").unwrap();
        assert_eq!(u.authority, "localhost:80");
        assert_eq!(u.target("/x"), "/api/x");
        let u = Url::parse("http://[::1]:9000/").unwrap();
        assert_eq!(u.authority, "[::1]:9000");
        assert_eq!(u.target("/"), "/");
        assert!(!u.tls);
        assert_eq!(u.host(), "::1");
        let u = Url::parse("https://localhost:8443/api").unwrap();
        assert!(u.tls);
        assert_eq!(
            (u.authority.as_str(), u.host()),
            ("localhost:8443", "localhost")
        );
        assert_eq!(u.scheme(), "https");
        let u = Url::parse("https://127.0.0.1").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.host()),
            ("127.0.0.1:443", "127.0.0.1")
        );
        assert!(Url::parse("ftp://example.com").is_err());
        assert!(Url::parse("http:///x").is_err());
        assert!(Url::parse("https:///x").is_err());
    }
}
