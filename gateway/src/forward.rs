//! One try: send the buffered request to one instance and relay its answer.
//!
//! The try reports how it ended so [`crate::failover`] can decide what comes
//! next. Once any byte of the answer has gone to the client there is no going
//! back: a failure after that point closes the client connection, which is
//! how the client learns the answer is incomplete.

use crate::codec::{self, ClientFraming};
use crate::metrics::{Failover, Metrics};
use crate::pool::{Conn, Upstream};
use crate::runtime::{self, Until};
use crate::session::Session;
use futures_lite::AsyncWriteExt;
use shared::http1::{parse_response, ChunkedDecoder, Framing};
use std::io::{Error, ErrorKind};
use std::time::Duration;

/// Largest response head accepted from an instance.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Answers with a Content-Length up to this are read whole before any byte
/// goes to the client, so an instance dying mid-answer is still a try that
/// can be retried rather than a truncated answer.
const WHOLE_ANSWER: u64 = 64 * 1024;

/// The request as it goes to any instance, and what the client asked for.
#[derive(Debug)]
pub struct Exchange<'a> {
    /// Upstream request bytes: head and body.
    pub request: &'a [u8],
    pub request_id: &'a str,
    pub head_request: bool,
    pub client_minor: u8,
    /// Whether the client asked to keep the connection open.
    pub wants_keep_alive: bool,
    /// Whether the request may be sent again after an instance may have
    /// processed it: an idempotent method, or `retry_non_idempotent`.
    pub replayable: bool,
    /// Fired when the gateway stops: answers from then on close their connection.
    pub stop: &'a shared::shutdown::Trigger,
}

impl Exchange<'_> {
    /// Whether the connection stays open after the answer being written now.
    pub fn keep_alive(&self) -> bool {
        self.wants_keep_alive && !self.stop.is_fired()
    }
}

/// Deadlines of one try.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    pub connect: Duration,
    /// From the start of the try to a complete response head (and small answer),
    /// a reconnect after a keep-alive race included.
    pub head: Duration,
    /// Longest wait for each further piece of the response body.
    pub body: Duration,
    /// Longest wait for the client to take each write.
    pub client: Duration,
}

/// How a try ended.
#[derive(Debug)]
pub enum Try {
    /// The answer went to the client; `client_open` is false if the client
    /// connection must close (it broke, or the answer could not be completed).
    Answered { status: u16, client_open: bool },
    /// No connection could be opened: the request was not sent.
    ConnectFailed(Error),
    /// No connection could be opened because the gateway itself is out of
    /// descriptors, buffers or local ports: the request was not sent, and
    /// the instance is not to blame ([`shared::local_trouble`]).
    ShortOfResources(Error),
    /// Sent, but no response head (or no whole small answer) within the deadline.
    TimedOut,
    /// The connection failed before a complete response head (or small answer).
    Broken(String),
    /// A 5xx the caller asked to fail over on; nothing went to the client.
    ServerError(u16),
}

enum TryError {
    TimedOut,
    /// Closed or reset before any byte of an answer: on a pooled connection,
    /// most likely the instance closed it while idle (the keep-alive race),
    /// though it may also have taken the request and died.
    ClosedEarly(String),
    Broken(String),
}

/// Pooled connections idle longer than this are checked before use: instances
/// close idle keep-alive connections after seconds, not milliseconds.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Whether an idle connection is still open and silent: a peek, polled once,
/// that would block. End of stream, an error, or bytes nobody asked for
/// (a `408` some servers send before closing) mean it is not.
async fn still_open(conn: &Conn) -> bool {
    let mut byte = [0u8; 1];
    futures_lite::future::poll_once(conn.stream.peek(&mut byte))
        .await
        .is_none()
}

/// Sends `ex` to `up` and relays the answer to the client, counting the
/// try in the instance's own statistics (a few atomic adds).
pub async fn try_once(
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
        Try::Broken(_) => stats.failed(Failover::Broken, took),
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
    let mut pooled = up.checkout();
    if let Some((conn, idled)) = &pooled {
        if *idled >= CHECK_IDLE_AFTER && !still_open(conn).await {
            pooled = None; // closed while idle: found before writing, so nothing was sent
        }
    }
    let mut conn = match pooled {
        Some((conn, _)) => conn,
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
            Err(_) | Ok(Err(TryError::TimedOut)) => return Try::TimedOut,
            // The keep-alive race, most likely; but the instance may have taken the
            // request, so only a replayable one goes again (once, on a fresh connection).
            Ok(Err(TryError::ClosedEarly(why))) if conn.reused && ex.replayable => {
                metrics.keepalive_retries.inc();
                let left = until.left();
                conn = match up.connect(deadline, deadlines.connect.min(left)).await {
                    Ok(conn) => conn,
                    // Not "never sent": the first write may have reached the instance.
                    Err(e) => return Try::Broken(format!("{why}; reconnecting failed: {e}")),
                };
            }
            Ok(Err(TryError::ClosedEarly(why) | TryError::Broken(why))) => return Try::Broken(why),
        }
    }
    let status = conn.head.status;
    if fail_on_5xx && status >= 500 {
        return Try::ServerError(status);
    }
    match relay(&mut conn, ex, io).await {
        Ok((reusable, client_open)) => {
            if reusable {
                up.checkin(conn);
            }
            Try::Answered {
                status,
                client_open,
            }
        }
        Err(e) => {
            log::debug!(request_id = ex.request_id, upstream = up.key.as_str(); "answer cut short: {e}");
            Try::Answered {
                status,
                client_open: false,
            }
        }
    }
}

