//! One client connection: read a request, buffer its body, route it, serve it
//! through [`crate::proxy::failover`], and go round again while keep-alive allows.
//!
//! Requests are handled one at a time, so pipelined requests are answered in
//! order; the next one waits in the read buffer.
//!
//! Reloads: each request is served on the [`Context`] in force when its head
//! arrived (one look at the swap per request, see [`crate::admin::reload`]), from
//! routing to the last try; limits on reading the next head come from it too.

use crate::balance::ring::Route;
use crate::context::Context;
use crate::http::budget::Reservation;
use crate::http::codec;
use crate::http::session::Session;
use crate::http::tls::{ClientStream, Tls};
use crate::proxy::failover;
use crate::proxy::forward::Exchange;
use crate::proxy::keyed;
use crate::runtime::deadline::Interrupted;
use crate::runtime::net::Stream;
use crate::runtime::{self, buffers, Until};
use shared::config::GatewayConfig;
use shared::http1::{parse_request, ChunkedDecoder, Framing, RequestHead};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
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

/// A client connection: its session, and the request being made of what it
/// sent, reused from one request to the next.
struct Client<'a> {
    /// The context the connection began with: what every generation shares.
    ctx: &'a Context,
    /// The generation in force at the last request (`None`: the gateway stopped).
    now: Option<Arc<Context>>,
    session: Session,
    /// The client's address, as `X-Forwarded-For` gets it.
    client_ip: String,
    head: RequestHead,
    /// The upstream request: head, then body.
    upstream: Vec<u8>,
    /// A chunked body being de-chunked.
    chunked: Vec<u8>,
}

/// What the gateway keeps of a request's head once its bytes are consumed.
struct Request {
    id: String,
    /// When its head was read.
    started: Instant,
    head_request: bool,
    idempotent: bool,
    client_minor: u8,
    framing: Framing,
    wants_keep_alive: bool,
    expect_continue: bool,
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

/// Serves a client connection until it closes, idles out, or the gateway
/// stops; over TLS (`tls`) after a handshake within `tls.handshake_timeout`.
pub(crate) async fn serve_connection(
    ctx: &Context,
    stream: Stream,
    peer: SocketAddr,
    tls: Option<&Tls>,
) {
    let deadline = ctx.watchdog.deadline();
    let stream = match tls {
        None => ClientStream::from(stream),
        Some(tls) => {
            let now = ctx.live.current();
            let config = now.as_ref().map_or(&ctx.config, |c| &c.config);
            let limit = config
                .tls
                .as_ref()
                .map_or(DEFAULT_HANDSHAKE_TIMEOUT, |t| t.handshake_timeout);
            // Boxed: rustls' handshake state is kilobytes, and inline it
            // would stay in every connection's task for its whole life.
            match deadline.within(limit, Box::pin(tls.accept(stream))).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    ctx.metrics.tls_handshake("failed");
                    log::debug!(peer:% = peer; "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    ctx.metrics.tls_handshake("timeout");
                    log::debug!(peer:% = peer; "TLS handshake not over within {limit:?}; closed");
                    return;
                }
            }
        }
    };
    if tls.is_some() {
        ctx.metrics.tls_handshake("ok");
    }
    let mut c = Client {
        ctx,
        now: ctx.live.current(),
        session: Session::new(stream, deadline, BUFFER).counted(ctx.metrics.traffic.clone()),
        client_ip: peer.ip().to_canonical().to_string(),
        head: RequestHead::default(),
        upstream: Vec::new(),
        chunked: Vec::new(),
    };
    let (idle, drain) = (c.config().idle_timeout, drain_window(c.config()));
    if !c.session.first_bytes(idle, &ctx.stop, drain).await {
        return;
    }
    while c.serve_next_request().await {
        c.shrink();
    }
}

/// The handshake's limit when the config in force has no `tls` (it always
/// has: the TLS port exists only with one).
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request no route takes is answered 404, body pending or not.
const NO_ROUTE: &str = "no route matches this path";

/// Per-connection buffers above this are given back after the request that grew them.
const KEEP_BUFFER: usize = 64 * 1024;
/// What each buffer starts at when a request arrives.
const BUFFER: usize = buffers::SIZE;

