//! A timed-out try fails over through
//! discovery's lookup (or the ring when discovery does not answer), under
//! the retry policy for POSTs.

use crate::common::{load, raw_system, Client, System};
use std::time::{Duration, Instant};
use testkit::raw::{RawInstance, Script};
use testkit::system::{gateway_config, metric, ring};

const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(500);

fn lookups(outcome: &str) -> String {
    format!("gateway_discovery_lookups_total{{outcome=\"{outcome}\"}}")
}

#[async_std::test]
async fn a_slow_app_is_failed_over_through_discovery_until_it_leaves_the_ring() {
    let sys = System::start_with(3, |c| c.upstream_timeout = UPSTREAM_TIMEOUT).await;
    let admin = sys.admin();
    let slow = sys.apps[1].served_by().to_string();
    let (status, _) = testkit::client::call(
        "PUT",
        &format!("{}/chaos", sys.apps[1].admin_url()),
        Some(r#"{"delay_ms": 3000}"#),
    )
    .await;
    assert_eq!(status, 200);

    let until = Instant::now() + Duration::from_secs(3);
    let tally = load(sys.gateway.addr(), 4, until).await;
    assert!(
        tally.failures.is_empty(),
        "{:?}",
        &tally.failures[..tally.failures.len().min(5)]
    );
    // One try times out, the retry answers: never much more than that.
    let bound = UPSTREAM_TIMEOUT + Duration::from_millis(200) + Duration::from_millis(300);
    assert!(
        tally.slowest <= bound,
        "slowest request took {:?} (bound {bound:?})",
        tally.slowest
    );
    assert!(
        metric(&admin, &lookups("ok")).await >= 1.0,
        "timeouts asked discovery"
    );
    assert!(metric(&admin, "gateway_failovers_total{cause=\"timeout\"}").await >= 1.0);
    assert!(
        !ring(&admin, "service A").await.contains(&slow),
        "discovery's verdict reached the ring"
    );

    // Out of the ring: no more timeouts, no more lookups.
    let asked = metric(&admin, &lookups("ok")).await;
    let tally = load(
        sys.gateway.addr(),
        4,
        Instant::now() + Duration::from_secs(1),
    )
    .await;
    assert!(tally.failures.is_empty());
    assert!(
        tally.slowest < UPSTREAM_TIMEOUT,
        "a request still waited on the slow app"
    );
    assert_eq!(
        metric(&admin, &lookups("ok")).await,
        asked,
        "lookups went on"
    );
    assert!(metric(&admin, "gateway_attempts_per_request_count").await > 0.0);
    sys.stop().await;
}

/// Two echoing instances and one that never answers, all available at discovery.
async fn with_a_hanging_instance(
    retry_non_idempotent: bool,
) -> (discovery::Handle, Vec<RawInstance>, gateway::Handle) {
    let scripts = vec![Script::Hang, Script::Echo, Script::Echo];
    raw_system(scripts, |c| {
        c.upstream_timeout = UPSTREAM_TIMEOUT;
        c.retry_non_idempotent = retry_non_idempotent;
    })
    .await
}

#[async_std::test]
async fn without_retry_non_idempotent_a_timed_out_post_is_a_504_sent_once() {
    let (d, raws, g) = with_a_hanging_instance(false).await;
    let mut client = Client::new(g.addr());
    let mut timeouts = 0;
    for i in 0..9 {
        let body = format!("{{\"payment\": {i}}}");
        let res = client.post("/pay", body.as_bytes()).await.unwrap();
        match res.status {
            200 => assert_eq!(res.body, body.as_bytes()),
            504 => {
                timeouts += 1;
                let text = String::from_utf8_lossy(&res.body);
                assert!(
                    text.contains("upstream_timeout") && text.contains("not retried"),
                    "{text}"
                );
                assert_eq!(
                    res.header("x-request-id").map(|id| text.contains(id)),
                    Some(true)
                );
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        timeouts, 3,
        "round robin sends one in three to the hanging instance"
    );
    let hung = raws[0].received();
    assert_eq!(hung.len(), 3, "each timed-out POST reached it once");
    let mut bodies: Vec<_> = hung.iter().map(|r| r.body.clone()).collect();
    bodies.dedup();
    assert_eq!(bodies.len(), 3);
    let echoed: usize = raws[1..].iter().map(|r| r.received().len()).sum();
    assert_eq!(echoed, 6, "no timed-out POST was sent anywhere else");
    g.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn with_retry_non_idempotent_the_post_reaches_the_next_instance() {
    let (d, raws, g) = with_a_hanging_instance(true).await;
    let mut client = Client::new(g.addr());
    for i in 0..9 {
        let body = format!("{{\"payment\": {i}}}");
        let res = client.post("/pay", body.as_bytes()).await.unwrap();
        assert_eq!((res.status, res.body.as_slice()), (200, body.as_bytes()));
    }
    let hung = raws[0].received().len();
    let echoed: usize = raws[1..].iter().map(|r| r.received().len()).sum();
    assert_eq!(hung, 3);
    assert_eq!(
        echoed, 9,
        "every POST was answered by an echoing instance, the three retried once"
    );
    g.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn when_discovery_does_not_answer_a_timeout_falls_back_to_the_ring() {
    let (d, _raws, g) = with_a_hanging_instance(true).await;
    let admin = g.admin_url();
    // Discovery goes away, and something that accepts but never answers takes its port.
    let addr = d.addr();
    d.shutdown().await;
    let silent = async_std::net::TcpListener::bind(addr).await.unwrap();
    let held = async_std::task::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            open.push(s);
        }
    });
    let lookup_timeout = gateway_config("http://x").lookup_timeout;
    let mut client = Client::new(g.addr());
    for i in 0..6 {
        let body = format!("{{\"n\": {i}}}");
        let started = Instant::now();
        let res = client.post("/", body.as_bytes()).await.unwrap();
        assert_eq!((res.status, res.body.as_slice()), (200, body.as_bytes()));
        let bound = UPSTREAM_TIMEOUT + lookup_timeout + Duration::from_millis(400);
        assert!(
            started.elapsed() <= bound,
            "took {:?}, bound {bound:?}",
            started.elapsed()
        );
    }
    assert!(
        metric(&admin, &lookups("timeout")).await >= 1.0,
        "the lookup timed out"
    );
    g.shutdown().await;
    drop(held);
}
