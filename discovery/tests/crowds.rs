//! Crowds of watchers. Watch streams have a cap of their own (`max_watchers`, counted within
//! `max_connections`), so register, lookup and `/health_check` keep
//! connections however many clients watch; a watcher that stops reading
//! costs at most one snapshot and gets the newest one when it reads again.
//!
//! A test binary of its own: its latency bounds (p99 under 100 ms) are
//! measured on a 2-core machine, and the acceptance binary's other tests
//! (etcd members, floods) would share the cores with it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_std::io::BufReader;
use async_std::net::{TcpListener, TcpStream};
use async_std::task;
use futures_lite::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use serde_json::Value;
use shared::config::DiscoveryConfig;
use shared::http1::client::{post, Connection};
use shared::sse::{self, Line, Parser};
use shared::wire::WatchEvent;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::procs::Proc;
use testkit::wait_until;

/// The tests that measure a child's memory and latency run one at a time.
static HEAVY: async_lock::Mutex<()> = async_lock::Mutex::new(());

/// Raises this process's descriptor limit to the hard one: the load check
/// holds some 1,500 sockets of its own.
fn raise_own_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// One request on a fresh connection, bounded in time: status, body, time taken.
async fn once(addr: SocketAddr, request: &[u8]) -> (u16, Vec<u8>, Duration) {
    let start = Instant::now();
    let exchange = async {
        let mut conn = Connection::connect(addr).await?;
        conn.exchange(request).await
    };
    let res = async_std::future::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("answered within 10 s")
        .expect("answered");
    (res.status, res.body, start.elapsed())
}

fn post_request(path: &str, body: &str) -> Vec<u8> {
    let mut req = Vec::new();
    post(&mut req, "discovery", path, body.as_bytes(), "");
    req
}

fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: discovery\r\n\r\n").into_bytes()
}

fn watch_request(namespace: &str) -> Vec<u8> {
    get_request(&format!("/api/watch?namespace={namespace}"))
}

/// A sample of discovery's `/metrics`, 0 if absent.
async fn metric(addr: SocketAddr, sample: &str) -> f64 {
    let (_, body, _) = once(addr, &get_request("/metrics")).await;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Opens a watch and reads its status. A stream (200) comes back still open
/// and unread past its head; a refusal with the rest of what was sent.
async fn watch_attempt(addr: SocketAddr, namespace: &str) -> (u16, Connection, Vec<u8>) {
    let attempt = async {
        let mut conn = Connection::connect(addr).await?;
        conn.send(&watch_request(namespace)).await?;
        let (status, _) = conn.read_status(64 * 1024).await?;
        let rest = if status == 200 {
            Vec::new()
        } else {
            conn.read_to_close().await?
        };
        std::io::Result::Ok((status, conn, rest))
    };
    async_std::future::timeout(Duration::from_secs(30), attempt)
        .await
        .expect("a watch attempt answered within 30 s")
        .expect("a watch attempt answered")
}

/// A socket that subscribes and never reads a byte.
async fn stalled_watcher(addr: SocketAddr, request: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    s
}

/// Asserts a refusal at the watch cap: 429 and the JSON error body.
fn assert_refused(status: u16, body: &[u8]) {
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(body));
    let json: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(json["error"]["code"], "too_many_watchers", "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_watchers")),
        "{json}"
    );
}

/// Answers every request 200 and closes, on every loopback address: one
/// listener stands for many instances (`127.0.x.y:port`).
async fn health_server() -> u16 {
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    task::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                task::sleep(Duration::from_millis(5)).await;
                continue;
            };
            task::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    port
}

/// The `i`th instance's host: distinct loopback addresses, one port for all.
fn host(block: u8, i: usize) -> String {
    format!("127.{block}.{}.{}", i / 200, i % 200 + 1)
}

fn instance_body(namespace: &str, host: &str, port: u16) -> String {
    serde_json::json!({"namespace": namespace, "host": host, "port": port}).to_string()
}

