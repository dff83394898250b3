//! Answers kept for replay (`Idempotency-Key`, [`crate::idempotency`]):
//! the tap that copies an instance's answer as it goes to the client, and
//! the writer that replays a stored one.
//!
//! What is kept is what makes the answer (status, reason, end-to-end
//! header fields, body), not the bytes framed for one client: a replay is
//! framed for the client asking now (its request id, HTTP version,
//! keep-alive) by content length, with `idempotent-replayed: true`.

use super::Session;
use crate::http::codec::{self, AnswerTo};
use serde::{Deserialize, Serialize};
use shared::http1::{is_hop_by_hop, Framing, ResponseHead};
use std::io::Write as _;
use std::time::Duration;

/// An instance's answer as stored: replayed byte for byte. Head and body
/// share one buffer (one allocation per stored answer, one to free when it
/// is evicted); in the etcd store's JSON they are two base64 strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "AnswerJson", try_from = "AnswerJson")]
pub(crate) struct StoredAnswer {
    pub(crate) status: u16,
    /// The status line and the end-to-end field lines, each ending CRLF
    /// (no framing, connection or request id fields, no blank line), then
    /// the body.
    bytes: Vec<u8>,
    head_len: usize,
}

impl StoredAnswer {
    pub(crate) fn new(status: u16, head: &[u8], body: &[u8]) -> StoredAnswer {
        StoredAnswer {
            status,
            bytes: [head, body].concat(),
            head_len: head.len(),
        }
    }

    pub(crate) fn head(&self) -> &[u8] {
        &self.bytes[..self.head_len]
    }

    pub(crate) fn body(&self) -> &[u8] {
        &self.bytes[self.head_len..]
    }

    /// Bytes it holds, as the memory store counts them.
    pub(crate) fn size(&self) -> usize {
        self.bytes.len()
    }
}

/// A stored answer in the etcd store's JSON.
#[derive(Serialize, Deserialize)]
struct AnswerJson {
    status: u16,
    #[serde(with = "base64_bytes")]
    head: Vec<u8>,
    #[serde(with = "base64_bytes")]
    body: Vec<u8>,
}

impl From<StoredAnswer> for AnswerJson {
    fn from(a: StoredAnswer) -> AnswerJson {
        let (head, body) = (a.head().to_vec(), a.body().to_vec());
        AnswerJson {
            status: a.status,
            head,
            body,
        }
    }
}

impl From<AnswerJson> for StoredAnswer {
    fn from(j: AnswerJson) -> StoredAnswer {
        StoredAnswer::new(j.status, &j.head, &j.body)
    }
}

/// What the tap saw of one answer.
#[derive(Debug)]
pub(crate) struct Captured {
    /// The answer, if one began and its body fitted the limit.
    pub(crate) answer: Option<StoredAnswer>,
    /// Status of the instance's answer (0: none began).
    pub(crate) status: u16,
    /// The whole body went through (by its length, or its last chunk).
    pub(crate) complete: bool,
    /// Body bytes seen, kept or not.
    pub(crate) body_bytes: u64,
    /// The body was larger than the limit: not kept.
    pub(crate) over_limit: bool,
}

/// Copies the answer being relayed (see [`Session::start_tap`]).
#[derive(Debug)]
pub(crate) struct Tap {
    limit: usize,
    status: u16,
    /// The head as kept, then the body kept so far.
    bytes: Vec<u8>,
    head_len: usize,
    framing: Option<Framing>,
    body_bytes: u64,
    ended: bool,
}

impl Tap {
    /// A tap that keeps at most `limit` body bytes.
    fn new(limit: usize) -> Tap {
        Tap {
            limit,
            status: 0,
            bytes: Vec::new(),
            head_len: 0,
            framing: None,
            body_bytes: 0,
            ended: false,
        }
    }

    /// The instance's answer head, as kept: every field the client gets
    /// from the instance, none the gateway frames per connection.
    pub(super) fn head(&mut self, raw: &[u8], head: &ResponseHead) {
        self.status = head.status;
        self.framing = Some(head.framing);
        // One allocation: at most the instance's head, then a body of the
        // length it declares, if that is within the limit.
        let body = match head.framing {
            Framing::Length(n) if n <= self.limit as u64 => n as usize,
            _ => 0,
        };
        let out = &mut self.bytes;
        out.clear();
        out.reserve(head.len + body);
        codec::status_line(out, raw, head);
        for h in &head.headers {
            let name = &raw[h.name.clone()];
            if is_hop_by_hop(name)
                || head.is_connection_token(raw, name)
                || name.eq_ignore_ascii_case(b"content-length")
                || name.eq_ignore_ascii_case(b"x-request-id")
            {
                continue;
            }
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(&raw[h.value.clone()]);
            out.extend_from_slice(b"\r\n");
        }
        self.head_len = out.len();
    }

    /// Body bytes on their way to the client; kept while within the limit.
    pub(super) fn body(&mut self, data: &[u8]) {
        self.body_bytes += data.len() as u64;
        if self.body_bytes <= self.limit as u64 {
            self.bytes.extend_from_slice(data);
        }
    }

