//! A keep-alive HTTP/1.1 client connection on the same codec: for the load
//! generator (which must not be the bottleneck), discovery's health checks
//! (over TLS too: any stream, a TCP one by default) and for tests that need
//! to see exact bytes.

use super::{parse_response, ChunkedDecoder, Framing, ReadBuf, ResponseHead};
use async_std::net::{TcpStream, ToSocketAddrs};
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use std::io::{Error, ErrorKind};

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// One answer: its status, its head as received, and its body.
#[derive(Clone, Debug, Default)]
pub struct Response {
    pub status: u16,
    /// The raw head, status line to blank line.
    pub head: Vec<u8>,
    parsed: ResponseHead,
    pub body: Vec<u8>,
    /// Whether the server keeps the connection open.
    pub keep_alive: bool,
}

impl Response {
    /// The first value of header `name` (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.parsed
            .header(&self.head, name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// A client connection; requests go out one at a time or pipelined. Over a
/// TCP stream unless made with [`Connection::over`] (a TLS one, say).
#[derive(Debug)]
pub struct Connection<S = TcpStream> {
    stream: S,
    buf: ReadBuf,
}

impl Connection {
    pub async fn connect(addr: impl ToSocketAddrs) -> std::io::Result<Connection> {
        Ok(Connection::from_stream(TcpStream::connect(addr).await?))
    }

    /// Wraps a connected stream (with Nagle's algorithm off).
    pub fn from_stream(stream: TcpStream) -> Connection {
        let _ = stream.set_nodelay(true);
        Connection::over(stream)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Wraps any connected stream as it is.
    pub fn over(stream: S) -> Connection<S> {
        Connection {
            stream,
            buf: ReadBuf::with_capacity(16 * 1024),
        }
    }

    /// Writes raw request bytes (one request, several, or part of one).
    /// Flushed, so a stream that buffers (TLS) sends them now.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads the next complete response into `res`, reusing its buffers.
    /// `to_head_request`: the request was HEAD, so no body follows.
    pub async fn read_into(
        &mut self,
        res: &mut Response,
        to_head_request: bool,
    ) -> std::io::Result<()> {
        loop {
            match parse_response(self.buf.data(), &mut res.parsed, MAX_HEAD, to_head_request) {
                Ok(true) if res.parsed.status < 200 && res.parsed.status != 101 => {
                    self.buf.consume(res.parsed.len);
                    continue;
                }
                Ok(true) => break,
                Ok(false) => self.more().await?,
                Err(e) => return Err(Error::new(ErrorKind::InvalidData, e)),
            }
        }
        let head_len = res.parsed.len;
        res.head.clear();
        res.head.extend_from_slice(&self.buf.data()[..head_len]);
        self.buf.consume(head_len);
        res.status = res.parsed.status;
        res.keep_alive = res.parsed.keep_alive;
        res.body.clear();
        match res.parsed.framing {
            Framing::Empty => {}
            Framing::Length(n) => {
                let n = usize::try_from(n)
                    .map_err(|_| Error::new(ErrorKind::InvalidData, "body too large"))?;
                let mut left = n - self.buf.take_into(n, &mut res.body);
                while left > 0 {
                    self.more().await?;
                    left -= self.buf.take_into(left, &mut res.body);
                }
            }
            Framing::Chunked => {
                let mut decoder = ChunkedDecoder::new();
                loop {
                    let used = decoder
                        .decode(self.buf.data(), Some(&mut res.body))
                        .map_err(|e| Error::new(ErrorKind::InvalidData, e))?;
                    self.buf.consume(used);
                    if decoder.is_done() {
                        break;
                    }
                    self.more().await?;
                }
            }
            Framing::UntilClose => loop {
                let n = self.buf.len();
                self.buf.take_into(n, &mut res.body);
                if self.buf.fill(&mut self.stream).await? == 0 {
                    break;
                }
            },
        }
        Ok(())
    }

    /// Reads only the next final response head (1xx interim answers skipped),
    /// at most `max_head` bytes, and returns its status code and HTTP/1 minor
    /// version; the body is left unread. For health checks, which need the
    /// status and must not let an instance make them read (or hold) a body.
    pub async fn read_status(&mut self, max_head: usize) -> std::io::Result<(u16, u8)> {
        let mut head = ResponseHead::default();
        loop {
            match parse_response(self.buf.data(), &mut head, max_head, true) {
                Ok(true) if head.status < 200 && head.status != 101 => {
                    self.buf.consume(head.len);
                }
                Ok(true) => {
                    self.buf.consume(head.len);
                    return Ok((head.status, head.minor_version));
                }
                Ok(false) => self.more().await?,
                Err(e) => return Err(Error::new(ErrorKind::InvalidData, e)),
            }
        }
    }

    /// Reads the next complete response.
    pub async fn read(&mut self) -> std::io::Result<Response> {
        let mut res = Response::default();
        self.read_into(&mut res, false).await?;
        Ok(res)
    }

    /// Sends one request and reads its response.
    pub async fn exchange(&mut self, request: &[u8]) -> std::io::Result<Response> {
        self.send(request).await?;
        self.read().await
    }

    /// Bytes the server sent until it closed the connection (for tests of refusals).
    pub async fn read_to_close(&mut self) -> std::io::Result<Vec<u8>> {
        let mut all = self.buf.data().to_vec();
        self.buf.consume(all.len());
        loop {
            if self.buf.fill(&mut self.stream).await? == 0 {
                return Ok(all);
            }
            all.extend_from_slice(self.buf.data());
            let n = self.buf.len();
            self.buf.consume(n);
        }
    }

    async fn more(&mut self) -> std::io::Result<()> {
        match self.buf.fill(&mut self.stream).await? {
            0 => Err(Error::new(
                ErrorKind::UnexpectedEof,
                "server closed the connection mid-response",
            )),
            _ => Ok(()),
        }
    }
}

/// A POST with a JSON body, as the load generator and tests send it.
pub fn post(out: &mut Vec<u8>, host: &str, path: &str, body: &[u8], extra_headers: &str) {
    use std::io::Write;
    out.clear();
    let _ = write!(
        out,
        "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra_headers}\r\n",
        body.len()
    );
    out.extend_from_slice(body);
}
