//! One try: send the buffered request to one instance and relay its answer.
//!
//! The try reports how it ended so [`crate::proxy::failover`] can decide what comes
//! next. Once any byte of the answer has gone to the client there is no going
//! back: a failure after that point closes the client connection, which is
//! how the client learns the answer is incomplete.

use crate::balance::passive::Fault;
use crate::balance::pool::{self, Conn, Upstream};
use crate::http::codec::{AnswerTo, ClientFraming};
use crate::http::session::Session;
use crate::http::upstream_tls::refused_by_alert;
use crate::observe::causes::Failover;
use crate::observe::counters::Metrics;
use crate::runtime::deadline::Interrupted;
use crate::runtime::{self, Until};
use futures_lite::AsyncWriteExt;
use shared::http1::{parse_response, ChunkError, ChunkedDecoder, Framing, HeadError};
use std::io::Error;
use std::time::Duration;

/// Largest response head accepted from an instance.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Answers with a Content-Length up to this are read whole before any byte
/// goes to the client, so an instance dying mid-answer is still a try that
/// can be retried rather than a truncated answer.
const WHOLE_ANSWER: u64 = 64 * 1024;

/// The request as it goes to any instance, and what the client asked for.
#[derive(Debug)]
pub(crate) struct Exchange<'a> {
    /// Upstream request bytes: head and body.
    pub(crate) request: &'a [u8],
    pub(crate) request_id: &'a str,
    pub(crate) head_request: bool,
    pub(crate) client_minor: u8,
    /// Whether the client asked to keep the connection open.
    pub(crate) wants_keep_alive: bool,
    /// Whether the request may be sent again when an instance gave no byte
    /// of an answer but may have taken it: an idempotent method, or
    /// `retry_non_idempotent`.
    pub(crate) replayable: bool,
    /// It carries an idempotency key its route honours
    /// ([`crate::proxy::keyed`]): retried only after a failed connect.
    pub(crate) keyed: bool,
    /// The route requires each answer to carry the request's `x-request-id`.
    pub(crate) verify_request_id: bool,
    /// Relay the trailer fields of chunked answers (`forward_trailers`).
    pub(crate) forward_trailers: bool,
    /// Fired when the gateway stops: answers from then on close their connection.
    pub(crate) stop: &'a shared::shutdown::Trigger,
}

impl Exchange<'_> {
    /// Whether the connection stays open after the answer being written now.
    pub(crate) fn keep_alive(&self) -> bool {
        self.wants_keep_alive && !self.stop.is_fired()
    }

    /// How the answer being written now goes to this client.
    fn answer_to(&self) -> AnswerTo<'_> {
        AnswerTo {
            request_id: self.request_id,
            client_minor: self.client_minor,
            keep_alive: self.keep_alive(),
            head_request: self.head_request,
        }
    }
}

/// Deadlines of one try.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadlines {
    pub(crate) connect: Duration,
    /// From the start of the try to a complete response head (and small answer),
    /// a reconnect after a keep-alive race included.
    pub(crate) head: Duration,
    /// Longest wait for each further piece of the response body.
    pub(crate) body: Duration,
    /// Longest wait for the client to take each write.
    pub(crate) client: Duration,
}

/// How a try ended.
#[derive(Debug)]
pub(crate) enum Try {
    /// The answer went to the client; `client_open` is false if the client
    /// connection must close (it broke, or the answer could not be completed).
    Answered { status: u16, client_open: bool },
    /// No connection could be opened: the request was not sent.
    ConnectFailed(Error),
    /// No connection could be opened because the gateway itself is out of
    /// descriptors, buffers or local ports: the request was not sent, and
    /// the instance is not to blame ([`shared::local_trouble`]).
    ShortOfResources(Error),
    /// Sent; the connection closed or broke before any byte of an answer.
    /// The instance may have taken the request and died.
    ClosedBeforeAnswer(String),
    /// Sent, and not a byte of an answer within the deadline.
    TimedOut,
    /// Some of an answer arrived and it was wrong (malformed, cut short or
    /// stalled, an unsolicited 101, a wrong request id): the instance has the
    /// request, nothing went to the client, and the instance was blamed.
    BadAnswer(Fault, String),
    /// A 5xx the caller asked to fail over on; nothing went to the client.
    ServerError(u16),
}

