//! Acceptance 7: SIGTERM during load: requests in flight complete, exit 0.

use crate::faults::start_app;
use shared::http1::client::{post, Connection};
use std::time::Duration;
use testkit::procs::Proc;

#[async_std::test]
async fn sigterm_lets_requests_in_flight_finish_and_exits_zero() {
    let d = testkit::discovery().await;
    let (app, app_addr) = start_app(&d.url()).await;
    let app_admin = app.listening("app admin").await;
    let config = format!(
        r#"{{"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", "discovery_url": "{}", "upstream_timeout": "5s"}}"#,
        d.url()
    );
    let path = testkit::tempdir::TempFile::new(format!("gw-term-{}.json", std::process::id()));
    std::fs::write(&path, config).unwrap();
    let mut gw = Proc::start("gateway", &["--config", path.to_str().unwrap()]);
    let addr = gw.listening("gateway").await;
    let admin = format!("http://{}", gw.listening("gateway admin").await);
    testkit::system::wait_ring(
        &admin,
        std::slice::from_ref(&app_addr),
        Duration::from_secs(10),
    )
    .await;

    // Every business request now takes 1 s at the app.
    let (status, _) = testkit::client::call(
        "PUT",
        &format!("http://{app_admin}/chaos"),
        Some(r#"{"delay_ms": 1000}"#),
    )
    .await;
    assert_eq!(status, 200);
    let mut in_flight = Vec::new();
    for i in 0..8 {
        in_flight.push(async_std::task::spawn(async move {
            let mut conn = Connection::connect(addr).await.unwrap();
            let mut req = Vec::new();
            let sent = format!("{{\"in_flight\": {i}}}");
            post(&mut req, "gw", "/", sent.as_bytes(), "");
            let res = conn.exchange(&req).await.unwrap();
            (
                res.status,
                res.body == sent.as_bytes(),
                res.header("connection").map(str::to_string),
            )
        }));
    }
    testkit::wait_until(
        "all eight are in flight",
        Duration::from_secs(5),
        || async { testkit::system::metric(&admin, "gateway_client_connections").await >= 8.0 },
    )
    .await;
    gw.terminate();
    for r in in_flight {
        let (status, echoed, connection) = r.await;
        assert_eq!(status, 200);
        assert!(echoed);
        assert_eq!(
            connection.as_deref(),
            Some("close"),
            "answers during shutdown close the connection"
        );
    }
    let exit = gw.exited(Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit:?}\n{}", gw.output());
    assert!(
        Connection::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
    drop(app);
    d.shutdown().await;
}
