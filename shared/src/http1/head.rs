//! Request and response heads: httparse for the syntax, then the framing rules.

use super::{list_items, trim_ows};
use std::ops::Range;

/// Most header fields a head may carry (431 beyond).
pub const MAX_HEADERS: usize = 100;

/// How the body of a message is delimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    #[default]
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the peer closes (responses only).
    UntilClose,
}

/// A header field as positions in the buffer the head was parsed from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub name: Range<usize>,
    pub value: Range<usize>,
}

/// Why a head was refused. Request errors map to a status via [`HeadError::status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.x syntax: bad tokens, NUL or bare CR, obsolete line folding,
    /// white space before a colon.
    Malformed(&'static str),
    /// The head is longer than allowed.
    TooLarge,
    TooManyHeaders,
    /// Not HTTP/1.0 or HTTP/1.1.
    Version,
    /// The body's framing is ambiguous or invalid (smuggling vectors).
    Framing(&'static str),
    /// A transfer coding other than chunked.
    UnsupportedCoding,
    /// An `Expect` other than `100-continue`.
    Expectation,
    /// A header value with a byte above 0x7F (obs-text). RFC 9110 section
    /// 5.5 lets a recipient refuse it, and the tide services cannot take it,
    /// so the gateway refuses it too rather than forward what apps would not.
    HeaderBytes,
}

impl HeadError {
    pub fn status(self) -> u16 {
        match self {
            HeadError::Malformed(_) | HeadError::Framing(_) | HeadError::HeaderBytes => 400,
            HeadError::TooLarge | HeadError::TooManyHeaders => 431,
            HeadError::Version => 505,
            HeadError::UnsupportedCoding => 501,
            HeadError::Expectation => 417,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            HeadError::Malformed(m) | HeadError::Framing(m) => m,
            HeadError::TooLarge => "request head is larger than max_header_bytes",
            HeadError::TooManyHeaders => "request head has too many header fields",
            HeadError::Version => "only HTTP/1.0 and HTTP/1.1 are supported",
            HeadError::UnsupportedCoding => "only the chunked transfer coding is supported",
            HeadError::Expectation => "only Expect: 100-continue is supported",
            HeadError::HeaderBytes => {
                "a header value has a byte above 0x7F; only visible ASCII, space and tab are accepted"
            }
        }
    }
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for HeadError {}

/// A parsed request head. Reused across requests to keep its vectors' memory.
#[derive(Clone, Debug, Default)]
pub struct RequestHead {
    /// Bytes of the head, final blank line included; the body starts here.
    pub len: usize,
    pub method: Range<usize>,
    /// The origin-form target (path and query). For an absolute-form target
    /// (`http://host:port/path?q`, RFC 9112 section 3.2.2) it is the part
    /// after the authority, which may be empty or start with `?` (both mean
    /// the path `/`).
    pub target: Range<usize>,
    /// The authority of an absolute-form `http://` target, which replaces
    /// `Host` (RFC 9112 section 3.2.2); `None` for the origin form.
    pub authority: Option<Range<usize>>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Vec<Header>,
    pub framing: Framing,
    /// Whether the client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// Header names the client listed in `Connection`: hop-by-hop for this message.
    pub connection_tokens: Vec<Range<usize>>,
}

/// A parsed response head.
#[derive(Clone, Debug, Default)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub reason: Range<usize>,
    pub minor_version: u8,
    pub headers: Vec<Header>,
    pub framing: Framing,
    pub keep_alive: bool,
    pub connection_tokens: Vec<Range<usize>>,
}

/// What the framing-relevant headers said.
#[derive(Default)]
struct Scan {
    content_length: Option<u64>,
    chunked_last: bool,
    other_coding: bool,
    has_te: bool,
    close: bool,
    keep_alive: bool,
    hosts: usize,
    expect_continue: bool,
    other_expectation: bool,
}

/// Where `part` lies in `buf`; an empty range for a slice from elsewhere
/// (httparse answers a missing reason phrase with a static `""`).
fn offset(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    match start.checked_add(part.len()) {
        Some(end) if end <= buf.len() => start..end,
        _ => 0..0,
    }
}

fn malformed(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::Version => HeadError::Version,
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        httparse::Error::HeaderName => HeadError::Malformed(
            "invalid header name (or white space before a colon, or line folding)",
        ),
        httparse::Error::HeaderValue => HeadError::Malformed("invalid byte in a header value"),
        httparse::Error::NewLine => HeadError::Malformed("invalid line ending"),
        httparse::Error::Status => HeadError::Malformed("invalid status line"),
        httparse::Error::Token => HeadError::Malformed("invalid method or request target"),
    }
}

