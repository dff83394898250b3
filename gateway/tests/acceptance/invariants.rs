//! Randomized: clients send POSTs (each with a unique body and its own
//! `x-request-id`) through a gateway (a child process, so its memory can be
//! measured) to real apps beside scripted instances that misbehave in a way
//! each request chooses at random. After every request the promises "answers
//! reach only their client; a payment is executed at most once" are checked:
//!
//! (a) a client's answer is its own: a 200 carries exactly its body, anything
//!     else is the gateway's JSON error for its request id. On the
//!     `verify_request_id` route strictly; elsewhere only a stray answer may
//!     take a request's place, each stray at most once, and after a stray its
//!     connection carries at most the one request it raced.
//! (b) a request id reaches at most one instance, unless
//!     `retry_non_idempotent` is on (the one-worker run; the four-worker run
//!     has it off) and its first try got no byte of an answer: it timed out
//!     (then it took at least `upstream_timeout`), or the instance closed
//!     without answering.
//! (c) the gateway's resident memory stays under a fixed bound.
//!
//! The seed is printed; `INVARIANTS_SEED=<n>` replays a run's choices.

use crate::attack::{gateway_error, routes, unique_body, Caller, PLAIN, STRICT};
use shared::config::GatewayConfig;
use shared::http1::client::Response;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::procs::Proc;
use testkit::raw::{RawInstance, Script};
use testkit::system::{apps, gateway_config, wait_ring};

/// Per try: short, so hangs cost little; long enough that two loaded cores
/// do not time out an instance that answers at once (which would allow a
/// second try and hide a real double execution behind the exemption of (b)).
const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(400);
const REQUESTS_PER_RUN: usize = 5_000;
const CLIENTS: usize = 8;
/// Growth of the gateway's RSS allowed after warm-up. What it holds per
/// request is bounded (a 64 KiB answer head at most, a few KiB of body, a
/// pooled connection's buffers); a leak of one buffer per request, or of the
/// connections the misbehaving instances make it close, is 4000 requests x
/// several KiB = tens of MiB, past this. Allocator arenas (one per worker
/// thread) are populated during warm-up.
const RSS_GROWTH_BOUND_KIB: u64 = 24 * 1024;
/// Absolute bound: a debug build of the gateway idles at about 10-20 MiB.
const RSS_BOUND_KIB: u64 = 128 * 1024;

/// Behaviours and their weights (per mille) for requests that reach a
/// scripted instance; slow ones (hang, drip) are rare.
const MIX: &[(&str, u32)] = &[
    ("echo", 380),
    ("chunked-echo:5", 40),
    ("trailers", 30),
    ("interim", 50),
    ("high-byte", 20),
    ("echo-then-close", 30),
    ("stray-after", 60),
    ("stray-after-chunked", 30),
    ("stray-same-write", 30),
    ("wrong-request-id", 40),
    ("no-request-id", 30),
    ("duplicate-length", 20),
    ("length-and-chunked", 20),
    ("plus-length", 20),
    ("switching-protocols", 20),
    ("http09", 20),
    ("huge-head", 10),
    ("half", 30),
    ("half-reset", 30),
    ("close", 30),
    ("hang", 3),
    ("drip:1", 7),
];

fn pick(rng: &mut fastrand::Rng) -> String {
    let total: u32 = MIX.iter().map(|(_, w)| w).sum();
    let mut roll = rng.u32(0..total);
    for (name, weight) in MIX {
        if roll < *weight {
            // Strays land 5-60 ms later: idle, or racing the next request.
            return match *name {
                "stray-after" | "stray-after-chunked" => format!("{name}:{}", rng.u32(5..60)),
                _ => name.to_string(),
            };
        }
        roll -= weight;
    }
    unreachable!("weights sum to total")
}