/// How waiting for an answer's head failed.
enum HeadFailure {
    /// Closed or reset before any byte of an answer: on a pooled connection,
    /// most likely the instance closed it while idle (the keep-alive race),
    /// though it may also have taken the request and died.
    ClosedEarly(String),
    /// Some of an answer arrived, and it was wrong.
    Bad(Fault, String),
    /// A new TLS connection the instance refused by an alert before any
    /// answer (a TLS 1.3 instance checks the client's certificate after the
    /// client's side of the handshake is over): the request never reached it.
    Refused(Error),
}

/// Interim (1xx) answers taken before the final one; more is an instance
/// stalling with an endless stream of them.
const MAX_INTERIM: usize = 16;

/// Sends `ex` to `up` and relays the answer to the client, counting the
/// try in the instance's own statistics (a few atomic adds).
pub(crate) async fn try_once(
    up: &Upstream,
    ex: &Exchange<'_>,
    client: &mut ClientSide<'_>,
    fail_on_5xx: bool,
    metrics: &Metrics,
) -> Try {
    let started = runtime::now();
    let tried = send_and_relay(up, ex, client, fail_on_5xx, metrics).await;
    let took = runtime::now().saturating_duration_since(started);
    let stats = &up.stats;
    match &tried {
        Try::Answered { status, .. } => stats.answered(*status, took),
        Try::ConnectFailed(_) => stats.failed(Failover::Connect, took),
        // Not a try of the instance: nothing is counted against it.
        Try::ShortOfResources(_) => {}
        Try::TimedOut => stats.failed(Failover::Timeout, took),
        Try::ClosedBeforeAnswer(_) | Try::BadAnswer(..) => stats.failed(Failover::Broken, took),
        Try::ServerError(status) => {
            stats.answered(*status, took);
            stats.failed(Failover::Status5xx, took);
        }
    }
    tried
}

/// The try itself: a connection (pooled or new), the request, the answer's
/// head within the head deadline, then the answer relayed to the client.
async fn send_and_relay(
    up: &Upstream,
    ex: &Exchange<'_>,
    client: &mut ClientSide<'_>,
    fail_on_5xx: bool,
    metrics: &Metrics,
) -> Try {
    let until = Until::after(client.limits.head);
    let mut conn = match open(up, client, metrics).await {
        Ok(conn) => conn,
        Err(tried) => return tried,
    };
    if let Err(tried) = await_answer_head(up, &mut conn, ex, client, until, metrics).await {
        return tried;
    }
    let status = conn.head.status;
    if fail_on_5xx && status >= 500 {
        return Try::ServerError(status);
    }
    let relayed = relay(&mut conn, ex, client).await;
    finish(up, conn, ex, status, relayed)
}

/// A pooled connection to `up`, or a new one within the connect deadline.
async fn open(up: &Upstream, client: &ClientSide<'_>, metrics: &Metrics) -> Result<Conn, Try> {
    if let Some(conn) = up.checkout() {
        return Ok(conn);
    }
    let deadline = client.session.deadline();
    let connected = up.connect(deadline, client.limits.connect).await;
    count_handshake(up, &connected, metrics);
    match connected {
        Ok(conn) => Ok(conn),
        Err(e) if shared::local_trouble::is_local_trouble(&e) => Err(Try::ShortOfResources(e)),
        Err(e) => Err(Try::ConnectFailed(e)),
    }
}

/// Counts the TLS handshake of a new connection to `up`, if it is TLS.
fn count_handshake(up: &Upstream, connected: &std::io::Result<Conn>, metrics: &Metrics) {
    if !up.is_tls() {
        return;
    }
    match connected {
        Ok(_) => metrics.upstream_tls_handshake("ok"),
        Err(e) if pool::handshake_failed(e) => metrics.upstream_tls_handshake("failed"),
        Err(_) => {}
    }
}

