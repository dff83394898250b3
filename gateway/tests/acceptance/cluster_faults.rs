//! Past one machine, under faults: three real etcd members, two
//! discovery replicas (child processes) sharing them, three real apps and a
//! gateway watching both replicas, with keep-alive POST clients through the
//! gateway while these happen one after another:
//!
//! 1. records written straight into etcd: an unparsable value under a real
//!    app's key and under another instance's, a record naming 0.0.0.0 (a
//!    denied address), a replica key without a lease;
//! 2. the etcd member a replica watches through frozen (SIGSTOP) for 6 s;
//! 3. the replica the gateway watches frozen for 8 s.
//!
//! No client request may fail: the client path never touches discovery or
//! etcd. Without an `etcd` binary the test says SKIPPED and returns.
//!
//! Safety: nothing connects outside loopback. The denied record's address is
//! 0.0.0.0 (which Linux maps to loopback), port 9, where nothing listens.

use crate::common::{body, Client};
use discovery::store::Record;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use shared::wire::{InstanceStatus, Port};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::client::{store, view};
use testkit::etcd::{put_raw, Cluster};
use testkit::peer::Peer;
use testkit::procs::Proc;
use testkit::system::{gateway_config, status, wait_ring};

const PREFIX: &str = "faults";

/// A discovery replica as a child process (so it can be frozen), on `store`.
/// Watch keep-alive at its default (2 s), against the gateway's default
/// `watch_idle_timeout` (5 s). Checks are lenient (1 s, three failures in a
/// row): a check slowed by the load on a 2-core machine must not take an app
/// out of the ring, or the final ring check would be flaky.
async fn replica(store: &str, id: &str, dir: &std::path::Path) -> (Proc, String) {
    let config = serde_json::json!({
        "listen": "127.0.0.1:0",
        "store": store,
        "replica_id": id,
        "health_check_time_interval": "300ms",
        "timeout_threshold": "1s",
        "unhealthy_threshold": 3,
        "drain_timeout": "1s",
    });
    let file = dir.join(format!("{id}.json"));
    std::fs::write(&file, config.to_string()).unwrap();
    let proc = Proc::start("discovery", &["--config", file.to_str().unwrap()]);
    let addr = proc.listening("discovery").await;
    (proc, format!("http://{addr}"))
}

