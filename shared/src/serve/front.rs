//! Reads one request off a connection and turns it into an
//! `http_types::Request` that tide can take without panicking.
//!
//! async-h1 hands bytes to http-types calls that `unwrap` on what they cannot
//! represent (a header value above 0x7F, an unknown method, a target that is
//! not a URL). Here every part of the head is checked first: the strict
//! codec of [`crate::http1`] for syntax and framing, then the method, the
//! target and the Host against what http-types accepts. What fails is
//! refused with a status and a message, before tide sees anything.

use crate::http1::{parse_request, ChunkedDecoder, Framing, ReadBuf, RequestHead};
use futures_lite::{AsyncRead, AsyncReadExt};
use http_types::headers::{HeaderName, HeaderValue};
use http_types::{Method, Request, Url, Version};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Instant;

/// Why a request is not served: the status and message to answer, or nothing
/// to answer at all.
#[derive(Debug)]
pub enum Refusal {
    /// Answer this status with the JSON error body, then close.
    Answer(u16, Cow<'static, str>),
    /// The client went away, or the socket failed: close without a word.
    Gone,
}

impl Refusal {
    fn bad(message: impl Into<Cow<'static, str>>) -> Self {
        Refusal::Answer(400, message.into())
    }
}

/// Reads once more into `buf`, by `deadline`: `Ok(false)` at end of stream.
pub async fn fill_by<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut ReadBuf,
    deadline: Instant,
) -> Result<bool, Timeout> {
    let left = deadline.saturating_duration_since(Instant::now());
    match async_std::future::timeout(left, buf.fill(io)).await {
        Ok(Ok(n)) => Ok(n > 0),
        Ok(Err(_)) => Ok(false),
        Err(_) => Err(Timeout),
    }
}

/// A deadline passed.
#[derive(Debug)]
pub struct Timeout;

/// Reads until `buf` starts with a whole request head, parsed into `head`.
pub async fn read_head<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut ReadBuf,
    head: &mut RequestHead,
    max_head: usize,
    deadline: Instant,
) -> Result<(), Refusal> {
    let mut scanned = 0;
    loop {
        // Parse only once the blank line is there (or the limit is reached):
        // a head dribbled a byte at a time is then not parsed once per byte.
        if head_may_be_complete(buf.data(), scanned) || buf.len() >= max_head {
            match parse_request(buf.data(), head, max_head) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(Refusal::Answer(e.status(), e.message().into())),
            }
        }
        scanned = buf.len();
        match fill_by(io, buf, deadline).await {
            Ok(true) => {}
            Ok(false) => return Err(Refusal::Gone),
            Err(Timeout) => {
                return Err(Refusal::Answer(
                    408,
                    "the request head did not arrive within header_timeout".into(),
                ))
            }
        }
    }
}

/// Whether `data` holds an empty line, looking at what came after `scanned`.
fn head_may_be_complete(data: &[u8], scanned: usize) -> bool {
    let from = scanned.saturating_sub(3);
    let tail = &data[from.min(data.len())..];
    tail.windows(2)
        .enumerate()
        .any(|(i, w)| w == b"\n\n" || (w == b"\n\r" && tail.get(i + 2) == Some(&b'\n')))
}

/// Builds the request tide will see from a parsed head, or refuses it.
pub fn build(
    buf: &[u8],
    head: &RequestHead,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    secure: bool,
) -> Result<Request, Refusal> {
    let method = method(head.method(buf))?;
    let url = url(buf, head, local, if secure { "https" } else { "http" })?;
    let mut req = Request::new(method, url);
    req.set_version(Some(if head.minor_version == 0 {
        Version::Http1_0
    } else {
        Version::Http1_1
    }));
    req.set_peer_addr(peer);
    req.set_local_addr(local);
    for h in &head.headers {
        // parse_request let through only token names and ASCII values; the
        // fallible constructors keep it that way should that ever change.
        let name = HeaderName::from_bytes(buf[h.name.clone()].to_vec())
            .map_err(|_| Refusal::bad("invalid header name"))?;
        let value = HeaderValue::from_bytes(buf[h.value.clone()].to_vec())
            .map_err(|_| Refusal::bad("invalid byte in a header value"))?;
        req.append_header(name, value);
    }
    Ok(req)
}

