//! `loadtest --idempotency`: does the gateway run each keyed POST exactly
//! once, and replay the same answer to every repeat?
//!
//! Each of `--connections` workers loops until `--duration` is over, one key
//! at a time: a unique `Idempotency-Key` and body, sent [`AT_ONCE`] times at
//! once (each on its own keep-alive connection, so with two gateways on one
//! port the copies land on either), then, once all of them are answered,
//! [`AFTER`] times more. Expected of every key:
//!
//! - the apps ran it exactly once: the sum over every app's admin
//!   `GET /executions` count for the key is 1;
//! - exactly one 2xx answer is the execution's own, and every other 2xx is a
//!   replay (`idempotent-replayed: true`) with the same body, byte for byte
//!   (the echo of the body sent) and the same `x-served-by`;
//! - a 409 (`idempotency_key_in_flight`) only for copies sent at once. A copy
//!   sent after the answer can still find the record in flight for a moment:
//!   the gateway settles the record after it has relayed the answer's last
//!   byte (with etcd, one more round trip), and waits up to 100 ms for that
//!   before a 409; a settle slower than that (etcd under load) still gives
//!   one. Such a 409 is counted apart
//!   (`late_conflicts`) and the copy sent again after a pause, as its
//!   `Retry-After` asks, until it gets the replay (at most [`SETTLE_WAIT`]).
//!
//! Before the load, each gateway's `/status` must show that the route the
//! path goes to honours keys on POST, and when several gateways share the
//! port, that none keeps its records in memory (each would dedupe alone).

use crate::http::{get_json, Url};
use crate::Options;
use futures_lite::future::zip;
use serde::Serialize;
use serde_json::Value;
use shared::http1::client::{post, Connection, Response};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Copies of each key sent at once, before any answer.
pub const AT_ONCE: usize = 3;
/// Copies sent after every first copy was answered.
pub const AFTER: usize = 2;
/// How long a copy sent after the answer keeps retrying a 409 in flight.
pub const SETTLE_WAIT: Duration = Duration::from_secs(5);
/// Distinct failures described in the summary.
const MAX_SAMPLES: usize = 10;

/// One gateway as its `/status` described it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GatewayFacts {
    pub admin_url: String,
    /// The route prefix the path goes to.
    pub route: String,
    /// `honor` or `require`.
    pub mode: String,
    /// `memory` or `etcd`.
    pub store: String,
}

/// Executions per key, read from the apps after the load.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ExecutionCounts {
    pub min: u64,
    pub max: u64,
    /// Keys whose count is not exactly 1.
    pub not_once: u64,
    /// Requests the apps could not count under their key during the run
    /// (their key table was full): must stay 0 for the counts to be whole.
    pub untracked: u64,
}

/// Everything an idempotency run measured, and its verdict.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct IdempotencySummary {
    pub target: String,
    pub gateways: Vec<GatewayFacts>,
    /// Keys in progress at once (workers).
    pub connections: usize,
    pub duration_s: f64,
    pub elapsed_s: f64,
    pub keys: u64,
    /// Every request sent, resends after a late 409 included.
    pub sends: u64,
    /// 2xx answers that were not replays (one per key expected).
    pub executed: u64,
    /// 2xx answers with `idempotent-replayed: true`.
    pub replays: u64,
    /// 409 in flight to a copy sent at once with the first.
    pub conflicts: u64,
    /// 409 in flight to a copy sent after every first copy was answered
    /// (the record not yet settled); the copy was sent again.
    pub late_conflicts: u64,
    /// 2xx answers not identical to the key's executed answer (body or
    /// `x-served-by`), replays without `idempotent-replayed: true`, or a key
    /// answered as executed more than once.
    pub mismatches: u64,
    /// Other statuses, and requests without an answer.
    pub failures: u64,
    pub executions: ExecutionCounts,
    /// The first failure of each kind.
    pub failure_samples: Vec<String>,
    /// Every key ran exactly once, every replay was identical, nothing failed.
    pub passed: bool,
}

/// One worker's counts.
#[derive(Debug, Default)]
struct Tally {
    keys: Vec<String>,
    sends: u64,
    executed: u64,
    replays: u64,
    conflicts: u64,
    late_conflicts: u64,
    mismatches: u64,
    failures: u64,
    samples: Vec<String>,
}

