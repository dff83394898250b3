//! JSON shapes spoken between apps, discovery and the gateway.
//!
//! Requests reject unknown fields, so a typo in a client is a 400 rather than
//! a silently ignored key. Ports are accepted as a number or a string and
//! always answered as a string, as the seed's payloads do.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Longest namespace discovery accepts.
pub const MAX_NAMESPACE_CHARS: usize = 128;

/// A TCP port from 1 to 65535, read from `8080` or `"8080"`, written as `"8080"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port(pub u16);

impl Port {
    /// Parses the textual form, naming what is wrong: ASCII digits only, no
    /// sign, no padding, no leading zero (`"08080"` and `" 8081 "` are refused,
    /// so one port has one spelling).
    pub fn parse(text: &str) -> Result<Port, String> {
        let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        if !digits_only || text.len() > 5 {
            return Err(format!(
                "port must be a number from 1 to 65535 written with digits only, got {:?}",
                shown(text)
            ));
        }
        if text.len() > 1 && text.starts_with('0') {
            return Err(format!(
                "port must be written without leading zeros, got {text:?}"
            ));
        }
        match text.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => Ok(Port(n as u16)),
            _ => Err(format!("port must be from 1 to 65535, got {text}")),
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port from 1 to 65535, as a number or a string")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Port, E> {
                match u16::try_from(n) {
                    Ok(p) if p >= 1 => Ok(Port(p)),
                    _ => Err(E::custom(format!("port must be from 1 to 65535, got {n}"))),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Port, E> {
                Err(E::custom(format!("port must be from 1 to 65535, got {n}")))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Port, E> {
                Err(E::custom(format!("port must be a whole number, got {n}")))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Port, E> {
                Port::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `host:port`, with brackets around an IPv6 literal.
pub fn authority(host: &str, port: Port) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `POST /api/register`: an instance announcing itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub namespace: String,
    pub port: Port,
    /// IP or host name; `ip` is the seed's name for it. Defaults to the caller's IP.
    #[serde(alias = "ip", default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_path: Option<String>,
    /// Its share under weighted round robin, 1..=[`MAX_WEIGHT`]; 1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// Largest registered weight.
pub const MAX_WEIGHT: u32 = 1000;

/// `POST /api/deregister`: an instance leaving.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeregisterRequest {
    pub namespace: String,
    pub port: Port,
    #[serde(alias = "ip", default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Answer to register and deregister.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Registration {
    pub id: String,
    pub namespace: String,
    pub host: String,
    pub port: Port,
    pub status: InstanceStatus,
}

/// `POST /api/lookup`: pick an available instance, skipping `exclude` (`host:port`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LookupRequest {
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// Answer to a lookup; `ip` and `service_available_count` are the seed's fields.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LookupResponse {
    pub id: String,
    pub namespace: String,
    pub host: String,
    pub ip: String,
    pub port: Port,
    pub service_available_count: usize,
}

/// Health of an instance as discovery sees it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InstanceStatus {
    /// Registered, first check not done yet; not routable.
    Pending,
    Available,
    Unavailable,
}

impl InstanceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Pending => "pending",
            InstanceStatus::Available => "available",
            InstanceStatus::Unavailable => "unavailable",
        }
    }
}

/// One instance in `GET /api/services`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InstanceInfo {
    pub id: String,
    pub host: String,
    pub port: Port,
    pub status: InstanceStatus,
    pub health_check_path: String,
    /// Its registered weight (weighted round robin).
    #[serde(default = "one")]
    pub weight: u32,
    /// Milliseconds the last health check took, if one has run.
    pub last_check_latency_ms: Option<f64>,
    /// Unix time in milliseconds of the last health check.
    pub last_check_unix_ms: Option<u64>,
    /// Why the last check failed, if it did.
    pub last_check_error: Option<String>,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    /// Unix time in milliseconds when it entered its current status.
    #[serde(default)]
    pub since_unix_ms: u64,
    /// In maintenance: not routed to, still checked, kept across re-registration.
    #[serde(default)]
    pub maintenance: bool,
    /// Unix time in milliseconds since when it is in maintenance.
    #[serde(default)]
    pub maintenance_since_unix_ms: Option<u64>,
}

