//! What the gateway changes in a message on its way through.
//!
//! Requests: the target is normalized ([`crate::http::target`]) and a `Host` that
//! is not `host[:port]` refused; hop-by-hop headers (and those the client named in `Connection`)
//! are dropped, `X-Forwarded-For` gets the client's address appended,
//! `X-Forwarded-Proto` is the gateway's own (`https` when the client came
//! over TLS, `http` otherwise; a client's is dropped, never trusted),
//! `X-Request-Id` is kept or generated, the body is re-framed with a
//! Content-Length (the gateway buffers it, so a retry can send it again), and
//! `Host`, `Idempotency-Key` and everything else pass through untouched.
//! Responses: hop-by-hop headers dropped, the request id added, framing
//! rewritten for this client connection.

use crate::http::target::Refused;
use shared::http1::{is_hop_by_hop, Framing, RequestHead, ResponseHead};
use shared::wire::ErrorBody;
use std::io::Write;

/// How the response body is framed towards the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClientFraming {
    /// No body (HEAD, 204, 304, or a zero-length one).
    Empty,
    Length(u64),
    /// The instance's chunked body, passed through as it is.
    Chunked,
    /// A close-delimited body, chunk-encoded for an HTTP/1.1 client.
    Encode,
    /// A close-delimited body to an HTTP/1.0 client: ends with the connection.
    UntilClose,
    /// The instance's chunked body, de-chunked for an HTTP/1.0 client: ends with the connection.
    Dechunk,
}

impl ClientFraming {
    /// Whether the body ends by closing the client connection.
    pub(crate) fn ends_with_close(self) -> bool {
        matches!(self, ClientFraming::UntilClose | ClientFraming::Dechunk)
    }
}

/// The request id: the client's if it is sane, else a new one.
pub(crate) fn request_id(raw: &[u8], head: &RequestHead) -> String {
    match head.header(raw, "x-request-id") {
        Some(id) if shared::logging::valid_request_id(id) => {
            String::from_utf8_lossy(id).into_owned()
        }
        _ => shared::logging::new_request_id(),
    }
}

/// Whether a retry after the request may have reached the instance is safe
/// by the method's semantics (RFC 9110 section 9.2.2).
pub(crate) fn is_idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
}

/// Most header fields in a head the gateway forwards: what its instances
/// take. The apps are served by `shared::serve`, whose front parses heads
/// with `shared::http1::parse_request` into an httparse array of
/// `MAX_HEADERS` (100) fields and answers 431 beyond (tide never sees the
/// head; async-h1's own server, which would take 128, is not used). The
/// gateway reads client heads with that same parser and limit, then drops
/// some fields and adds its own (`x-forwarded-for`, `x-forwarded-proto`, `x-request-id`, a
/// `host` or `content-length`), so it counts the head it forwards against
/// this and answers 431 itself, with the request id, rather than forward a
/// head an instance would refuse.
pub(crate) const MAX_FORWARDED_FIELDS: usize = shared::http1::MAX_HEADERS;

/// Header names a `Connection` token cannot make hop-by-hop: what routing,
/// framing and the gateway's own fields rest on. A client listing `host`
/// would have the instance see the gateway's default host instead of the
/// one the gateway checked; the framing and the gateway's fields are
/// rewritten whatever the tokens say, and `idempotency-key` is promised to
/// pass through untouched, since dropping it would make a retried payment
/// look new to an instance that dedupes by it.
const NOT_CONNECTION_TOKENS: [&[u8]; 7] = [
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-request-id",
    b"idempotency-key",
];

/// Whether a `Connection` token drops header `name` (RFC 9110 section 7.6.1).
fn dropped_by_connection(raw: &[u8], head: &RequestHead, name: &[u8]) -> bool {
    head.is_connection_token(raw, name)
        && !NOT_CONNECTION_TOKENS
            .iter()
            .any(|kept| kept.eq_ignore_ascii_case(name))
}

