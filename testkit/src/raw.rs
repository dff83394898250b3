//! A scripted HTTP instance on raw sockets, for behaviours the real app does
//! not have: chunked or huge answers, closing without answering, and every
//! misbehaviour of [`Script`] (stray answers, malformed framing, resets, wrong
//! request ids...). It keeps a record of exactly what arrived, on which of its
//! connections and when, of the stray answers it sent, and of the connections
//! the peer closed. Health checks always pass.
//!
//! A request may choose its own behaviour with the header `x-script: <name>`
//! ([`Script::name`]); without it the instance follows the script it was set.

pub use crate::script::Script;
use crate::script::{stray_body, Ctx, Plan};
use async_std::io::WriteExt;
use async_std::net::{Shutdown, TcpListener, TcpStream};
use async_std::sync::Mutex as WriteLock;
use async_std::task;
use futures_lite::FutureExt;
use shared::http1::{parse_request, ChunkedDecoder, Framing, ReadBuf, RequestHead};
use shared::shutdown::Trigger;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest request head the instance reads.
const MAX_HEAD: usize = 1 << 20;

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Received {
    pub head: String,
    pub body: Vec<u8>,
    /// Which of the instance's connections it came on (numbered from 0 in
    /// accept order; health checks take numbers too).
    pub conn: u64,
    /// How many requests came on that connection before it (0: a fresh connection).
    pub index_on_conn: u64,
    /// When its head was read.
    pub at: Instant,
    /// The name of the script that answered it.
    pub script: String,
}

impl Received {
    /// The value of header `name`, case-insensitive.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    /// The `x-request-id` the request carried.
    pub fn request_id(&self) -> Option<String> {
        self.header("x-request-id")
    }
}

/// A complete answer the instance sent that no request asked for.
#[derive(Clone, Debug)]
pub struct Stray {
    /// The connection it went out on.
    pub conn: u64,
    /// The `x-request-id` of the request it followed.
    pub after: Option<String>,
    /// Its body: unique, so a client that receives it can be told apart.
    pub body: Vec<u8>,
    /// When its write finished.
    pub at: Instant,
}

