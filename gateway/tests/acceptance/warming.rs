//! Static stability against discovery's own faults: a discovery restarted
//! empty never shrinks the ring while it warms up, a removal applies once it
//! has, and a frozen replica (its socket open, nothing on it) is left within
//! about twice discovery's keep-alive for the next `discovery_url`.

use async_std::io::{ReadExt, WriteExt};
use async_std::net::{TcpListener, TcpStream};
use serde_json::json;
use shared::sse::Line;
use shared::wire::WatchMessage;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::raw::{RawInstance, Script};
use testkit::system::{apps, gateway_config, ring, status, wait_ring};

const LIMIT: Duration = Duration::from_secs(10);

/// Whether discovery at `base` says its sets are from its warm-up (read
/// from the first event of a fresh watch stream).
async fn warming(base: &str) -> bool {
    let mut watch = testkit::client::Watch::open(base, "service A").await;
    loop {
        if let Line::Event(e) = watch.next_line(LIMIT).await {
            let message: WatchMessage = serde_json::from_str(&e.data).unwrap();
            return message.warming;
        }
    }
}

/// Seconds of relearn grace left, from a `/status` watch object.
fn grace_left(watch: &serde_json::Value) -> f64 {
    watch["relearn_grace_remaining_seconds"]
        .as_f64()
        .unwrap_or(0.0)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[async_std::test]
async fn a_discovery_restarted_empty_adds_but_does_not_remove_until_warmed() {
    let d = testkit::discovery().await;
    let (addr, url) = (d.addr(), d.url());
    let running = apps(&url, 2).await;
    // Registered once, never again: a restarted discovery does not know it.
    let once = RawInstance::start(Script::Echo).await;
    testkit::client::register(&url, "service A", once.port()).await;
    let mut config = gateway_config(&url);
    config.relearn_grace = Duration::from_secs(1);
    let g = gateway::spawn(config).await.unwrap();
    let admin = g.admin_url();
    let mut members: Vec<String> = running.iter().map(|a| a.served_by().to_string()).collect();
    let with_once = [members.clone(), vec![once.key()]].concat();
    wait_ring(&admin, &with_once, LIMIT).await;

    d.shutdown().await;
    testkit::wait_until("the gateway sees the watch drop", LIMIT, || async {
        status(&admin).await["namespaces"][0]["watch"]["state"] != "connected"
    })
    .await;
    // Back on the same address, empty, warming long enough for the checks below.
    let warmup = Duration::from_secs(10);
    // Taken before the start: the warm-up cannot end sooner than `warmup` after this.
    let restarted = Instant::now();
    let d = discovery::spawn(shared::config::DiscoveryConfig {
        listen: addr.to_string(),
        warmup: Some(warmup),
        ..testkit::discovery_config()
    })
    .await
    .unwrap();
    assert!(
        warming(&url).await,
        "a restarted discovery says it is warming"
    );
    testkit::wait_until(
        "the watch reconnects into its relearn grace",
        LIMIT,
        || async {
            let w = &status(&admin).await["namespaces"][0]["watch"];
            w["reconnects"].as_u64() >= Some(1) && grace_left(w) > 0.0
        },
    )
    .await;
    testkit::wait_until("the relearn grace runs out", LIMIT, || async {
        grace_left(&status(&admin).await["namespaces"][0]["watch"]) == 0.0
    })
    .await;
    // Additions apply while warming: a newcomer joins the ring.
    let newcomer = app::spawn(testkit::system::app_config(&url)).await.unwrap();
    members.push(newcomer.served_by().to_string());
    testkit::wait_until("the newcomer joins the ring", LIMIT, || async {
        ring(&admin, "service A")
            .await
            .contains(&newcomer.served_by().to_string())
    })
    .await;
    let during = sorted(ring(&admin, "service A").await);
    // Read after the ring: if discovery still warms now, it warmed then.
    let still = warming(&url).await;
    assert!(
        still,
        "the warm-up ({warmup:?}) ended after {:?}, before the checks: too slow a machine",
        restarted.elapsed()
    );
    assert_eq!(
        during,
        sorted([members.clone(), vec![once.key()]].concat()),
        "while discovery warms, the grace's end removes nothing"
    );

    // Warmed: the set without the instance nobody re-registered applies.
    wait_ring(&admin, &members, warmup + LIMIT).await;
    assert!(
        restarted.elapsed() >= warmup,
        "removed after {:?}, before the warm-up ended",
        restarted.elapsed()
    );
    assert!(!warming(&url).await);
    g.shutdown().await;
    newcomer.shutdown().await;
    for a in running {
        a.shutdown().await;
    }
    d.shutdown().await;
}

/// A replica that answers one watch with one snapshot and then freezes: the
/// connection stays open and nothing more comes (SIGSTOP, a stalled host).
/// Later connections are accepted and never answered.
struct FrozenReplica {
    url: String,
    /// When the snapshot was written.
    sent: Arc<Mutex<Option<Instant>>>,
}

impl FrozenReplica {
    async fn start(instance: u16) -> FrozenReplica {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let sent = Arc::new(Mutex::new(None));
        let mark = sent.clone();
        async_std::task::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                if held.is_empty() {
                    answer_once(&mut stream, instance, &mark).await;
                }
                held.push(stream);
            }
        });
        FrozenReplica { url, sent }
    }

    fn sent(&self) -> Option<Instant> {
        *self.sent.lock().unwrap()
    }
}

