//! What the tests share: a running system and options aimed at it.

use loadtest::Options;
use shared::runstate::RunState;
use std::sync::OnceLock;
use std::time::Duration;
use testkit::system::{app_config, gateway_config, wait_ring};
use testkit::tempdir::TempFile;

/// Discovery, three apps and a gateway whose ring holds every app.
pub struct System {
    pub discovery: discovery::Handle,
    pub apps: Vec<app::Handle>,
    pub gateway: gateway::Handle,
}

impl System {
    pub async fn start(tweak: impl FnOnce(&mut shared::config::GatewayConfig)) -> System {
        System::start_with_token(None, tweak).await
    }

    /// With `token`, discovery requires it and the apps send it.
    pub async fn start_with_token(
        token: Option<&str>,
        tweak: impl FnOnce(&mut shared::config::GatewayConfig),
    ) -> System {
        let discovery = discovery::spawn(shared::config::DiscoveryConfig {
            registration_token: token.map(str::to_string),
            ..testkit::discovery_config()
        })
        .await
        .unwrap();
        let mut apps = Vec::new();
        for _ in 0..3 {
            let config = shared::config::AppConfig {
                registration_token: token.map(str::to_string),
                ..app_config(&discovery.url())
            };
            apps.push(app::spawn(config).await.unwrap());
        }
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

    /// Options for a run of `duration` against this system (no state file).
    pub fn options(&self, duration: Duration) -> Options {
        Options {
            url: self.gateway.url(),
            admin_url: self.gateway.admin_url(),
            discovery_url: self.discovery.url(),
            state: std::env::temp_dir().join("loadtest-tests-no-state-file.json"),
            duration,
            connections: 16,
            drain_timeout: Duration::from_secs(5),
            ..Options::default()
        }
    }

    /// Writes a state file as `just up` does, naming each app's admin URL;
    /// removed when the answer is dropped (also when the test fails).
    pub fn write_state(&self, name: &str) -> TempFile {
        self.write_state_with(name, |_| {})
    }

    /// Writes a state file as `just up` does, changed by `tweak`; removed
    /// when the answer is dropped.
    pub fn write_state_with(&self, name: &str, tweak: impl FnOnce(&mut RunState)) -> TempFile {
        let path = TempFile::new(format!("loadtest-{name}-{}.json", std::process::id()));
        let state = RunState {
            discovery_url: self.discovery.url(),
            gateway_url: self.gateway.url(),
            admin_url: self.gateway.admin_url(),
            app_admin_urls: self
                .apps
                .iter()
                .map(|a| (a.served_by().to_string(), a.admin_url()))
                .collect(),
            ..RunState::default()
        };
        let mut state = state;
        tweak(&mut state);
        state.save(&path).unwrap();
        path
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