impl Tally {
    fn fail(&mut self, what: String) {
        self.failures += 1;
        self.sample(what);
    }

    fn sample(&mut self, what: String) {
        if self.samples.len() < MAX_SAMPLES && !self.samples.contains(&what) {
            self.samples.push(what);
        }
    }
}

/// What one copy got.
enum Got {
    /// A 2xx: body, `x-served-by`, whether it says it is a replay.
    Answer(Vec<u8>, Option<String>, bool),
    /// 409 `idempotency_key_in_flight`.
    InFlight,
    /// Anything else, described.
    Failed(String),
}

/// What the workers share.
struct Plan {
    addr: SocketAddr,
    host: String,
    target: String,
    body_size: usize,
    end: Instant,
    timeout: Duration,
    run: String,
}

/// Checks the gateways, runs the keys, reads the apps' counts.
pub async fn run(options: &Options) -> Result<IdempotencySummary, String> {
    options.validate()?;
    if options.app_admin_urls.is_empty() {
        return Err("--idempotency reads each app's executions at its admin port (GET /executions): run it against `just up` or `just cluster` (their state files list the apps), or name them with --app-admin-urls".into());
    }
    let url = Url::parse(&options.url)?;
    if url.tls {
        return Err(format!(
            "--idempotency speaks plain HTTP only: give it the gateway's http:// port (--url), not {}",
            options.url
        ));
    }
    let target = url.target(&options.path);
    let gateways = check_gateways(&options.gateway_admin_urls, &target).await?;
    let untracked_before = untracked(&options.app_admin_urls).await?;
    let plan = Arc::new(Plan {
        addr: url.resolve()?,
        host: url.authority.clone(),
        target: target.clone(),
        body_size: options.body_size,
        end: Instant::now() + options.duration,
        timeout: options.drain_timeout,
        run: run_id(),
    });
    let start = Instant::now();
    let workers: Vec<_> = (0..options.connections)
        .map(|w| async_std::task::spawn(worker(plan.clone(), w)))
        .collect();
    let mut all = Tally::default();
    for w in workers {
        let t = w.await;
        all.keys.extend(t.keys);
        all.sends += t.sends;
        all.executed += t.executed;
        all.replays += t.replays;
        all.conflicts += t.conflicts;
        all.late_conflicts += t.late_conflicts;
        all.mismatches += t.mismatches;
        all.failures += t.failures;
        for s in t.samples {
            all.sample(s);
        }
    }
    let elapsed = start.elapsed();
    let mut executions = count_executions(&options.app_admin_urls, &all.keys).await?;
    executions.untracked = untracked(&options.app_admin_urls)
        .await?
        .saturating_sub(untracked_before);
    let keys = all.keys.len() as u64;
    let passed = keys > 0
        && all.failures == 0
        && all.mismatches == 0
        && executions.not_once == 0
        && executions.untracked == 0;
    Ok(IdempotencySummary {
        target: format!("POST http://{}{target}", url.authority),
        gateways,
        connections: options.connections,
        duration_s: options.duration.as_secs_f64(),
        elapsed_s: elapsed.as_secs_f64(),
        keys,
        sends: all.sends,
        executed: all.executed,
        replays: all.replays,
        conflicts: all.conflicts,
        late_conflicts: all.late_conflicts,
        mismatches: all.mismatches,
        failures: all.failures,
        executions,
        failure_samples: all.samples,
        passed,
    })
}

