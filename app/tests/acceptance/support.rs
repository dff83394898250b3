//! What the app's tests share: a test config, raw HTTP/1.1 exchanges (to see
//! the exact bytes), and views of discovery's registry.

use async_std::io::{ReadExt, WriteExt};
use async_std::net::TcpStream;
use serde_json::Value;
use shared::config::AppConfig;
use std::net::SocketAddr;
use std::time::Duration;

/// A registration interval short enough that tests wait little for renewals.
pub const INTERVAL: Duration = Duration::from_millis(300);

/// An app on 127.0.0.1:0 registering with `discovery_url`, renewing every `INTERVAL`.
pub fn app_config(discovery_url: &str) -> AppConfig {
    AppConfig {
        port: 0,
        discovery_url: discovery_url.to_string(),
        register_interval: INTERVAL,
        register_backoff_max: Duration::from_millis(200),
        drain_timeout: Duration::from_secs(2),
        ..AppConfig::default()
    }
}

/// An answer as it came off the wire.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends one hand-made request with a Content-Length body and reads the whole answer.
pub async fn send(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Raw {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    exchange(addr, head.into_bytes(), body.to_vec()).await
}

/// Sends a small request in full, then reads the answer in the background.
pub async fn begin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> async_std::task::JoinHandle<Raw> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    async_std::task::spawn(async move {
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await.unwrap();
        parse(&bytes)
    })
}

/// Sends `body` in chunks of `chunk` bytes with chunked transfer coding (no length up front).
pub async fn send_chunked(addr: SocketAddr, path: &str, body: &[u8], chunk: usize) -> Raw {
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    let mut framed = Vec::new();
    for part in body.chunks(chunk) {
        framed.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        framed.extend_from_slice(part);
        framed.extend_from_slice(b"\r\n");
    }
    framed.extend_from_slice(b"0\r\n\r\n");
    exchange(addr, head.into_bytes(), framed).await
}

/// Writes while reading, so an answer sent before the body is all read is not missed.
async fn exchange(addr: SocketAddr, head: Vec<u8>, body: Vec<u8>) -> Raw {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut writer = stream.clone();
    let writing = async_std::task::spawn(async move {
        // The server may answer (413) and stop reading early: a failed write is fine.
        let _ = writer.write_all(&head).await;
        let _ = writer.write_all(&body).await;
    });
    let mut reader = stream;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            // A refusal that stopped reading a body still coming ends in a
            // reset once the server has drained what it will: the answer
            // read before it is the answer.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !bytes.is_empty() => break,
            Err(e) => panic!("reading the answer: {e}"),
        }
    }
    writing.cancel().await;
    parse(&bytes)
}

fn parse(bytes: &[u8]) -> Raw {
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(bytes)));
    let head = std::str::from_utf8(&bytes[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let body = bytes[split + 4..].to_vec();
    let raw = Raw {
        status,
        headers,
        body,
    };
    let length: usize = raw
        .header("content-length")
        .expect("answers carry a content-length")
        .parse()
        .unwrap();
    assert_eq!(raw.body.len(), length, "body length matches content-length");
    raw
}

/// The instances discovery lists in `namespace`.
pub async fn instances(base: &str, namespace: &str) -> Vec<Value> {
    let (status, services) = testkit::client::get(&format!("{base}/api/services")).await;
    assert_eq!(status, 200, "{services}");
    services[namespace].as_array().cloned().unwrap_or_default()
}

/// The instance discovery lists for `host:port` in `namespace`, if any.
pub async fn instance(base: &str, namespace: &str, host: &str, port: u16) -> Option<Value> {
    instances(base, namespace)
        .await
        .into_iter()
        .find(|i| i["host"] == host && i["port"].as_str() == Some(port.to_string().as_str()))
}

/// Waits until discovery lists `host:port` in `namespace` as `status`.
pub async fn wait_for_status(
    base: &str,
    namespace: &str,
    host: &str,
    port: u16,
    status: &str,
    limit: Duration,
) {
    let what = format!("{host}:{port} is {status} in {namespace:?}");
    testkit::wait_until(&what, limit, || async {
        instance(base, namespace, host, port)
            .await
            .is_some_and(|i| i["status"] == status)
    })
    .await;
}

/// A port nothing listens on right now (bound, noted, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Something on a port that accepts and drops every connection: it stands in
/// for a discovery that is away, and counts the app's tries, each one failed.
pub struct Squatter {
    tries: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: async_std::task::JoinHandle<()>,
}

impl Squatter {
    pub async fn start(listen: &str) -> Squatter {
        let listener = async_std::net::TcpListener::bind(listen).await.unwrap();
        let tries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = tries.clone();
        let task = async_std::task::spawn(async move {
            loop {
                if let Ok((conn, _)) = listener.accept().await {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    drop(conn);
                }
            }
        });
        Squatter { tries, task }
    }

    /// Waits until `n` connections came, i.e. the app failed `n` times.
    pub async fn wait_for_tries(&self, n: usize, limit: Duration) {
        let what = format!("the app has tried and failed {n} times");
        testkit::wait_until(&what, limit, || async {
            self.tries.load(std::sync::atomic::Ordering::SeqCst) >= n
        })
        .await;
    }

    /// Closes the port.
    pub async fn stop(self) {
        self.task.cancel().await;
    }
}
