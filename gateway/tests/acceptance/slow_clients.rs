//! Acceptance 6: clients that send half a head and stall do not stop others
//! being served, and are cut off after client_header_timeout with a 408.

use crate::common::{body, Client, System};
use async_std::io::WriteExt;
use async_std::net::TcpStream;
use shared::http1::client::Connection;
use std::time::{Duration, Instant};

#[async_std::test]
async fn half_heads_are_cut_off_and_do_not_block_others() {
    let sys = System::start(2).await;
    let timeout = testkit::system::gateway_config("http://x").client_header_timeout;
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(sys.gateway.addr()).await.unwrap();
        s.write_all(b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Le")
            .await
            .unwrap();
        stalled.push(s);
    }
    let started = Instant::now();
    let mut client = Client::new(sys.gateway.addr());
    for n in 0..20 {
        let sent = body(0, n);
        let res = client.post("/", &sent).await.unwrap();
        assert_eq!((res.status, &res.body), (200, &sent));
    }
    assert!(
        started.elapsed() < timeout,
        "others were held up: {:?}",
        started.elapsed()
    );

    let mut cut = Vec::new();
    for s in stalled {
        cut.push(async_std::task::spawn(async move {
            let mut conn = Connection::from_stream(s);
            let answer = conn.read_to_close().await.unwrap();
            (
                Instant::now(),
                String::from_utf8_lossy(&answer).into_owned(),
            )
        }));
    }
    for c in cut {
        let (at, answer) = async_std::future::timeout(timeout * 4, c)
            .await
            .expect("stalled client cut off");
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        let waited = at.duration_since(started);
        assert!(
            waited >= timeout - Duration::from_millis(200),
            "cut off too early: {waited:?}"
        );
    }
    sys.stop().await;
}
