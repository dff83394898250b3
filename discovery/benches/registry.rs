#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Discovery's registry under load: `cargo bench -p discovery --bench registry`.
//!
//! Everything runs in this process on async-std: discovery (`discovery::spawn`),
//! 1,000 raw HTTP responders answering `GET /health_check`, and the clients.
//!
//! 1. Lookups per second on ONE keep-alive connection (sequential
//!    `POST /api/lookup`, each answer read in full) with 1 instance, with
//!    1,000 instances while health checks are idle (interval 1h), with 1,000
//!    instances while ~1,000 checks/s run (interval 1s, 100 of the instances
//!    answering after 400 ms against a 500 ms timeout, so checks are always in
//!    flight), and idle again afterwards. The busy/idle ratio shows whether a
//!    lookup ever waits behind a health check's network round trip: it would
//!    fall to a few lookups per second if it did.
//! 2. Change-to-watcher latency on `GET /api/watch` (SSE): from just before a
//!    `POST /api/deregister` (and a re-registration) is sent until a watcher has
//!    received and decoded the event carrying the new set of ~1,000 instances.
//!
//! Writes a markdown table to `bench/results-discovery.md` and prints it.

use async_std::net::{TcpListener, TcpStream};
use async_std::task;
use futures_lite::{AsyncReadExt, AsyncWriteExt, StreamExt};
use shared::config::DiscoveryConfig;
use shared::http1::client::{post, Connection, Response};
use shared::http1::{parse_response, ChunkedDecoder, Framing, ReadBuf, ResponseHead};
use shared::sse::{Line, Parser};
use shared::wire::{InstanceInfo, InstanceStatus, LookupResponse, WatchEvent};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Instances registered in the namespace under test.
const INSTANCES: usize = 1000;
/// Every `SLOW_EVERY`th instance answers its health check after `SLOW_DELAY`.
const SLOW_EVERY: usize = 10;
const SLOW_DELAY: Duration = Duration::from_millis(400);
const TIMEOUT_THRESHOLD: Duration = Duration::from_millis(500);
const BUSY_INTERVAL: Duration = Duration::from_secs(1);
const IDLE_INTERVAL: Duration = Duration::from_secs(3600);
/// Length of each lookup run.
const LOOKUP_TIME: Duration = Duration::from_secs(5);
/// Registry changes timed on the watch stream with checks idle, and while busy.
const WATCH_CHANGES: usize = 200;
const BUSY_WATCH_CHANGES: usize = 100;
const NS: &str = "bench";
const SINGLE_NS: &str = "single";

const HEALTHY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

/// The 1,000 health-check responders.
struct Responders {
    ports: Vec<u16>,
    /// Health checks answered, all responders together.
    answered: Arc<AtomicU64>,
    /// Per responder: when it last finished answering, in ns since `base`.
    answered_at: Arc<Vec<AtomicU64>>,
    base: Instant,
}

