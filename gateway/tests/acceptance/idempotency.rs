//! Idempotency-Key at the gateway (docs/idempotency.md), against real
//! discovery, apps and gateways (and real etcd members for the shared
//! store). Each app counts the business requests it ran per key (admin
//! `GET /executions`): "executed once" is read from the apps, not the gateway.

use shared::config::{GatewayConfig, IdempotencyConfig, IdempotencyMode, RouteConfig};
use shared::http1::client::{post, Connection, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::etcd::Cluster;
use testkit::system::{apps, gateway_config, metric, wait_ring};

/// Routes: `/` honours keys, `/req` requires them, `/plain` ignores them.
fn keyed_routes(c: &mut GatewayConfig, ttl: Duration) {
    let rule = |mode| IdempotencyConfig {
        mode,
        ttl,
        ..IdempotencyConfig::default()
    };
    let route = |prefix: &str, mode| RouteConfig {
        prefix: prefix.into(),
        namespace: "service A".into(),
        idempotency: rule(mode),
        ..RouteConfig::default()
    };
    c.routes = vec![
        route("/", IdempotencyMode::Honor),
        route("/req", IdempotencyMode::Require),
        route("/plain", IdempotencyMode::Off),
    ];
}

/// Discovery (health checks that tolerate `check_timeout`), `n` apps and
/// gateways made by `configs`, each with every app in its ring.
struct Keyed {
    discovery: discovery::Handle,
    apps: Vec<app::Handle>,
    gateways: Vec<gateway::Handle>,
}

impl Keyed {
    async fn start(n: usize, tweak: impl Fn(&mut GatewayConfig)) -> Keyed {
        let discovery = discovery::spawn(shared::config::DiscoveryConfig {
            timeout_threshold: Duration::from_secs(5),
            ..testkit::discovery_config()
        })
        .await
        .unwrap();
        let apps = apps(&discovery.url(), n).await;
        let mut k = Keyed {
            discovery,
            apps,
            gateways: Vec::new(),
        };
        k.add_gateway(&tweak).await;
        k
    }

    async fn add_gateway(&mut self, tweak: &impl Fn(&mut GatewayConfig)) -> &gateway::Handle {
        let mut config = gateway_config(&self.discovery.url());
        keyed_routes(&mut config, Duration::from_secs(3600));
        // Room for a busy machine (the whole suite at once): only the
        // timeout test wants a try to time out, and it says so.
        config.upstream_timeout = Duration::from_secs(10);
        config.request_deadline = Duration::from_secs(20);
        tweak(&mut config);
        let g = gateway::spawn(config).await.unwrap();
        let members: Vec<String> = self
            .apps
            .iter()
            .map(|a| a.served_by().to_string())
            .collect();
        wait_ring(&g.admin_url(), &members, Duration::from_secs(5)).await;
        self.gateways.push(g);
        self.gateways.last().unwrap()
    }

    fn addr(&self) -> SocketAddr {
        self.gateways[0].addr()
    }

    fn admin(&self) -> String {
        self.gateways[0].admin_url()
    }

    /// How many times the apps ran the request with `key`.
    async fn executions(&self, key: &str) -> u64 {
        executions(&self.apps, &[key]).await[0]
    }

    async fn stop(self) {
        for g in self.gateways {
            g.shutdown().await;
        }
        for a in self.apps {
            a.shutdown().await;
        }
        self.discovery.shutdown().await;
    }
}

/// Per key, the executions every app counted.
async fn executions(apps: &[app::Handle], keys: &[&str]) -> Vec<u64> {
    let mut total = vec![0; keys.len()];
    for a in apps {
        let (status, v) = testkit::client::get(&format!("{}/executions", a.admin_url())).await;
        assert_eq!(status, 200);
        for (t, k) in total.iter_mut().zip(keys) {
            *t += v["executions"][*k].as_u64().unwrap_or(0);
        }
    }
    total
}

/// One POST on a new connection, with `fields` (each ending CRLF).
async fn send(addr: SocketAddr, path: &str, fields: &str, body: &[u8]) -> Response {
    let mut req = Vec::new();
    post(&mut req, "gw", path, body, fields);
    let mut c = Connection::connect(addr).await.unwrap();
    c.exchange(&req).await.unwrap()
}

async fn send_keyed(addr: SocketAddr, path: &str, key: &str, body: &[u8]) -> Response {
    send(addr, path, &format!("idempotency-key: {key}\r\n"), body).await
}

/// The JSON error code of a gateway's refusal (and that it has the request id).
fn error_code(res: &Response) -> String {
    let v: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
    assert!(v["error"]["request_id"].is_string(), "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    v["error"]["code"].as_str().unwrap().to_string()
}

/// The head's fields but the request id (which is each request's own).
fn fields(res: &Response) -> Vec<String> {
    String::from_utf8_lossy(&res.head)
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("x-request-id:"))
        .map(str::to_string)
        .collect()
}

fn event(name: &str) -> String {
    format!("gateway_idempotency_requests_total{{route=\"/\",event=\"{name}\"}}")
}

#[async_std::test]
async fn first_runs_a_repeat_is_replayed_byte_for_byte_and_another_body_is_422() {
    let k = Keyed::start(2, |_| {}).await;
    let first = send_keyed(k.addr(), "/pay", "k-first", br#"{"amount": 5}"#).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = send_keyed(k.addr(), "/pay", "\"k-first\"", br#"{"amount": 5}"#).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
    let mut replayed = fields(&again);
    replayed.retain(|l| l != "idempotent-replayed: true");
    assert_eq!(replayed, fields(&first), "same status line and fields");
    let other = send_keyed(k.addr(), "/pay", "k-first", br#"{"amount": 500}"#).await;
    assert_eq!(other.status, 422);
    assert_eq!(error_code(&other), "idempotency_key_reused");
    let elsewhere = send_keyed(k.addr(), "/refund", "k-first", br#"{"amount": 5}"#).await;
    assert_eq!(elsewhere.status, 422, "the target is in the fingerprint");
    assert_eq!(k.executions("k-first").await, 1);
    assert_eq!(metric(&k.admin(), &event("replayed")).await, 1.0);
    assert_eq!(metric(&k.admin(), &event("mismatch")).await, 2.0);
    let status = testkit::system::status(&k.admin()).await;
    assert_eq!(status["idempotency"]["routes"]["/"]["executed"], 1);
    assert_eq!(status["idempotency"]["store"], "memory");
    // Another client (Authorization) has a scope of its own: the same key runs for it.
    let theirs = send(
        k.addr(),
        "/pay",
        "authorization: Bearer other\r\nidempotency-key: k-first\r\n",
        br#"{"amount": 500}"#,
    )
    .await;
    assert_eq!(
        (theirs.status, theirs.header("idempotent-replayed")),
        (200, None)
    );
    assert_eq!(k.executions("k-first").await, 2);
    k.stop().await;
}

#[async_std::test]
async fn the_same_key_while_the_first_is_in_flight_is_409_with_retry_after() {
    let k = Keyed::start(1, |_| {}).await;
    let knobs = format!("{}/chaos", k.apps[0].admin_url());
    let (status, _) = testkit::client::call("PUT", &knobs, Some(r#"{"delay_ms": 1500}"#)).await;
    assert_eq!(status, 200);
    let addr = k.addr();
    let first = async_std::task::spawn(send_keyed(addr, "/pay", "k-busy", b"{}"));
    let admin = k.admin();
    testkit::wait_until("the first is claimed", Duration::from_secs(5), || async {
        metric(&admin, &event("executed")).await >= 1.0
    })
    .await;
    let second = send_keyed(addr, "/pay", "k-busy", b"{}").await;
    assert_eq!(second.status, 409);
    assert_eq!(second.header("retry-after"), Some("1"));
    assert_eq!(error_code(&second), "idempotency_key_in_flight");
    let first = first.await;
    assert_eq!(first.status, 200);
    let third = send_keyed(addr, "/pay", "k-busy", b"{}").await;
    assert_eq!((third.status, third.body), (200, first.body));
    assert_eq!(k.executions("k-busy").await, 1);
    assert_eq!(metric(&admin, &event("conflict")).await, 1.0);
    k.stop().await;
}

#[async_std::test]
async fn a_repeat_sent_the_moment_the_answer_arrives_is_replayed_not_409() {
    let k = Keyed::start(2, |_| {}).await;
    for i in 0..40 {
        let (key, body) = (format!("k-at-once-{i}"), format!("{{\"n\": {i}}}"));
        let first = send_keyed(k.addr(), "/pay", &key, body.as_bytes()).await;
        assert_eq!(first.status, 200);
        // The record settles just after the answer's last byte went out.
        let again = send_keyed(k.addr(), "/pay", &key, body.as_bytes()).await;
        let got = (again.status, again.header("idempotent-replayed"));
        assert_eq!(
            got,
            (200, Some("true")),
            "{}",
            String::from_utf8_lossy(&again.body)
        );
    }
    assert_eq!(metric(&k.admin(), &event("conflict")).await, 0.0);
    k.stop().await;
}

#[async_std::test]
async fn require_refuses_a_listed_method_without_a_key_and_honour_lets_it_pass() {
    let k = Keyed::start(1, |_| {}).await;
    let refused = send(k.addr(), "/req/pay", "", b"{}").await;
    assert_eq!(refused.status, 400);
    assert_eq!(error_code(&refused), "idempotency_key_missing");
    let keyed = send_keyed(k.addr(), "/req/pay", "k-req", b"{}").await;
    assert_eq!(keyed.status, 200);
    let honoured = send(k.addr(), "/pay", "", b"{}").await;
    assert_eq!(honoured.status, 200, "honor: no key, forwarded as ever");
    let plain = send_keyed(k.addr(), "/plain", "k-plain", b"{}").await;
    let plain_again = send_keyed(k.addr(), "/plain", "k-plain", b"{}").await;
    assert_eq!((plain.status, plain_again.status), (200, 200));
    assert_eq!(plain_again.header("idempotent-replayed"), None);
    assert_eq!(
        k.executions("k-plain").await,
        2,
        "off: the header is just forwarded"
    );
    let text = testkit::system::metrics_text(&k.admin()).await;
    assert!(
        text.contains("gateway_idempotency_requests_total{route=\"/req\",event=\"missing_key\"} 1"),
        "{text}"
    );
    k.stop().await;
}

#[async_std::test]
async fn a_key_runs_again_once_its_ttl_is_over() {
    let k = Keyed::start(1, |c| keyed_routes(c, Duration::from_secs(1))).await;
    let started = Instant::now();
    assert_eq!(
        send_keyed(k.addr(), "/pay", "k-ttl", b"{}").await.status,
        200
    );
    let again = send_keyed(k.addr(), "/pay", "k-ttl", b"{}").await;
    if started.elapsed() < Duration::from_millis(900) {
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
    }
    let addr = k.addr();
    testkit::wait_until("the key expires", Duration::from_secs(5), || async {
        send_keyed(addr, "/pay", "k-ttl", b"{}")
            .await
            .header("idempotent-replayed")
            .is_none()
    })
    .await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    let runs = k.executions("k-ttl").await;
    assert!(
        (2..=3).contains(&runs),
        "once before the ttl, then again: {runs}"
    );
    k.stop().await;
}

/// Both instances take longer than upstream_timeout. Unkeyed, the seed's
/// rule (retry_non_idempotent) sends the POST to the second after the first
/// timed out: it runs twice. Keyed, it is sent once, answered 504, and the
/// key is kept as "outcome unknown": a retry is refused, not run.
#[async_std::test]
async fn a_keyed_post_that_timed_out_is_run_once_and_then_refused() {
    let k = Keyed::start(2, |c| {
        c.upstream_timeout = Duration::from_millis(400);
        c.request_deadline = Duration::from_secs(5);
        c.max_attempts = 2;
    })
    .await;
    for a in &k.apps {
        let knobs = format!("{}/chaos", a.admin_url());
        let (status, _) = testkit::client::call("PUT", &knobs, Some(r#"{"delay_ms": 1200}"#)).await;
        assert_eq!(status, 200);
    }
    let plain = send_keyed(k.addr(), "/plain", "k-plain-slow", b"{}").await;
    assert_eq!(plain.status, 504);
    let keyed = send_keyed(k.addr(), "/pay", "k-slow", b"{}").await;
    assert_eq!(keyed.status, 504);
    let v: serde_json::Value = serde_json::from_slice(&keyed.body).unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("Idempotency-Key"), "{message}");
    let apps = &k.apps;
    testkit::wait_until(
        "the instances ran what they got",
        Duration::from_secs(5),
        || async { executions(apps, &["k-plain-slow", "k-slow"]).await == [2, 1] },
    )
    .await;
    let retry = send_keyed(k.addr(), "/pay", "k-slow", b"{}").await;
    assert_eq!(retry.status, 409);
    assert_eq!(error_code(&retry), "idempotency_outcome_unknown");
    assert_eq!(retry.header("retry-after"), None);
    assert_eq!(k.executions("k-slow").await, 1);
    assert_eq!(metric(&k.admin(), &event("outcome_unknown")).await, 1.0);
    k.stop().await;
}

#[async_std::test]
async fn hostile_keys_are_refused_before_any_instance_or_store() {
    let k = Keyed::start(1, |_| {}).await;
    // Past max_header_bytes: the head is refused as it is read.
    let huge = "k".repeat(1024 * 1024);
    let mut req = Vec::new();
    post(
        &mut req,
        "gw",
        "/pay",
        b"{}",
        &format!("idempotency-key: {huge}\r\n"),
    );
    let answer = testkit::system::refused(k.addr(), &req, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let long = send_keyed(k.addr(), "/pay", &"k".repeat(256), b"{}").await;
    assert_eq!(long.status, 400);
    assert_eq!(error_code(&long), "idempotency_key_invalid");
    let longest = send_keyed(k.addr(), "/pay", &"k".repeat(255), b"{}").await;
    assert_eq!(longest.status, 200);
    // Bytes above 0x7F in a field value: refused by the head parser.
    let mut req = Vec::new();
    post(
        &mut req,
        "gw",
        "/pay",
        b"{}",
        "idempotency-key: cl\u{e9}-\u{1f4b3}\r\n",
    );
    let answer = testkit::system::refused(k.addr(), &req, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let twice = send(
        k.addr(),
        "/pay",
        "idempotency-key: a\r\nidempotency-key: b\r\n",
        b"{}",
    )
    .await;
    assert_eq!(twice.status, 400);
    assert_eq!(error_code(&twice), "idempotency_key_invalid");
    let (_, v) = testkit::client::get(&format!("{}/executions", k.apps[0].admin_url())).await;
    let ran = v["executions"].as_object().unwrap();
    assert_eq!(ran.len(), 1, "only the 255-character key ran: {ran:?}");
    k.stop().await;
}

#[async_std::test]
async fn an_answer_over_max_stored_body_goes_out_once_and_its_key_is_not_run_again() {
    let k = Keyed::start(1, |c| c.routes[0].idempotency.max_stored_body = 64).await;
    let body = format!(r#"{{"pad": "{}"}}"#, "x".repeat(200));
    let first = send_keyed(k.addr(), "/pay", "k-big", body.as_bytes()).await;
    assert_eq!((first.status, first.body.len()), (200, body.len()));
    let again = send_keyed(k.addr(), "/pay", "k-big", body.as_bytes()).await;
    assert_eq!(again.status, 409);
    assert_eq!(error_code(&again), "idempotency_answer_not_stored");
    assert_eq!(k.executions("k-big").await, 1);
    k.stop().await;
}

/// 100,000 distinct keys through a store bounded at 10,000 records: the
/// bound holds, the 90,000 oldest are evicted and counted, the newest still
/// replay, and an evicted key runs again (what the eviction count warns of).
#[async_std::test]
async fn a_hundred_thousand_keys_keep_the_memory_store_within_its_bound() {
    let k = Keyed::start(2, |c| c.idempotency_max_entries = 10_000).await;
    let addr = k.addr();
    // The clients do not keep pace with one another: the newest key is the
    // last one of the client that finished last, not a fixed one.
    let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let finished = finished.clone();
            async_std::task::spawn(async move {
                let mut conn = Connection::connect(addr).await.unwrap();
                let mut req = Vec::new();
                let mut last = 0;
                for i in (c..100_000).step_by(8) {
                    post(
                        &mut req,
                        "gw",
                        "/pay",
                        b"{}",
                        &format!("idempotency-key: many-{i}\r\n"),
                    );
                    let res = conn.exchange(&req).await.unwrap();
                    assert_eq!(res.status, 200, "key {i}");
                    last = i;
                }
                let order = finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                (order, last)
            })
        })
        .collect();
    let mut ends = Vec::new();
    for c in clients {
        ends.push(c.await);
    }
    let newest_key = format!("many-{}", ends.iter().max().unwrap().1);
    let admin = k.admin();
    assert_eq!(
        metric(&admin, "gateway_idempotency_entries").await,
        10_000.0
    );
    assert_eq!(
        metric(&admin, "gateway_idempotency_evictions_total").await,
        90_000.0
    );
    let newest = send_keyed(addr, "/pay", &newest_key, b"{}").await;
    assert_eq!(newest.header("idempotent-replayed"), Some("true"));
    let oldest = send_keyed(addr, "/pay", "many-0", b"{}").await;
    assert_eq!(oldest.header("idempotent-replayed"), None);
    assert_eq!(k.executions("many-0").await, 2);
    assert_eq!(k.executions(&newest_key).await, 1);
    k.stop().await;
}

#[async_std::test]
async fn a_restart_forgets_keys_in_memory_and_keeps_them_in_etcd() {
    let mut k = Keyed::start(1, |_| {}).await;
    assert_eq!(
        send_keyed(k.addr(), "/pay", "k-mem", b"{}").await.status,
        200
    );
    k.gateways.pop().unwrap().shutdown().await;
    let g = k.add_gateway(&|_| {}).await;
    let after = send_keyed(g.addr(), "/pay", "k-mem", b"{}").await;
    assert_eq!(
        after.header("idempotent-replayed"),
        None,
        "memory: the record is lost"
    );
    assert_eq!(k.executions("k-mem").await, 2);

    let Some(etcd) = Cluster::start(1).await else {
        k.stop().await;
        return;
    };
    let url = etcd.store_url("idem-restart");
    let shared = move |c: &mut GatewayConfig| c.idempotency_store = url.clone();
    k.gateways.pop().unwrap().shutdown().await;
    let g = k.add_gateway(&shared).await;
    assert_eq!(
        send_keyed(g.addr(), "/pay", "k-etcd", b"{}").await.status,
        200
    );
    k.gateways.pop().unwrap().shutdown().await;
    let g = k.add_gateway(&shared).await;
    let after = send_keyed(g.addr(), "/pay", "k-etcd", b"{}").await;
    assert_eq!(
        after.header("idempotent-replayed"),
        Some("true"),
        "etcd: kept"
    );
    assert_eq!(k.executions("k-etcd").await, 1);
    k.stop().await;
}

/// Two gateways on one port sharing a 3-member etcd: 1,000 keys, each sent
/// 5 times at once (new connections, so the kernel spreads them over both
/// gateways). Every key runs exactly once; every 200 is the same answer.
#[async_std::test]
async fn two_gateways_on_one_port_run_each_key_once_through_etcd() {
    let Some(etcd) = Cluster::start(3).await else {
        return;
    };
    let url = etcd.store_url("idem-two");
    let mut k = Keyed::start(3, |c| c.idempotency_store = url.clone()).await;
    let port = k.addr();
    let same_port = move |c: &mut GatewayConfig| {
        c.idempotency_store = url.clone();
        c.listen = port.to_string();
    };
    k.add_gateway(&same_port).await;
    let keys: Vec<String> = (0..1000).map(|i| format!("two-{i}")).collect();
    let mut mismatched = 0;
    let mut conflicts = 0;
    for batch in keys.chunks(50) {
        let sends: Vec<_> = batch
            .iter()
            .flat_map(|key| {
                (0..5).map(move |_| {
                    let (key, body) = (key.clone(), format!(r#"{{"key": "{key}"}}"#));
                    async_std::task::spawn(async move {
                        (
                            key.clone(),
                            send_keyed(port, "/pay", &key, body.as_bytes()).await,
                        )
                    })
                })
            })
            .collect();
        for s in sends {
            let (key, res) = s.await;
            match res.status {
                200 if res.body == format!(r#"{{"key": "{key}"}}"#).as_bytes() => {}
                200 => mismatched += 1,
                409 => conflicts += 1,
                other => panic!("{key}: {other} {:?}", String::from_utf8_lossy(&res.body)),
            }
        }
    }
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let ran = executions(&k.apps, &refs).await;
    let not_once: Vec<_> = refs.iter().zip(&ran).filter(|(_, n)| **n != 1).collect();
    assert!(
        not_once.is_empty(),
        "{} keys not run exactly once: {:?}",
        not_once.len(),
        &not_once[..not_once.len().min(5)]
    );
    assert_eq!(mismatched, 0);
    for g in &k.gateways {
        let keyed = metric(&g.admin_url(), &event("keyed")).await;
        assert!(keyed > 0.0, "both gateways took keyed requests");
    }
    eprintln!("two gateways: 5,000 sends of 1,000 keys, {conflicts} answered 409 in flight");
    k.stop().await;
}
