//! What a request says about its key: whether the route's rule applies to
//! it, its key (checked), and the fingerprint a repeat must match.
//!
//! Read from the forwarded request (head and buffered body): the target
//! there is the normalized one routing chose, and the body is de-chunked,
//! so two framings of one request fingerprint alike.

use super::record::Digest;
use sha2::{Digest as _, Sha256};
use shared::config::{IdempotencyConfig, IdempotencyMode};
use shared::http1::{parse_request, RequestHead};

/// Longest key taken, in bytes. The draft sets none; a UUID is 36, and 255
/// leaves room for any sane scheme while keeping records small. Longer is
/// 400 before any store call. (A key past `max_header_bytes`, 1 MB say,
/// never gets here: the head is refused 431 as it is read.)
pub(crate) const MAX_KEY_LEN: usize = 255;

/// A request that carries a usable key on a listed method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Keyed {
    /// Hash of (route, client scope, key): the record's name in the store.
    pub(crate) id: Digest,
    /// Hash of (method, normalized target, body hash).
    pub(crate) fingerprint: Digest,
}

/// What the route's rule makes of a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KeyRead {
    /// Not a listed method, or no key under `honor`: forwarded as ever.
    Pass,
    Keyed(Keyed),
    /// `require` and no key.
    Missing,
    /// A key that cannot be one; the reason, for the client.
    Invalid(&'static str),
}

/// Applies `rule` (the route with `prefix`) to the forwarded `request`.
pub(crate) fn read(request: &[u8], prefix: &str, rule: &IdempotencyConfig) -> KeyRead {
    let mut head = RequestHead::default();
    if !matches!(parse_request(request, &mut head, request.len()), Ok(true)) {
        // The gateway wrote this head itself; it always parses.
        return KeyRead::Pass;
    }
    let method = head.method(request);
    if !rule.methods.iter().any(|m| m.as_bytes() == method) {
        return KeyRead::Pass;
    }
    let mut keys = head
        .headers
        .iter()
        .filter(|h| request[h.name.clone()].eq_ignore_ascii_case(b"idempotency-key"))
        .map(|h| &request[h.value.clone()]);
    let key = match (keys.next(), keys.next()) {
        (None, _) if rule.mode == IdempotencyMode::Require => return KeyRead::Missing,
        (None, _) => return KeyRead::Pass,
        (Some(_), Some(_)) => return KeyRead::Invalid("more than one Idempotency-Key field"),
        (Some(key), None) => match checked(key) {
            Ok(key) => key,
            Err(why) => return KeyRead::Invalid(why),
        },
    };
    let scope = head.header(request, "authorization").unwrap_or_default();
    let body = &request[head.len..];
    KeyRead::Keyed(Keyed {
        id: record_id(prefix, scope, key),
        fingerprint: fingerprint(method, head.target(request), body),
    })
}

/// The key itself: a bare token or a structured-field string (the draft's
/// form, `"..."`), 1 to [`MAX_KEY_LEN`] printable ASCII characters.
fn checked(value: &[u8]) -> Result<&[u8], &'static str> {
    let key = match value {
        [b'"', inner @ .., b'"'] => inner,
        other => other,
    };
    if key.is_empty() {
        return Err("the Idempotency-Key is empty");
    }
    if key.len() > MAX_KEY_LEN {
        return Err("the Idempotency-Key is longer than 255 characters");
    }
    if !key.iter().all(|b| (0x20..0x7f).contains(b) && *b != b'"') {
        return Err("the Idempotency-Key must be printable ASCII characters");
    }
    Ok(key)
}

/// Where the record lives: route, client scope and key, hashed. The scope
/// is the `Authorization` value (empty without one): one client's key can
/// neither collide with nor replay another's answer, and a client that
/// reconnects from another address (a phone changing networks, the retry
/// this is for) keeps its scope, which a scope by address would lose.
fn record_id(prefix: &str, authorization: &[u8], key: &[u8]) -> Digest {
    digest(&[prefix.as_bytes(), authorization], key)
}

/// Hash of (method, normalized target, body).
fn fingerprint(method: &[u8], target: &[u8], body: &[u8]) -> Digest {
    digest(&[method, target], body)
}

