//! One client connection: the TLS handshake first on a TLS port, then
//! requests read in turn (pipelined ones stay in the buffer, in order), each
//! served by tide and answered before the next. The exchange is generic over
//! the stream: the socket itself, or TLS over it.

use super::front::{self, Refusal};
use super::respond::{self, Exchange};
use super::slots::Held;
use super::Limits;
use crate::http1::{ReadBuf, RequestHead};
use crate::panics::Panics;
use crate::shutdown::Trigger;
use async_std::net::TcpStream;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What every connection of one listener shares.
pub struct Shared<S> {
    pub app: tide::Server<S>,
    pub limits: Limits,
    pub panics: Panics,
    pub stop: Trigger,
    pub kill: Trigger,
    pub tls: Option<Tls>,
}

/// A TLS port's side of each connection.
pub struct Tls {
    pub acceptor: futures_rustls::TlsAcceptor,
    pub handshake_timeout: Duration,
    pub handshakes: Arc<super::Handshakes>,
}

/// Per-connection buffers, kept across its requests.
struct Conn {
    buf: ReadBuf,
    head: RequestHead,
    out: Vec<u8>,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    /// Over TLS: requests are `https://` to tide.
    secure: bool,
    /// The client's verified certificate, handed to every request.
    certificate: Option<super::PeerCertificate>,
}

/// Serves `stream` until the client or the server ends it: plainly, or
/// after a TLS handshake on a TLS port.
pub async fn serve<S>(shared: &Shared<S>, stream: TcpStream, held: Held)
where
    S: Clone + Send + Sync + 'static,
{
    let _ = stream.set_nodelay(true);
    if let Some(bytes) = shared.limits.send_buffer {
        // Best effort: without it the connection still works, with the
        // kernel's own (larger) buffer.
        if let Err(e) =
            nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::SndBuf, &bytes)
        {
            log::debug!("cannot set the send buffer: {e}");
        }
    }
    let mut conn = Conn {
        buf: ReadBuf::with_capacity(4096),
        head: RequestHead::default(),
        out: Vec::with_capacity(1024),
        local: stream.local_addr().ok(),
        peer: stream.peer_addr().ok(),
        secure: false,
        certificate: None,
    };
    let Some(tls) = &shared.tls else {
        return run(shared, conn, stream, held).await;
    };
    // Until the handshake is over the client has sent no request: idle, so
    // the cap may close it like any other silent connection.
    held.slot.idle();
    let handshake = async {
        let started =
            async_std::future::timeout(tls.handshake_timeout, tls.acceptor.accept(stream));
        match started.await {
            Ok(Ok(stream)) => {
                tls.handshakes.ok.fetch_add(1, Ordering::Relaxed);
                Some(stream)
            }
            Ok(Err(e)) => {
                tls.handshakes.failed.fetch_add(1, Ordering::Relaxed);
                log::debug!(peer:? = conn.peer; "TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                tls.handshakes.timeout.fetch_add(1, Ordering::Relaxed);
                log::debug!(peer:? = conn.peer; "TLS handshake not over within the handshake timeout");
                None
            }
        }
    };
    let closing = async {
        held.slot.close.wait().await;
        None
    };
    let Some(stream) = handshake.or(closing).await else {
        return;
    };
    conn.secure = true;
    conn.certificate = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| super::PeerCertificate(Arc::new(leaf.clone().into_owned())));
    run(shared, conn, stream, held).await;
}

/// Serves requests on `io` until the client or the server ends it.
async fn run<S, IO>(shared: &Shared<S>, mut conn: Conn, mut io: IO, held: Held)
where
    S: Clone + Send + Sync + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let limits = &shared.limits;
    // A fresh connection gets header_timeout to start its request, a
    // kept-alive one idle_timeout (as nginx's client_header_timeout and
    // keepalive_timeout).
    let mut wait = limits.header_timeout;
    loop {
        if conn.buf.is_empty() {
            held.slot.idle();
            let next = async {
                match async_std::future::timeout(wait, conn.buf.fill(&mut io)).await {
                    Ok(Ok(n)) => n > 0,
                    _ => false,
                }
            };
            let closing = async {
                held.slot.close.wait().await;
                false
            };
            if !next.or(closing).await {
                break;
            }
        }
        held.slot.busy();
        let killed = async {
            shared.kill.wait().await;
            Outcome::Close
        };
        match exchange(shared, &mut conn, &mut io).or(killed).await {
            Outcome::KeepAlive if !shared.stop.is_fired() => {}
            Outcome::KeepAlive | Outcome::Close => break,
            Outcome::Refused => {
                linger(&mut io).or(shared.kill.wait()).await;
                return;
            }
        }
        conn.buf.shrink();
        if conn.out.capacity() > 64 * 1024 {
            conn.out = Vec::with_capacity(1024);
        }
        wait = limits.idle_timeout;
    }
    if conn.secure {
        // TLS's close_notify, so that a body delimited by the close (an
        // HTTP/1.0 stream) is not taken for a truncation; briefly, as the
        // client may not read.
        let _ = async_std::future::timeout(CLOSE_NOTIFY_WAIT, io.close()).await;
    }
}