/// The set-aside records `/api/store` lists: key → why.
fn set_aside(store: &Value) -> BTreeMap<String, String> {
    store["set_aside"]["records"]
        .as_array()
        .map(|records| {
            records
                .iter()
                .map(|r| {
                    (
                        r["key"].as_str().unwrap().into(),
                        r["reason"].as_str().unwrap().into(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The discovery URL whose watch feeds the gateway's "service A" ring.
async fn watch_url(admin: &str) -> String {
    status(admin).await["namespaces"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["namespace"] == "service A"))
        .and_then(|n| n["discovery"]["watch_url"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).unwrap();
}

/// What the clients saw; each failure says how long after the start.
#[derive(Default, Debug)]
struct Load {
    ok: usize,
    failures: Vec<String>,
    served_by: BTreeMap<String, usize>,
    slowest: Duration,
}

/// `clients` keep-alive clients POSTing through `addr` until `stop`; every
/// answer must be a 200 echoing the client's own body. A request has 10 s
/// (a loaded 2-core machine, a frozen etcd member elsewhere): past it, it
/// counts as failed rather than hanging the test.
async fn load(addr: std::net::SocketAddr, clients: usize, stop: Arc<AtomicBool>) -> Load {
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let stop = stop.clone();
            async_std::task::spawn(async move {
                let (mut client, mut seen, mut n) = (Client::new(addr), Load::default(), 0);
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let sent = body(c, n);
                    let at = Instant::now();
                    let answer = async_std::future::timeout(
                        Duration::from_secs(10),
                        client.post("/pay", &sent),
                    )
                    .await;
                    seen.slowest = seen.slowest.max(at.elapsed());
                    let when = started.elapsed();
                    match answer {
                        Ok(Ok(r)) if r.status == 200 && r.body == sent => {
                            seen.ok += 1;
                            let by = r.header("x-served-by").unwrap_or("?").to_string();
                            *seen.served_by.entry(by).or_default() += 1;
                        }
                        Ok(Ok(r)) => seen.failures.push(format!(
                            "{when:?}: {} {}",
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        )),
                        Ok(Err(e)) => seen.failures.push(format!("{when:?}: transport: {e}")),
                        Err(_) => {
                            seen.failures
                                .push(format!("{when:?}: no answer within 10 s"));
                            client = Client::new(addr);
                        }
                    }
                }
                seen
            })
        })
        .collect();
    let mut all = Load::default();
    for t in tasks {
        let t = t.await;
        all.ok += t.ok;
        all.failures.extend(t.failures);
        all.slowest = all.slowest.max(t.slowest);
        for (by, n) in t.served_by {
            *all.served_by.entry(by).or_default() += n;
        }
    }
    all
}

/// What step 1 leaves on a replica once it has settled.
struct Settled {
    app_port: String,
    /// The app's id before its record was overwritten.
    app_id: String,
    peer_key: String,
    denied_key: String,
}

impl Settled {
    async fn on(&self, base: &str) -> bool {
        let (s, v) = (store(base).await, view(base).await);
        let aside = set_aside(&s);
        let apps = v.get("service A");
        let app = apps.and_then(|a| a.get(&self.app_port));
        s["set_aside"]["invalid"] == 2
            && aside
                .get(&self.peer_key)
                .is_some_and(|r| r.contains("unreadable"))
            && aside
                .get(&self.denied_key)
                .is_some_and(|r| r.contains("not allowed"))
            && s["ignored_replica_keys"] == serde_json::json!(["ghost"])
            && s["replicas"] == serde_json::json!(["r1", "r2"])
            && !v.contains_key("other")
            && apps.map(BTreeMap::len) == Some(3)
            && app.is_some_and(|(id, status)| *id != self.app_id && status == "available")
    }
}

#[async_std::test]
async fn bad_records_a_frozen_etcd_member_and_a_frozen_replica_fail_no_request() {
    let Some(etcd) = Cluster::start(3).await else {
        return;
    };
    // Declared before the replicas: removed after they stop, also on a failure.
    let dir = testkit::tempdir::TempDir::new("cluster-faults");
    let store_url = etcd.store_url(PREFIX);
    // r1 is the replica the gateway watches first, and the one frozen in step 3.
    let (r1, b1) = replica(&store_url, "r1", &dir).await;
    let (_r2, b2) = replica(&store_url, "r2", &dir).await;
    let both = [&b1, &b2];
    // The apps register through r2 (an app takes one discovery URL): a frozen
    // r1 would only delay registrations, which are not on the client path.
    let apps = testkit::system::apps(&b2, 3).await;
    let members: Vec<String> = apps.iter().map(|a| a.served_by().to_string()).collect();
    // A fourth instance, in a namespace of its own, that registers once: its
    // record stays unparsable once overwritten (the apps re-register over theirs).
    let peer = Peer::start().await;
    testkit::client::register(&b2, "other", peer.port()).await;
    let gateway = gateway::spawn(shared::config::GatewayConfig {
        // Generous: an app slowed by a loaded machine must not fail a request.
        upstream_timeout: Duration::from_secs(3),
        request_deadline: Duration::from_secs(8),
        ..gateway_config(&format!("{b1},{b2}"))
    })
    .await
    .unwrap();
    let admin = gateway.admin_url();
    wait_ring(&admin, &members, Duration::from_secs(15)).await;
    testkit::wait_until("the gateway watches r1", Duration::from_secs(5), || async {
        watch_url(&admin).await == b1
    })
    .await;
    for base in both {
        testkit::wait_until(
            "each replica serves the four instances, both replicas live",
            Duration::from_secs(10),
            || async {
                let v = view(base).await;
                v.get("service A").map(BTreeMap::len) == Some(3)
                    && v.get("other").map(BTreeMap::len) == Some(1)
                    && store(base).await["replicas"] == serde_json::json!(["r1", "r2"])
            },
        )
        .await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = async_std::task::spawn(load(gateway.addr(), 4, stop.clone()));
    let started = Instant::now();

    // 1. Records no registration made.
    let client =
        discovery::etcd::client::Client::new(&etcd.endpoints(), Duration::from_secs(5)).unwrap();
    let app_port = apps[0].addr().port().to_string();
    let app_id = view(&b2).await["service A"][&app_port].0.clone();
    let app_key = format!("/{PREFIX}/instances/service%20A/127.0.0.1:{app_port}");
    let peer_key = format!("/{PREFIX}/instances/other/127.0.0.1:{}", peer.port());
    let denied_key = format!("/{PREFIX}/instances/service%20A/0.0.0.0:9");
    let denied = Record {
        id: "feedfacefeedface".into(),
        namespace: "service A".into(),
        host: "0.0.0.0".into(),
        port: Port(9),
        health_check_path: "/health_check".into(),
        weight: 1,
        status: InstanceStatus::Available,
        since_unix_ms: 0,
        maintenance_since_unix_ms: None,
    };
    eprintln!("{:?}: step 1, records written into etcd", started.elapsed());
    put_raw(&client, &app_key, b"{\"id\": \"not a record").await;
    put_raw(&client, &peer_key, b"\xff\xfe not json").await;
    put_raw(&client, &denied_key, &serde_json::to_vec(&denied).unwrap()).await;
    put_raw(
        &client,
        &format!("/{PREFIX}/replicas/ghost"),
        br#"{"replica_id":"ghost"}"#,
    )
    .await;
    // The app's unparsable record is set aside (out of every ring) until its
    // next registration replaces it with a fresh record, under a new id; the
    // other instance's stays set aside, with the denied one.
    let settled = Settled {
        app_port: app_port.clone(),
        app_id,
        peer_key,
        denied_key,
    };
    for base in both {
        testkit::wait_until(
            "the bad records set aside and the app registered afresh",
            Duration::from_secs(15),
            || settled.on(base),
        )
        .await;
    }
    wait_ring(&admin, &members, Duration::from_secs(10)).await;
    eprintln!("{:?}: step 1 settled", started.elapsed());

    // 2. The etcd member r1 watches through, frozen: it accepts connections
    // and answers nothing.
    let endpoint = |s: &Value| s["watch_endpoint"].as_str().unwrap_or_default().to_string();
    let watched = endpoint(&store(&b1).await);
    let r2_watched = endpoint(&store(&b2).await);
    let member = etcd
        .members
        .iter()
        .position(|m| watched.ends_with(&m.endpoint()))
        .unwrap_or_else(|| panic!("r1 watches through {watched:?}"));
    let pid = etcd.members[member].pid().unwrap();
    let stale_before = store(&b1).await["stale_total"].as_u64().unwrap();
    eprintln!(
        "{:?}: step 2, etcd member {member} frozen (r1 watches {watched}, r2 {r2_watched})",
        started.elapsed()
    );
    signal(pid, Signal::SIGSTOP);
    let frozen = Instant::now();
    testkit::wait_until(
        "r1 finds its watch stale and moves it",
        Duration::from_secs(6),
        || async {
            let s = store(&b1).await;
            s["stale_total"].as_u64() > Some(stale_before) && endpoint(&s) != watched
        },
    )
    .await;
    let etcd_noticed = frozen.elapsed();
    if r2_watched == watched {
        testkit::wait_until("r2 moves its watch too", Duration::from_secs(6), || async {
            endpoint(&store(&b2).await) != watched
        })
        .await;
    }
    async_std::task::sleep(Duration::from_secs(6).saturating_sub(frozen.elapsed())).await;
    signal(pid, Signal::SIGCONT);
    etcd.wait_healthy(Duration::from_secs(15)).await;
    // Discovery's keep-alives do not depend on etcd: the gateway stayed on r1.
    assert_eq!(watch_url(&admin).await, b1, "the gateway left r1");
    eprintln!(
        "{:?}: step 2 over, r1 moved its watch after {etcd_noticed:?}",
        started.elapsed()
    );

    // 3. r1 frozen: the gateway's stream from it stays open and silent, so
    // only the idle timeout (past twice the keep-alive) can tell.
    let idle = shared::config::GatewayConfig::default().watch_idle_timeout;
    eprintln!("{:?}: step 3, r1 frozen", started.elapsed());
    signal(r1.pid(), Signal::SIGSTOP);
    let frozen = Instant::now();
    testkit::wait_until(
        "the gateway moves its watch to r2",
        idle + Duration::from_millis(2500),
        || async { watch_url(&admin).await == b2 },
    )
    .await;
    let replica_noticed = frozen.elapsed();
    // r1's lease (3 s) runs out meanwhile: r2 takes all the checks.
    testkit::wait_until(
        "r2 sees r1 leave",
        Duration::from_secs(8).saturating_sub(frozen.elapsed()),
        || async { store(&b2).await["replicas"] == serde_json::json!(["r2"]) },
    )
    .await;
    async_std::task::sleep(Duration::from_secs(8).saturating_sub(frozen.elapsed())).await;
    signal(r1.pid(), Signal::SIGCONT);
    eprintln!(
        "{:?}: step 3 over, the gateway moved to r2 after {replica_noticed:?}",
        started.elapsed()
    );

    // After: r1 back among the replicas, both agree on everything, the bad
    // records still set aside on both, and the ring holds every app (and
    // never the denied address).
    for base in both {
        testkit::wait_until(
            "r1 rejoined and the bad records stay set aside",
            Duration::from_secs(10),
            || settled.on(base),
        )
        .await;
    }
    testkit::wait_until("the replicas agree", Duration::from_secs(10), || async {
        let (v1, v2) = (view(&b1).await, view(&b2).await);
        v1 == v2
            && v1
                .get("service A")
                .is_some_and(|a| a.values().all(|(_, status)| status == "available"))
    })
    .await;
    wait_ring(&admin, &members, Duration::from_secs(5)).await;
    assert_eq!(watch_url(&admin).await, b2);
    stop.store(true, Ordering::Relaxed);
    let seen = traffic.await;
    let took = started.elapsed();
    eprintln!(
        "{} requests in {took:?}, {} failed, slowest {:?}, by app {:?}; \
         etcd member freeze noticed by r1 after {etcd_noticed:?}, \
         replica freeze noticed by the gateway after {replica_noticed:?}",
        seen.ok + seen.failures.len(),
        seen.failures.len(),
        seen.slowest,
        seen.served_by
    );
    assert!(
        seen.failures.is_empty(),
        "{} of {} requests failed: {:?}",
        seen.failures.len(),
        seen.ok + seen.failures.len(),
        &seen.failures[..seen.failures.len().min(8)]
    );
    assert!(seen.ok > 200, "the load ran: {seen:?}");
    for m in &members {
        assert!(seen.served_by.get(m).is_some_and(|n| *n > 0), "{seen:?}");
    }
    // The denied record never reached a ring: the gateway would have skipped
    // it on some request (its own allowed_upstreams) and counted that.
    let denied = r#"gateway_upstreams_skipped_total{reason="denied"}"#;
    assert_eq!(testkit::system::metric(&admin, denied).await, 0.0);
    gateway.shutdown().await;
    for a in apps {
        a.shutdown().await;
    }
}