/// Walks the header fields once, recording positions and framing facts.
fn scan(
    buf: &[u8],
    fields: &[httparse::Header<'_>],
    headers: &mut Vec<Header>,
    tokens: &mut Vec<Range<usize>>,
    request: bool,
) -> Result<Scan, HeadError> {
    headers.clear();
    tokens.clear();
    let mut s = Scan::default();
    for field in fields {
        let name = field.name.as_bytes();
        // httparse already refuses controls other than HTAB; what it lets
        // through beyond visible ASCII is obs-text (0x80..=0xFF). Responses
        // keep it: passing it on to a client harms no one.
        if request && !field.value.is_ascii() {
            return Err(HeadError::HeaderBytes);
        }
        let value = trim_ows(field.value);
        headers.push(Header {
            name: offset(buf, name),
            value: offset(buf, value),
        });
        if name.eq_ignore_ascii_case(b"content-length") {
            if s.content_length.is_some() {
                return Err(HeadError::Framing("more than one Content-Length"));
            }
            s.content_length = Some(parse_length(value)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            s.has_te = true;
            for coding in list_items(value) {
                if s.chunked_last {
                    // Something follows chunked: chunked is not the final coding.
                    return Err(HeadError::Framing(
                        "chunked is not the last transfer coding",
                    ));
                }
                if coding.eq_ignore_ascii_case(b"chunked") {
                    s.chunked_last = true;
                } else {
                    s.other_coding = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in list_items(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    s.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    s.keep_alive = true;
                } else {
                    tokens.push(offset(buf, token));
                }
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            s.hosts += 1;
        } else if name.eq_ignore_ascii_case(b"expect") {
            if value.eq_ignore_ascii_case(b"100-continue") {
                s.expect_continue = true;
            } else {
                s.other_expectation = true;
            }
        }
    }
    if s.has_te && s.content_length.is_some() {
        return Err(HeadError::Framing(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    Ok(s)
}

/// `1*DIGIT`, nothing else: no sign, no spaces inside, no list, no overflow.
fn parse_length(value: &[u8]) -> Result<u64, HeadError> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::Framing("Content-Length is not a number"));
    }
    Ok(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

fn keep_alive(minor_version: u8, s: &Scan) -> bool {
    if s.close {
        false
    } else {
        minor_version == 1 || s.keep_alive
    }
}

/// Splits a request target into its origin-form part and, for the absolute
/// form `http://authority[/path][?query]`, the authority. Other schemes (the
/// gateway and the tide services speak plain HTTP only) and userinfo
/// (`user@host`, deprecated and a phishing vector) are refused.
fn split_target<'a>(
    target: &'a str,
    method: &str,
) -> Result<(&'a str, Option<&'a str>), HeadError> {
    if target.starts_with('/') || (target == "*" && method == "OPTIONS") {
        return Ok((target, None));
    }
    let scheme = target
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"));
    let (Some(_), Some(rest)) = (scheme, target.get(7..)) else {
        return Err(HeadError::Malformed(
            "request target must be a path or an absolute http:// URI",
        ));
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains(['@', '#']) || path.contains('#') {
        return Err(HeadError::Malformed(
            "absolute request target needs a host, and no userinfo or fragment",
        ));
    }
    Ok((path, Some(authority)))
}

/// Parses a request head from the start of `buf` into `head`.
///
/// `Ok(false)`: incomplete, read more. `Ok(true)`: `head` describes it.
pub fn parse_request(
    buf: &[u8],
    head: &mut RequestHead,
    max_len: usize,
) -> Result<bool, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf).map_err(malformed)? {
        httparse::Status::Complete(len) if len <= max_len => len,
        httparse::Status::Partial if buf.len() < max_len => return Ok(false),
        _ => return Err(HeadError::TooLarge),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed("incomplete request line"));
    };
    let (target, authority) = split_target(target, method)?;
    let s = scan(
        buf,
        req.headers,
        &mut head.headers,
        &mut head.connection_tokens,
        true,
    )?;
    if s.has_te {
        if minor == 0 {
            return Err(HeadError::Framing(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if !s.chunked_last {
            return Err(HeadError::Framing(
                "the last transfer coding is not chunked",
            ));
        }
        if s.other_coding {
            return Err(HeadError::UnsupportedCoding);
        }
    }
    if (minor == 1 && s.hosts != 1) || s.hosts > 1 {
        return Err(HeadError::Malformed(
            "a request needs exactly one Host (HTTP/1.0: at most one)",
        ));
    }
    if s.other_expectation {
        return Err(HeadError::Expectation);
    }
    head.len = len;
    head.method = offset(buf, method.as_bytes());
    head.target = offset(buf, target.as_bytes());
    head.authority = authority.map(|a| offset(buf, a.as_bytes()));
    head.minor_version = minor;
    head.framing = match s.content_length {
        _ if s.has_te => Framing::Chunked,
        Some(0) | None => Framing::Empty,
        Some(n) => Framing::Length(n),
    };
    head.keep_alive = keep_alive(minor, &s);
    // An HTTP/1.0 client does not wait for 100 Continue (RFC 9110 section 10.1.1).
    head.expect_continue = s.expect_continue && minor == 1 && head.framing != Framing::Empty;
    Ok(true)
}

/// Parses a response head from the start of `buf` into `head`.
///
/// `to_head_request`: the request was HEAD, so no body follows whatever the headers say.
pub fn parse_response(
    buf: &[u8],
    head: &mut ResponseHead,
    max_len: usize,
    to_head_request: bool,
) -> Result<bool, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut fields);
    let len = match res.parse(buf).map_err(malformed)? {
        httparse::Status::Complete(len) if len <= max_len => len,
        httparse::Status::Partial if buf.len() < max_len => return Ok(false),
        _ => return Err(HeadError::TooLarge),
    };
    let (Some(status), Some(minor)) = (res.code, res.version) else {
        return Err(HeadError::Malformed("incomplete status line"));
    };
    if status < 100 {
        return Err(HeadError::Malformed("status code below 100"));
    }
    let s = scan(
        buf,
        res.headers,
        &mut head.headers,
        &mut head.connection_tokens,
        false,
    )?;
    if s.has_te && s.other_coding {
        // Forwarding it would mean re-expressing the coding to the client; refused instead.
        return Err(HeadError::UnsupportedCoding);
    }
    head.len = len;
    head.status = status;
    head.reason = offset(buf, res.reason.unwrap_or("").as_bytes());
    head.minor_version = minor;
    let bodiless = to_head_request || status < 200 || status == 204 || status == 304;
    head.framing = if bodiless {
        Framing::Empty
    } else if s.has_te {
        if s.chunked_last {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match s.content_length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    head.keep_alive = keep_alive(minor, &s) && head.framing != Framing::UntilClose;
    Ok(true)
}

impl RequestHead {
    pub fn method<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.method.clone()]
    }

    pub fn target<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.target.clone()]
    }

    /// The authority of an absolute-form target (see [`RequestHead::authority`]).
    pub fn authority<'a>(&self, buf: &'a [u8]) -> Option<&'a [u8]> {
        self.authority.clone().map(|a| &buf[a])
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        find(&self.headers, buf, name)
    }

    /// Whether `name` was listed in `Connection` (so is hop-by-hop here).
    pub fn is_connection_token(&self, buf: &[u8], name: &[u8]) -> bool {
        self.connection_tokens
            .iter()
            .any(|t| buf[t.clone()].eq_ignore_ascii_case(name))
    }
}

