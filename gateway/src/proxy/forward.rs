//! One try: send the buffered request to one instance and relay its answer.
//!
//! The try reports how it ended so [`crate::proxy::failover`] can decide what comes
//! next. Once any byte of the answer has gone to the client there is no going
//! back: a failure after that point closes the client connection, which is
//! how the client learns the answer is incomplete.

use crate::balance::passive::Fault;
use crate::balance::pool::{Conn, Upstream};
use crate::http::codec::{self, ClientFraming};
use crate::http::session::Session;
use crate::observe::causes::Failover;
use crate::observe::counters::Metrics;
use crate::runtime::deadline::Interrupted;
use crate::runtime::{self, Until};
use futures_lite::AsyncWriteExt;
use shared::http1::{parse_response, ChunkError, ChunkedDecoder, Framing, HeadError};
use std::io::{Error, Write};
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
}

/// Interim (1xx) answers taken before the final one; more is an instance
/// stalling with an endless stream of them.
const MAX_INTERIM: usize = 16;

/// Sends `ex` to `up` and relays the answer to the client, counting the
/// try in the instance's own statistics (a few atomic adds).
pub(crate) async fn try_once(
    up: &Upstream,
    ex: &Exchange<'_>,
    io: &mut Io<'_>,
    fail_on_5xx: bool,
    metrics: &Metrics,
) -> Try {
    let started = runtime::now();
    let tried = try_inner(up, ex, io, fail_on_5xx, metrics).await;
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

async fn try_inner(
    up: &Upstream,
    ex: &Exchange<'_>,
    io: &mut Io<'_>,
    fail_on_5xx: bool,
    metrics: &Metrics,
) -> Try {
    let deadlines = io.limits;
    let deadline = io.session.deadline();
    let until = Until::after(deadlines.head);
    let mut conn = match up.checkout() {
        Some(conn) => conn,
        None => match up.connect(deadline, deadlines.connect).await {
            Ok(conn) => conn,
            Err(e) if shared::local_trouble::is_local_trouble(&e) => {
                return Try::ShortOfResources(e)
            }
            Err(e) => return Try::ConnectFailed(e),
        },
    };
    loop {
        let left = until.left();
        match deadline
            .within(left, send_and_read_head(&mut conn, ex))
            .await
        {
            Ok(Ok(())) => break,
            Err(_) if conn.answering => {
                return bad(up, Fault::CutShort, "the answer stalled".into())
            }
            Err(_) => return Try::TimedOut,
            // The keep-alive race, most likely; but the instance may have taken the
            // request, so only a replayable one goes again (once, on a fresh connection).
            Ok(Err(HeadFailure::ClosedEarly(why))) if conn.reused && ex.replayable => {
                metrics.keepalive_retries.inc();
                let left = until.left();
                conn = match up.connect(deadline, deadlines.connect.min(left)).await {
                    Ok(conn) => conn,
                    // Not "never sent": the first write may have reached the instance.
                    Err(e) => {
                        return Try::ClosedBeforeAnswer(format!("{why}; reconnecting failed: {e}"))
                    }
                };
            }
            Ok(Err(HeadFailure::ClosedEarly(why))) => return Try::ClosedBeforeAnswer(why),
            Ok(Err(HeadFailure::Bad(fault, why))) => return bad(up, fault, why),
        }
    }
    let status = conn.head.status;
    if fail_on_5xx && status >= 500 {
        return Try::ServerError(status);
    }
    let relayed = relay(&mut conn, ex, io).await;
    finish(up, conn, ex, status, relayed)
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
    io: &mut Io<'_>,
) -> Result<(bool, bool), RelayError> {
    let (framing, keep_alive) = codec::client_response_head(
        &mut io.session.out,
        conn.buf.data(),
        &conn.head,
        ex.request_id,
        ex.client_minor,
        ex.keep_alive(),
        ex.head_request,
    );
    conn.buf.consume(conn.head.len);
    let upstream_keep_alive = conn.head.keep_alive;
    let reusable = match framing {
        ClientFraming::Empty => {
            io.send_head().await?;
            upstream_keep_alive
        }
        ClientFraming::Length(n) => {
            relay_length(conn, io, n).await?;
            upstream_keep_alive
        }
        ClientFraming::Chunked | ClientFraming::Dechunk => {
            relay_chunked(
                conn,
                io,
                framing == ClientFraming::Chunked,
                ex.forward_trailers,
            )
            .await?;
            upstream_keep_alive
        }
        ClientFraming::Encode | ClientFraming::UntilClose => {
            relay_until_close(conn, io, framing == ClientFraming::Encode).await?;
            false
        }
    };
    Ok((reusable, keep_alive))
}

/// A body of `n` bytes: the head and as much of it as has arrived go out in one write.
async fn relay_length(conn: &mut Conn, io: &mut Io<'_>, n: u64) -> Result<(), RelayError> {
    let mut left = n;
    let have = conn.buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
    io.session.out.extend_from_slice(&conn.buf.data()[..have]);
    conn.buf.consume(have);
    left -= have as u64;
    io.send_head().await?;
    while left > 0 {
        io.fill(conn).await?;
        let take = conn
            .buf
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        io.send(&conn.buf.data()[..take]).await?;
        conn.buf.consume(take);
        left -= take as u64;
    }
    Ok(())
}

/// A chunked body, decoded and framed again: chunked to an HTTP/1.1 client
/// (`chunked`), just the data to an HTTP/1.0 one. Chunk extensions are
/// dropped, and so are trailer fields unless `forward_trailers`.
async fn relay_chunked(
    conn: &mut Conn,
    io: &mut Io<'_>,
    chunked: bool,
    forward_trailers: bool,
) -> Result<(), RelayError> {
    io.send_head().await?;
    let mut decoder = if chunked && forward_trailers {
        ChunkedDecoder::keeping_trailers()
    } else {
        ChunkedDecoder::new()
    };
    let mut out = Vec::new();
    let mut data = Vec::new();
    loop {
        let used = decoder.decode(conn.buf.data(), Some(&mut data))?;
        conn.buf.consume(used);
        if chunked && !data.is_empty() {
            let _ = write!(out, "{:x}\r\n", data.len());
            out.append(&mut data);
            out.extend_from_slice(b"\r\n");
        } else {
            out.append(&mut data);
        }
        if decoder.is_done() && chunked {
            out.extend_from_slice(b"0\r\n");
            out.extend_from_slice(decoder.trailers());
            out.extend_from_slice(b"\r\n");
        }
        if !out.is_empty() {
            io.send(&out).await?;
            out.clear();
        }
        if decoder.is_done() {
            return Ok(());
        }
        io.fill(conn).await?;
    }
}

/// A body that ends when the instance closes: chunked to an HTTP/1.1 client
/// (`encode`), as it comes to an HTTP/1.0 one.
async fn relay_until_close(
    conn: &mut Conn,
    io: &mut Io<'_>,
    encode: bool,
) -> Result<(), RelayError> {
    io.send_head().await?;
    loop {
        if !conn.buf.is_empty() {
            if encode {
                let size = format!("{:x}\r\n", conn.buf.len());
                io.send(size.as_bytes()).await?;
            }
            io.send(conn.buf.data()).await?;
            if encode {
                io.send(b"\r\n").await?;
            }
            conn.buf.consume(conn.buf.len());
        }
        if io.read_more(conn).await? == 0 {
            break;
        }
    }
    if encode {
        io.send(b"0\r\n\r\n").await?;
    }
    Ok(())
}

/// The client side of a try, and the deadlines its waits keep.
pub(crate) struct Io<'a> {
    pub(crate) session: &'a mut Session,
    pub(crate) limits: Deadlines,
}

impl Io<'_> {
    /// Writes relayed bytes to the client.
    async fn send(&mut self, bytes: &[u8]) -> Result<(), RelayError> {
        self.session
            .write(bytes, self.limits.client)
            .await
            .map_err(RelayError::Client)
    }

    /// Writes the answer's head (and what of the body went with it) to the client.
    async fn send_head(&mut self) -> Result<(), RelayError> {
        self.session
            .write_out(self.limits.client)
            .await
            .map_err(RelayError::Client)
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
