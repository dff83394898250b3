//! Configuration files of the three services.
//!
//! JSON, every key optional with a default, unknown keys rejected by name so a
//! typo fails at start instead of silently running with the default.
//! Durations are seconds (`5`, `0.5`) or strings (`"5s"`, `"500ms"`).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// A config that failed to load, with the file and the offending key in the message.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Largest config file read: a config is a few KiB; anything near this is a
/// mistake or an attack, and reading it must not cost the process memory.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Reads `path` as JSON into `T`, or gives `T::default()` when there is no file.
///
/// Only a regular file (after following symlinks) of at most
/// 1 MiB (`MAX_CONFIG_BYTES`) is read: SIGHUP reloads call this on the signal
/// loop, where `/dev/zero` would grow the process without end and a FIFO
/// would block reload and shutdown alike.
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, ConfigError> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = read_regular(path, MAX_CONFIG_BYTES)
        .map_err(|why| ConfigError(format!("cannot read config {}: {why}", path.display())))?;
    parse(&text).map_err(|e| ConfigError(format!("config {}: {e}", path.display())))
}

/// The text of `path` if it is a regular file of at most `cap` bytes.
///
/// Opened with O_NONBLOCK so that a FIFO cannot block the open (a regular
/// file ignores the flag), then checked with fstat on what was opened, not
/// on the path, which could be swapped in between. At most `cap + 1` bytes
/// are read, so a file growing after the check is refused, not read whole.
pub fn read_regular(path: &Path, cap: u64) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(format!(
            "not a regular file ({}); only a regular file is read",
            file_kind(&meta.file_type())
        ));
    }
    let too_big = || format!("larger than {cap} bytes, the most that is read");
    if meta.len() > cap {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > cap {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))
}

fn file_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a plain file"
    }
}

/// Parses JSON text into `T`, naming the key that is wrong.
///
/// An unknown key is named with its path, line and column and, when one is
/// close, the known key of the same section it was probably meant to be
/// ("did you mean"), instead of serde's list of every key.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if let Some(message) = unknown_name(&path, e.inner()) {
            return message;
        }
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

/// Sections with at most this many keys list them all when no key is close.
const LISTED_KEYS: usize = 6;

/// serde's "unknown field `x`, expected one of `a`, `b`" (or "unknown
/// variant"), reworded: the key with its path and place, and the closest
/// known name of its section. `None` for any other error.
///
/// The known names are those serde's derive lists for the very struct (or
/// enum) the key appeared in, nested ones included (`routes[0]`), so the
/// suggestion always comes from the right section. Its wording is serde's
/// own (`de::Error::unknown_field`, unchanged since serde 1.0); a change
/// there only brings back serde's message, and `unknown_keys_*` tests notice.
fn unknown_name(path: &str, error: &serde_json::Error) -> Option<String> {
    let text = error.to_string();
    let place = format!(" at line {} column {}", error.line(), error.column());
    let message = text.strip_suffix(&place).unwrap_or(&text);
    let (kind, rest) = [("key", "unknown field `"), ("value", "unknown variant `")]
        .into_iter()
        .find_map(|(kind, prefix)| message.strip_prefix(prefix).map(|rest| (kind, rest)))?;
    let (name, expected) = rest.split_once("`, ")?;
    // Between backticks: the odd pieces (names hold no backtick).
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    // The path ends with the unknown key itself (`listne`, `routes[0].namespce`).
    let section = path
        .strip_suffix(name)
        .filter(|_| kind == "key")
        .map(|s| s.trim_end_matches('.'));
    let named = match section {
        Some(_) => format!("`{path}`"),
        None if path == "." => format!("`{name}`"),
        None => format!("`{name}` for `{path}`"),
    };
    let hint = match closest(name, &known) {
        Some(best) => match section {
            Some(s) if !s.is_empty() => format!("; did you mean `{s}.{best}`?"),
            _ => format!("; did you mean `{best}`?"),
        },
        None if known.is_empty() => String::new(),
        None if known.len() <= LISTED_KEYS => format!(
            "; expected {}",
            known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => format!(
            "; no {kind} here is close to it (`--check-config` without `--config` prints every key)"
        ),
    };
    Some(format!("unknown {kind} {named}{place}{hint}"))
}

/// The known name nearest to `typo`, if near enough to be what was meant:
/// at most a third of its length away (one edit for short names), counting
/// a swap of neighbours as one edit and ignoring case and `-` for `_`.
fn closest<'k>(typo: &str, known: &[&'k str]) -> Option<&'k str> {
    let norm = |s: &str| -> Vec<char> {
        s.chars()
            .map(|c| {
                if c == '-' {
                    '_'
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect()
    };
    let typo_chars = norm(typo);
    let limit = (typo_chars.len() / 3).max(1);
    known
        .iter()
        .map(|k| (edit_distance(&typo_chars, &norm(k)), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Optimal string alignment distance: insertions, deletions, substitutions
/// and swaps of two neighbouring characters, each one edit.
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// Parses `"200us"`, `"500ms"`, `"5s"`, `"2m"`, `"1h"`, or a bare number of seconds (`"0.5"`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        format!("invalid duration {text:?}: expected e.g. 5, 0.5, \"500ms\", \"5s\"")
    })?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "us" | "µs" => value / 1_000_000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {other:?} (use us, ms, s, m, h)"
            ))
        }
    };
    secs(seconds).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

fn secs(value: f64) -> Result<Duration, String> {
    if value.is_finite() && (0.0..=1e9).contains(&value) {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err("must be a non-negative number of seconds".into())
    }
}

/// Formats a duration the way `parse_duration` reads it back.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos().is_multiple_of(1_000_000) && !d.as_millis().is_multiple_of(1000) {
        format!("{}ms", d.as_millis())
    } else if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_secs() == 0 && d.subsec_nanos().is_multiple_of(1_000) {
        format!("{}us", d.as_micros())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// Serde adapter for `Option<Duration>` fields that default to `None`
/// (pair with `skip_serializing_if = "Option::is_none"`).
pub mod optional_duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        duration::deserialize(d).map(Some)
    }
}

