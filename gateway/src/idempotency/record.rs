//! A key's record: the fingerprint its first request had, where it stands,
//! and each try the gateway made of it; and the rule for what a finished
//! request leaves behind ([`settle`]).

use crate::http::session::stored::{Captured, StoredAnswer};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Where a key stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub(crate) enum State {
    /// Claimed by a gateway that is forwarding it now.
    InFlight,
    /// An instance answered it whole (not 5xx): replayed to every repeat.
    Completed { answer: StoredAnswer },
    /// Answered whole, but the body was over `max_stored_body`: executed,
    /// and not replayable.
    NotStored { status: u16, body_bytes: u64 },
    /// It may have run on an instance, and how it ended is not known (a 5xx,
    /// a cut or missing answer after it was sent, a timeout): never run again
    /// and never replayed as if it were the answer, until the ttl ends or an
    /// operator clears it.
    Unknown { why: String },
}

/// A SHA-256 digest: a record's id or a request's fingerprint. Kept as its
/// 32 bytes (no allocation, a cheap hash and compare in the memory store);
/// written as 64 lower-case hex digits in etcd's keys and JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct Digest(pub(crate) [u8; 32]);

impl Digest {
    pub(crate) fn hex(&self) -> String {
        hex(&self.0)
    }

    fn from_hex(text: &str) -> Option<Digest> {
        let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
        let bytes = text.as_bytes();
        let mut out = [0u8; 32];
        if bytes.len() != 64 {
            return None;
        }
        for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *o = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(Digest(out))
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex())
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Digest::from_hex(&text).ok_or_else(|| serde::de::Error::custom("a digest is 64 hex digits"))
    }
}

/// A key's record, as every store keeps it (JSON in etcd).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) fingerprint: Digest,
    #[serde(flatten)]
    pub(crate) state: State,
    /// When it was claimed, milliseconds since the epoch.
    pub(crate) since_ms: u64,
    /// The first request's id, for the log and operators.
    pub(crate) request_id: String,
    /// Random, made by the etcd store's claim: a claim retried after an
    /// answer that was lost (etcd applied it, the reply timed out) knows its
    /// own record from another gateway's, which the request id (a client may
    /// choose it) could not tell. Empty in the memory store, whose claim
    /// cannot be lost.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) token: String,
    /// Each try the gateway made: `host:port outcome`.
    #[serde(default)]
    pub(crate) tries: Vec<String>,
}

impl Record {
    /// What a repeat reads of a record in flight (its fingerprint, state and
    /// age), without what only the settled record keeps for operators (the
    /// request id, the tries): the memory store keeps this until the settle.
    pub(crate) fn in_flight(&self) -> Record {
        Record {
            fingerprint: self.fingerprint,
            state: State::InFlight,
            since_ms: self.since_ms,
            request_id: String::new(),
            token: String::new(),
            tries: Vec::new(),
        }
    }

    /// Bytes it holds, roughly, as the memory store bounds them.
    pub(crate) fn size(&self) -> usize {
        let state = match &self.state {
            State::Completed { answer } => answer.size(),
            State::Unknown { why } => why.len(),
            State::InFlight | State::NotStored { .. } => 0,
        };
        let tries: usize = self.tries.iter().map(|t| t.len() + 24).sum();
        128 + self.request_id.len() + self.token.len() + state + tries
    }
}

/// What a repeat of a key finds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Another request (method, target or body): 422.
    Mismatch,
    /// Still being forwarded: 409 with Retry-After.
    InFlight,
    Replay(StoredAnswer),
    NotStored {
        status: u16,
        body_bytes: u64,
    },
    /// 409, no Retry-After: trying again will not help.
    Unknown(String),
}

/// What `record` means to a request with `fingerprint`, at `now_ms`. An
/// in-flight record older than `stale_after` lost its gateway mid-request
/// (a crash, or a settle the store refused): its outcome is unknown.
pub(crate) fn seen(
    record: Record,
    fingerprint: &Digest,
    now_ms: u64,
    stale_after: Duration,
) -> Seen {
    if record.fingerprint != *fingerprint {
        return Seen::Mismatch;
    }
    match record.state {
        State::InFlight
            if now_ms.saturating_sub(record.since_ms) > stale_after.as_millis() as u64 =>
        {
            Seen::Unknown("its gateway stopped before the request finished".into())
        }
        State::InFlight => Seen::InFlight,
        State::Completed { answer } => Seen::Replay(answer),
        State::NotStored { status, body_bytes } => Seen::NotStored { status, body_bytes },
        State::Unknown { why } => Seen::Unknown(why),
    }
}

