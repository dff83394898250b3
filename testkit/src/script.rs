//! What a scripted instance ([`crate::raw::RawInstance`]) answers: well-behaved
//! answers, and every way an attacker controlling an instance can answer
//! wrongly (stray answers, malformed framing, cut or reset answers, wrong
//! request ids, oversized heads, slow drips).
//!
//! A script has a name (`Script::name`, `Script::from_name`), so a test can
//! choose one per request with the request header `x-script: <name>`.

use std::time::Duration;

/// What the instance does with a business request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Script {
    /// Echo the body with a Content-Length (and the request's `x-request-id`).
    Echo,
    /// Echo the body as a chunked answer, in pieces of this size.
    ChunkedEcho(usize),
    /// Answer this many bytes of `x`, written in 64 KiB pieces.
    Big(usize),
    /// Read the request, then close without a byte of answer.
    Close,
    /// Read the request and never answer (the connection stays open until the
    /// peer closes it).
    Hang,
    /// Send a head promising 100 bytes, then 10 of them, then close.
    HalfAnswer,
    /// Echo with a Content-Length, then close the connection (an instance
    /// with a very short keep-alive timeout).
    EchoThenClose,
    /// Echo without a length: the body ends when the connection closes.
    EchoUntilClose,
    /// Send these bytes as the whole answer.
    Fixed(Vec<u8>),
    /// Answer this status with a small JSON body.
    Status(u16),
    /// Echo, then after this delay a second complete answer nobody asked for
    /// (a [stray](crate::raw::Stray)), on the same connection.
    StrayAfter(Duration),
    /// Echo as a chunked answer, then after this delay a stray answer.
    StrayAfterChunked(Duration),
    /// Echo and a stray answer in one write.
    StrayInSameWrite,
    /// `100 Continue`, `103 Early Hints` and the echo, all in one write.
    Interim,
    /// An echo with two differing Content-Length fields.
    DuplicateLength,
    /// An echo with both Content-Length and `Transfer-Encoding: chunked`.
    LengthAndChunked,
    /// An echo whose length is written `+N`.
    PlusLength,
    /// An unsolicited `101 Switching Protocols`, then the body.
    SwitchingProtocols,
    /// HTTP/0.9: the body with no status line, then close.
    Http09,
    /// Like [`Script::HalfAnswer`], but the connection is reset (RST), not closed.
    HalfAnswerReset,
    /// An echo whose `x-request-id` is not the one the request carried.
    WrongRequestId,
    /// An echo without `x-request-id`.
    NoRequestId,
    /// A chunked echo with trailer fields.
    Trailers,
    /// An echo whose head is over 64 KiB (one long header field).
    HugeHead,
    /// An echo with a header value holding bytes above 0x7F.
    HighByte,
    /// An echo written one byte at a time, this long apart.
    Drip(Duration),
}

/// What the instance does once it has read a request.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Write these bytes and keep serving the connection.
    Write(Vec<u8>),
    /// Write these bytes, then close (FIN).
    WriteThenClose(Vec<u8>),
    /// Write these bytes, then reset the connection (RST).
    WriteThenReset(Vec<u8>),
    /// Write these bytes (an answer and a stray after it) and keep serving.
    WriteWithStray(Vec<u8>),
    /// Write `now`; after `delay`, write `stray` too; keep serving meanwhile.
    WriteThenStray {
        now: Vec<u8>,
        delay: Duration,
        stray: Vec<u8>,
    },
    /// Write these bytes one at a time, `delay` apart.
    Drip(Vec<u8>, Duration),
    /// An answer of this many body bytes, written in pieces.
    Big(usize),
    /// Never answer.
    Hang,
}

/// What an answer is made from: the request and who answers.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub body: &'a [u8],
    /// The request's `x-request-id`, if it carried one.
    pub id: Option<&'a str>,
    pub port: u16,
    /// This instance's stray counter, so every stray body is unique.
    pub stray_seq: u64,
}

impl Script {
    /// The name `x-script` selects it by, parameters after a colon
    /// (`stray-after:50` is 50 ms, `drip:2` 2 ms a byte).
    pub fn name(&self) -> String {
        let ms = |d: &Duration| d.as_millis();
        match self {
            Script::Echo => "echo".into(),
            Script::ChunkedEcho(n) => format!("chunked-echo:{n}"),
            Script::Big(n) => format!("big:{n}"),
            Script::Close => "close".into(),
            Script::Hang => "hang".into(),
            Script::HalfAnswer => "half".into(),
            Script::EchoThenClose => "echo-then-close".into(),
            Script::EchoUntilClose => "echo-until-close".into(),
            Script::Fixed(_) => "fixed".into(),
            Script::Status(code) => format!("status:{code}"),
            Script::StrayAfter(d) => format!("stray-after:{}", ms(d)),
            Script::StrayAfterChunked(d) => format!("stray-after-chunked:{}", ms(d)),
            Script::StrayInSameWrite => "stray-same-write".into(),
            Script::Interim => "interim".into(),
            Script::DuplicateLength => "duplicate-length".into(),
            Script::LengthAndChunked => "length-and-chunked".into(),
            Script::PlusLength => "plus-length".into(),
            Script::SwitchingProtocols => "switching-protocols".into(),
            Script::Http09 => "http09".into(),
            Script::HalfAnswerReset => "half-reset".into(),
            Script::WrongRequestId => "wrong-request-id".into(),
            Script::NoRequestId => "no-request-id".into(),
            Script::Trailers => "trailers".into(),
            Script::HugeHead => "huge-head".into(),
            Script::HighByte => "high-byte".into(),
            Script::Drip(d) => format!("drip:{}", ms(d)),
        }
    }

