//! A small etcd v3 client over etcd's JSON gateway (`/v3/...`), on surf.
//!
//! No etcd crate: they all need tokio. The gateway's quirks, checked on
//! etcd 3.4.23: keys and values are base64, int64s arrive as JSON strings and
//! zero values are left out, a keep-alive on an expired lease answers 200
//! without a `TTL`, a watch from a compacted revision answers `canceled` with
//! `compact_revision`, and a watch on a member that lost quorum stays silent
//! unless it carries `Grpc-Metadata-hasleader: true`.
//!
//! Every call has a deadline and walks the endpoints: on a transport error,
//! a deadline or a 5xx, the next endpoint is tried, and the one that answered
//! is tried first next time.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use futures_lite::{AsyncBufRead, AsyncBufReadExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// No endpoint answered in time (or every one answered 5xx): etcd is away
    /// from here. Safe to retry later.
    Unavailable(String),
    /// etcd answered and refused the request (4xx, or a body we cannot read).
    Rejected(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unavailable(m) => write!(f, "etcd unavailable: {m}"),
            Error::Rejected(m) => write!(f, "etcd refused: {m}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// The JSON gateway writes int64s as strings; accept both, absent is 0.
mod int64 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &i64, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<i64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            S(String),
            N(i64),
        }
        match Either::deserialize(d)? {
            Either::N(n) => Ok(n),
            Either::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Bytes as base64, as the gateway carries keys and values.
mod bytes {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        B64.decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_empty(v: &[u8]) -> bool {
    v.is_empty()
}

/// The header of every answer; `revision` is the store's revision then.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Header {
    #[serde(default, with = "int64")]
    pub revision: i64,
}

/// One key with its value and revisions.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct KeyValue {
    #[serde(default, with = "bytes")]
    pub key: Vec<u8>,
    #[serde(default, with = "bytes")]
    pub value: Vec<u8>,
    #[serde(default, with = "int64")]
    pub create_revision: i64,
    #[serde(default, with = "int64")]
    pub mod_revision: i64,
    #[serde(default, with = "int64")]
    pub version: i64,
    #[serde(default, with = "int64")]
    pub lease: i64,
}

/// `/v3/kv/range`: one key, or `[key, range_end)`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RangeRequest {
    #[serde(with = "bytes")]
    pub key: Vec<u8>,
    #[serde(with = "bytes", skip_serializing_if = "is_empty")]
    pub range_end: Vec<u8>,
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub limit: i64,
    /// Read at this revision (0: the latest).
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub revision: i64,
    /// `ASCEND` or `DESCEND` (absent: by key, ascending).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort_order: Option<&'static str>,
    /// `KEY`, `VERSION`, `CREATE`, `MOD` or `VALUE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort_target: Option<&'static str>,
    /// Answer keys and revisions without values.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub keys_only: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RangeResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub kvs: Vec<KeyValue>,
    #[serde(default)]
    pub more: bool,
    #[serde(default, with = "int64")]
    pub count: i64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PutRequest {
    #[serde(with = "bytes")]
    pub key: Vec<u8>,
    #[serde(with = "bytes")]
    pub value: Vec<u8>,
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub lease: i64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DeleteRangeRequest {
    #[serde(with = "bytes")]
    pub key: Vec<u8>,
    #[serde(with = "bytes", skip_serializing_if = "is_empty")]
    pub range_end: Vec<u8>,
    /// Answer the deleted keys' last values.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub prev_kv: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct DeleteRangeResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default, with = "int64")]
    pub deleted: i64,
    #[serde(default)]
    pub prev_kvs: Vec<KeyValue>,
}

/// One condition of a transaction.
#[derive(Clone, Debug, Serialize)]
pub struct Compare {
    #[serde(with = "bytes")]
    pub key: Vec<u8>,
    /// `CREATE`, `MOD`, `VERSION` or `VALUE`.
    pub target: &'static str,
    /// `EQUAL`, `GREATER`, `LESS` or `NOT_EQUAL`.
    pub result: &'static str,
    #[serde(serialize_with = "opt_int64", skip_serializing_if = "Option::is_none")]
    pub create_revision: Option<i64>,
    #[serde(serialize_with = "opt_int64", skip_serializing_if = "Option::is_none")]
    pub mod_revision: Option<i64>,
    #[serde(serialize_with = "opt_bytes", skip_serializing_if = "Option::is_none")]
    pub value: Option<Vec<u8>>,
}

fn opt_int64<S: Serializer>(v: &Option<i64>, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&v.unwrap_or(0).to_string())
}

fn opt_bytes<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&B64.encode(v.as_deref().unwrap_or_default()))
}