impl<'a> Client<'a> {
    /// Reads the next request, routes it and answers it; whether the
    /// connection goes on to another.
    async fn serve_next_request(&mut self) -> bool {
        match self.read_head().await {
            Ok(true) => {}
            Ok(false) => return false,
            Err(refusal) => {
                let id = shared::logging::new_request_id();
                self.refuse(&refusal, &id, None).await;
                return false;
            }
        }
        let started = runtime::now();
        self.refresh();
        let request = match self.begin(started) {
            Ok(request) => request,
            Err((refusal, id)) => {
                self.refuse(&refusal, &id, None).await;
                return false;
            }
        };
        // The route, right after the head: a request no route takes is
        // answered before its body is read (no 100 Continue, nothing
        // buffered), and closes the connection if a body was coming.
        let route = self
            .generation()
            .router
            .choose(codec::target_of(&self.upstream));
        if route.is_none() && !matches!(request.framing, Framing::Empty) {
            let refusal = Refusal::new(404, "no_route", NO_ROUTE);
            self.refuse(&refusal, &request.id, None).await;
            return false;
        }
        let body_until = Until::after(self.config().client_body_timeout);
        let body = self.read_body(request.framing, request.expect_continue, body_until);
        // Held until the answer is sent: the body stays buffered for retries.
        let _held = match Box::pin(body).await {
            Ok(held) => held,
            Err(refusal) => {
                self.refuse(&refusal, &request.id, Some(started)).await;
                return false;
            }
        };
        let reply = self.answer(&request, route).await;
        self.count(&request, &reply);
        reply.client_open
    }

    /// Takes what the request's head says, writes the upstream head and
    /// consumes the head's bytes. Refused, with the request's id: a head the
    /// gateway cannot forward.
    fn begin(&mut self, started: Instant) -> Result<Request, (Refusal, String)> {
        let (raw, head) = (self.session.input(), &self.head);
        let request = Request {
            id: codec::request_id(raw, head),
            started,
            head_request: head.method(raw) == b"HEAD",
            idempotent: codec::is_idempotent(head.method(raw)),
            client_minor: head.minor_version,
            framing: head.framing,
            wants_keep_alive: head.keep_alive,
            expect_continue: head.expect_continue,
        };
        let written = codec::upstream_head(
            &mut self.upstream,
            raw,
            head,
            &self.client_ip,
            if self.session.is_tls() {
                "https"
            } else {
                "http"
            },
            &request.id,
            &self.ctx.default_host,
        );
        self.session.consume_input(self.head.len);
        match written {
            Err(why) => Err((Refusal::new(400, "bad_request", why.0), request.id)),
            // Beside max_header_bytes (read_head): a head that fits but that
            // the gateway's own fields would take past what instances take.
            Ok(fields) if fields > codec::MAX_FORWARDED_FIELDS => {
                Err((too_many_fields(fields), request.id))
            }
            Ok(_) => Ok(request),
        }
    }

    /// Answers the request whose body is buffered: through failover on its
    /// route's balancer, or 404 when no route takes it.
    async fn answer(&mut self, request: &Request, route: Option<Route>) -> failover::Reply {
        let now: &Context = self.now.as_deref().unwrap_or(self.ctx);
        let exchange = Exchange {
            request: &self.upstream,
            request_id: &request.id,
            head_request: request.head_request,
            client_minor: request.client_minor,
            wants_keep_alive: request.wants_keep_alive,
            replayable: request.idempotent || now.config.retry_non_idempotent,
            keyed: false,
            verify_request_id: route.is_some_and(|r| now.router.verifies_request_id(r)),
            forward_trailers: now.config.forward_trailers,
            stop: &self.ctx.stop,
        };
        match route.and_then(|r| now.router.balancer(r)) {
            // Boxed: the exchange's state lives only while a request is in
            // flight, so an idle connection's task stays small.
            // Idempotency-Key hook: a route that honours keys is served
            // through its records (proxy::keyed), every other as before.
            Some(balancer) => match route.and_then(|r| keyed::rule_of(now, r)) {
                Some(rule) => {
                    let keyed = keyed::serve(now, rule, balancer, &exchange, &mut self.session);
                    Box::pin(keyed).await
                }
                None => {
                    let tries =
                        failover::serve_request(now, balancer, &exchange, &mut self.session);
                    Box::pin(tries).await
                }
            },
            None => answer_no_route(&mut self.session, &exchange, now.config.idle_timeout).await,
        }
    }