/// `PUT` / `DELETE /api/maintenance`: take an instance out of rotation, or put it back.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    pub namespace: String,
    pub port: Port,
    /// Defaults to the caller's IP, as in a registration.
    #[serde(alias = "ip", default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Answer to a maintenance change: the instance with its maintenance state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MaintenanceAnswer {
    pub id: String,
    pub namespace: String,
    pub host: String,
    pub port: Port,
    pub status: InstanceStatus,
    pub maintenance: bool,
    pub maintenance_since_unix_ms: Option<u64>,
}

/// An available instance as pushed to watchers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub id: String,
    pub host: String,
    pub port: Port,
    /// Its registered weight; left out when 1, so readers that know no
    /// weights see the same object as before.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

fn is_one(w: &u32) -> bool {
    *w == 1
}

impl Endpoint {
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }
}

/// `data:` of an `instances` event on `GET /api/watch`: the whole available set.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WatchEvent {
    pub namespace: String,
    /// Grows by one with every change of the namespace's available set.
    pub version: u64,
    pub instances: Vec<Endpoint>,
}

/// The `data:` of an `instances` event as discovery sends it: the set, and
/// whether the discovery that sent it is still warming up.
///
/// Warming is not part of the set (it changes with no new version, and a
/// mirror's cached set is shared by every stream), so it rides beside it:
/// `{"namespace", "version", "instances", "warming": true}`, the key left out
/// when false, so the seed's readers and [`WatchEvent`] readers see the same
/// object as before. A reader must not let a warming set remove anything.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WatchMessage {
    #[serde(flatten)]
    pub event: WatchEvent,
    /// Discovery started lately and may not have relearned every instance
    /// yet (apps re-register on their own interval); absent means false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub warming: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Every error answer: `{"error": {"code", "message"}}`, plus the request id from the gateway.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                request_id: None,
            },
        }
    }

    pub fn with_request_id(mut self, id: impl Into<String>) -> Self {
        self.error.request_id = Some(id.into());
        self
    }

    pub fn to_json(&self) -> String {
        // Serialising plain strings cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// At most this much of a refused value is echoed back in an error message.
const SHOWN_CHARS: usize = 64;

/// `text`, cut to [`SHOWN_CHARS`] characters for an error message.
fn shown(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

/// Checks a namespace: 1 to 128 printable characters, no leading or trailing
/// space, and none of the characters that make two different names look the
/// same (see [`is_deceptive`]).
pub fn validate_namespace(ns: &str) -> Result<(), String> {
    let chars = ns.chars().count();
    if chars == 0 || ns.trim().is_empty() {
        return Err("namespace must not be empty".into());
    }
    if chars > MAX_NAMESPACE_CHARS {
        return Err(format!(
            "namespace must be at most {MAX_NAMESPACE_CHARS} characters, got {chars}"
        ));
    }
    if let Some(c) = ns.chars().find(|&c| is_deceptive(c)) {
        return Err(format!(
            "namespace must contain only printable characters and plain spaces, got U+{:04X} in {:?}",
            c as u32,
            shown(ns)
        ));
    }
    if ns.starts_with(' ') || ns.ends_with(' ') {
        return Err(format!(
            "namespace must not start or end with a space, got {:?}",
            shown(ns)
        ));
    }
    Ok(())
}

/// Characters a namespace may not hold: control characters, format characters
/// (Unicode category Cf, the bidi controls and zero-width characters among
/// them), line and paragraph separators, every white space but U+0020, and the
/// invisible fillers and variation selectors. Each of them lets a registrant
/// make a namespace that looks like `service A` and is not.
pub fn is_deceptive(c: char) -> bool {
    /// Category Cf (Unicode 15.1) and the invisible non-Cf characters.
    const RANGES: &[(u32, u32)] = &[
        (0x00AD, 0x00AD),   // soft hyphen
        (0x034F, 0x034F),   // combining grapheme joiner
        (0x0600, 0x0605),   // Arabic number signs
        (0x061C, 0x061C),   // Arabic letter mark (bidi)
        (0x06DD, 0x06DD),   // Arabic end of ayah
        (0x070F, 0x070F),   // Syriac abbreviation mark
        (0x0890, 0x0891),   // Arabic pound/piastre mark above
        (0x08E2, 0x08E2),   // Arabic disputed end of ayah
        (0x115F, 0x1160),   // Hangul fillers
        (0x17B4, 0x17B5),   // Khmer inherent vowels
        (0x180B, 0x180F),   // Mongolian variation selectors and vowel separator
        (0x200B, 0x200F),   // zero-width space/joiners, LRM, RLM
        (0x2028, 0x202E),   // separators, bidi embeddings and overrides
        (0x2060, 0x206F),   // word joiner, invisible operators, bidi isolates
        (0x3164, 0x3164),   // Hangul filler
        (0xFE00, 0xFE0F),   // variation selectors
        (0xFEFF, 0xFEFF),   // byte order mark / zero-width no-break space
        (0xFFA0, 0xFFA0),   // halfwidth Hangul filler
        (0xFFF9, 0xFFFB),   // interlinear annotations
        (0x110BD, 0x110BD), // Kaithi number sign
        (0x110CD, 0x110CD), // Kaithi number sign above
        (0x13430, 0x1343F), // Egyptian hieroglyph format controls
        (0x1BCA0, 0x1BCA3), // shorthand format controls
        (0x1D173, 0x1D17A), // musical symbol format controls
        (0xE0000, 0xE0FFF), // tags and variation selectors supplement
    ];
    let n = c as u32;
    c.is_control()
        || (c.is_whitespace() && c != ' ')
        || RANGES.iter().any(|&(lo, hi)| (lo..=hi).contains(&n))
}

/// Longest host name accepted (RFC 1123 section 2.1, without the trailing dot).
pub const MAX_HOST_CHARS: usize = 253;

/// The one spelling of a registered host, or why it is refused.
///
/// An IP literal is answered in its canonical text (`::ffff:10.0.0.1` is
/// `10.0.0.1`); an IPv6 literal may come in brackets, which are dropped. A
/// name is made of RFC 1123 labels (ASCII letters, digits and `-`, 1 to 63
/// characters, not starting or ending with `-`), at most 253 characters, and
/// is answered in lower case. Refused besides: labels with `--` in the third
/// and fourth positions other than IDNA's `xn--` (reserved by RFC 5891), an
/// all-digit last label (`09.1`: not a name, RFC 1123 section 2.1, and not a
/// valid IPv4 address), and names made only of numeric labels (`0x7f.1`),
/// which resolvers read as IPv4 in their legacy forms. An `xn--` label is
/// taken as the LDH label it is; whether it resolves is found at registration.
pub fn normalize_host(host: &str) -> Result<String, String> {
    let refused = |why: &str| {
        format!(
            "host must be an IP address or an RFC 1123 host name: {why}, got {:?}",
            shown(host)
        )
    };
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| refused("an opening bracket without its closing one"))?;
        return match inner.parse::<std::net::Ipv6Addr>() {
            Ok(ip) => Ok(std::net::IpAddr::V6(ip).to_canonical().to_string()),
            Err(_) => Err(refused("only an IPv6 address may stand in brackets")),
        };
    }
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(ip.to_canonical().to_string());
    }
    check_name(host).map_err(refused)?;
    Ok(host.to_ascii_lowercase())
}

