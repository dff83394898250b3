#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A registration flood against discovery's default caps:
//! `cargo bench -p discovery --bench flood`.
//!
//! In this process: discovery with its default config (caps 1,000 per
//! namespace and 10,000 in all, 5 s interval, 500 ms timeout) plus a
//! `registration_token`; three healthy instances (raw HTTP/1.1 responders) in
//! `service A`; one client doing sequential `POST /api/lookup` on a
//! keep-alive connection the whole time; one watcher of `service A`. Then
//! 20,000 registrations with the token over 64 keep-alive connections, spread
//! over 40 namespaces of flood instances at `127.1.x.y:9` (nothing listens:
//! each check is refused at once). After the flood, one more health interval
//! of lookups so the flood instances' spread checks run too.
//!
//! Reports how many registrations got 201 and 429, lookup latency before,
//! during and after the flood, and whether `service A` ever lost an instance
//! (every change of its available set reaches the watcher). Writes
//! `bench/results-discovery-flood.md` and prints it.

use async_std::net::{TcpListener, TcpStream};
use async_std::task;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use hdrhistogram::Histogram;
use shared::config::DiscoveryConfig;
use shared::http1::client::{post, Connection};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "flood-bench-token";
const REGISTRATIONS: usize = 20_000;
const FLOOD_CONNECTIONS: usize = 64;
const FLOOD_NAMESPACES: usize = 40;
const HEALTHY: usize = 3;
const BASELINE: Duration = Duration::from_secs(3);

/// A responder answering every health check `200` and closing.
async fn healthy_instance() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    task::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            task::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    port
}

async fn register(conn: &mut Connection, req: &mut Vec<u8>, body: &str) -> u16 {
    post(
        req,
        "discovery",
        "/api/register",
        body.as_bytes(),
        &format!("authorization: Bearer {TOKEN}\r\n"),
    );
    conn.exchange(req).await.map(|r| r.status).unwrap_or(0)
}

/// Which phase a lookup ran in.
#[derive(Clone, Copy)]
enum Phase {
    Before = 0,
    During = 1,
    After = 2,
}

struct Lookups {
    hist: Mutex<[Histogram<u64>; 3]>,
    phase: AtomicUsize,
    failed: AtomicU64,
    stop: AtomicBool,
}

async fn lookup_loop(addr: SocketAddr, lookups: Arc<Lookups>) {
    let mut conn = Connection::connect(addr).await.unwrap();
    let mut req = Vec::new();
    post(
        &mut req,
        "discovery",
        "/api/lookup",
        br#"{"namespace": "service A"}"#,
        "",
    );
    while !lookups.stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let ok = matches!(conn.exchange(&req).await, Ok(r) if r.status == 200);
        let micros = started.elapsed().as_micros() as u64;
        if !ok {
            lookups.failed.fetch_add(1, Ordering::Relaxed);
            conn = Connection::connect(addr).await.unwrap();
        }
        let phase = lookups.phase.load(Ordering::Relaxed);
        lookups.hist.lock().unwrap()[phase]
            .record(micros.max(1))
            .unwrap();
        // One lookup per millisecond at most: a gateway asks on timeouts only.
        task::sleep(Duration::from_millis(1)).await;
    }
}

/// Watches `service A`, keeping the smallest available set seen once it had
/// all three, until an event arrives after `stop` (reading is not cancelled
/// midway, which would lose part of a line).
async fn watch_loop(
    base: String,
    stop: Arc<AtomicBool>,
    smallest: Arc<AtomicUsize>,
    events: Arc<AtomicU64>,
) {
    let mut watch = testkit::client::Watch::open(&base, "service A").await;
    let mut full = false;
    while !stop.load(Ordering::Relaxed) {
        let event = watch.next(Duration::from_secs(3600)).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        events.fetch_add(1, Ordering::Relaxed);
        let n = event.instances.len();
        if n == HEALTHY {
            full = true;
        }
        if full {
            smallest.fetch_min(n, Ordering::Relaxed);
        }
    }
}

