//! What the gateway tests share: a running system and a client loop.

use shared::http1::client::{post, Connection, Response};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use testkit::raw::{RawInstance, Script};
use testkit::system::{apps, gateway_config, wait_ring};

/// Discovery, apps and a gateway whose ring holds every app.
pub struct System {
    pub discovery: discovery::Handle,
    pub apps: Vec<app::Handle>,
    pub gateway: gateway::Handle,
}

impl System {
    pub async fn start(n: usize) -> System {
        Self::start_with(n, |_| {}).await
    }

    pub async fn start_with(
        n: usize,
        tweak: impl FnOnce(&mut shared::config::GatewayConfig),
    ) -> System {
        let discovery = testkit::discovery().await;
        let apps = apps(&discovery.url(), n).await;
        Self::with_gateway(discovery, apps, tweak).await
    }

    /// A gateway (configured by `tweak`) in front of `apps`, once its ring holds them all.
    async fn with_gateway(
        discovery: discovery::Handle,
        apps: Vec<app::Handle>,
        tweak: impl FnOnce(&mut shared::config::GatewayConfig),
    ) -> System {
        let mut config = gateway_config(&discovery.url());
        tweak(&mut config);
        let gateway = gateway::spawn(config).await.unwrap();
        let members: Vec<String> = apps.iter().map(|a| a.served_by().to_string()).collect();
        wait_ring(&gateway.admin_url(), &members, Duration::from_secs(5)).await;
        System {
            discovery,
            apps,
            gateway,
        }
    }

    /// One app per weight, registered with it, and a gateway (configured by
    /// `tweak`) whose ring holds them all.
    pub async fn start_weighted(
        weights: &[u32],
        tweak: impl FnOnce(&mut shared::config::GatewayConfig),
    ) -> System {
        let discovery = testkit::discovery().await;
        let mut apps = Vec::new();
        for weight in weights {
            apps.push(weighted_app(&discovery.url(), *weight).await);
        }
        Self::with_gateway(discovery, apps, tweak).await
    }

    /// Starts one more app with `weight` and waits until the gateway's ring
    /// has it; its `host:port`.
    pub async fn add_app(&mut self, weight: u32) -> String {
        let app = weighted_app(&self.discovery.url(), weight).await;
        let added = app.served_by().to_string();
        self.apps.push(app);
        let members: Vec<String> = self
            .apps
            .iter()
            .map(|a| a.served_by().to_string())
            .collect();
        wait_ring(&self.admin(), &members, Duration::from_secs(5)).await;
        added
    }

    pub fn admin(&self) -> String {
        self.gateway.admin_url()
    }

    pub async fn stop(self) {
        self.gateway.shutdown().await;
        for a in self.apps {
            a.shutdown().await;
        }
        self.discovery.shutdown().await;
    }
}

/// An app that registers with `weight`.
async fn weighted_app(discovery_url: &str, weight: u32) -> app::Handle {
    let config = shared::config::AppConfig {
        weight,
        ..testkit::system::app_config(discovery_url)
    };
    app::spawn(config).await.unwrap()
}

/// Discovery, one scripted instance per script, and a gateway routing to them all.
pub async fn raw_system(
    scripts: Vec<Script>,
    tweak: impl FnOnce(&mut shared::config::GatewayConfig),
) -> (discovery::Handle, Vec<RawInstance>, gateway::Handle) {
    let d = testkit::discovery().await;
    let mut raws = Vec::new();
    for script in scripts {
        let r = RawInstance::start(script).await;
        testkit::client::register(&d.url(), "service A", r.port()).await;
        raws.push(r);
    }
    let mut config = gateway_config(&d.url());
    tweak(&mut config);
    let g = gateway::spawn(config).await.unwrap();
    let members: Vec<String> = raws
        .iter()
        .map(|r| format!("127.0.0.1:{}", r.port()))
        .collect();
    wait_ring(&g.admin_url(), &members, Duration::from_secs(5)).await;
    (d, raws, g)
}

/// `clients` keep-alive clients at once, `each` echoed POSTs apiece to
/// `gateway`: how many answers each instance served.
pub async fn served_by_concurrent(
    gateway: std::net::SocketAddr,
    clients: usize,
    each: usize,
) -> HashMap<String, usize> {
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            async_std::task::spawn(async move {
                let mut client = Client::new(gateway);
                let mut seen = Vec::new();
                for n in 0..each {
                    let sent = body(c, n);
                    let res = client.post("/", &sent).await.unwrap();
                    assert_eq!((res.status, &res.body), (200, &sent));
                    seen.push(res.header("x-served-by").unwrap().to_string());
                }
                seen
            })
        })
        .collect();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        for by in t.await {
            *counts.entry(by).or_default() += 1;
        }
    }
    counts
}

/// A JSON body that says who sent it, so an echo can be checked exactly.
pub fn body(client: usize, n: usize) -> Vec<u8> {
    format!(
        r#"{{"client": {client}, "n": {n}, "pad": "{}", "f": 1.0}}"#,
        "x".repeat(n % 50)
    )
    .into_bytes()
}

/// POSTs on one keep-alive connection, reconnecting when the gateway closes it.
pub struct Client {
    addr: std::net::SocketAddr,
    conn: Option<Connection>,
    req: Vec<u8>,
}

impl Client {
    pub fn new(addr: std::net::SocketAddr) -> Client {
        Client {
            addr,
            conn: None,
            req: Vec::new(),
        }
    }

    pub async fn post(&mut self, path: &str, body: &[u8]) -> std::io::Result<Response> {
        if self.conn.is_none() {
            self.conn = Some(Connection::connect(self.addr).await?);
        }
        post(&mut self.req, "gateway", path, body, "");
        let conn = self.conn.as_mut().unwrap();
        let res = conn.exchange(&self.req).await;
        match &res {
            Ok(r) if r.keep_alive => {}
            _ => self.conn = None,
        }
        res
    }
}

/// What a load loop saw.
#[derive(Default, Debug)]
pub struct Tally {
    pub ok: usize,
    pub failures: Vec<String>,
    pub served_by: HashMap<String, usize>,
    pub slowest: Duration,
}

/// `clients` concurrent clients POST until `until` says stop; every answer must be a 200 echo.
pub async fn load(addr: std::net::SocketAddr, clients: usize, until: Instant) -> Tally {
    let mut tasks = Vec::new();
    for c in 0..clients {
        tasks.push(async_std::task::spawn(async move {
            let mut client = Client::new(addr);
            let mut t = Tally::default();
            let mut n = 0;
            while Instant::now() < until {
                n += 1;
                let sent = body(c, n);
                let started = Instant::now();
                match client.post("/load", &sent).await {
                    Ok(r) if r.status == 200 && r.body == sent => {
                        t.ok += 1;
                        let by = r.header("x-served-by").unwrap_or("?").to_string();
                        *t.served_by.entry(by).or_default() += 1;
                    }
                    Ok(r) => t.failures.push(format!(
                        "{} {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    )),
                    Err(e) => t.failures.push(format!("transport: {e}")),
                }
                t.slowest = t.slowest.max(started.elapsed());
            }
            t
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await;
        all.ok += t.ok;
        all.failures.extend(t.failures);
        all.slowest = all.slowest.max(t.slowest);
        for (k, v) in t.served_by {
            *all.served_by.entry(k).or_default() += v;
        }
    }
    all
}