/// Serde adapter for `Duration` fields: `#[serde(with = "shared::config::duration")]`.
pub mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(f64),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected a duration: seconds (5, 0.5) or a string (\"500ms\", \"5s\")",
            )
        })? {
            Raw::Seconds(v) => secs(v).map_err(serde::de::Error::custom),
            Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// Discovery's configuration (`discovery --config FILE`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// Address the API listens on.
    pub listen: String,
    /// How often every instance is health-checked.
    #[serde(with = "duration")]
    pub health_check_time_interval: Duration,
    /// A health check slower than this fails.
    #[serde(with = "duration")]
    pub timeout_threshold: Duration,
    /// Consecutive failed checks that make an available instance unavailable.
    pub unhealthy_threshold: u32,
    /// Consecutive passed checks that make an instance available.
    pub healthy_threshold: u32,
    /// An instance unavailable this long is dropped from the registry.
    #[serde(with = "duration")]
    pub deregister_after: Duration,
    /// Path checked when a registration names none.
    pub health_check_path: String,
    /// Namespaces whose instances are checked over TLS, each with the CA
    /// their certificates chain to (docs/tls.md, "Instances over TLS");
    /// others are checked in plain HTTP.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub upstream_tls: BTreeMap<String, UpstreamTlsConfig>,
    /// Interval of `: keep-alive` comments on idle watch streams. Short, so a
    /// gateway notices a frozen replica (SIGSTOP, a stalled host: the socket
    /// stays open but nothing comes) within its `watch_idle_timeout`, which
    /// must be above this (about twice it plus a margin).
    #[serde(with = "duration")]
    pub watch_keepalive: Duration,
    /// After a start, how long this discovery says it is *warming* in its
    /// watch events: its registry was empty and the apps are still
    /// re-registering, so a gateway must not let its sets remove anything.
    /// Unset: [`DiscoveryConfig::warmup`] (the apps' default re-registration
    /// interval plus one health check). 0: never warming. Only a `memory`
    /// store warms: an etcd-backed replica has read the shared registry
    /// before it serves a watch.
    #[serde(with = "optional_duration", skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Duration>,
    /// How long shutdown waits for in-flight requests.
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
    /// When set, register and deregister need `Authorization: Bearer <token>`.
    /// Env `DISCOVERY_REGISTRATION_TOKEN` beats the file. Reads stay open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registration_token: Option<String>,
    /// CIDRs (or bare addresses) a registered host must resolve into, every
    /// address of it. Link-local, cloud metadata, unspecified, multicast and
    /// broadcast addresses are refused unless an entry lies within them.
    pub allowed_hosts: Vec<String>,
    /// Instances in one namespace; a registration beyond it is a 429.
    pub max_instances_per_namespace: usize,
    /// Instances in all namespaces together; a registration beyond it is a 429.
    pub max_instances: usize,
    /// Health checks in flight at once (lowered to fit the descriptor limit).
    pub max_concurrent_checks: usize,
    /// Client connections served at once (lowered to fit the descriptor
    /// limit, keeping descriptors for the health checks).
    pub max_connections: usize,
    /// Watch streams open at once, counted within `max_connections` and
    /// below it, so register, lookup and health checks keep connections of
    /// their own however many clients watch; a watch beyond it is a 429.
    /// Unset: half of `max_connections` ([`DiscoveryConfig::watchers`]).
    pub max_watchers: Option<usize>,
    /// A client must send a whole request head within this.
    #[serde(with = "duration")]
    pub client_header_timeout: Duration,
    /// A keep-alive client connection with no request in progress is closed after this.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Deadline to resolve a registered host name at registration.
    #[serde(with = "duration")]
    pub resolve_timeout: Duration,
    /// Where registrations live: `"memory"` (one process) or
    /// `"etcd://HOST:PORT[,HOST:PORT...]/PREFIX"` (replicas sharing one registry).
    pub store: String,
    /// This replica's name among those sharing an etcd store (default: none,
    /// the store makes one up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
    /// The URL other replicas and operators reach this replica at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_url: Option<String>,
    /// `listen` speaks HTTPS with these certificates (docs/tls.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsConfig>,
    /// PEM CA file that peer replicas' `https://` `advertise_url`s are
    /// verified against (the console's cluster view asks them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery_ca: Option<String>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            listen: "127.0.0.1:8500".into(),
            health_check_time_interval: Duration::from_secs(5),
            timeout_threshold: Duration::from_millis(500),
            unhealthy_threshold: 1,
            healthy_threshold: 1,
            deregister_after: Duration::from_secs(60),
            health_check_path: "/health_check".into(),
            upstream_tls: BTreeMap::new(),
            watch_keepalive: Duration::from_secs(2),
            warmup: None,
            drain_timeout: Duration::from_secs(5),
            registration_token: None,
            allowed_hosts: crate::allowed::default_ranges(),
            max_instances_per_namespace: 1_000,
            max_instances: 10_000,
            max_concurrent_checks: 256,
            max_connections: 1024,
            max_watchers: None,
            client_header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            resolve_timeout: Duration::from_secs(2),
            store: "memory".into(),
            replica_id: None,
            advertise_url: None,
            tls: None,
            discovery_ca: None,
        }
    }
}

impl DiscoveryConfig {
    /// Watch streams allowed at once: `max_watchers`, or by default half of
    /// `max_connections` (a gateway holds one stream per namespace it
    /// routes, so 512 of the default 1024 serve hundreds of gateways and
    /// leave the other half to register, lookup and the health checks).
    pub fn watchers(&self) -> usize {
        self.max_watchers.unwrap_or(self.max_connections / 2).max(1)
    }

    /// How long after its start this discovery says it is warming: `warmup`,
    /// or by default long enough for an app on the default
    /// `register_interval` (10 s) to re-register and then be checked once
    /// (`health_check_time_interval` plus `timeout_threshold`). Zero with an
    /// etcd store, whose registry outlives any one replica.
    pub fn warmup(&self) -> Duration {
        if !matches!(StoreUrl::parse(&self.store), Ok(StoreUrl::Memory)) {
            return Duration::ZERO;
        }
        self.warmup.unwrap_or_else(|| {
            AppConfig::default().register_interval
                + self.health_check_time_interval
                + self.timeout_threshold
        })
    }

    /// Rejects values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if self.health_check_time_interval < Duration::from_millis(10) {
            errors.push("health_check_time_interval must be at least 10ms");
        }
        if self.timeout_threshold.is_zero() {
            errors.push("timeout_threshold must be above zero");
        }
        if self.unhealthy_threshold == 0 || self.healthy_threshold == 0 {
            errors.push("unhealthy_threshold and healthy_threshold must be at least 1");
        }
        if self.watch_keepalive.is_zero() {
            errors.push("watch_keepalive must be above zero");
        }
        if crate::wire::validate_path(&self.health_check_path).is_err() {
            errors.push("health_check_path must start with '/'");
        }
        // It is compared with what follows `Bearer ` in a header.
        if self.registration_token.as_deref().is_some_and(|t| {
            !(1..=1024).contains(&t.len()) || !t.bytes().all(|b| b.is_ascii_graphic())
        }) {
            errors.push("registration_token must be 1 to 1024 visible ASCII characters");
        }
        if self.max_instances == 0 || self.max_instances_per_namespace == 0 {
            errors.push("max_instances and max_instances_per_namespace must be at least 1");
        }
        if self.max_concurrent_checks == 0 || self.max_connections == 0 {
            errors.push("max_concurrent_checks and max_connections must be at least 1");
        }
        if self.max_watchers == Some(0) {
            errors.push("max_watchers must be at least 1");
        }
        if self.client_header_timeout.is_zero()
            || self.idle_timeout.is_zero()
            || self.resolve_timeout.is_zero()
        {
            errors
                .push("client_header_timeout, idle_timeout and resolve_timeout must be above zero");
        }
        let mut owned = Vec::new();
        // Streams are counted within max_connections: at or above it, watchers
        // could take every connection and lock register and lookup out.
        if let Some(watchers) = self.max_watchers.filter(|w| *w >= self.max_connections) {
            owned.push(format!(
                "max_watchers ({watchers}) must be below max_connections ({}): watch streams are \
                 counted within max_connections, and the rest of the API keeps the difference",
                self.max_connections
            ));
        }
        if let Err(e) = StoreUrl::parse(&self.store) {
            owned.push(e);
        }
        if self.replica_id.as_deref().is_some_and(|r| {
            !(1..=64).contains(&r.len())
                || !r
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        }) {
            owned.push("replica_id must be 1 to 64 ASCII letters, digits, '-', '_' or '.'".into());
        }
        if self.advertise_url.as_deref().is_some_and(|u| {
            !(u.starts_with("http://") || u.starts_with("https://"))
                || u.len() > 2048
                || !u.bytes().all(|b| b.is_ascii_graphic())
        }) {
            owned.push("advertise_url must be an http:// or https:// URL".into());
        }
        for e in self.tls.iter().flat_map(ServerTlsConfig::errors) {
            errors.push(e);
        }
        // Peers' URLs are learned from the store, not configured.
        errors.extend(discovery_tls_errors(
            &[],
            self.discovery_ca.as_deref(),
            None,
            None,
        ));
        owned.extend(self.upstream_tls_errors());
        errors.extend(owned.iter().map(String::as_str));
        joined(errors)
    }

    /// What is wrong in `upstream_tls`, each namespace named.
    fn upstream_tls_errors(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for (namespace, tls) in &self.upstream_tls {
            let mut wrong =
                |what: &str| errors.push(format!("upstream_tls[{namespace:?}]: {what}"));
            if let Err(why) = crate::wire::validate_namespace(namespace) {
                wrong(&why);
            }
            if tls.ca.trim().is_empty() {
                wrong("ca must name a CA file");
            }
            if tls.cert.is_some() != tls.key.is_some() {
                wrong("cert and key go together");
            }
            if tls
                .server_name
                .as_deref()
                .is_some_and(|name| rustls_pki_types::ServerName::try_from(name).is_err())
            {
                wrong("server_name must be a DNS name or an IP address");
            }
        }
        errors
    }
}

impl GatewayConfig {
    /// What is wrong with the idempotency settings, route keys and store.
    fn idempotency_errors(&self) -> Vec<&'static str> {
        let mut errors = Vec::new();
        let on = || {
            self.routes
                .iter()
                .map(|r| &r.idempotency)
                .filter(|i| i.mode != IdempotencyMode::Off)
        };
        if on().any(|i| i.ttl.is_zero() || i.ttl > MAX_IDEMPOTENCY_TTL) {
            errors.push("a route's idempotency ttl must be above zero and at most 7d");
        }
        if on().any(|i| {
            i.methods.is_empty()
                || i.methods.iter().any(|m| {
                    m.is_empty() || m.len() > 32 || !m.bytes().all(|b| b.is_ascii_uppercase())
                })
        }) {
            errors.push(
                "a route's idempotency methods must be upper-case method names, at least one",
            );
        }
        if on().any(|i| i.methods.iter().any(|m| m == "HEAD")) {
            errors.push("HEAD cannot be an idempotency method (its answer has no body to store)");
        }
        if StoreUrl::parse(&self.idempotency_store).is_err() {
            errors.push("idempotency_store must be \"memory\" or \"etcd://HOST:PORT[,HOST:PORT...]/PREFIX\"");
        }
        if self.idempotency_max_entries == 0 || self.idempotency_max_bytes < 64 * 1024 {
            errors.push("idempotency_max_entries must be at least 1 and idempotency_max_bytes at least 64KiB");
        }
        errors
    }
}