fn skip_request_header(raw: &[u8], head: &RequestHead, name: &[u8]) -> bool {
    is_hop_by_hop(name)
        || dropped_by_connection(raw, head, name)
        || name.eq_ignore_ascii_case(b"content-length")
        || name.eq_ignore_ascii_case(b"expect")
        || name.eq_ignore_ascii_case(b"x-forwarded-for")
        || name.eq_ignore_ascii_case(b"x-forwarded-proto")
        || name.eq_ignore_ascii_case(b"x-request-id")
}

/// Writes the upstream request head into `out`, all but its framing: the
/// body is read after this, and [`end_upstream_head`] adds its length.
/// Answers how many header fields the forwarded head will carry, counting
/// the `content-length` that [`end_upstream_head`] may add (counted for a
/// chunked body, which may yet turn out empty: at most one too many), to be
/// held to [`MAX_FORWARDED_FIELDS`].
/// Refused (400): a target that cannot be normalized, a bad `Host`.
pub(crate) fn upstream_head(
    out: &mut Vec<u8>,
    raw: &[u8],
    head: &RequestHead,
    client_ip: &str,
    proto: &str,
    request_id: &str,
    default_host: &str,
) -> Result<usize, Refused> {
    out.clear();
    out.extend_from_slice(head.method(raw));
    out.push(b' ');
    // Absolute form (RFC 9112 section 3.2.2): routed and forwarded as the
    // origin form, its authority replacing Host.
    let target = head.target(raw);
    let authority = head.authority(raw);
    if authority.is_some() && !target.starts_with(b"/") {
        out.push(b'/');
    }
    crate::http::target::normalize_into(out, target)?;
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut has_host = false;
    // x-forwarded-for, x-forwarded-proto and x-request-id, written below.
    let mut fields = 3;
    if let Some(authority) = authority {
        if !crate::http::target::valid_host(authority) {
            return Err(Refused("the request target's authority is not host[:port]"));
        }
        header(out, b"host", authority);
        has_host = true;
        fields += 1;
    }
    for h in &head.headers {
        let name = &raw[h.name.clone()];
        if skip_request_header(raw, head, name) {
            continue;
        }
        let value = &raw[h.value.clone()];
        if name.eq_ignore_ascii_case(b"host") {
            if !crate::http::target::valid_host(value) {
                return Err(Refused("Host is not host[:port]"));
            }
            if authority.is_some() {
                continue;
            }
            has_host = true;
        }
        header(out, name, value);
        fields += 1;
    }
    if !has_host {
        header(out, b"host", default_host.as_bytes());
        fields += 1;
    }
    if head.framing != Framing::Empty || expects_body(out) {
        fields += 1;
    }
    // Every earlier hop, in order (however many header lines they came in), then the client.
    out.extend_from_slice(b"x-forwarded-for: ");
    for h in &head.headers {
        let value = &raw[h.value.clone()];
        if raw[h.name.clone()].eq_ignore_ascii_case(b"x-forwarded-for") && !value.is_empty() {
            out.extend_from_slice(value);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(client_ip.as_bytes());
    out.extend_from_slice(b"\r\nx-forwarded-proto: ");
    out.extend_from_slice(proto.as_bytes());
    out.extend_from_slice(b"\r\nx-request-id: ");
    out.extend_from_slice(request_id.as_bytes());
    out.extend_from_slice(b"\r\n");
    Ok(fields)
}

/// Whether the upstream request's method carries a body by its semantics,
/// so gets a `content-length` even when it is 0.
fn expects_body(upstream_request: &[u8]) -> bool {
    [&b"POST "[..], b"PUT ", b"PATCH "]
        .iter()
        .any(|m| upstream_request.starts_with(m))
}

/// Ends the upstream head with the body's length; the body follows.
pub(crate) fn end_upstream_head(out: &mut Vec<u8>, body_len: usize) {
    if body_len > 0 || expects_body(out) {
        let _ = write!(out, "content-length: {body_len}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The request target of an upstream request written by [`upstream_head`].
pub(crate) fn target_of(upstream_request: &[u8]) -> &[u8] {
    let mut parts = upstream_request.splitn(3, |b| *b == b' ');
    parts.next();
    parts.next().unwrap_or_default()
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes `HTTP/1.1 NNN reason\r\n` for an instance's answer `head`: its
/// own reason phrase, or the standard one when it sent none.
pub(crate) fn status_line(out: &mut Vec<u8>, raw: &[u8], head: &ResponseHead) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&status_digits(head.status));
    out.push(b' ');
    match &raw[head.reason.clone()] {
        b"" => out.extend_from_slice(shared::http1::reason(head.status).as_bytes()),
        reason => out.extend_from_slice(reason),
    }
    out.extend_from_slice(b"\r\n");
}

/// `status` (100..=999: the parser takes three digits, none below 100) as
/// its three ASCII digits.
fn status_digits(status: u16) -> [u8; 3] {
    let digit = |n: u16| b'0' + (n % 10) as u8;
    [digit(status / 100), digit(status / 10), digit(status)]
}

/// Writes the client's response head into `out`; says how the body follows
/// and whether the client connection stays open after it.
pub(crate) fn client_response_head(
    out: &mut Vec<u8>,
    raw: &[u8],
    head: &ResponseHead,
    to: AnswerTo<'_>,
) -> (ClientFraming, bool) {
    let AnswerTo {
        request_id,
        client_minor,
        keep_alive,
        head_request,
    } = to;
    out.clear();
    status_line(out, raw, head);
    for h in &head.headers {
        let name = &raw[h.name.clone()];
        let keep_length = head_request && name.eq_ignore_ascii_case(b"content-length");
        if !keep_length
            && (is_hop_by_hop(name)
                || head.is_connection_token(raw, name)
                || name.eq_ignore_ascii_case(b"content-length")
                || name.eq_ignore_ascii_case(b"x-request-id"))
        {
            continue;
        }
        header(out, name, &raw[h.value.clone()]);
    }
    header(out, b"x-request-id", request_id.as_bytes());
    let may_have_body =
        !head_request && head.status >= 200 && head.status != 204 && head.status != 304;
    let framing = match head.framing {
        Framing::Empty if may_have_body => {
            out.extend_from_slice(b"content-length: 0\r\n");
            ClientFraming::Empty
        }
        Framing::Empty => ClientFraming::Empty,
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
            ClientFraming::Length(n)
        }
        Framing::Chunked if client_minor == 1 => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            ClientFraming::Chunked
        }
        Framing::Chunked => ClientFraming::Dechunk,
        Framing::UntilClose if client_minor == 0 => ClientFraming::UntilClose,
        Framing::UntilClose => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            ClientFraming::Encode
        }
    };
    let keep_alive = keep_alive && !framing.ends_with_close();
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if client_minor == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep_alive)
}

