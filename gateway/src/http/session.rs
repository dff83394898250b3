//! The client's end of a connection: its socket, what it sent and the gateway
//! has not consumed yet, the buffer answers are composed in, and the deadline
//! every wait of the connection keeps.
//!
//! This is the one place where the gateway's bytes meet a client's socket:
//! relayed answers ([`crate::proxy::forward`]), error answers ([`crate::proxy::failover`]),
//! refusals and `100 Continue` ([`crate::proxy::connection`]) all go through
//! [`Session::write`] or [`Session::write_out`]. A second protocol (HTTP/2)
//! would be a second session beside this one.

use crate::http::codec;
use crate::runtime::buffers;
use crate::runtime::deadline::{Deadline, Interrupted};
use crate::runtime::net::Stream;
use crate::observe::traffic::ClientTraffic;
use futures_lite::AsyncWriteExt;
use shared::http1::ReadBuf;
use shared::shutdown::Trigger;
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// What a wait for the client's bytes ended with: bytes read (0: it closed),
/// or why it was cut short.
pub(crate) type Read = Result<io::Result<usize>, Interrupted>;

/// How long a refused client may go on sending before the connection closes.
const LINGER: Duration = Duration::from_secs(1);

/// A client connection's socket, input, output buffer and deadline.
pub(crate) struct Session {
    stream: Stream,
    deadline: Arc<Deadline>,
    /// What the client sent that no request has consumed yet.
    pub(crate) input: ReadBuf,
    /// Answer heads and small answers on their way to the client.
    pub(crate) out: Vec<u8>,
    /// Where the bytes read and written are counted ([`crate::observe::traffic`]).
    traffic: Option<Arc<ClientTraffic>>,
}

impl Session {
    pub(crate) fn new(stream: Stream, deadline: Arc<Deadline>, buffer: usize) -> Self {
        let _ = stream.set_nodelay(true);
        Session {
            stream,
            deadline,
            input: ReadBuf::unallocated(buffer),
            out: Vec::new(),
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

    /// Writes `bytes` to the client within `limit`.
    pub(crate) async fn write(&mut self, bytes: &[u8], limit: Duration) -> io::Result<()> {
        let written = self
            .deadline
            .within(limit, self.stream.write_all(bytes))
            .await?;
        self.count_written(&written, bytes.len());
        written
    }

    /// Writes what was composed in [`Session::out`] within `limit`.
    pub(crate) async fn write_out(&mut self, limit: Duration) -> io::Result<()> {
        let written = self
            .deadline
            .within(limit, self.stream.write_all(&self.out))
            .await?;
        self.count_written(&written, self.out.len());
        written
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
        &self,
        idle: Duration,
        stop: &Trigger,
        grace: Duration,
    ) -> bool {
        let sent = || async {
            let mut byte = [0u8; 1];
            matches!(self.stream.peek(&mut byte).await, Ok(n) if n > 0)
        };
        match self.deadline.within_or_stop(idle, stop, sent()).await {
            Ok(sent) => sent,
            Err(Interrupted::Elapsed) => false,
            Err(Interrupted::Stopping) => {
                self.deadline.within(grace, sent()).await.unwrap_or(false)
            }
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
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
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
