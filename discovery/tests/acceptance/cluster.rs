//! Past one machine: discovery replicas sharing one registry in
//! real etcd members on loopback (started and stopped by `testkit::etcd`).
//! Without an `etcd` binary each test says SKIPPED and returns; CI installs it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use testkit::client::{get, post, register, view, Watch};
use testkit::etcd::Cluster;
use testkit::peer::Peer;
use testkit::procs::Proc;

/// A replica in-process on `store`, with the tests' fast checks.
async fn replica(store: String, id: &str) -> discovery::Handle {
    discovery::spawn(shared::config::DiscoveryConfig {
        store,
        replica_id: Some(id.into()),
        ..testkit::discovery_config()
    })
    .await
    .expect("replica starts")
}

async fn status_of(base: &str, ns: &str, port: u16) -> Option<String> {
    view(base)
        .await
        .get(ns)?
        .get(&port.to_string())
        .map(|(_, s)| s.clone())
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn metrics(base: &str) -> String {
    let (status, text) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    text.as_str().unwrap_or_default().to_string()
}

/// Acceptance 1: register through replica 1, look up and watch through
/// replica 2: same instances, same ids; a status change seen by both within 1 s.
#[async_std::test]
async fn replicas_share_instances_ids_and_status_flips() {
    let Some(etcd) = Cluster::start(1).await else {
        return;
    };
    let r1 = replica(etcd.store_url("t1"), "r1").await;
    let r2 = replica(etcd.store_url("t1"), "r2").await;
    let (b1, b2) = (r1.url(), r2.url());
    let peer = Peer::start().await;
    let answer = register(&b1, "svc", peer.port()).await;
    let id = answer["id"].as_str().unwrap().to_string();

    let mut w1 = Watch::open(&b1, "svc").await;
    let mut w2 = Watch::open(&b2, "svc").await;
    for w in [&mut w1, &mut w2] {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let e = w.next(deadline - Instant::now()).await;
            if e.instances.len() == 1 {
                assert_eq!(e.instances[0].id, id, "the same id through both replicas");
                break;
            }
        }
    }
    let (status, found) = post(&format!("{b2}/api/lookup"), r#"{"namespace": "svc"}"#).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["id"], id.as_str());
    assert_eq!(view(&b1).await, view(&b2).await);
    let again = register(&b2, "svc", peer.port()).await;
    assert_eq!(
        again["id"],
        id.as_str(),
        "renewed through the other replica: same id"
    );

    peer.set_status(500);
    let flipped = Instant::now();
    for (name, w) in [("replica 1", &mut w1), ("replica 2", &mut w2)] {
        loop {
            let left = Duration::from_secs(1).saturating_sub(flipped.elapsed());
            assert!(!left.is_zero(), "{name} did not see the flip within 1 s");
            if w.next(left).await.instances.is_empty() {
                break;
            }
        }
    }
    assert!(flipped.elapsed() <= Duration::from_secs(1));
    assert_eq!(
        status_of(&b2, "svc", peer.port()).await.as_deref(),
        Some("unavailable")
    );
    drop((w1, w2));
    r1.shutdown().await;
    r2.shutdown().await;
}

/// Acceptance 5: a replica cut off from etcd while a compaction happens
/// keeps serving its last mirror, then relearns the registry correctly.
#[async_std::test]
async fn a_replica_cut_off_during_a_compaction_relearns_the_registry() {
    let Some(mut etcd) = Cluster::start(3).await else {
        return;
    };
    let only_m0 = format!("etcd://{}/t5", etcd.members[0].endpoint());
    let cut = replica(only_m0, "cut").await;
    let live = replica(etcd.store_url("t5"), "live").await;
    let (bc, bl) = (cut.url(), live.url());
    let (p1, p2, p3) = (
        Peer::start().await,
        Peer::start().await,
        Peer::start().await,
    );
    register(&bl, "svc", p1.port()).await;
    register(&bl, "svc", p2.port()).await;
    testkit::wait_until(
        "the cut replica sees both available",
        Duration::from_secs(5),
        || {
            let bc = bc.clone();
            let (a, b) = (p1.port(), p2.port());
            async move {
                status_of(&bc, "svc", a).await.as_deref() == Some("available")
                    && status_of(&bc, "svc", b).await.as_deref() == Some("available")
            }
        },
    )
    .await;

    etcd.kill(0);
    // Static stability: the cut replica goes on answering from its mirror, and says so.
    testkit::wait_until(
        "the cut replica reports etcd unreachable",
        Duration::from_secs(5),
        || {
            let bc = bc.clone();
            async move { metric(&metrics(&bc).await, "discovery_store_connected") == Some(0.0) }
        },
    )
    .await;
    let (status, found) = post(&format!("{bc}/api/lookup"), r#"{"namespace": "svc"}"#).await;
    assert_eq!(status, 200, "lookups go on from the last mirror: {found}");
    // The console reads this to say it is serving the last mirror.
    let (status, store) = get(&format!("{bc}/api/store")).await;
    assert_eq!(status, 200);
    assert_eq!(store["backend"], "etcd", "{store}");
    assert_eq!(store["reachable"], false, "{store}");
    // Readiness says so too, while liveness stays up; the live replica is ready.
    let (status, ready) = get(&format!("{bc}/ready")).await;
    assert_eq!(
        (status, &ready["status"]),
        (503, &"stale".into()),
        "{ready}"
    );
    assert_eq!(get(&format!("{bc}/health_check")).await.0, 200);
    // The live replica may have watched through the killed member too: it
    // moves to another and is ready again.
    testkit::wait_until("the live replica is ready", Duration::from_secs(8), || {
        let bl = bl.clone();
        async move { get(&format!("{bl}/ready")).await.0 == 200 }
    })
    .await;

    // The registry changes while it is away, and the history is compacted.
    let (status, body) = post(
        &format!("{bl}/api/deregister"),
        &format!(r#"{{"namespace": "svc", "port": "{}"}}"#, p1.port()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id3 = register(&bl, "svc", p3.port()).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    p2.set_status(500);
    testkit::wait_until(
        "the live replica sees p2 down",
        Duration::from_secs(8),
        || {
            let bl = bl.clone();
            let port = p2.port();
            async move { status_of(&bl, "svc", port).await.as_deref() == Some("unavailable") }
        },
    )
    .await;
    let client =
        discovery::etcd::client::Client::new(&etcd.endpoints()[1..], Duration::from_secs(2))
            .unwrap();
    let now = client
        .range(&discovery::etcd::client::RangeRequest {
            key: b"/t5/".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .header
        .revision;
    client.compact(now).await.unwrap();

    etcd.restart(0);
    testkit::wait_until(
        "the cut replica relearns the registry",
        Duration::from_secs(15),
        || {
            let (bc, bl) = (bc.clone(), bl.clone());
            async move { view(&bc).await == view(&bl).await }
        },
    )
    .await;
    let seen = view(&bc).await;
    let svc = &seen["svc"];
    assert!(
        !svc.contains_key(&p1.port().to_string()),
        "p1 is gone: {seen:?}"
    );
    assert_eq!(
        svc[&p3.port().to_string()].0,
        id3,
        "p3 with its id: {seen:?}"
    );
    assert_eq!(svc[&p2.port().to_string()].1, "unavailable", "{seen:?}");
    testkit::wait_until(
        "the cut replica reports etcd reachable and is ready again",
        Duration::from_secs(5),
        || {
            let bc = bc.clone();
            async move {
                metric(&metrics(&bc).await, "discovery_store_connected") == Some(1.0)
                    && get(&format!("{bc}/ready")).await.0 == 200
            }
        },
    )
    .await;
    cut.shutdown().await;
    live.shutdown().await;
}

/// A discovery replica as a child process, on `store`.
async fn replica_process(store: &str, id: &str, dir: &std::path::Path) -> (Proc, String) {
    let config = serde_json::json!({
        "listen": "127.0.0.1:0",
        "store": store,
        "replica_id": id,
        "health_check_time_interval": "200ms",
        "timeout_threshold": "100ms",
        "watch_keepalive": "1s",
        "drain_timeout": "1s",
    });
    let file = dir.join(format!("{id}.json"));
    std::fs::write(&file, config.to_string()).unwrap();
    let proc = Proc::start("discovery", &["--config", file.to_str().unwrap()]);
    let addr = proc.listening("discovery").await;
    (proc, format!("http://{addr}"))
}

/// Acceptance 3: SIGKILL one replica under load: lookups on the other never
/// fail, and the dead replica's health checks move to the other within one
/// lease TTL.
#[async_std::test]
async fn a_killed_replicas_checks_move_within_one_lease_ttl() {
    let Some(etcd) = Cluster::start(1).await else {
        return;
    };
    // Declared before the replicas: removed after they stop, also on a failure.
    let dir = testkit::tempdir::TempDir::new("cluster-kill");
    let store = etcd.store_url("t3");
    let (p1, b1) = replica_process(&store, "k1", &dir).await;
    let (mut p2, b2) = replica_process(&store, "k2", &dir).await;
    let mut load_peers = Vec::new();
    let mut moving = Vec::new();
    for _ in 0..4 {
        let p = Peer::start().await;
        register(&b1, "load", p.port()).await;
        load_peers.push(p);
    }
    for _ in 0..16 {
        let p = Peer::start().await;
        register(&b2, "moving", p.port()).await;
        moving.push(p);
    }
    testkit::wait_until(
        "every instance available on both",
        Duration::from_secs(10),
        || {
            let (b1, b2) = (b1.clone(), b2.clone());
            async move {
                let (r1, r2) = (view(&b1).await, view(&b2).await);
                r1 == r2
                    && r1.values().map(|m| m.len()).sum::<usize>() == 20
                    && r1
                        .values()
                        .flat_map(|m| m.values())
                        .all(|(_, s)| s == "available")
            }
        },
    )
    .await;
    // Both replicas check: the work is split.
    testkit::wait_until("both replicas make checks", Duration::from_secs(5), || {
        let (b1, b2) = (b1.clone(), b2.clone());
        async move {
            let ok = |t: &str| {
                t.lines()
                    .find(|l| l.starts_with("discovery_health_checks_total{outcome=\"ok\"}"))
                    .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            ok(&metrics(&b1).await) > 0.0 && ok(&metrics(&b2).await) > 0.0
        }
    })
    .await;

    let stop_at = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A gateway watching the replica that will die first (b2), then b1; real
    // apps behind it, registered through b1, and clients POSTing through it.
    let apps = testkit::system::apps(&b1, 2).await;
    let members: Vec<String> = apps.iter().map(|a| a.served_by().to_string()).collect();
    let gateway = gateway::spawn(testkit::system::gateway_config(&format!("{b2},{b1}")))
        .await
        .unwrap();
    testkit::system::wait_ring(&gateway.admin_url(), &members, Duration::from_secs(10)).await;
    assert_eq!(watch_url(&gateway).await.as_deref(), Some(b2.as_str()));
    let gateway_load = {
        let addr = gateway.addr();
        let stop = stop_at.clone();
        async_std::task::spawn(async move { gateway_clients(addr, 4, stop).await })
    };

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (b1, stop) = (b1.clone(), stop.clone());
        async_std::task::spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, body) =
                    post(&format!("{b1}/api/lookup"), r#"{"namespace": "load"}"#).await;
                if status == 200 {
                    ok += 1;
                } else {
                    failed.push(format!("{status} {body}"));
                }
            }
            (ok, failed)
        })
    };
    p2.kill();
    let killed = Instant::now();
    for p in &moving {
        p.set_status(500);
    }
    let limit = discovery::etcd::LEASE_TTL + Duration::from_secs(2);
    testkit::wait_until("the survivor flips every instance", limit, || {
        let b1 = b1.clone();
        async move {
            view(&b1)
                .await
                .get("moving")
                .is_some_and(|m| m.len() == 16 && m.values().all(|(_, s)| s == "unavailable"))
        }
    })
    .await;
    let moved = killed.elapsed();
    p1.wait_for_line("replica left", Duration::from_secs(1))
        .await;
    // The gateway's watch has moved to the live replica, and no client noticed.
    testkit::wait_until(
        "the gateway watches the live replica",
        Duration::from_secs(10),
        || async { watch_url(&gateway).await.as_deref() == Some(b1.as_str()) },
    )
    .await;
    stop_at.store(true, std::sync::atomic::Ordering::Relaxed);
    let (served, failures) = gateway_load.await;
    assert!(
        failures.is_empty(),
        "{} requests through the gateway failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        served > 50,
        "the gateway served {served} requests meanwhile"
    );
    gateway.shutdown().await;
    for a in apps {
        a.shutdown().await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await;
    assert!(
        failed.is_empty(),
        "{} failed lookups: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 10, "the load ran: {ok} lookups");
    eprintln!("checks moved {moved:?} after the kill ({ok} lookups, none failed)");
}

/// Keep-alive POSTs through `addr` until `stop`; every answer must be a 200
/// echoing the body. Answers the count and the failures.
async fn client_loop(
    addr: std::net::SocketAddr,
    id: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u64, Vec<String>) {
    use shared::http1::client::{post as post_req, Connection};
    let (mut ok, mut failed) = (0u64, Vec::new());
    let mut conn: Option<Connection> = None;
    let mut req = Vec::new();
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let body = format!(r#"{{"client": {id}, "n": {n}}}"#);
        post_req(&mut req, "gw", "/", body.as_bytes(), "");
        if conn.is_none() {
            conn = Some(Connection::connect(addr).await.unwrap());
        }
        match conn.as_mut().unwrap().exchange(&req).await {
            Ok(res) if res.status == 200 && res.body == body.as_bytes() => ok += 1,
            Ok(res) => failed.push(format!(
                "{} {}",
                res.status,
                String::from_utf8_lossy(&res.body)
            )),
            Err(e) => {
                failed.push(format!("client {id}: {e}"));
                conn = None;
            }
        }
    }
    (ok, failed)
}

/// Acceptance 2: under load through two gateways (4 clients each), kill the
/// etcd leader, then a follower (restarting each), then lose quorum for 10 s:
/// no request fails, no registration is lost, and writes resume.
#[async_std::test]
async fn etcd_members_dying_and_quorum_lost_fail_no_request() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let Some(mut etcd) = Cluster::start(3).await else {
        return;
    };
    let r1 = replica(etcd.store_url("t2"), "q1").await;
    let r2 = replica(etcd.store_url("t2"), "q2").await;
    let urls = format!("{},{}", r1.url(), r2.url());
    let apps = testkit::system::apps(&r1.url(), 3).await;
    let mut gateways = Vec::new();
    for _ in 0..2 {
        gateways.push(
            gateway::spawn(testkit::system::gateway_config(&urls))
                .await
                .unwrap(),
        );
    }
    let members: Vec<String> = apps.iter().map(|a| a.addr().to_string()).collect();
    for g in &gateways {
        testkit::system::wait_ring(&g.admin_url(), &members, Duration::from_secs(10)).await;
    }
    // The second replica sees the registrations through etcd's watch: wait for it.
    testkit::wait_until(
        "the second replica mirrors the three registrations",
        Duration::from_secs(10),
        || async { view(&r2.url()).await.get("service A").map(BTreeMap::len) == Some(3) },
    )
    .await;
    let before = view(&r2.url()).await;
    assert_eq!(before["service A"].len(), 3, "{before:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for (g, gw) in gateways.iter().enumerate() {
        for c in 0..4 {
            clients.push(async_std::task::spawn(client_loop(
                gw.addr(),
                g * 10 + c,
                stop.clone(),
            )));
        }
    }
    let leader = etcd.leader().await.expect("a leader");
    etcd.kill(leader);
    async_std::task::sleep(Duration::from_millis(1500)).await;
    etcd.restart(leader);
    etcd.wait_healthy(Duration::from_secs(15)).await;
    let leader = etcd.leader().await.expect("a leader again");
    let follower = (leader + 1) % 3;
    etcd.kill(follower);
    async_std::task::sleep(Duration::from_millis(1500)).await;
    etcd.restart(follower);
    etcd.wait_healthy(Duration::from_secs(15)).await;

    // Quorum lost: two of three members down for 10 s.
    let (a, b) = (0, 1);
    etcd.kill(a);
    etcd.kill(b);
    async_std::task::sleep(Duration::from_secs(10)).await;
    etcd.restart(a);
    etcd.restart(b);
    etcd.wait_healthy(Duration::from_secs(15)).await;
    async_std::task::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for c in clients {
        let (o, f) = c.await;
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 100, "the load ran: {ok} requests");
    // Nothing lost, and writes resume.
    let after = view(&r2.url()).await;
    let ids = |r: &BTreeMap<String, BTreeMap<String, (String, String)>>| {
        r["service A"]
            .values()
            .map(|(id, _)| id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&after), ids(&before), "no registration lost");
    let peer = Peer::start().await;
    testkit::wait_until(
        "a write succeeds once quorum is back",
        Duration::from_secs(10),
        || {
            let base = r2.url();
            let body = serde_json::json!({"namespace": "after", "port": peer.port().to_string()});
            async move {
                post(&format!("{base}/api/register"), &body.to_string())
                    .await
                    .0
                    < 300
            }
        },
    )
    .await;
    for g in gateways {
        g.shutdown().await;
    }
    for a in apps {
        a.shutdown().await;
    }
    r1.shutdown().await;
    r2.shutdown().await;
}

/// Lookups per second on `base` from 8 keep-alive clients for `secs`.
async fn lookup_rate(base: &str, namespace: &str, secs: u64) -> f64 {
    use shared::http1::client::{post as post_req, Connection};
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let until = Instant::now() + Duration::from_secs(secs);
    let body = format!(r#"{{"namespace": "{namespace}"}}"#);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let body = body.clone();
        tasks.push(async_std::task::spawn(async move {
            let mut conn = Connection::connect(addr).await.unwrap();
            let mut req = Vec::new();
            post_req(&mut req, "d", "/api/lookup", body.as_bytes(), "");
            let mut n = 0u64;
            while Instant::now() < until {
                let res = conn.exchange(&req).await.unwrap();
                assert_eq!(res.status, 200);
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await;
    }
    total as f64 / secs as f64
}

/// Flip latencies (ms) seen by watchers on `watched` for `flips` flips of
/// `peers`: arrival minus the owner's `last_check_unix_ms` of the deciding check.
async fn flip_latencies(watched: &[String], ns: &str, peers: &[Peer], flips: usize) -> Vec<f64> {
    let mut watches = Vec::new();
    for base in watched {
        let mut w = Watch::open(base, ns).await;
        w.next(Duration::from_secs(5)).await;
        watches.push(w);
    }
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as f64
    };
    let mut out = Vec::new();
    for k in 0..flips {
        // Down, then up again, one instance after the other.
        let peer = &peers[(k / 2) * 7 % peers.len()];
        let down = k % 2 == 0;
        peer.set_status(if down { 500 } else { 200 });
        let mut arrived = Vec::new();
        for w in &mut watches {
            loop {
                let e = w.next(Duration::from_secs(30)).await;
                let present = e.instances.iter().any(|i| i.port.0 == peer.port());
                if present != down {
                    arrived.push(unix_ms());
                    break;
                }
            }
        }
        // The deciding check, as its owner recorded it.
        let mut checked = None;
        for base in watched {
            let (_, services) = get(&format!("{base}/api/services")).await;
            let port = peer.port().to_string();
            if let Some(at) = services[ns]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["port"].as_str() == Some(port.as_str()))
                .and_then(|i| i["last_check_unix_ms"].as_f64())
            {
                checked = Some(at);
            }
        }
        let checked = checked.expect("the owner reports its last check");
        for a in arrived {
            out.push(a - checked);
        }
    }
    out
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// The figures of bench/results-cluster.md: 1,000 instances, 2 etcd
/// replicas beside one memory discovery. Run:
/// `cargo test --release -p discovery --test acceptance cluster::measure -- --ignored --nocapture`
#[async_std::test]
#[ignore]
async fn measure_1000_instances_etcd_vs_memory() {
    let Some(etcd) = Cluster::start(3).await else {
        return;
    };
    let config = |store: String, id: &str| shared::config::DiscoveryConfig {
        store,
        replica_id: Some(id.into()),
        health_check_time_interval: Duration::from_secs(2),
        timeout_threshold: Duration::from_millis(500),
        max_instances: 20_000,
        ..testkit::discovery_config()
    };
    let r1 = discovery::spawn(config(etcd.store_url("m"), "m1"))
        .await
        .unwrap();
    let r2 = discovery::spawn(config(etcd.store_url("m"), "m2"))
        .await
        .unwrap();
    let mem = discovery::spawn(config("memory".into(), "mem"))
        .await
        .unwrap();
    let mut peers = Vec::new();
    for _ in 0..1000 {
        peers.push(Peer::start().await);
    }
    let t = Instant::now();
    for p in &peers {
        register(&r1.url(), "bench", p.port()).await;
        register(&mem.url(), "bench", p.port()).await;
    }
    eprintln!("registered 1,000 on etcd and memory in {:?}", t.elapsed());
    for base in [r2.url(), mem.url()] {
        testkit::wait_until("1,000 available", Duration::from_secs(60), || {
            let base = base.clone();
            async move {
                view(&base)
                    .await
                    .get("bench")
                    .is_some_and(|m| m.len() == 1000 && m.values().all(|(_, s)| s == "available"))
            }
        })
        .await;
    }
    let client =
        discovery::etcd::client::Client::new(&etcd.endpoints(), Duration::from_secs(2)).unwrap();
    let revision = || async {
        client
            .range(&discovery::etcd::client::RangeRequest {
                key: b"/m/".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .header
            .revision
    };
    let (r0, t0) = (revision().await, Instant::now());
    async_std::task::sleep(Duration::from_secs(10)).await;
    let steady = (revision().await - r0) as f64 / t0.elapsed().as_secs_f64();
    eprintln!("steady state: {steady:.2} etcd writes/s (1,000 stable instances, checks every 2 s)");

    let mut etcd_flips = flip_latencies(&[r1.url(), r2.url()], "bench", &peers, 40).await;
    let mut mem_flips = flip_latencies(&[mem.url()], "bench", &peers, 40).await;
    eprintln!(
        "flip to watcher: etcd p50 {:.1} ms p99 {:.1} ms; memory p50 {:.1} ms p99 {:.1} ms",
        percentile(&mut etcd_flips, 0.5),
        percentile(&mut etcd_flips, 0.99),
        percentile(&mut mem_flips, 0.5),
        percentile(&mut mem_flips, 0.99)
    );

    // Every instance flips at once: how fast the replicas write and see them all.
    let (r0, t0) = (revision().await, Instant::now());
    for p in &peers {
        p.set_status(500);
    }
    for base in [r2.url(), mem.url()] {
        testkit::wait_until("1,000 unavailable", Duration::from_secs(60), || {
            let base = base.clone();
            async move {
                view(&base)
                    .await
                    .get("bench")
                    .is_some_and(|m| m.values().filter(|(_, s)| s == "unavailable").count() == 1000)
            }
        })
        .await;
        eprintln!("{base}: all 1,000 unavailable after {:?}", t0.elapsed());
    }
    let burst = revision().await - r0;
    eprintln!("burst: {burst} etcd writes for 1,000 flips");
    for p in &peers {
        p.set_status(200);
    }
    for base in [r2.url(), mem.url()] {
        testkit::wait_until("1,000 available again", Duration::from_secs(60), || {
            let base = base.clone();
            async move {
                view(&base)
                    .await
                    .get("bench")
                    .is_some_and(|m| m.values().all(|(_, s)| s == "available"))
            }
        })
        .await;
    }
    let etcd_rate = lookup_rate(&r2.url(), "bench", 5).await;
    let mem_rate = lookup_rate(&mem.url(), "bench", 5).await;
    eprintln!("lookups/s on one replica: etcd {etcd_rate:.0}, memory {mem_rate:.0}");
}

/// The discovery URL whose watch feeds the gateway's "service A" ring.
async fn watch_url(gateway: &gateway::Handle) -> Option<String> {
    let status = testkit::system::status(&gateway.admin_url()).await;
    status["namespaces"]
        .as_array()?
        .iter()
        .find(|n| n["namespace"] == "service A")?["discovery"]["watch_url"]
        .as_str()
        .map(str::to_string)
}

/// `clients` keep-alive clients POSTing through the gateway until `stop`;
/// how many were answered with their own body, and every failure.
async fn gateway_clients(
    addr: std::net::SocketAddr,
    clients: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (usize, Vec<String>) {
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let stop = stop.clone();
            async_std::task::spawn(async move {
                let (mut served, mut failures) = (0, Vec::new());
                let mut conn: Option<shared::http1::client::Connection> = None;
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let body = format!(r#"{{"client": {c}, "n": {n}}}"#).into_bytes();
                    if conn.is_none() {
                        conn = shared::http1::client::Connection::connect(addr).await.ok();
                    }
                    let Some(open) = conn.as_mut() else {
                        failures.push("connect failed".to_string());
                        continue;
                    };
                    let mut req = Vec::new();
                    shared::http1::client::post(&mut req, "gateway", "/pay", &body, "");
                    match open.exchange(&req).await {
                        Ok(r) if r.status == 200 && r.body == body => {
                            served += 1;
                            if !r.keep_alive {
                                conn = None;
                            }
                        }
                        Ok(r) => {
                            conn = None;
                            failures.push(format!(
                                "{} {}",
                                r.status,
                                String::from_utf8_lossy(&r.body)
                            ));
                        }
                        Err(e) => {
                            conn = None;
                            failures.push(format!("transport: {e}"));
                        }
                    }
                }
                (served, failures)
            })
        })
        .collect();
    let (mut served, mut failures) = (0, Vec::new());
    for t in tasks {
        let (s, f) = t.await;
        served += s;
        failures.extend(f);
    }
    (served, failures)
}