/// Sends the request and reads the answer's head (and a small answer whole)
/// before `until`. A pooled connection the instance closed before answering
/// (the keep-alive race, most likely) is replaced by a fresh one once, for a
/// replayable request; any other failure is how the try ended.
async fn await_answer_head(
    up: &Upstream,
    conn: &mut Conn,
    ex: &Exchange<'_>,
    client: &ClientSide<'_>,
    until: Until,
    metrics: &Metrics,
) -> Result<(), Try> {
    let deadline = client.session.deadline();
    let mut reconnected = false;
    loop {
        let sent = deadline
            .within(until.left(), send_and_read_head(conn, ex))
            .await;
        match sent {
            Ok(Ok(())) => return Ok(()),
            Err(_) if conn.answering => {
                return Err(bad(up, Fault::CutShort, "the answer stalled".into()))
            }
            Err(_) => return Err(Try::TimedOut),
            // The instance may have taken the request, so only a replayable
            // one goes again (once, on a fresh connection).
            Ok(Err(HeadFailure::ClosedEarly(why))) if conn.reused && ex.replayable => {
                metrics.keepalive_retries.inc();
                let connect = client.limits.connect.min(until.left());
                let connected = up.connect(deadline, connect).await;
                count_handshake(up, &connected, metrics);
                reconnected = true;
                *conn = match connected {
                    Ok(conn) => conn,
                    // Not "never sent": the first write may have reached the instance.
                    Err(e) => {
                        let why = format!("{why}; reconnecting failed: {e}");
                        return Err(Try::ClosedBeforeAnswer(why));
                    }
                };
            }
            Ok(Err(HeadFailure::ClosedEarly(why))) => return Err(Try::ClosedBeforeAnswer(why)),
            Ok(Err(HeadFailure::Bad(fault, why))) => return Err(bad(up, fault, why)),
            Ok(Err(HeadFailure::Refused(e))) if !reconnected => {
                metrics.upstream_tls_handshake("refused");
                let why = format!("TLS handshake with {} refused by the instance: {e}", up.key);
                return Err(Try::ConnectFailed(pool::Handshake::error(why)));
            }
            Ok(Err(HeadFailure::Refused(e))) => return Err(Try::ClosedBeforeAnswer(e.to_string())),
        }
    }
}

/// Blames `up` for a wrong answer that nothing of went to the client.
fn bad(up: &Upstream, fault: Fault, why: String) -> Try {
    up.blame(fault);
    Try::BadAnswer(fault, why)
}

/// After the relay: pools the connection if it ended cleanly, blames the
/// instance if its answer broke off.
fn finish(
    up: &Upstream,
    conn: Conn,
    ex: &Exchange<'_>,
    status: u16,
    relayed: Result<(bool, bool), RelayError>,
) -> Try {
    let client_open = match relayed {
        Ok((reusable, client_open)) => {
            up.answered_well();
            if reusable {
                up.checkin(conn);
            }
            client_open
        }
        Err(RelayError::Client(e)) => {
            log::debug!(request_id = ex.request_id, upstream = up.key.as_str(); "the client went away during the answer: {e}");
            false
        }
        Err(RelayError::Instance(fault, why)) => {
            let cooled = up.blame(fault);
            log::warn!(request_id = ex.request_id, upstream = up.key.as_str(), fault = fault.as_str(), cooled_down = cooled;
                "answer broke off after it began, the client's connection is closed: {why}");
            false
        }
    };
    Try::Answered {
        status,
        client_open,
    }
}

/// Writes the request, then reads until a final (non-1xx) response head is
/// parsed, taking every interim answer already buffered before reading again.
async fn send_and_read_head(conn: &mut Conn, ex: &Exchange<'_>) -> Result<(), HeadFailure> {
    conn.answering = false;
    if let Err(e) = conn.stream.write_all(ex.request).await {
        return Err(HeadFailure::ClosedEarly(format!("write failed: {e}")));
    }
    let mut interim = 0;
    loop {
        match parse_response(
            conn.buf.data(),
            &mut conn.head,
            MAX_RESPONSE_HEAD,
            ex.head_request,
        ) {
            Ok(true) => match conn.head.status {
                101 => return Err(malformed("an unsolicited 101 Switching Protocols".into())),
                // 100, 102, 103 and the rest: dropped (the body was already read, and
                // an HTTP/1.0 client cannot take one); the final answer may be behind.
                100..=199 if interim < MAX_INTERIM => {
                    interim += 1;
                    conn.buf.consume(conn.head.len);
                    continue;
                }
                100..=199 => return Err(malformed("too many interim (1xx) answers".into())),
                _ => {
                    check_request_id(conn, ex)?;
                    return read_small_body(conn).await;
                }
            },
            Ok(false) => {}
            Err(e) => return Err(malformed(answer_head_error(e))),
        }
        match conn.buf.fill(&mut conn.stream).await {
            Ok(0) if !conn.answering => {
                return Err(HeadFailure::ClosedEarly("closed before answering".into()))
            }
            Ok(0) => return Err(cut_short("closed in the middle of the answer's head")),
            Ok(_) => conn.answering = true,
            Err(e) if !conn.answering && !conn.reused && refused_by_alert(&e) => {
                return Err(HeadFailure::Refused(e))
            }
            Err(e) if !conn.answering => return Err(HeadFailure::ClosedEarly(e.to_string())),
            Err(e) => return Err(cut_short(&e.to_string())),
        }
    }
}

