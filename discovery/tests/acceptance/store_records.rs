//! What replicas do with what arrives from etcd that no registration made:
//! records written straight into etcd (unreadable, out of policy, beyond the
//! caps), a replica key with no lease, a frozen member, a full etcd. Real
//! etcd members on loopback; records are written through etcd's JSON gateway.
//! Without an `etcd` binary each test says SKIPPED and returns.
//!
//! Safety: no test makes anything connect outside loopback. The denied
//! record's address is 0.0.0.0 (unspecified, denied by default): it is set
//! aside before any check, and a check would refuse it before connecting.

use discovery::etcd::client::{Client, Op, PutRequest, TxnRequest};
use discovery::store::Record;
use serde_json::Value;
use shared::wire::{InstanceStatus, Port};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use testkit::client::{get, post, store, view};
use testkit::etcd::{put_raw, Cluster};
use testkit::peer::Peer;

async fn replica(store: String, id: &str) -> discovery::Handle {
    replica_with(store, id, testkit::discovery_config()).await
}

async fn replica_with(
    store: String,
    id: &str,
    config: shared::config::DiscoveryConfig,
) -> discovery::Handle {
    discovery::spawn(shared::config::DiscoveryConfig {
        store,
        replica_id: Some(id.into()),
        ..config
    })
    .await
    .expect("replica starts")
}

fn etcd_client(etcd: &Cluster) -> Client {
    Client::new(&etcd.endpoints(), Duration::from_secs(5)).unwrap()
}

fn record(namespace: &str, host: &str, port: u16, id: &str) -> Record {
    Record {
        id: id.into(),
        namespace: namespace.into(),
        host: host.into(),
        port: Port(port),
        health_check_path: "/health_check".into(),
        weight: 1,
        status: InstanceStatus::Available,
        since_unix_ms: 0,
        maintenance_since_unix_ms: None,
    }
}

async fn services(base: &str) -> Value {
    let (status, body) = get(&format!("{base}/api/services")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// namespace → sorted ports served, from `/api/services`.
async fn served(base: &str) -> BTreeMap<String, Vec<u16>> {
    let mut out = BTreeMap::new();
    for (ns, list) in services(base).await.as_object().unwrap() {
        let mut ports: Vec<u16> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["port"].as_str().unwrap().parse().unwrap())
            .collect();
        ports.sort_unstable();
        if !ports.is_empty() {
            out.insert(ns.clone(), ports);
        }
    }
    out
}

async fn metric(base: &str, series: &str) -> Option<f64> {
    let (_, text) = get(&format!("{base}/metrics")).await;
    let text = text.as_str().unwrap_or_default().to_string();
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn register_body(base: &str, body: &Value) -> (u16, Value) {
    post(&format!("{base}/api/register"), &body.to_string()).await
}

/// An unreadable record over a live instance and a record naming a
/// denied address are set aside alike by a running replica (watch) and a
/// restarted one (full read), counted and listed; a registration of that
/// instance through either replica overwrites the bad record.
#[async_std::test]
async fn bad_records_are_set_aside_alike_and_never_block_a_registration() {
    let Some(etcd) = Cluster::start(1).await else {
        return;
    };
    let d1 = replica(etcd.store_url("bad"), "d1").await;
    let b1 = d1.url();
    let peer = Peer::start().await;
    let body = serde_json::json!({"namespace": "svc", "port": peer.port().to_string()});
    let (status, first) = register_body(&b1, &body).await;
    assert_eq!(status, 201, "{first}");
    let client = etcd_client(&etcd);
    let bad_key = format!("/bad/instances/svc/127.0.0.1:{}", peer.port());
    put_raw(&client, &bad_key, b"{\"id\": \"not a record").await;
    let denied = record("svc", "0.0.0.0", 9, "feedfacefeedface");
    let denied_key = "/bad/instances/svc/0.0.0.0:9";
    put_raw(&client, denied_key, &serde_json::to_vec(&denied).unwrap()).await;
    // A replica started now reads them at once; d1 learns them from its watch.
    let d2 = replica(etcd.store_url("bad"), "d2").await;
    let b2 = d2.url();
    for base in [&b1, &b2] {
        testkit::wait_until(
            "both bad records set aside",
            Duration::from_secs(10),
            || {
                let base = base.clone();
                async move { store(&base).await["set_aside"]["invalid"] == 2 }
            },
        )
        .await;
    }
    assert_eq!(view(&b1).await, view(&b2).await, "the replicas agree");
    assert_eq!(
        served(&b1).await,
        BTreeMap::new(),
        "neither record is served"
    );
    for base in [&b1, &b2] {
        let aside = store(base).await["set_aside"].clone();
        let reasons: BTreeMap<String, String> = aside["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let key = r["key"].as_str().unwrap().to_string();
                (key, r["reason"].as_str().unwrap().to_string())
            })
            .collect();
        assert!(reasons[&bad_key].contains("unreadable"), "{aside}");
        assert!(reasons[denied_key].contains("not allowed"), "{aside}");
        assert_eq!(
            metric(base, "discovery_store_set_aside{reason=\"invalid\"}").await,
            Some(2.0)
        );
    }

    // The instance registers again through the replica that restarted...
    let (status, fresh) = register_body(&b2, &body).await;
    assert_eq!(
        status, 201,
        "a fresh record over the unreadable one: {fresh}"
    );
    let (status, again) = register_body(&b1, &body).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again["id"], fresh["id"],
        "the same record through both replicas"
    );
    let port = peer.port();
    for base in [&b1, &b2] {
        testkit::wait_until(
            "the instance is served again",
            Duration::from_secs(10),
            || {
                let base = base.clone();
                async move {
                    let store = store(&base).await;
                    store["set_aside"]["invalid"] == 1
                        && served(&base).await.get("svc") == Some(&vec![port])
                }
            },
        )
        .await;
    }
    assert_eq!(services(&b1).await["svc"][0]["id"], fresh["id"]);
    d1.shutdown().await;
    d2.shutdown().await;
}