/// The interim answer to a client that sent `Expect: 100-continue`.
pub(crate) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the client's request says about how its answer is written.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AnswerTo<'a> {
    pub(crate) request_id: &'a str,
    /// The client's HTTP/1 minor version: 0 gets no chunked framing.
    pub(crate) client_minor: u8,
    /// The connection may stay open after this answer.
    pub(crate) keep_alive: bool,
    /// The request was HEAD: the head only, no body.
    pub(crate) head_request: bool,
}

/// Appends `data` as one chunk of a chunked body; nothing for no data (an
/// empty chunk would end the body).
pub(crate) fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk of a chunked body and its trailer section:
/// `trailers` holds field lines, each with its CRLF (empty for none).
pub(crate) fn last_chunk(out: &mut Vec<u8>, trailers: &[u8]) {
    out.extend_from_slice(b"0\r\n");
    out.extend_from_slice(trailers);
    out.extend_from_slice(b"\r\n");
}

/// How an error answer made by the gateway goes out.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ErrorFraming {
    /// The connection closes after it.
    pub(crate) close: bool,
    /// The request was HEAD: the head only, no body.
    pub(crate) head_request: bool,
    /// `Retry-After` in seconds; `None`: 1 on a 503, none otherwise.
    pub(crate) retry_after: Option<u32>,
}

impl ErrorFraming {
    /// An error after which the connection closes, before any request was
    /// understood (no HEAD to honour).
    pub(crate) const CLOSING: ErrorFraming = ErrorFraming {
        close: true,
        head_request: false,
        retry_after: None,
    };