fn malformed(why: String) -> HeadFailure {
    HeadFailure::Bad(Fault::Malformed, why)
}

fn cut_short(why: &str) -> HeadFailure {
    HeadFailure::Bad(Fault::CutShort, why.to_string())
}

/// What was wrong with an answer's head, in the answer's terms (the parser's
/// own messages speak of requests).
fn answer_head_error(e: HeadError) -> String {
    match e {
        HeadError::TooLarge => {
            format!("the answer's head is larger than {MAX_RESPONSE_HEAD} bytes")
        }
        HeadError::TooManyHeaders => "the answer's head has too many header fields".into(),
        HeadError::Version => "the answer is not HTTP/1.0 or HTTP/1.1".into(),
        HeadError::HeaderBytes => "a header value of the answer has a byte above 0x7F".into(),
        e => format!("invalid answer head: {e}"),
    }
}

/// An answer that names another request (an `x-request-id` other than the
/// one sent) is that request's answer, on any route: a stray that the
/// connection's order alone would have handed to this client. On a
/// `verify_request_id` route the answer must name this request.
fn check_request_id(conn: &Conn, ex: &Exchange<'_>) -> Result<(), HeadFailure> {
    match conn.head.header(conn.buf.data(), "x-request-id") {
        Some(id) if id == ex.request_id.as_bytes() => Ok(()),
        Some(_) => Err(HeadFailure::Bad(
            Fault::WrongRequestId,
            "the answer carries another request's x-request-id".into(),
        )),
        None if ex.verify_request_id => Err(HeadFailure::Bad(
            Fault::WrongRequestId,
            "the answer carries no x-request-id".into(),
        )),
        None => Ok(()),
    }
}

/// Reads the rest of a small answer (see [`WHOLE_ANSWER`]) into the buffer.
async fn read_small_body(conn: &mut Conn) -> Result<(), HeadFailure> {
    let Framing::Length(n) = conn.head.framing else {
        return Ok(());
    };
    if n > WHOLE_ANSWER {
        return Ok(());
    }
    let whole = conn.head.len + n as usize;
    while conn.buf.len() < whole {
        match conn.buf.fill(&mut conn.stream).await {
            Ok(0) => return Err(cut_short("closed in the middle of the answer")),
            Ok(_) => {}
            Err(e) => return Err(cut_short(&e.to_string())),
        }
    }
    Ok(())
}

/// Why relaying an answer stopped before its end.
enum RelayError {
    /// The client's side failed: the instance is not to blame.
    Client(Error),
    /// The instance's answer broke off, stalled or went wrong.
    Instance(Fault, String),
}

impl From<ChunkError> for RelayError {
    fn from(e: ChunkError) -> Self {
        RelayError::Instance(Fault::Malformed, format!("invalid chunked body: {e}"))
    }
}

/// Streams the parsed answer to the client. Answers whether the upstream
/// connection ended cleanly (so it may be pooled again) and whether the client
/// connection stays open.
async fn relay(
    conn: &mut Conn,
    ex: &Exchange<'_>,
    client: &mut ClientSide<'_>,
) -> Result<(bool, bool), RelayError> {
    let (framing, keep_alive) =
        client
            .session
            .compose_answer_head(conn.buf.data(), &conn.head, ex.answer_to());
    conn.buf.consume(conn.head.len);
    let upstream_keep_alive = conn.head.keep_alive;
    let reusable = match framing {
        ClientFraming::Empty => {
            client.send_head(&[]).await?;
            upstream_keep_alive
        }
        ClientFraming::Length(n) => {
            relay_length(conn, client, n).await?;
            upstream_keep_alive
        }
        ClientFraming::Chunked | ClientFraming::Dechunk => {
            let chunked = framing == ClientFraming::Chunked;
            relay_chunked(conn, client, chunked, ex.forward_trailers).await?;
            upstream_keep_alive
        }
        ClientFraming::Encode | ClientFraming::UntilClose => {
            relay_until_close(conn, client, framing == ClientFraming::Encode).await?;
            false
        }
    };
    Ok((reusable, keep_alive))
}