/// One SHA-256 over `parts`, each after its length, then `last`: no two
/// different lists write the same bytes, so none share a digest, and the
/// body or the `Authorization` value is hashed once, in the same pass.
fn digest(parts: &[&[u8]], last: &[u8]) -> Digest {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(last);
    Digest(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(mode: IdempotencyMode) -> IdempotencyConfig {
        IdempotencyConfig {
            mode,
            ..IdempotencyConfig::default()
        }
    }

    fn request(method: &str, target: &str, fields: &str, body: &str) -> Vec<u8> {
        format!(
            "{method} {target} HTTP/1.1\r\nhost: a\r\n{fields}content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn keyed(r: KeyRead) -> Keyed {
        match r {
            KeyRead::Keyed(k) => k,
            other => panic!("not keyed: {other:?}"),
        }
    }

    #[test]
    fn a_listed_method_with_a_key_is_keyed_and_others_pass() {
        let honor = rule(IdempotencyMode::Honor);
        let post = request("POST", "/pay", "idempotency-key: k1\r\n", "{}");
        let k = keyed(read(&post, "/", &honor));
        assert_ne!(k.id, k.fingerprint);
        assert_eq!(
            k,
            keyed(read(&post, "/", &honor)),
            "the same request, the same digests"
        );
        let get = request("GET", "/pay", "idempotency-key: k1\r\n", "");
        assert_eq!(read(&get, "/", &honor), KeyRead::Pass);
        let unkeyed = request("POST", "/pay", "", "{}");
        assert_eq!(read(&unkeyed, "/", &honor), KeyRead::Pass);
        let required = rule(IdempotencyMode::Require);
        assert_eq!(read(&unkeyed, "/", &required), KeyRead::Missing);
    }

    #[test]
    fn the_quoted_form_is_the_same_key_and_scope_route_and_key_separate_records() {
        let honor = rule(IdempotencyMode::Honor);
        let bare = keyed(read(
            &request("POST", "/p", "idempotency-key: k1\r\n", "{}"),
            "/",
            &honor,
        ));
        let quoted = keyed(read(
            &request("POST", "/p", "idempotency-key: \"k1\"\r\n", "{}"),
            "/",
            &honor,
        ));
        assert_eq!(bare, quoted);
        let other_client = request(
            "POST",
            "/p",
            "authorization: Bearer b\r\nidempotency-key: k1\r\n",
            "{}",
        );
        let other_route = keyed(read(
            &request("POST", "/p", "idempotency-key: k1\r\n", "{}"),
            "/p",
            &honor,
        ));
        let other_key = keyed(read(
            &request("POST", "/p", "idempotency-key: k2\r\n", "{}"),
            "/",
            &honor,
        ));
        for other in [
            keyed(read(&other_client, "/", &honor)),
            other_route,
            other_key,
        ] {
            assert_ne!(other.id, bare.id);
            assert_eq!(other.fingerprint, bare.fingerprint);
        }
    }

    #[test]
    fn method_target_and_body_each_change_the_fingerprint() {
        let honor = rule(IdempotencyMode::Honor);
        let f = |m: &str, t: &str, b: &str| {
            keyed(read(
                &request(m, t, "idempotency-key: k\r\n", b),
                "/",
                &honor,
            ))
            .fingerprint
        };
        let base = f("POST", "/p", "{}");
        assert_ne!(f("PATCH", "/p", "{}"), base);
        assert_ne!(f("POST", "/q", "{}"), base);
        assert_ne!(f("POST", "/p", "{\"a\":1}"), base);
        assert_eq!(f("POST", "/p", "{}"), base);
    }

    #[test]
    fn long_empty_non_ascii_or_repeated_keys_are_invalid() {
        let honor = rule(IdempotencyMode::Honor);
        let long = format!("idempotency-key: {}\r\n", "k".repeat(MAX_KEY_LEN + 1));
        let longest = format!("idempotency-key: {}\r\n", "k".repeat(MAX_KEY_LEN));
        assert!(matches!(
            read(&request("POST", "/", &longest, ""), "/", &honor),
            KeyRead::Keyed(_)
        ));
        for fields in [
            long.as_str(),
            "idempotency-key: \"\"\r\n",
            "idempotency-key: a\"b\r\n",
            "idempotency-key: k\r\nidempotency-key: k\r\n",
        ] {
            let got = read(&request("POST", "/", fields, ""), "/", &honor);
            assert!(matches!(got, KeyRead::Invalid(_)), "{fields:?}: {got:?}");
        }
    }
}