/// How long a TLS connection's close waits to send its close_notify.
const CLOSE_NOTIFY_WAIT: Duration = Duration::from_millis(200);

enum Outcome {
    KeepAlive,
    Close,
    /// Answered with an error before the request was read whole: the
    /// client may still be sending.
    Refused,
}

/// One request and its answer.
async fn exchange<S, IO>(shared: &Shared<S>, conn: &mut Conn, io: &mut IO) -> Outcome
where
    S: Clone + Send + Sync + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let limits = &shared.limits;
    let deadline = Instant::now() + limits.header_timeout;
    let read = async {
        front::read_head(
            io,
            &mut conn.buf,
            &mut conn.head,
            limits.max_head_bytes,
            deadline,
        )
        .await?;
        let head = &conn.head;
        let mut req = front::build(conn.buf.data(), head, conn.local, conn.peer, conn.secure)?;
        if let Some(certificate) = &conn.certificate {
            req.ext_mut().insert(certificate.clone());
        }
        conn.buf.consume(head.len);
        if head.expect_continue && conn.buf.is_empty() {
            if let crate::http1::Framing::Length(n) = head.framing {
                if n > limits.max_body_bytes as u64 {
                    return Err(front::too_large(limits.max_body_bytes));
                }
            }
            // Flushed: over TLS the record may otherwise wait in rustls.
            let interim = async {
                io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                io.flush().await
            };
            interim.await.map_err(|_| Refusal::Gone)?;
        }
        let deadline = Instant::now() + limits.body_timeout;
        let body = front::read_body(
            io,
            &mut conn.buf,
            head.framing,
            limits.max_body_bytes,
            deadline,
        )
        .await?;
        if !body.is_empty() {
            req.set_body(body);
        }
        Ok(req)
    };
    let req = match read.await {
        Ok(req) => req,
        Err(Refusal::Gone) => return Outcome::Close,
        Err(Refusal::Answer(status, message)) => {
            log::debug!(peer:? = conn.peer, status = status; "request refused: {message}");
            respond::error_response(&mut conn.out, status, respond::error_code(status), &message);
            let _ = send(io, &conn.out, limits.idle_timeout).await;
            return Outcome::Refused;
        }
    };
    let head = &conn.head;
    let ex = Exchange {
        head_request: respond::is_head(&req.method()),
        http10: head.minor_version == 0,
        keep_alive: head.keep_alive && !shared.stop.is_fired(),
        send_timeout: limits.idle_timeout,
    };
    let res: http_types::Response = match AssertUnwindSafe(shared.app.respond(req))
        .catch_unwind()
        .await
    {
        Ok(Ok(res)) => res,
        Ok(Err(e)) => return internal_error(shared, conn, io, &e.to_string()).await,
        Err(payload) => {
            shared.panics.record("request handler", payload.as_ref());
            return internal_error(shared, conn, io, "the handler failed").await;
        }
    };
    match respond::write_response(io, &mut conn.out, res, ex).await {
        Ok(true) => Outcome::KeepAlive,
        Ok(false) => Outcome::Close,
        Err(e) => {
            log::debug!(peer:? = conn.peer; "answer not sent whole: {e}");
            Outcome::Close
        }
    }
}

/// Answers 500 when the handler failed before anything was written; closes.
async fn internal_error<S, IO: AsyncWrite + Unpin>(
    shared: &Shared<S>,
    conn: &mut Conn,
    io: &mut IO,
    message: &str,
) -> Outcome {
    respond::error_response(&mut conn.out, 500, "internal_error", message);
    let _ = send(io, &conn.out, shared.limits.idle_timeout).await;
    Outcome::Close
}

async fn send<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    bytes: &[u8],
    limit: Duration,
) -> std::io::Result<()> {
    let write = async {
        io.write_all(bytes).await?;
        io.flush().await
    };
    match async_std::future::timeout(limit, write).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// After an early refusal, stops sending and reads (and drops) what the
/// client still sends for a little while, so that closing does not reset the
/// connection before the client has read the answer.
async fn linger<IO: AsyncRead + AsyncWrite + Unpin>(io: &mut IO) {
    // The socket's write side shut (after TLS's close_notify over TLS).
    let _ = async_std::future::timeout(Duration::from_secs(1), io.close()).await;
    let mut sink = [0u8; 4096];
    let mut left = 256 * 1024usize;
    let drain = async {
        while left > 0 {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = async_std::future::timeout(Duration::from_secs(1), drain).await;
}