    /// An error answering a request: the connection stays open only if the
    /// request keeps it alive; a HEAD gets the head only.
    pub(crate) fn answering(keep_alive: bool, head_request: bool) -> ErrorFraming {
        ErrorFraming {
            close: !keep_alive,
            head_request,
            retry_after: None,
        }
    }
}

/// Writes a whole error response made by the gateway itself into `out`.
pub(crate) fn error_response(
    out: &mut Vec<u8>,
    status: u16,
    code: &str,
    message: &str,
    request_id: &str,
    framing: ErrorFraming,
) {
    let body = ErrorBody::new(code, message)
        .with_request_id(request_id)
        .to_json();
    out.clear();
    // A 503 (no instance now, or over max_buffered_bytes) passes: say when to try again.
    let retry_after = framing.retry_after.or((status == 503).then_some(1));
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\n",
        shared::http1::reason(status),
        body.len(),
    );
    if let Some(seconds) = retry_after {
        let _ = write!(out, "retry-after: {seconds}\r\n");
    }
    if framing.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !framing.head_request {
        out.extend_from_slice(body.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::http1::{parse_request, parse_response};

    #[test]
    fn request_rewrite() {
        let raw = b"POST /a?b HTTP/1.1\r\nHost: gw\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\nX-Forwarded-For: 10.0.0.1\r\nIdempotency-Key: k1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n";
        let mut head = RequestHead::default();
        assert_eq!(parse_request(raw, &mut head, 4096), Ok(true));
        let mut out = Vec::new();
        let fields =
            upstream_head(&mut out, raw, &head, "127.0.0.9", "http", "rid", "gw:1").unwrap();
        end_upstream_head(&mut out, 2);
        assert_eq!(fields, field_lines(&out), "the count is what is forwarded");
        out.extend_from_slice(b"{}");
        assert_eq!(target_of(&out), b"/a?b");
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "POST /a?b HTTP/1.1\r\nHost: gw\r\nIdempotency-Key: k1\r\nx-forwarded-for: 10.0.0.1, 127.0.0.9\r\nx-forwarded-proto: http\r\nx-request-id: rid\r\ncontent-length: 2\r\n\r\n{}"
        );
    }

    /// Header lines of a whole upstream head.
    fn field_lines(upstream: &[u8]) -> usize {
        let text = String::from_utf8_lossy(upstream);
        let head = text.split("\r\n\r\n").next().unwrap_or_default();
        head.split("\r\n").count() - 1
    }

    /// Rewrites `raw` and ends it with `body_len`; the count and the head.
    fn forwarded(raw: &[u8], body_len: usize) -> (usize, String) {
        let mut head = RequestHead::default();
        assert_eq!(parse_request(raw, &mut head, 64 * 1024), Ok(true));
        let mut out = Vec::new();
        let fields =
            upstream_head(&mut out, raw, &head, "127.0.0.9", "http", "rid", "gw:1").unwrap();
        end_upstream_head(&mut out, body_len);
        (fields, String::from_utf8(out).unwrap())
    }

    #[test]
    fn the_field_count_is_that_of_the_forwarded_head() {
        let cases: [(&[u8], usize); 5] = [
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nX-B: 2\r\n\r\n", 0),
            (b"GET / HTTP/1.0\r\nX-A: 1\r\n\r\n", 0),
            (b"GET http://h/x HTTP/1.1\r\nHost: a\r\nConnection: x-a\r\nX-A: 1\r\n\r\n", 0),
            (b"POST / HTTP/1.1\r\nHost: a\r\nX-Request-Id: r\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\nContent-Length: 2\r\n\r\n", 2),
            (b"DELETE / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nKeep-Alive: 5\r\n\r\n", 3),
        ];
        for (raw, body_len) in cases {
            let (fields, text) = forwarded(raw, body_len);
            assert_eq!(fields, field_lines(text.as_bytes()), "{text}");
        }
        // A chunked body that turns out empty gets no length: counted one over.
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (fields, text) = forwarded(raw, 0);
        assert_eq!(fields, field_lines(text.as_bytes()) + 1, "{text}");
        assert_eq!(MAX_FORWARDED_FIELDS, shared::http1::MAX_HEADERS);
    }

    #[test]
    fn x_forwarded_proto_is_the_gateways_own_never_the_clients() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\nx-forwarded-proto: ftp\r\nConnection: x-forwarded-proto\r\n\r\n";
        let mut head = RequestHead::default();
        assert_eq!(parse_request(raw, &mut head, 4096), Ok(true));
        for proto in ["http", "https"] {
            let mut out = Vec::new();
            let fields = upstream_head(&mut out, raw, &head, "1.2.3.4", proto, "r", "gw").unwrap();
            end_upstream_head(&mut out, 0);
            let text = String::from_utf8(out).unwrap();
            let sent: Vec<&str> = text
                .split("\r\n")
                .filter(|l| l.to_ascii_lowercase().starts_with("x-forwarded-proto:"))
                .collect();
            assert_eq!(sent, [format!("x-forwarded-proto: {proto}")], "{text}");
            assert_eq!(fields, field_lines(text.as_bytes()), "{text}");
        }
    }

    #[test]
    fn connection_cannot_name_host_framing_or_the_gateways_own_headers() {
        let raw = b"POST / HTTP/1.1\r\nHost: shop.example\r\nConnection: host, Content-Length, transfer-encoding, X-Request-Id, x-forwarded-for, idempotency-key, x-secret\r\nIdempotency-Key: k1\r\nX-Secret: s\r\nX-Request-Id: client-id\r\nContent-Length: 2\r\n\r\n";
        let (fields, text) = forwarded(raw, 2);
        assert!(text.contains("\r\nHost: shop.example\r\n"), "{text}");
        assert!(!text.contains("gw:1"), "not the default host: {text}");
        assert!(text.contains("\r\nIdempotency-Key: k1\r\n"), "{text}");
        assert!(text.contains("\r\ncontent-length: 2\r\n"), "{text}");
        assert!(
            text.contains("\r\nx-forwarded-for: 127.0.0.9\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nx-request-id: rid\r\n"), "{text}");
        assert!(
            !text.contains("X-Secret"),
            "other tokens still drop: {text}"
        );
        assert_eq!(fields, field_lines(text.as_bytes()));
        // A Host that names itself in Connection is still checked.
        let raw = b"GET / HTTP/1.1\r\nHost: x/chaos?\r\nConnection: host\r\n\r\n";
        let mut head = RequestHead::default();
        assert_eq!(parse_request(raw, &mut head, 4096), Ok(true));
        let mut out = Vec::new();
        assert!(upstream_head(&mut out, raw, &head, "1.2.3.4", "http", "r", "gw").is_err());
    }

    #[test]
    fn the_target_is_forwarded_normalized_and_a_bad_host_refused() {
        let raw = b"GET /api/%2e%2e/x/./y%7e?q=/../ HTTP/1.1\r\nHost: gw:80\r\n\r\n";
        let mut head = RequestHead::default();
        assert_eq!(parse_request(raw, &mut head, 4096), Ok(true));
        let mut out = Vec::new();
        upstream_head(&mut out, raw, &head, "1.2.3.4", "http", "r", "gw").unwrap();
        assert_eq!(target_of(&out), b"/x/y~?q=/../");
        let raw = b"GET /api HTTP/1.1\r\nHost: x/chaos?\r\n\r\n";
        assert_eq!(parse_request(raw, &mut head, 4096), Ok(true));
        assert!(upstream_head(&mut out, raw, &head, "1.2.3.4", "http", "r", "gw").is_err());
    }

    #[test]
    fn an_absolute_form_target_is_forwarded_in_origin_form_with_its_authority_as_host() {
        let raw = b"POST http://gw.example:8000/api/../x?q HTTP/1.1\r\nHost: other\r\n\r\n";
        let mut head = RequestHead::default();
        assert_eq!(parse_request(raw, &mut head, 4096), Ok(true));
        let mut out = Vec::new();
        upstream_head(&mut out, raw, &head, "1.2.3.4", "http", "r", "gw").unwrap();
        assert_eq!(target_of(&out), b"/x?q");
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.contains("host: gw.example:8000\r\n"), "{text}");
        assert!(!text.contains("other"), "{text}");
        let raw = b"GET http://h?q HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(parse_request(raw, &mut head, 4096), Ok(true));
        upstream_head(&mut out, raw, &head, "1.2.3.4", "http", "r", "gw").unwrap();
        assert_eq!(target_of(&out), b"/?q");
    }

    #[test]
    fn http10_without_host_gets_one() {
        let raw = b"GET / HTTP/1.0\r\n\r\n";
        let mut head = RequestHead::default();
        assert_eq!(parse_request(raw, &mut head, 4096), Ok(true));
        let mut out = Vec::new();
        upstream_head(&mut out, raw, &head, "1.2.3.4", "http", "r", "gw:1").unwrap();
        end_upstream_head(&mut out, 0);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("GET / HTTP/1.1\r\nhost: gw:1\r\n"));
        assert!(
            text.ends_with("x-request-id: r\r\n\r\n"),
            "no length for a bodiless GET"
        );
    }

    /// A keep-alive GET's answer, to a client of HTTP/1.`minor`.
    fn answer_to(minor: u8) -> AnswerTo<'static> {
        AnswerTo {
            request_id: "rid",
            client_minor: minor,
            keep_alive: true,
            head_request: false,
        }
    }

    #[test]
    fn chunks_are_framed_in_hex_and_the_last_carries_the_trailers() {
        let mut out = Vec::new();
        chunk(&mut out, b"");
        assert!(
            out.is_empty(),
            "no data, no chunk: an empty one would end the body"
        );
        chunk(&mut out, &[b'x'; 26]);
        assert_eq!(&out[..4], b"1a\r\n");
        assert!(out.ends_with(b"x\r\n") && out.len() == 4 + 26 + 2);
        out.clear();
        last_chunk(&mut out, b"");
        assert_eq!(out, b"0\r\n\r\n");
        out.clear();
        last_chunk(&mut out, b"x-sum: 1\r\n");
        assert_eq!(out, b"0\r\nx-sum: 1\r\n\r\n");
    }

    #[test]
    fn response_rewrite() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Request-Id: other\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut head = ResponseHead::default();
        assert_eq!(parse_response(raw, &mut head, 4096, false), Ok(true));
        let mut out = Vec::new();
        let framing = client_response_head(&mut out, raw, &head, answer_to(1));
        assert_eq!(framing, (ClientFraming::Chunked, true));
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-request-id: rid\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let framing = client_response_head(&mut out, raw, &head, answer_to(0));
        assert_eq!(
            framing,
            (ClientFraming::Dechunk, false),
            "HTTP/1.0 gets the data, then the close"
        );
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("connection: close\r\n\r\n"));
    }

    #[test]
    fn error_body_is_json_with_the_request_id() {
        let mut out = Vec::new();
        let close = ErrorFraming::CLOSING;
        error_response(&mut out, 503, "no_available_instance", "none", "rid", close);
        let text = String::from_utf8(out.clone()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(head.contains("connection: close"));
        assert!(head.contains("\r\nretry-after: 1"), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["request_id"], "rid");
        assert_eq!(v["error"]["code"], "no_available_instance");
        let head_only = ErrorFraming::answering(true, true);
        error_response(
            &mut out,
            503,
            "no_available_instance",
            "none",
            "rid",
            head_only,
        );
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.ends_with("\r\n\r\n") && text.contains("content-length: "),
            "{text}"
        );
        // Retry-After only where asked for, or on a 503.
        error_response(&mut out, 400, "bad", "no", "rid", head_only);
        assert!(!String::from_utf8_lossy(&out).contains("retry-after"));
        let later = ErrorFraming {
            retry_after: Some(7),
            ..head_only
        };
        error_response(&mut out, 409, "busy", "later", "rid", later);
        assert!(String::from_utf8_lossy(&out).contains("\r\nretry-after: 7\r\n"));
    }

    #[test]
    fn every_forwarded_for_line_is_kept_in_order() {
        let raw = b"GET / HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2, 10.0.0.3\r\n\r\n";
        let mut head = RequestHead::default();
        assert_eq!(parse_request(raw, &mut head, 4096), Ok(true));
        let mut out = Vec::new();
        upstream_head(&mut out, raw, &head, "127.0.0.9", "http", "r", "gw").unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("x-forwarded-for: 10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.9\r\n"),
            "{text}"
        );
    }
}