/// A key under the replicas prefix without a lease is no replica: it is
/// listed apart, and every instance is checked by a live replica (none is
/// left to the ghost, so every frozen instance is marked unavailable).
#[async_std::test]
async fn a_replica_key_without_a_lease_is_not_a_replica() {
    let Some(etcd) = Cluster::start(1).await else {
        return;
    };
    let d1 = replica(etcd.store_url("ghost"), "d1").await;
    put_raw(
        &etcd_client(&etcd),
        "/ghost/replicas/ghost",
        br#"{"replica_id":"ghost"}"#,
    )
    .await;
    let d2 = replica(etcd.store_url("ghost"), "d2").await;
    let (b1, b2) = (d1.url(), d2.url());
    for base in [&b1, &b2] {
        testkit::wait_until(
            "two live replicas, the ghost ignored",
            Duration::from_secs(10),
            || {
                let base = base.clone();
                async move {
                    let store = store(&base).await;
                    store["replicas"] == serde_json::json!(["d1", "d2"])
                        && store["ignored_replica_keys"] == serde_json::json!(["ghost"])
                }
            },
        )
        .await;
        assert_eq!(metric(base, "discovery_store_replicas").await, Some(2.0));
    }
    let mut peers = Vec::new();
    for _ in 0..12 {
        let peer = Peer::start().await;
        let body = serde_json::json!({"namespace": "svc", "port": peer.port().to_string()});
        let (status, answer) = register_body(&b1, &body).await;
        assert_eq!(status, 201, "{answer}");
        peers.push(peer);
    }
    let all_are = |status: &'static str| {
        let b1 = b1.clone();
        move || {
            let b1 = b1.clone();
            async move {
                let s = services(&b1).await;
                let list = s["svc"].as_array().cloned().unwrap_or_default();
                list.len() == 12 && list.iter().all(|i| i["status"] == status)
            }
        }
    };
    testkit::wait_until(
        "all available",
        Duration::from_secs(10),
        all_are("available"),
    )
    .await;
    // Frozen: they accept connections and answer nothing in time.
    for peer in &peers {
        peer.set_delay(Duration::from_secs(30));
    }
    testkit::wait_until(
        "every frozen instance marked unavailable (none left to the ghost)",
        Duration::from_secs(10),
        all_are("unavailable"),
    )
    .await;
    d1.shutdown().await;
    d2.shutdown().await;
}