/// Registers `n` instances in `namespace` over one keep-alive connection
/// and waits until all of them are available.
async fn register_many(addr: SocketAddr, namespace: &str, n: usize, port: u16) {
    let mut conn = Connection::connect(addr).await.unwrap();
    for i in 0..n {
        let req = post_request(
            "/api/register",
            &instance_body(namespace, &host(0, i), port),
        );
        let res = conn.exchange(&req).await.unwrap();
        assert!(
            res.status == 201 || res.status == 200,
            "register {i}: {}",
            res.status
        );
    }
    let lookup = post_request("/api/lookup", &format!(r#"{{"namespace": "{namespace}"}}"#));
    wait_until(
        "every instance is available",
        Duration::from_secs(60),
        || async {
            let (status, body, _) = once(addr, &lookup).await;
            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            status == 200 && json["service_available_count"] == n
        },
    )
    .await;
}

/// Flips instance `i` out of rotation or back: one change of the routable set.
async fn flip(conn: &mut Connection, namespace: &str, i: usize, port: u16, out: bool) {
    let method = if out { "PUT" } else { "DELETE" };
    let body = instance_body(namespace, &host(0, i), port);
    let req = format!(
        "{method} /api/maintenance HTTP/1.1\r\nhost: discovery\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let res = conn.exchange(req.as_bytes()).await.unwrap();
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
}

/// `field` (`VmRSS`, `VmHWM`) of process `pid`, in KiB.
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Discovery as a child process with `config` (JSON) on any free port.
async fn discovery_process(name: &str, config: &str) -> (Proc, SocketAddr) {
    let path =
        testkit::tempdir::TempFile::new(format!("discovery-{}-{name}.json", std::process::id()));
    std::fs::write(&path, config).unwrap();
    let d = Proc::start("discovery", &["--config", &path.to_string_lossy()]);
    let addr = d.listening("discovery").await;
    (d, addr)
}

/// The next watch event from an HTTP/1.0 stream (no chunked framing), within `limit`.
async fn next_event<R: futures_lite::AsyncBufRead + Unpin>(
    reader: &mut R,
    parser: &mut Parser,
    limit: Duration,
) -> WatchEvent {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = async_std::future::timeout(left, sse::next(reader, parser, 1 << 24))
            .await
            .expect("an event in time")
            .unwrap()
            .expect("the stream goes on");
        if let Line::Event(e) = line {
            return serde_json::from_str(&e.data).unwrap();
        }
    }
}

#[async_std::test]
async fn past_max_watchers_a_watch_is_429_and_register_lookup_and_health_check_still_answer() {
    const WATCHERS: usize = 8;
    const EXTRA: usize = 40;
    let config = DiscoveryConfig {
        max_connections: 24,
        max_watchers: Some(WATCHERS),
        ..testkit::discovery_config()
    };
    let d = discovery::spawn(config).await.unwrap();
    let addr = d.addr();
    let peer = testkit::peer::Peer::start().await;
    testkit::client::register(&d.url(), "ns", peer.port()).await;
    wait_until("the peer is available", Duration::from_secs(5), || async {
        testkit::client::status_of(&d.url(), "ns", peer.port())
            .await
            .as_deref()
            == Some("available")
    })
    .await;

    let mut streams = Vec::new();
    for _ in 0..WATCHERS {
        let (status, conn, _) = watch_attempt(addr, "zzz").await;
        assert_eq!(status, 200);
        streams.push(conn);
    }
    // More than the connections left: each refusal must free its connection.
    let extra: Vec<_> = (0..EXTRA)
        .map(|_| task::spawn(async move { watch_attempt(addr, "zzz").await }))
        .collect();
    for attempt in extra {
        let (status, _, body) = attempt.await;
        assert_refused(status, &body);
    }

    // The rest of the API answers, each on a fresh connection, while the streams stay open.
    let other = testkit::peer::Peer::start().await;
    let (status, _, took) = once(
        addr,
        &post_request(
            "/api/register",
            &format!(r#"{{"namespace": "ns", "port": {}}}"#, other.port()),
        ),
    )
    .await;
    assert_eq!(status, 201, "register");
    assert!(took < Duration::from_secs(1), "register took {took:?}");
    let (status, _, took) =
        once(addr, &post_request("/api/lookup", r#"{"namespace": "ns"}"#)).await;
    assert_eq!(status, 200, "lookup");
    assert!(took < Duration::from_secs(1), "lookup took {took:?}");
    let (status, _, took) = once(addr, &get_request("/health_check")).await;
    assert_eq!(status, 200, "health_check");
    assert!(took < Duration::from_secs(1), "health_check took {took:?}");

    assert_eq!(metric(addr, "discovery_watchers").await, WATCHERS as f64);
    assert_eq!(
        metric(addr, "discovery_watchers_refused_total").await,
        EXTRA as f64
    );
    // A watcher that leaves frees its place for the next one.
    drop(streams.pop());
    wait_until(
        "the stream that left is uncounted",
        Duration::from_secs(5),
        || async { metric(addr, "discovery_watchers").await == (WATCHERS - 1) as f64 },
    )
    .await;
    let (status, conn, _) = watch_attempt(addr, "zzz").await;
    assert_eq!(status, 200, "a place freed");
    drop(conn);
    drop(streams);
    d.shutdown().await;
}

#[async_std::test]
async fn a_watcher_that_stops_reading_costs_no_memory_per_change_and_then_gets_the_latest_snapshot()
{
    const INSTANCES: usize = 600;
    const STALLED: usize = 40;
    let _heavy = HEAVY.lock().await;
    let port = health_server().await;
    let (d, addr) = discovery_process(
        "stalled",
        r#"{"listen": "127.0.0.1:0", "health_check_time_interval": "60s",
            "timeout_threshold": "2s", "idle_timeout": "120s"}"#,
    )
    .await;
    register_many(addr, "still", INSTANCES, port).await;

    // A reader in step with every change, to know when discovery has pushed it.
    let mut live = testkit::client::Watch::open(&format!("http://{addr}"), "still").await;
    let first = live.next(Duration::from_secs(10)).await;
    let snapshot_bytes = serde_json::to_vec(&first).unwrap().len() as u64;
    let before = memory_kib(d.pid(), "VmRSS");
    // Each half of the changes is more than a socket that is not read can
    // hold, so the stalled watchers are stalled after the first.
    let rounds = stalled_after_changes(snapshot_bytes as usize).max(300) / 2;
    let changes = 2 * rounds as u64;

    // HTTP/1.0, so the body is the bare event stream once it is read.
    let request = b"GET /api/watch?namespace=still HTTP/1.0\r\n\r\n";
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(stalled_watcher(addr, request).await);
    }
    wait_until(
        "every stalled watcher is counted",
        Duration::from_secs(10),
        || async { metric(addr, "discovery_watchers").await == (STALLED + 1) as f64 },
    )
    .await;

    let mut admin = Connection::connect(addr).await.unwrap();
    let mut version = first.version;
    let mut rss = Vec::new();
    for phase in 0..2u64 {
        for round in 0..rounds {
            let i = round % INSTANCES;
            flip(&mut admin, "still", i, port, true).await;
            flip(&mut admin, "still", i, port, false).await;
        }
        version += changes;
        while live.next(Duration::from_secs(10)).await.version < version {}
        rss.push(memory_kib(d.pid(), "VmRSS"));
        eprintln!(
            "after {} changes: VmRSS {} KiB",
            changes * (phase + 1),
            rss[phase as usize]
        );
    }
    let grown = rss[1].saturating_sub(rss[0]);
    eprintln!(
        "VmRSS before the stalled watchers {before} KiB; snapshot {snapshot_bytes} bytes; \
         grown over the last {changes} changes: {grown} KiB"
    );
    // Nothing is queued per change: the second half of the changes costs nothing.
    assert!(grown < 2048, "grew {grown} KiB over {changes} changes");
    // At most one snapshot per stalled watcher, beside its connection's own buffers.
    let held = rss[1].saturating_sub(before);
    let allowed = STALLED as u64 * (snapshot_bytes + 64 * 1024) / 1024 + 2048;
    assert!(
        held < allowed,
        "{STALLED} stalled watchers hold {held} KiB (allowed {allowed})"
    );

    // One of them reads again: whatever the sockets held, then the newest snapshot.
    let resumed = stalled.pop().unwrap();
    let mut reader = BufReader::new(resumed);
    let mut head = String::new();
    loop {
        head.clear();
        reader.read_line(&mut head).await.unwrap();
        if head.trim_end().is_empty() {
            break;
        }
    }
    let mut parser = Parser::default();
    let mut seen = Vec::new();
    loop {
        let event = next_event(&mut reader, &mut parser, Duration::from_secs(10)).await;
        seen.push(event.version);
        if event.version == version {
            assert_eq!(
                event.instances.len(),
                INSTANCES,
                "the final set, all in rotation"
            );
            break;
        }
    }
    eprintln!(
        "the resumed watcher got {} of {} versions: {:?}",
        seen.len(),
        version - first.version + 1,
        seen
    );
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "versions in order: {seen:?}"
    );
    // The sockets' own buffers held some (a few MiB); the rest were skipped.
    assert!(
        (seen.len() as u64) < changes,
        "{} events for {} changes: intermediate ones were queued",
        seen.len(),
        2 * changes
    );
    drop(stalled);
}

/// A watch stream on a raw socket, its head read (200).
async fn open_reader(addr: SocketAddr, namespace: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&watch_request(namespace)).await.unwrap();
    let mut first = [0u8; 12];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200", "the reader's watch is admitted");
    s
}

/// Reads and drops everything a watch stream sends, until `stop`.
async fn drain(mut s: TcpStream, stop: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let read = async_std::future::timeout(Duration::from_millis(200), s.read(&mut buf));
        if let Ok(Ok(0) | Err(_)) = read.await {
            return;
        }
    }
}

