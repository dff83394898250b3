//! One client connection: read a request, buffer its body, route it, serve it
//! through [`crate::failover`], and go round again while keep-alive allows.
//!
//! Requests are handled one at a time, so pipelined requests are answered in
//! order; the next one waits in the read buffer.

use crate::codec;
use crate::failover;
use crate::forward::Exchange;
use crate::Context;
use async_std::future::timeout;
use async_std::net::{SocketAddr, TcpStream};
use futures_lite::{AsyncWriteExt, FutureExt};
use shared::http1::{parse_request, ChunkedDecoder, Framing, ReadBuf, RequestHead};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A request refused by the gateway itself; the connection closes after it.
struct Refusal {
    status: u16,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            status,
            code,
            message: message.into(),
        }
    }
}

/// Per-connection buffers, reused from one request to the next.
struct Buffers {
    input: ReadBuf,
    head: RequestHead,
    /// The upstream request: head, then body.
    upstream: Vec<u8>,
    /// A chunked body being de-chunked.
    chunked: Vec<u8>,
    /// Response heads and small responses on their way to the client.
    scratch: Vec<u8>,
}

/// Serves a client connection until it closes, idles out, or the gateway stops.
pub async fn serve(ctx: &Context, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let client_ip = peer.ip().to_canonical().to_string();
    let mut b = Buffers {
        input: ReadBuf::with_capacity(4096),
        head: RequestHead::default(),
        upstream: Vec::with_capacity(4096),
        chunked: Vec::new(),
        scratch: Vec::with_capacity(4096),
    };
    loop {
        match read_head(ctx, &mut stream, &mut b.input, &mut b.head).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(refusal) => {
                let id = shared::logging::new_request_id();
                refuse(ctx, &mut stream, &mut b.scratch, &refusal, &id).await;
                return;
            }
        }
        let started = Instant::now();
        let raw = b.input.data();
        let request_id = codec::request_id(raw, &b.head);
        let head_request = b.head.method(raw) == b"HEAD";
        let idempotent = codec::is_idempotent(b.head.method(raw));
        let (minor, framing) = (b.head.minor_version, b.head.framing);
        let wants_keep_alive = b.head.keep_alive;
        let expect_continue = b.head.expect_continue;
        codec::upstream_head(
            &mut b.upstream,
            raw,
            &b.head,
            &client_ip,
            &request_id,
            &ctx.default_host,
        );
        b.input.consume(b.head.len);

        if let Err(refusal) = read_body(ctx, &mut stream, &mut b, framing, expect_continue).await {
            refuse(ctx, &mut stream, &mut b.scratch, &refusal, &request_id).await;
            ctx.metrics
                .request(refusal.status, started.elapsed().as_secs_f64(), 0);
            return;
        }
        let exchange = Exchange {
            request: &b.upstream,
            request_id: &request_id,
            head_request,
            client_minor: minor,
            wants_keep_alive,
            stop: &ctx.stop,
        };
        let reply = match ctx.router.route(codec::target_of(&b.upstream)) {
            Some(balancer) => {
                failover::serve(
                    ctx,
                    balancer,
                    &exchange,
                    idempotent,
                    &mut stream,
                    &mut b.scratch,
                )
                .await
            }
            None => {
                let keep_alive = exchange.keep_alive();
                let refusal = Refusal::new(404, "no_route", "no route matches this path");
                codec::error_response(
                    &mut b.scratch,
                    404,
                    refusal.code,
                    &refusal.message,
                    &request_id,
                    !keep_alive,
                );
                let open = send(ctx, &mut stream, &b.scratch).await && keep_alive;
                failover::Reply {
                    status: 404,
                    client_open: open,
                    attempts: 0,
                }
            }
        };
        let elapsed = started.elapsed();
        ctx.metrics
            .request(reply.status, elapsed.as_secs_f64(), reply.attempts);
        access_log(
            ctx,
            &b.upstream,
            &request_id,
            reply.status,
            reply.attempts,
            elapsed,
        );
        if !reply.client_open {
            return;
        }
        b.input.shrink();
    }
}

/// Reads until a whole request head is parsed. `Ok(false)`: the connection is
/// done (closed, idle past `idle_timeout`, or the gateway is stopping while idle).
async fn read_head(
    ctx: &Context,
    stream: &mut TcpStream,
    input: &mut ReadBuf,
    head: &mut RequestHead,
) -> Result<bool, Refusal> {
    let config = &ctx.config;
    let mut head_deadline = None;
    loop {
        if !input.is_empty() {
            match parse_request(input.data(), head, config.max_header_bytes) {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(e) => {
                    return Err(Refusal::new(
                        e.status(),
                        error_code(e.status()),
                        e.message(),
                    ))
                }
            }
            head_deadline.get_or_insert_with(|| Instant::now() + config.client_header_timeout);
        }
        let wait = match head_deadline {
            Some(at) => at.saturating_duration_since(Instant::now()),
            None => config.idle_timeout,
        };
        let idle = input.is_empty();
        let stopped = async {
            if idle {
                ctx.stop.wait().await;
            } else {
                futures_lite::future::pending::<()>().await;
            }
            Ok(Ok(0))
        };
        match timeout(wait, input.fill(stream)).or(stopped).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(false),
            Ok(Ok(_)) => {}
            Err(_) if idle => return Ok(false),
            Err(_) => {
                return Err(Refusal::new(
                    408,
                    "request_timeout",
                    "the request head did not arrive within client_header_timeout",
                ))
            }
        }
    }
}