fn seed() -> u64 {
    let seed = std::env::var("INVARIANTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("invariants: seed {seed} (INVARIANTS_SEED={seed} replays it)");
    seed
}

#[async_std::test]
async fn answers_reach_only_their_client_with_one_worker() {
    run(seed(), 1, true).await;
}

#[async_std::test]
async fn answers_reach_only_their_client_with_four_workers() {
    run(seed().wrapping_add(1), 4, false).await;
}

/// What one request ended as, kept for the checks at the end of a run.
struct Sent {
    id: String,
    took: Duration,
    /// The status the client got, and the route.
    status: u16,
    path: &'static str,
    /// Whether a real app served its 200.
    by_app: bool,
}

/// What all clients saw, shared between them.
#[derive(Default)]
struct Seen {
    sent: Vec<Sent>,
    /// Bodies of stray answers clients received in place of their own.
    touched: Vec<Vec<u8>>,
    statuses: HashMap<u16, usize>,
}

/// The system under test: a gateway child process and what it routes to.
struct Bench {
    /// `retry_non_idempotent`: a POST that got no byte of an answer may go again.
    retry_posts: bool,
    discovery: discovery::Handle,
    raws: Vec<RawInstance>,
    apps: Vec<app::Handle>,
    gateway: Proc,
    addr: std::net::SocketAddr,
    /// Removed on drop, even when a check fails first.
    _config_file: testkit::tempdir::TempFile,
}

fn config(discovery_url: &str, workers: usize, retry_posts: bool) -> GatewayConfig {
    GatewayConfig {
        routes: routes(),
        worker_threads: workers,
        upstream_timeout: UPSTREAM_TIMEOUT,
        connect_timeout: Duration::from_millis(300),
        request_deadline: Duration::from_secs(3),
        lookup_timeout: Duration::from_millis(200),
        // Short, so cooled or unpooled instances are soon back in play.
        connect_cooldown: Duration::from_millis(200),
        passive_health_failures: 3,
        retry_non_idempotent: retry_posts,
        reuse_port: false,
        ..gateway_config(discovery_url)
    }
}

impl Bench {
    async fn start(workers: usize, retry_posts: bool) -> Bench {
        let discovery = testkit::discovery().await;
        let mut raws = Vec::new();
        for _ in 0..2 {
            let raw = RawInstance::start(Script::Echo).await;
            testkit::client::register(&discovery.url(), "service A", raw.port()).await;
            raws.push(raw);
        }
        let apps = apps(&discovery.url(), 2).await;
        let config_file = testkit::tempdir::TempFile::new(format!(
            "gateway-invariants-{}-{workers}.json",
            std::process::id()
        ));
        let json = serde_json::to_string(&config(&discovery.url(), workers, retry_posts)).unwrap();
        std::fs::write(&config_file, json).unwrap();
        let gateway = Proc::start("gateway", &["--config", config_file.to_str().unwrap()]);
        let addr = gateway.listening("gateway").await;
        let admin = gateway.listening("gateway admin").await;
        let mut members: Vec<String> = raws.iter().map(RawInstance::key).collect();
        members.extend(apps.iter().map(|a| a.served_by().to_string()));
        wait_ring(
            &format!("http://{admin}"),
            &members,
            Duration::from_secs(10),
        )
        .await;
        Bench {
            retry_posts,
            discovery,
            raws,
            apps,
            gateway,
            addr,
            _config_file: config_file,
        }
    }

    fn is_app(&self, res: &Response) -> bool {
        res.header("x-served-by")
            .is_some_and(|by| self.apps.iter().any(|a| a.served_by() == by))
    }

    async fn stop(self) {
        let mut gateway = self.gateway;
        gateway.kill();
        for a in self.apps {
            a.shutdown().await;
        }
        self.discovery.shutdown().await;
    }
}

/// The gateway's resident set in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Samples the gateway's RSS every 50 ms: the baseline once `warm` is set,
/// and the largest value after it.
fn watch_memory(
    pid: u32,
    warm: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
) -> async_std::task::JoinHandle<(u64, u64)> {
    async_std::task::spawn(async move {
        let (mut baseline, mut peak) = (0, 0);
        while !done.load(Ordering::Relaxed) {
            let rss = rss_kib(pid);
            if warm.load(Ordering::Relaxed) {
                if baseline == 0 {
                    baseline = rss;
                }
                peak = peak.max(rss);
            }
            async_std::task::sleep(Duration::from_millis(50)).await;
        }
        (baseline, peak.max(rss_kib(pid)))
    })
}

async fn run(seed: u64, workers: usize, retry_posts: bool) {
    let started = Instant::now();
    let bench = Arc::new(Bench::start(workers, retry_posts).await);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let done_count = Arc::new(AtomicU64::new(0));
    let (warm, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let memory = watch_memory(bench.gateway.pid(), warm.clone(), done.clone());
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (bench, seen) = (bench.clone(), seen.clone());
        let (count, warm) = (done_count.clone(), warm.clone());
        let rng = fastrand::Rng::with_seed(seed ^ ((c as u64 + 1) << 32) ^ workers as u64);
        clients.push(async_std::task::spawn(async move {
            client(c, workers, rng, &bench, &seen, &count, &warm).await
        }));
    }
    for c in clients {
        c.await;
    }
    done.store(true, Ordering::Relaxed);
    let (baseline, peak) = memory.await;
    let bench = Arc::try_unwrap(bench).ok().unwrap();
    let seen = Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap();
    println!(
        "invariants: {workers} worker(s), {} requests in {:?}, statuses {:?}, {} strays sent, {} took a request's place, RSS {baseline} -> {peak} KiB",
        seen.sent.len(),
        started.elapsed(),
        seen.statuses,
        bench.raws.iter().map(|r| r.strays().len()).sum::<usize>(),
        seen.touched.len(),
    );
    strays_touch_at_most_one_request(&bench, &seen);
    each_request_reached_at_most_one_instance(&bench, &seen);
    assert!(
        peak <= RSS_BOUND_KIB,
        "(c) gateway RSS {peak} KiB > {RSS_BOUND_KIB} KiB"
    );
    assert!(
        peak <= baseline + RSS_GROWTH_BOUND_KIB,
        "(c) gateway RSS grew from {baseline} to {peak} KiB after warm-up"
    );
    bench.stop().await;
}

/// One client: sends its share of requests, checking each answer (a).
async fn client(
    c: usize,
    workers: usize,
    mut rng: fastrand::Rng,
    bench: &Bench,
    seen: &Mutex<Seen>,
    count: &AtomicU64,
    warm: &AtomicBool,
) {
    let mut caller = Caller::new(bench.addr);
    for n in 0..REQUESTS_PER_RUN / CLIENTS {
        let id = format!("w{workers}-c{c}-n{n}");
        let body = unique_body(&id, rng.usize(0..40));
        let strict = rng.bool();
        let script = pick(&mut rng);
        if rng.u8(0..4) == 0 {
            caller.disconnect(); // a new client connection now and then
        }
        let path = if strict { STRICT } else { PLAIN };
        let sent_at = Instant::now();
        let res = caller.send(path, &id, &script, &body).await;
        let took = sent_at.elapsed();
        let res = res.unwrap_or_else(|e| {
            panic!("(a) {id} ({script} on {path}): no answer from the gateway: {e}")
        });
        let stray = check_own(&res, &id, &body, strict, &script);
        let by_app = res.status == 200 && bench.is_app(&res);
        let mut seen = seen.lock().unwrap();
        seen.touched.extend(stray);
        *seen.statuses.entry(res.status).or_default() += 1;
        let status = res.status;
        seen.sent.push(Sent {
            id,
            took,
            status,
            path,
            by_app,
        });
        if count.fetch_add(1, Ordering::Relaxed) as usize == REQUESTS_PER_RUN / 5 {
            warm.store(true, Ordering::Relaxed);
        }
    }
}

/// (a) for one answer. Answers the body of a stray that took the request's
/// place (allowed off the verifying route, attributed at the end of the run).
fn check_own(res: &Response, id: &str, body: &[u8], strict: bool, script: &str) -> Option<Vec<u8>> {
    let what = format!("{id} ({script} on {})", if strict { STRICT } else { PLAIN });
    let text = String::from_utf8_lossy(&res.body);
    if res.status != 200 {
        let err = gateway_error(res, id);
        assert!(
            err.is_some(),
            "(a) {what}: {} that is not the gateway's error for it: {text}",
            res.status
        );
        assert!(
            matches!(res.status, 502..=504),
            "(a) {what}: {}: {text}",
            res.status
        );
        return None;
    }
    if res.body == body {
        return None;
    }
    assert!(
        !strict,
        "(a) {what}: a 200 with another body on the verifying route: {text}"
    );
    let stray: serde_json::Value = serde_json::from_slice(&res.body).unwrap_or_default();
    assert!(
        stray["stray"] == serde_json::Value::Bool(true),
        "(a) {what}: got another request's answer: {text}"
    );
    Some(res.body.clone())
}

/// (a), across the run: every stray a client received was sent by an
/// instance, reached one client only, and after each stray its connection
/// carried at most one more request (the one it raced): the gateway neither
/// pools nor reuses a connection stray bytes came on.
fn strays_touch_at_most_one_request(bench: &Bench, seen: &Seen) {
    let sent: HashSet<Vec<u8>> = bench
        .raws
        .iter()
        .flat_map(|r| r.strays().into_iter().map(|s| s.body))
        .collect();
    let mut once = HashSet::new();
    for body in &seen.touched {
        let text = String::from_utf8_lossy(body);
        assert!(
            sent.contains(body),
            "(a) a client got a stray no instance sent: {text}"
        );
        assert!(
            once.insert(body),
            "(a) one stray reached two clients: {text}"
        );
    }
    let outcome: HashMap<&str, (u16, &str)> = seen
        .sent
        .iter()
        .map(|s| (s.id.as_str(), (s.status, s.path)))
        .collect();
    for raw in &bench.raws {
        let received = raw.received();
        for stray in raw.strays() {
            // Each request after it: id, script, and what its client got on which route.
            let after: Vec<String> = received
                .iter()
                .filter(|r| r.conn == stray.conn && r.at > stray.at)
                .map(|r| {
                    let id = r.request_id().unwrap_or_default();
                    let got = outcome.get(id.as_str());
                    format!(
                        "{id} ({}, {} after the stray): {got:?}",
                        r.script,
                        fmt_gap(r.at, stray.at)
                    )
                })
                .collect();
            assert!(
                after.len() <= 1,
                "(a) {}: after a stray (following {:?}) its connection carried {after:?}",
                raw.key(),
                stray.after
            );
        }
    }
}

/// Behaviours under which an instance takes a request and gives no byte of an answer.
const NO_ANSWER: [&str; 2] = ["close", "hang"];

/// (b): counts each id at the scripted instances and at the app that served it.
fn each_request_reached_at_most_one_instance(bench: &Bench, seen: &Seen) {
    let mut reached: HashMap<String, Vec<String>> = HashMap::new();
    // Scripted tries that gave no byte of an answer.
    let mut unanswered: HashSet<String> = HashSet::new();
    for raw in &bench.raws {
        for r in raw.received() {
            if let Some(id) = r.request_id() {
                if NO_ANSWER.contains(&r.script.as_str()) {
                    unanswered.insert(id.clone());
                }
                reached
                    .entry(id)
                    .or_default()
                    .push(format!("{} ({})", raw.key(), r.script));
            }
        }
    }
    for s in &seen.sent {
        let mut at = reached.remove(&s.id).unwrap_or_default();
        if s.by_app {
            at.push("an app".into());
        }
        // A second try follows only a try that got no byte of an answer
        // (no connection is refused here), and only with retry_non_idempotent.
        let no_answer = s.took >= UPSTREAM_TIMEOUT || unanswered.contains(&s.id);
        assert!(
            at.len() <= 1 || (bench.retry_posts && no_answer),
            "(b) {} reached {at:?} within {:?} (retry_non_idempotent {})",
            s.id,
            s.took,
            bench.retry_posts
        );
    }
}

fn fmt_gap(later: Instant, earlier: Instant) -> String {
    format!("{:?}", later.saturating_duration_since(earlier))
}
