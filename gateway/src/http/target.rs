//! Request targets and `Host` values, made unambiguous before routing.
//!
//! Routes only confine if the gateway and the instance read a target the same
//! way. The instances' URL parser decodes `%2e`, removes dot segments and
//! reads `\` as `/`, so `/api/%2e%2e/chaos` routed on its raw bytes under
//! `/api` would reach the instance's `/chaos`. The gateway therefore routes
//! on, and forwards, the normalized target (RFC 3986 section 6.2.2):
//! percent-encoded unreserved characters decoded, dot segments removed
//! (section 5.2.4), the query as it came. Bytes that different parsers read
//! differently are refused instead: `\`, `#`, bytes above 0x7F, and broken
//! percent-encodings in the path. `%2F` stays encoded (it is data, not a
//! separator), as nginx and Envoy keep it.
//!
//! Most targets need none of this: one scan finds that and copies them as
//! they are, with no allocation.

/// Why a target or a `Host` was refused (400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refused(pub &'static str);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// What the first scan found.
enum Scan {
    /// Forward as it is.
    Clean,
    /// Has percent-encodings or dot-like segments in the path.
    Rewrite,
}

fn scan(target: &[u8]) -> Result<Scan, Refused> {
    let mut rewrite = false;
    let mut in_path = true;
    let mut prev = 0u8;
    for &b in target {
        match b {
            0x80.. => return Err(Refused("bytes above 0x7F in the request target")),
            b'#' => return Err(Refused("a fragment (#) in the request target")),
            b'\\' if in_path => return Err(Refused("a backslash in the request path")),
            b'?' => in_path = false,
            b'%' if in_path => rewrite = true,
            b'.' if in_path && prev == b'/' => rewrite = true,
            _ => {}
        }
        prev = b;
    }
    Ok(if rewrite { Scan::Rewrite } else { Scan::Clean })
}

