//! What the tests share: a running system and options aimed at it.

use loadtest::Options;
use std::sync::OnceLock;
use std::time::Duration;
use testkit::system::{apps, gateway_config, wait_ring};

/// Discovery, three apps and a gateway whose ring holds every app.
pub struct System {
    pub discovery: discovery::Handle,
    pub apps: Vec<app::Handle>,
    pub gateway: gateway::Handle,
}

impl System {
    pub async fn start(tweak: impl FnOnce(&mut shared::config::GatewayConfig)) -> System {
        let discovery = testkit::discovery().await;
        let apps = apps(&discovery.url(), 3).await;
        let mut config = gateway_config(&discovery.url());
        tweak(&mut config);
        let gateway = gateway::spawn(config).await.unwrap();
        wait_ring(
            &gateway.admin_url(),
            &members(&apps),
            Duration::from_secs(5),
        )
        .await;
        System {
            discovery,
            apps,
            gateway,
        }
    }

    /// Options for a run of `duration` against this system.
    pub fn options(&self, duration: Duration) -> Options {
        Options {
            url: self.gateway.url(),
            admin_url: self.gateway.admin_url(),
            discovery_url: self.discovery.url(),
            duration,
            connections: 16,
            drain_timeout: Duration::from_secs(5),
            ..Options::default()
        }
    }

    pub async fn stop(self) {
        self.gateway.shutdown().await;
        for a in self.apps {
            a.shutdown().await;
        }
        self.discovery.shutdown().await;
    }
}

/// `host:port` of each app, as in `x-served-by` and the gateway's ring.
pub fn members(apps: &[app::Handle]) -> Vec<String> {
    apps.iter().map(|a| a.served_by().to_string()).collect()
}

/// One test's system and load at a time.
pub async fn exclusive() -> async_std::sync::MutexGuard<'static, ()> {
    static LOCK: OnceLock<async_std::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| async_std::sync::Mutex::new(()))
        .lock()
        .await
}
