//! The integration tests' harness: real services on port 0, real sockets, real
//! HTTP. Services run in-process through their `spawn`, or as child processes
//! of the workspace's binaries when a test needs to signal or kill them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod browser;
pub mod client;
pub mod etcd;
pub mod layers;
pub mod peer;
pub mod pki;
pub mod procs;
pub mod raw;
pub mod script;
pub mod seed;
pub mod system;
pub mod tempdir;

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `cond` every 10 ms until it is true; panics naming `what` after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        async_std::task::sleep(Duration::from_millis(10)).await;
    }
}

/// A discovery config for tests: any free port, fast checks.
pub fn discovery_config() -> shared::config::DiscoveryConfig {
    shared::config::DiscoveryConfig {
        listen: "127.0.0.1:0".into(),
        health_check_time_interval: Duration::from_millis(200),
        timeout_threshold: Duration::from_millis(100),
        watch_keepalive: Duration::from_secs(1),
        // No warm-up: these tests expect removals from a discovery they just
        // started; gateway/tests/acceptance/warming.rs sets one.
        warmup: Some(Duration::ZERO),
        drain_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

/// Starts discovery in-process with `discovery_config()`.
pub async fn discovery() -> discovery::Handle {
    discovery::spawn(discovery_config())
        .await
        .expect("discovery starts")
}