/// The normalized form of an origin-form `target` (or `*`); borrowed when
/// nothing changes.
#[cfg(test)]
pub(crate) fn normalize(target: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, Refused> {
    match scan(target)? {
        Scan::Clean => Ok(std::borrow::Cow::Borrowed(target)),
        Scan::Rewrite => {
            let mut out = Vec::with_capacity(target.len());
            rewrite(&mut out, target)?;
            Ok(std::borrow::Cow::Owned(out))
        }
    }
}

/// Appends the normalized form of `target` to `out` (see [`normalize`]).
pub(crate) fn normalize_into(out: &mut Vec<u8>, target: &[u8]) -> Result<(), Refused> {
    match scan(target)? {
        Scan::Clean => {
            out.extend_from_slice(target);
            Ok(())
        }
        Scan::Rewrite => rewrite(out, target),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes the path's unreserved percent-encodings segment by segment and
/// applies each dot segment to what is already written, which is RFC 3986's
/// remove_dot_segments for an absolute path.
fn rewrite(out: &mut Vec<u8>, target: &[u8]) -> Result<(), Refused> {
    let split = target
        .iter()
        .position(|b| *b == b'?')
        .unwrap_or(target.len());
    let (path, query) = target.split_at(split);
    let Some(rest) = path.strip_prefix(b"/") else {
        // `*`: nothing to normalize (the scan only sends paths here, but be safe).
        out.extend_from_slice(target);
        return Ok(());
    };
    let base = out.len();
    let mut segments = rest.split(|b| *b == b'/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        let start = out.len();
        out.push(b'/');
        let mut i = 0;
        while i < segment.len() {
            let b = segment[i];
            if b == b'%' {
                let (Some(hi), Some(lo)) = (
                    segment.get(i + 1).copied().and_then(hex),
                    segment.get(i + 2).copied().and_then(hex),
                ) else {
                    out.truncate(base);
                    return Err(Refused("a malformed percent-encoding in the request path"));
                };
                let decoded = (hi << 4) | lo;
                if is_unreserved(decoded) {
                    out.push(decoded);
                } else {
                    out.extend_from_slice(&segment[i..i + 3]);
                }
                i += 3;
            } else {
                out.push(b);
                i += 1;
            }
        }
        match &out[start + 1..] {
            b"." => out.truncate(start),
            b".." => {
                out.truncate(start);
                // Drop the last written segment: back to its '/' (never before the base).
                let cut = out[base..]
                    .iter()
                    .rposition(|b| *b == b'/')
                    .map_or(base, |p| base + p);
                out.truncate(cut);
            }
            _ => continue,
        }
        if last {
            // `/a/.` and `/a/b/..` both end as the directory `/a/`.
            out.push(b'/');
        }
    }
    out.extend_from_slice(query);
    Ok(())
}

/// Whether a `Host` value is `host[:port]`: a reg-name (unreserved,
/// sub-delims, percent-encodings), an IPv4 address or a bracketed IPv6
/// literal, then optionally `:` and up to five digits. Nothing else may
/// follow (`/`, `?`, `#`, `@`, white space), since the instances build their
/// request URL from `Host` and the target.
pub(crate) fn valid_host(value: &[u8]) -> bool {
    let (host, port) = if let Some(inner) = value.strip_prefix(b"[") {
        let Some(close) = inner.iter().position(|b| *b == b']') else {
            return false;
        };
        let literal = &inner[..close];
        let ok = literal.len() >= 2
            && literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
        if !ok {
            return false;
        }
        match &inner[close + 1..] {
            [] => return true,
            [b':', port @ ..] => (&b""[..], port),
            _ => return false,
        }
    } else {
        match value.iter().position(|b| *b == b':') {
            Some(colon) => (&value[..colon], &value[colon + 1..]),
            None => (value, &b""[..]),
        }
    };
    let port_ok = port.len() <= 5 && port.iter().all(u8::is_ascii_digit);
    port_ok && (value.starts_with(b"[") || reg_name(host))
}

fn reg_name(host: &[u8]) -> bool {
    if host.is_empty() {
        return false;
    }
    let mut i = 0;
    while i < host.len() {
        let b = host[i];
        if b == b'%' {
            if host.get(i + 1).and_then(|b| hex(*b)).is_none()
                || host.get(i + 2).and_then(|b| hex(*b)).is_none()
            {
                return false;
            }
            i += 3;
            continue;
        }
        let sub_delim = matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
        );
        if !(is_unreserved(b) || sub_delim) {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn norm(t: &str) -> String {
        String::from_utf8(normalize(t.as_bytes()).unwrap().into_owned()).unwrap()
    }

    #[test]
    fn clean_targets_are_borrowed() {
        for t in [
            "/",
            "/api",
            "/api/x?y=1&z=/../",
            "*",
            "/a.b/c.",
            "/api/.well",
        ] {
            let got = normalize(t.as_bytes()).unwrap();
            assert_eq!(&*got, t.as_bytes());
            if !t.contains("/.") {
                assert!(matches!(got, Cow::Borrowed(_)), "{t} was copied");
            }
        }
    }

    #[test]
    fn rfc3986_dot_segments() {
        let cases = [
            ("/a/b/c/./../../g", "/a/g"),
            ("/mid/content=5/../6", "/mid/6"),
            ("/..", "/"),
            ("/../..", "/"),
            ("/.", "/"),
            ("/a/..", "/"),
            ("/a/../", "/"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a//../b", "/a/b"),
            ("/a//b", "/a//b"),
            ("/api/../chaos", "/chaos"),
            ("/api/./x", "/api/x"),
            ("/api/.x/..y", "/api/.x/..y"),
            ("/api/../chaos?q=/../x", "/chaos?q=/../x"),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input), want, "{input}");
        }
    }

    #[test]
    fn unreserved_encodings_are_decoded_others_kept() {
        assert_eq!(norm("/api/%2e%2e/chaos"), "/chaos");
        assert_eq!(norm("/api/%2E%2e/chaos"), "/chaos");
        assert_eq!(norm("/api/.%2e/chaos"), "/chaos");
        assert_eq!(norm("/%41%7a%2D%5F%7E%30"), "/Az-_~0");
        assert_eq!(norm("/api/..%2Fchaos"), "/api/..%2Fchaos");
        assert_eq!(norm("/api/%2e%2e%2fchaos"), "/api/..%2fchaos");
        assert_eq!(norm("/a%20b?%2e%2e"), "/a%20b?%2e%2e");
        assert_eq!(norm("/%252e%252e/x"), "/%252e%252e/x");
    }

    #[test]
    fn ambiguous_bytes_are_refused() {
        for t in [
            &b"/api/..\\chaos"[..],
            b"/api#/../x",
            b"/api?x#y",
            b"/caf\xc3\xa9",
            b"/a?\xff",
            b"/a%2",
            b"/a%zz",
            b"/a%",
        ] {
            assert!(normalize(t).is_err(), "{}", String::from_utf8_lossy(t));
        }
        let mut out = b"GET ".to_vec();
        assert!(normalize_into(&mut out, b"/x/%2").is_err());
        assert_eq!(out, b"GET ", "a refused target leaves nothing behind");
    }

    #[test]
    fn writes_after_what_is_already_there() {
        let mut out = b"GET ".to_vec();
        normalize_into(&mut out, b"/../../x/./y").unwrap();
        assert_eq!(out, b"GET /x/y");
        out.truncate(4);
        normalize_into(&mut out, b"/plain?q").unwrap();
        assert_eq!(out, b"GET /plain?q");
    }

    #[test]
    fn hosts() {
        for ok in [
            "a",
            "gateway:8000",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8000",
            "xn--a.example",
            "a_b-c~d",
            "h:",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "x/chaos?",
            "x/chaos",
            "a?b",
            "a#b",
            "u@host",
            "a b",
            "a:b",
            "a:123456",
            "a:1:2",
            ":80",
            "[::1",
            "::1]",
            "[[::1]]",
            "[::1]x",
            "[g::1]",
            "a\\b",
            "caf\u{e9}",
            "a%2",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }
}