impl Compare {
    /// True when `key` does not exist.
    pub fn absent(key: &[u8]) -> Compare {
        Compare::create_revision(key, 0)
    }

    /// True when `key` was created at `revision` (0: does not exist).
    pub fn create_revision(key: &[u8], revision: i64) -> Compare {
        Compare {
            key: key.to_vec(),
            target: "CREATE",
            result: "EQUAL",
            create_revision: Some(revision),
            mod_revision: None,
            value: None,
        }
    }

    /// True when `key` was last written at `revision`.
    pub fn mod_revision(key: &[u8], revision: i64) -> Compare {
        Compare {
            key: key.to_vec(),
            target: "MOD",
            result: "EQUAL",
            create_revision: None,
            mod_revision: Some(revision),
            value: None,
        }
    }
}

/// One operation of a transaction.
#[derive(Clone, Debug, Serialize)]
pub enum Op {
    #[serde(rename = "request_range")]
    Range(RangeRequest),
    #[serde(rename = "request_put")]
    Put(PutRequest),
    #[serde(rename = "request_delete_range")]
    Delete(DeleteRangeRequest),
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

/// One result of a transaction, in the order of its operations.
#[derive(Clone, Debug, Deserialize)]
pub enum OpResponse {
    #[serde(rename = "response_range")]
    Range(RangeResponse),
    #[serde(rename = "response_put")]
    Put(serde_json::Value),
    #[serde(rename = "response_delete_range")]
    Delete(serde_json::Value),
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct TxnResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub succeeded: bool,
    #[serde(default)]
    pub responses: Vec<OpResponse>,
}

impl TxnResponse {
    /// The keys read by the branch that ran.
    pub fn ranged(&self) -> impl Iterator<Item = &KeyValue> {
        self.responses.iter().flat_map(|r| match r {
            OpResponse::Range(r) => r.kvs.as_slice(),
            _ => &[],
        })
    }
}

#[derive(Debug, Deserialize)]
struct LeaseGrantResponse {
    #[serde(default, rename = "ID", with = "int64")]
    id: i64,
    #[serde(default, rename = "TTL", with = "int64")]
    ttl: i64,
    #[serde(default)]
    error: String,
}

#[derive(Debug, Deserialize)]
struct KeepAliveResponse {
    #[serde(default)]
    result: Option<KeepAliveResult>,
}

#[derive(Debug, Deserialize)]
struct KeepAliveResult {
    #[serde(default, rename = "TTL", with = "int64")]
    ttl: i64,
}

/// What a watch stream says, one line at a time.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct WatchResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub created: bool,
    #[serde(default)]
    pub canceled: bool,
    /// Set when the watch asked for a revision compacted away.
    #[serde(default, with = "int64")]
    pub compact_revision: i64,
    #[serde(default)]
    pub cancel_reason: String,
    #[serde(default)]
    pub events: Vec<Event>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Event {
    /// `PUT` is the zero value, so it is left out: absent means put.
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub kv: KeyValue,
}

impl Event {
    pub fn is_delete(&self) -> bool {
        self.kind == "DELETE"
    }
}

#[derive(Debug, Deserialize)]
struct WatchLine {
    result: Option<WatchResponse>,
    error: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct WatchCreate<'a> {
    create_request: WatchCreateRequest<'a>,
}

#[derive(Serialize)]
struct WatchCreateRequest<'a> {
    #[serde(with = "bytes")]
    key: &'a [u8],
    #[serde(with = "bytes")]
    range_end: &'a [u8],
    #[serde(with = "int64")]
    start_revision: i64,
}

/// The key just past every key that starts with `prefix` (its range end).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: "\0" means "to the end of the keyspace".
    vec![0]
}

/// Longest line a watch stream may send: 1,000 instances changing in one
/// revision stay far below it.
const MAX_WATCH_LINE: usize = 64 * 1024 * 1024;