async fn metric(base: &str, sample: &str) -> f64 {
    let (_, text) = testkit::client::get(&format!("{base}/metrics")).await;
    text.as_str()
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

async fn run() -> String {
    let config = DiscoveryConfig {
        listen: "127.0.0.1:0".into(),
        registration_token: Some(TOKEN.into()),
        ..DiscoveryConfig::default()
    };
    let interval = config.health_check_time_interval;
    let defaults = (
        config.max_instances_per_namespace,
        config.max_instances,
        config.max_concurrent_checks,
    );
    let d = discovery::spawn(config).await.unwrap();
    let addr = d.addr();
    let base = d.url();

    let mut conn = Connection::connect(addr).await.unwrap();
    let mut req = Vec::new();
    let mut healthy_ports = Vec::new();
    for _ in 0..HEALTHY {
        let port = healthy_instance().await;
        healthy_ports.push(port);
        let body = format!(r#"{{"namespace": "service A", "port": {port}, "host": "127.0.0.1"}}"#);
        assert_eq!(register(&mut conn, &mut req, &body).await, 201);
    }
    let stop_watch = Arc::new(AtomicBool::new(false));
    let smallest = Arc::new(AtomicUsize::new(usize::MAX));
    let events = Arc::new(AtomicU64::new(0));
    let watcher = task::spawn(watch_loop(
        base.clone(),
        stop_watch.clone(),
        smallest.clone(),
        events.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while smallest.load(Ordering::Relaxed) != HEALTHY {
        assert!(
            Instant::now() < deadline,
            "the healthy instances never became available"
        );
        task::sleep(Duration::from_millis(10)).await;
    }

    let lookups = Arc::new(Lookups {
        hist: Mutex::new([0, 1, 2].map(|_| Histogram::new_with_bounds(1, 60_000_000, 3).unwrap())),
        phase: AtomicUsize::new(Phase::Before as usize),
        failed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let looker = task::spawn(lookup_loop(addr, lookups.clone()));
    task::sleep(BASELINE).await;

    lookups
        .phase
        .store(Phase::During as usize, Ordering::Relaxed);
    let next = Arc::new(AtomicUsize::new(0));
    let counts: Arc<Mutex<std::collections::BTreeMap<u16, usize>>> = Arc::default();
    let flood_started = Instant::now();
    let flooders: Vec<_> = (0..FLOOD_CONNECTIONS)
        .map(|_| {
            let (next, counts) = (next.clone(), counts.clone());
            task::spawn(async move {
                let mut conn = Connection::from_stream(TcpStream::connect(addr).await.unwrap());
                let mut req = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= REGISTRATIONS {
                        return;
                    }
                    let body = format!(
                        r#"{{"namespace": "flood-{}", "port": 9, "host": "127.1.{}.{}"}}"#,
                        i % FLOOD_NAMESPACES,
                        i / 250,
                        i % 250 + 1
                    );
                    let status = register(&mut conn, &mut req, &body).await;
                    if status == 0 {
                        conn = Connection::from_stream(TcpStream::connect(addr).await.unwrap());
                    }
                    *counts.lock().unwrap().entry(status).or_default() += 1;
                }
            })
        })
        .collect();
    for f in flooders {
        f.await;
    }
    let flood_time = flood_started.elapsed();
    lookups
        .phase
        .store(Phase::After as usize, Ordering::Relaxed);
    task::sleep(interval + Duration::from_secs(1)).await;
    lookups.stop.store(true, Ordering::Relaxed);
    looker.await;
    // Deregistering one healthy instance ends the watcher with the event it causes.
    stop_watch.store(true, Ordering::Relaxed);
    let body = format!(
        r#"{{"namespace": "service A", "port": {}, "host": "127.0.0.1"}}"#,
        healthy_ports[0]
    );
    let mut conn = Connection::connect(addr).await.unwrap();
    post(
        &mut req,
        "discovery",
        "/api/deregister",
        body.as_bytes(),
        &format!("authorization: Bearer {TOKEN}\r\n"),
    );
    assert_eq!(conn.exchange(&req).await.unwrap().status, 200);
    watcher.await;

    let checks = |outcome: &'static str| {
        let base = base.clone();
        async move {
            metric(
                &base,
                &format!("discovery_health_checks_total{{outcome=\"{outcome}\"}}"),
            )
            .await
        }
    };
    let (ok, error, not_made, timeout) = (
        checks("ok").await,
        checks("error").await,
        checks("not_made").await,
        checks("timeout").await,
    );
    let unavailable = metric(
        &base,
        r#"discovery_instances{namespace="service A",status="unavailable"}"#,
    )
    .await;
    let panics = metric(&base, "discovery_panics_total").await;
    d.shutdown().await;

    let counts = counts.lock().unwrap().clone();
    let hist = lookups.hist.lock().unwrap();
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let mut out = String::new();
    let _ = writeln!(out, "# Discovery under a registration flood\n");
    let _ = writeln!(
        out,
        "`cargo bench -p discovery --bench flood` ({} cores). Discovery with its default config \
         (caps {} per namespace, {} in all; at most {} checks in flight; interval {}, timeout 500ms) \
         and a registration token, in the bench's process. {REGISTRATIONS} registrations with the \
         token over {FLOOD_CONNECTIONS} keep-alive connections into {FLOOD_NAMESPACES} namespaces \
         (instances at 127.1.x.y:9, where nothing listens), while {HEALTHY} healthy instances in \
         `service A` are checked, one client looks `service A` up about once a millisecond, and a \
         watcher sees every change of its available set.\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        defaults.0,
        defaults.1,
        defaults.2,
        shared::config::format_duration(interval),
    );
    let _ = writeln!(out, "| registrations | count |\n| --- | ---: |");
    for (status, n) in &counts {
        let _ = writeln!(out, "| answered {status} | {n} |");
    }
    let _ = writeln!(
        out,
        "| flood time | {:.2} s ({:.0} registrations/s) |\n",
        flood_time.as_secs_f64(),
        REGISTRATIONS as f64 / flood_time.as_secs_f64()
    );
    let _ = writeln!(out, "| lookup latency | lookups | p50 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: | ---: |");
    for (name, phase) in [
        ("before the flood", Phase::Before),
        ("during the flood", Phase::During),
        ("one interval after", Phase::After),
    ] {
        let h = &hist[phase as usize];
        let _ = writeln!(
            out,
            "| {name} | {} | {:.2} | {:.2} | {:.2} |",
            h.len(),
            ms(h, 0.5),
            ms(h, 0.99),
            h.max() as f64 / 1000.0
        );
    }
    let _ = writeln!(out);
    let smallest = smallest.load(Ordering::Relaxed);
    let _ = writeln!(out, "| the healthy instances | |\n| --- | --- |");
    let _ = writeln!(
        out,
        "| smallest available set of `service A` pushed to the watcher | {smallest} of {HEALTHY} ({}) |",
        if smallest == HEALTHY { "never marked unavailable" } else { "MARKED UNAVAILABLE" }
    );
    let _ = writeln!(
        out,
        "| watch events for `service A` | {} |",
        events.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "| unavailable in `service A` at the end | {unavailable} |"
    );
    let _ = writeln!(
        out,
        "| failed lookups | {} |",
        lookups.failed.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "| health checks: ok / error (refused port) / timeout / not made | {ok} / {error} / {timeout} / {not_made} |"
    );
    let _ = writeln!(out, "| panics caught | {panics} |");
    out
}

fn main() {
    let table = task::block_on(run());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("bench")
        .join("results-discovery-flood.md");
    std::fs::write(&path, &table).unwrap();
    println!("{table}");
    println!("written to {}", path.display());
}