/// Each gateway's rule for the route `target` goes to (the longest prefix
/// that matches), which must honour keys on POST; several gateways must
/// share a store.
async fn check_gateways(admin_urls: &[String], target: &str) -> Result<Vec<GatewayFacts>, String> {
    let mut facts = Vec::new();
    for admin in admin_urls {
        let status = get_json(&format!("{admin}/status")).await?;
        let routes = status["routes"].as_array().cloned().unwrap_or_default();
        let route = routes
            .iter()
            .filter(|r| r["prefix"].as_str().is_some_and(|p| routes_to(p, target)))
            .max_by_key(|r| r["prefix"].as_str().map_or(0, str::len))
            .ok_or_else(|| format!("the gateway at {admin} has no route for {target}"))?;
        let prefix = route["prefix"].as_str().unwrap_or_default().to_string();
        let rule = &route["idempotency"];
        let mode = rule["mode"].as_str().ok_or_else(|| {
            format!("the gateway at {admin} shows no idempotency rule for its routes in /status: a gateway without Idempotency-Key support?")
        })?;
        if mode == "off" {
            return Err(format!(
                "the gateway at {admin} does not honour Idempotency-Key on route {prefix:?} (its idempotency mode is off): set \"idempotency\": {{\"mode\": \"honor\"}} on the route in its config (config/gateway.json has it) and reload it (kill -HUP), or restart `just up`"
            ));
        }
        let post = rule["methods"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m == "POST"));
        if !post {
            return Err(format!(
                "the gateway at {admin} does not apply Idempotency-Key to POST on route {prefix:?}: add \"POST\" to the route's idempotency methods"
            ));
        }
        facts.push(GatewayFacts {
            admin_url: admin.clone(),
            route: prefix,
            mode: mode.to_string(),
            store: status["idempotency"]["store"]
                .as_str()
                .unwrap_or("unknown")
                .to_string(),
        });
    }
    if facts.len() > 1 && facts.iter().any(|g| g.store == "memory") {
        return Err(format!(
            "{} gateways share the port but at least one keeps its idempotency records in memory, so a key sent to two of them could run twice: give them one etcd store (idempotency_store or --idempotency-store, as `just cluster` does)",
            facts.len()
        ));
    }
    Ok(facts)
}

/// Whether the route `prefix` takes `target` (a whole path segment matches).
fn routes_to(prefix: &str, target: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    target.starts_with(prefix)
        && matches!(
            target.as_bytes().get(prefix.len()),
            None | Some(b'/' | b'?')
        )
}

/// A name for this run, so its keys are new to the gateways and the apps.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}{:x}", nanos & 0xffff_ffff_ffff, std::process::id())
}

/// The apps' requests counted without their key, summed.
async fn untracked(apps: &[String]) -> Result<u64, String> {
    let mut total = 0;
    for app in apps {
        let v = get_json(&format!("{app}/executions")).await?;
        total += v["untracked"].as_u64().unwrap_or(0);
    }
    Ok(total)
}

/// Per key, the executions of every app summed; min, max and how many are not 1.
async fn count_executions(apps: &[String], keys: &[String]) -> Result<ExecutionCounts, String> {
    let mut sums: HashMap<&str, u64> = keys.iter().map(|k| (k.as_str(), 0)).collect();
    for app in apps {
        let v = get_json(&format!("{app}/executions")).await?;
        let Some(counts) = v["executions"].as_object() else {
            return Err(format!("GET {app}/executions: no executions object"));
        };
        for (key, n) in counts {
            if let Some(sum) = sums.get_mut(key.as_str()) {
                *sum += n.as_u64().unwrap_or(0);
            }
        }
    }
    let mut c = ExecutionCounts {
        min: sums.values().copied().min().unwrap_or(0),
        max: sums.values().copied().max().unwrap_or(0),
        ..ExecutionCounts::default()
    };
    c.not_once = sums.values().filter(|n| **n != 1).count() as u64;
    Ok(c)
}