/// Largest unary answer read (a range over the whole registry stays far below).
const MAX_BODY: usize = 256 * 1024 * 1024;

/// A client of several etcd members.
pub struct Client {
    /// `http://host:port`, no trailing slash.
    endpoints: Vec<String>,
    /// The endpoint that answered last: tried first.
    current: AtomicUsize,
    /// Unary calls, one connection each (see [`Client::new`]).
    http: surf::Client,
    /// One connection per watch, closed (not pooled) when the watch ends.
    streams: surf::Client,
    timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("etcd::Client")
            .field("endpoints", &self.endpoints)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Client {
    /// `endpoints` as `host:port` (or `http://host:port`); `timeout` bounds every call per endpoint.
    pub fn new(endpoints: &[String], timeout: Duration) -> std::io::Result<Client> {
        if endpoints.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "etcd: no endpoint given",
            ));
        }
        let build = |keep_alive: bool| -> std::io::Result<surf::Client> {
            surf::Config::new()
                .set_http_keep_alive(keep_alive)
                .set_tcp_no_delay(true)
                .set_timeout(None)
                .try_into()
                .map_err(|e| std::io::Error::other(format!("cannot build the etcd client: {e}")))
        };
        for e in endpoints {
            let url = if e.starts_with("http://") {
                e.clone()
            } else {
                format!("http://{e}")
            };
            surf::Url::parse(&url).map_err(|why| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("etcd endpoint {e:?}: {why}"),
                )
            })?;
        }
        // No keep-alive for unary calls either: surf's pool takes a connection
        // back when its response is dropped, read or not, so a call given up at
        // its deadline would leave the late answer on a pooled connection for
        // the next call to read as its own (a compare-and-swap reading another
        // call's answer). A connection per call costs a loopback or LAN
        // handshake; an answer always belongs to its call.
        Ok(Client {
            endpoints: endpoints
                .iter()
                .map(|e| {
                    let e = e.trim_end_matches('/');
                    if e.starts_with("http://") {
                        e.to_string()
                    } else {
                        format!("http://{e}")
                    }
                })
                .collect(),
            current: AtomicUsize::new(0),
            http: build(false)?,
            streams: build(false)?,
            timeout,
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Stops preferring `endpoint` (a watch on it broke): the next call starts with the next one.
    pub fn demote(&self, endpoint: &str) {
        let n = self.endpoints.len();
        let cur = self.current.load(Ordering::Relaxed) % n;
        if self.endpoints[cur] == endpoint {
            let _ = self.current.compare_exchange(
                cur,
                (cur + 1) % n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// A POST of `body` (JSON) to `url` on `client`; never panics on a bad URL.
    fn post(url: &str, body: &[u8], streaming: bool) -> Result<surf::Request> {
        let parsed = surf::Url::parse(url)
            .map_err(|e| Error::Rejected(format!("bad etcd URL {url:?}: {e}")))?;
        let mut req = surf::RequestBuilder::new(surf::http::Method::Post, parsed)
            .body(surf::Body::from_bytes(body.to_vec()))
            .content_type(surf::http::mime::JSON);
        if streaming {
            // Without it, a watch on a member that lost quorum stays open and silent.
            req = req.header("Grpc-Metadata-hasleader", "true");
        }
        Ok(req.build())
    }

    /// Endpoints in the order to try them: the last good one first.
    fn order(&self) -> impl Iterator<Item = (usize, &str)> {
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        (0..n).map(move |k| {
            let i = (first + k) % n;
            (i, self.endpoints[i].as_str())
        })
    }

    /// POSTs `body` to `path` on one endpoint after the other until one answers.
    async fn call<Req: Serialize, Res: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
    ) -> Result<Res> {
        let body = serde_json::to_vec(body).map_err(|e| Error::Rejected(e.to_string()))?;
        let mut failures = Vec::new();
        for (i, endpoint) in self.order() {
            match self.call_one(endpoint, path, &body).await {
                Ok(bytes) => {
                    self.current.store(i, Ordering::Relaxed);
                    return serde_json::from_slice(&bytes).map_err(|e| {
                        Error::Rejected(format!("unreadable answer from {endpoint}{path}: {e}"))
                    });
                }
                Err(Error::Rejected(m)) => return Err(Error::Rejected(m)),
                Err(Error::Unavailable(m)) => failures.push(m),
            }
        }
        Err(Error::Unavailable(failures.join("; ")))
    }

    async fn call_one(&self, endpoint: &str, path: &str, body: &[u8]) -> Result<Vec<u8>> {
        self.call_within(endpoint, path, body, self.timeout).await
    }

    /// One call to one endpoint, answered within `limit`.
    async fn call_within(
        &self,
        endpoint: &str,
        path: &str,
        body: &[u8],
        limit: Duration,
    ) -> Result<Vec<u8>> {
        let url = format!("{endpoint}{path}");
        let away = |m: String| Error::Unavailable(format!("{url}: {m}"));
        let req = Self::post(&url, body, false)?;
        let exchange = async {
            let mut res = self.http.send(req).await.map_err(|e| away(e.to_string()))?;
            let status: u16 = res.status().into();
            let bytes = read_capped(&mut res, MAX_BODY)
                .await
                .map_err(|e| away(e.to_string()))?;
            Ok::<_, Error>((status, bytes))
        };
        let (status, bytes) = async_std::future::timeout(limit, exchange)
            .await
            .map_err(|_| away(format!("no answer within {limit:?}")))??;
        match status {
            200 => Ok(bytes),
            // 503 "no leader", 408 "the client connection is closing" (a member
            // stopping) and friends: another member may do better.
            408 | 429 | 500..=599 => Err(away(format!(
                "{status} {}",
                String::from_utf8_lossy(&bytes)
            ))),
            _ => Err(Error::Rejected(format!(
                "{url}: {status} {}",
                String::from_utf8_lossy(&bytes)
            ))),
        }
    }

    pub async fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        self.call("/v3/kv/range", req).await
    }

    /// A range on `endpoint` only (no failover), answered within `limit`:
    /// asks that one member whether it still answers, and what it holds.
    pub async fn range_on(
        &self,
        endpoint: &str,
        req: &RangeRequest,
        limit: Duration,
    ) -> Result<RangeResponse> {
        let body = serde_json::to_vec(req).map_err(|e| Error::Rejected(e.to_string()))?;
        let bytes = self
            .call_within(endpoint, "/v3/kv/range", &body, limit)
            .await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Rejected(format!("unreadable answer from {endpoint}: {e}")))
    }

    /// The cluster's raised alarms (`NOSPACE`, `CORRUPT`), as `"<alarm> on member <id>"`.
    pub async fn alarms(&self) -> Result<Vec<String>> {
        #[derive(Serialize)]
        struct AlarmRequest {
            action: &'static str,
        }
        #[derive(Deserialize)]
        struct AlarmResponse {
            #[serde(default)]
            alarms: Vec<AlarmMember>,
        }
        #[derive(Deserialize)]
        struct AlarmMember {
            #[serde(default, rename = "memberID")]
            member: serde_json::Value,
            /// `NONE` is the zero value, left out by the gateway.
            #[serde(default)]
            alarm: String,
        }
        let res: AlarmResponse = self
            .call("/v3/maintenance/alarm", &AlarmRequest { action: "GET" })
            .await?;
        Ok(res
            .alarms
            .into_iter()
            .filter(|a| !a.alarm.is_empty() && a.alarm != "NONE")
            .map(|a| format!("{} on member {}", a.alarm, a.member))
            .collect())
    }

    /// Every key under `prefix`, at one revision, read in pages.
    pub async fn range_prefix(&self, prefix: &[u8]) -> Result<(i64, Vec<KeyValue>)> {
        const PAGE: i64 = 2_000;
        let end = prefix_end(prefix);
        let mut key = prefix.to_vec();
        let mut revision = 0;
        let mut all = Vec::new();
        loop {
            let page = self
                .range(&RangeRequest {
                    key: key.clone(),
                    range_end: end.clone(),
                    limit: PAGE,
                    revision,
                    ..Default::default()
                })
                .await?;
            if revision == 0 {
                revision = page.header.revision;
            }
            let more = page.more;
            if let Some(last) = page.kvs.last() {
                key = last.key.clone();
                key.push(0);
            }
            all.extend(page.kvs);
            if !more {
                return Ok((revision, all));
            }
        }
    }

    pub async fn put(&self, req: &PutRequest) -> Result<Header> {
        #[derive(Deserialize)]
        struct PutResponse {
            #[serde(default)]
            header: Header,
        }
        let res: PutResponse = self.call("/v3/kv/put", req).await?;
        Ok(res.header)
    }

    pub async fn delete(&self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        self.call("/v3/kv/deleterange", req).await
    }

    pub async fn txn(&self, req: &TxnRequest) -> Result<TxnResponse> {
        self.call("/v3/kv/txn", req).await
    }

    /// Compacts the history up to `revision` (tests and operators).
    pub async fn compact(&self, revision: i64) -> Result<()> {
        #[derive(Serialize)]
        struct Compaction {
            #[serde(with = "int64")]
            revision: i64,
            physical: bool,
        }
        let _: serde_json::Value = self
            .call(
                "/v3/kv/compaction",
                &Compaction {
                    revision,
                    physical: true,
                },
            )
            .await?;
        Ok(())
    }

    /// A new lease of `ttl`: its id and the TTL granted.
    pub async fn grant(&self, ttl: Duration) -> Result<(i64, Duration)> {
        #[derive(Serialize)]
        struct Grant {
            #[serde(rename = "TTL", with = "int64")]
            ttl: i64,
        }
        let res: LeaseGrantResponse = self
            .call(
                "/v3/lease/grant",
                &Grant {
                    ttl: ttl.as_secs().max(1) as i64,
                },
            )
            .await?;
        if !res.error.is_empty() || res.id == 0 {
            return Err(Error::Rejected(format!("lease not granted: {}", res.error)));
        }
        Ok((res.id, Duration::from_secs(res.ttl.max(0) as u64)))
    }

    /// Renews a lease: its remaining TTL, or `None` when it has expired (grant a new one).
    pub async fn keep_alive(&self, id: i64) -> Result<Option<Duration>> {
        #[derive(Serialize)]
        struct KeepAlive {
            #[serde(rename = "ID", with = "int64")]
            id: i64,
        }
        // The gateway streams this one: it answers one line and keeps the body open.
        let body =
            serde_json::to_vec(&KeepAlive { id }).map_err(|e| Error::Rejected(e.to_string()))?;
        let mut failures = Vec::new();
        for (i, endpoint) in self.order() {
            let url = format!("{endpoint}/v3/lease/keepalive");
            match self.first_line(&url, &body).await {
                Ok(line) => {
                    self.current.store(i, Ordering::Relaxed);
                    let res: KeepAliveResponse = serde_json::from_str(&line)
                        .map_err(|e| Error::Rejected(format!("unreadable keep-alive: {e}")))?;
                    let ttl = res.result.map_or(0, |r| r.ttl);
                    return Ok((ttl > 0).then(|| Duration::from_secs(ttl as u64)));
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        Err(Error::Unavailable(failures.join("; ")))
    }

    /// Revokes a lease: its keys go at once.
    pub async fn revoke(&self, id: i64) -> Result<()> {
        #[derive(Serialize)]
        struct Revoke {
            #[serde(rename = "ID", with = "int64")]
            id: i64,
        }
        let _: serde_json::Value = self.call("/v3/lease/revoke", &Revoke { id }).await?;
        Ok(())
    }

    /// Sends a streaming call and answers its body as it arrives; anything
    /// but a 200 is an error naming the status and what etcd said.
    async fn open_stream(
        &self,
        url: &str,
        body: &[u8],
    ) -> Result<Box<dyn AsyncBufRead + Unpin + Send + Sync>> {
        let req = Self::post(url, body, true)?;
        let mut res = self
            .streams
            .send(req)
            .await
            .map_err(|e| Error::Unavailable(format!("{url}: {e}")))?;
        if res.status() != 200 {
            let status = res.status();
            let text = read_capped(&mut res, 64 * 1024).await.unwrap_or_default();
            return Err(Error::Unavailable(format!(
                "{url}: {status} {}",
                String::from_utf8_lossy(&text)
            )));
        }
        Ok(Box::new(res.take_body().into_reader()))
    }

    /// Opens a streaming call and reads its first line, within the deadline.
    async fn first_line(&self, url: &str, body: &[u8]) -> Result<String> {
        let read = async {
            let mut reader = self.open_stream(url, body).await?;
            next_line(&mut reader, 64 * 1024)
                .await
                .map_err(|e| Error::Unavailable(format!("{url}: {e}")))?
                .ok_or_else(|| Error::Unavailable(format!("{url}: closed without an answer")))
        };
        async_std::future::timeout(self.timeout, read)
            .await
            .map_err(|_| {
                Error::Unavailable(format!("{url}: no answer within {:?}", self.timeout))
            })?
    }

    /// Opens a watch on `[key, range_end)` from `start_revision`, on the first
    /// endpoint that accepts it; answers once etcd confirmed it (`created`).
    pub async fn watch(&self, key: &[u8], range_end: &[u8], start_revision: i64) -> Result<Watch> {
        let body = serde_json::to_vec(&WatchCreate {
            create_request: WatchCreateRequest {
                key,
                range_end,
                start_revision,
            },
        })
        .map_err(|e| Error::Rejected(e.to_string()))?;
        let mut failures = Vec::new();
        for (i, endpoint) in self.order() {
            let url = format!("{endpoint}/v3/watch");
            match self.open_watch(&url, &body).await {
                Ok(mut watch) => {
                    self.current.store(i, Ordering::Relaxed);
                    watch.endpoint = endpoint.to_string();
                    return Ok(watch);
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        Err(Error::Unavailable(failures.join("; ")))
    }

    async fn open_watch(&self, url: &str, body: &[u8]) -> Result<Watch> {
        let open = async {
            let mut watch = Watch {
                reader: self.open_stream(url, body).await?,
                endpoint: String::new(),
                pending: None,
            };
            // The first line confirms the watch, or says it was canceled.
            let first = watch.next().await?;
            if first.canceled && first.compact_revision == 0 {
                // No leader here (or refused): another member may do better.
                return Err(Error::Unavailable(format!(
                    "{url}: watch canceled: {}",
                    first.cancel_reason
                )));
            }
            if !first.created {
                // Compacted: hand it over, the caller reads everything again.
                watch.pending = Some(first);
            }
            Ok(watch)
        };
        async_std::future::timeout(self.timeout, open)
            .await
            .map_err(|_| {
                Error::Unavailable(format!("{url}: no answer within {:?}", self.timeout))
            })?
    }
}

/// An open watch stream.
pub struct Watch {
    reader: Box<dyn AsyncBufRead + Unpin + Send + Sync>,
    /// The endpoint it runs on.
    pub endpoint: String,
    /// A response read while opening, not handed out yet.
    pending: Option<WatchResponse>,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl Watch {
    /// The next response; waits as long as etcd is silent (the caller bounds it).
    pub async fn next(&mut self) -> Result<WatchResponse> {
        if let Some(pending) = self.pending.take() {
            return Ok(pending);
        }
        let line = next_line(&mut self.reader, MAX_WATCH_LINE)
            .await
            .map_err(|e| Error::Unavailable(format!("watch broke: {e}")))?
            .ok_or_else(|| Error::Unavailable("etcd closed the watch".into()))?;
        let parsed: WatchLine = serde_json::from_str(&line)
            .map_err(|e| Error::Unavailable(format!("unreadable watch line: {e}")))?;
        match (parsed.result, parsed.error) {
            (Some(r), _) => Ok(r),
            (None, Some(e)) => Err(Error::Unavailable(format!("watch error: {e}"))),
            (None, None) => Err(Error::Unavailable("empty watch line".into())),
        }
    }
}

/// Reads one `\n`-terminated line, at most `max` bytes; `None` at the end of the stream.
async fn next_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(if line.is_empty() {
                None
            } else {
                Some(String::from_utf8_lossy(&line).into_owned())
            });
        }
        let (used, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(at) => (at + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..used]);
        std::pin::Pin::new(&mut *reader).consume(used);
        if line.len() > max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("line over {max} bytes"),
            ));
        }
        if done {
            let text = String::from_utf8(line)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            let trimmed = text.trim();
            if trimmed.is_empty() {
                line = Vec::new();
                continue;
            }
            return Ok(Some(trimmed.to_string()));
        }
    }
}

/// The whole body, refusing one over `max` bytes.
async fn read_capped(res: &mut surf::Response, max: usize) -> std::io::Result<Vec<u8>> {
    use futures_lite::AsyncReadExt;
    let mut out = Vec::new();
    let mut reader = res.take_body().into_reader().take(max as u64 + 1);
    reader.read_to_end(&mut out).await?;
    if out.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("answer over {max} bytes"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_gateways_int64_strings_and_base64() {
        let kv: KeyValue = serde_json::from_str(
            r#"{"key":"L3AveA==","create_revision":"2","mod_revision":"4","version":"2","value":"Ynll"}"#,
        )
        .unwrap();
        assert_eq!(kv.key, b"/p/x");
        assert_eq!(kv.value, b"bye");
        assert_eq!((kv.create_revision, kv.mod_revision, kv.lease), (2, 4, 0));
        let line: WatchLine = serde_json::from_str(
            r#"{"result":{"header":{"revision":"5"},"events":[{"type":"DELETE","kv":{"key":"L3AveA==","mod_revision":"5"}},{"kv":{"key":"L3AveA=="}}]}}"#,
        )
        .unwrap();
        let r = line.result.unwrap();
        assert!(r.events[0].is_delete() && !r.events[1].is_delete());
        let canceled: WatchLine = serde_json::from_str(
            r#"{"result":{"header":{},"canceled":true,"compact_revision":"3"}}"#,
        )
        .unwrap();
        assert_eq!(canceled.result.unwrap().compact_revision, 3);
    }

    #[test]
    fn writes_what_the_gateway_expects() {
        let txn = TxnRequest {
            compare: vec![Compare::absent(b"k")],
            success: vec![Op::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                lease: 0,
            })],
            failure: vec![Op::Range(RangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            })],
        };
        let json = serde_json::to_value(&txn).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "compare": [{"key": "aw==", "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
                "success": [{"request_put": {"key": "aw==", "value": "dg=="}}],
                "failure": [{"request_range": {"key": "aw=="}}],
            })
        );
    }

    /// Reads one request (head and Content-Length body); false at EOF.
    async fn read_request(conn: &mut async_std::net::TcpStream) -> bool {
        use futures_lite::AsyncReadExt;
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            match conn.read(&mut byte).await {
                Ok(1) => buf.push(byte[0]),
                _ => return false,
            }
        }
        let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        conn.read_exact(&mut body).await.is_ok()
    }

    fn answer(revision: u32) -> Vec<u8> {
        let body = format!(r#"{{"header":{{"revision":"{revision}"}}}}"#);
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// A call given up at its deadline must not leave its connection for the
    /// next call: the late answer would be read as the next call's own.
    #[async_std::test]
    async fn a_call_given_up_never_lends_its_connection_to_the_next() {
        use async_std::net::TcpListener;
        use futures_lite::AsyncWriteExt;
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let late_sent = Arc::new(AtomicBool::new(false));
        let (count, sent) = (connections.clone(), late_sent.clone());
        async_std::task::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let first = count.fetch_add(1, Ordering::SeqCst) == 0;
                let sent = sent.clone();
                async_std::task::spawn(async move {
                    let mut late = first;
                    while read_request(&mut conn).await {
                        if late {
                            // Past the client's deadline: it has given up on this call.
                            async_std::task::sleep(Duration::from_millis(600)).await;
                            let _ = conn.write_all(&answer(1)).await;
                            sent.store(true, Ordering::SeqCst);
                            late = false;
                        } else {
                            let _ = conn.write_all(&answer(2)).await;
                        }
                    }
                });
            }
        });
        let client = Client::new(&[addr.to_string()], Duration::from_millis(200)).unwrap();
        let req = RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        };
        let first = client.range(&req).await;
        assert!(
            matches!(&first, Err(Error::Unavailable(m)) if m.contains("no answer within")),
            "{first:?}"
        );
        while !late_sent.load(Ordering::SeqCst) {
            async_std::task::sleep(Duration::from_millis(10)).await;
        }
        let second = client.range(&req).await.unwrap();
        assert_eq!(
            second.header.revision, 2,
            "the second call read the first call's late answer"
        );
        assert_eq!(
            connections.load(Ordering::SeqCst),
            2,
            "the given-up connection was closed, not reused"
        );
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/p/"), b"/p0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }
}