#[derive(Debug)]
struct Shared {
    port: u16,
    script: Mutex<Script>,
    received: Mutex<Vec<Received>>,
    strays: Mutex<Vec<Stray>>,
    /// Connections on which the peer closed (or reset) its side.
    closed: Mutex<Vec<u64>>,
    conns: AtomicU64,
    stray_seq: AtomicU64,
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
            port,
            script: Mutex::new(script),
            received: Mutex::new(Vec::new()),
            strays: Mutex::new(Vec::new()),
            closed: Mutex::new(Vec::new()),
            conns: AtomicU64::new(0),
            stray_seq: AtomicU64::new(0),
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
                let conn = s.conns.fetch_add(1, Ordering::Relaxed);
                let (s, st) = (s.clone(), st.clone());
                task::spawn(async move {
                    let serve = serve(stream, conn, s, st.clone());
                    serve.or(st.wait()).await;
                });
            }
        });
        RawInstance { port, shared, stop }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`, as the gateway names it in `/status` and metrics.
    pub fn key(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn set(&self, script: Script) {
        *self.shared.script.lock().unwrap() = script;
    }

    /// Business requests received so far (health checks not included).
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// How many business requests carried `x-request-id: id`.
    pub fn received_id(&self, id: &str) -> usize {
        let received = self.shared.received.lock().unwrap();
        received
            .iter()
            .filter(|r| r.request_id().as_deref() == Some(id))
            .count()
    }

    /// Stray answers sent so far.
    pub fn strays(&self) -> Vec<Stray> {
        self.shared.strays.lock().unwrap().clone()
    }

    /// Whether the peer has closed (or reset) connection `conn`.
    pub fn closed_by_peer(&self, conn: u64) -> bool {
        self.shared.closed.lock().unwrap().contains(&conn)
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

/// One connection's state: its reader, a write side that delayed stray
/// writers reach through a weak reference (so answers never interleave, and
/// a stray never outlives the connection: once the link is dropped the socket
/// closes, with a RST if a request was left unread), and its numbers.
struct Link {
    stream: TcpStream,
    writer: Arc<Out>,
    buf: ReadBuf,
    /// Where requests are looked at before being read (see [`reset_if_asked`]).
    probe: Vec<u8>,
    conn: u64,
    served: u64,
}

/// The write side of a connection; `None` once its script closed or reset it.
type Out = WriteLock<Option<TcpStream>>;

impl Link {
    async fn write(&self, bytes: &[u8]) -> std::io::Result<()> {
        match self.writer.lock().await.as_mut() {
            Some(w) => w.write_all(bytes).await,
            None => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    /// Writes `bytes` and closes, under the write lock: no stray slips in
    /// between, and none is written after.
    async fn write_then_close(&self, bytes: &[u8]) {
        let mut out = self.writer.lock().await;
        if let Some(w) = out.as_mut() {
            let _ = w.write_all(bytes).await;
            let _ = w.shutdown(Shutdown::Both);
        }
        *out = None;
    }
}

/// A request as read off the connection.
struct Incoming {
    head: String,
    body: Vec<u8>,
    health: bool,
}

async fn serve(stream: TcpStream, conn: u64, shared: Arc<Shared>, stop: Trigger) {
    let mut link = Link {
        writer: Arc::new(WriteLock::new(Some(stream.clone()))),
        stream,
        buf: ReadBuf::with_capacity(16 * 1024),
        probe: vec![0; 64 * 1024],
        conn,
        served: 0,
    };
    loop {
        if link.buf.is_empty() && reset_if_asked(&mut link, &shared).await {
            return;
        }
        let Some(incoming) = read_request(&mut link).await else {
            shared.closed.lock().unwrap().push(conn);
            return;
        };
        if incoming.health {
            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}";
            if link.write(ok).await.is_err() {
                return;
            }
            continue;
        }
        let (script, id) = record(&shared, &mut link, incoming.head, incoming.body.clone());
        let request = (incoming.body.as_slice(), id.as_deref());
        if !answer(&mut link, &shared, &script, request, &stop).await {
            return;
        }
    }
}

/// Reads one whole request (head and body); `None` when the connection ends first.
async fn read_request(link: &mut Link) -> Option<Incoming> {
    let mut head = RequestHead::default();
    loop {
        match parse_request(link.buf.data(), &mut head, MAX_HEAD) {
            Ok(true) => break,
            Ok(false) if link.buf.fill(&mut link.stream).await.unwrap_or(0) > 0 => {}
            _ => return None,
        }
    }
    let raw = link.buf.data();
    let text = String::from_utf8_lossy(&raw[..head.len]).into_owned();
    let health = head.target(raw).starts_with(b"/health_check");
    link.buf.consume(head.len);
    let mut body = Vec::new();
    match head.framing {
        Framing::Length(n) => {
            let mut left = n as usize - link.buf.take_into(n as usize, &mut body);
            while left > 0 {
                if link.buf.fill(&mut link.stream).await.unwrap_or(0) == 0 {
                    return None;
                }
                left -= link.buf.take_into(left, &mut body);
            }
        }
        Framing::Chunked => {
            let mut d = ChunkedDecoder::new();
            loop {
                let used = d.decode(link.buf.data(), Some(&mut body)).ok()?;
                link.buf.consume(used);
                if d.is_done() {
                    break;
                }
                if link.buf.fill(&mut link.stream).await.unwrap_or(0) == 0 {
                    return None;
                }
            }
        }
        _ => {}
    }
    Some(Incoming {
        head: text,
        body,
        health,
    })
}

/// The script for a request: its `x-script` if it names one, else the set one.
fn choose(shared: &Shared, head: &str) -> Script {
    let named = head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case("x-script")
            .then(|| v.trim().to_string())
    });
    match named {
        Some(name) => Script::from_name(&name).unwrap_or_else(|| {
            Script::Fixed(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 26\r\n\r\n{\"error\":\"unknown script\"}".to_vec())
        }),
        None => shared.script.lock().unwrap().clone(),
    }
}

/// Records a business request; answers which script handles it, and its id.
fn record(
    shared: &Shared,
    link: &mut Link,
    head: String,
    body: Vec<u8>,
) -> (Script, Option<String>) {
    let script = choose(shared, &head);
    let received = Received {
        head,
        body,
        conn: link.conn,
        index_on_conn: link.served,
        at: Instant::now(),
        script: script.name(),
    };
    let id = received.request_id();
    shared.received.lock().unwrap().push(received);
    link.served += 1;
    (script, id)
}

/// Carries out `script` for one request; false when the connection is done.
async fn answer(
    link: &mut Link,
    shared: &Arc<Shared>,
    script: &Script,
    (body, id): (&[u8], Option<&str>),
    stop: &Trigger,
) -> bool {
    let cx = Ctx {
        body,
        id,
        port: shared.port,
        stray_seq: shared.stray_seq.fetch_add(1, Ordering::Relaxed),
    };
    match script.plan(&cx) {
        Plan::Write(bytes) => link.write(&bytes).await.is_ok(),
        Plan::WriteWithStray(bytes) => {
            let written = link.write(&bytes).await.is_ok();
            if written {
                shared.strays.lock().unwrap().push(Stray {
                    conn: link.conn,
                    after: id.map(str::to_string),
                    body: stray_body(&cx),
                    at: Instant::now(),
                });
            }
            written
        }
        Plan::WriteThenClose(bytes) => {
            link.write_then_close(&bytes).await;
            false
        }
        Plan::WriteThenReset(bytes) => {
            // Reached only when the request could not be left unread (see
            // `reset_if_asked`): the best left is a plain close.
            link.write_then_close(&bytes).await;
            false
        }
        Plan::WriteThenStray { now, delay, stray } => {
            if link.write(&now).await.is_err() {
                return false;
            }
            let stray = PendingStray {
                conn: link.conn,
                after: id.map(str::to_string),
                body: stray_body(&cx),
                bytes: stray,
            };
            send_later(
                Arc::downgrade(&link.writer),
                shared.clone(),
                stray,
                delay,
                stop,
            );
            true
        }
        Plan::Drip(bytes, delay) => {
            let mut out = link.writer.lock().await;
            let Some(w) = out.as_mut() else {
                return false;
            };
            for byte in bytes {
                if w.write_all(&[byte]).await.is_err() {
                    return false;
                }
                task::sleep(delay).await;
            }
            true
        }
        Plan::Big(n) => match link.writer.lock().await.as_mut() {
            Some(w) => big(w, n).await.is_ok(),
            None => false,
        },
        Plan::Hang => {
            // Read and drop whatever comes until the peer gives up.
            let mut sink = ReadBuf::with_capacity(1024);
            while sink.fill(&mut link.stream).await.unwrap_or(0) > 0 {
                sink.consume(sink.len());
            }
            false
        }
    }
}

/// A stray answer waiting for its moment.
struct PendingStray {
    conn: u64,
    after: Option<String>,
    body: Vec<u8>,
    bytes: Vec<u8>,
}

/// Writes `stray` after `delay` from a task of its own, while the connection
/// goes on serving requests: the stray may land while the peer's connection
/// is idle or while it waits for the next answer.
fn send_later(
    writer: std::sync::Weak<Out>,
    shared: Arc<Shared>,
    stray: PendingStray,
    delay: Duration,
    stop: &Trigger,
) {
    let stop = stop.clone();
    task::spawn(
        async move {
            task::sleep(delay).await;
            // The connection is gone (closed or reset by its script): no stray.
            let Some(writer) = writer.upgrade() else {
                return;
            };
            let mut out = writer.lock().await;
            let Some(w) = out.as_mut() else {
                return;
            };
            let written = w.write_all(&stray.bytes).await;
            drop(out);
            if written.is_ok() {
                shared.strays.lock().unwrap().push(Stray {
                    conn: stray.conn,
                    after: stray.after,
                    body: stray.body,
                    at: Instant::now(),
                });
            }
        }
        .or(async move { stop.wait().await }),
    );
}

/// Resets the connection (RST) with a half answer, when the next request asks
/// for `half-reset`. Linux sends a RST instead of a FIN when a socket is
/// closed with received bytes unread (and std cannot set SO_LINGER to 0), so
/// the request is looked at with `peek` and never read. True when it did.
async fn reset_if_asked(link: &mut Link, shared: &Shared) -> bool {
    let Ok(n) = link.stream.peek(&mut link.probe).await else {
        return false;
    };
    let mut head = RequestHead::default();
    let seen = &link.probe[..n];
    if !matches!(parse_request(seen, &mut head, MAX_HEAD), Ok(true)) {
        return false;
    }
    let len = match head.framing {
        Framing::Length(len) => len as usize,
        Framing::Empty => 0,
        _ => return false,
    };
    let text = String::from_utf8_lossy(&seen[..head.len]).into_owned();
    let whole = head.len + len <= n;
    if !whole || head.target(seen).starts_with(b"/health_check") {
        return false;
    }
    if choose(shared, &text) != Script::HalfAnswerReset {
        return false;
    }
    let body = seen[head.len..head.len + len].to_vec();
    record(shared, link, text, body);
    // Under the write lock to the end: no stray slips in, none comes after.
    let mut out = link.writer.lock().await;
    let Some(w) = out.as_mut() else {
        return true;
    };
    if w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial\"")
        .await
        .is_ok()
    {
        // Let the half answer be read before the reset, which may discard it.
        task::sleep(Duration::from_millis(20)).await;
    }
    // The last handle on the socket but the reader's, which goes with the link.
    *out = None;
    true
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

#[cfg(test)]
mod tests {
    use super::*;
    use async_std::io::ReadExt;
    use shared::http1::client::Connection;

    fn request(id: &str, script: &str, body: &str) -> Vec<u8> {
        format!(
            "POST /p HTTP/1.1\r\nhost: x\r\nx-request-id: {id}\r\nx-script: {script}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// Everything the instance sends on one connection until it closes or resets it.
    async fn all_bytes(port: u16, req: &[u8]) -> (Vec<u8>, Option<std::io::ErrorKind>) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut out = Vec::new();
        let mut piece = [0u8; 4096];
        loop {
            match s.read(&mut piece).await {
                Ok(0) => return (out, None),
                Ok(n) => out.extend_from_slice(&piece[..n]),
                Err(e) => return (out, Some(e.kind())),
            }
        }
    }

    #[async_std::test]
    async fn x_script_chooses_per_request_and_everything_is_recorded() {
        let raw = RawInstance::start(Script::Echo).await;
        let mut conn = Connection::connect(("127.0.0.1", raw.port()))
            .await
            .unwrap();
        let res = conn
            .exchange(&request("a1", "no-request-id", "{}"))
            .await
            .unwrap();
        assert_eq!((res.status, res.header("x-request-id")), (200, None));
        let res = conn
            .exchange(&request("a2", "wrong-request-id", "{}"))
            .await
            .unwrap();
        assert_eq!(res.header("x-request-id"), Some("not-a2"));
        let plain =
            b"POST /p HTTP/1.1\r\nhost: x\r\nx-request-id: a3\r\ncontent-length: 2\r\n\r\n{}";
        let res = conn.exchange(plain).await.unwrap();
        assert_eq!(
            res.header("x-request-id"),
            Some("a3"),
            "the set script echoes the id"
        );
        let res = conn
            .exchange(&request("a4", "nonsense", "{}"))
            .await
            .unwrap();
        assert_eq!(
            res.status, 400,
            "an unknown script name is refused, not ignored"
        );
        let got = raw.received();
        let scripts: Vec<&str> = got.iter().map(|r| r.script.as_str()).collect();
        assert_eq!(
            scripts,
            ["no-request-id", "wrong-request-id", "echo", "fixed"]
        );
        assert!(got.iter().all(|r| r.conn == got[0].conn));
        let indexes: Vec<u64> = got.iter().map(|r| r.index_on_conn).collect();
        assert_eq!(indexes, [0, 1, 2, 3]);
        assert_eq!(raw.received_id("a2"), 1);
    }

    #[async_std::test]
    async fn a_late_stray_follows_the_answer_on_the_same_connection() {
        let raw = RawInstance::start(Script::Echo).await;
        let mut conn = Connection::connect(("127.0.0.1", raw.port()))
            .await
            .unwrap();
        let res = conn
            .exchange(&request("s1", "stray-after:30", "{\"a\":1}"))
            .await
            .unwrap();
        assert_eq!(res.body, b"{\"a\":1}");
        let stray = conn.read().await.unwrap();
        // Recorded once its write returned, which the read may beat.
        crate::wait_until("the stray is recorded", Duration::from_secs(5), || async {
            raw.strays().len() == 1
        })
        .await;
        let sent = raw.strays();
        assert_eq!(
            (stray.body.clone(), sent[0].after.as_deref()),
            (sent[0].body.clone(), Some("s1"))
        );
        assert_eq!(stray.header("x-request-id"), Some("s1"));
        // The same write: answer and stray come back to back.
        let res = conn
            .exchange(&request("s2", "stray-same-write", "{}"))
            .await
            .unwrap();
        assert_eq!(res.body, b"{}");
        let stray = conn.read().await.unwrap();
        crate::wait_until("the stray is recorded", Duration::from_secs(5), || async {
            raw.strays().len() == 2
        })
        .await;
        assert_eq!(stray.body, raw.strays()[1].body);
    }

    #[async_std::test]
    async fn interim_answers_come_in_one_write_before_the_echo() {
        let raw = RawInstance::start(Script::Interim).await;
        let req =
            b"POST /p HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}";
        let mut s = TcpStream::connect(("127.0.0.1", raw.port())).await.unwrap();
        s.write_all(req).await.unwrap();
        // One read: everything came in one write (loopback delivers it whole).
        let mut piece = [0u8; 4096];
        let n = s.read(&mut piece).await.unwrap();
        let text = String::from_utf8_lossy(&piece[..n]);
        assert!(
            text.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n"),
            "{text}"
        );
        assert!(
            text.contains("\r\n\r\nHTTP/1.1 200 OK\r\n") && text.ends_with("{}"),
            "{text}"
        );
    }

    #[async_std::test]
    async fn half_reset_sends_half_an_answer_then_a_reset() {
        let raw = RawInstance::start(Script::Echo).await;
        let (bytes, error) = all_bytes(raw.port(), &request("r1", "half-reset", "{}")).await;
        assert!(String::from_utf8_lossy(&bytes)
            .starts_with("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n"));
        assert_eq!(
            error,
            Some(std::io::ErrorKind::ConnectionReset),
            "a RST, not a FIN"
        );
        assert_eq!(raw.received_id("r1"), 1, "recorded though never read");
        let (_, error) = all_bytes(raw.port(), &request("r2", "half", "{}")).await;
        assert_eq!(error, None, "half: a plain close");
    }

    #[async_std::test]
    async fn the_peer_closing_a_connection_is_recorded() {
        let raw = RawInstance::start(Script::Echo).await;
        let mut conn = Connection::connect(("127.0.0.1", raw.port()))
            .await
            .unwrap();
        conn.exchange(&request("c1", "echo", "{}")).await.unwrap();
        let on = raw.received()[0].conn;
        assert!(!raw.closed_by_peer(on));
        drop(conn);
        crate::wait_until("the close is seen", Duration::from_secs(5), || async {
            raw.closed_by_peer(on)
        })
        .await;
    }
}