/// A body of `n` bytes: the head and as much of it as has arrived go out in one write.
async fn relay_length(
    conn: &mut Conn,
    client: &mut ClientSide<'_>,
    n: u64,
) -> Result<(), RelayError> {
    let mut left = n;
    let have = conn.buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
    client.send_head(&conn.buf.data()[..have]).await?;
    conn.buf.consume(have);
    left -= have as u64;
    while left > 0 {
        client.fill(conn).await?;
        let take = conn
            .buf
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        client.send_body(&conn.buf.data()[..take]).await?;
        conn.buf.consume(take);
        left -= take as u64;
    }
    Ok(())
}

/// A chunked body, decoded and framed again: chunked to an HTTP/1.1 client
/// (`chunked`), just the data to an HTTP/1.0 one. Chunk extensions are
/// dropped, and so are trailer fields unless `forward_trailers`. What one
/// read brought goes out in one write.
async fn relay_chunked(
    conn: &mut Conn,
    client: &mut ClientSide<'_>,
    chunked: bool,
    forward_trailers: bool,
) -> Result<(), RelayError> {
    client.send_head(&[]).await?;
    let mut decoder = if chunked && forward_trailers {
        ChunkedDecoder::keeping_trailers()
    } else {
        ChunkedDecoder::new()
    };
    let mut data = Vec::new();
    loop {
        let used = decoder.decode(conn.buf.data(), Some(&mut data))?;
        conn.buf.consume(used);
        match (chunked, decoder.is_done()) {
            (true, true) => client.send_last_chunk(&data, decoder.trailers()).await?,
            (true, false) => client.send_chunk(&data).await?,
            (false, _) if !data.is_empty() => client.send_body(&data).await?,
            (false, _) => {}
        }
        data.clear();
        if decoder.is_done() {
            return Ok(());
        }
        client.fill(conn).await?;
    }
}

/// A body that ends when the instance closes: chunked to an HTTP/1.1 client
/// (`encode`), as it comes to an HTTP/1.0 one.
async fn relay_until_close(
    conn: &mut Conn,
    client: &mut ClientSide<'_>,
    encode: bool,
) -> Result<(), RelayError> {
    client.send_head(&[]).await?;
    loop {
        if !conn.buf.is_empty() {
            if encode {
                client.send_chunk(conn.buf.data()).await?;
            } else {
                client.send_body(conn.buf.data()).await?;
            }
            conn.buf.consume(conn.buf.len());
        }
        if client.read_more(conn).await? == 0 {
            break;
        }
    }
    if encode {
        client.send_last_chunk(&[], &[]).await?;
    }
    Ok(())
}

/// The client's side of a try: its session, and the deadlines the try's
/// waits keep.
pub(crate) struct ClientSide<'a> {
    pub(crate) session: &'a mut Session,
    pub(crate) limits: Deadlines,
}