/// Discovery's `store` setting, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    /// In this process's memory (the default).
    Memory,
    /// etcd 3.4+ over its JSON gateway: the members' `host:port`s and the key prefix.
    Etcd {
        endpoints: Vec<String>,
        /// Without the leading `/`; keys live under `/PREFIX/`.
        prefix: String,
    },
}

impl StoreUrl {
    /// Reads `"memory"` or `"etcd://HOST:PORT[,HOST:PORT...]/PREFIX"`, naming what is wrong.
    pub fn parse(text: &str) -> Result<StoreUrl, String> {
        if text == "memory" {
            return Ok(StoreUrl::Memory);
        }
        let form = "store must be \"memory\" or \"etcd://HOST:PORT[,HOST:PORT...]/PREFIX\"";
        let Some(rest) = text.strip_prefix("etcd://") else {
            return Err(format!("{form}, got {text:?}"));
        };
        let (hosts, prefix) = rest
            .split_once('/')
            .ok_or_else(|| format!("{form}: the key prefix is missing, got {text:?}"))?;
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty()
            || prefix.len() > 256
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
        {
            return Err(format!(
                "{form}: the prefix must be 1 to 256 ASCII letters, digits, '-', '_', '.' or '/', got {text:?}"
            ));
        }
        let mut endpoints = Vec::new();
        for member in hosts.split(',') {
            let ok = member.rsplit_once(':').is_some_and(|(host, port)| {
                let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                    Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
                    None => {
                        !host.is_empty()
                            && host
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
                    }
                };
                host_ok && crate::wire::Port::parse(port).is_ok()
            });
            if !ok {
                return Err(format!(
                    "{form}: each member is HOST:PORT, got {member:?} in {text:?}"
                ));
            }
            endpoints.push(member.to_string());
        }
        Ok(StoreUrl::Etcd {
            endpoints,
            prefix: prefix.to_string(),
        })
    }
}

fn joined(errors: Vec<&str>) -> Result<(), ConfigError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigError(errors.join("; ")))
    }
}

/// A path prefix routed to a namespace.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub prefix: String,
    pub namespace: String,
    /// Every answer must carry the `x-request-id` the gateway sent (the app
    /// echoes it); a missing or different one is a protocol error (502, the
    /// connection closed, the instance blamed). HTTP/1.1 cannot otherwise tell
    /// a stray answer, sent after the connection was reused, from the real one.
    #[serde(default)]
    pub verify_request_id: bool,
    /// How the namespace's instances take turns.
    #[serde(default)]
    pub balance: Balance,
    /// An instance that has just become available gets its share ramped up
    /// from almost nothing to all of it over this time (0: at once).
    #[serde(default, with = "duration")]
    pub slow_start: Duration,
    /// The `Idempotency-Key` header on this route (docs/idempotency.md):
    /// off by default.
    #[serde(default)]
    pub idempotency: IdempotencyConfig,
    /// TLS to this namespace's instances (docs/tls.md, "Instances over
    /// TLS"); plain HTTP without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_tls: Option<UpstreamTlsConfig>,
}

/// A route's `"upstream_tls"`: the gateway connects to the namespace's
/// instances over TLS, verifying their certificates against `ca` only.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM file of the CA certificates an instance's certificate must chain to.
    pub ca: String,
    /// A PEM client certificate chain (mTLS), with `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// The PEM private key of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The name sent as SNI and verified; the instance's registered host if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// A route's `"idempotency"`: whether and how `Idempotency-Key` is honoured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyConfig {
    pub mode: IdempotencyMode,
    /// How long a key's record (and stored answer) is kept.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// The methods a key applies to (upper case); others pass untouched.
    pub methods: Vec<String>,
    /// The largest answer body stored for replay; a larger answer still goes
    /// to the client, and the key is then refused (executed, not replayable).
    pub max_stored_body: usize,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        IdempotencyConfig {
            mode: IdempotencyMode::Off,
            ttl: Duration::from_secs(24 * 3600),
            methods: vec!["POST".into(), "PATCH".into()],
            max_stored_body: 1024 * 1024,
        }
    }
}

/// `"off"` (the header is forwarded and nothing else), `"honor"` (a key is
/// executed at most once) or `"require"` (as honor, and a listed method
/// without a key is refused 400).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IdempotencyMode {
    #[default]
    Off,
    Honor,
    Require,
}

/// Longest idempotency `ttl`: a week. Records live in memory or etcd; a
/// client retrying later than that is not retrying.
pub const MAX_IDEMPOTENCY_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// How a route's instances take turns (`"balance"`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// In strict turn across every worker; registered weights are ignored.
    #[default]
    RoundRobin,
    /// Smooth weighted round robin (nginx's): each instance in proportion
    /// to its registered `weight`, interleaved rather than in runs.
    WeightedRoundRobin,
}

/// Longest `slow_start`: beyond an hour a ramp is a deployment plan, not a
/// warm-up.
pub const MAX_SLOW_START: Duration = Duration::from_secs(3600);

/// `idle_spin` by default: the kernel's own default for the same look on a
/// virtual machine's idle cores (`guest_halt_poll_ns`).
pub const DEFAULT_IDLE_SPIN: Duration = Duration::from_micros(200);
/// The most `idle_spin` may be.
pub const MAX_IDLE_SPIN: Duration = Duration::from_millis(10);

