//! The HTTP/1.1 codec of the gateway and the load generator.
//!
//! Heads are parsed with httparse, then held to the strict framing rules of
//! RFC 9112 section 6.3 that close the request-smuggling doors: a message
//! with both Content-Length and Transfer-Encoding, more than one
//! Content-Length, a non-digit length, a Transfer-Encoding whose last coding
//! is not chunked, or a malformed chunk is refused, never guessed at.
//! Parsing never allocates per header: positions point into the read buffer.

mod buffer;
mod chunked;
pub mod client;
mod head;

pub use buffer::ReadBuf;
pub use chunked::{ChunkError, ChunkedDecoder};
pub use head::{
    parse_request, parse_response, Framing, HeadError, Header, RequestHead, ResponseHead,
    MAX_HEADERS,
};

/// Headers that describe one connection, not the message: never forwarded.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 9] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Trims optional white space (SP, HTAB) from both ends of a header value.
pub fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Splits a comma-separated header value into trimmed, non-empty items.
pub fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(trim_ows)
        .filter(|item| !item.is_empty())
}

/// The reason phrase written for a status code the gateway produces itself.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}
