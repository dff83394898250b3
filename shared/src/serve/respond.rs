//! Writes answers: tide's responses with our own framing, and the front's
//! own JSON errors.
//!
//! A body of known length goes out with Content-Length, in the same write as
//! the head when it is small. A body of unknown length (tide's SSE streams)
//! goes out chunked to HTTP/1.1 clients, each piece written as soon as it is
//! read so events arrive at once, and until close to HTTP/1.0 clients.

use crate::wire::ErrorBody;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use http_types::{Method, Response};
use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Pieces of a body are written in at most this many bytes.
const PIECE: usize = 64 * 1024;

/// What the request asked of the answer's form.
#[derive(Clone, Copy, Debug)]
pub struct Exchange {
    pub head_request: bool,
    pub http10: bool,
    /// Whether the connection stays open after this answer, as far as the
    /// client and the server's state allow.
    pub keep_alive: bool,
    /// Each write must complete within this (a client that never reads).
    pub send_timeout: Duration,
}

/// Writes `res`; returns whether the connection may stay open.
pub async fn write_response<W: AsyncWrite + Unpin>(
    io: &mut W,
    out: &mut Vec<u8>,
    mut res: Response,
    ex: Exchange,
) -> io::Result<bool> {
    let status = u16::from(res.status());
    let bodiless = ex.head_request || status < 200 || status == 204 || status == 304;
    let length = if bodiless { None } else { res.len() };
    let streamed = !bodiless && length.is_none();
    let chunked = streamed && !ex.http10;
    let mut keep_alive = ex.keep_alive && !(streamed && ex.http10);

    out.clear();
    status_line(out, status, res.status().canonical_reason());
    let mut has_date = false;
    for (name, values) in res.iter() {
        let name = name.as_str();
        if skip_header(name) {
            if name == "connection"
                && values
                    .iter()
                    .any(|v| crate::http1::list_items(v.as_str().as_bytes()).any(is_close))
            {
                keep_alive = false;
            }
            continue;
        }
        has_date |= name == "date";
        for value in values.iter() {
            let value = value.as_str();
            // http-types checks only for ASCII: a handler echoing input into
            // a header must not be able to split the response.
            if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
                log::warn!(header = name; "response header dropped: control bytes in its value");
                continue;
            }
            header(out, name.as_bytes(), value.as_bytes());
        }
    }
    if !has_date {
        date_header(out);
    }
    if let Some(n) = length {
        let _ = write!(out, "content-length: {n}\r\n");
    } else if ex.head_request && status >= 200 && status != 204 && status != 304 {
        if let Some(n) = res.len() {
            let _ = write!(out, "content-length: {n}\r\n");
        }
    } else if status == 304 {
        // No framing header: the length of a 304 is the cached one's.
    } else if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if ex.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");

    if bodiless {
        send(io, out, ex.send_timeout).await?;
        return Ok(keep_alive);
    }
    let mut body = res.take_body();
    match length {
        Some(n) => {
            let complete = copy_known(io, out, &mut body, n, ex.send_timeout).await?;
            // A body shorter than it said leaves the client waiting for the rest.
            Ok(keep_alive && complete)
        }
        None => {
            send(io, out, ex.send_timeout).await?;
            copy_streamed(io, out, &mut body, chunked, ex.send_timeout).await?;
            Ok(keep_alive)
        }
    }
}

/// Writes the head already in `out` and exactly `n` body bytes; false if the
/// body ended early.
async fn copy_known<W: AsyncWrite + Unpin, R: AsyncRead + Unpin>(
    io: &mut W,
    out: &mut Vec<u8>,
    body: &mut R,
    n: usize,
    send_timeout: Duration,
) -> io::Result<bool> {
    let mut left = n;
    while left > 0 {
        let want = left.min(PIECE);
        let start = out.len();
        out.resize(start + want, 0);
        let got = body.read(&mut out[start..]).await?;
        out.truncate(start + got);
        if got == 0 {
            send(io, out, send_timeout).await?;
            return Ok(false);
        }
        left -= got;
        if out.len() >= PIECE {
            send(io, out, send_timeout).await?;
            out.clear();
        }
    }
    send(io, out, send_timeout).await?;
    Ok(true)
}

