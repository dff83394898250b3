//! Maintenance: `PUT`/`DELETE /api/maintenance` take an instance out
//! of rotation until lifted, across re-registrations, behind the token; and
//! through a gateway under load, the instance drains without a failed request.

use serde_json::{json, Value};
use shared::http1::client::{post, Connection};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::client::{get, register, Watch};
use testkit::peer::Peer;
use testkit::wait_until;

/// Sends `method path` with a JSON `body` and extra `headers` (`name: value\r\n` each).
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &str,
) -> (u16, Value) {
    let mut conn = Connection::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: discovery\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n{headers}\r\n{body}",
        body.len()
    );
    let res = conn.exchange(req.as_bytes()).await.unwrap();
    let json = serde_json::from_slice(&res.body).unwrap_or(Value::Null);
    (res.status, json)
}

async fn maintenance(addr: SocketAddr, on: bool, ns: &str, port: u16) -> (u16, Value) {
    let body = json!({"namespace": ns, "host": "127.0.0.1", "port": port}).to_string();
    let method = if on { "PUT" } else { "DELETE" };
    send(addr, method, "/api/maintenance", &body, "").await
}

/// The `/api/services` entry of `port` in `ns`.
async fn entry(base: &str, ns: &str, port: u16) -> Value {
    let (_, services) = get(&format!("{base}/api/services")).await;
    let port = port.to_string();
    services[ns]
        .as_array()
        .and_then(|l| l.iter().find(|i| i["port"] == port.as_str()).cloned())
        .unwrap_or(Value::Null)
}

async fn all_available(base: &str, ns: &str, ports: &[u16]) -> bool {
    let mut all = true;
    for p in ports {
        all &= entry(base, ns, *p).await["status"] == "available";
    }
    all
}

async fn lookups(base: &str, ns: &str, n: usize) -> Vec<String> {
    let mut ports = Vec::new();
    for _ in 0..n {
        let (status, answer) = get(&format!("{base}/api/lookup?namespace={ns}")).await;
        assert_eq!(status, 200, "{answer}");
        ports.push(answer["port"].as_str().unwrap().to_string());
    }
    ports
}

#[async_std::test]
async fn maintenance_takes_an_instance_out_of_lookups_and_watch_until_lifted() {
    let d = testkit::discovery().await;
    let base = d.url();
    let (a, b) = (Peer::start().await, Peer::start().await);
    for p in [&a, &b] {
        register(&base, "m", p.port()).await;
    }
    wait_until("both available", Duration::from_secs(5), || async {
        all_available(&base, "m", &[a.port(), b.port()]).await
    })
    .await;
    let mut watch = Watch::open(&base, "m").await;
    assert_eq!(watch.next(Duration::from_secs(2)).await.instances.len(), 2);

    let before = testkit::client::status_of(&base, "m", a.port()).await;
    let (status, answer) = maintenance(d.addr(), true, "m", a.port()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["maintenance"], true);
    assert!(
        answer["maintenance_since_unix_ms"].as_u64().is_some(),
        "{answer}"
    );

    let event = watch.next(Duration::from_secs(2)).await;
    let pushed: Vec<String> = event.instances.iter().map(|e| e.port.to_string()).collect();
    assert_eq!(
        pushed,
        vec![b.port().to_string()],
        "only the other one is pushed"
    );
    assert!(
        lookups(&base, "m", 6)
            .await
            .iter()
            .all(|p| *p == b.port().to_string()),
        "lookups never answer the instance in maintenance"
    );
    let (_, answer) = get(&format!("{base}/api/lookup?namespace=m")).await;
    assert_eq!(answer["service_available_count"], 1);

    // Still checked, status kept, shown as in maintenance with its times.
    let checks = a.checks();
    wait_until("it is still checked", Duration::from_secs(3), || async {
        a.checks() > checks
    })
    .await;
    let info = entry(&base, "m", a.port()).await;
    assert_eq!(info["maintenance"], true, "{info}");
    assert_eq!(Some(info["status"].as_str().unwrap().to_string()), before);
    for field in [
        "since_unix_ms",
        "maintenance_since_unix_ms",
        "last_check_unix_ms",
    ] {
        assert!(
            info[field].as_u64().is_some_and(|t| t > 0),
            "{field}: {info}"
        );
    }
    assert!(info["last_check_latency_ms"].as_f64().is_some(), "{info}");

    let (status, answer) = maintenance(d.addr(), false, "m", a.port()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["maintenance"], false);
    let event = watch.next(Duration::from_secs(2)).await;
    assert_eq!(event.instances.len(), 2, "back in the pushed set");
    let seen = lookups(&base, "m", 4).await;
    assert!(
        seen.contains(&a.port().to_string()),
        "looked up again: {seen:?}"
    );
    let info = entry(&base, "m", a.port()).await;
    assert_eq!(info["maintenance"], false);
    assert!(info["maintenance_since_unix_ms"].is_null(), "{info}");
    d.shutdown().await;
}

