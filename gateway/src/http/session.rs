//! The client's end of a connection: its socket, what it sent and the gateway
//! has not consumed yet, the buffer answers are composed in, and the deadline
//! every wait of the connection keeps.
//!
//! This is the one place where the gateway's bytes meet a client's socket,
//! and with [`crate::http::codec`] the one place HTTP/1 bytes are composed:
//! the request path hands it relayed answers (a head, body bytes as they
//! are, or data to frame as chunks), its own error answers and `100
//! Continue`, never bytes it framed itself. A second protocol (HTTP/2) would
//! be a second session beside this one.

use crate::http::codec::{self, AnswerTo, ClientFraming};
use crate::http::tls::ClientStream;
use crate::observe::traffic::ClientTraffic;
use crate::runtime::buffers;
use crate::runtime::deadline::{Deadline, Interrupted};
use futures_lite::AsyncWriteExt;
use shared::http1::{ReadBuf, ResponseHead};
use shared::shutdown::Trigger;
use std::io;
use std::sync::Arc;
use std::time::Duration;

// Idempotency-Key: the tap on relayed answers and the replay writer.
pub(crate) mod stored;

/// What a wait for the client's bytes ended with: bytes read (0: it closed),
/// or why it was cut short.
pub(crate) type Read = Result<io::Result<usize>, Interrupted>;