/// Buffers the body after the upstream head in `b.upstream` (a retry sends it
/// again), enforcing `max_body_bytes` and `client_header_timeout` per read.
async fn read_body(
    ctx: &Context,
    stream: &mut TcpStream,
    b: &mut Buffers,
    framing: Framing,
    expect_continue: bool,
) -> Result<(), Refusal> {
    let max = ctx.config.max_body_bytes;
    let too_large = || {
        Refusal::new(
            413,
            "payload_too_large",
            format!("request body is larger than {max} bytes"),
        )
    };
    if let Framing::Length(n) = framing {
        if n > max as u64 {
            return Err(too_large());
        }
    }
    if expect_continue && b.input.is_empty() {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| Refusal::new(400, "bad_request", "client went away"))?;
    }
    match framing {
        Framing::Empty | Framing::UntilClose => codec::end_upstream_head(&mut b.upstream, 0),
        Framing::Length(n) => {
            let n = n as usize;
            codec::end_upstream_head(&mut b.upstream, n);
            let mut left = n - b.input.take_into(n, &mut b.upstream);
            while left > 0 {
                more(ctx, stream, &mut b.input).await?;
                left -= b.input.take_into(left, &mut b.upstream);
            }
        }
        Framing::Chunked => {
            b.chunked.clear();
            let mut decoder = ChunkedDecoder::new();
            loop {
                let used = decoder
                    .decode(b.input.data(), Some(&mut b.chunked))
                    .map_err(|e| {
                        Refusal::new(400, "bad_request", format!("malformed chunked body: {e}"))
                    })?;
                b.input.consume(used);
                if decoder.total() > max as u64 {
                    return Err(too_large());
                }
                if decoder.is_done() {
                    break;
                }
                more(ctx, stream, &mut b.input).await?;
            }
            codec::end_upstream_head(&mut b.upstream, b.chunked.len());
            b.upstream.extend_from_slice(&b.chunked);
            if b.chunked.capacity() > 64 * 1024 {
                b.chunked = Vec::new();
            }
        }
    }
    Ok(())
}

/// Reads more of a body, within `client_header_timeout`.
async fn more(ctx: &Context, stream: &mut TcpStream, input: &mut ReadBuf) -> Result<(), Refusal> {
    match timeout(ctx.config.client_header_timeout, input.fill(stream)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(_) => Err(Refusal::new(
            400,
            "bad_request",
            "the client closed before sending the whole body",
        )),
        Err(_) => Err(Refusal::new(
            408,
            "request_timeout",
            "the request body stalled for longer than client_header_timeout",
        )),
    }
}

fn error_code(status: u16) -> &'static str {
    match status {
        408 => "request_timeout",
        417 => "expectation_failed",
        431 => "header_too_large",
        501 => "not_implemented",
        505 => "http_version_not_supported",
        _ => "bad_request",
    }
}

/// Answers a refused request and closes: the rest of the stream cannot be trusted.
async fn refuse(
    ctx: &Context,
    stream: &mut TcpStream,
    scratch: &mut Vec<u8>,
    refusal: &Refusal,
    request_id: &str,
) {
    log::info!(request_id = request_id, status = refusal.status; "refused: {}", refusal.message);
    codec::error_response(
        scratch,
        refusal.status,
        refusal.code,
        &refusal.message,
        request_id,
        true,
    );
    send(ctx, stream, scratch).await;
    // Half-close, then read and drop what the client still sends for a moment:
    // closing with unread input would reset the connection and could destroy
    // the answer before the client reads it.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut sink = ReadBuf::with_capacity(4096);
    let linger = async {
        while let Ok(n) = sink.fill(stream).await {
            sink.consume(n);
            if n == 0 {
                break;
            }
        }
    };
    let _ = timeout(Duration::from_secs(1), linger).await;
}

async fn send(ctx: &Context, stream: &mut TcpStream, bytes: &[u8]) -> bool {
    matches!(
        timeout(ctx.config.idle_timeout, stream.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

/// One line per sampled request (`access_log_sample`); failures are logged where they happen.
fn access_log(
    ctx: &Context,
    upstream_request: &[u8],
    request_id: &str,
    status: u16,
    attempts: u32,
    took: Duration,
) {
    let every = ctx.config.access_log_sample;
    if every == 0
        || !ctx
            .requests
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(every)
    {
        return;
    }
    let line = upstream_request
        .split(|b| *b == b'\r')
        .next()
        .unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let method = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default());
    log::info!(request_id = request_id, method = method.as_ref(), path = path.as_ref(), status = status,
        attempts = attempts, ms = took.as_secs_f64() * 1000.0; "request");
}