/// The gateway's configuration (`gateway --config FILE`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Address clients send their requests to.
    pub listen: String,
    /// Address of `/metrics`, `/status` and `/health_check`.
    pub admin_listen: String,
    /// Discovery's base URL, or several comma-separated (replicas): the watch
    /// follows one and moves to the next when it fails.
    pub discovery_url: String,
    /// Bind `listen` with SO_REUSEPORT, so several gateways on one host share
    /// the address and the kernel spreads connections between them.
    pub reuse_port: bool,
    /// A watch stream silent this long (no event, no keep-alive: discovery
    /// sends one every `watch_keepalive`, 2 s by default) is presumed dead
    /// (a frozen or cut-off replica) and the next URL is tried. Must be above
    /// discovery's `watch_keepalive`: about twice it plus a margin, so one
    /// late keep-alive is not taken for a dead stream.
    #[serde(with = "duration")]
    pub watch_idle_timeout: Duration,
    /// Longest matching prefix wins.
    pub routes: Vec<RouteConfig>,
    /// Deadline to open a TCP connection to an instance.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Deadline per try, from sending the request to the response head (to the
    /// whole answer for bodies up to 64 KiB, which are read before forwarding).
    #[serde(with = "duration")]
    pub upstream_timeout: Duration,
    /// Deadline of all tries of one request together.
    #[serde(with = "duration")]
    pub request_deadline: Duration,
    /// Tries per request, the first one included.
    pub max_attempts: u32,
    /// Retry POST/PATCH after a timeout or a broken connection (the seed does).
    pub retry_non_idempotent: bool,
    /// Also fail over when an instance answers 5xx (under the same method rule).
    pub retry_on_5xx: bool,
    /// How long a timeout waits for discovery's `/api/lookup` before falling back to the ring.
    #[serde(with = "duration")]
    pub lookup_timeout: Duration,
    /// An instance that refused a connection is skipped this long.
    #[serde(with = "duration")]
    pub connect_cooldown: Duration,
    /// Answers an instance got wrong in a row (malformed, cut short, stray
    /// bytes, a wrong request id) before it is skipped for `connect_cooldown`
    /// (passive health, as Envoy's outlier detection).
    pub passive_health_failures: u32,
    /// Relay the trailer fields of a chunked answer (dropped by default, as
    /// RFC 9110 section 6.5 allows: a client rarely expects `set-cookie` there).
    pub forward_trailers: bool,
    /// After the watch reconnects, members missing from discovery's answer
    /// are kept this long; when it ends they go only if the watch is still
    /// live and discovery is no longer warming (static stability).
    #[serde(with = "duration")]
    pub relearn_grace: Duration,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    /// A client must send a whole request head (and each body read) within this.
    #[serde(with = "duration")]
    pub client_header_timeout: Duration,
    /// A client must send a whole request body within this, from the end of its head
    /// (408 and close past it), however steadily it trickles.
    #[serde(with = "duration")]
    pub client_body_timeout: Duration,
    /// Request body bytes buffered at once across all client connections; a
    /// request that would pass it is answered 503 and its connection closed.
    pub max_buffered_bytes: usize,
    /// An idle keep-alive client connection is closed after this.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Idle upstream connections kept per instance.
    pub pool_max_idle: usize,
    /// An idle upstream connection is closed after this.
    #[serde(with = "duration")]
    pub pool_idle_timeout: Duration,
    /// Log one request in this many (0: only failures, 1: every request).
    pub access_log_sample: u64,
    /// How long shutdown waits for in-flight requests.
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
    /// Worker threads, each with its own executor, listener, pools and metric
    /// shards (0: one per core).
    pub worker_threads: usize,
    /// The longest a worker with nothing to do looks at epoll before it
    /// sleeps in it: being woken costs the waking core an interrupt (on a
    /// virtual machine, an exit to the hypervisor). Within it the window
    /// follows the worker's idle spells, closed on a quiet gateway, and under
    /// a CPU quota the worker never looks. 0: sleep at once. At most 10ms.
    #[serde(with = "duration")]
    pub idle_spin: Duration,
    /// CIDRs (or bare addresses) the gateway may connect to: an instance
    /// whose addresses are all outside them is skipped like a refused
    /// connect, never connected to. Link-local, cloud metadata, unspecified,
    /// multicast and broadcast addresses are refused unless an entry lies
    /// within them. The same rules and default as discovery's `allowed_hosts`.
    pub allowed_upstreams: Vec<String>,
    /// The client port is listened on only once every route has an
    /// available instance, or after this long (0: at once), so a gateway
    /// that cannot serve takes no connection from its peers on a shared port.
    #[serde(with = "duration")]
    pub ready_timeout: Duration,
    /// Where idempotency records live: `"memory"` (this gateway only) or
    /// `"etcd://HOST:PORT[,HOST:PORT...]/PREFIX"` (every gateway sharing it).
    pub idempotency_store: String,
    /// The memory store's bound in records; beyond it the least recently
    /// used are evicted (and counted).
    pub idempotency_max_entries: usize,
    /// The memory store's bound in bytes (stored answers and keys).
    pub idempotency_max_bytes: usize,
    /// When the store cannot be reached: forward the request without the
    /// guarantee (true), or refuse it 503 (false, the default).
    pub idempotency_fail_open: bool,
    /// A TLS listener beside `listen` (docs/tls.md); none by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// PEM CA file an `https://` `discovery_url`'s certificate must chain
    /// to (the watch, lookups and the readiness check); needed for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery_ca: Option<String>,
}

/// The gateway's `"tls"`: a second client port where clients speak HTTPS.
/// Certificates are PEM files; `cert` and `key` name one, `certificates`
/// several, chosen by the name the client asks for (SNI) among each one's
/// subject alternative names. The first one listed is the default.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Where HTTPS clients connect (`ip:port`).
    pub listen: String,
    /// A PEM certificate chain, the server's own certificate first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// The PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Several certificates, chosen by SNI; after `cert` if both are given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateConfig>,
    /// A TLS handshake must be over within this, or the connection closes.
    #[serde(default = "default_handshake_timeout", with = "duration")]
    pub handshake_timeout: Duration,
}

/// One certificate chain and its key (PEM files).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub cert: String,
    pub key: String,
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Every certificate, in order: `cert`/`key` first, then `certificates`
/// (the gateway's `tls` and the servers' [`ServerTlsConfig`] alike).
fn pairs(
    cert: &Option<String>,
    key: &Option<String>,
    certificates: &[CertificateConfig],
) -> Vec<CertificateConfig> {
    let single = match (cert, key) {
        (Some(cert), Some(key)) => Some(CertificateConfig {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    single
        .into_iter()
        .chain(certificates.iter().cloned())
        .collect()
}

/// What is wrong with a `tls` key's certificates and handshake timeout.
fn certificate_errors(
    cert: &Option<String>,
    key: &Option<String>,
    certificates: &[CertificateConfig],
    handshake_timeout: Duration,
) -> Vec<&'static str> {
    let mut errors = Vec::new();
    if cert.is_some() != key.is_some() {
        errors.push("tls.cert and tls.key go together");
    }
    if pairs(cert, key, certificates).is_empty() {
        errors.push("tls needs a certificate: cert and key, or certificates");
    }
    if handshake_timeout.is_zero() {
        errors.push("tls.handshake_timeout must be above zero");
    }
    errors
}

impl TlsConfig {
    /// Every certificate, in order: `cert`/`key` first, then `certificates`.
    pub fn pairs(&self) -> Vec<CertificateConfig> {
        pairs(&self.cert, &self.key, &self.certificates)
    }

    fn errors(&self) -> Vec<&'static str> {
        let mut errors = Vec::new();
        if self.listen.trim().is_empty() {
            errors.push("tls.listen must name an address");
        }
        errors.extend(certificate_errors(
            &self.cert,
            &self.key,
            &self.certificates,
            self.handshake_timeout,
        ));
        errors
    }
}

/// Discovery's and the app's `"tls"`: their own listener speaks HTTPS
/// (docs/tls.md, "Discovery and the app over TLS"). The certificates as in
/// the gateway's `tls`; with `client_ca`, a client may present a
/// certificate, which must chain to it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// A PEM certificate chain, the server's own certificate first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// The PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Several certificates, chosen by SNI; after `cert` if both are given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateConfig>,
    /// A TLS handshake must be over within this, or the connection closes.
    #[serde(default = "default_handshake_timeout", with = "duration")]
    pub handshake_timeout: Duration,
    /// PEM CA certificates a client's certificate must chain to. A client
    /// may then present one (one from another CA fails the handshake);
    /// discovery takes a verified one in place of the registration token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<String>,
}

impl ServerTlsConfig {
    /// Every certificate, in order: `cert`/`key` first, then `certificates`.
    pub fn pairs(&self) -> Vec<CertificateConfig> {
        pairs(&self.cert, &self.key, &self.certificates)
    }

    fn errors(&self) -> Vec<&'static str> {
        let mut errors = certificate_errors(
            &self.cert,
            &self.key,
            &self.certificates,
            self.handshake_timeout,
        );
        if self
            .client_ca
            .as_deref()
            .is_some_and(|ca| ca.trim().is_empty())
        {
            errors.push("tls.client_ca must name a CA file");
        }
        errors
    }
}

/// What is wrong with the CA file and client certificate a service reaches
/// discovery with, for `urls` (its discovery URLs, or the peers'): an
/// `https://` one needs `discovery_ca`, as the system's roots are never used.
fn discovery_tls_errors(
    urls: &[String],
    ca: Option<&str>,
    cert: Option<&str>,
    key: Option<&str>,
) -> Vec<&'static str> {
    let mut errors = Vec::new();
    if ca.is_some_and(|ca| ca.trim().is_empty()) {
        errors.push("discovery_ca must name a CA file");
    }
    if ca.is_none() && urls.iter().any(|u| u.starts_with("https://")) {
        errors.push(
            "an https:// discovery_url needs discovery_ca: the CA file discovery's \
             certificate chains to (the system's roots are never used)",
        );
    }
    if cert.is_some() != key.is_some() {
        errors.push("discovery_cert and discovery_key go together");
    }
    if cert.is_some() && ca.is_none() {
        errors.push("discovery_cert is shown over https only: it needs discovery_ca");
    }
    errors
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: "127.0.0.1:8000".into(),
            admin_listen: "127.0.0.1:8001".into(),
            discovery_url: "http://127.0.0.1:8500".into(),
            reuse_port: true,
            // Twice discovery's default keep-alive (2 s) plus a second.
            watch_idle_timeout: Duration::from_secs(5),
            routes: vec![RouteConfig {
                prefix: "/".into(),
                namespace: "service A".into(),
                ..RouteConfig::default()
            }],
            connect_timeout: Duration::from_secs(1),
            upstream_timeout: Duration::from_secs(2),
            request_deadline: Duration::from_secs(10),
            max_attempts: 3,
            retry_non_idempotent: true,
            retry_on_5xx: false,
            lookup_timeout: Duration::from_millis(250),
            connect_cooldown: Duration::from_secs(2),
            passive_health_failures: 3,
            forward_trailers: false,
            relearn_grace: Duration::from_secs(10),
            max_body_bytes: 1024 * 1024,
            max_header_bytes: 16 * 1024,
            client_header_timeout: Duration::from_secs(10),
            client_body_timeout: Duration::from_secs(30),
            // 64 bodies of the largest size, or thousands of typical ones, at once.
            max_buffered_bytes: 64 * 1024 * 1024,
            idle_timeout: Duration::from_secs(60),
            pool_max_idle: 128,
            pool_idle_timeout: Duration::from_secs(20),
            access_log_sample: 0,
            drain_timeout: Duration::from_secs(10),
            worker_threads: 0,
            idle_spin: DEFAULT_IDLE_SPIN,
            allowed_upstreams: crate::allowed::default_ranges(),
            ready_timeout: Duration::from_secs(30),
            idempotency_store: "memory".into(),
            idempotency_max_entries: 100_000,
            idempotency_max_bytes: 64 * 1024 * 1024,
            idempotency_fail_open: false,
            tls: None,
            discovery_ca: None,
        }
    }
}