/// The RFC 1123 rules of [`normalize_host`] for a name.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > MAX_HOST_CHARS {
        return Err("a name is at most 253 characters");
    }
    let mut labels = 0;
    let mut numeric = 0;
    let mut last_all_digits = false;
    for label in name.split('.') {
        let bytes = label.as_bytes();
        if bytes.is_empty() || bytes.len() > 63 {
            return Err("each dot-separated label is 1 to 63 characters");
        }
        if !bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        {
            return Err("a name holds only ASCII letters, digits, '-' and '.'");
        }
        if bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
            return Err("a label does not start or end with '-'");
        }
        if bytes.len() >= 4 && &bytes[2..4] == b"--" && !bytes[..2].eq_ignore_ascii_case(b"xn") {
            return Err("'--' in a label's third and fourth places is reserved");
        }
        last_all_digits = bytes.iter().all(u8::is_ascii_digit);
        let hex = bytes.len() > 2
            && bytes[..2].eq_ignore_ascii_case(b"0x")
            && bytes[2..].iter().all(u8::is_ascii_hexdigit);
        labels += 1;
        numeric += usize::from(last_all_digits || hex);
    }
    if last_all_digits {
        return Err("the last label is all digits: not a name, and not a valid IPv4 address");
    }
    if numeric == labels {
        return Err("numeric labels only: a legacy IPv4 form, write the address in dotted decimal");
    }
    Ok(())
}

