//! The requests: one JSON POST per connection, built once and then patched
//! in place, so the hot loop makes no allocation and every body is still
//! unique (connection id and sequence number) and checkable against its echo.
//!
//! A body of `size` bytes: `{"conn":"000003","seq":"000000000042","pad":"xx…x"}`.
//! The numbers are zero-padded strings (JSON numbers may not have leading
//! zeros), so their width, and the body's length, never changes.

use shared::http1::client::post;

const CONN_DIGITS: usize = 6;
const SEQ_DIGITS: usize = 12;
const PREFIX: &str = "{\"conn\":\"";
const MIDDLE: &str = "\",\"seq\":\"";
const PAD: &str = "\",\"pad\":\"";
const END: &str = "\"}";

/// The smallest body that holds the connection id and the sequence number.
pub const fn min_size() -> usize {
    PREFIX.len() + CONN_DIGITS + MIDDLE.len() + SEQ_DIGITS + PAD.len() + END.len()
}

/// Most connections whose id fits the body.
pub const MAX_CONNECTIONS: usize = 999_999;

/// One connection's request, head and body, in one buffer sent with one write.
#[derive(Clone, Debug)]
pub struct Request {
    bytes: Vec<u8>,
    body_start: usize,
    seq_at: usize,
}

impl Request {
    /// `size` must be at least [`min_size`] and `conn` at most [`MAX_CONNECTIONS`].
    pub fn new(host: &str, path: &str, conn: usize, size: usize) -> Request {
        let pad = size.saturating_sub(min_size());
        let mut body = String::with_capacity(size);
        body.push_str(PREFIX);
        body.push_str(&format!(
            "{:0width$}",
            conn % (MAX_CONNECTIONS + 1),
            width = CONN_DIGITS
        ));
        body.push_str(MIDDLE);
        let seq_in_body = body.len();
        body.push_str(&"0".repeat(SEQ_DIGITS));
        body.push_str(PAD);
        body.push_str(&"x".repeat(pad));
        body.push_str(END);
        let mut bytes = Vec::new();
        post(&mut bytes, host, path, body.as_bytes(), "");
        let body_start = bytes.len() - body.len();
        Request {
            bytes,
            body_start,
            seq_at: body_start + seq_in_body,
        }
    }

    /// Writes `seq` (modulo 10^12) into the body: the next request's identity.
    pub fn set_seq(&mut self, mut seq: u64) {
        let digits = &mut self.bytes[self.seq_at..self.seq_at + SEQ_DIGITS];
        for d in digits.iter_mut().rev() {
            *d = b'0' + (seq % 10) as u8;
            seq /= 10;
        }
    }

    /// The whole request as sent.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The JSON body the echo must equal.
    pub fn body(&self) -> &[u8] {
        &self.bytes[self.body_start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_json_of_the_exact_size_and_unique() {
        for size in [min_size(), 100, 256, 4096] {
            let mut r = Request::new("gateway", "/", 7, size);
            r.set_seq(42);
            let body = r.body().to_vec();
            assert_eq!(body.len(), size);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["conn"], "000007");
            assert_eq!(v["seq"], "000000000042");
            r.set_seq(43);
            assert_ne!(r.body(), &body[..]);
            let other = Request::new("gateway", "/", 8, size);
            assert_ne!(other.body(), &body[..]);
        }
    }

    #[test]
    fn the_head_announces_the_body() {
        let r = Request::new("127.0.0.1:8000", "/api/x", 1, 256);
        let text = String::from_utf8(r.bytes().to_vec()).unwrap();
        assert!(text.starts_with("POST /api/x HTTP/1.1\r\nhost: 127.0.0.1:8000\r\n"));
        assert!(text.contains("content-length: 256\r\n"));
        assert!(text.ends_with(std::str::from_utf8(r.body()).unwrap()));
    }
}