#[async_std::test]
async fn maintenance_survives_re_registration() {
    let d = testkit::discovery().await;
    let base = d.url();
    let (a, b) = (Peer::start().await, Peer::start().await);
    let id = register(&base, "m", a.port()).await["id"].clone();
    register(&base, "m", b.port()).await;
    wait_until("both available", Duration::from_secs(5), || async {
        all_available(&base, "m", &[a.port(), b.port()]).await
    })
    .await;
    let (status, first) = maintenance(d.addr(), true, "m", a.port()).await;
    assert_eq!(status, 200);
    for _ in 0..3 {
        let again = register(&base, "m", a.port()).await;
        assert_eq!(again["id"], id, "a renewal, same instance");
    }
    let (status, twice) = maintenance(d.addr(), true, "m", a.port()).await;
    assert_eq!(status, 200);
    assert_eq!(
        twice["maintenance_since_unix_ms"], first["maintenance_since_unix_ms"],
        "in maintenance since the first call"
    );
    let info = entry(&base, "m", a.port()).await;
    assert_eq!(info["maintenance"], true, "{info}");
    assert!(lookups(&base, "m", 6)
        .await
        .iter()
        .all(|p| *p == b.port().to_string()));
    let mut watch = Watch::open(&base, "m").await;
    assert_eq!(watch.next(Duration::from_secs(2)).await.instances.len(), 1);
    d.shutdown().await;
}

#[async_std::test]
async fn maintenance_needs_the_token() {
    let d = discovery::spawn(shared::config::DiscoveryConfig {
        registration_token: Some("s3cret-token".into()),
        ..testkit::discovery_config()
    })
    .await
    .unwrap();
    let base = d.url();
    let a = Peer::start().await;
    let right = "authorization: Bearer s3cret-token\r\n";
    let body = json!({"namespace": "m", "host": "127.0.0.1", "port": a.port()}).to_string();
    let (status, _) = send(d.addr(), "POST", "/api/register", &body, right).await;
    assert_eq!(status, 201);
    wait_until("available", Duration::from_secs(5), || async {
        all_available(&base, "m", &[a.port()]).await
    })
    .await;
    for method in ["PUT", "DELETE"] {
        for wrong in [
            "",
            "authorization: Bearer s3cret-tokem\r\n",
            "authorization: Basic s3cret-token\r\n",
        ] {
            let (status, answer) = send(d.addr(), method, "/api/maintenance", &body, wrong).await;
            assert_eq!(status, 401, "{method} {wrong:?}: {answer}");
            assert_eq!(answer["error"]["code"], "unauthorized");
            let info = entry(&base, "m", a.port()).await;
            assert_eq!(info["maintenance"], false, "nothing changed: {info}");
        }
    }
    assert_eq!(lookups(&base, "m", 1).await, vec![a.port().to_string()]);
    let (status, answer) = send(d.addr(), "PUT", "/api/maintenance", &body, right).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(entry(&base, "m", a.port()).await["maintenance"], true);
    let (status, _) = send(d.addr(), "DELETE", "/api/maintenance", &body, right).await;
    assert_eq!(status, 200);
    assert_eq!(entry(&base, "m", a.port()).await["maintenance"], false);
    d.shutdown().await;
}

#[async_std::test]
async fn maintenance_of_an_unknown_instance_is_404() {
    let d = testkit::discovery().await;
    let base = d.url();
    register(&base, "m", 9).await;
    for (ns, port) in [("m", 10), ("other", 9)] {
        for on in [true, false] {
            let (status, answer) = maintenance(d.addr(), on, ns, port).await;
            assert_eq!(status, 404, "{answer}");
            assert_eq!(answer["error"]["code"], "unknown_instance");
        }
    }
    assert!(get(&format!("{base}/api/services"))
        .await
        .1
        .get("other")
        .is_none());
    d.shutdown().await;
}

