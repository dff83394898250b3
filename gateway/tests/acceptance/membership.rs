//! Acceptance 4: a new instance gets traffic within 1 s of discovery marking it
//! available; a deregistered one stops getting it within 1 s.

use crate::common::{Client, System};
use std::time::{Duration, Instant};
use testkit::client::{post, register, status_of};
use testkit::raw::{RawInstance, Script};

#[async_std::test]
async fn instances_join_and_leave_the_traffic_within_a_second() {
    let sys = System::start(2).await;
    let base = sys.discovery.url();
    let raw = RawInstance::start(Script::Echo).await;
    let port = raw.port();
    register(&base, "service A", port).await;
    testkit::wait_until(
        "discovery marks the new instance available",
        Duration::from_secs(5),
        || async { status_of(&base, "service A", port).await.as_deref() == Some("available") },
    )
    .await;
    let available = Instant::now();
    let mut client = Client::new(sys.gateway.addr());
    let before = raw.received().len();
    while raw.received().len() == before {
        assert!(
            available.elapsed() < Duration::from_secs(1),
            "no traffic 1 s after it became available"
        );
        let res = client.post("/", b"{}").await.unwrap();
        assert_eq!(res.status, 200);
    }

    let (status, _) = post(
        &format!("{base}/api/deregister"),
        &format!(r#"{{"namespace": "service A", "port": {port}}}"#),
    )
    .await;
    assert_eq!(status, 200);
    let gone = Instant::now();
    let mut last_seen = None;
    while gone.elapsed() < Duration::from_millis(1500) {
        let n = raw.received().len();
        let res = client.post("/", b"{}").await.unwrap();
        assert_eq!(res.status, 200);
        if raw.received().len() > n {
            last_seen = Some(gone.elapsed());
        }
    }
    assert!(
        last_seen.is_none_or(|t| t < Duration::from_secs(1)),
        "still served at {last_seen:?}"
    );
    sys.stop().await;
}