    /// The script named `name` (see [`Script::name`]); `Fixed` has no name.
    pub fn from_name(name: &str) -> Option<Script> {
        let (word, arg) = name.split_once(':').unwrap_or((name, ""));
        let num = || arg.parse::<u64>().ok();
        let ms = || num().map(Duration::from_millis);
        Some(match word {
            "echo" => Script::Echo,
            "chunked-echo" => Script::ChunkedEcho(num()? as usize),
            "big" => Script::Big(num()? as usize),
            "close" => Script::Close,
            "hang" => Script::Hang,
            "half" => Script::HalfAnswer,
            "echo-then-close" => Script::EchoThenClose,
            "echo-until-close" => Script::EchoUntilClose,
            "status" => Script::Status(u16::try_from(num()?).ok()?),
            "stray-after" => Script::StrayAfter(ms()?),
            "stray-after-chunked" => Script::StrayAfterChunked(ms()?),
            "stray-same-write" => Script::StrayInSameWrite,
            "interim" => Script::Interim,
            "duplicate-length" => Script::DuplicateLength,
            "length-and-chunked" => Script::LengthAndChunked,
            "plus-length" => Script::PlusLength,
            "switching-protocols" => Script::SwitchingProtocols,
            "http09" => Script::Http09,
            "half-reset" => Script::HalfAnswerReset,
            "wrong-request-id" => Script::WrongRequestId,
            "no-request-id" => Script::NoRequestId,
            "trailers" => Script::Trailers,
            "huge-head" => Script::HugeHead,
            "high-byte" => Script::HighByte,
            "drip" => Script::Drip(ms()?),
            _ => return None,
        })
    }

    /// Whether a request answered this way has been given a complete,
    /// well-formed answer of its own (200 with its body echoed), so any other
    /// outcome at the client is the gateway's error.
    pub fn answers_well(&self) -> bool {
        matches!(
            self,
            Script::Echo
                | Script::ChunkedEcho(_)
                | Script::EchoThenClose
                | Script::Trailers
                | Script::HighByte
                | Script::Interim
        )
    }

    pub(crate) fn plan(&self, cx: &Ctx<'_>) -> Plan {
        let plain = || echo(cx, "", &id_header(cx.id));
        match self {
            Script::Echo => Plan::Write(plain()),
            Script::ChunkedEcho(piece) => Plan::Write(chunked(cx, *piece, "", "")),
            Script::Big(n) => Plan::Big(*n),
            Script::Close => Plan::WriteThenClose(Vec::new()),
            Script::Hang => Plan::Hang,
            Script::HalfAnswer => Plan::WriteThenClose(half()),
            Script::EchoThenClose => Plan::WriteThenClose(plain()),
            Script::EchoUntilClose => {
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{}\r\n",
                    id_header(cx.id)
                )
                .into_bytes();
                out.extend_from_slice(cx.body);
                Plan::WriteThenClose(out)
            }
            Script::Fixed(bytes) => Plan::Write(bytes.clone()),
            Script::Status(code) => Plan::Write(status(*code)),
            Script::StrayAfter(delay) => Plan::WriteThenStray {
                now: plain(),
                delay: *delay,
                stray: stray(cx),
            },
            Script::StrayAfterChunked(delay) => Plan::WriteThenStray {
                now: chunked(cx, 5, "", ""),
                delay: *delay,
                stray: stray(cx),
            },
            Script::StrayInSameWrite => {
                let mut out = plain();
                out.extend_from_slice(&stray(cx));
                Plan::WriteWithStray(out)
            }
            Script::Interim => {
                let mut out = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>; rel=preload\r\n\r\n".to_vec();
                out.extend_from_slice(&plain());
                Plan::Write(out)
            }
            Script::DuplicateLength => Plan::Write(with_length(
                cx,
                &format!(
                    "content-length: {}\r\ncontent-length: {}\r\n",
                    cx.body.len(),
                    cx.body.len() + 1
                ),
            )),
            Script::LengthAndChunked => Plan::Write(chunked(
                cx,
                4,
                &format!("content-length: {}\r\n", cx.body.len()),
                "",
            )),
            Script::PlusLength => Plan::Write(with_length(
                cx,
                &format!("content-length: +{}\r\n", cx.body.len()),
            )),
            Script::SwitchingProtocols => {
                let mut out = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n".to_vec();
                out.extend_from_slice(cx.body);
                Plan::Write(out)
            }
            Script::Http09 => Plan::WriteThenClose(cx.body.to_vec()),
            Script::HalfAnswerReset => Plan::WriteThenReset(half()),
            Script::WrongRequestId => {
                let wrong = format!("x-request-id: not-{}\r\n", cx.id.unwrap_or("any"));
                Plan::Write(echo_with(cx, &wrong))
            }
            Script::NoRequestId => Plan::Write(echo_with(cx, "")),
            Script::Trailers => Plan::Write(chunked(
                cx,
                6,
                "trailer: x-checksum\r\n",
                "x-checksum: 0123abcd\r\nx-more: 1\r\n",
            )),
            Script::HugeHead => {
                let big = format!("x-big: {}\r\n", "a".repeat(70 * 1024));
                Plan::Write(echo(cx, &big, &id_header(cx.id)))
            }
            Script::HighByte => {
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}x-note: caf",
                    cx.body.len(),
                    id_header(cx.id)
                )
                .into_bytes();
                out.extend_from_slice(b"\xc3\xa9 \xff\r\n\r\n");
                out.extend_from_slice(cx.body);
                Plan::Write(out)
            }
            Script::Drip(delay) => Plan::Drip(plain(), *delay),
        }
    }
}

