//! A scripted HTTP instance on raw sockets, for behaviours the real app does
//! not have: chunked or huge answers, closing without answering, and a record
//! of exactly what arrived. Health checks always pass.

use async_std::io::WriteExt;
use async_std::net::{TcpListener, TcpStream};
use async_std::task;
use futures_lite::FutureExt;
use shared::http1::{parse_request, ChunkedDecoder, Framing, ReadBuf, RequestHead};
use shared::shutdown::Trigger;
use std::sync::{Arc, Mutex};

/// What the instance does with a business request.
#[derive(Clone, Debug)]
pub enum Script {
    /// Echo the body with a Content-Length.
    Echo,
    /// Echo the body as a chunked answer, in pieces of this size.
    ChunkedEcho(usize),
    /// Answer this many bytes of `x`, written in 64 KiB pieces.
    Big(usize),
    /// Read the request, then close without a byte of answer.
    Close,
    /// Read the request and never answer (the connection stays open).
    Hang,
    /// Send a head promising 100 bytes, then 10 of them, then close.
    HalfAnswer,
    /// Echo with a Content-Length, then close the connection (an instance
    /// with a very short keep-alive timeout).
    EchoThenClose,
    /// Echo without a length: the body ends when the connection closes.
    EchoUntilClose,
    /// Send these bytes as the whole answer.
    Fixed(Vec<u8>),
    /// Answer this status with a small JSON body.
    Status(u16),
}

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Received {
    pub head: String,
    pub body: Vec<u8>,
}

impl Received {
    /// The value of header `name`, case-insensitive.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

#[derive(Debug)]
struct Shared {
    script: Mutex<Script>,
    received: Mutex<Vec<Received>>,
}

#[derive(Debug)]
pub struct RawInstance {
    port: u16,
    shared: Arc<Shared>,
    stop: Trigger,
}

impl RawInstance {
    pub async fn start(script: Script) -> RawInstance {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            script: Mutex::new(script),
            received: Mutex::new(Vec::new()),
        });
        let stop = Trigger::new();
        let (s, st) = (shared.clone(), stop.clone());
        task::spawn(async move {
            loop {
                let accepted = listener.accept().or(async {
                    st.wait().await;
                    Err(std::io::Error::other("stop"))
                });
                let Ok((stream, _)) = accepted.await else {
                    return;
                };
                let (s, st) = (s.clone(), st.clone());
                task::spawn(async move {
                    let serve = serve(stream, s);
                    serve.or(st.wait()).await;
                });
            }
        });
        RawInstance { port, shared, stop }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn set(&self, script: Script) {
        *self.shared.script.lock().unwrap() = script;
    }

    /// Business requests received so far (health checks not included).
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Closes the port and every connection.
    pub fn stop(&self) {
        self.stop.fire();
    }
}

impl Drop for RawInstance {
    fn drop(&mut self) {
        self.stop.fire();
    }
}

async fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut buf = ReadBuf::with_capacity(16 * 1024);
    let mut head = RequestHead::default();
    loop {
        while !matches!(parse_request(buf.data(), &mut head, 1 << 20), Ok(true)) {
            if parse_request(buf.data(), &mut head, 1 << 20).is_err()
                || buf.fill(&mut stream).await.unwrap_or(0) == 0
            {
                return;
            }
        }
        let raw = buf.data();
        let text = String::from_utf8_lossy(&raw[..head.len]).into_owned();
        let health = head.target(raw).starts_with(b"/health_check");
        buf.consume(head.len);
        let mut body = Vec::new();
        match head.framing {
            Framing::Length(n) => {
                let mut left = n as usize - buf.take_into(n as usize, &mut body);
                while left > 0 {
                    if buf.fill(&mut stream).await.unwrap_or(0) == 0 {
                        return;
                    }
                    left -= buf.take_into(left, &mut body);
                }
            }
            Framing::Chunked => {
                let mut d = ChunkedDecoder::new();
                loop {
                    let Ok(used) = d.decode(buf.data(), Some(&mut body)) else {
                        return;
                    };
                    buf.consume(used);
                    if d.is_done() {
                        break;
                    }
                    if buf.fill(&mut stream).await.unwrap_or(0) == 0 {
                        return;
                    }
                }
            }
            _ => {}
        }
        if health {
            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}";
            if stream.write_all(ok).await.is_err() {
                return;
            }
            continue;
        }
        shared.received.lock().unwrap().push(Received {
            head: text,
            body: body.clone(),
        });
        let script = shared.script.lock().unwrap().clone();
        let written = match script {
            Script::Echo => {
                let mut out = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
                out.extend_from_slice(&body);
                stream.write_all(&out).await
            }
            Script::ChunkedEcho(piece) => {
                let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                for part in body.chunks(piece.max(1)) {
                    out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                    out.extend_from_slice(part);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
                stream.write_all(&out).await
            }
            Script::Big(n) => big(&mut stream, n).await,
            Script::Close => return,
            Script::Hang => futures_lite::future::pending().await,
            Script::EchoThenClose => {
                let mut out = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len())
                    .into_bytes();
                out.extend_from_slice(&body);
                let _ = stream.write_all(&out).await;
                return;
            }
            Script::EchoUntilClose => {
                let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n".to_vec();
                out.extend_from_slice(&body);
                let _ = stream.write_all(&out).await;
                return;
            }
            Script::Fixed(bytes) => stream.write_all(&bytes).await,
            Script::HalfAnswer => {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial\"")
                    .await;
                return;
            }
            Script::Status(code) => {
                let body = format!("{{\"status\":{code}}}");
                let out = format!(
                    "HTTP/1.1 {code} Whatever\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(out.as_bytes()).await
            }
        };
        if written.is_err() {
            return;
        }
    }
}

async fn big(stream: &mut TcpStream, n: usize) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {n}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    let piece = vec![b'x'; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let take = left.min(piece.len());
        stream.write_all(&piece[..take]).await?;
        left -= take;
    }
    Ok(())
}