impl GatewayConfig {
    /// Rejects values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if self.routes.is_empty() {
            errors.push("routes must name at least one prefix");
        }
        if self.routes.iter().any(|r| r.slow_start > MAX_SLOW_START) {
            errors.push("a route's slow_start is at most 1h");
        }
        if self.routes.iter().enumerate().any(|(i, r)| {
            self.routes[..i].iter().any(|o| {
                o.namespace == r.namespace && (o.balance, o.slow_start) != (r.balance, r.slow_start)
            })
        }) {
            errors.push("routes to one namespace share its rotation: give them the same balance and slow_start");
        }
        if self.routes.iter().enumerate().any(|(i, r)| {
            self.routes[..i]
                .iter()
                .any(|o| o.namespace == r.namespace && o.upstream_tls != r.upstream_tls)
        }) {
            errors.push(
                "routes to one namespace share its instances: give them the same upstream_tls",
            );
        }
        if self.routes.iter().any(|r| {
            r.upstream_tls
                .as_ref()
                .is_some_and(|t| t.cert.is_some() != t.key.is_some())
        }) {
            errors.push("upstream_tls.cert and upstream_tls.key go together");
        }
        if self.routes.iter().any(|r| {
            r.upstream_tls
                .as_ref()
                .is_some_and(|t| t.ca.trim().is_empty())
        }) {
            errors.push("upstream_tls.ca must name a CA file");
        }
        if self.routes.iter().any(|r| !r.prefix.starts_with('/')) {
            errors.push("every route prefix must start with '/'");
        }
        if self
            .routes
            .iter()
            .any(|r| crate::wire::validate_namespace(&r.namespace).is_err())
        {
            errors.push("every route namespace must be 1 to 128 printable characters");
        }
        if self.max_attempts == 0 {
            errors.push("max_attempts must be at least 1");
        }
        if self.idle_spin > MAX_IDLE_SPIN {
            errors.push("idle_spin is at most 10ms");
        }
        errors.extend(self.idempotency_errors());
        errors.extend(self.tls.iter().flat_map(TlsConfig::errors));
        if self.passive_health_failures == 0 {
            errors.push("passive_health_failures must be at least 1");
        }
        if self.upstream_timeout.is_zero() || self.connect_timeout.is_zero() {
            errors.push("upstream_timeout and connect_timeout must be above zero");
        }
        if self.request_deadline < self.upstream_timeout {
            errors.push("request_deadline must be at least upstream_timeout");
        }
        if self.max_header_bytes < 256 {
            errors.push("max_header_bytes must be at least 256");
        }
        if self.client_body_timeout.is_zero() {
            errors.push("client_body_timeout must be above zero");
        }
        if self.max_buffered_bytes < self.max_body_bytes {
            errors.push("max_buffered_bytes must be at least max_body_bytes");
        }
        let urls = self.discovery_urls();
        if urls.is_empty() {
            errors.push("discovery_url must name at least one URL");
        }
        if urls.iter().any(|u| {
            u.strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"))
                .is_none_or(|rest| rest.is_empty() || rest.contains(char::is_whitespace))
        }) {
            errors.push("every discovery_url must start with http:// or https:// and name a host");
        }
        errors.extend(discovery_tls_errors(
            &urls,
            self.discovery_ca.as_deref(),
            None,
            None,
        ));
        if self.watch_idle_timeout.is_zero() {
            errors.push("watch_idle_timeout must be above zero");
        }
        let setting = crate::allowed::Setting::GATEWAY;
        if let Err(why) =
            crate::allowed::AllowedHosts::parse_setting(setting, &self.allowed_upstreams)
        {
            // Names the entry that is wrong, unlike the fixed messages above.
            return Err(ConfigError(
                errors
                    .into_iter()
                    .chain([why.as_str()])
                    .collect::<Vec<_>>()
                    .join("; "),
            ));
        }
        joined(errors)
    }

    /// The URLs of `discovery_url` (comma-separated), trimmed, without a trailing `/`.
    pub fn discovery_urls(&self) -> Vec<String> {
        self.discovery_url
            .split(',')
            .map(|u| u.trim().trim_end_matches('/'))
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect()
    }
}

/// Service A's configuration (`app --config FILE`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AppConfig {
    /// Interface to bind.
    pub bind: String,
    /// Port to bind; 0 picks a free one, and the real one is registered.
    pub port: u16,
    /// Host registered with discovery; empty lets discovery use the caller's IP.
    pub advertise_host: String,
    /// Discovery's base URL, or several comma-separated (replicas, or
    /// discoveries of their own): registration goes to the first that takes
    /// it and stays there while it does, moving to the next when it fails.
    pub discovery_url: String,
    pub namespace: String,
    /// Re-registration period, so a restarted discovery relearns this instance.
    #[serde(with = "duration")]
    pub register_interval: Duration,
    pub health_check_path: String,
    /// Turns on `PUT /chaos` and `GET /chaos`, on the admin port only.
    pub chaos: bool,
    /// Port of the admin listener (`/chaos`, `/metrics`, `/health_check`) on
    /// `bind`; 0 picks a free one. Never registered with discovery.
    pub admin_port: u16,
    /// Sent as `Authorization: Bearer <token>` on register and deregister;
    /// must match discovery's `registration_token`. Env `REGISTRATION_TOKEN`.
    pub registration_token: Option<String>,
    pub max_body_bytes: usize,
    /// Largest request head taken; above the gateway's `max_header_bytes`
    /// (16 KiB) plus what it adds, so every head it forwards is served.
    pub max_header_bytes: usize,
    /// Upper bound of the registration retry backoff.
    #[serde(with = "duration")]
    pub register_backoff_max: Duration,
    /// How long shutdown waits for deregistration and in-flight requests.
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
    /// Registered weight (1..=1000): its share on routes that balance by
    /// weight (`weighted_round_robin`); plain round robin ignores it.
    pub weight: u32,
    /// The serving port (`port`) speaks HTTPS with these certificates
    /// (docs/tls.md); the admin port stays plain HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsConfig>,
    /// PEM CA file an `https://` `discovery_url`'s certificate must chain
    /// to; needed for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery_ca: Option<String>,
    /// A PEM client certificate shown to an https discovery that asks (its
    /// `tls.client_ca`), with `discovery_key`: it registers without the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery_cert: Option<String>,
    /// The PEM private key of `discovery_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery_key: Option<String>,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            bind: "127.0.0.1".into(),
            port: 8080,
            advertise_host: "127.0.0.1".into(),
            discovery_url: "http://127.0.0.1:8500".into(),
            namespace: "service A".into(),
            register_interval: Duration::from_secs(10),
            health_check_path: "/health_check".into(),
            chaos: false,
            admin_port: 0,
            registration_token: None,
            max_body_bytes: 1024 * 1024,
            max_header_bytes: 32 * 1024,
            register_backoff_max: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
            weight: 1,
            tls: None,
            discovery_ca: None,
            discovery_cert: None,
            discovery_key: None,
        }
    }
}