/// What a finished request leaves: a state to keep, or `None` to forget
/// the key (no instance can have run it, so a retry may run it).
///
/// - An instance's whole answer below 500: completed, stored for replay
///   (or kept as not stored when the body was over the limit). Except 408,
///   425 and 429, by which the instance says it did not process the request
///   and the client should try again: forgotten.
/// - A 5xx from an instance: unknown. It may have run the request before
///   failing, and replaying a 500 as if it were the answer would hide that.
/// - An answer that began and broke off: unknown (the instance has it).
/// - The gateway's own error (502, 504) after the request was sent: unknown.
/// - No try sent the request (connects refused, no instance, a local
///   shortage): forgotten.
pub(crate) fn settle(captured: Option<Captured>, sent: bool, status: u16) -> Option<State> {
    let answer = captured.filter(|c| c.status != 0);
    let Some(c) = answer else {
        return sent.then(|| State::Unknown {
            why: format!("the gateway answered {status} after the request was sent to an instance"),
        });
    };
    if c.status >= 500 {
        return Some(State::Unknown {
            why: format!("the instance answered {}", c.status),
        });
    }
    if !c.complete {
        return Some(State::Unknown {
            why: format!("the instance's {} answer did not arrive whole", c.status),
        });
    }
    if matches!(c.status, 408 | 425 | 429) {
        return None;
    }
    match c.answer {
        Some(answer) if !c.over_limit => Some(State::Completed { answer }),
        _ => Some(State::NotStored {
            status: c.status,
            body_bytes: c.body_bytes,
        }),
    }
}

/// Lower-case hex of `bytes` (by table: `write!` per byte cost 1.6 % of a
/// keyed request's CPU, bench/results-idempotency.md).
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_two_lower_case_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn a_digest_reads_back_from_its_hex_and_nothing_else_does() {
        let d = Digest([0x0f; 32]);
        assert_eq!(Digest::from_hex(&d.hex()), Some(d));
        assert_eq!(
            Digest::from_hex(&"0F".repeat(32)),
            Some(d),
            "upper case too"
        );
        assert_eq!(Digest::from_hex(&"0f".repeat(31)), None);
        assert_eq!(Digest::from_hex(&"zz".repeat(32)), None);
        assert_eq!(Digest::from_hex(&"é".repeat(32)), None);
    }

    fn answer(status: u16) -> StoredAnswer {
        StoredAnswer::new(status, format!("HTTP/1.1 {status} X\r\n").as_bytes(), b"{}")
    }

    fn captured(status: u16, complete: bool, over_limit: bool) -> Captured {
        Captured {
            answer: (!over_limit).then(|| answer(status)),
            status,
            complete,
            body_bytes: 2,
            over_limit,
        }
    }

    #[test]
    fn a_whole_answer_below_500_completes_and_is_stored() {
        for status in [200, 201, 302, 400, 404, 409, 422] {
            let got = settle(Some(captured(status, true, false)), true, status);
            assert_eq!(
                got,
                Some(State::Completed {
                    answer: answer(status)
                })
            );
        }
        let big = settle(Some(captured(200, true, true)), true, 200);
        assert_eq!(
            big,
            Some(State::NotStored {
                status: 200,
                body_bytes: 2
            })
        );
    }

    #[test]
    fn a_5xx_a_cut_answer_or_a_gateway_error_after_sending_is_unknown() {
        for got in [
            settle(Some(captured(500, true, false)), true, 500),
            settle(Some(captured(503, true, false)), true, 503),
            settle(Some(captured(200, false, false)), true, 200),
            settle(None, true, 504),
            settle(None, true, 502),
        ] {
            assert!(matches!(got, Some(State::Unknown { .. })), "{got:?}");
        }
    }

    #[test]
    fn nothing_sent_or_a_try_again_answer_forgets_the_key() {
        assert_eq!(settle(None, false, 502), None);
        assert_eq!(settle(None, false, 503), None);
        for status in [408, 425, 429] {
            assert_eq!(
                settle(Some(captured(status, true, false)), true, status),
                None
            );
        }
    }

    #[test]
    fn a_repeat_sees_mismatch_first_and_a_stale_flight_as_unknown() {
        let (f, g) = (Digest([1; 32]), Digest([2; 32]));
        let record = |state| Record {
            fingerprint: f,
            state,
            since_ms: 1_000,
            request_id: "r".into(),
            token: "t".into(),
            tries: Vec::new(),
        };
        let ttl = Duration::from_secs(10);
        assert_eq!(
            seen(record(State::InFlight), &g, 1_000, ttl),
            Seen::Mismatch
        );
        assert_eq!(
            seen(record(State::InFlight), &f, 5_000, ttl),
            Seen::InFlight
        );
        assert!(matches!(
            seen(record(State::InFlight), &f, 20_000, ttl),
            Seen::Unknown(_)
        ));
        let done = record(State::Completed {
            answer: answer(201),
        });
        assert_eq!(seen(done, &f, 20_000, ttl), Seen::Replay(answer(201)));
    }

    #[test]
    fn a_record_reads_back_from_its_json() {
        let r = Record {
            fingerprint: Digest([0xa5; 32]),
            state: State::Completed {
                answer: answer(201),
            },
            since_ms: 7,
            request_id: "r".into(),
            token: "t".into(),
            tries: vec!["127.0.0.1:1 answered".into()],
        };
        let json = serde_json::to_vec(&r).unwrap();
        assert_eq!(serde_json::from_slice::<Record>(&json).unwrap(), r);
    }
}