/// Reads a request head and answers a watch stream with one snapshot,
/// noting when (just before writing: the gateway cannot have read it sooner).
async fn answer_once(stream: &mut TcpStream, instance: u16, sent: &Mutex<Option<Instant>>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let snapshot = json!({
        "namespace": "service A",
        "version": 1,
        "instances": [{"id": "x", "host": "127.0.0.1", "port": instance.to_string()}],
    });
    let event = format!("event: instances\nid: 1\ndata: {snapshot}\n\n");
    let chunk = format!("{:x}\r\n{event}\r\n", event.len());
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{chunk}"
    );
    *sent.lock().unwrap() = Some(Instant::now());
    let _ = stream.write_all(answer.as_bytes()).await;
}

#[async_std::test]
async fn a_frozen_replica_is_left_within_twice_the_keepalive() {
    let only_frozen = RawInstance::start(Script::Echo).await;
    let frozen = FrozenReplica::start(only_frozen.port()).await;
    let d = testkit::discovery().await;
    let running = apps(&d.url(), 2).await;
    let members: Vec<String> = running.iter().map(|a| a.served_by().to_string()).collect();
    let config = gateway_config(&format!("{},{}", frozen.url, d.url()));
    let idle = config.watch_idle_timeout;
    assert_eq!(
        idle,
        shared::config::GatewayConfig::default().watch_idle_timeout,
        "the default is what is tested"
    );
    let g = gateway::spawn(config).await.unwrap();
    let admin = g.admin_url();
    wait_ring(&admin, std::slice::from_ref(&only_frozen.key()), LIMIT).await;
    let sent = frozen.sent().unwrap();

    // Until the gateway follows the live replica, /status never calls the
    // silent stream connected once it has been silent past the idle timeout.
    let deadline = Instant::now() + LIMIT * 2;
    let moved = loop {
        let s = status(&admin).await;
        let ns = &s["namespaces"][0];
        let url = &ns["discovery"]["watch_url"];
        let connected = ns["watch"]["state"] == "connected";
        if connected && *url == d.url().as_str() {
            break sent.elapsed();
        }
        if connected && *url == frozen.url.as_str() {
            assert!(
                sent.elapsed() < idle + Duration::from_secs(2),
                "a stream silent for {:?} still shows connected: {ns}",
                sent.elapsed()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the watch never followed the live replica: {ns}"
        );
        async_std::task::sleep(Duration::from_millis(10)).await;
    };
    let keepalive = shared::config::DiscoveryConfig::default().watch_keepalive;
    eprintln!("left the frozen replica {moved:?} after its last byte (keep-alive {keepalive:?}, idle timeout {idle:?})");
    assert!(
        moved >= idle,
        "left after {moved:?}, before the idle timeout"
    );
    // About twice the keep-alive plus a margin, and a loaded machine's slack.
    assert!(
        moved < keepalive * 2 + Duration::from_secs(4),
        "left only after {moved:?}"
    );
    // The live replica's set, once the relearn grace has let the other go.
    wait_ring(&admin, &members, LIMIT).await;
    g.shutdown().await;
    for a in running {
        a.shutdown().await;
    }
    d.shutdown().await;
}
