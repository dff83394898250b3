//! A graceful stop breaks no request. Two gateway processes share one
//! port (SO_REUSEPORT); one at a time is stopped with SIGTERM and started
//! again, 20 times, under keep-alive POST load.
//!
//! The clients behave as real ones may: they stay on a connection until an
//! answer says `Connection: close`, and reconnect without counting a failure
//! only when the connection was already closed *before* they wrote the next
//! request (seen with a non-blocking peek, as a connection pool checks a
//! connection before reuse). Any error after a request was written is a
//! failure: a POST cannot be sent again. So the gateway must never close a
//! connection on which a request may be on its way, which is what its drain
//! window is for, and must stop accepting before it tells clients to go, so
//! their new connections reach the peer.
//!
//! Half the clients pause between requests (up to 100 ms, as real ones think),
//! so a stop finds their connections idle after a keep-alive answer. On
//! loopback the peek sees a close in time; on a real network the close races
//! the client's next request. So the test also requires that no connection
//! was ever found closed before a request: the gateway always said
//! `Connection: close` first (without the drain window it closes such idle
//! connections under their clients).

use futures_lite::future::poll_once;
use shared::http1::client::{post, Connection};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::procs::Proc;

const CYCLES: usize = 20;
const CLIENTS: usize = 6;

/// What every client adds to.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    /// Answers with `Connection: close` (the gateway was stopping).
    told_to_close: AtomicUsize,
    /// Connections found closed before a request was written on them.
    closed_before_send: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, why: String) {
        self.failures.lock().unwrap().push(why);
    }
}

/// A keep-alive connection and a second handle on its socket, to peek at.
struct Conn {
    conn: Connection,
    peek: async_std::net::TcpStream,
}

impl Conn {
    async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = async_std::net::TcpStream::connect(addr).await?;
        Ok(Conn {
            peek: stream.clone(),
            conn: Connection::from_stream(stream),
        })
    }

    /// Whether the server closed it (or sent something unasked) while it idled.
    async fn closed(&self) -> bool {
        let mut byte = [0u8; 1];
        poll_once(self.peek.peek(&mut byte)).await.is_some()
    }
}

async fn client(addr: SocketAddr, id: usize, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut conn: Option<Conn> = None;
    let mut req = Vec::new();
    let mut n = 0;
    let thinks = id % 2 == 1;
    while !stop.load(Ordering::Relaxed) {
        if thinks {
            async_std::task::sleep(Duration::from_millis(fastrand::u64(0..100))).await;
        }
        if let Some(c) = &conn {
            if c.closed().await {
                tally.closed_before_send.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(addr).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    tally.fail(format!("connect: {e}"));
                    continue;
                }
            },
        };
        n += 1;
        let sent = format!(r#"{{"client": {id}, "n": {n}}}"#);
        post(&mut req, "gw", "/pay", sent.as_bytes(), "");
        match c.conn.exchange(&req).await {
            Ok(r) if r.status == 200 && r.body == sent.as_bytes() => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                if !r.keep_alive {
                    tally.told_to_close.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                }
            }
            Ok(r) => {
                tally.fail(format!("{} {}", r.status, String::from_utf8_lossy(&r.body)));
                conn = None;
            }
            Err(e) => {
                tally.fail(format!("request {n} of client {id}: {e}"));
                conn = None;
            }
        }
    }
}

/// Starts a gateway process on `listen`; waits until it listens (it is ready).
async fn gateway(config: &std::path::Path) -> (Proc, SocketAddr) {
    let proc = Proc::start("gateway", &["--config", config.to_str().unwrap()]);
    let addr = proc.listening("gateway").await;
    (proc, addr)
}

/// A config file, removed when the returned handle drops (a failing test too).
fn write_config(discovery: &str, listen: &str) -> testkit::tempdir::TempFile {
    static N: AtomicUsize = AtomicUsize::new(0);
    let config = serde_json::json!({
        "listen": listen,
        "admin_listen": "127.0.0.1:0",
        "discovery_url": discovery,
        "drain_timeout": "3s",
        "ready_timeout": "10s",
        "worker_threads": 2,
    });
    let n = N.fetch_add(1, Ordering::Relaxed);
    let path =
        testkit::tempdir::TempFile::new(format!("gw-graceful-{}-{n}.json", std::process::id()));
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

/// Acceptance 4.
#[async_std::test]
async fn twenty_sigterm_restarts_under_keep_alive_posts_fail_no_request() {
    let d = discovery::spawn(shared::config::DiscoveryConfig {
        // A check slowed by the load must not empty the ring.
        timeout_threshold: Duration::from_secs(1),
        unhealthy_threshold: 3,
        ..testkit::discovery_config()
    })
    .await
    .unwrap();
    let apps = testkit::system::apps(&d.url(), 2).await;
    let first = write_config(&d.url(), "127.0.0.1:0");
    let (a, addr) = gateway(&first).await;
    let shared_config = write_config(&d.url(), &addr.to_string());
    let (b, b_addr) = gateway(&shared_config).await;
    assert_eq!(b_addr, addr, "both on one port");
    let mut gateways = [a, b];

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|id| async_std::task::spawn(client(addr, id, tally.clone(), stop.clone())))
        .collect();
    let started = Instant::now();
    let mut slowest_cycle = Duration::ZERO;
    for cycle in 0..CYCLES {
        // Load on the gateways first: the one stopped next holds every
        // client, who moved to it when the other stopped.
        let answered = tally.ok.load(Ordering::Relaxed);
        testkit::wait_until("the clients are answered", Duration::from_secs(10), || {
            let tally = tally.clone();
            async move { tally.ok.load(Ordering::Relaxed) >= answered + 20 }
        })
        .await;
        let began = Instant::now();
        let victim = &mut gateways[cycle % 2];
        victim.terminate();
        let exit = victim.exited(Duration::from_secs(10)).await;
        assert!(
            exit.success(),
            "cycle {cycle}: {exit:?}\n{}",
            victim.output()
        );
        let (fresh, at) = gateway(&shared_config).await;
        assert_eq!(at, addr);
        *victim = fresh;
        slowest_cycle = slowest_cycle.max(began.elapsed());
    }
    let answered = tally.ok.load(Ordering::Relaxed);
    testkit::wait_until("the clients are answered", Duration::from_secs(10), || {
        let tally = tally.clone();
        async move { tally.ok.load(Ordering::Relaxed) >= answered + 20 }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await;
    }
    let failures = tally.failures.lock().unwrap().clone();
    eprintln!(
        "{CYCLES} cycles in {:?} (slowest {slowest_cycle:?}): {} answered, {} told to close, \
         {} connections found closed before a request was written, {} failed",
        started.elapsed(),
        tally.ok.load(Ordering::Relaxed),
        tally.told_to_close.load(Ordering::Relaxed),
        tally.closed_before_send.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(8)]
    );
    assert!(
        tally.told_to_close.load(Ordering::Relaxed) >= CYCLES,
        "every stop told its clients to go"
    );
    assert_eq!(
        tally.closed_before_send.load(Ordering::Relaxed),
        0,
        "a connection was closed under its client without Connection: close"
    );
    drop(gateways);
    for a in apps {
        a.shutdown().await;
    }
    d.shutdown().await;
}