/// Writes all of `bytes`, then flushes: over TLS a write may leave records
/// in rustls when the socket's buffer is full (a plain flush does nothing).
async fn write_all(stream: &mut ClientStream, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// How long a refused client may go on sending before the connection closes.
const LINGER: Duration = Duration::from_secs(1);

/// A client connection's socket, input, output buffer and deadline.
pub(crate) struct Session {
    stream: ClientStream,
    deadline: Arc<Deadline>,
    /// What the client sent that no request has consumed yet.
    input: ReadBuf,
    /// Answer heads, small answers and chunk framing on their way to the client.
    out: Vec<u8>,
    /// Copies the answer being relayed, for an idempotency key (`stored`).
    tap: Option<Box<stored::Tap>>,
    /// Where the bytes read and written are counted ([`crate::observe::traffic`]).
    traffic: Option<Arc<ClientTraffic>>,
}

impl Session {
    pub(crate) fn new(
        stream: impl Into<ClientStream>,
        deadline: Arc<Deadline>,
        buffer: usize,
    ) -> Self {
        let stream = stream.into();
        let _ = stream.set_nodelay(true);
        Session {
            stream,
            deadline,
            input: ReadBuf::unallocated(buffer),
            out: Vec::new(),
            tap: None,
            traffic: None,
        }
    }

    /// Counts the bytes this session reads and writes in `traffic`.
    pub(crate) fn counted(mut self, traffic: Arc<ClientTraffic>) -> Self {
        self.traffic = Some(traffic);
        self
    }

    fn count_read(&self, read: &Read) {
        if let (Some(traffic), Ok(Ok(n))) = (&self.traffic, read) {
            traffic.received(*n);
        }
    }

    fn count_written(&self, written: &io::Result<()>, n: usize) {
        if let (Some(traffic), Ok(())) = (&self.traffic, written) {
            traffic.sent(n);
        }
    }

    /// The connection's deadline: every wait of the connection, the tries'
    /// waits on instances included, is bounded through it.
    pub(crate) fn deadline(&self) -> &Deadline {
        &self.deadline
    }

    /// Waits `d` on this connection's timer, with nothing read or written.
    pub(crate) async fn pause(&self, d: Duration) {
        let _ = self.deadline.within(d, std::future::pending::<()>()).await;
    }

    /// What the client sent that no request has consumed yet.
    pub(crate) fn input(&self) -> &[u8] {
        self.input.data()
    }

    /// Whether the client sent bytes that no request has consumed yet.
    pub(crate) fn has_input(&self) -> bool {
        !self.input.is_empty()
    }

    /// Drops the first `n` bytes of [`Session::input`]: a request took them.
    pub(crate) fn consume_input(&mut self, n: usize) {
        self.input.consume(n);
    }

    /// Moves up to `n` bytes of [`Session::input`] to the end of `into`; how many.
    pub(crate) fn take_input(&mut self, n: usize, into: &mut Vec<u8>) -> usize {
        self.input.take_into(n, into)
    }

    /// Whether the client connected over TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// Writes `bytes` to the client within `limit`.
    async fn write(&mut self, bytes: &[u8], limit: Duration) -> io::Result<()> {
        let written = self
            .deadline
            .within(limit, write_all(&mut self.stream, bytes))
            .await?;
        self.count_written(&written, bytes.len());
        written
    }

    /// Writes what was composed in `out` within `limit`.
    async fn write_out(&mut self, limit: Duration) -> io::Result<()> {
        let written = self
            .deadline
            .within(limit, write_all(&mut self.stream, &self.out))
            .await?;
        self.count_written(&written, self.out.len());
        written
    }

    /// Tells a client that sent `Expect: 100-continue` to send its body.
    pub(crate) async fn write_continue(&mut self, limit: Duration) -> io::Result<()> {
        self.write(codec::CONTINUE, limit).await
    }

    /// Composes the head of an instance's answer (`head`, parsed from `raw`)
    /// for this client, to go out with [`Session::write_answer_head`]. Says
    /// how the body follows and whether the connection stays open after it.
    pub(crate) fn compose_answer_head(
        &mut self,
        raw: &[u8],
        head: &ResponseHead,
        to: AnswerTo<'_>,
    ) -> (ClientFraming, bool) {
        if let Some(tap) = &mut self.tap {
            tap.head(raw, head);
        }
        codec::client_response_head(&mut self.out, raw, head, to)
    }

    /// Writes the composed answer head and `body_start`, the first of a
    /// body framed by length, in one write.
    pub(crate) async fn write_answer_head(
        &mut self,
        body_start: &[u8],
        limit: Duration,
    ) -> io::Result<()> {
        self.tap_body(body_start);
        self.out.extend_from_slice(body_start);
        self.write_out(limit).await
    }

    /// Writes body bytes as they are: a body framed by length, or one that
    /// ends with the connection.
    pub(crate) async fn write_body(&mut self, bytes: &[u8], limit: Duration) -> io::Result<()> {
        self.tap_body(bytes);
        self.write(bytes, limit).await
    }

    /// Writes `data` as one chunk of a chunked body; nothing for no data.
    pub(crate) async fn write_chunk(&mut self, data: &[u8], limit: Duration) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.tap_body(data);
        self.out.clear();
        codec::chunk(&mut self.out, data);
        self.write_out(limit).await
    }

    /// Ends a chunked body in one write: `data` as a chunk (if any), the
    /// last chunk, and the trailer field lines `trailers` (empty for none).
    pub(crate) async fn write_last_chunk(
        &mut self,
        data: &[u8],
        trailers: &[u8],
        limit: Duration,
    ) -> io::Result<()> {
        self.tap_body(data);
        if let Some(tap) = &mut self.tap {
            tap.ended();
        }
        self.out.clear();
        codec::chunk(&mut self.out, data);
        codec::last_chunk(&mut self.out, trailers);
        self.write_out(limit).await
    }

    /// Copies body bytes to the tap, if one is on (before they are written:
    /// an answer that reached the gateway whole is kept even when the
    /// client has gone).
    fn tap_body(&mut self, bytes: &[u8]) {
        if let Some(tap) = &mut self.tap {
            tap.body(bytes);
        }
    }

    /// Answers with the gateway's own JSON error (`code`, `message`, and the
    /// request id); false if the write failed.
    pub(crate) async fn write_error(
        &mut self,
        status: u16,
        code: &str,
        message: &str,
        request_id: &str,
        framing: codec::ErrorFraming,
        limit: Duration,
    ) -> bool {
        codec::error_response(&mut self.out, status, code, message, request_id, framing);
        self.write_out(limit).await.is_ok()
    }

    /// Reads more of what the client sends into [`Session::input`], within `limit`.
    pub(crate) async fn read(&mut self, limit: Duration) -> Read {
        let read = self
            .deadline
            .within(limit, self.input.fill(&mut self.stream))
            .await;
        self.count_read(&read);
        read
    }

    /// [`Session::read`] between requests: once `stop` fires, the wait is cut
    /// to `drain`. A client that was just sending its next request still has
    /// it answered (with `Connection: close`) rather than its socket closed
    /// under it.
    pub(crate) async fn read_or_drain(
        &mut self,
        limit: Duration,
        stop: &Trigger,
        drain: Duration,
    ) -> Read {
        let read = self
            .deadline
            .within_or_stop(limit, stop, self.input.fill(&mut self.stream))
            .await;
        let read = match read {
            Err(Interrupted::Stopping) => {
                self.deadline
                    .within(drain, self.input.fill(&mut self.stream))
                    .await
            }
            read => read,
        };
        self.count_read(&read);
        read
    }

    /// Waits until the client has sent something (true), closed, or waited past
    /// `idle`. It connected before the gateway stopped, so once `stop` fires
    /// its first request still gets `grace`. Peeks: nothing is read, no buffer held.
    pub(crate) async fn first_bytes(
        &mut self,
        idle: Duration,
        stop: &Trigger,
        grace: Duration,
    ) -> bool {
        let (deadline, stream) = (&self.deadline, &mut self.stream);
        match deadline
            .within_or_stop(idle, stop, stream.sent_something())
            .await
        {
            Ok(sent) => sent,
            Err(Interrupted::Elapsed) => false,
            Err(Interrupted::Stopping) => deadline
                .within(grace, stream.sent_something())
                .await
                .unwrap_or(false),
        }
    }

    /// Waits for the client's next request with no buffer held when none of it
    /// has arrived yet: an idle keep-alive connection costs its task and its
    /// socket (what nginx does). `idling` runs before such a wait, to let the
    /// caller give back its own buffers. False when the connection is done
    /// (closed, idle past `idle`, or nothing arrived within `drain` of `stop`
    /// firing: see [`Session::read_or_drain`]).
    pub(crate) async fn await_request(
        &mut self,
        idle: Duration,
        stop: &Trigger,
        drain: Duration,
        idling: impl FnOnce(),
    ) -> bool {
        if !self.stream.is_readable_now() {
            if let Some(storage) = self.input.release() {
                buffers::give(storage);
            }
            buffers::give(std::mem::take(&mut self.out));
            idling();
            let waited = self
                .deadline
                .within_or_stop(idle, stop, self.stream.readable())
                .await;
            let waited = match waited {
                Err(Interrupted::Stopping) => {
                    self.deadline.within(drain, self.stream.readable()).await
                }
                waited => waited,
            };
            if waited.is_err() {
                return false;
            }
        }
        self.input.supply(buffers::take);
        if self.out.capacity() == 0 {
            self.out = buffers::take();
        }
        true
    }

    /// Gives back what a large request or answer grew the buffers to (above
    /// `keep`), so an idle keep-alive connection holds kilobytes.
    pub(crate) fn shrink(&mut self, keep: usize) {
        self.input.shrink();
        if self.out.capacity() > keep {
            self.out = Vec::new();
        }
    }

    /// Ends the connection after a refusal: half-closes, then reads and drops
    /// what the client still sends for a moment. Closing with unread input
    /// would reset the connection and could destroy the answer before the
    /// client reads it.
    pub(crate) async fn close_after_refusal(&mut self) {
        let shutdown = self.stream.shutdown_write();
        let _ = self.deadline.within(LINGER, shutdown).await;
        let (input, stream) = (&mut self.input, &mut self.stream);
        let linger = async {
            while let Ok(n) = input.fill(stream).await {
                input.consume(input.len());
                if n == 0 {
                    break;
                }
            }
        };
        let _ = self.deadline.within(LINGER, linger).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::test_support::{on_worker, read_to_end, session, socket_pair};
    use shared::http1::parse_response;
    use std::io::Write;

    /// A GET's answer to an HTTP/1.1 client that may keep the connection.
    fn to() -> AnswerTo<'static> {
        AnswerTo {
            request_id: "rid",
            client_minor: 1,
            keep_alive: true,
            head_request: false,
        }
    }

    #[test]
    fn an_answer_head_and_its_body_go_out_exactly() {
        let (ours, mut peer) = socket_pair();
        let client = std::thread::spawn(move || read_to_end(&mut peer));
        let framing = on_worker(async move {
            let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-A: b\r\n\r\nhello world";
            let mut head = ResponseHead::default();
            assert_eq!(parse_response(raw, &mut head, 4096, false), Ok(true));
            let mut s = session(ours);
            let framing = s.compose_answer_head(raw, &head, to());
            let body = &raw[head.len..];
            s.write_answer_head(&body[..5], LIMIT).await.unwrap();
            s.write_body(&body[5..], LIMIT).await.unwrap();
            framing
        });
        assert_eq!(framing, (ClientFraming::Length(11), true));
        assert_eq!(
            String::from_utf8(client.join().unwrap()).unwrap(),
            "HTTP/1.1 200 OK\r\nX-A: b\r\nx-request-id: rid\r\ncontent-length: 11\r\n\r\nhello world"
        );
    }

    #[test]
    fn chunks_continue_and_errors_are_framed_by_the_session() {
        let (ours, mut peer) = socket_pair();
        let client = std::thread::spawn(move || read_to_end(&mut peer));
        on_worker(async move {
            let mut s = session(ours);
            s.write_continue(LIMIT).await.unwrap();
            s.write_chunk(b"abc", LIMIT).await.unwrap();
            s.write_chunk(b"", LIMIT).await.unwrap();
            s.write_last_chunk(b"de", b"x-sum: 1\r\n", LIMIT)
                .await
                .unwrap();
            s.write_chunk(&[b'z'; 300], LIMIT).await.unwrap();
            s.write_last_chunk(b"", b"", LIMIT).await.unwrap();
            let close = codec::ErrorFraming::CLOSING;
            assert!(
                s.write_error(404, "no_route", "none", "rid", close, LIMIT)
                    .await
            );
        });
        let all = String::from_utf8(client.join().unwrap()).unwrap();
        let z = "z".repeat(300);
        let chunks = format!("3\r\nabc\r\n2\r\nde\r\n0\r\nx-sum: 1\r\n\r\n12c\r\n{z}\r\n0\r\n\r\n");
        let rest = all
            .strip_prefix("HTTP/1.1 100 Continue\r\n\r\n")
            .and_then(|rest| rest.strip_prefix(&chunks))
            .unwrap_or_else(|| panic!("{all}"));
        assert!(rest.starts_with("HTTP/1.1 404 Not Found\r\n"), "{rest}");
        assert!(rest.contains("\r\nconnection: close\r\n"), "{rest}");
        assert!(rest.ends_with("}"), "the JSON body: {rest}");
    }

    #[test]
    fn a_client_that_closed_early_fails_the_writes_not_the_task() {
        let (ours, peer) = socket_pair();
        drop(peer);
        let failed = on_worker(async move {
            let mut s = session(ours);
            let big = vec![b'x'; 256 * 1024];
            // The first write may still fit the socket's buffer; a reset
            // connection refuses the next.
            let mut failed = false;
            for _ in 0..16 {
                if s.write_body(&big, LIMIT).await.is_err() {
                    failed = true;
                    break;
                }
            }
            let framing = codec::ErrorFraming::CLOSING;
            let written = s.write_error(502, "bad_gateway", "x", "rid", framing, LIMIT);
            (failed, written.await)
        });
        assert_eq!(failed, (true, false));
    }

    #[test]
    fn input_is_read_then_consumed_or_taken_by_the_request() {
        let (ours, mut peer) = socket_pair();
        peer.write_all(b"abcdef").unwrap();
        let (seen, taken, left) = on_worker(async move {
            let mut s = session(ours);
            assert!(!s.has_input());
            while s.input().len() < 6 {
                assert!(matches!(s.read(LIMIT).await, Ok(Ok(n)) if n > 0));
            }
            let seen = s.input().to_vec();
            s.consume_input(2);
            let mut taken = b">".to_vec();
            assert_eq!(s.take_input(3, &mut taken), 3);
            (seen, taken, s.input().to_vec())
        });
        assert_eq!(
            (&seen[..], &taken[..], &left[..]),
            (&b"abcdef"[..], &b">cde"[..], &b"f"[..])
        );
    }

    #[test]
    fn a_read_ends_at_its_limit_and_at_the_clients_close() {
        let (ours, peer) = socket_pair();
        let (waited, closed) = on_worker(async move {
            let mut s = session(ours);
            let started = std::time::Instant::now();
            let waited = s.read(Duration::from_millis(200)).await;
            // Deadlines keep the worker's clock, read once per turn.
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(150) && took < LIMIT,
                "{took:?}"
            );
            drop(peer);
            (waited.map(|r| r.ok()), s.read(LIMIT).await.map(|r| r.ok()))
        });
        assert_eq!(waited, Err(Interrupted::Elapsed));
        assert_eq!(closed, Ok(Some(0)));
    }

    /// A refused client still sending its body reads the whole answer, then
    /// the end, not a reset that could destroy the answer.
    #[test]
    fn after_a_refusal_the_client_reads_the_answer_then_the_end() {
        let (ours, mut peer) = socket_pair();
        let client = std::thread::spawn(move || {
            let _ = peer.write_all(&[b'x'; 64 * 1024]);
            read_to_end(&mut peer)
        });
        on_worker(async move {
            let mut s = session(ours);
            let framing = codec::ErrorFraming::CLOSING;
            let msg = "request body is larger than 1 bytes";
            assert!(
                s.write_error(413, "payload_too_large", msg, "rid", framing, LIMIT)
                    .await
            );
            s.close_after_refusal().await;
        });
        let all = String::from_utf8(client.join().unwrap()).unwrap();
        assert!(all.starts_with("HTTP/1.1 413 "), "{all}");
        let body = all.split_once("\r\n\r\n").unwrap().1;
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "payload_too_large");
        assert_eq!(v["error"]["request_id"], "rid");
    }

    const LIMIT: Duration = Duration::from_secs(5);
}
