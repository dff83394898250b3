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
    /// Parses the textual form, naming what is wrong.
    pub fn parse(text: &str) -> Result<Port, String> {
        let digits = text.trim();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "port must be a number from 1 to 65535, got {text:?}"
            ));
        }
        match digits.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => Ok(Port(n as u16)),
            _ => Err(format!("port must be from 1 to 65535, got {digits}")),
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
}

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
    /// Milliseconds the last health check took, if one has run.
    pub last_check_latency_ms: Option<f64>,
    /// Unix time in milliseconds of the last health check.
    pub last_check_unix_ms: Option<u64>,
    /// Why the last check failed, if it did.
    pub last_check_error: Option<String>,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
}

/// An available instance as pushed to watchers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub id: String,
    pub host: String,
    pub port: Port,
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

/// Checks a namespace: 1 to 128 printable characters.
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
    if ns.chars().any(char::is_control) {
        return Err("namespace must contain only printable characters".into());
    }
    Ok(())
}

/// Checks a host: an IP literal or a DNS name, nothing that could smuggle a path or port.
pub fn validate_host(host: &str) -> Result<(), String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "host must be an IP address or a host name, got {host:?}"
        ))
    }
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
}