/// The method, if http-types knows it by exactly this name (methods are
/// case-sensitive; http-types would take `get` for GET).
fn method(bytes: &[u8]) -> Result<Method, Refusal> {
    Ok(match bytes {
        b"GET" => Method::Get,
        b"POST" => Method::Post,
        b"PUT" => Method::Put,
        b"DELETE" => Method::Delete,
        b"HEAD" => Method::Head,
        b"OPTIONS" => Method::Options,
        b"PATCH" => Method::Patch,
        other => {
            let known = std::str::from_utf8(other)
                .ok()
                .and_then(|s| Method::from_str(s).ok().filter(|m| m.as_ref() == s));
            known.ok_or(Refusal::Answer(501, "unknown request method".into()))?
        }
    })
}

/// `http://<Host or the local address><target>`, refused unless the target
/// is a visible-ASCII path and the Host a plain `host[:port]`, so neither can
/// move what tide routes on (`Host: x/chaos?` must not reach `/chaos`). An
/// absolute-form target's authority takes the place of Host (RFC 9112
/// section 3.2.2), under the same rule.
fn url(
    buf: &[u8],
    head: &RequestHead,
    local: Option<SocketAddr>,
    scheme: &str,
) -> Result<Url, Refusal> {
    let target = head.target(buf);
    let absolute = head.authority(buf);
    let path_less = absolute.is_some() && !target.starts_with(b"/");
    if !target.starts_with(b"/") && !path_less {
        return Err(Refusal::bad("request target must be a path"));
    }
    if !target.iter().all(|b| (0x21..0x7f).contains(b)) {
        return Err(Refusal::bad(
            "request target has a byte outside visible ASCII",
        ));
    }
    let host = absolute.unwrap_or_else(|| head.header(buf, "host").unwrap_or_default());
    if !host.iter().all(|b| is_authority_byte(*b)) {
        return Err(Refusal::bad("Host is not host[:port]"));
    }
    // Both are visible ASCII by now.
    let target = String::from_utf8_lossy(target);
    let slash = if path_less { "/" } else { "" };
    let text = match (host.is_empty(), local) {
        (false, _) => format!(
            "{scheme}://{}{slash}{target}",
            String::from_utf8_lossy(host)
        ),
        (true, Some(local)) => format!("{scheme}://{local}{slash}{target}"),
        (true, None) => format!("{scheme}://localhost{slash}{target}"),
    };
    Url::parse(&text).map_err(|e| Refusal::bad(format!("Host or request target: {e}")))
}

/// Bytes of `host [":" port]` (RFC 3986 reg-name, IP literals, port); no
/// `/`, `?`, `#`, `@` or `\` that would end or reinterpret the authority.
fn is_authority_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b'%'
                | b':'
                | b'['
                | b']'
        )
}

/// Reads the body `framing` announces, within `max` bytes and by `deadline`.
pub async fn read_body<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut ReadBuf,
    framing: Framing,
    max: usize,
    deadline: Instant,
) -> Result<Vec<u8>, Refusal> {
    match framing {
        Framing::Empty | Framing::UntilClose => Ok(Vec::new()),
        Framing::Length(n) => {
            let n = usize::try_from(n)
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| too_large(max))?;
            read_exact_body(io, buf, n, deadline).await
        }
        Framing::Chunked => read_chunked(io, buf, max, deadline).await,
    }
}

/// The answer when the body is over the limit.
pub fn too_large(max: usize) -> Refusal {
    Refusal::Answer(
        413,
        format!("request body is larger than {max} bytes").into(),
    )
}

fn body_timeout() -> Refusal {
    Refusal::Answer(
        408,
        "the request body did not arrive within body_timeout".into(),
    )
}