/// Changes after which a socket that is never read holds no more events:
/// the most the kernel buffers on both ends (`tcp_wmem` maximum, `tcp_rmem`
/// default), in events of at least `event_bytes`, and some to spare.
fn stalled_after_changes(event_bytes: usize) -> usize {
    let sysctl = |name: &str, field: usize, default: usize| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
            .ok()
            .and_then(|t| t.split_whitespace().nth(field)?.parse().ok())
            .unwrap_or(default)
    };
    let buffered = sysctl("tcp_wmem", 2, 4 << 20) + sysctl("tcp_rmem", 1, 128 << 10);
    buffered / event_bytes + 20
}

/// p99 of `samples`, nearest rank.
fn p99(samples: &mut [Duration]) -> Duration {
    samples.sort();
    let rank = (samples.len() * 99).div_ceil(100).max(1);
    samples[rank - 1]
}

#[async_std::test]
async fn with_1100_watch_attempts_and_300_stalled_watchers_of_a_flapping_namespace_the_api_answers_in_100ms(
) {
    const INSTANCES: usize = 1000;
    const STALLED: usize = 300;
    const ATTEMPTS: usize = 1100;
    const SAMPLES: usize = 150;
    // Some 50 changes a second of a 1,000-instance set: each one is pushed to
    // every stalled watcher until its socket buffers are full.
    const FLAP_EVERY: Duration = Duration::from_millis(20);
    // An event of the 1,000-instance set is some 60 KB.
    const EVENT_BYTES_AT_LEAST: usize = 50_000;
    // Discovery's defaults: max_connections 1024, max_watchers 512.
    let max_watchers = DiscoveryConfig::default().watchers();
    let _heavy = HEAVY.lock().await;
    raise_own_descriptor_limit();
    let port = health_server().await;
    // Checks once a minute (the first at registration), so the flapping is
    // the maintenance flips alone; stalled watchers are not cut for 2 minutes.
    let (d, addr) = discovery_process(
        "crowds",
        r#"{"listen": "127.0.0.1:0", "health_check_time_interval": "60s",
            "timeout_threshold": "2s", "idle_timeout": "120s"}"#,
    )
    .await;
    register_many(addr, "flap", INSTANCES, port).await;

    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(stalled_watcher(addr, &watch_request("flap")).await);
    }
    wait_until(
        "the stalled watchers are counted",
        Duration::from_secs(20),
        || async { metric(addr, "discovery_watchers").await == STALLED as f64 },
    )
    .await;

    // One more watcher reads every event, so each version is encoded.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = task::spawn(drain(open_reader(addr, "flap").await, stop.clone()));

    // The namespace flaps from now on: instances in and out of rotation, one
    // change at a time.
    let changes = Arc::new(AtomicUsize::new(0));
    let flapper = {
        let (stop, changes) = (stop.clone(), changes.clone());
        task::spawn(async move {
            let mut conn = Connection::connect(addr).await.unwrap();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                flip(&mut conn, "flap", i / 2 % INSTANCES, port, i % 2 == 0).await;
                changes.fetch_add(1, Ordering::Relaxed);
                i += 1;
                task::sleep(FLAP_EVERY).await;
            }
        })
    };

    // The whole crowd at once: past the cap each one is refused.
    let attempts: Vec<_> = (0..ATTEMPTS)
        .map(|_| task::spawn(async move { watch_attempt(addr, "zzz").await }))
        .collect();
    let mut held = Vec::new();
    let mut refused = 0;
    for attempt in attempts {
        let (status, conn, body) = attempt.await;
        if status == 200 {
            held.push(conn);
        } else {
            assert_refused(status, &body);
            refused += 1;
        }
    }
    assert_eq!(held.len(), max_watchers - STALLED - 1, "streams admitted");
    assert_eq!(refused, ATTEMPTS - held.len(), "attempts refused");

    // Until its socket buffers are full (the kernel's send buffer grows to
    // tcp_wmem's maximum), a watcher that does not read still takes every
    // event, and pushing ~60 KB to 300 sockets per change is TCP's cost, not
    // a stall: the measurement starts once the stalled watchers are stalled.
    let warm_up = stalled_after_changes(EVENT_BYTES_AT_LEAST);
    wait_until(
        "the stalled watchers' socket buffers are full",
        Duration::from_secs(60),
        || async { changes.load(Ordering::Relaxed) >= warm_up },
    )
    .await;

    let (mut register, mut lookup, mut health) = (Vec::new(), Vec::new(), Vec::new());
    let lookup_req = post_request("/api/lookup", r#"{"namespace": "flap"}"#);
    let health_req = get_request("/health_check");
    let started = changes.load(Ordering::Relaxed);
    let sampling = Instant::now();
    for i in 0..SAMPLES {
        let req = post_request("/api/register", &instance_body("probe", &host(1, i), port));
        let (status, body, took) = once(addr, &req).await;
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        register.push(took);
        let (status, body, took) = once(addr, &lookup_req).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        lookup.push(took);
        let (status, _, took) = once(addr, &health_req).await;
        assert_eq!(status, 200);
        health.push(took);
        // Spread over a couple of seconds of flapping, not one burst.
        task::sleep(Duration::from_millis(10)).await;
    }
    let taken = sampling.elapsed();
    let flapped = changes.load(Ordering::Relaxed) - started;
    assert_eq!(
        metric(addr, "discovery_watchers").await,
        max_watchers as f64,
        "the streams stayed open"
    );
    stop.store(true, Ordering::Relaxed);
    flapper.await;
    reader.await;
    let peak_kib = memory_kib(d.pid(), "VmHWM");
    let now_kib = memory_kib(d.pid(), "VmRSS");
    let p99s = [
        ("register", p99(&mut register)),
        ("lookup", p99(&mut lookup)),
        ("health_check", p99(&mut health)),
    ];
    eprintln!(
        "{SAMPLES} samples each over {taken:?}, {flapped} changes meanwhile; p99s {p99s:?}; \
         medians {:?} {:?} {:?}; discovery VmHWM {peak_kib} KiB, VmRSS {now_kib} KiB",
        register[SAMPLES / 2],
        lookup[SAMPLES / 2],
        health[SAMPLES / 2]
    );
    assert!(flapped >= 30, "the namespace flapped only {flapped} times");
    for (what, p) in p99s {
        assert!(p < Duration::from_millis(100), "p99 of {what}: {p:?}");
    }
    assert!(
        peak_kib < 100 * 1024,
        "discovery's peak RSS: {peak_kib} KiB"
    );
    drop((stalled, held));
}