impl Responders {
    async fn start(n: usize) -> Responders {
        let answered = Arc::new(AtomicU64::new(0));
        let answered_at: Arc<Vec<AtomicU64>> =
            Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let base = Instant::now();
        let mut ports = Vec::with_capacity(n);
        for index in 0..n {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            ports.push(listener.local_addr().unwrap().port());
            let slow = is_slow(index);
            let answered = answered.clone();
            let answered_at = answered_at.clone();
            task::spawn(async move {
                let mut incoming = listener.incoming();
                while let Some(stream) = incoming.next().await {
                    let Ok(stream) = stream else { continue };
                    let answered = answered.clone();
                    let answered_at = answered_at.clone();
                    task::spawn(async move {
                        if answer(stream, slow).await {
                            answered_at[index]
                                .store(base.elapsed().as_nanos() as u64, Ordering::Release);
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            });
        }
        Responders {
            ports,
            answered,
            answered_at,
            base,
        }
    }

    fn last_answer(&self, index: usize) -> Instant {
        self.base + Duration::from_nanos(self.answered_at[index].load(Ordering::Acquire))
    }
}

fn is_slow(index: usize) -> bool {
    index % SLOW_EVERY == SLOW_EVERY - 1
}

/// Reads one request head, waits if slow, answers 200 and closes; true if answered.
async fn answer(mut stream: TcpStream, slow: bool) -> bool {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if head.len() > 16 * 1024 {
            return false;
        }
    }
    if slow {
        task::sleep(SLOW_DELAY).await;
    }
    stream.write_all(HEALTHY).await.is_ok()
}

/// A keep-alive connection to discovery for its JSON API.
struct Api {
    conn: Connection,
    host: String,
    req: Vec<u8>,
    res: Response,
}

impl Api {
    async fn connect(addr: SocketAddr) -> Api {
        Api {
            conn: Connection::connect(addr).await.unwrap(),
            host: addr.to_string(),
            req: Vec::with_capacity(1024),
            res: Response::default(),
        }
    }

    async fn post(&mut self, path: &str, body: &serde_json::Value) -> u16 {
        post(
            &mut self.req,
            &self.host,
            path,
            body.to_string().as_bytes(),
            "",
        );
        self.conn.send(&self.req).await.unwrap();
        self.conn.read_into(&mut self.res, false).await.unwrap();
        self.res.status
    }

    async fn get(&mut self, path: &str) -> &[u8] {
        self.req.clear();
        self.req.extend_from_slice(
            format!("GET {path} HTTP/1.1\r\nhost: {}\r\n\r\n", self.host).as_bytes(),
        );
        self.conn.send(&self.req).await.unwrap();
        self.conn.read_into(&mut self.res, false).await.unwrap();
        assert_eq!(self.res.status, 200, "GET {path}");
        &self.res.body
    }

    async fn register(&mut self, namespace: &str, port: u16) -> u16 {
        let body = serde_json::json!({"namespace": namespace, "port": port, "host": "127.0.0.1"});
        self.post("/api/register", &body).await
    }

    async fn deregister(&mut self, namespace: &str, port: u16) -> u16 {
        let body = serde_json::json!({"namespace": namespace, "port": port, "host": "127.0.0.1"});
        self.post("/api/deregister", &body).await
    }

    /// Waits until `namespace` has `count` available instances.
    async fn wait_available(&mut self, namespace: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let body = self.get("/api/services").await;
            let services: BTreeMap<String, Vec<InstanceInfo>> =
                serde_json::from_slice(body).unwrap();
            let available = services.get(namespace).map_or(0, |list| {
                list.iter()
                    .filter(|i| i.status == InstanceStatus::Available)
                    .count()
            });
            if available == count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{namespace}: {available} of {count} instances available after 15 s"
            );
            task::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `health_checks_total` by outcome and the check-duration sum, from `/metrics`.
    async fn check_metrics(&mut self) -> CheckMetrics {
        let text = String::from_utf8_lossy(self.get("/metrics").await).into_owned();
        let mut m = CheckMetrics::default();
        for line in text.lines() {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            // Metric names carry discovery's prefix.
            let name = name.strip_prefix("discovery_").unwrap_or(name);
            if let Some(labels) = name.strip_prefix("health_checks_total{") {
                m.total += value;
                if labels.contains("outcome=\"ok\"") {
                    m.ok += value;
                }
            } else if name == "health_check_duration_seconds_sum" {
                m.seconds += value;
            }
        }
        m
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct CheckMetrics {
    total: f64,
    ok: f64,
    seconds: f64,
}

/// Latencies in nanoseconds, summarised.
#[derive(Clone, Debug, Default)]
struct Latencies(Vec<u64>);

impl Latencies {
    fn push(&mut self, d: Duration) {
        self.0.push(d.as_nanos() as u64);
    }

    fn sorted(&self) -> Vec<u64> {
        let mut v = self.0.clone();
        v.sort_unstable();
        v
    }

    /// The `p` quantile (0..=1) in milliseconds.
    fn ms(&self, p: f64) -> f64 {
        let v = self.sorted();
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1] as f64 / 1e6
    }

    fn us(&self, p: f64) -> f64 {
        self.ms(p) * 1000.0
    }
}

/// One lookup run's result.
struct LookupRun {
    per_second: f64,
    latency: Latencies,
    /// `service_available_count` of the last answer.
    available: usize,
}

/// Sequential lookups on one keep-alive connection for `LOOKUP_TIME`.
async fn lookup_run(addr: SocketAddr, namespace: &str) -> LookupRun {
    let mut conn = Connection::connect(addr).await.unwrap();
    let mut req = Vec::new();
    let body = serde_json::json!({ "namespace": namespace }).to_string();
    post(
        &mut req,
        &addr.to_string(),
        "/api/lookup",
        body.as_bytes(),
        "",
    );
    let mut res = Response::default();
    for _ in 0..500 {
        conn.send(&req).await.unwrap();
        conn.read_into(&mut res, false).await.unwrap();
        assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    }
    let mut latency = Latencies(Vec::with_capacity(200_000));
    let started = Instant::now();
    let mut count = 0u64;
    loop {
        let sent = Instant::now();
        conn.send(&req).await.unwrap();
        conn.read_into(&mut res, false).await.unwrap();
        let done = Instant::now();
        assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
        latency.push(done - sent);
        count += 1;
        if done - started >= LOOKUP_TIME {
            break;
        }
    }
    let elapsed = started.elapsed();
    let last: LookupResponse = serde_json::from_slice(&res.body).unwrap();
    LookupRun {
        per_second: count as f64 / elapsed.as_secs_f64(),
        latency,
        available: last.service_available_count,
    }
}

/// A reader of `GET /api/watch` on a raw connection: de-chunks the body and
/// feeds it line by line through the SSE parser.
struct Watch {
    stream: TcpStream,
    buf: ReadBuf,
    decoder: ChunkedDecoder,
    /// De-chunked bytes not yet split into lines.
    data: Vec<u8>,
    /// How much of `data` is known to hold no newline.
    scanned: usize,
    parser: Parser,
}

impl Watch {
    async fn open(addr: SocketAddr, namespace: &str) -> Watch {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let request = format!("GET /api/watch?namespace={namespace} HTTP/1.1\r\nhost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = ReadBuf::with_capacity(256 * 1024);
        let mut head = ResponseHead::default();
        while !parse_response(buf.data(), &mut head, 64 * 1024, false).unwrap() {
            assert!(buf.fill(&mut stream).await.unwrap() > 0, "watch closed");
        }
        assert_eq!(head.status, 200);
        assert!(matches!(head.framing, Framing::Chunked));
        buf.consume(head.len);
        Watch {
            stream,
            buf,
            decoder: ChunkedDecoder::new(),
            data: Vec::with_capacity(256 * 1024),
            scanned: 0,
            parser: Parser::default(),
        }
    }

    /// The next event, or `None` when the stream ends.
    async fn next_event(&mut self) -> Option<shared::sse::Event> {
        loop {
            while let Some(at) = self.data[self.scanned..].iter().position(|b| *b == b'\n') {
                let end = self.scanned + at;
                let line = std::str::from_utf8(&self.data[..end])
                    .unwrap()
                    .trim_end_matches('\r');
                let parsed = self.parser.line(line);
                self.data.drain(..=end);
                self.scanned = 0;
                if let Line::Event(e) = parsed {
                    return Some(e);
                }
            }
            self.scanned = self.data.len();
            if self.decoder.is_done() {
                return None;
            }
            if self.buf.is_empty() && self.buf.fill(&mut self.stream).await.ok()? == 0 {
                return None;
            }
            let used = self
                .decoder
                .decode(self.buf.data(), Some(&mut self.data))
                .unwrap();
            self.buf.consume(used);
        }
    }
}

/// Opens a watch and forwards each decoded event with the instant it was decoded.
async fn spawn_watcher(
    addr: SocketAddr,
    namespace: &str,
) -> async_channel::Receiver<(WatchEvent, Instant)> {
    let mut watch = Watch::open(addr, namespace).await;
    let (tx, rx) = async_channel::unbounded();
    task::spawn(async move {
        while let Some(event) = watch.next_event().await {
            assert_eq!(event.event, "instances");
            let decoded: WatchEvent = serde_json::from_str(&event.data).unwrap();
            if tx.send((decoded, Instant::now())).await.is_err() {
                return;
            }
        }
    });
    rx
}

#[derive(Default)]
struct WatchRun {
    /// Deregister sent -> watcher has the set without the instance.
    deregister: Latencies,
    /// Register sent -> first check -> watcher has the set with the instance.
    register: Latencies,
    /// The instance answered its health check -> watcher has the set with it.
    check_to_watcher: Latencies,
    snapshot_bytes: usize,
}

/// Times `changes` deregistrations and re-registrations of fast instances on the watch stream.
async fn watch_run(
    addr: SocketAddr,
    responders: &Responders,
    changes: usize,
    checks_idle: bool,
) -> WatchRun {
    let events = spawn_watcher(addr, NS).await;
    let mut api = Api::connect(addr).await;
    let (first, _) = events.recv().await.unwrap();
    assert_eq!(
        first.instances.len(),
        INSTANCES,
        "first snapshot is complete"
    );
    let mut run = WatchRun {
        snapshot_bytes: serde_json::to_string(&first).unwrap().len(),
        ..WatchRun::default()
    };
    let mut version = first.version;
    let fast: Vec<usize> = (0..INSTANCES).filter(|i| !is_slow(*i)).collect();
    for k in 0..changes {
        let index = fast[(k * 37) % fast.len()];
        let port = responders.ports[index];
        let sent = Instant::now();
        assert_eq!(api.deregister(NS, port).await, 200);
        let (at, len) = wait_for(&events, &mut version, port, false).await;
        // While checks are busy a slow instance can time out now and then.
        assert!(len == INSTANCES - 1 || !checks_idle, "{len}");
        run.deregister.push(at - sent);
        let sent = Instant::now();
        assert_eq!(api.register(NS, port).await, 201);
        let (at, len) = wait_for(&events, &mut version, port, true).await;
        assert!(len == INSTANCES || !checks_idle, "{len}");
        run.register.push(at - sent);
        if checks_idle {
            run.check_to_watcher
                .push(at.saturating_duration_since(responders.last_answer(index)));
        }
    }
    run
}

/// The next event in which `port` is present (or absent); its arrival and set size.
async fn wait_for(
    events: &async_channel::Receiver<(WatchEvent, Instant)>,
    version: &mut u64,
    port: u16,
    want_present: bool,
) -> (Instant, usize) {
    loop {
        let (event, at) = events.recv().await.unwrap();
        assert!(event.version > *version, "versions grow");
        *version = event.version;
        if event.instances.iter().any(|i| i.port.0 == port) == want_present {
            return (at, event.instances.len());
        }
    }
}

fn config(interval: Duration) -> DiscoveryConfig {
    DiscoveryConfig {
        listen: "127.0.0.1:0".into(),
        health_check_time_interval: interval,
        timeout_threshold: TIMEOUT_THRESHOLD,
        ..DiscoveryConfig::default()
    }
}

async fn register_all(api: &mut Api, responders: &Responders) {
    for &port in &responders.ports {
        assert_eq!(api.register(NS, port).await, 201);
    }
    api.wait_available(NS, INSTANCES).await;
}

/// What the busy run saw of the health checker.
struct Busy {
    lookups: LookupRun,
    checks_per_second: f64,
    checks_failed: f64,
    responder_answers_per_second: f64,
    mean_in_flight: f64,
    mean_check_ms: f64,
    watch: WatchRun,
}

async fn run() -> String {
    let total_started = Instant::now();
    let responders = Responders::start(INSTANCES).await;
    eprintln!("{} responders up", responders.ports.len());

    // Checks idle: interval 1h; new registrations are still checked at once.
    let idle = discovery::spawn(config(IDLE_INTERVAL)).await.unwrap();
    let idle_addr = idle.addr();
    let mut api = Api::connect(idle_addr).await;
    assert_eq!(api.register(SINGLE_NS, responders.ports[0]).await, 201);
    api.wait_available(SINGLE_NS, 1).await;
    register_all(&mut api, &responders).await;
    eprintln!("idle discovery: {INSTANCES} available");

    let single = lookup_run(idle_addr, SINGLE_NS).await;
    assert_eq!(single.available, 1);
    eprintln!("1 instance: {:.0} lookups/s", single.per_second);
    let idle_before = lookup_run(idle_addr, NS).await;
    assert_eq!(idle_before.available, INSTANCES);
    eprintln!(
        "{INSTANCES} instances, checks idle: {:.0} lookups/s",
        idle_before.per_second
    );
    let watch_idle = watch_run(idle_addr, &responders, WATCH_CHANGES, true).await;
    eprintln!(
        "watch, checks idle: deregister p50 {:.2} ms",
        watch_idle.deregister.ms(0.5)
    );

    // Checks busy: every instance every second, a tenth of them answering after 400 ms.
    let busy_handle = discovery::spawn(config(BUSY_INTERVAL)).await.unwrap();
    let busy_addr = busy_handle.addr();
    let mut busy_api = Api::connect(busy_addr).await;
    register_all(&mut busy_api, &responders).await;
    // Let the periodic ticks take over from the registration checks.
    task::sleep(Duration::from_secs(2)).await;
    let metrics_before = busy_api.check_metrics().await;
    let answers_before = responders.answered.load(Ordering::Relaxed);
    let started = Instant::now();
    let lookups = lookup_run(busy_addr, NS).await;
    let elapsed = started.elapsed().as_secs_f64();
    let metrics_after = busy_api.check_metrics().await;
    let answers_after = responders.answered.load(Ordering::Relaxed);
    eprintln!(
        "{INSTANCES} instances, checks busy: {:.0} lookups/s",
        lookups.per_second
    );
    let watch = watch_run(busy_addr, &responders, BUSY_WATCH_CHANGES, false).await;
    let busy = Busy {
        checks_per_second: (metrics_after.total - metrics_before.total) / elapsed,
        checks_failed: (metrics_after.total - metrics_before.total)
            - (metrics_after.ok - metrics_before.ok),
        responder_answers_per_second: (answers_after - answers_before) as f64 / elapsed,
        mean_in_flight: (metrics_after.seconds - metrics_before.seconds) / elapsed,
        mean_check_ms: (metrics_after.seconds - metrics_before.seconds) * 1000.0
            / (metrics_after.total - metrics_before.total),
        lookups,
        watch,
    };
    drop(busy_api);
    busy_handle.shutdown().await;
    // Checks already in flight end within the timeout.
    task::sleep(TIMEOUT_THRESHOLD + Duration::from_millis(200)).await;

    let idle_after = lookup_run(idle_addr, NS).await;
    eprintln!(
        "{INSTANCES} instances, checks idle again: {:.0} lookups/s",
        idle_after.per_second
    );
    drop(api);
    idle.shutdown().await;

    report(
        &single,
        &idle_before,
        &idle_after,
        &busy,
        &watch_idle,
        total_started.elapsed(),
    )
}

fn report(
    single: &LookupRun,
    idle_before: &LookupRun,
    idle_after: &LookupRun,
    busy: &Busy,
    watch: &WatchRun,
    took: Duration,
) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let idle_mean = (idle_before.per_second + idle_after.per_second) / 2.0;
    let ratio = busy.lookups.per_second / idle_mean;
    let lookup_row = |out: &mut String, what: &str, r: &LookupRun| {
        let _ = writeln!(
            out,
            "| {what} | {:.0} lookups/s | p50 {:.0} µs, p99 {:.0} µs, max {:.2} ms |",
            r.per_second,
            r.latency.us(0.5),
            r.latency.us(0.99),
            r.latency.ms(1.0),
        );
    };
    let mut out = String::new();
    let _ = writeln!(out, "# Discovery registry benchmark\n");
    let _ = writeln!(
        out,
        "Written by `cargo bench -p discovery --bench registry` on {}, {cores} cores ({cpu}), \
         Linux {kernel}; the run took {:.0} s.",
        today(),
        took.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "Everything in one process on async-std ({cores} executor threads): discovery \
         (`discovery::spawn`), {INSTANCES} raw HTTP responders on 127.0.0.1 answering \
         `GET /health_check` with 200 (every {SLOW_EVERY}th after {} ms, the rest at once), \
         and the clients. Lookups: sequential `POST /api/lookup` on one keep-alive connection, \
         each answer read in full, {} s per run after 500 warm-up requests. \
         `timeout_threshold` {} ms; checks idle = `health_check_time_interval` 1h (every \
         instance already available), checks busy = interval {} s over the {INSTANCES} \
         instances.\n",
        SLOW_DELAY.as_millis(),
        LOOKUP_TIME.as_secs(),
        TIMEOUT_THRESHOLD.as_millis(),
        BUSY_INTERVAL.as_secs(),
    );
    let _ = writeln!(out, "| measurement | result | detail |");
    let _ = writeln!(out, "| --- | --- | --- |");
    lookup_row(&mut out, "lookups, 1 instance", single);
    lookup_row(
        &mut out,
        &format!("lookups, {INSTANCES} instances, checks idle"),
        idle_before,
    );
    lookup_row(
        &mut out,
        &format!(
            "lookups, {INSTANCES} instances, {:.0} checks/s running ({} of them slow)",
            busy.checks_per_second,
            INSTANCES / SLOW_EVERY
        ),
        &busy.lookups,
    );
    lookup_row(
        &mut out,
        &format!("lookups, {INSTANCES} instances, checks idle again (after the busy run)"),
        idle_after,
    );
    let _ = writeln!(
        out,
        "| ratio busy / idle | {ratio:.2} | busy {:.0} / mean of the two idle runs {idle_mean:.0} |",
        busy.lookups.per_second
    );
    let _ = writeln!(
        out,
        "| health checks during the busy run | {:.0} checks/s | {:.0} answers/s at the \
         responders; a check takes {:.0} ms on average, so {:.0} are in flight at any time; \
         {:.0} failed |",
        busy.checks_per_second,
        busy.responder_answers_per_second,
        busy.mean_check_ms,
        busy.mean_in_flight,
        busy.checks_failed,
    );
    let watch_row = |out: &mut String, what: &str, l: &Latencies| {
        let _ = writeln!(
            out,
            "| {what} | p50 {:.2} ms | p99 {:.2} ms, max {:.2} ms, n = {} |",
            l.ms(0.5),
            l.ms(0.99),
            l.ms(1.0),
            l.0.len()
        );
    };
    watch_row(
        &mut out,
        &format!(
            "watch: deregister sent → watcher has the new set, {INSTANCES} instances, checks idle"
        ),
        &watch.deregister,
    );
    watch_row(
        &mut out,
        "watch: register sent → first check passes → watcher has the new set, checks idle",
        &watch.register,
    );
    watch_row(
        &mut out,
        "watch: instance answered its health check → watcher has the new set, checks idle",
        &watch.check_to_watcher,
    );
    watch_row(
        &mut out,
        &format!(
            "watch: deregister sent → watcher has the new set, {INSTANCES} instances, checks busy"
        ),
        &busy.watch.deregister,
    );
    watch_row(
        &mut out,
        "watch: register sent → first check passes → watcher has the new set, checks busy",
        &busy.watch.register,
    );
    let _ = writeln!(
        out,
        "\nEach watch event carries the whole available set: {} bytes of JSON for {INSTANCES} \
         instances; the watcher's time is taken once the event is de-chunked, parsed as SSE \
         and decoded from JSON.\n",
        watch.snapshot_bytes
    );
    let _ = writeln!(
        out,
        "Why lookups do not wait on health checks: the registry is one `std::sync::Mutex` \
         taken only for in-memory reads and updates and never held across an `.await` \
         (`discovery/src/registry.rs`); each health check runs in its own task and takes the \
         lock only after its network round trip, to record the result \
         (`discovery/src/health.rs`), so a check waiting 400 ms on an instance holds no lock. \
         Had a lookup waited behind a check, the busy run would have done a few lookups per \
         second with a p99 near 400 ms; what it loses instead is the CPU the checks take \
         (new TCP connection and HTTP exchange per check) on this {cores}-core machine, \
         shared by discovery, the responders and the client. The checker starts all \
         {INSTANCES} checks together at each tick, so that CPU comes in bursts: the likely \
         cause of the busy run's worst lookup ({:.0} ms) and of the {:.0} ms average check \
         (the fast instances answer at once, the slow ones after {} ms).",
        busy.lookups.latency.ms(1.0),
        busy.mean_check_ms,
        SLOW_DELAY.as_millis(),
    );
    out
}

/// Today's date, UTC, as YYYY-MM-DD.
fn today() -> String {
    shared::logging::rfc3339(SystemTime::now())[..10].to_string()
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let table = task::block_on(run());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("bench")
        .join("results-discovery.md");
    std::fs::write(&path, &table).unwrap();
    println!("{table}");
    println!("written to {}", path.display());
}
