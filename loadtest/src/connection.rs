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

use async_io::Async;
use futures_lite::AsyncRead;
use shared::http1::{parse_response, ChunkedDecoder, Framing, ReadBuf, ResponseHead};
use std::io::{Error, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
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

#[derive(Debug)]
pub struct Connection {
    io: Async<TcpStream>,
    buf: ReadBuf,
    head: ResponseHead,
}

impl Connection {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Connection> {
        let io = Async::<TcpStream>::connect(addr).await?;
        let _ = io.get_ref().set_nodelay(true);
        Ok(Connection {
            io,
            buf: ReadBuf::with_capacity(16 * 1024),
            head: ResponseHead::default(),
        })
    }

    /// Writes the whole request (normally one `sendto`).
    pub async fn send(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            match self.io.get_ref().write(bytes) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.io.writable().await?,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
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
            io: &self.io,
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

/// Reads from the socket; with `wait_first`, only once the reactor says it is
/// readable. Waiting first also consumes the readiness the reactor recorded,
/// so the next answer's wait does not return at once on a stale tick.
struct Reader<'a> {
    io: &'a Async<TcpStream>,
    wait_first: bool,
}

impl AsyncRead for Reader<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.wait_first {
            ready!(self.io.poll_readable(cx))?;
            self.wait_first = false;
        }
        loop {
            match self.io.get_ref().read(buf) {
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                res => return Poll::Ready(res),
            }
            ready!(self.io.poll_readable(cx))?;
        }
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
