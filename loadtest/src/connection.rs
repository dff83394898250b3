//! The load loop's keep-alive connection: shared's HTTP/1.1 codec (the same
//! parser, framing rules and read buffer as `shared::http1::client`) over a
//! socket read the way a request/response loop wants it.
//!
//! Why not `shared::http1::client::Connection` itself: async-std's socket
//! tries a read before it waits, so each answer cost three `recvfrom` calls
//! (one too early, one on a stale readiness tick, one with the data), and
//! on loopback the load generator is bound by its syscalls. Here the first
//! read of an answer waits for readiness first, which makes it one `recvfrom`
//! and one `epoll_ctl` per answer (wrk: one read and two `epoll_ctl`). The
//! answer's `x-served-by` is picked out of the head as it is parsed, so the
//! head is never copied.
//!
//! The socket is a [`Stream`]: [`Plain`] TCP or [`Tls`] (rustls through
//! futures-rustls over the same `Async<TcpStream>`). The connection is
//! generic over it, and the driver picks the type once per run, so the plain
//! path compiles to what it was before TLS existed: no branch per request.

use async_io::Async;
use futures_lite::AsyncRead;
use futures_rustls::client::TlsStream;
use futures_rustls::TlsConnector;
use rustls_pki_types::ServerName;
use shared::http1::{parse_response, ChunkedDecoder, Framing, ReadBuf, ResponseHead};
use std::future::Future;
use std::io::{Error, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// One answer, its buffers reused from request to request.
#[derive(Debug, Default)]
pub struct Answer {
    pub status: u16,
    /// Whether the server keeps the connection open.
    pub keep_alive: bool,
    pub body: Vec<u8>,
    served_by: Vec<u8>,
    has_served_by: bool,
}

impl Answer {
    /// The `x-served-by` header, if the answer had one.
    pub fn served_by(&self) -> Option<&str> {
        if self.has_served_by {
            std::str::from_utf8(&self.served_by).ok()
        } else {
            None
        }
    }
}

/// What a connection runs over; the driver picks one for the whole run.
pub trait Stream: Unpin + Send + Sized + 'static {
    /// What opening one needs besides the address (nothing, or the TLS client).
    type Dialer: Clone + Send + Sync + 'static;

    /// Connects (and for TLS, shakes hands).
    fn open(
        addr: SocketAddr,
        dialer: &Self::Dialer,
    ) -> impl Future<Output = std::io::Result<Self>> + Send;

    /// Writes the whole of `bytes`.
    fn send(&mut self, bytes: &[u8]) -> impl Future<Output = std::io::Result<()>> + Send;

    /// Reads into `buf`; with `wait_first` (cleared once used), only after
    /// the socket is readable.
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
        wait_first: &mut bool,
    ) -> Poll<std::io::Result<usize>>;

    /// The TLS version and cipher suite negotiated; `None` for plain TCP.
    fn tls_params(&self) -> Option<String>;
}

/// Plain TCP.
#[derive(Debug)]
pub struct Plain(Async<TcpStream>);

async fn tcp(addr: SocketAddr) -> std::io::Result<Async<TcpStream>> {
    let io = Async::<TcpStream>::connect(addr).await?;
    let _ = io.get_ref().set_nodelay(true);
    Ok(io)
}

impl Stream for Plain {
    type Dialer = ();

    async fn open(addr: SocketAddr, _: &()) -> std::io::Result<Plain> {
        Ok(Plain(tcp(addr).await?))
    }

    /// Normally one `sendto`.
    async fn send(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            match self.0.get_ref().write(bytes) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.0.writable().await?,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Waiting first also consumes the readiness the reactor recorded, so the
    /// next answer's wait does not return at once on a stale tick.
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
        wait_first: &mut bool,
    ) -> Poll<std::io::Result<usize>> {
        if *wait_first {
            ready!(self.0.poll_readable(cx))?;
            *wait_first = false;
        }
        loop {
            match self.0.get_ref().read(buf) {
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                res => return Poll::Ready(res),
            }
            ready!(self.0.poll_readable(cx))?;
        }
    }