/// One worker: a key at a time until the end.
async fn worker(plan: Arc<Plan>, id: usize) -> Tally {
    let mut t = Tally::default();
    let mut conns: [Option<Connection>; AT_ONCE] = Default::default();
    let mut seq = 0u64;
    let mut req = Vec::new();
    while Instant::now() < plan.end {
        let key = format!("lt-{}-{id}-{seq}", plan.run);
        seq += 1;
        let body = body_for(&key, plan.body_size);
        post(
            &mut req,
            &plan.host,
            &plan.target,
            body.as_bytes(),
            &format!("idempotency-key: {key}\r\n"),
        );
        let mut answers = Vec::new();
        // At once: three copies before any answer.
        let [c0, c1, c2] = &mut conns;
        let (a, (b, c)) = zip(
            send(&plan, c0, &req),
            zip(send(&plan, c1, &req), send(&plan, c2, &req)),
        )
        .await;
        t.sends += AT_ONCE as u64;
        for got in [a, b, c] {
            match got {
                Got::Answer(body, by, replayed) => answers.push((body, by, replayed)),
                Got::InFlight => t.conflicts += 1,
                Got::Failed(what) => t.fail(format!("sent at once: {what}")),
            }
        }
        // After every first copy was answered: two more, each a replay.
        let [c0, c1, _] = &mut conns;
        let (a, b) = zip(send_after(&plan, c0, &req), send_after(&plan, c1, &req)).await;
        for (got, sends, late) in [a, b] {
            t.sends += sends;
            t.late_conflicts += late;
            match got {
                Got::Answer(body, by, replayed) => answers.push((body, by, replayed)),
                Got::InFlight => t.fail(format!(
                    "sent after the answer: still 409 in flight {} s later",
                    SETTLE_WAIT.as_secs()
                )),
                Got::Failed(what) => t.fail(format!("sent after the answer: {what}")),
            }
        }
        judge(&mut t, &key, body.as_bytes(), &answers);
        t.keys.push(key);
    }
    t
}

/// The key's 2xx answers: one executed, the rest identical replays.
fn judge(t: &mut Tally, key: &str, sent: &[u8], answers: &[(Vec<u8>, Option<String>, bool)]) {
    let executed: Vec<_> = answers
        .iter()
        .filter(|(_, _, replayed)| !replayed)
        .collect();
    t.executed += executed.len() as u64;
    t.replays += (answers.len() - executed.len()) as u64;
    if executed.len() > 1 {
        t.mismatches += executed.len() as u64 - 1;
        t.sample(format!(
            "{key}: {} answers without idempotent-replayed (executed more than once?)",
            executed.len()
        ));
    }
    let served_by = executed.first().map(|(_, by, _)| by);
    for (body, by, _) in answers {
        if body != sent {
            t.mismatches += 1;
            t.sample(format!(
                "{key}: a 2xx whose body is not the echo of the one sent ({} bytes)",
                body.len()
            ));
        } else if served_by.is_some_and(|first| first != by) {
            t.mismatches += 1;
            t.sample(format!(
                "{key}: a replay from {by:?}, the execution from {:?}",
                served_by.cloned().flatten()
            ));
        }
    }
}