impl AppConfig {
    /// Rejects values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if crate::wire::validate_namespace(&self.namespace).is_err() {
            errors.push("namespace must be 1 to 128 printable characters");
        }
        if self.register_interval < Duration::from_millis(10) {
            errors.push("register_interval must be at least 10ms");
        }
        if crate::wire::validate_path(&self.health_check_path).is_err() {
            errors.push("health_check_path must start with '/'");
        }
        if !self.advertise_host.is_empty()
            && crate::wire::validate_host(&self.advertise_host).is_err()
        {
            errors.push("advertise_host must be an IP address or a host name");
        }
        let urls = self.discovery_urls();
        if urls.is_empty() {
            errors.push("discovery_url must name at least one URL");
        }
        if urls.iter().any(|u| !is_http_base_url(u)) {
            errors.push(
                "every discovery_url must be http://HOST[:PORT][/PATH] or https://... (a port from 1 to 65535)",
            );
        }
        errors.extend(discovery_tls_errors(
            &urls,
            self.discovery_ca.as_deref(),
            self.discovery_cert.as_deref(),
            self.discovery_key.as_deref(),
        ));
        errors.extend(self.tls.iter().flat_map(ServerTlsConfig::errors));
        if self.admin_port != 0 && self.admin_port == self.port {
            errors.push("admin_port must differ from port");
        }
        if !(1..=crate::wire::MAX_WEIGHT).contains(&self.weight) {
            errors.push("weight must be 1 to 1000");
        }
        // It travels in an `Authorization` header as it is.
        let header_safe =
            |t: &str| (1..=1024).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_graphic());
        if self
            .registration_token
            .as_deref()
            .is_some_and(|t| !header_safe(t))
        {
            errors.push("registration_token must be 1 to 1024 visible ASCII characters");
        }
        if self.max_header_bytes < 1024 {
            errors.push("max_header_bytes must be at least 1024");
        }
        joined(errors)
    }

    /// The URLs of `discovery_url` (comma-separated), trimmed, without a
    /// trailing `/`, in the order registration tries them.
    pub fn discovery_urls(&self) -> Vec<String> {
        self.discovery_url
            .split(',')
            .map(|u| u.trim().trim_end_matches('/'))
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect()
    }
}