fn id_header(id: Option<&str>) -> String {
    id.map(|id| format!("x-request-id: {id}\r\n"))
        .unwrap_or_default()
}

/// An echo with a Content-Length, `extra` header lines and the id header.
fn echo(cx: &Ctx<'_>, extra: &str, id: &str) -> Vec<u8> {
    with_length(
        cx,
        &format!("content-length: {}\r\n{extra}{id}", cx.body.len()),
    )
}

/// An echo whose only id header is `id` (which may be empty or wrong).
fn echo_with(cx: &Ctx<'_>, id: &str) -> Vec<u8> {
    echo(cx, "", id)
}

/// A 200 head with these framing `lines`, then the body as it came.
fn with_length(cx: &Ctx<'_>, lines: &str) -> Vec<u8> {
    let mut out =
        format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{lines}\r\n").into_bytes();
    out.extend_from_slice(cx.body);
    out
}

/// A chunked echo in pieces of `piece` bytes, with `extra` head lines and
/// `trailers` (each line ending CRLF).
fn chunked(cx: &Ctx<'_>, piece: usize, extra: &str, trailers: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{extra}{}transfer-encoding: chunked\r\n\r\n",
        id_header(cx.id)
    )
    .into_bytes();
    for part in cx.body.chunks(piece.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("0\r\n{trailers}\r\n").as_bytes());
    out
}

/// A head promising 100 bytes and 10 of them.
fn half() -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial\"".to_vec()
}

fn status(code: u16) -> Vec<u8> {
    let body = format!("{{\"status\":{code}}}");
    format!(
        "HTTP/1.1 {code} Whatever\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The body of the stray answer this context would send: it names the
/// instance and the request it followed, and is unique per instance.
pub(crate) fn stray_body(cx: &Ctx<'_>) -> Vec<u8> {
    format!(
        r#"{{"stray": true, "from": {}, "after": "{}", "n": {}}}"#,
        cx.port,
        cx.id.unwrap_or("-"),
        cx.stray_seq
    )
    .into_bytes()
}

/// A complete 200 answer nobody asked for. It carries the id of the request
/// it follows, as a replayed answer would.
fn stray(cx: &Ctx<'_>) -> Vec<u8> {
    let body = stray_body(cx);
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n",
        body.len(),
        id_header(cx.id)
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_script_reads_back_from_its_name() {
        let all = [
            Script::Echo,
            Script::ChunkedEcho(7),
            Script::Big(9),
            Script::Close,
            Script::Hang,
            Script::HalfAnswer,
            Script::EchoThenClose,
            Script::EchoUntilClose,
            Script::Status(503),
            Script::StrayAfter(Duration::from_millis(40)),
            Script::StrayAfterChunked(Duration::from_millis(3)),
            Script::StrayInSameWrite,
            Script::Interim,
            Script::DuplicateLength,
            Script::LengthAndChunked,
            Script::PlusLength,
            Script::SwitchingProtocols,
            Script::Http09,
            Script::HalfAnswerReset,
            Script::WrongRequestId,
            Script::NoRequestId,
            Script::Trailers,
            Script::HugeHead,
            Script::HighByte,
            Script::Drip(Duration::from_millis(2)),
        ];
        for script in all {
            assert_eq!(Script::from_name(&script.name()), Some(script.clone()));
        }
        assert_eq!(Script::from_name("nonsense"), None);
        assert_eq!(Script::from_name("drip:x"), None);
    }
}
