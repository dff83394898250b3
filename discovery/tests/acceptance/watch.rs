//! Acceptance 4: the watch stream sends a snapshot at once and every change
//! within 100 ms with increasing versions; 100 watchers work; a watcher that
//! stops reading slows nobody down.

use async_std::io::WriteExt;
use async_std::net::TcpStream;
use serde_json::Value;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use testkit::client::{get, post, register, Watch};
use testkit::peer::Peer;

const PUSH: Duration = Duration::from_millis(100);

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn deregister(base: &str, ns: &str, port: u16) {
    let body = format!(r#"{{"namespace": "{ns}", "port": {port}}}"#);
    let (status, answer) = post(&format!("{base}/api/deregister"), &body).await;
    assert_eq!(status, 200, "{answer}");
}

#[async_std::test]
async fn snapshot_at_once_then_every_change_within_100ms_with_increasing_versions() {
    let d = testkit::discovery().await;
    let base = d.url();
    let mut watch = Watch::open(&base, "w").await;
    let first = watch.next(Duration::from_secs(1)).await;
    assert_eq!(
        (first.version, first.instances.len()),
        (0, 0),
        "snapshot of an empty namespace"
    );

    let peer = Peer::start().await;
    register(&base, "w", peer.port()).await;
    let up = watch.next(Duration::from_secs(2)).await;
    let arrived = unix_ms();
    assert_eq!(up.version, 1);
    assert_eq!(up.instances.len(), 1);
    assert_eq!(up.instances[0].port.0, peer.port());
    // The registry changed when the health check was recorded.
    let (_, services): (u16, Value) = get(&format!("{base}/api/services")).await;
    let checked = services["w"][0]["last_check_unix_ms"].as_u64().unwrap();
    assert!(
        arrived - checked <= PUSH.as_millis() as u64,
        "pushed {} ms after the check",
        arrived - checked
    );

    let other = Peer::start().await;
    register(&base, "w", other.port()).await;
    let two = watch.next(Duration::from_secs(2)).await;
    assert_eq!((two.version, two.instances.len()), (2, 2));

    let sent = Instant::now();
    deregister(&base, "w", peer.port()).await;
    let one = watch.next(PUSH + sent.elapsed()).await;
    assert!(
        sent.elapsed() <= PUSH + Duration::from_millis(50),
        "deregistration pushed after {:?}",
        sent.elapsed()
    );
    assert_eq!((one.version, one.instances.len()), (3, 1));
    assert_eq!(one.instances[0].port.0, other.port());

    // A re-registration that changes nothing sends nothing; keep-alives follow.
    register(&base, "w", other.port()).await;
    match watch.next_line(Duration::from_secs(3)).await {
        shared::sse::Line::Comment => {}
        line => panic!("expected a keep-alive comment, got {line:?}"),
    }
    d.shutdown().await;
}

#[async_std::test]
async fn a_hundred_watchers_each_get_every_change() {
    let d = testkit::discovery().await;
    let base = d.url();
    let peer = Peer::start().await;
    register(&base, "many", peer.port()).await;
    let mut watches = Vec::new();
    for _ in 0..100 {
        watches.push(Watch::open(&base, "many").await);
    }
    let mut initial = Vec::new();
    for w in &mut watches {
        initial.push(w.next(Duration::from_secs(5)).await.version);
    }
    // The snapshot may have come before or after the peer became available.
    let mut readers = Vec::new();
    for (mut w, v0) in watches.into_iter().zip(initial) {
        readers.push(async_std::task::spawn(async move {
            let mut v = w.next(Duration::from_secs(5)).await;
            while !v.instances.is_empty() || v.version <= v0 {
                v = w.next(Duration::from_secs(5)).await;
            }
            (Instant::now(), v.version)
        }));
    }
    // Let the availability change land first, so the next change is the deregistration.
    testkit::wait_until("the peer is available", Duration::from_secs(5), || async {
        testkit::client::status_of(&base, "many", peer.port())
            .await
            .as_deref()
            == Some("available")
    })
    .await;
    async_std::task::sleep(Duration::from_millis(100)).await;
    let sent = Instant::now();
    deregister(&base, "many", peer.port()).await;
    let mut versions = Vec::new();
    for r in readers {
        let (at, version) = r.await;
        let late = at.saturating_duration_since(sent);
        assert!(late <= PUSH * 2, "a watcher got the change after {late:?}");
        versions.push(version);
    }
    assert!(
        versions.iter().all(|v| *v == versions[0]),
        "all watchers saw the same version"
    );
    d.shutdown().await;
}

#[async_std::test]
async fn watchers_that_stop_reading_do_not_slow_registration_or_lookups() {
    let d = testkit::discovery().await;
    let base = d.url();
    let mut peers = Vec::new();
    for _ in 0..20 {
        let p = Peer::start().await;
        register(&base, "stall", p.port()).await;
        peers.push(p);
    }
    // Twenty connections that subscribe and never read a byte.
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(d.addr()).await.unwrap();
        s.write_all(b"GET /api/watch?namespace=stall HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    let mut live = Watch::open(&base, "stall").await;

    // Churn: every cycle removes and re-adds an instance, two changes pushed to everyone.
    let mut slowest = Duration::ZERO;
    for round in 0..60 {
        let p = &peers[round % peers.len()];
        let t = Instant::now();
        deregister(&base, "stall", p.port()).await;
        register(&base, "stall", p.port()).await;
        let (status, _) = post(&format!("{base}/api/lookup"), r#"{"namespace": "stall"}"#).await;
        assert!(status == 200 || status == 503);
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(250),
        "slowest register+lookup round: {slowest:?}"
    );

    // The reading watcher is still in step with the registry.
    testkit::wait_until(
        "all twenty are available again",
        Duration::from_secs(5),
        || async {
            let (_, s): (u16, Value) = get(&format!("{base}/api/services")).await;
            s["stall"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| i["status"] == "available")
        },
    )
    .await;
    let mut latest = live.next(Duration::from_secs(2)).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while latest.instances.len() != 20 && Instant::now() < deadline {
        latest = live.next(Duration::from_secs(2)).await;
    }
    assert_eq!(latest.instances.len(), 20);
    drop(stalled);
    d.shutdown().await;
}

#[async_std::test]
async fn a_weight_is_registered_pushed_and_changed_by_re_registering() {
    let d = testkit::discovery().await;
    let base = d.url();
    let peer = Peer::start().await;
    let register_with = |weight: &str| {
        format!(
            r#"{{"namespace": "wt", "port": {}, "weight": {weight}}}"#,
            peer.port()
        )
    };
    // Out of range or not a whole number: refused, nothing stored.
    for bad in ["0", "1001", "-1", "2.5", "\"3\""] {
        let (status, answer) = post(&format!("{base}/api/register"), &register_with(bad)).await;
        assert_eq!(status, 400, "weight {bad}: {answer}");
        assert!(answer["error"]["message"].is_string(), "{answer}");
    }
    let (_, services) = get(&format!("{base}/api/services")).await;
    assert!(services.get("wt").is_none(), "{services}");

    let (status, _) = post(&format!("{base}/api/register"), &register_with("3")).await;
    assert_eq!(status, 201);
    let mut watch = Watch::open(&base, "wt").await;
    let mut event = watch.next(Duration::from_secs(2)).await;
    while event.instances.is_empty() {
        event = watch.next(Duration::from_secs(2)).await;
    }
    assert_eq!(event.instances[0].weight, 3);
    let (_, services) = get(&format!("{base}/api/services")).await;
    assert_eq!(services["wt"][0]["weight"], 3);

    // The same instance registered again with another weight: a new set.
    let (status, _) = post(&format!("{base}/api/register"), &register_with("7")).await;
    assert_eq!(status, 200);
    let changed = watch.next(Duration::from_secs(2)).await;
    assert_eq!(changed.version, event.version + 1);
    assert_eq!(changed.instances[0].weight, 7);
    d.shutdown().await;
}