impl ClientSide<'_> {
    /// Writes the composed answer head, and `body_start` with it.
    async fn send_head(&mut self, body_start: &[u8]) -> Result<(), RelayError> {
        let limit = self.limits.client;
        let sent = self.session.write_answer_head(body_start, limit).await;
        sent.map_err(RelayError::Client)
    }

    /// Writes relayed body bytes as they are.
    async fn send_body(&mut self, bytes: &[u8]) -> Result<(), RelayError> {
        let sent = self.session.write_body(bytes, self.limits.client).await;
        sent.map_err(RelayError::Client)
    }

    /// Writes `data` as one chunk (nothing for no data).
    async fn send_chunk(&mut self, data: &[u8]) -> Result<(), RelayError> {
        let sent = self.session.write_chunk(data, self.limits.client).await;
        sent.map_err(RelayError::Client)
    }

    /// Writes `data` as a chunk, then the last chunk with `trailers`.
    async fn send_last_chunk(&mut self, data: &[u8], trailers: &[u8]) -> Result<(), RelayError> {
        let limit = self.limits.client;
        let sent = self.session.write_last_chunk(data, trailers, limit).await;
        sent.map_err(RelayError::Client)
    }

    /// Reads more of the body within the body deadline (0: the instance closed).
    async fn read_more(&mut self, conn: &mut Conn) -> Result<usize, RelayError> {
        match self
            .session
            .deadline()
            .within(self.limits.body, conn.buf.fill(&mut conn.stream))
            .await
        {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(RelayError::Instance(Fault::CutShort, e.to_string())),
            Err(Interrupted::Elapsed) => Err(RelayError::Instance(
                Fault::CutShort,
                format!("no more of the body within {:?}", self.limits.body),
            )),
            Err(Interrupted::Stopping) => Err(RelayError::Client(Error::other("gateway stopping"))),
        }
    }

    /// Reads more of the body; the instance closing first is an error.
    async fn fill(&mut self, conn: &mut Conn) -> Result<(), RelayError> {
        match self.read_more(conn).await? {
            0 => Err(RelayError::Instance(
                Fault::CutShort,
                "the instance closed in the middle of the body".into(),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::test_support::{on_worker, read_to_end, session, socket_pair};
    use crate::proxy::test_support::{config, context, instance, ok, refusing_addr, upstream};
    use shared::shutdown::Trigger;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    const LIMITS: Deadlines = Deadlines {
        connect: Duration::from_secs(1),
        head: Duration::from_secs(2),
        body: Duration::from_secs(2),
        client: Duration::from_secs(2),
    };

    const REQUEST: &[u8] = b"GET /x HTTP/1.1\r\nhost: a\r\nx-request-id: rid\r\n\r\n";

    /// What the client asked, as far as these tests vary it.
    #[derive(Clone, Copy)]
    struct Asked {
        client_minor: u8,
        forward_trailers: bool,
    }

    const HTTP11: Asked = Asked {
        client_minor: 1,
        forward_trailers: false,
    };

    /// One try of [`REQUEST`] on the instance at `addr` for a client that
    /// reads to the end: how the try ended, whether the instance's
    /// connection went back to the pool, and what the client read.
    fn try_on(addr: SocketAddr, asked: Asked) -> (Try, usize, Vec<u8>) {
        let (ours, mut peer) = socket_pair();
        let client = std::thread::spawn(move || read_to_end(&mut peer));
        let ctx = context(config(), &[]);
        let (tried, pooled) = on_worker(async move {
            let up = upstream(&ctx, addr);
            let stop = Trigger::new();
            let ex = Exchange {
                request: REQUEST,
                request_id: "rid",
                head_request: false,
                client_minor: asked.client_minor,
                wants_keep_alive: true,
                replayable: true,
                keyed: false,
                verify_request_id: false,
                forward_trailers: asked.forward_trailers,
                stop: &stop,
            };
            let mut session = session(ours);
            let mut client = ClientSide {
                session: &mut session,
                limits: LIMITS,
            };
            let tried = try_once(&up, &ex, &mut client, false, &ctx.metrics).await;
            (tried, up.idle_count())
        });
        (tried, pooled, client.join().unwrap())
    }

    /// An instance that answers every request with `parts`, then closes if `close`.
    fn answering_with(parts: Vec<Vec<u8>>, close: bool) -> SocketAddr {
        instance(Box::new(move |_| (parts.clone(), close))).0
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    #[test]
    fn a_length_answer_is_relayed_byte_for_byte_and_its_connection_pooled() {
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nX-A: b\r\n\r\n".to_vec();
        answer.extend_from_slice(&body);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let (addr, _) = instance(Box::new(move |r| {
            seen.lock().unwrap().push(r.head.clone());
            (vec![answer.clone()], false)
        }));
        let (tried, pooled, got) = try_on(addr, HTTP11);
        assert!(
            matches!(
                tried,
                Try::Answered {
                    status: 200,
                    client_open: true
                }
            ),
            "{tried:?}"
        );
        assert_eq!(pooled, 1, "the instance's connection ended cleanly");
        let mut want =
            b"HTTP/1.1 200 OK\r\nX-A: b\r\nx-request-id: rid\r\ncontent-length: 100000\r\n\r\n"
                .to_vec();
        want.extend_from_slice(&body);
        assert!(got == want, "{}", text(&got[..got.len().min(200)]));
        assert_eq!(*requests.lock().unwrap(), [text(REQUEST)]);
    }

    /// Each read of the instance's chunked body goes out as one chunk; the
    /// extension is dropped, the trailer kept only with `forward_trailers`,
    /// and an HTTP/1.0 client gets the data and the end of the connection.
    #[test]
    fn a_chunked_answer_is_reframed_with_its_trailers_when_configured() {
        let addr = answering_with(
            vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n"
                    .to_vec(),
                b"6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n".to_vec(),
            ],
            false,
        );
        let chunked = "HTTP/1.1 200 OK\r\nx-request-id: rid\r\ntransfer-encoding: chunked\r\n\r\n";
        let cases = [
            (
                Asked {
                    client_minor: 1,
                    forward_trailers: true,
                },
                format!("{chunked}5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n"),
                true,
            ),
            (
                HTTP11,
                format!("{chunked}5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
                true,
            ),
            (
                Asked {
                    client_minor: 0,
                    forward_trailers: true,
                },
                "HTTP/1.1 200 OK\r\nx-request-id: rid\r\nconnection: close\r\n\r\nhello world"
                    .to_string(),
                false,
            ),
        ];
        for (asked, want, open) in cases {
            let (tried, pooled, got) = try_on(addr, asked);
            match tried {
                Try::Answered {
                    status: 200,
                    client_open,
                } => assert_eq!(client_open, open, "{want}"),
                other => panic!("{other:?}"),
            }
            assert_eq!(text(&got), want);
            assert_eq!(pooled, 1, "the chunked body ended cleanly: {want}");
        }
    }

    #[test]
    fn a_small_answer_cut_short_is_a_bad_answer_the_client_never_sees() {
        let addr = answering_with(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec()],
            true,
        );
        let (tried, pooled, got) = try_on(addr, HTTP11);
        assert!(
            matches!(tried, Try::BadAnswer(Fault::CutShort, _)),
            "{tried:?}"
        );
        assert_eq!((pooled, text(&got)), (0, String::new()));
    }

    /// A large answer goes out as it comes: once it began, a cut is
    /// reported as an answer whose client connection must close.
    #[test]
    fn a_streamed_answer_cut_short_closes_the_client_connection() {
        let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
        answer.extend_from_slice(&[b'x'; 1000]);
        let addr = answering_with(vec![answer], true);
        let (tried, pooled, got) = try_on(addr, HTTP11);
        assert!(
            matches!(
                tried,
                Try::Answered {
                    status: 200,
                    client_open: false
                }
            ),
            "{tried:?}"
        );
        assert_eq!(pooled, 0);
        let head = "HTTP/1.1 200 OK\r\nx-request-id: rid\r\ncontent-length: 100000\r\n\r\n";
        assert_eq!(text(&got), format!("{head}{}", "x".repeat(1000)));
    }

    #[test]
    fn interim_answers_are_dropped_and_a_stray_request_id_refused() {
        let addr = answering_with(
            vec![b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(), ok("done")],
            false,
        );
        let (tried, _, got) = try_on(addr, HTTP11);
        assert!(
            matches!(tried, Try::Answered { status: 200, .. }),
            "{tried:?}"
        );
        assert!(
            text(&got).starts_with("HTTP/1.1 200 OK\r\n"),
            "{}",
            text(&got)
        );
        assert!(text(&got).ends_with("\r\n\r\ndone"), "{}", text(&got));

        let stray = b"HTTP/1.1 200 OK\r\nx-request-id: other\r\ncontent-length: 0\r\n\r\n";
        let (tried, _, got) = try_on(answering_with(vec![stray.to_vec()], false), HTTP11);
        assert!(
            matches!(tried, Try::BadAnswer(Fault::WrongRequestId, _)),
            "{tried:?}"
        );
        assert!(got.is_empty());
    }

    #[test]
    fn a_refused_connect_sends_nothing_to_the_client() {
        let (tried, pooled, got) = try_on(refusing_addr(), HTTP11);
        assert!(matches!(tried, Try::ConnectFailed(_)), "{tried:?}");
        assert_eq!((pooled, got.len()), (0, 0));
    }
}
