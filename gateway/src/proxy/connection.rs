//! One client connection: read a request, buffer its body, route it, serve it
//! through [`crate::proxy::failover`], and go round again while keep-alive allows.
//!
//! Requests are handled one at a time, so pipelined requests are answered in
//! order; the next one waits in the read buffer.
//!
//! Reloads: each request is served on the [`Context`] in force when its head
//! arrived (one look at the swap per request, see [`crate::admin::reload`]), from
//! routing to the last try; limits on reading the next head come from it too.

use crate::context::Context;
use crate::http::budget::Reservation;
use crate::http::codec;
use crate::http::session::Session;
use crate::proxy::failover;
use crate::proxy::forward::Exchange;
use crate::runtime::deadline::Interrupted;
use crate::runtime::net::Stream;
use crate::runtime::{self, buffers, Until};
use shared::config::GatewayConfig;
use shared::http1::{parse_request, ChunkedDecoder, Framing, RequestHead};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

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

/// A client connection: its session, and the request being made of what it
/// sent, reused from one request to the next.
struct Client<'a> {
    /// The context the connection began with: what every generation shares.
    ctx: &'a Context,
    /// The generation in force at the last request (`None`: the gateway stopped).
    now: Option<Arc<Context>>,
    session: Session,
    head: RequestHead,
    /// The upstream request: head, then body.
    upstream: Vec<u8>,
    /// A chunked body being de-chunked.
    chunked: Vec<u8>,
}

/// Once the gateway is stopping, how long a connection with no request in
/// progress still waits for one: a connection accepted before the stop that
/// has not sent its first request yet, or a keep-alive connection whose last
/// answer went out before the stop (without `Connection: close`) and whose
/// client may be sending its next request right now. Closing at once would
/// break that request (a POST cannot be safely retried); one second covers a
/// busy client's next request and keeps the stop short. Bounded by
/// `drain_timeout` ([`drain_window`]). The answer to a request that arrives
/// then carries `Connection: close`.
pub(crate) const DRAIN_WINDOW: Duration = Duration::from_secs(1);

/// [`DRAIN_WINDOW`], within `drain_timeout`.
fn drain_window(config: &GatewayConfig) -> Duration {
    DRAIN_WINDOW.min(config.drain_timeout)
}

/// Serves a client connection until it closes, idles out, or the gateway stops.
pub(crate) async fn serve(ctx: &Context, stream: Stream, peer: SocketAddr) {
    let client_ip = peer.ip().to_canonical().to_string();
    let mut c = Client {
        ctx,
        now: ctx.live.current(),
        session: Session::new(stream, ctx.watchdog.deadline(), BUFFER)
            .counted(ctx.metrics.traffic.clone()),
        head: RequestHead::default(),
        upstream: Vec::new(),
        chunked: Vec::new(),
    };
    let (idle, drain) = (c.config().idle_timeout, drain_window(c.config()));
    if !c.session.first_bytes(idle, &ctx.stop, drain).await {
        return;
    }
    loop {
        match c.read_head().await {
            Ok(true) => {}
            Ok(false) => return,
            Err(refusal) => {
                c.refuse(&refusal, &shared::logging::new_request_id()).await;
                ctx.metrics.request(refusal.status, 0.0, 0);
                return;
            }
        }
        let started = runtime::now();
        c.refresh();
        let raw = c.session.input.data();
        let request_id = codec::request_id(raw, &c.head);
        let head_request = c.head.method(raw) == b"HEAD";
        let idempotent = codec::is_idempotent(c.head.method(raw));
        let (minor, framing) = (c.head.minor_version, c.head.framing);
        let wants_keep_alive = c.head.keep_alive;
        let expect_continue = c.head.expect_continue;
        let written = codec::upstream_head(
            &mut c.upstream,
            raw,
            &c.head,
            &client_ip,
            &request_id,
            &ctx.default_host,
        );
        c.session.input.consume(c.head.len);
        let refusal = match written {
            Err(why) => Some(Refusal::new(400, "bad_request", why.0)),
            // Beside max_header_bytes (read_head): a head that fits but that
            // the gateway's own fields would take past what instances take.
            Ok(fields) if fields > codec::MAX_FORWARDED_FIELDS => Some(too_many_fields(fields)),
            Ok(_) => None,
        };
        if let Some(refusal) = refusal {
            c.refuse(&refusal, &request_id).await;
            ctx.metrics.request(refusal.status, 0.0, 0);
            return;
        }

        // The route, right after the head: a request no route takes is
        // answered before its body is read (no 100 Continue, nothing
        // buffered), and closes the connection if a body was coming.
        let route = c.generation().router.choose(codec::target_of(&c.upstream));
        if route.is_none() && !matches!(framing, Framing::Empty) {
            let refusal = Refusal::new(404, "no_route", NO_ROUTE);
            c.refuse(&refusal, &request_id).await;
            ctx.metrics.request(404, 0.0, 0);
            return;
        }

        let body_until = Until::after(c.config().client_body_timeout);
        // Held until the answer is sent: the body stays buffered for retries.
        let _held = match Box::pin(c.read_body(framing, expect_continue, body_until)).await {
            Ok(held) => held,
            Err(refusal) => {
                c.refuse(&refusal, &request_id).await;
                ctx.metrics.request(
                    refusal.status,
                    runtime::now()
                        .saturating_duration_since(started)
                        .as_secs_f64(),
                    0,
                );
                return;
            }
        };
        let now: &Context = c.now.as_deref().unwrap_or(ctx);
        let exchange = Exchange {
            request: &c.upstream,
            request_id: &request_id,
            head_request,
            client_minor: minor,
            wants_keep_alive,
            replayable: idempotent || now.config.retry_non_idempotent,
            verify_request_id: route.is_some_and(|r| now.router.verifies_request_id(r)),
            forward_trailers: now.config.forward_trailers,
            stop: &ctx.stop,
        };
        let reply = match route.and_then(|r| now.router.balancer(r)) {
            // Boxed: the exchange's state lives only while a request is in
            // flight, so an idle connection's task stays small.
            Some(balancer) => {
                Box::pin(failover::serve(now, balancer, &exchange, &mut c.session)).await
            }
            None => {
                let keep_alive = exchange.keep_alive();
                let framing = codec::ErrorFraming {
                    close: !keep_alive,
                    head_request,
                };
                let written = c
                    .session
                    .write_error(
                        404,
                        "no_route",
                        NO_ROUTE,
                        &request_id,
                        framing,
                        now.config.idle_timeout,
                    )
                    .await;
                failover::Reply {
                    status: 404,
                    client_open: written && keep_alive,
                    attempts: 0,
                }
            }
        };
        let elapsed = runtime::now().saturating_duration_since(started);
        ctx.metrics
            .request(reply.status, elapsed.as_secs_f64(), reply.attempts);
        access_log(
            now,
            &c.upstream,
            &request_id,
            reply.status,
            reply.attempts,
            elapsed,
        );
        if !reply.client_open {
            return;
        }
        c.shrink();
    }
}