/// Writes a body of unknown length as it is read: chunks, or raw bytes.
async fn copy_streamed<W: AsyncWrite + Unpin, R: AsyncRead + Unpin>(
    io: &mut W,
    out: &mut Vec<u8>,
    body: &mut R,
    chunked: bool,
    send_timeout: Duration,
) -> io::Result<()> {
    let mut piece = vec![0; 16 * 1024];
    loop {
        let got = body.read(&mut piece).await?;
        out.clear();
        if got == 0 {
            if chunked {
                out.extend_from_slice(b"0\r\n\r\n");
                send(io, out, send_timeout).await?;
            }
            return Ok(());
        }
        if chunked {
            let _ = write!(out, "{got:x}\r\n");
            out.extend_from_slice(&piece[..got]);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(&piece[..got]);
        }
        send(io, out, send_timeout).await?;
    }
}

async fn send<W: AsyncWrite + Unpin>(io: &mut W, bytes: &[u8], limit: Duration) -> io::Result<()> {
    let write = async {
        io.write_all(bytes).await?;
        io.flush().await
    };
    match async_std::future::timeout(limit, write).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client did not read the answer",
        )),
    }
}

/// Headers the front writes itself, or that describe one connection only.
fn skip_header(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "content-length"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-connection"
    )
}

fn is_close(token: &[u8]) -> bool {
    token.eq_ignore_ascii_case(b"close")
}

fn status_line(out: &mut Vec<u8>, status: u16, reason: &str) {
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The front's own answer: `status` with the JSON error body, connection closed.
pub fn error_response(out: &mut Vec<u8>, status: u16, code: &str, message: &str) {
    let body = serde_json::to_vec(&ErrorBody::new(code, message))
        .unwrap_or_else(|_| br#"{"error":{"code":"bad_request","message":""}}"#.to_vec());
    out.clear();
    status_line(out, status, crate::http1::reason(status));
    date_header(out);
    out.extend_from_slice(b"content-type: application/json\r\n");
    let _ = write!(out, "content-length: {}\r\n", body.len());
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(&body);
}

/// The JSON error code for a status the front answers itself.
pub fn error_code(status: u16) -> &'static str {
    match status {
        408 => "request_timeout",
        413 => "payload_too_large",
        417 => "expectation_failed",
        431 => "header_too_large",
        500 => "internal_error",
        501 => "not_implemented",
        505 => "http_version_not_supported",
        _ => "bad_request",
    }
}

/// Writes `date: <IMF-fixdate>`, formatted at most once a second per thread.
fn date_header(out: &mut Vec<u8>) {
    thread_local! {
        static CACHE: std::cell::Cell<(u64, [u8; 29])> = const { std::cell::Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let text = CACHE.with(|cache| {
        let (at, text) = cache.get();
        if at == now {
            text
        } else {
            let text = http_date(now);
            cache.set((now, text));
            text
        }
    });
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(&text);
    out.extend_from_slice(b"\r\n");
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` for seconds since the Unix epoch.
fn http_date(secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = crate::logging::civil_from_days(days);
    let mut t = [0u8; 29];
    t[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    t[3..5].copy_from_slice(b", ");
    two(&mut t[5..7], day as u32);
    t[7] = b' ';
    t[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    t[11] = b' ';
    let y = year.min(9999) as u32;
    two(&mut t[12..14], y / 100);
    two(&mut t[14..16], y % 100);
    t[16] = b' ';
    two(&mut t[17..19], (rem / 3600) as u32);
    t[19] = b':';
    two(&mut t[20..22], (rem % 3600 / 60) as u32);
    t[22] = b':';
    two(&mut t[23..25], (rem % 60) as u32);
    t[25..29].copy_from_slice(b" GMT");
    t
}

fn two(out: &mut [u8], n: u32) {
    out[0] = b'0' + (n / 10 % 10) as u8;
    out[1] = b'0' + (n % 10) as u8;
}

/// Whether `method` is HEAD (no body in the answer).
pub fn is_head(method: &Method) -> bool {
    *method == Method::Head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        assert_eq!(&http_date(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&http_date(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(&http_date(951_782_400), b"Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(&http_date(1_767_225_599), b"Wed, 31 Dec 2025 23:59:59 GMT");
    }

    #[test]
    fn error_responses_are_json_and_close() {
        let mut out = Vec::new();
        error_response(&mut out, 400, "bad_request", "a \"quoted\" thing");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "bad_request");
        assert_eq!(v["error"]["message"], "a \"quoted\" thing");
    }
}