async fn read_exact_body<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut ReadBuf,
    n: usize,
    deadline: Instant,
) -> Result<Vec<u8>, Refusal> {
    // Memory follows the bytes that arrive, not what the client declared.
    let mut body = Vec::with_capacity(n.min(64 * 1024));
    buf.take_into(n, &mut body);
    while body.len() < n {
        let left = n - body.len();
        if left >= 4096 {
            // A large remainder goes straight into the body, never past it:
            // bytes of a pipelined next request stay in the socket.
            let start = body.len();
            body.resize(start + left.min(64 * 1024), 0);
            let read = async_std::future::timeout(
                deadline.saturating_duration_since(Instant::now()),
                io.read(&mut body[start..]),
            )
            .await;
            match read {
                Ok(Ok(got)) if got > 0 => body.truncate(start + got),
                Ok(_) => return Err(Refusal::Gone),
                Err(_) => return Err(body_timeout()),
            }
        } else {
            match fill_by(io, buf, deadline).await {
                Ok(true) => {
                    buf.take_into(n - body.len(), &mut body);
                }
                Ok(false) => return Err(Refusal::Gone),
                Err(Timeout) => return Err(body_timeout()),
            }
        }
    }
    Ok(body)
}

async fn read_chunked<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut ReadBuf,
    max: usize,
    deadline: Instant,
) -> Result<Vec<u8>, Refusal> {
    let mut decoder = ChunkedDecoder::new();
    let mut body = Vec::new();
    loop {
        let used = decoder
            .decode(buf.data(), Some(&mut body))
            .map_err(|e| Refusal::bad(format!("malformed chunked body: {e}")))?;
        buf.consume(used);
        if decoder.total() > max as u64 {
            return Err(too_large(max));
        }
        if decoder.is_done() {
            return Ok(body);
        }
        match fill_by(io, buf, deadline).await {
            Ok(true) => {}
            Ok(false) => return Err(Refusal::Gone),
            Err(Timeout) => return Err(body_timeout()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(text: &[u8]) -> Result<Request, Refusal> {
        let mut head = RequestHead::default();
        assert_eq!(parse_request(text, &mut head, 8192), Ok(true));
        build(text, &head, "127.0.0.1:9".parse().ok(), None, false)
    }

    fn status(r: Result<Request, Refusal>) -> u16 {
        match r {
            Ok(_) => 200,
            Err(Refusal::Answer(s, _)) => s,
            Err(Refusal::Gone) => 0,
        }
    }

    #[test]
    fn an_absolute_form_target_is_routed_by_its_path_and_authority() {
        let req = head_of(b"POST http://app:9/api/x?y=1 HTTP/1.1\r\nHost: other\r\n\r\n").unwrap();
        assert_eq!(req.url().as_str(), "http://app:9/api/x?y=1");
        let req = head_of(b"GET http://app:9 HTTP/1.1\r\nHost: app\r\n\r\n").unwrap();
        assert_eq!(req.url().path(), "/");
    }

    #[test]
    fn builds_what_tide_needs() {
        let req = head_of(b"POST /api/x?y=1 HTTP/1.1\r\nHost: gw:8000\r\nX-A: b\r\nX-A: c\r\n\r\n")
            .unwrap();
        assert_eq!(req.method(), Method::Post);
        assert_eq!(req.url().as_str(), "http://gw:8000/api/x?y=1");
        assert_eq!(req.header("x-a").unwrap().iter().count(), 2);
        let req = head_of(b"GET /health_check HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(req.url().as_str(), "http://127.0.0.1:9/health_check");
        assert_eq!(req.version(), Some(Version::Http1_0));
    }

    #[test]
    fn refuses_what_http_types_cannot_take() {
        let cases: [(&[u8], u16); 8] = [
            (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 501),
            (b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n", 501),
            (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET /api HTTP/1.1\r\nHost: x/chaos?\r\n\r\n", 400),
            (b"GET /api HTTP/1.1\r\nHost: u@x\r\n\r\n", 400),
            (b"GET /api HTTP/1.1\r\nHost: a:99999\r\n\r\n", 400),
            (b"GET /api HTTP/1.1\r\nHost: [[[::1\r\n\r\n", 400),
            (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ];
        for (text, want) in cases {
            assert_eq!(
                status(head_of(text)),
                want,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
        assert_eq!(
            status(head_of(b"PROPFIND /x HTTP/1.1\r\nHost: [::1]:80\r\n\r\n")),
            200
        );
    }

    #[test]
    fn an_empty_line_is_spotted_across_reads() {
        let text = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for cut in 0..text.len() {
            assert!(head_may_be_complete(text, cut), "cut at {cut}");
        }
        assert!(!head_may_be_complete(b"GET / HTTP/1.1\r\nHost: a\r\n", 0));
        assert!(head_may_be_complete(b"GET / HTTP/1.0\n\n", 10));
    }
}
