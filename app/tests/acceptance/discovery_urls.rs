//! Several discovery URLs (`--discovery-url A,B`): the app registers with a
//! live one, passing over a dead one; renews there while the other stays
//! dead, without trying it again; moves when its discovery dies and another
//! listed one is up; and on SIGTERM deregisters from every discovery that
//! took it. The app is the real binary; the discoveries run in-process, on
//! ports the test chooses, so one can die and another come up.

use crate::support::{free_port, instances, wait_for_status, INTERVAL};
use shared::config::DiscoveryConfig;
use std::time::Duration;
use testkit::procs::Proc;
use testkit::wait_until;

/// `discovery_registrations_total{outcome="renewed"}` at `base`.
async fn renewed(base: &str) -> f64 {
    let (_, metrics) = testkit::client::get(&format!("{base}/metrics")).await;
    metrics
        .as_str()
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"discovery_registrations_total{outcome="renewed"} "#)
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0.0)
}

/// A discovery on `listen` (a chosen port, or `127.0.0.1:0`).
async fn discovery_on(listen: String) -> discovery::Handle {
    discovery::spawn(DiscoveryConfig {
        listen,
        ..testkit::discovery_config()
    })
    .await
    .unwrap()
}

#[async_std::test]
async fn an_app_registers_with_a_live_discovery_and_moves_when_it_dies() {
    let first_listen = format!("127.0.0.1:{}", free_port());
    let second = testkit::discovery().await;
    let second_base = second.url();
    let second_listen = second.addr().to_string();
    let urls = format!("http://{first_listen},{second_base}");
    let interval = format!("{}ms", INTERVAL.as_millis());
    let mut p = Proc::start(
        "app",
        &[
            "--port",
            "0",
            "--discovery-url",
            &urls,
            "--register-interval",
            &interval,
        ],
    );
    let port = p.listening("app").await.port();
    wait_for_status(
        &second_base,
        "service A",
        "127.0.0.1",
        port,
        "available",
        Duration::from_secs(5),
    )
    .await;
    p.wait_for_line("registered with discovery", Duration::from_secs(5))
        .await;
    // It renews with the live one while the first stays dead.
    let before = renewed(&second_base).await;
    wait_until(
        "three renewals at the live discovery",
        INTERVAL * 10,
        || async { renewed(&second_base).await >= before + 3.0 },
    )
    .await;
    assert_eq!(instances(&second_base, "service A").await.len(), 1);

    // The live one dies; the first comes up: the app moves to it.
    second.shutdown().await;
    let first = discovery_on(first_listen.clone()).await;
    let first_base = first.url();
    wait_for_status(
        &first_base,
        "service A",
        "127.0.0.1",
        port,
        "available",
        Duration::from_secs(5),
    )
    .await;
    let moved = p.wait_for_line("instead", Duration::from_secs(5)).await;
    assert!(moved.contains(&first_base), "{moved}");
    // And stays there, renewing, while the second stays dead.
    wait_until(
        "two renewals at the first discovery",
        INTERVAL * 10,
        || async { renewed(&first_base).await >= 2.0 },
    )
    .await;

    // The second comes back (empty: a memory store). The app stays where it
    // is, but the second took it once, so SIGTERM tells both.
    let second = discovery_on(second_listen).await;
    let second_base = second.url();
    async_std::task::sleep(INTERVAL * 3).await;
    assert!(
        instances(&second_base, "service A").await.is_empty(),
        "the app stays with the discovery that works"
    );
    p.terminate();
    let exit = p.exited(Duration::from_secs(10)).await;
    assert!(exit.success(), "exit {exit:?}: {}", p.output());
    assert!(instances(&first_base, "service A").await.is_empty());
    let line = Duration::from_secs(5);
    let removed = p.wait_for_line("deregistered from discovery", line).await;
    assert!(removed.contains(&first_base), "{removed}");
    let unknown = p
        .wait_for_line("discovery did not know this instance", line)
        .await;
    assert!(unknown.contains(&second_base), "{unknown}");
    first.shutdown().await;
    second.shutdown().await;
}