/// `{"key":"…","pad":"xx…"}`, padded to `size` bytes when there is room.
fn body_for(key: &str, size: usize) -> String {
    let bare = format!(r#"{{"key":"{key}","pad":""}}"#);
    let pad = size.saturating_sub(bare.len());
    format!(r#"{{"key":"{key}","pad":"{}"}}"#, "x".repeat(pad))
}

/// A copy sent after the answer: a 409 in flight is sent again after a
/// pause, up to [`SETTLE_WAIT`]. Also says how many sends it took and how
/// many were such 409s.
async fn send_after(plan: &Plan, conn: &mut Option<Connection>, req: &[u8]) -> (Got, u64, u64) {
    let started = Instant::now();
    let (mut sends, mut late) = (0, 0);
    let mut pause = Duration::from_millis(10);
    loop {
        sends += 1;
        match send(plan, conn, req).await {
            Got::InFlight if started.elapsed() < SETTLE_WAIT => {
                late += 1;
                async_std::task::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            got => return (got, sends, late),
        }
    }
}

/// One copy on the worker's connection (opened again when needed).
async fn send(plan: &Plan, slot: &mut Option<Connection>, req: &[u8]) -> Got {
    let exchange = async {
        if slot.is_none() {
            *slot = Some(Connection::connect(plan.addr).await?);
        }
        match slot.as_mut() {
            Some(conn) => conn.exchange(req).await,
            None => Err(std::io::ErrorKind::NotConnected.into()),
        }
    };
    let res = match async_std::future::timeout(plan.timeout, exchange).await {
        Ok(Ok(res)) => res,
        Ok(Err(e)) => {
            *slot = None;
            return Got::Failed(format!("no answer: {e}"));
        }
        Err(_) => {
            *slot = None;
            return Got::Failed(format!("no answer within {:?}", plan.timeout));
        }
    };
    if !res.keep_alive {
        *slot = None;
    }
    classify(&res)
}

fn classify(res: &Response) -> Got {
    let code = || {
        serde_json::from_slice::<Value>(&res.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
    };
    match res.status {
        200..=299 => Got::Answer(
            res.body.clone(),
            res.header("x-served-by").map(str::to_string),
            res.header("idempotent-replayed") == Some("true"),
        ),
        409 if code().as_deref() == Some("idempotency_key_in_flight") => Got::InFlight,
        status => Got::Failed(format!(
            "{status} {}",
            code().unwrap_or_else(|| String::from_utf8_lossy(&res.body)
                .chars()
                .take(100)
                .collect())
        )),
    }
}

impl IdempotencySummary {
    /// 0 when passed, 1 otherwise (as the load's summary).
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.passed)
    }

    pub fn write_json(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
    }
}

impl fmt::Display for IdempotencySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stores: Vec<&str> = self.gateways.iter().map(|g| g.store.as_str()).collect();
        let route = self.gateways.first().map_or("?", |g| g.route.as_str());
        writeln!(
            f,
            "idempotency: {} through {} gateway(s), route {route:?}, store {}",
            self.target,
            self.gateways.len(),
            stores.join(", ")
        )?;
        let per_s = self.keys as f64 / self.elapsed_s.max(1e-9);
        writeln!(
            f,
            "  keys          {} ({per_s:.0}/s, {} at a time, {:.1}s), each sent {AT_ONCE} times at once, then {AFTER} times after the answers",
            self.keys, self.connections, self.elapsed_s
        )?;
        writeln!(f, "  sends         {}", self.sends)?;
        let e = &self.executions;
        writeln!(
            f,
            "  executions    per key min {}, max {}; {} key(s) not run exactly once (the apps' GET /executions){}",
            e.min,
            e.max,
            e.not_once,
            if e.untracked > 0 {
                format!("; {} not counted by key (an app's table is full)", e.untracked)
            } else {
                String::new()
            }
        )?;
        writeln!(
            f,
            "  answers       {} executed, {} replayed (idempotent-replayed: true)",
            self.executed, self.replays
        )?;
        writeln!(
            f,
            "  409 in flight {} to copies sent at once; {} to copies sent after an answer (record still settling, sent again)",
            self.conflicts, self.late_conflicts
        )?;
        writeln!(f, "  mismatches    {}", self.mismatches)?;
        writeln!(f, "  failures      {}", self.failures)?;
        for s in &self.failure_samples {
            writeln!(f, "    {s}")?;
        }
        if self.passed {
            writeln!(
                f,
                "PASS: every key ran exactly once and every replay was identical"
            )
        } else if self.keys == 0 {
            writeln!(f, "FAIL: no key was sent")
        } else {
            writeln!(f, "FAIL")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_takes_whole_segments() {
        assert!(routes_to("/", "/"));
        assert!(routes_to("/", "/pay"));
        assert!(routes_to("/pay", "/pay"));
        assert!(routes_to("/pay/", "/pay/x"));
        assert!(!routes_to("/pay", "/payments"));
    }

    #[test]
    fn bodies_are_json_of_the_size_asked() {
        let b = body_for("lt-1-2-3", 256);
        assert_eq!(b.len(), 256);
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["key"], "lt-1-2-3");
        assert!(body_for("k", 1).len() > 1, "never cut below the key");
    }

    #[test]
    fn a_second_execution_or_a_different_replay_is_a_mismatch() {
        let sent = b"{}".to_vec();
        let by = Some("127.0.0.1:1".to_string());
        let mut t = Tally::default();
        judge(
            &mut t,
            "k",
            &sent,
            &[
                (sent.clone(), by.clone(), false),
                (sent.clone(), by.clone(), true),
            ],
        );
        assert_eq!((t.executed, t.replays, t.mismatches), (1, 1, 0));
        judge(
            &mut t,
            "k",
            &sent,
            &[
                (sent.clone(), by.clone(), false),
                (sent.clone(), None, false),
            ],
        );
        assert_eq!(t.mismatches, 2, "executed twice, from another instance");
        judge(&mut t, "k", &sent, &[(b"[]".to_vec(), by, true)]);
        assert_eq!(t.mismatches, 3);
    }
}