impl ResponseHead {
    pub fn header<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        find(&self.headers, buf, name)
    }

    pub fn is_connection_token(&self, buf: &[u8], name: &[u8]) -> bool {
        self.connection_tokens
            .iter()
            .any(|t| buf[t.clone()].eq_ignore_ascii_case(name))
    }
}

fn find<'a>(headers: &[Header], buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| buf[h.name.clone()].eq_ignore_ascii_case(name.as_bytes()))
        .map(|h| &buf[h.value.clone()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> Result<RequestHead, HeadError> {
        let mut head = RequestHead::default();
        match parse_request(text.as_bytes(), &mut head, 16 * 1024)? {
            true => Ok(head),
            false => Err(HeadError::Malformed("incomplete (test)")),
        }
    }

    #[test]
    fn parses_a_post_with_a_length() {
        let text = "POST /api/x?y=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nX-Request-Id:  abc \r\n\r\n{}";
        let head = req(text).unwrap();
        let buf = text.as_bytes();
        assert_eq!(head.method(buf), b"POST");
        assert_eq!(head.target(buf), b"/api/x?y=1");
        assert_eq!(head.framing, Framing::Length(12));
        assert_eq!(head.len, text.len() - 2);
        assert_eq!(head.header(buf, "x-request-id"), Some(&b"abc"[..]));
        assert!(head.keep_alive);
    }

    #[test]
    fn absolute_form_targets_are_split_into_authority_and_path() {
        let text = "POST http://gw.example:8000/api/x?y=1 HTTP/1.1\r\nHost: other\r\n\r\n";
        let head = req(text).unwrap();
        let buf = text.as_bytes();
        assert_eq!(head.target(buf), b"/api/x?y=1");
        assert_eq!(head.authority(buf), Some(&b"gw.example:8000"[..]));
        let text = "GET HTTP://h?q HTTP/1.1\r\nHost: h\r\n\r\n";
        let head = req(text).unwrap();
        assert_eq!(head.target(text.as_bytes()), b"?q");
        assert_eq!(head.authority(text.as_bytes()), Some(&b"h"[..]));
        assert_eq!(
            req("GET /x HTTP/1.1\r\nHost: h\r\n\r\n").unwrap().authority,
            None
        );
        for bad in [
            "GET https://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET http://u@h/x HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET x HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET http:/ HTTP/1.1\r\nHost: h\r\n\r\n",
        ] {
            assert!(matches!(req(bad), Err(HeadError::Malformed(_))), "{bad}");
        }
    }

    #[test]
    fn keep_alive_rules() {
        assert!(
            !req("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(!req("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(
            req("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        let text = "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\n\r\n";
        let head = req(text).unwrap();
        assert!(head.is_connection_token(text.as_bytes(), b"x-secret"));
    }

    #[test]
    fn smuggling_vectors_are_refused() {
        let cases = [
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 3\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", 400),
            ("POST /\0 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            // Absolute form is taken for http:// only (see absolute_form_targets_...).
            ("POST https://evil/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("POST evil/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("POST / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
            ("POST / HTTP/1.2\r\nHost: a\r\n\r\n", 505),
            ("POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", 417),
            ("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ];
        for (text, status) in cases {
            let got = req(text).map(|_| ()).map_err(HeadError::status);
            assert_eq!(got, Err(status), "{text:?}");
        }
    }

    #[test]
    fn header_bytes_above_0x7f_are_refused_in_requests_only() {
        for value in [&b"caf\xc3\xa9"[..], b"\x80", b"a\xff b", b"\xfe\t"] {
            let mut text = b"POST /pay HTTP/1.1\r\nHost: a\r\nX-Note: ".to_vec();
            text.extend_from_slice(value);
            text.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\n{}");
            let mut head = RequestHead::default();
            let got = parse_request(&text, &mut head, 4096);
            assert_eq!(got, Err(HeadError::HeaderBytes), "{value:?}");
            assert_eq!(HeadError::HeaderBytes.status(), 400);
            let mut res = b"HTTP/1.1 200 OK\r\nX-Note: ".to_vec();
            res.extend_from_slice(value);
            res.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\n{}");
            let mut head = ResponseHead::default();
            assert_eq!(parse_response(&res, &mut head, 4096, false), Ok(true));
        }
        // Visible ASCII, space and tab stay accepted.
        let ok = req("GET / HTTP/1.1\r\nHost: a\r\nX-Note: a b\t~!\"\r\n\r\n").unwrap();
        assert_eq!(ok.headers.len(), 2);
    }

    #[test]
    fn incomplete_and_oversized_heads() {
        let mut head = RequestHead::default();
        assert_eq!(
            parse_request(b"POST / HTTP/1.1\r\nHost: a\r\n", &mut head, 1024),
            Ok(false)
        );
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "v".repeat(2000)
        );
        assert_eq!(
            parse_request(big.as_bytes(), &mut head, 1024),
            Err(HeadError::TooLarge)
        );
        assert_eq!(
            parse_request(&big.as_bytes()[..1500], &mut head, 1024),
            Err(HeadError::TooLarge)
        );
        let many: String = (0..150).map(|i| format!("X-{i}: v\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(
            parse_request(text.as_bytes(), &mut head, 64 * 1024),
            Err(HeadError::TooManyHeaders)
        );
    }

    #[test]
    fn chunked_and_expect() {
        let head = req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\nExpect: 100-continue\r\n\r\n").unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        assert!(head.expect_continue);
    }

    #[test]
    fn a_missing_or_odd_reason_phrase_is_an_empty_range() {
        let mut head = ResponseHead::default();
        for text in [
            "HTTP/1.1 200\r\nContent-Length: 2\r\n\r\n{}",
            "HTTP/1.1 200 \u{e7}a va\r\nContent-Length: 2\r\n\r\n{}",
        ] {
            let buf = text.as_bytes();
            assert_eq!(
                parse_response(buf, &mut head, 4096, false),
                Ok(true),
                "{text}"
            );
            assert!(head.reason.end <= buf.len());
            assert_eq!(head.framing, Framing::Length(2));
        }
    }

    #[test]
    fn odd_responses_are_refused() {
        let mut head = ResponseHead::default();
        for bad in [
            "HTTP/1.1 099 X\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(
                parse_response(bad.as_bytes(), &mut head, 4096, false).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn http10_gets_no_continue_and_one_host_at_most() {
        let head =
            req("POST / HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n").unwrap();
        assert!(!head.expect_continue);
        assert!(req("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n").is_err());
    }

    #[test]
    fn response_framing() {
        let mut head = ResponseHead::default();
        let cases: [(&str, bool, Framing, bool); 7] = [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                false,
                Framing::Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                Framing::Chunked,
                true,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", false, Framing::UntilClose, false),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                false,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                true,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n",
                false,
                Framing::Length(5),
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
                false,
                Framing::Length(5),
                false,
            ),
        ];
        for (text, to_head, framing, keep) in cases {
            assert_eq!(
                parse_response(text.as_bytes(), &mut head, 4096, to_head),
                Ok(true),
                "{text}"
            );
            assert_eq!((head.framing, head.keep_alive), (framing, keep), "{text}");
        }
        let text =
            "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(parse_response(text.as_bytes(), &mut head, 4096, false).is_err());
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        const VALID: &[&str] = &[
            "HTTP/1.1 200\r\nContent-Length: 2\r\n\r\n{}",
            "HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /api/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nX-Request-Id: r1\r\n\r\nhello",
            "POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, x-a\r\n\r\n",
            "GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        ];

        /// Whatever parses must describe positions inside the buffer and a sane framing.
        fn check(buf: &[u8]) {
            let mut head = RequestHead::default();
            if let Ok(true) = parse_request(buf, &mut head, 8 * 1024) {
                assert!(head.len <= buf.len());
                for h in &head.headers {
                    assert!(h.name.end <= head.len && h.value.end <= head.len);
                    assert!(buf[h.value.clone()].is_ascii(), "obs-text accepted");
                }
                assert!(head.method.end <= head.len && head.target.end <= head.len);
                assert!(head.minor_version <= 1);
                let te = head.header(buf, "transfer-encoding").is_some();
                let cl = head.header(buf, "content-length").is_some();
                assert!(!(te && cl), "both framings accepted");
            }
            let mut res = ResponseHead::default();
            if let Ok(true) = parse_response(buf, &mut res, 8 * 1024, false) {
                assert!(res.len <= buf.len() && res.reason.end <= buf.len());
                for h in &res.headers {
                    assert!(h.name.end <= res.len && h.value.end <= res.len);
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn random_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..600)) {
                check(&buf);
            }

            #[test]
            fn mutated_heads_never_panic(
                which in 0..VALID.len(),
                edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
            ) {
                let mut buf = VALID[which].as_bytes().to_vec();
                for (at, byte, kind) in edits {
                    let i = at.index(buf.len() + 1);
                    match kind {
                        0 => buf.insert(i, byte),
                        1 if i < buf.len() => { buf.remove(i); }
                        _ if i < buf.len() => buf[i] = byte,
                        _ => {}
                    }
                }
                check(&buf);
            }
        }
    }
}
