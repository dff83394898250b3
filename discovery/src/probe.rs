//! One health check on the wire: `GET <path> HTTP/1.1` with `Connection:
//! close` on a fresh TCP connection, answered by any HTTP/1.0 or HTTP/1.1
//! server. Only the status line and headers are read (at most
//! [`MAX_HEAD`]), never the body, so an instance cannot make a check read or
//! hold more than that. Connects to resolved addresses only: no URL is ever
//! built from what a registrant sent.
//!
//! For a namespace in `upstream_tls` ([`Tls`]) the exchange runs over TLS
//! (rustls through futures-rustls): the instance's certificate must chain to
//! the namespace's CA and cover `server_name`, else the registered host.
//! A handshake that fails, or an instance that refuses ours, is an unhealthy
//! check saying why.

use async_std::net::TcpStream;
use futures_lite::{AsyncRead, AsyncWrite};
use futures_rustls::TlsConnector;
use shared::config::UpstreamTlsConfig;
use shared::http1::client::Connection;
use shared::local_trouble::is_local_trouble;
use shared::tls::Upstream;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

/// Largest response head a check reads.
pub const MAX_HEAD: usize = 16 * 1024;

/// What one exchange found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Status 200.
    Healthy,
    /// The instance answered otherwise, or did not: why.
    Unhealthy(String),
    /// The check could not be made for this process's own trouble (out of
    /// descriptors, buffers or local ports): it says nothing about the instance.
    NotMade(String),
}

/// The request bytes of a check. `authority` and `path` were validated at
/// registration (ASCII, no spaces or controls), so they cannot split the head.
pub fn request(authority: &str, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nAccept: */*\r\nUser-Agent: discovery-health-check\r\n\r\n"
    )
    .into_bytes()
}

/// One namespace's TLS settings for its checks, files read and checked.
pub struct Tls {
    connector: TlsConnector,
    upstream: Upstream,
}

impl Tls {
    /// Reads and checks the files `config` names (see
    /// [`shared::tls::Upstream::load`]); the error names the file.
    pub fn load(config: &UpstreamTlsConfig) -> Result<Tls, String> {
        let upstream = Upstream::load(config)?;
        Ok(Tls {
            connector: TlsConnector::from(upstream.config.clone()),
            upstream,
        })
    }
}

/// Every namespace's settings in `upstream_tls`, files read and checked;
/// the error names the namespace and the file.
pub fn load_all(
    config: &BTreeMap<String, UpstreamTlsConfig>,
) -> Result<HashMap<String, Tls>, String> {
    config
        .iter()
        .map(|(namespace, tls)| {
            Tls::load(tls)
                .map(|loaded| (namespace.clone(), loaded))
                .map_err(|e| format!("upstream_tls[{namespace:?}]: {e}"))
        })
        .collect()
}

/// Tries the addresses in order until one accepts, then makes the exchange
/// there, over TLS when `tls` says so (with the instance's registered
/// host). The caller bounds the whole of it with `timeout_threshold`.
pub async fn probe(addrs: &[SocketAddr], request: &[u8], tls: Option<(&Tls, &str)>) -> Probe {
    let mut refused = Vec::new();
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                return match tls {
                    None => exchange(Connection::from_stream(stream), request).await,
                    Some((tls, host)) => over_tls(stream, tls, host, request).await,
                }
            }
            Err(e) if is_local_trouble(&e) => {
                return Probe::NotMade(format!("cannot open a connection to {addr}: {e}"))
            }
            Err(e) => refused.push(format!("{addr}: {e}")),
        }
    }
    Probe::Unhealthy(format!("cannot connect: {}", refused.join("; ")))
}

/// The client side of the handshake, then the exchange over it.
async fn over_tls(stream: TcpStream, tls: &Tls, host: &str, request: &[u8]) -> Probe {
    let name = match tls.upstream.name_for(host) {
        Ok(name) => name,
        Err(why) => return Probe::Unhealthy(why),
    };
    let _ = stream.set_nodelay(true);
    match tls.connector.connect(name, stream).await {
        Ok(stream) => exchange(Connection::over(stream), request).await,
        Err(e) if is_local_trouble(&e) => {
            Probe::NotMade(format!("cannot make the TLS handshake: {e}"))
        }
        Err(e) => Probe::Unhealthy(format!("TLS handshake failed: {}", tls_error(&e))),
    }
}

/// What rustls said, and a hint when it is what a plain-HTTP server answers.
fn tls_error(e: &std::io::Error) -> String {
    let plain = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
            )
        });
    if plain {
        format!("{e} (is the instance speaking plain HTTP?)")
    } else {
        e.to_string()
    }
}

/// Whether `e` is the instance refusing the TLS connection by an alert: with
/// TLS 1.3 it checks the client's certificate after our side of the
/// handshake is over, so its refusal arrives on the first read.
fn refused_by_alert(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::AlertReceived(_)))
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: Connection<S>,
    request: &[u8],
) -> Probe {
    let refused = |e: &std::io::Error| format!("the instance refused the TLS connection: {e}");
    if let Err(e) = conn.send(request).await {
        if refused_by_alert(&e) {
            return Probe::Unhealthy(refused(&e));
        }
        return Probe::Unhealthy(format!("cannot send the check: {e}"));
    }
    match conn.read_status(MAX_HEAD).await {
        Ok((200, _)) => Probe::Healthy,
        Ok((status, minor)) => Probe::Unhealthy(format!("answered HTTP/1.{minor} {status}")),
        Err(e) if refused_by_alert(&e) => Probe::Unhealthy(refused(&e)),
        Err(e) => Probe::Unhealthy(format!("no valid HTTP/1 answer: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_std::net::TcpListener;
    use futures_lite::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot server that reads the request head, then writes `answer` and closes.
    async fn server(answer: &'static [u8]) -> (SocketAddr, async_std::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = async_std::task::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer).await.unwrap();
            got
        });
        (addr, task)
    }

    #[async_std::test]
    async fn http_1_0_and_1_1_answers_are_read_by_status() {
        for (answer, want) in [
            (&b"HTTP/1.0 200 OK\r\n\r\n{}"[..], Probe::Healthy),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n",
                Probe::Healthy,
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
                Probe::Healthy,
            ),
            (
                b"HTTP/1.0 503 Busy\r\n\r\n",
                Probe::Unhealthy("answered HTTP/1.0 503".into()),
            ),
        ] {
            let (addr, task) = server(answer).await;
            let got = probe(&[addr], &request("app.local:80", "/health_check"), None).await;
            assert_eq!(got, want, "{}", String::from_utf8_lossy(answer));
            let sent = String::from_utf8(task.await).unwrap();
            assert!(
                sent.starts_with(
                    "GET /health_check HTTP/1.1\r\nHost: app.local:80\r\nConnection: close\r\n"
                ),
                "{sent}"
            );
        }
    }

    #[async_std::test]
    async fn garbage_and_silence_are_unhealthy() {
        let (addr, _task) = server(b"SSH-2.0-OpenSSH\r\n\r\n").await;
        assert!(matches!(
            probe(&[addr], &request("a:1", "/"), None).await,
            Probe::Unhealthy(_)
        ));
        let (addr, _task) = server(b"").await;
        assert!(matches!(
            probe(&[addr], &request("a:1", "/"), None).await,
            Probe::Unhealthy(_)
        ));
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let got = probe(&[closed], &request("a:1", "/"), None).await;
        assert!(
            matches!(got, Probe::Unhealthy(ref m) if m.starts_with("cannot connect")),
            "{got:?}"
        );
    }
}