/// `http(s)://HOST[:PORT][/PATH]` with a host, no white space and, when
/// given, a port from 1 to 65535 (what the app's HTTP client would refuse later).
fn is_http_base_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    if rest.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // A port follows the last `:` outside an IPv6 literal's brackets.
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (authority, None),
    };
    !host.is_empty()
        && !host.contains('@')
        && port.is_none_or(|p| crate::wire::Port::parse(p).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_destination_policy_and_readiness_keys() {
        let c: GatewayConfig =
            parse(r#"{"allowed_upstreams": ["10.0.0.0/8"], "ready_timeout": "500ms"}"#).unwrap();
        assert_eq!(c.allowed_upstreams, vec!["10.0.0.0/8".to_string()]);
        assert_eq!(c.ready_timeout, Duration::from_millis(500));
        assert!(c.validate().is_ok());
        let d = GatewayConfig::default();
        assert_eq!(
            d.allowed_upstreams,
            DiscoveryConfig::default().allowed_hosts
        );
        assert_eq!(d.ready_timeout, Duration::from_secs(30));
        let bad = GatewayConfig {
            allowed_upstreams: vec!["10.0.0.1/8".into()],
            max_attempts: 0,
            ..GatewayConfig::default()
        };
        let why = bad.validate().unwrap_err().to_string();
        assert!(why.contains("max_attempts must be at least 1"), "{why}");
        assert!(why.contains("allowed_upstreams: \"10.0.0.1/8\""), "{why}");
    }

    #[test]
    fn durations_parse_in_both_forms() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("200us").unwrap(), Duration::from_micros(200));
        assert_eq!(parse_duration("50µs").unwrap(), Duration::from_micros(50));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
        let c: DiscoveryConfig =
            parse(r#"{"health_check_time_interval": 2, "timeout_threshold": "250ms"}"#).unwrap();
        assert_eq!(c.health_check_time_interval, Duration::from_secs(2));
        assert_eq!(c.timeout_threshold, Duration::from_millis(250));
        let c: DiscoveryConfig = parse(r#"{"timeout_threshold": 0.25}"#).unwrap();
        assert_eq!(c.timeout_threshold, Duration::from_millis(250));
    }

    #[test]
    fn idle_spin_is_read_in_microseconds_and_bounded() {
        assert_eq!(
            GatewayConfig::default().idle_spin,
            Duration::from_micros(200)
        );
        let c: GatewayConfig = parse(r#"{"idle_spin": "50us"}"#).unwrap();
        assert_eq!(c.idle_spin, Duration::from_micros(50));
        assert!(c.validate().is_ok());
        let off: GatewayConfig = parse(r#"{"idle_spin": 0}"#).unwrap();
        assert!(off.idle_spin.is_zero() && off.validate().is_ok());
        let long: GatewayConfig = parse(r#"{"idle_spin": "1s"}"#).unwrap();
        let why = long.validate().unwrap_err().to_string();
        assert!(why.contains("idle_spin is at most 10ms"), "{why}");
    }

    #[test]
    fn format_round_trips() {
        for d in [
            Duration::from_millis(500),
            Duration::from_secs(5),
            Duration::from_micros(1500),
            Duration::from_micros(200),
        ] {
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        assert_eq!(format_duration(Duration::from_micros(200)), "200us");
    }

    #[test]
    fn store_urls_are_memory_or_etcd_members_and_a_prefix() {
        assert_eq!(StoreUrl::parse("memory"), Ok(StoreUrl::Memory));
        assert_eq!(
            StoreUrl::parse("etcd://h1:2379,10.0.0.2:2379,[::1]:2379/disco/"),
            Ok(StoreUrl::Etcd {
                endpoints: vec![
                    "h1:2379".into(),
                    "10.0.0.2:2379".into(),
                    "[::1]:2379".into()
                ],
                prefix: "disco".into(),
            })
        );
        for bad in [
            "",
            "Memory",
            "etcd://h1:2379",
            "etcd://h1:2379/",
            "etcd://h1/p",
            "etcd://h1:0/p",
            "etcd://:2379/p",
            "etcd://h1:2379,/p",
            "etcd://h\u{e9}:2379/p",
            "etcd://h1:2379/p q",
            "http://h1:2379/p",
        ] {
            assert!(StoreUrl::parse(bad).is_err(), "{bad:?} accepted");
        }
        let c = DiscoveryConfig {
            store: "etcd:/x".into(),
            replica_id: Some("a b".into()),
            advertise_url: Some("ftp://x".into()),
            ..DiscoveryConfig::default()
        };
        let err = c.validate().unwrap_err().to_string();
        for key in ["store", "replica_id", "advertise_url"] {
            assert!(err.contains(key), "{err}");
        }
        assert!(DiscoveryConfig::default().validate().is_ok());
    }

    #[test]
    fn discovery_url_lists_several_urls_each_checked() {
        let c = GatewayConfig {
            discovery_url: " http://a:8500/, http://b:8500 ,".into(),
            ..GatewayConfig::default()
        };
        assert_eq!(c.discovery_urls(), ["http://a:8500", "http://b:8500"]);
        assert!(c.validate().is_ok());
        for bad in [
            "",
            " , ",
            "http://a:8500,https://b",
            "http://a:8500,http://",
            "http://a b",
        ] {
            let c = GatewayConfig {
                discovery_url: bad.into(),
                ..GatewayConfig::default()
            };
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("discovery_url"), "{bad:?}: {err}");
        }
        assert!(GatewayConfig::default().reuse_port);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse::<DiscoveryConfig>(r#"{"health_check_intervl": 5}"#).unwrap_err();
        assert!(err.contains("health_check_intervl"), "{err}");
        let err = parse::<GatewayConfig>(r#"{"routes": [{"prefix": "/", "namespce": "a"}]}"#)
            .unwrap_err();
        assert!(
            err.contains("namespce") && err.contains("routes[0]"),
            "{err}"
        );
        let err = parse::<DiscoveryConfig>(r#"{"timeout_threshold": "fast"}"#).unwrap_err();
        assert!(err.contains("timeout_threshold"), "{err}");
    }

    #[test]
    fn app_admin_port_token_and_head_limit_are_checked() {
        let bad = |c: AppConfig| c.validate().unwrap_err().to_string();
        let app = AppConfig::default;
        assert!(bad(AppConfig {
            admin_port: 8080,
            ..app()
        })
        .contains("admin_port"));
        for token in ["", "two words", "caf\u{e9}"] {
            let c = AppConfig {
                registration_token: Some(token.into()),
                ..app()
            };
            assert!(bad(c).contains("registration_token"), "{token:?}");
        }
        assert!(bad(AppConfig {
            max_header_bytes: 512,
            ..app()
        })
        .contains("max_header_bytes"));
        let c: AppConfig = parse(
            r#"{"admin_port": 9080, "registration_token": "t0k3n", "max_header_bytes": 65536}"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!((c.admin_port, c.max_header_bytes), (9080, 65536));
        assert_eq!(c.registration_token.as_deref(), Some("t0k3n"));
    }

    #[test]
    fn defaults_are_valid() {
        DiscoveryConfig::default().validate().unwrap();
        GatewayConfig::default().validate().unwrap();
        AppConfig::default().validate().unwrap();
    }

    #[test]
    fn discovery_upstream_tls_maps_namespaces_to_checked_tls_settings() {
        let c: DiscoveryConfig = parse(
            r#"{"upstream_tls": {"payments": {"ca": "/etc/ca.pem", "cert": "/etc/c.pem",
                "key": "/etc/k.pem", "server_name": "payments.internal"},
                "service A": {"ca": "/etc/ca.pem"}}}"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.upstream_tls.len(), 2);
        assert_eq!(
            c.upstream_tls["payments"].server_name.as_deref(),
            Some("payments.internal")
        );
        assert_eq!(c.upstream_tls["service A"].cert, None);
        // Absent: empty, and not written back.
        let d = DiscoveryConfig::default();
        assert!(d.upstream_tls.is_empty());
        assert!(!serde_json::to_string(&d).unwrap().contains("upstream_tls"));
        // A typo inside a namespace's settings is refused by name.
        let err = parse::<DiscoveryConfig>(r#"{"upstream_tls": {"p": {"ca": "x", "certt": "y"}}}"#)
            .unwrap_err();
        assert!(err.contains("certt"), "{err}");
        assert!(parse::<DiscoveryConfig>(r#"{"upstream_tls": {"p": {"cert": "y"}}}"#).is_err());
        for (json, want) in [
            (r#"{"": {"ca": "/ca"}}"#, "namespace must not be empty"),
            (r#"{"p": {"ca": " "}}"#, "ca must name a CA file"),
            (
                r#"{"p": {"ca": "/ca", "cert": "/c"}}"#,
                "cert and key go together",
            ),
            (
                r#"{"p": {"ca": "/ca", "key": "/k"}}"#,
                "cert and key go together",
            ),
            (
                r#"{"p": {"ca": "/ca", "server_name": "not a name"}}"#,
                "server_name must be a DNS name or an IP address",
            ),
        ] {
            let c: DiscoveryConfig = parse(&format!(r#"{{"upstream_tls": {json}}}"#)).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(
                err.contains("upstream_tls[") && err.contains(want),
                "{json}: {err}"
            );
        }
        let ip: DiscoveryConfig =
            parse(r#"{"upstream_tls": {"p": {"ca": "/ca", "server_name": "10.0.0.1"}}}"#).unwrap();
        ip.validate().unwrap();
    }

    #[test]
    fn a_silent_watch_is_given_up_after_about_two_keep_alives() {
        let keepalive = DiscoveryConfig::default().watch_keepalive;
        let idle = GatewayConfig::default().watch_idle_timeout;
        assert!(idle > keepalive * 2, "{idle:?} vs {keepalive:?}");
        assert!(
            idle <= keepalive * 3,
            "a frozen replica is left soon: {idle:?}"
        );
    }

    #[test]
    fn warmup_defaults_to_one_re_registration_and_one_check() {
        let d = DiscoveryConfig::default();
        assert_eq!(d.warmup, None);
        assert_eq!(
            d.warmup(),
            AppConfig::default().register_interval
                + d.health_check_time_interval
                + d.timeout_threshold
        );
        let set: DiscoveryConfig = parse(r#"{"warmup": "3s"}"#).unwrap();
        assert_eq!(set.warmup(), Duration::from_secs(3));
        let off: DiscoveryConfig = parse(r#"{"warmup": 0}"#).unwrap();
        assert_eq!(off.warmup(), Duration::ZERO);
        assert!(parse::<DiscoveryConfig>(r#"{"warmup": "soon"}"#).is_err());
        // Unset stays unset when written back (the default follows the interval).
        assert!(!serde_json::to_string(&d).unwrap().contains("warmup"));
        let shared = DiscoveryConfig {
            store: "etcd://127.0.0.1:2379/discovery".into(),
            warmup: Some(Duration::from_secs(3)),
            ..Default::default()
        };
        assert_eq!(shared.warmup(), Duration::ZERO, "etcd replicas never warm");
    }
}

/// The control plane's TLS keys: discovery's and the app's `tls`, and the
/// `discovery_ca` (and client certificate) https discovery URLs need.
#[cfg(test)]
mod control_plane_tls_tests {
    use super::*;

    #[test]
    fn server_tls_reads_like_the_gateways_without_listen_and_with_client_ca() {
        let d: DiscoveryConfig = parse(
            r#"{"tls": {"cert": "/c.pem", "key": "/k.pem", "client_ca": "/ca.pem"},
                "discovery_ca": "/peers.pem"}"#,
        )
        .unwrap();
        let tls = d.tls.as_ref().unwrap();
        assert_eq!(tls.handshake_timeout, Duration::from_secs(10));
        assert_eq!(tls.client_ca.as_deref(), Some("/ca.pem"));
        assert_eq!(tls.pairs().len(), 1);
        assert!(d.validate().is_ok());
        let why =
            parse::<DiscoveryConfig>(r#"{"tls": {"cert": "/c", "key": "/k", "listen": "x"}}"#)
                .unwrap_err();
        assert!(why.contains("listen"), "{why}");
        let a: AppConfig = parse(
            r#"{"tls": {"certificates": [{"cert": "/a", "key": "/b"}], "handshake_timeout": "2s"}}"#,
        )
        .unwrap();
        assert_eq!(
            a.tls.as_ref().unwrap().handshake_timeout,
            Duration::from_secs(2)
        );
        assert!(a.validate().is_ok());
        for (text, wanted) in [
            (
                r#"{"tls": {"cert": "/c"}}"#,
                "tls.cert and tls.key go together",
            ),
            (r#"{"tls": {}}"#, "tls needs a certificate"),
            (
                r#"{"tls": {"cert": "/c", "key": "/k", "handshake_timeout": 0}}"#,
                "handshake_timeout must be above zero",
            ),
            (
                r#"{"tls": {"cert": "/c", "key": "/k", "client_ca": ""}}"#,
                "tls.client_ca must name a CA file",
            ),
        ] {
            let d: DiscoveryConfig = parse(text).unwrap();
            let why = d.validate().unwrap_err().to_string();
            assert!(why.contains(wanted), "{text}: {why}");
            let a: AppConfig = parse(text).unwrap();
            let why = a.validate().unwrap_err().to_string();
            assert!(why.contains(wanted), "{text}: {why}");
        }
    }

    #[test]
    fn an_https_discovery_url_needs_discovery_ca_and_a_client_certificate_goes_with_its_key() {
        let app = |text: &str| parse::<AppConfig>(text).unwrap().validate();
        let why = app(r#"{"discovery_url": "https://d.test:8500"}"#)
            .unwrap_err()
            .to_string();
        assert!(why.contains("needs discovery_ca"), "{why}");
        assert!(app(r#"{"discovery_url": "https://d.test:8500", "discovery_ca": "/ca"}"#).is_ok());
        assert!(app(
            r#"{"discovery_url": "http://a:1,https://d.test", "discovery_ca": "/ca",
                "discovery_cert": "/c", "discovery_key": "/k"}"#
        )
        .is_ok());
        let why = app(
            r#"{"discovery_url": "https://d.test", "discovery_ca": "/ca", "discovery_cert": "/c"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            why.contains("discovery_cert and discovery_key go together"),
            "{why}"
        );
        let why = app(r#"{"discovery_cert": "/c", "discovery_key": "/k"}"#)
            .unwrap_err()
            .to_string();
        assert!(why.contains("needs discovery_ca"), "{why}");
        let gateway = |text: &str| parse::<GatewayConfig>(text).unwrap().validate();
        let why = gateway(r#"{"discovery_url": "https://d.test:8500"}"#)
            .unwrap_err()
            .to_string();
        assert!(why.contains("needs discovery_ca"), "{why}");
        assert!(
            gateway(r#"{"discovery_url": "https://d.test:8500", "discovery_ca": "/ca"}"#).is_ok()
        );
        let why = gateway(r#"{"discovery_url": "ftp://d.test"}"#)
            .unwrap_err()
            .to_string();
        assert!(why.contains("http:// or https://"), "{why}");
    }
}

/// The loader's refusals (a FIFO, a device, an oversized file): beside the other tests, in a module of their own.
#[cfg(test)]
mod load_tests {
    use super::*;
    use std::path::PathBuf;

    /// A fresh temp dir, removed at the end.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir =
                std::env::temp_dir().join(format!("config-load-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn refused(path: &Path) -> String {
        load::<GatewayConfig>(Some(path)).unwrap_err().to_string()
    }

    #[test]
    fn a_symlink_to_dev_zero_is_refused_naming_the_path() {
        let dir = Dir::new("zero");
        let path = dir.0.join("gateway.json");
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        let why = refused(&path);
        assert!(why.contains(&path.display().to_string()), "{why}");
        assert!(
            why.contains("not a regular file (a character device)"),
            "{why}"
        );
    }

    #[test]
    fn a_fifo_is_refused_at_once_without_a_writer() {
        let dir = Dir::new("fifo");
        let path = dir.0.join("gateway.json");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo");
        // On a thread: a blocking open would hang the test, not fail it.
        let (tx, rx) = std::sync::mpsc::channel();
        let probe = path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(refused(&probe));
        });
        let why = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the loader did not block on the FIFO");
        assert!(why.contains("not a regular file (a FIFO)"), "{why}");
        let dir_why = refused(&dir.0);
        assert!(dir_why.contains("(a directory)"), "{dir_why}");
    }

    #[test]
    fn a_file_over_the_cap_is_refused_and_one_at_the_cap_read() {
        let dir = Dir::new("big");
        let path = dir.0.join("gateway.json");
        // Valid JSON padded with white space: only the size can refuse it.
        let padded = |len: u64| {
            let mut text = br#"{"max_attempts": 2}"#.to_vec();
            text.resize(len as usize, b' ');
            text
        };
        std::fs::write(&path, padded(2 * 1024 * 1024)).unwrap();
        let why = refused(&path);
        assert!(why.contains("larger than 1048576 bytes"), "{why}");
        std::fs::write(&path, padded(MAX_CONFIG_BYTES)).unwrap();
        let config: GatewayConfig = load(Some(&path)).unwrap();
        assert_eq!(config.max_attempts, 2);
    }

    #[test]
    fn a_missing_file_is_named() {
        let why = refused(Path::new("/nonexistent/gateway.json"));
        assert!(
            why.contains("cannot read config /nonexistent/gateway.json"),
            "{why}"
        );
    }
}

/// Unknown keys ("did you mean") and the app's discovery URLs.
#[cfg(test)]
mod unknown_key_tests {
    use super::*;

    #[test]
    fn unknown_keys_suggest_the_nearest_key_of_their_section_once() {
        let err = parse::<DiscoveryConfig>(r#"{"listne": "127.0.0.1:0"}"#).unwrap_err();
        assert_eq!(
            err,
            "unknown key `listne` at line 1 column 9; did you mean `listen`?"
        );
        let err = parse::<DiscoveryConfig>("{\n  \"health_check_intervl\": 5\n}").unwrap_err();
        assert!(
            err.contains("`health_check_intervl` at line 2")
                && err.ends_with("did you mean `health_check_time_interval`?"),
            "{err}"
        );
        // Serde's list of every key is gone.
        assert!(!err.contains("max_instances"), "{err}");
        let err = parse::<GatewayConfig>(r#"{"routes": [{"prefix": "/", "namespce": "a"}]}"#)
            .unwrap_err();
        assert!(
            err.starts_with("unknown key `routes[0].namespce` at line 1 column ")
                && err.ends_with("; did you mean `routes[0].namespace`?"),
            "{err}"
        );
        // Case and `-` for `_` are near misses too.
        let err = parse::<GatewayConfig>(r#"{"Max-Attempts": 2}"#).unwrap_err();
        assert!(err.ends_with("did you mean `max_attempts`?"), "{err}");
        let err = parse::<AppConfig>(r#"{"register_intervl": "1s"}"#).unwrap_err();
        assert!(err.ends_with("did you mean `register_interval`?"), "{err}");
    }

    #[test]
    fn unknown_keys_with_nothing_close_say_where_the_keys_are() {
        let err = parse::<AppConfig>(r#"{"colour": "blue"}"#).unwrap_err();
        assert!(
            err.starts_with("unknown key `colour` at line 1 column 9; no key here is close"),
            "{err}"
        );
        assert!(!err.contains("register_interval"), "{err}");
        // A small section lists its few keys.
        let err = parse::<GatewayConfig>(
            r#"{"routes": [{"prefix": "/", "upstream_tls": {"ca": "c", "zzz": 1}}]}"#,
        )
        .unwrap_err();
        assert!(
            err.ends_with("; expected `ca`, `cert`, `key`, `server_name`"),
            "{err}"
        );
        // Other errors keep serde's words, with the path.
        let err = parse::<DiscoveryConfig>(r#"{"listen": 5}"#).unwrap_err();
        assert!(err.starts_with("listen: invalid type"), "{err}");
    }

    #[test]
    fn upstream_tls_is_read_and_routes_to_one_namespace_must_agree_on_it() {
        let config = parse::<GatewayConfig>(
            r#"{"routes": [
                {"prefix": "/a", "namespace": "n", "upstream_tls": {"ca": "/ca.pem", "server_name": "x.test"}},
                {"prefix": "/b", "namespace": "n", "upstream_tls": {"ca": "/ca.pem", "server_name": "x.test"}}
            ]}"#,
        )
        .unwrap();
        assert!(config.validate().is_ok());
        let tls = config.routes[0].upstream_tls.clone().unwrap();
        assert_eq!(
            (tls.ca.as_str(), tls.server_name.as_deref()),
            ("/ca.pem", Some("x.test"))
        );
        let mut differ = config.clone();
        differ.routes[1].upstream_tls = None;
        let err = differ.validate().unwrap_err().to_string();
        assert!(err.contains("same upstream_tls"), "{err}");
        let mut half = config.clone();
        for r in &mut half.routes {
            r.upstream_tls.as_mut().unwrap().cert = Some("/c.pem".into());
        }
        let err = half.validate().unwrap_err().to_string();
        assert!(
            err.contains("upstream_tls.cert and upstream_tls.key go together"),
            "{err}"
        );
        let err = parse::<GatewayConfig>(
            r#"{"routes": [{"prefix": "/", "namespace": "n", "upstream_tls": {"ca": "/ca.pem", "server_nme": "x"}}]}"#,
        )
        .unwrap_err();
        assert!(
            err.ends_with("did you mean `routes[0].upstream_tls.server_name`?"),
            "{err}"
        );
    }

    #[test]
    fn edit_distance_counts_a_swap_as_one() {
        let d = |a: &str, b: &str| {
            edit_distance(
                &a.chars().collect::<Vec<_>>(),
                &b.chars().collect::<Vec<_>>(),
            )
        };
        assert_eq!(d("listne", "listen"), 1);
        assert_eq!(d("", "abc"), 3);
        assert_eq!(d("kitten", "sitting"), 3);
        assert_eq!(closest("prot", &["port", "bind"]), Some("port"));
        assert_eq!(closest("xyz", &["port", "bind"]), None);
    }

    #[test]
    fn app_discovery_url_takes_several_urls_each_checked() {
        let c = AppConfig {
            discovery_url: " http://a:8500/, http://127.0.0.1:9/x ,".into(),
            ..AppConfig::default()
        };
        assert_eq!(
            c.discovery_urls(),
            ["http://a:8500", "http://127.0.0.1:9/x"]
        );
        c.validate().unwrap();
        for good in [
            "http://[::1]:8500",
            "http://disco",
            "http://a:1,http://b:65535",
        ] {
            let c = AppConfig {
                discovery_url: good.into(),
                ..AppConfig::default()
            };
            assert!(c.validate().is_ok(), "{good:?}");
        }
        for bad in [
            "",
            " , ",
            "http://a:8500,https://b",
            "http://a:8500,http://",
            "http://a b",
            "http://a:99999",
            "http://a:0",
            "http://a:x",
            "http://a:8500http://b:8500",
        ] {
            let c = AppConfig {
                discovery_url: bad.into(),
                ..AppConfig::default()
            };
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("discovery_url"), "{bad:?}: {err}");
        }
    }
}