/// Writes the request, then reads until a final (non-1xx) response head is parsed.
async fn send_and_read_head(conn: &mut Conn, ex: &Exchange<'_>) -> Result<(), TryError> {
    if let Err(e) = conn.stream.write_all(ex.request).await {
        return Err(TryError::ClosedEarly(format!("write failed: {e}")));
    }
    loop {
        match parse_response(
            conn.buf.data(),
            &mut conn.head,
            MAX_RESPONSE_HEAD,
            ex.head_request,
        ) {
            Ok(true) if conn.head.status == 101 => {
                return Err(TryError::Broken("switched protocols unasked".into()))
            }
            Ok(true) if conn.head.status < 200 => conn.buf.consume(conn.head.len),
            Ok(true) => return read_small_body(conn).await,
            Ok(false) => {}
            Err(e) => return Err(TryError::Broken(format!("invalid response head: {e}"))),
        }
        let nothing_yet = conn.buf.is_empty();
        match conn.buf.fill(&mut conn.stream).await {
            Ok(0) if nothing_yet => {
                return Err(TryError::ClosedEarly("closed before answering".into()))
            }
            Ok(0) => {
                return Err(TryError::Broken(
                    "closed in the middle of the response head".into(),
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::TimedOut => return Err(TryError::TimedOut),
            Err(e) if nothing_yet => return Err(TryError::ClosedEarly(e.to_string())),
            Err(e) => return Err(TryError::Broken(e.to_string())),
        }
    }
}

/// Reads the rest of a small answer (see [`WHOLE_ANSWER`]) into the buffer.
async fn read_small_body(conn: &mut Conn) -> Result<(), TryError> {
    let Framing::Length(n) = conn.head.framing else {
        return Ok(());
    };
    if n > WHOLE_ANSWER {
        return Ok(());
    }
    let whole = conn.head.len + n as usize;
    while conn.buf.len() < whole {
        match conn.buf.fill(&mut conn.stream).await {
            Ok(0) => {
                return Err(TryError::Broken(
                    "closed in the middle of the answer".into(),
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(TryError::Broken(e.to_string())),
        }
    }
    Ok(())
}

/// Streams the parsed answer to the client. Answers whether the upstream
/// connection ended cleanly (so it may be pooled again) and whether the client
/// connection stays open.
async fn relay(
    conn: &mut Conn,
    ex: &Exchange<'_>,
    io: &mut Io<'_>,
) -> std::io::Result<(bool, bool)> {
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
            // Head and as much body as has arrived go out in one write.
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
            upstream_keep_alive
        }
        ClientFraming::Chunked | ClientFraming::Dechunk => {
            // Chunked to an HTTP/1.1 client as it came; just the data to an HTTP/1.0 one.
            io.send_head().await?;
            let mut decoder = ChunkedDecoder::new();
            let mut data = Vec::new();
            loop {
                let sink = (framing == ClientFraming::Dechunk).then_some(&mut data);
                let used = decoder
                    .decode(conn.buf.data(), sink)
                    .map_err(|e| Error::new(ErrorKind::InvalidData, e))?;
                if framing == ClientFraming::Dechunk {
                    io.send(&data).await?;
                    data.clear();
                } else {
                    io.send(&conn.buf.data()[..used]).await?;
                }
                conn.buf.consume(used);
                if decoder.is_done() {
                    break upstream_keep_alive;
                }
                io.fill(conn).await?;
            }
        }
        ClientFraming::Encode | ClientFraming::UntilClose => {
            io.send_head().await?;
            loop {
                if !conn.buf.is_empty() {
                    if framing == ClientFraming::Encode {
                        let size = format!("{:x}\r\n", conn.buf.len());
                        io.send(size.as_bytes()).await?;
                    }
                    io.send(conn.buf.data()).await?;
                    if framing == ClientFraming::Encode {
                        io.send(b"\r\n").await?;
                    }
                    conn.buf.consume(conn.buf.len());
                }
                let n = io
                    .session
                    .deadline()
                    .within(io.limits.body, conn.buf.fill(&mut conn.stream))
                    .await??;
                if n == 0 {
                    break;
                }
            }
            if framing == ClientFraming::Encode {
                io.send(b"0\r\n\r\n").await?;
            }
            false
        }
    };
    Ok((reusable, keep_alive))
}

/// The client side of a try, and the deadlines its waits keep.
pub struct Io<'a> {
    pub session: &'a mut Session,
    pub limits: Deadlines,
}

impl Io<'_> {
    /// Writes relayed bytes to the client.
    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.session.write(bytes, self.limits.client).await
    }

    /// Writes the answer's head (and what of the body went with it) to the client.
    async fn send_head(&mut self) -> std::io::Result<()> {
        self.session.write_out(self.limits.client).await
    }

    /// Reads more of the body; the instance closing first is an error.
    async fn fill(&mut self, conn: &mut Conn) -> std::io::Result<()> {
        match self
            .session
            .deadline()
            .within(self.limits.body, conn.buf.fill(&mut conn.stream))
            .await??
        {
            0 => Err(Error::new(
                ErrorKind::UnexpectedEof,
                "instance closed in the middle of the body",
            )),
            _ => Ok(()),
        }
    }
}