/// Why a request no route takes is answered 404, body pending or not.
const NO_ROUTE: &str = "no route matches this path";

/// Per-connection buffers above this are given back after the request that grew them.
const KEEP_BUFFER: usize = 64 * 1024;
/// What each buffer starts at when a request arrives.
const BUFFER: usize = buffers::SIZE;

impl<'a> Client<'a> {
    /// The generation in force at the last request.
    fn generation(&self) -> &Context {
        self.now.as_deref().unwrap_or(self.ctx)
    }

    /// The config in force at the last request.
    fn config(&self) -> &GatewayConfig {
        &self.generation().config
    }

    /// Takes the generation in force now. One load of the swap; the
    /// reference count is touched only when a reload changed it.
    fn refresh(&mut self) {
        let loaded = self.ctx.live.swap().load();
        let same = match (&*loaded, &self.now) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.now = (*loaded).clone();
        }
    }

    /// Gives back what a large request or answer grew the buffers to, so an
    /// idle keep-alive connection holds kilobytes, not `max_body_bytes`.
    fn shrink(&mut self) {
        self.session.shrink(KEEP_BUFFER);
        for buf in [&mut self.upstream, &mut self.chunked] {
            if buf.capacity() > KEEP_BUFFER {
                *buf = Vec::new();
            }
        }
    }

    /// Waits for the next request without holding a buffer (see
    /// [`Session::await_request`]). False when the connection is done
    /// (closed, idle past `idle_timeout`, or stopping).
    async fn await_next_request(&mut self, idle: Duration, drain: Duration) -> bool {
        let (upstream, chunked) = (&mut self.upstream, &mut self.chunked);
        let idling = || {
            buffers::give(std::mem::take(upstream));
            buffers::give(std::mem::take(chunked));
        };
        if !self
            .session
            .await_request(idle, &self.ctx.stop, drain, idling)
            .await
        {
            return false;
        }
        if self.upstream.capacity() == 0 {
            self.upstream = buffers::take();
        }
        true
    }

    /// Reads until a whole request head is parsed. `Ok(false)`: the connection is
    /// done (closed, idle past `idle_timeout`, or the gateway is stopping while idle).
    async fn read_head(&mut self) -> Result<bool, Refusal> {
        let (idle, drain) = (self.config().idle_timeout, drain_window(self.config()));
        if self.session.input.is_empty() && !self.await_next_request(idle, drain).await {
            return Ok(false);
        }
        let config = &self.now.as_deref().unwrap_or(self.ctx).config;
        let session = &mut self.session;
        let mut head_deadline = None;
        loop {
            if !session.input.is_empty() {
                match parse_request(
                    session.input.data(),
                    &mut self.head,
                    config.max_header_bytes,
                ) {
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
                head_deadline.get_or_insert_with(|| Until::after(config.client_header_timeout));
            }
            let read = match head_deadline {
                // Between requests: wait up to idle_timeout, or the drain
                // window once the gateway stops.
                None => {
                    session
                        .read_or_drain(config.idle_timeout, &self.ctx.stop, drain)
                        .await
                }
                Some(at) => session.read(at.left()).await,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) | Err(Interrupted::Stopping) => return Ok(false),
                Ok(Ok(_)) => {}
                Err(Interrupted::Elapsed) if head_deadline.is_none() => return Ok(false),
                Err(Interrupted::Elapsed) => {
                    return Err(Refusal::new(
                        408,
                        "request_timeout",
                        "the request head did not arrive within client_header_timeout",
                    ))
                }
            }
        }
    }

    /// Buffers the body after the upstream head in `upstream` (a retry sends it
    /// again), enforcing `max_body_bytes`, `max_buffered_bytes` (the answer
    /// holds the bytes it counts), `client_header_timeout` per read and
    /// `client_body_timeout` (ending at `until`) for the whole body.
    async fn read_body(
        &mut self,
        framing: Framing,
        expect_continue: bool,
        until: Until,
    ) -> Result<Reservation<'a>, Refusal> {
        let ctx: &'a Context = self.ctx;
        let max = self.config().max_body_bytes;
        let too_large = || {
            Refusal::new(
                413,
                "payload_too_large",
                format!("request body is larger than {max} bytes"),
            )
        };
        let mut held = ctx.budget.empty();
        if let Framing::Length(n) = framing {
            if n > max as u64 {
                return Err(too_large());
            }
            if !held.grow_to(n as usize) {
                return Err(shed());
            }
        }
        if expect_continue && self.session.input.is_empty() {
            let continue_ = b"HTTP/1.1 100 Continue\r\n\r\n";
            let idle = self.config().idle_timeout;
            if self.session.write(continue_, idle).await.is_err() {
                return Err(Refusal::new(400, "bad_request", "client went away"));
            }
        }
        match framing {
            Framing::Empty | Framing::UntilClose => codec::end_upstream_head(&mut self.upstream, 0),
            Framing::Length(n) => {
                let n = n as usize;
                codec::end_upstream_head(&mut self.upstream, n);
                let mut left = n - self.session.input.take_into(n, &mut self.upstream);
                while left > 0 {
                    self.more(until).await?;
                    left -= self.session.input.take_into(left, &mut self.upstream);
                }
            }
            Framing::Chunked => {
                self.chunked.clear();
                let mut decoder = ChunkedDecoder::new();
                loop {
                    let used = decoder
                        .decode(self.session.input.data(), Some(&mut self.chunked))
                        .map_err(|e| {
                            Refusal::new(400, "bad_request", format!("malformed chunked body: {e}"))
                        })?;
                    self.session.input.consume(used);
                    if decoder.total() > max as u64 {
                        return Err(too_large());
                    }
                    if !held.grow_to(self.chunked.len()) {
                        return Err(shed());
                    }
                    if decoder.is_done() {
                        break;
                    }
                    self.more(until).await?;
                }
                codec::end_upstream_head(&mut self.upstream, self.chunked.len());
                self.upstream.extend_from_slice(&self.chunked);
            }
        }
        Ok(held)
    }

    /// Reads more of a body: within `client_header_timeout` of the last read,
    /// and before `until`, the end of `client_body_timeout`.
    async fn more(&mut self, until: Until) -> Result<(), Refusal> {
        let per_read = self.config().client_header_timeout;
        let left = until.left();
        let whole = left <= per_read;
        let limit = left.min(per_read);
        let read = if limit.is_zero() {
            Err(Interrupted::Elapsed)
        } else {
            self.session.read(limit).await
        };
        match read {
            Ok(Ok(n)) if n > 0 => Ok(()),
            Ok(_) | Err(Interrupted::Stopping) => Err(Refusal::new(
                400,
                "bad_request",
                "the client closed before sending the whole body",
            )),
            Err(Interrupted::Elapsed) if whole => Err(Refusal::new(
                408,
                "request_timeout",
                "the request body did not arrive within client_body_timeout",
            )),
            Err(Interrupted::Elapsed) => Err(Refusal::new(
                408,
                "request_timeout",
                "the request body stalled for longer than client_header_timeout",
            )),
        }
    }

    /// Answers a refused request and closes: the rest of the stream cannot be trusted.
    async fn refuse(&mut self, refusal: &Refusal, request_id: &str) {
        log::info!(request_id = request_id, status = refusal.status; "refused: {}", refusal.message);
        let close = codec::ErrorFraming {
            close: true,
            head_request: false,
        };
        let idle = self.config().idle_timeout;
        self.session
            .write_error(
                refusal.status,
                refusal.code,
                &refusal.message,
                request_id,
                close,
                idle,
            )
            .await;
        self.session.close_after_refusal().await;
    }
}

/// 431: the forwarded head would carry more fields than instances take.
fn too_many_fields(fields: usize) -> Refusal {
    Refusal::new(
        431,
        "header_too_large",
        format!(
            "request head has too many header fields: {fields} with the gateway's own \
             (x-forwarded-for, x-request-id), more than the {} instances take",
            codec::MAX_FORWARDED_FIELDS
        ),
    )
}

/// Over `max_buffered_bytes`: the client may try again shortly, elsewhere or here.
fn shed() -> Refusal {
    Refusal::new(
        503,
        "overloaded",
        "the gateway holds as many request bytes as max_buffered_bytes allows; try again later",
    )
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
            .local()
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
