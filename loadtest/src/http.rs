//! URLs and the few JSON calls of the chaos scenarios (gateway `/status`,
//! discovery's `/api/services`, an app's `/chaos`), on the same HTTP/1.1
//! client as the load itself: one short connection per call, bounded in time.

use serde_json::Value;
use shared::http1::client::Connection;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// How long a control-plane call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// An `http://authority/path` URL, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// `host:port`, sent as `Host` and resolved to connect.
    pub authority: String,
    /// The path, without a trailing `/` (empty for the root).
    pub path: String,
}

impl Url {
    /// Only plain `http://` (the gateway speaks no TLS); the port defaults to 80.
    pub fn parse(text: &str) -> Result<Url, String> {
        let rest = text
            .strip_prefix("http://")
            .ok_or_else(|| format!("{text:?}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("{text:?}: no host"));
        }
        let authority = if authority.ends_with(']') || !authority.contains(':') {
            format!("{authority}:80")
        } else {
            authority.to_string()
        };
        Ok(Url {
            authority,
            path: path.trim_end_matches('/').to_string(),
        })
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

/// `method url` with an optional JSON body; the status and the answer as JSON
/// (a string if it is not JSON).
pub async fn call(method: &str, url: &str, body: Option<&str>) -> Result<(u16, Value), String> {
    let parsed = Url::parse(url)?;
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
        let mut conn = Connection::connect(parsed.authority.as_str()).await?;
        conn.exchange(request.as_bytes()).await
    };
    let res = async_std::future::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{method} {url}: no answer within {CALL_TIMEOUT:?}"))?
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let json = serde_json::from_slice(&res.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&res.body).into_owned()));
    Ok((res.status, json))
}

/// `GET url`, requiring a 200.
pub async fn get_json(url: &str) -> Result<Value, String> {
    match call("GET", url, None).await? {
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
        assert!(Url::parse("https://example.com").is_err());
        assert!(Url::parse("http:///x").is_err());
    }
}
