//! One client connection: requests read in turn (pipelined ones stay in the
//! buffer, in order), each served by tide and answered before the next.

use super::front::{self, Refusal};
use super::respond::{self, Exchange};
use super::slots::Held;
use super::Limits;
use crate::http1::{ReadBuf, RequestHead};
use crate::panics::Panics;
use crate::shutdown::Trigger;
use async_std::net::TcpStream;
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use std::net::{Shutdown, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

/// What every connection of one listener shares.
pub struct Shared<S> {
    pub app: tide::Server<S>,
    pub limits: Limits,
    pub panics: Panics,
    pub stop: Trigger,
    pub kill: Trigger,
}

/// Per-connection buffers, kept across its requests.
struct Conn {
    buf: ReadBuf,
    head: RequestHead,
    out: Vec<u8>,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
}

/// Serves `stream` until the client or the server ends it.
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
    };
    let limits = &shared.limits;
    let mut io = &stream;
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
                return;
            }
        }
        held.slot.busy();
        let killed = async {
            shared.kill.wait().await;
            Outcome::Close
        };
        match exchange(shared, &mut conn, &mut io).or(killed).await {
            Outcome::KeepAlive if !shared.stop.is_fired() => {}
            Outcome::KeepAlive | Outcome::Close => return,
            Outcome::Refused => {
                linger(&stream).or(shared.kill.wait()).await;
                return;
            }
        }
        conn.buf.shrink();
        if conn.out.capacity() > 64 * 1024 {
            conn.out = Vec::with_capacity(1024);
        }
        wait = limits.idle_timeout;
    }
}

enum Outcome {
    KeepAlive,
    Close,
    /// Answered with an error before the request was read whole: the
    /// client may still be sending.
    Refused,
}

/// One request and its answer.
async fn exchange<S>(shared: &Shared<S>, conn: &mut Conn, io: &mut &TcpStream) -> Outcome
where
    S: Clone + Send + Sync + 'static,
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
        let mut req = front::build(conn.buf.data(), head, conn.local, conn.peer)?;
        conn.buf.consume(head.len);
        if head.expect_continue && conn.buf.is_empty() {
            if let crate::http1::Framing::Length(n) = head.framing {
                if n > limits.max_body_bytes as u64 {
                    return Err(front::too_large(limits.max_body_bytes));
                }
            }
            io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .map_err(|_| Refusal::Gone)?;
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
async fn internal_error<S>(
    shared: &Shared<S>,
    conn: &mut Conn,
    io: &mut &TcpStream,
    message: &str,
) -> Outcome {
    respond::error_response(&mut conn.out, 500, "internal_error", message);
    let _ = send(io, &conn.out, shared.limits.idle_timeout).await;
    Outcome::Close
}

async fn send(io: &mut &TcpStream, bytes: &[u8], limit: Duration) -> std::io::Result<()> {
    match async_std::future::timeout(limit, io.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// After an early refusal, stops sending and reads (and drops) what the
/// client still sends for a little while, so that closing does not reset the
/// connection before the client has read the answer.
async fn linger(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let mut io = stream;
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
