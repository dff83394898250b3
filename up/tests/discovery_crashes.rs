//! Static stability under `up`: discovery SIGKILLed every 2 s for 30 s
//! while `up` keeps restarting it (its backoff grows: it is down most of the
//! time, and each new one starts empty and warming), and four keep-alive
//! clients POST through the gateway the whole time. Every answer is a 200 and
//! the gateway's ring never shrinks: a warming discovery only adds, and the
//! relearn grace running out while discovery is away again removes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use shared::http1::client::{post, Connection};
use shared::runstate::RunState;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long discovery is killed over and over.
const WINDOW: Duration = Duration::from_secs(30);
/// How often it is killed (when one is running).
const EVERY: Duration = Duration::from_secs(2);
const CLIENTS: usize = 4;

/// What the clients saw: 200s, and every other answer or error by kind.
#[derive(Default, Debug)]
struct Tally {
    ok: u64,
    other: BTreeMap<String, u64>,
}

/// One keep-alive client: POSTs until `stop`, reconnecting when the gateway closes.
async fn client(addr: SocketAddr, n: usize, stop: Arc<AtomicBool>) -> Tally {
    let mut t = Tally::default();
    let mut conn: Option<Connection> = None;
    let mut req = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let body = format!(r#"{{"client": {n}, "n": {i}}}"#);
        if conn.is_none() {
            match Connection::connect(addr).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    *t.other.entry(format!("connect: {e}")).or_default() += 1;
                    continue;
                }
            }
        }
        post(&mut req, "gateway", "/api/crash", body.as_bytes(), "");
        let c = conn.as_mut().unwrap();
        match c.exchange(&req).await {
            Ok(r) if r.status == 200 && r.body == body.as_bytes() => {
                t.ok += 1;
                if !r.keep_alive {
                    conn = None;
                }
            }
            Ok(r) => {
                *t.other.entry(format!("status {}", r.status)).or_default() += 1;
                conn = None;
            }
            Err(e) => {
                *t.other.entry(format!("error: {e}")).or_default() += 1;
                conn = None;
            }
        }
    }
    t
}

/// The pid of the discovery `up` runs now, if it runs (checked by its command
/// line, so a reused pid is never signalled).
fn discovery_pid(state: &Path) -> Option<u32> {
    let pid = RunState::load(state).ok()?.processes.get("discovery")?.pid;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
    (String::from_utf8_lossy(&cmdline).contains("discovery") && !zombie).then_some(pid)
}

/// Members of the gateway's ring for "service A" now.
async fn ring_size(admin: &str) -> usize {
    let (_, status) = testkit::client::get(&format!("{admin}/status")).await;
    shared::wire::ring_members(&status, "service A").len()
}

#[async_std::test]
async fn discovery_killed_every_two_seconds_fails_no_request() {
    // Removed when the test ends, with the logs in it.
    let mut system = testkit::procs::up_system("up-crashes").await;
    let (state_path, state) = (system.state_path.clone(), system.state.clone());
    let up = &mut system.up;
    let addr: SocketAddr = state
        .gateway_url
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap();
    let admin = state.admin_url.clone();
    let full = ring_size(&admin).await;
    assert_eq!(full, 3, "up waits until the gateway routes to every app");

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| async_std::task::spawn(client(addr, n, stop.clone())))
        .collect();
    // The ring's smallest size, sampled all along.
    let watcher = {
        let (stop, admin) = (stop.clone(), admin.clone());
        async_std::task::spawn(async move {
            let mut smallest = usize::MAX;
            while !stop.load(Ordering::Relaxed) {
                smallest = smallest.min(ring_size(&admin).await);
                async_std::task::sleep(Duration::from_millis(50)).await;
            }
            smallest
        })
    };

    // The fault schedule (pacing, not ordering): every 2 s, kill the discovery that runs.
    let end = Instant::now() + WINDOW;
    let mut killed = Vec::new();
    while Instant::now() < end {
        if let Some(pid) = discovery_pid(&state_path) {
            if kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
                killed.push(pid);
            }
        }
        async_std::task::sleep(EVERY).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::default();
    for c in clients {
        let t = c.await;
        tally.ok += t.ok;
        for (k, v) in t.other {
            *tally.other.entry(k).or_default() += v;
        }
    }
    let smallest = watcher.await;
    let others: u64 = tally.other.values().sum();
    eprintln!(
        "{} requests over {WINDOW:?}: {} answered 200, {others} not ({:?}); discovery killed {} times; smallest ring {smallest}",
        tally.ok + others,
        tally.ok,
        tally.other,
        killed.len()
    );
    assert!(
        killed.len() >= 4,
        "discovery was killed only {} times: {killed:?}",
        killed.len()
    );
    assert!(tally.ok > 1000, "only {} requests answered", tally.ok);
    assert_eq!(others, 0, "answers other than 200: {:?}", tally.other);
    assert_eq!(smallest, full, "the ring shrank while discovery was down");

    up.terminate();
    let exit = up.exited(Duration::from_secs(30)).await;
    assert!(exit.success(), "{exit:?}\n{}", up.output());
}