    /// The last chunk went out: the body is whole.
    pub(super) fn ended(&mut self) {
        self.ended = true;
    }

    fn captured(self) -> Captured {
        let complete = match self.framing {
            None => false,
            Some(Framing::Empty) => true,
            Some(Framing::Length(n)) => self.body_bytes == n,
            Some(Framing::Chunked | Framing::UntilClose) => self.ended,
        };
        let over_limit = self.body_bytes > self.limit as u64;
        let answer = (self.framing.is_some() && !over_limit).then_some(StoredAnswer {
            status: self.status,
            bytes: self.bytes,
            head_len: self.head_len,
        });
        Captured {
            answer,
            status: self.status,
            complete,
            body_bytes: self.body_bytes,
            over_limit,
        }
    }
}

/// The header that marks a replayed answer.
pub(crate) const REPLAYED: &[u8] = b"idempotent-replayed: true\r\n";

impl Session {
    /// Copies the next answer relayed to this client (its body up to
    /// `limit` bytes), until [`Session::take_tap`].
    pub(crate) fn start_tap(&mut self, limit: usize) {
        self.tap = Some(Box::new(Tap::new(limit)));
    }

    /// What the tap saw; the tap is removed.
    pub(crate) fn take_tap(&mut self) -> Option<Captured> {
        self.tap.take().map(|t| t.captured())
    }

    /// Replays `stored` to this client, marked `idempotent-replayed: true`;
    /// whether the connection stays open after it.
    pub(crate) async fn write_stored(
        &mut self,
        stored: &StoredAnswer,
        to: AnswerTo<'_>,
        limit: Duration,
    ) -> std::io::Result<bool> {
        self.out.clear();
        self.out.extend_from_slice(stored.head());
        self.out.extend_from_slice(REPLAYED);
        let _ = write!(self.out, "x-request-id: {}\r\n", to.request_id);
        let bodiless = stored.status < 200 || stored.status == 204 || stored.status == 304;
        if !bodiless {
            let _ = write!(self.out, "content-length: {}\r\n", stored.body().len());
        }
        if !to.keep_alive {
            self.out.extend_from_slice(b"connection: close\r\n");
        } else if to.client_minor == 0 {
            self.out.extend_from_slice(b"connection: keep-alive\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        if !to.head_request && !bodiless {
            self.out.extend_from_slice(stored.body());
        }
        self.write_out(limit).await?;
        Ok(to.keep_alive)
    }
}

/// Bytes as base64 strings in JSON (the etcd store's records).
mod base64_bytes {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        B64.decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::test_support::{on_worker, read_to_end, session, socket_pair};
    use shared::http1::parse_response;

    const ANSWER: &[u8] = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\nx-request-id: first\r\nconnection: keep-alive\r\nx-served-by: a:1\r\ncontent-length: 4\r\n\r\n";

    fn tapped(limit: usize, body: &[&[u8]]) -> Captured {
        let mut head = ResponseHead::default();
        assert!(parse_response(ANSWER, &mut head, 4096, false).unwrap());
        let mut tap = Tap::new(limit);
        tap.head(ANSWER, &head);
        for b in body {
            tap.body(b);
        }
        tap.captured()
    }

    #[test]
    fn the_tap_keeps_end_to_end_fields_and_the_whole_body() {
        let c = tapped(100, &[b"{}", b"{}"]);
        assert!(c.complete && !c.over_limit);
        let a = c.answer.unwrap();
        assert_eq!(a.status, 201);
        assert_eq!(
            String::from_utf8(a.head().to_vec()).unwrap(),
            "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\nx-served-by: a:1\r\n"
        );
        assert_eq!(a.body(), b"{}{}");
    }

    #[test]
    fn a_body_cut_short_is_incomplete_and_one_over_the_limit_is_not_kept() {
        assert!(!tapped(100, &[b"{}"]).complete);
        let over = tapped(3, &[b"{}", b"{}"]);
        assert!(over.complete && over.over_limit && over.answer.is_none());
        assert_eq!(over.body_bytes, 4);
    }

    #[test]
    fn a_replay_is_framed_for_its_client_and_marked() {
        let stored = StoredAnswer::new(
            201,
            b"HTTP/1.1 201 Created\r\nx-served-by: a:1\r\n",
            b"{\"ok\":1}",
        );
        let (ours, mut peer) = socket_pair();
        let reader = std::thread::spawn(move || read_to_end(&mut peer));
        on_worker(async move {
            let mut s = session(ours);
            let to = AnswerTo {
                request_id: "second",
                client_minor: 1,
                keep_alive: false,
                head_request: false,
            };
            assert!(!s
                .write_stored(&stored, to, Duration::from_secs(1))
                .await
                .unwrap());
        });
        let read = String::from_utf8(reader.join().unwrap()).unwrap();
        assert_eq!(
            read,
            "HTTP/1.1 201 Created\r\nx-served-by: a:1\r\nidempotent-replayed: true\r\nx-request-id: second\r\ncontent-length: 8\r\nconnection: close\r\n\r\n{\"ok\":1}"
        );
    }
}