/// Checks a host as [`normalize_host`] does.
pub fn validate_host(host: &str) -> Result<(), String> {
    normalize_host(host).map(|_| ())
}

/// Checks a health check path: absolute, printable, no spaces.
pub fn validate_path(path: &str) -> Result<(), String> {
    if path.starts_with('/') && path.len() <= 1024 && path.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(format!(
            "health_check_path must start with '/' and contain no spaces, got {path:?}"
        ))
    }
}

/// The upstreams in the gateway's ring for `namespace`, read from the JSON
/// of its admin `/status`; tools use it to wait until an instance is routed.
pub fn ring_members(status: &serde_json::Value, namespace: &str) -> Vec<String> {
    status["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["namespace"] == namespace)
        .flat_map(|n| n["members"].as_array().cloned().unwrap_or_default())
        .filter_map(|m| m["upstream"].as_str().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_members_come_from_the_status_of_the_namespace() {
        let status = serde_json::json!({"namespaces": [
            {"namespace": "other", "members": [{"upstream": "127.0.0.1:1"}]},
            {"namespace": "service A", "members": [{"upstream": "127.0.0.1:2"}, {"upstream": "127.0.0.1:3"}]},
        ]});
        assert_eq!(
            ring_members(&status, "service A"),
            vec!["127.0.0.1:2", "127.0.0.1:3"]
        );
    }

    #[test]
    fn warming_rides_beside_the_set_and_old_readers_ignore_it() {
        let set =
            r#"{"namespace":"ns","version":3,"instances":[{"id":"a","host":"h","port":"80"}]}"#;
        let plain: WatchMessage = serde_json::from_str(set).unwrap();
        assert!(!plain.warming, "absent means warmed");
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            set,
            "false is left out"
        );
        let warming = WatchMessage {
            warming: true,
            ..plain.clone()
        };
        let text = serde_json::to_string(&warming).unwrap();
        assert!(text.ends_with(r#","warming":true}"#), "{text}");
        assert_eq!(
            serde_json::from_str::<WatchMessage>(&text).unwrap(),
            warming
        );
        // A reader of the set alone (the seed's, testkit's) reads it unchanged.
        let old: WatchEvent = serde_json::from_str(&text).unwrap();
        assert_eq!(old, plain.event);
        // A port as a number still reads through the flattened set.
        let number =
            r#"{"namespace":"ns","version":1,"instances":[{"id":"a","host":"h","port":80}]}"#;
        let read: WatchMessage = serde_json::from_str(number).unwrap();
        assert_eq!(read.event.instances[0].port.0, 80);
    }

    #[test]
    fn port_reads_number_and_string_and_writes_string() {
        let a: Port = serde_json::from_str("8080").unwrap();
        let b: Port = serde_json::from_str("\"8080\"").unwrap();
        assert_eq!(a, b);
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"8080\"");
        for bad in [
            "0",
            "65536",
            "-1",
            "\"\"",
            "\"80a\"",
            "8.5",
            "\"99999\"",
            "null",
        ] {
            assert!(serde_json::from_str::<Port>(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn register_accepts_the_seed_payload_and_ip_alias() {
        let r: RegisterRequest =
            serde_json::from_str(r#"{"namespace": "service A", "port": "8080"}"#).unwrap();
        assert_eq!(r.port, Port(8080));
        assert_eq!(r.host, None);
        let r: RegisterRequest =
            serde_json::from_str(r#"{"namespace": "a", "port": 1, "ip": "10.0.0.1"}"#).unwrap();
        assert_eq!(r.host.as_deref(), Some("10.0.0.1"));
        assert!(
            serde_json::from_str::<RegisterRequest>(r#"{"namespace":"a","port":1,"x":1}"#).is_err()
        );
    }

    #[test]
    fn namespace_and_host_rules() {
        assert!(validate_namespace("service A").is_ok());
        assert!(validate_namespace("").is_err());
        assert!(validate_namespace("   ").is_err());
        assert!(validate_namespace(&"x".repeat(129)).is_err());
        assert!(validate_namespace(&"é".repeat(128)).is_ok());
        assert!(validate_namespace("a\nb").is_err());
        assert!(validate_host("localhost").is_ok());
        assert!(validate_host("::1").is_ok());
        assert!(validate_host("10.1.2.3").is_ok());
        assert!(validate_host("a/b").is_err());
        assert!(validate_host("a b").is_err());
        assert!(validate_host("").is_err());
        assert_eq!(authority("::1", Port(80)), "[::1]:80");
    }

    #[test]
    fn ports_have_one_spelling() {
        assert_eq!(Port::parse("8080"), Ok(Port(8080)));
        assert_eq!(Port::parse("65535"), Ok(Port(65535)));
        for bad in [
            "08080", " 8081 ", "8081 ", "+80", "-1", "0", "00", "65536", "", "1e3", "८०",
        ] {
            assert!(Port::parse(bad).is_err(), "{bad:?} accepted");
        }
        for bad in [r#""08080""#, r#"" 8081 ""#, "-5", "1.0"] {
            assert!(serde_json::from_str::<Port>(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn hosts_are_ip_literals_or_rfc1123_names_in_one_spelling() {
        for (given, kept) in [
            ("127.0.0.1", "127.0.0.1"),
            ("::1", "::1"),
            ("[::1]", "::1"),
            ("[0:0::1]", "::1"),
            ("::ffff:10.0.0.1", "10.0.0.1"),
            ("LocalHost", "localhost"),
            ("app-1.svc.internal", "app-1.svc.internal"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("xn--a", "xn--a"),
            ("1st.example", "1st.example"),
        ] {
            assert_eq!(normalize_host(given).as_deref(), Ok(kept), "{given}");
        }
        let long_label = "a".repeat(64);
        let long_name = format!("{}.x", vec!["a".repeat(63); 4].join("."));
        for bad in [
            "[127.0.0.2]",
            "[[[::1",
            "::1]",
            "[::1",
            "09.1",
            "127.1",
            "0x7f000001",
            "0x7f.0x1",
            "10.0.0.256",
            "-a.example",
            "a-.example",
            "ab--c.example",
            "a_b.example",
            "a..b",
            "a.",
            ".a",
            "",
            "a b",
            "a/b",
            "fe80::1%eth0",
            "caf\u{e9}.example",
            &long_label,
            &long_name,
        ] {
            let err = normalize_host(bad).unwrap_err();
            assert!(err.starts_with("host must be"), "{bad}: {err}");
        }
    }

    #[test]
    fn namespaces_refuse_invisible_and_bidi_characters() {
        for bad in [
            "service\u{202E}A",
            "service\u{200B} A",
            "service A\u{FEFF}",
            "service\u{00A0}A",
            "service\u{2066}A",
            "service\u{061C}A",
            "service\u{E0041}A",
            "service\u{3164}A",
            " service A",
            "service A ",
            "a\u{7f}",
        ] {
            assert!(validate_namespace(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["service A", "サービス", "caf\u{e9}", "a-b_c.d"] {
            assert!(validate_namespace(good).is_ok(), "{good:?} refused");
        }
    }
}