    fn tls_params(&self) -> Option<String> {
        None
    }
}

/// How to open TLS connections: the client settings (trusting only the CA
/// given, see `shared::tls::client_config`) and the name verified in the
/// server's certificate (and sent as SNI unless it is an IP address).
#[derive(Clone)]
pub struct TlsDialer {
    pub connector: TlsConnector,
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for TlsDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsDialer")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TlsDialer {
    /// A client trusting the CA certificates in the PEM file `ca`, for `host`
    /// (a DNS name or an IP address).
    pub fn new(ca: &str, host: &str) -> Result<TlsDialer, String> {
        let config = shared::tls::client_config(ca, None)?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host:?} is not a name a certificate can be for: {e}"))?;
        Ok(TlsDialer {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }
}

/// TLS over the same socket, boxed (rustls' state is large; a connection
/// moves it once, when it opens).
#[derive(Debug)]
pub struct Tls(Box<TlsStream<Async<TcpStream>>>);

impl Stream for Tls {
    type Dialer = TlsDialer;

    async fn open(addr: SocketAddr, dialer: &TlsDialer) -> std::io::Result<Tls> {
        let io = tcp(addr).await?;
        let stream = dialer.connector.connect(dialer.name.clone(), io).await?;
        Ok(Tls(Box::new(stream)))
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use futures_lite::AsyncWriteExt as _;
        self.0.write_all(bytes).await?;
        self.0.flush().await
    }

    /// rustls reads records as they come: no wait first here.
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
        _: &mut bool,
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }

    fn tls_params(&self) -> Option<String> {
        let (_, session) = self.0.get_ref();
        let version = session
            .protocol_version()
            .map_or_else(|| "?".to_string(), |v| format!("{v:?}"));
        let suite = session
            .negotiated_cipher_suite()
            .map_or_else(|| "?".to_string(), |s| format!("{:?}", s.suite()));
        Some(format!("{version} {suite}"))
    }
}

#[derive(Debug)]
pub struct Connection<S = Plain> {
    io: S,
    buf: ReadBuf,
    head: ResponseHead,
}

impl Connection<Plain> {
    /// A plain TCP connection.
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Connection<Plain>> {
        Connection::open(addr, &()).await
    }
}

impl<S: Stream> Connection<S> {
    pub async fn open(addr: SocketAddr, dialer: &S::Dialer) -> std::io::Result<Connection<S>> {
        Ok(Connection {
            io: S::open(addr, dialer).await?,
            buf: ReadBuf::with_capacity(16 * 1024),
            head: ResponseHead::default(),
        })
    }