    /// Counts an answered request, and logs it if it is sampled.
    fn count(&self, request: &Request, reply: &failover::Reply) {
        let elapsed = runtime::now().saturating_duration_since(request.started);
        let (status, attempts) = (reply.status, reply.attempts);
        self.ctx
            .metrics
            .request(status, elapsed.as_secs_f64(), attempts);
        let (upstream, id) = (&self.upstream, &request.id);
        access_log(self.generation(), upstream, id, status, attempts, elapsed);
    }

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
        if !self.session.has_input() && !self.await_next_request(idle, drain).await {
            return Ok(false);
        }
        let config = &self.now.as_deref().unwrap_or(self.ctx).config;
        let session = &mut self.session;
        let mut head_deadline = None;
        loop {
            if session.has_input() {
                match parse_request(session.input(), &mut self.head, config.max_header_bytes) {
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
    /// `client_body_timeout` (ending at `until`) for the whole body. Sends
    /// `100 Continue` first if the client asked for it and has not sent any
    /// of the body yet.
    async fn read_body(
        &mut self,
        framing: Framing,
        expect_continue: bool,
        until: Until,
    ) -> Result<Reservation<'a>, Refusal> {
        let ctx: &'a Context = self.ctx;
        let max = self.config().max_body_bytes;
        let mut held = ctx.budget.empty();
        if let Framing::Length(n) = framing {
            if n > max as u64 {
                return Err(too_large(max));
            }
            if !held.grow_to(n as usize) {
                return Err(shed());
            }
        }
        if expect_continue && !self.session.has_input() {
            let idle = self.config().idle_timeout;
            if self.session.write_continue(idle).await.is_err() {
                return Err(Refusal::new(400, "bad_request", "client went away"));
            }
        }
        match framing {
            Framing::Empty | Framing::UntilClose => codec::end_upstream_head(&mut self.upstream, 0),
            Framing::Length(n) => self.read_length_body(n as usize, until).await?,
            Framing::Chunked => self.read_chunked_body(&mut held, max, until).await?,
        }
        Ok(held)
    }

    /// A body of `n` bytes (already held), after the upstream head.
    async fn read_length_body(&mut self, n: usize, until: Until) -> Result<(), Refusal> {
        codec::end_upstream_head(&mut self.upstream, n);
        let mut left = n - self.session.take_input(n, &mut self.upstream);
        while left > 0 {
            self.more(until).await?;
            left -= self.session.take_input(left, &mut self.upstream);
        }
        Ok(())
    }

    /// A chunked body, de-chunked and held as it arrives (up to `max`
    /// bytes), then put after the upstream head with its length.
    async fn read_chunked_body(
        &mut self,
        held: &mut Reservation<'_>,
        max: usize,
        until: Until,
    ) -> Result<(), Refusal> {
        self.chunked.clear();
        let mut decoder = ChunkedDecoder::new();
        loop {
            let used = decoder
                .decode(self.session.input(), Some(&mut self.chunked))
                .map_err(|e| {
                    Refusal::new(400, "bad_request", format!("malformed chunked body: {e}"))
                })?;
            self.session.consume_input(used);
            if decoder.total() > max as u64 {
                return Err(too_large(max));
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
        Ok(())
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

    /// Answers a refused request, counts it, and closes: the rest of the
    /// stream cannot be trusted. Its latency is counted from `started`, for
    /// a request whose body was being read (else 0).
    async fn refuse(&mut self, refusal: &Refusal, request_id: &str, started: Option<Instant>) {
        log::info!(request_id = request_id, status = refusal.status; "refused: {}", refusal.message);
        let close = codec::ErrorFraming::CLOSING;
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
        let took = started.map_or(0.0, |at| {
            runtime::now().saturating_duration_since(at).as_secs_f64()
        });
        self.ctx.metrics.request(refusal.status, took, 0);
    }
}

/// Answers 404 to a request no route takes (its body, if any, was empty).
async fn answer_no_route(
    session: &mut Session,
    ex: &Exchange<'_>,
    limit: Duration,
) -> failover::Reply {
    let keep_alive = ex.keep_alive();
    let framing = codec::ErrorFraming::answering(keep_alive, ex.head_request);
    let written = session
        .write_error(404, "no_route", NO_ROUTE, ex.request_id, framing, limit)
        .await;
    failover::Reply {
        status: 404,
        client_open: written && keep_alive,
        attempts: 0,
        sent: false,
        tries: Vec::new(),
    }
}

/// 431: the forwarded head would carry more fields than instances take.
fn too_many_fields(fields: usize) -> Refusal {
    Refusal::new(
        431,
        "header_too_large",
        format!(
            "request head has too many header fields: {fields} with the gateway's own \
             (x-forwarded-for, x-forwarded-proto, x-request-id), more than the {} instances take",
            codec::MAX_FORWARDED_FIELDS
        ),
    )
}

/// 413: the body is over `max_body_bytes` (`max`).
fn too_large(max: usize) -> Refusal {
    Refusal::new(
        413,
        "payload_too_large",
        format!("request body is larger than {max} bytes"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::test_support::{on_worker, read_answer, read_to_end, socket_pair};
    use crate::proxy::test_support::{config, context, instance, ok, PAUSE};
    use std::io::Write;
    use std::net::TcpStream;

    /// Serves one connection on `ctx` while `client` talks on its far end;
    /// what `client` returns, once both are done.
    fn talk<T: Send + 'static>(
        ctx: &Arc<Context>,
        client: impl FnOnce(TcpStream) -> T + Send + 'static,
    ) -> T {
        let (ours, peer) = socket_pair();
        let addr = peer.local_addr().unwrap();
        let talking = std::thread::spawn(move || client(peer));
        let ctx = ctx.clone();
        on_worker(async move {
            let stream = Stream::from_std(ours).unwrap();
            serve_connection(&ctx, stream, addr, None).await;
        });
        talking.join().unwrap()
    }

    /// An idle keep-alive connection costs little more than its task, so the
    /// task's future must stay small: rustls' handshake state (kilobytes) is
    /// boxed while it runs, as is a request's exchange. Inline, the handshake
    /// made every connection's task 9.3 KB, TLS or not.
    #[test]
    fn a_connections_task_stays_small() {
        let ctx = context(config(), &[echo()]);
        let (ours, peer) = socket_pair();
        let addr = peer.local_addr().unwrap();
        let size = on_worker(async move {
            let stream = Stream::from_std(ours).unwrap();
            std::mem::size_of_val(&serve_connection(&ctx, stream, addr, None))
        });
        assert!(size <= 4096, "the connection's future is {size} bytes");
    }

    /// An instance that answers each request with its target and body.
    fn echo() -> SocketAddr {
        let (addr, _) = instance(Box::new(|r| {
            let target = r.head.split(' ').nth(1).unwrap_or_default();
            let body = String::from_utf8_lossy(&r.body);
            (vec![ok(&format!("{target} {body}"))], false)
        }));
        addr
    }

    #[test]
    fn a_malformed_head_is_answered_400_with_a_json_error_and_the_connection_closed() {
        let ctx = context(config(), &[echo()]);
        let read = talk(&ctx, |mut peer| {
            peer.write_all(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
                .unwrap();
            read_to_end(&mut peer)
        });
        let read = String::from_utf8(read).unwrap();
        let (head, body) = read.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(
            head.contains("\r\ncontent-type: application/json"),
            "{head}"
        );
        let error = &serde_json::from_str::<serde_json::Value>(body).unwrap()["error"];
        assert_eq!(error["code"], "bad_request");
        assert!(!error["request_id"].as_str().unwrap().is_empty());
    }

    #[test]
    fn a_pipelined_second_request_is_read_after_the_first_answer() {
        let ctx = context(config(), &[echo()]);
        let (first, second, rest) = talk(&ctx, |mut peer| {
            peer.write_all(
                b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n\
                  GET /second HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
            .unwrap();
            let first = read_answer(&mut peer);
            let second = read_answer(&mut peer);
            (first, second, read_to_end(&mut peer))
        });
        assert_eq!(first.1, b"/first ");
        assert!(!first.0.contains("connection: close"), "{}", first.0);
        assert_eq!(second.1, b"/second ");
        assert!(
            second.0.contains("\r\nconnection: close\r\n"),
            "{}",
            second.0
        );
        assert!(rest.is_empty(), "then the connection ends");
    }

    /// `100 Continue` goes to a client that asked and is waiting for it;
    /// not to one that did not ask, nor to one that sent its body anyway.
    #[test]
    fn continue_is_sent_only_when_the_client_asked() {
        let ctx = context(config(), &[echo()]);
        let (asked, not_asked, sent_anyway) = talk(&ctx, |mut peer| {
            let head = "POST /pay HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n";
            peer.write_all(format!("{head}Expect: 100-continue\r\n\r\n").as_bytes())
                .unwrap();
            let mut interim = [0u8; codec::CONTINUE.len()];
            std::io::Read::read_exact(&mut peer, &mut interim).unwrap();
            assert_eq!(&interim[..], codec::CONTINUE);
            peer.write_all(b"hello").unwrap();
            let asked = read_answer(&mut peer);

            peer.write_all(format!("{head}\r\n").as_bytes()).unwrap();
            std::thread::sleep(PAUSE);
            peer.write_all(b"there").unwrap();
            let not_asked = read_answer(&mut peer);

            let last = format!("{head}Expect: 100-continue\r\nConnection: close\r\n\r\nagain");
            peer.write_all(last.as_bytes()).unwrap();
            let sent_anyway = read_answer(&mut peer);
            assert!(read_to_end(&mut peer).is_empty());
            (asked, not_asked, sent_anyway)
        });
        for ((head, body), want) in [
            (asked, "/pay hello"),
            (not_asked, "/pay there"),
            (sent_anyway, "/pay again"),
        ] {
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
            assert_eq!(String::from_utf8(body).unwrap(), want);
        }
    }
}