/// One of three members frozen (SIGSTOP: it accepts connections and
/// never answers). The replica whose watch runs through it notices within
/// about two probe intervals, says so, moves the watch to another member,
/// and its view converges with the other replica's.
#[async_std::test]
async fn a_frozen_etcd_member_is_noticed_and_the_watch_moves() {
    let Some(etcd) = Cluster::start(3).await else {
        return;
    };
    let d1 = replica(etcd.store_url("frozen"), "d1").await;
    let d2 = replica(etcd.store_url("frozen"), "d2").await;
    let (b1, b2) = (d1.url(), d2.url());
    testkit::wait_until("d1's watch is open", Duration::from_secs(10), || {
        let b1 = b1.clone();
        async move { store(&b1).await["watch_endpoint"].is_string() }
    })
    .await;
    let watched = store(&b1).await["watch_endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let member = etcd
        .members
        .iter()
        .position(|m| watched.ends_with(&m.endpoint()))
        .unwrap();
    let pid = etcd.members[member].pid().unwrap().to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    let frozen = Instant::now();
    testkit::wait_until(
        "d1 finds its watch stale and moves it",
        Duration::from_secs(10),
        || {
            let (b1, watched) = (b1.clone(), watched.clone());
            async move {
                let store = store(&b1).await;
                store["stale_total"].as_u64() >= Some(1)
                    && store["watch_endpoint"]
                        .as_str()
                        .is_some_and(|e| e != watched)
            }
        },
    )
    .await;
    let noticed = frozen.elapsed();
    // Two probe intervals plus the time to open a watch elsewhere (about 3 s),
    // with room for a machine busy with other builds (6.2 s was seen with two
    // compiles beside the suite); far below what a TCP or etcd timeout would
    // take to notice a member that accepts but never answers.
    assert!(
        noticed < Duration::from_secs(8),
        "noticed after {noticed:?}"
    );
    let last = store(&b1).await["last_stale"].as_str().unwrap().to_string();
    assert!(last.contains(&watched), "{last}");
    assert_eq!(
        metric(&b1, "discovery_store_watch_stale_total").await,
        Some(1.0)
    );

    // A change made through the other replica reaches d1 through its new watch.
    let peer = Peer::start().await;
    let body = serde_json::json!({"namespace": "svc", "port": peer.port().to_string()});
    testkit::wait_until("a registration through d2", Duration::from_secs(15), || {
        let (b2, body) = (b2.clone(), body.clone());
        async move { matches!(register_body(&b2, &body).await.0, 200 | 201) }
    })
    .await;
    testkit::wait_until(
        "the replicas' views converge",
        Duration::from_secs(10),
        || {
            let (b1, b2) = (b1.clone(), b2.clone());
            let port = peer.port();
            async move {
                let (v1, v2) = (view(&b1).await, view(&b2).await);
                if v1 != v2 {
                    eprintln!("d1 {v1:?}\nd2 {v2:?}\nd1 {}", store(&b1).await);
                }
                v1 == v2 && served(&b1).await.get("svc") == Some(&vec![port])
            }
        },
    )
    .await;
    assert_eq!(metric(&b1, "discovery_store_connected").await, Some(1.0));
    signal("-CONT");
    d1.shutdown().await;
    d2.shutdown().await;
}

/// Records bulk-written past `max_instances` are set aside, the oldest
/// served first (ties by key), alike on a replica that watched them arrive
/// and one that read them at start; registrations get 429 at the cap; a
/// freed slot goes to the oldest record waiting, on both.
#[async_std::test]
async fn records_beyond_the_caps_are_set_aside_alike() {
    let Some(etcd) = Cluster::start(1).await else {
        return;
    };
    let config = shared::config::DiscoveryConfig {
        max_instances: 5,
        max_instances_per_namespace: 3,
        ..testkit::discovery_config()
    };
    let d1 = replica_with(etcd.store_url("bulk"), "d1", config.clone()).await;
    let client = etcd_client(&etcd);
    // 1,000 records in 10 transactions: each transaction's records share a
    // create revision, so the key breaks the tie. Ports below 1024 on
    // loopback: nothing listens, checks are refused at once.
    let mut written: Vec<(usize, String, u16)> = Vec::new();
    for batch in 0..10 {
        let mut puts = Vec::new();
        for i in 0..100 {
            let n = batch * 100 + i;
            let (ns, port) = (format!("bulk-{}", n % 3), 1 + (n % 1000) as u16);
            let rec = record(&ns, "127.0.0.1", port, &format!("{n:016x}"));
            let key = format!("/bulk/instances/{ns}/127.0.0.1:{port}");
            written.push((batch, key.clone(), port));
            puts.push(Op::Put(PutRequest {
                key: key.into_bytes(),
                value: serde_json::to_vec(&rec).unwrap(),
                lease: 0,
            }));
        }
        let txn = TxnRequest {
            compare: Vec::new(),
            success: puts,
            failure: Vec::new(),
        };
        client.txn(&txn).await.unwrap();
    }
    let d2 = replica_with(etcd.store_url("bulk"), "d2", config).await;
    let (b1, b2) = (d1.url(), d2.url());
    let expected = |gone: &[String]| {
        let mut order = written.clone();
        order.retain(|(_, key, _)| !gone.contains(key));
        order.sort();
        let (mut total, mut per_ns) = (0, BTreeMap::<String, usize>::new());
        let mut out = BTreeMap::<String, Vec<u16>>::new();
        for (_, key, port) in order {
            let ns = key.split('/').nth(3).unwrap().to_string();
            let n = per_ns.entry(ns.clone()).or_default();
            if total < 5 && *n < 3 {
                total += 1;
                *n += 1;
                out.entry(ns).or_default().push(port);
            }
        }
        out.values_mut().for_each(|v| v.sort_unstable());
        out
    };
    let want = expected(&[]);
    for base in [&b1, &b2] {
        testkit::wait_until("the oldest five served", Duration::from_secs(20), || {
            let (base, want) = (base.clone(), want.clone());
            async move {
                served(&base).await == want && store(&base).await["set_aside"]["over_cap"] == 995
            }
        })
        .await;
        assert_eq!(
            metric(base, "discovery_store_set_aside{reason=\"over_cap\"}").await,
            Some(995.0)
        );
    }
    let peer = Peer::start().await;
    let body = serde_json::json!({"namespace": "svc", "port": peer.port().to_string()});
    let (status, answer) = register_body(&b1, &body).await;
    assert_eq!(status, 429, "{answer}");

    let (ns, port) = want
        .iter()
        .next()
        .map(|(ns, p)| (ns.clone(), p[0]))
        .unwrap();
    let gone = format!("/bulk/instances/{ns}/127.0.0.1:{port}");
    let bye = serde_json::json!({"namespace": ns, "host": "127.0.0.1", "port": port.to_string()});
    let (status, answer) = post(&format!("{b2}/api/deregister"), &bye.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    let want = expected(&[gone]);
    for base in [&b1, &b2] {
        testkit::wait_until(
            "the freed slot goes to the oldest record waiting",
            Duration::from_secs(10),
            || {
                let (base, want) = (base.clone(), want.clone());
                async move { served(&base).await == want }
            },
        )
        .await;
    }
    d1.shutdown().await;
    d2.shutdown().await;
}

/// etcd out of space (a tiny quota, filled) shows as
/// `discovery_store_writable 0`, with the alarm in `/api/store`, and a
/// registration gets a 503.
#[async_std::test]
async fn etcd_out_of_space_shows_the_store_unwritable() {
    let Some(etcd) = Cluster::start_with(1, &["--quota-backend-bytes", "1048576"]).await else {
        return;
    };
    let d1 = replica(etcd.store_url("full"), "d1").await;
    let b1 = d1.url();
    testkit::wait_until("writable at first", Duration::from_secs(10), || {
        let b1 = b1.clone();
        async move { metric(&b1, "discovery_store_writable").await == Some(1.0) }
    })
    .await;
    let client = etcd_client(&etcd);
    let filler = vec![b'x'; 256 * 1024];
    let mut full = false;
    for i in 0..64 {
        let put = PutRequest {
            key: format!("/filler/{i}").into_bytes(),
            value: filler.clone(),
            lease: 0,
        };
        if let Err(e) = client.put(&put).await {
            assert!(e.to_string().contains("space exceeded"), "{e}");
            full = true;
            break;
        }
    }
    assert!(full, "etcd never ran out of space");
    testkit::wait_until(
        "discovery_store_writable 0",
        Duration::from_secs(10),
        || {
            let b1 = b1.clone();
            async move { metric(&b1, "discovery_store_writable").await == Some(0.0) }
        },
    )
    .await;
    let store = store(&b1).await;
    let why = store["write_error"].as_str().unwrap_or_default();
    assert!(why.contains("NOSPACE"), "{store}");
    assert_eq!(
        metric(&b1, "discovery_store_connected").await,
        Some(1.0),
        "reads go on"
    );
    let peer = Peer::start().await;
    let body = serde_json::json!({"namespace": "svc", "port": peer.port().to_string()});
    let (status, answer) = register_body(&b1, &body).await;
    assert_eq!(status, 503, "{answer}");
    d1.shutdown().await;
}