    /// Writes the whole request (plain: normally one `sendto`).
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.send(bytes).await
    }

    /// The TLS version and cipher suite, for TLS connections.
    pub fn tls_params(&self) -> Option<String> {
        self.io.tls_params()
    }

    /// Reads the next complete answer into `answer`, reusing its buffers.
    pub async fn read_into(&mut self, answer: &mut Answer) -> std::io::Result<()> {
        // Nothing buffered: the answer is not here yet, so wait before reading.
        let mut wait_first = self.buf.is_empty();
        loop {
            match parse_response(self.buf.data(), &mut self.head, MAX_HEAD, false) {
                Ok(true) if self.head.status < 200 && self.head.status != 101 => {
                    self.buf.consume(self.head.len);
                }
                Ok(true) => break,
                Ok(false) => {
                    self.more(wait_first).await?;
                    wait_first = false;
                }
                Err(e) => return Err(Error::new(ErrorKind::InvalidData, e)),
            }
        }
        answer.status = self.head.status;
        answer.keep_alive = self.head.keep_alive;
        answer.served_by.clear();
        answer.has_served_by = match self.head.header(self.buf.data(), "x-served-by") {
            Some(v) => {
                answer.served_by.extend_from_slice(v);
                true
            }
            None => false,
        };
        self.buf.consume(self.head.len);
        answer.body.clear();
        match self.head.framing {
            Framing::Empty => {}
            Framing::Length(n) => {
                let n = usize::try_from(n)
                    .map_err(|_| Error::new(ErrorKind::InvalidData, "body too large"))?;
                let mut left = n - self.buf.take_into(n, &mut answer.body);
                while left > 0 {
                    self.more(false).await?;
                    left -= self.buf.take_into(left, &mut answer.body);
                }
            }
            Framing::Chunked => {
                let mut decoder = ChunkedDecoder::new();
                loop {
                    let used = decoder
                        .decode(self.buf.data(), Some(&mut answer.body))
                        .map_err(|e| Error::new(ErrorKind::InvalidData, e))?;
                    self.buf.consume(used);
                    if decoder.is_done() {
                        break;
                    }
                    self.more(false).await?;
                }
            }
            Framing::UntilClose => loop {
                let n = self.buf.len();
                self.buf.take_into(n, &mut answer.body);
                if self.fill(false).await? == 0 {
                    break;
                }
            },
        }
        Ok(())
    }

    async fn fill(&mut self, wait_first: bool) -> std::io::Result<usize> {
        let mut reader = Reader {
            io: &mut self.io,
            wait_first,
        };
        self.buf.fill(&mut reader).await
    }

    async fn more(&mut self, wait_first: bool) -> std::io::Result<()> {
        match self.fill(wait_first).await? {
            0 => Err(Error::new(
                ErrorKind::UnexpectedEof,
                "server closed the connection mid-response",
            )),
            _ => Ok(()),
        }
    }
}

/// Reads from the stream; with `wait_first`, only once the reactor says it is
/// readable (plain TCP; see [`Stream::poll_read_into`]).
struct Reader<'a, S> {
    io: &'a mut S,
    wait_first: bool,
}

impl<S: Stream> AsyncRead for Reader<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.io.poll_read_into(cx, buf, &mut this.wait_first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_std::io::{ReadExt, WriteExt};
    use async_std::net::TcpListener;

    /// A server that answers each request with the next canned answer.
    async fn serve(answers: Vec<&'static [u8]>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        async_std::task::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            for answer in answers {
                let _ = s.read(&mut buf).await.unwrap();
                // In two writes, so the client must put the answer together.
                let (a, b) = answer.split_at(answer.len() / 2);
                s.write_all(a).await.unwrap();
                async_std::task::sleep(std::time::Duration::from_millis(5)).await;
                s.write_all(b).await.unwrap();
            }
        });
        addr
    }

    #[async_std::test]
    async fn answers_by_length_and_chunked_are_read_in_turn() {
        let addr = serve(vec![
            b"HTTP/1.1 200 OK\r\nx-served-by: 127.0.0.1:1\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 502 Bad Gateway\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        ])
        .await;
        let mut c = Connection::connect(addr).await.unwrap();
        let mut a = Answer::default();
        c.send(b"POST / HTTP/1.1\r\n\r\n").await.unwrap();
        c.read_into(&mut a).await.unwrap();
        assert_eq!(
            (a.status, &a.body[..], a.served_by()),
            (200, &b"hello"[..], Some("127.0.0.1:1"))
        );
        assert!(a.keep_alive);
        c.send(b"POST / HTTP/1.1\r\n\r\n").await.unwrap();
        c.read_into(&mut a).await.unwrap();
        assert_eq!(
            (a.status, &a.body[..], a.served_by()),
            (502, &b"abc"[..], None)
        );
        c.send(b"POST / HTTP/1.1\r\n\r\n").await.unwrap();
        c.read_into(&mut a).await.unwrap();
        assert_eq!(&a.body[..], b"ok");
        assert!(!a.keep_alive);
        // The server is gone: no answer is an error, not a hang.
        let _ = c.send(b"POST / HTTP/1.1\r\n\r\n").await;
        assert!(c.read_into(&mut a).await.is_err());
    }
}