#[async_std::test]
async fn maintenance_input_is_strict_like_register() {
    let d = testkit::discovery().await;
    let base = d.url();
    register(&base, "m", 9).await;
    for (body, field) in [
        (
            r#"{"namespace": "m", "host": "127.0.0.1", "port": "09"}"#,
            "port",
        ),
        (
            r#"{"namespace": "m", "host": "127.0.0.1", "port": 0}"#,
            "port",
        ),
        (
            r#"{"namespace": "", "host": "127.0.0.1", "port": 9}"#,
            "namespace",
        ),
        (r#"{"namespace": "m", "host": "a b", "port": 9}"#, "host"),
        (
            r#"{"namespace": "m", "host": "127.0.0.1", "port": 9, "x": 1}"#,
            "x",
        ),
        (
            r#"{"namespace": "m", "host": "127.0.0.1", "port": 9}{}"#,
            "",
        ),
        ("not json", ""),
    ] {
        let (status, answer) = send(d.addr(), "PUT", "/api/maintenance", body, "").await;
        assert_eq!(status, 400, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{body}: {answer}");
    }
    assert_eq!(entry(&base, "m", 9).await["maintenance"], false);
    d.shutdown().await;
}

/// One request seen by the load loop: when it was answered, and who served it (or why it failed).
/// The answer's time bounds when the gateway picked its instance; the start's would not, since
/// a request sent before a change can be routed after it.
type Seen = (Instant, Result<String, String>);

/// `clients` keep-alive clients POST through the gateway until `stop` is set.
fn load(
    addr: SocketAddr,
    clients: usize,
    stop: Arc<Mutex<bool>>,
) -> Vec<async_std::task::JoinHandle<Vec<Seen>>> {
    (0..clients)
        .map(|c| {
            let stop = stop.clone();
            async_std::task::spawn(async move {
                let mut seen = Vec::new();
                let mut conn: Option<Connection> = None;
                let mut req = Vec::new();
                let mut n = 0;
                while !*stop.lock().unwrap() {
                    n += 1;
                    let body = format!(r#"{{"client": {c}, "n": {n}}}"#).into_bytes();
                    if conn.is_none() {
                        conn = Connection::connect(addr).await.ok();
                    }
                    let Some(open) = conn.as_mut() else {
                        seen.push((Instant::now(), Err("connect failed".into())));
                        continue;
                    };
                    post(&mut req, "gateway", "/load", &body, "");
                    let outcome = match open.exchange(&req).await {
                        Ok(r) if r.status == 200 && r.body == body => {
                            if !r.keep_alive {
                                conn = None;
                            }
                            Ok(r.header("x-served-by").unwrap_or("?").to_string())
                        }
                        Ok(r) => {
                            conn = None;
                            Err(format!("{} {}", r.status, String::from_utf8_lossy(&r.body)))
                        }
                        Err(e) => {
                            conn = None;
                            Err(format!("transport: {e}"))
                        }
                    };
                    seen.push((Instant::now(), outcome));
                }
                seen
            })
        })
        .collect()
}

/// `discovery_registrations_total{outcome="renewed"}` from discovery's metrics.
async fn renewals(base: &str) -> f64 {
    let (_, text) = get(&format!("{base}/metrics")).await;
    let text = text.as_str().unwrap_or_default().to_string();
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix("discovery_registrations_total{outcome=\"renewed\"} ")?;
            rest.trim().parse().ok()
        })
        .unwrap_or(0.0)
}

#[async_std::test]
async fn maintenance_drains_one_of_three_behind_a_gateway_under_load_without_a_failed_request() {
    let d = testkit::discovery().await;
    let base = d.url();
    let apps = testkit::system::apps(&base, 3).await;
    let gateway = gateway::spawn(testkit::system::gateway_config(&base))
        .await
        .unwrap();
    let members: Vec<String> = apps.iter().map(|a| a.served_by().to_string()).collect();
    testkit::system::wait_ring(&gateway.admin_url(), &members, Duration::from_secs(5)).await;
    let target = members[0].clone();
    let port: u16 = target.rsplit_once(':').unwrap().1.parse().unwrap();

    let stop = Arc::new(Mutex::new(false));
    let clients = load(gateway.addr(), 4, stop.clone());
    async_std::task::sleep(Duration::from_millis(300)).await;

    let (status, answer) = maintenance(d.addr(), true, "service A", port).await;
    assert_eq!(status, 200, "{answer}");
    let on = Instant::now();
    // Its app re-registers every 300 ms: wait for several renewals past the first second.
    let renewed = renewals(&base).await;
    wait_until("the apps re-registered", Duration::from_secs(5), || async {
        on.elapsed() > Duration::from_millis(1500) && renewals(&base).await >= renewed + 9.0
    })
    .await;
    assert_eq!(entry(&base, "service A", port).await["maintenance"], true);
    // Discovery pushes the lift before its 200 reaches us, so the drained window
    // ends when the lift is sent, not when it is answered.
    let lifting = Instant::now();
    let (status, _) = maintenance(d.addr(), false, "service A", port).await;
    assert_eq!(status, 200);
    let off = Instant::now();
    wait_until(
        "the gateway's ring holds it again",
        Duration::from_secs(3),
        || async {
            testkit::system::ring(&gateway.admin_url(), "service A")
                .await
                .contains(&target)
        },
    )
    .await;
    async_std::task::sleep(Duration::from_millis(300)).await;
    *stop.lock().unwrap() = true;
    let mut seen = Vec::new();
    for c in clients {
        seen.extend(c.await);
    }
    let failures: Vec<&String> = seen.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let drained = seen.iter().filter(|(t, r)| {
        *t > on + Duration::from_secs(1) && *t < lifting && r.as_deref() == Ok(target.as_str())
    });
    assert_eq!(
        drained.count(),
        0,
        "the instance in maintenance got requests after 1 s"
    );
    let in_window = seen
        .iter()
        .filter(|(t, _)| *t > on + Duration::from_secs(1) && *t < lifting)
        .count();
    assert!(
        in_window > 20,
        "load ran during maintenance: {in_window} requests"
    );
    let back = seen
        .iter()
        .filter(|(t, r)| *t > off && r.as_deref() == Ok(target.as_str()))
        .count();
    assert!(back > 0, "lifted: it serves again");
    gateway.shutdown().await;
    for a in apps {
        a.shutdown().await;
    }
    d.shutdown().await;
}
