//! The gateway: clients POST to it, and it forwards each request round robin
//! to an available instance of the routed namespace.
//!
//! A house with floors; each imports only from the floors below it:
//!
//! - `runtime/`: each worker thread's task queue and epoll, its sockets,
//!   deadlines, per-worker slots and the client port's listening sockets.
//! - `observe/`: counters, client traffic and per-instance statistics the
//!   request path bumps.
//! - `http/`: HTTP/1.1 on the client side (the codec, the request target,
//!   the session that is the one writer of bytes to a client, the bound on
//!   buffered request bytes).
//! - `balance/`: rings of instances per namespace, how a member is chosen,
//!   pooled connections to each, passive health.
//! - `idempotency/`: `Idempotency-Key` records (key, fingerprint, what a
//!   finished request leaves) behind one store trait, in memory or etcd.
//! - `context`: what every task shares, and the newest generation of it.
//! - `discover/`: the watch streams that keep rings in step with discovery,
//!   and the source of a request's next instance (the ring, or a lookup).
//! - `proxy/`: the request path itself: worker threads, accept, a client
//!   connection, failover under the retry policy, one forwarded try.
//! - `admin/`: the admin port (`/status`, `/metrics`, the console,
//!   `/ready`) and configuration reloads.
//!
//! This file starts and stops it all ([`spawn`], [`Handle`]). Hostile
//! input on either side is bounded where it is read, and a panic ends one
//! connection or restarts one background loop, never the process
//! (`gateway_panics_total`).

mod admin;
mod balance;
mod context;
mod discover;
mod http;
mod idempotency;
mod observe;
mod proxy;
mod runtime;

pub use admin::reload;
pub use context::Context;

use async_std::task::{self, JoinHandle};
use futures_lite::FutureExt;
use shared::config::GatewayConfig;
use shared::panics::{supervise, Panics};
use shared::serve::Served;
use shared::shutdown::{Tracker, Trigger};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A running gateway.
#[derive(Debug)]
pub struct Handle {
    addr: SocketAddr,
    /// The TLS port's address, with a `tls` key.
    tls_addr: Option<SocketAddr>,
    ctx: Arc<Context>,
    workers: proxy::workers::Workers,
    connections: Tracker,
    admin: Served,
    background: Vec<JoinHandle<()>>,
}

impl Handle {
    /// Where clients send requests.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where HTTPS clients connect (`tls.listen`), if the gateway has a TLS port.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Where `/metrics` and `/status` are.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.addr()
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin.addr())
    }

    /// The context in force (the newest after reloads).
    pub fn context(&self) -> Arc<Context> {
        self.ctx.current()
    }

    /// Swaps in `next` (a config read again, flags applied), or refuses it
    /// and keeps the old one; see [`reload`].
    pub async fn reload(&self, next: Result<GatewayConfig, String>) -> Result<(), String> {
        reload::apply(&self.ctx, next).await
    }

    /// Stops accepting, lets requests in progress finish within `drain_timeout`,
    /// cuts the rest, then stops the watchers and the admin port.
    ///
    /// The client sockets close before any connection hears of the stop: a
    /// client told `Connection: close` reconnects, and its new connection must
    /// find only the peers' sockets on a shared port, not this closing one
    /// (whose queued connections the kernel would reset).
    pub async fn shutdown(self) {
        let ctx = self.ctx.current();
        ctx.gate.close();
        ctx.metrics.ready.set(0);
        self.workers.stopped_accepting().await;
        ctx.stop.fire();
        if !self.connections.drained(ctx.config.drain_timeout).await {
            log::warn!(left = self.connections.live(); "drain time over, closing connections");
        }
        ctx.kill.fire();
        self.connections.drained(Duration::from_secs(1)).await;
        self.workers.finish().await;
        let reloaded = ctx.live.stop();
        for task in self.background.into_iter().chain(reloaded) {
            task.await;
        }
        self.admin.shutdown(Duration::from_secs(1)).await;
        log::info!("gateway stopped");
    }
}

/// Sizes async-std's global executor, which runs only the background tasks
/// (watch, reaper, watchdog, admin port; requests run on the workers, `proxy::workers`):
/// one thread, unless ASYNC_STD_THREAD_COUNT says otherwise. It only takes
/// effect before the first task is spawned, so `main` calls it first thing.
pub fn init_runtime() {
    let config = async_global_executor::GlobalExecutorConfig::default()
        .with_env_var("ASYNC_STD_THREAD_COUNT")
        .with_min_threads(1)
        .with_max_threads(1);
    async_global_executor::init_with_config(config);
}

/// Reads and checks the files `config` names (the TLS port's certificates
/// and keys, each route's `upstream_tls` CA and client certificate) as a
/// start would, binding and contacting nothing: `--check-config` calls it.
pub fn check_files(config: &GatewayConfig) -> Result<(), String> {
    if let Some(t) = &config.tls {
        http::tls::load_certificates(t)?;
    }
    http::upstream_tls::load_all(&config.routes)?;
    discovery_tls(config)?;
    Ok(())
}

/// The CA file an `https://` discovery_url is verified against, read.
fn discovery_tls(config: &GatewayConfig) -> Result<Option<Arc<shared::https::ClientTls>>, String> {
    config
        .discovery_ca
        .as_deref()
        .map(|ca| {
            shared::https::ClientTls::load(ca, None).map_err(|e| format!("discovery_ca: {e}"))
        })
        .transpose()
}

/// Starts the gateway on `config.listen` and its admin port on `config.admin_listen`.
pub async fn spawn(config: GatewayConfig) -> std::io::Result<Handle> {
    config
        .validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    // Certificates first: a bad one stops the start, naming its file.
    let tls = match &config.tls {
        None => None,
        Some(t) => {
            let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
            let certificates = http::tls::load_certificates(t).map_err(invalid)?;
            Some(Arc::new(
                http::tls::Tls::new(certificates).map_err(invalid)?,
            ))
        }
    };
    let upstream_tls = http::upstream_tls::load_all(&config.routes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let discovery_tls = discovery_tls(&config)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let workers = runtime::slots::count(config.worker_threads);
    runtime::set_idle_spin(config.idle_spin);
    let listeners = runtime::listen::bind_all(&config.listen, config.reuse_port, workers)?;
    let addr = match listeners.first() {
        Some(l) => l.local_addr()?,
        None => return Err(std::io::Error::other("no listener bound")),
    };
    let tls_listeners = match &config.tls {
        Some(t) => runtime::listen::bind_all(&t.listen, config.reuse_port, workers)?,
        None => Vec::new(),
    };
    let tls_addr = tls_listeners
        .first()
        .map(runtime::listen::Bound::local_addr)
        .transpose()?;
    let gate = Arc::new(runtime::listen::Gate::new(
        listeners.iter().chain(&tls_listeners),
        addr,
    )?);
    let router = Arc::new(balance::ring::Router::new(&config.routes));
    let setting = shared::allowed::Setting::GATEWAY;
    let allowed = shared::allowed::AllowedHosts::parse_setting(setting, &config.allowed_upstreams)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let limits = balance::pool::Limits {
        max_idle: config.pool_max_idle,
        idle_timeout: config.pool_idle_timeout,
        passive: balance::passive::Policy {
            failures: config.passive_health_failures,
            cooldown: config.connect_cooldown,
        },
    };
    let upstreams = Arc::new(balance::pool::Upstreams::new(limits, allowed));
    for (namespace, tls) in upstream_tls {
        upstreams.set_tls(&namespace, tls);
    }
    // Bound before the discovery client is built: every watch stream names
    // this gateway by its admin URL (`x-gateway-id`), which discovery's
    // console shows beside the stream's address.
    let admin_listener = shared::serve::bind(&config.admin_listen).await?;
    let gateway_id = format!("http://{}", admin_listener.local_addr()?);
    let discovery = shared::https::client(
        surf::Config::new()
            .set_http_keep_alive(false)
            .set_tcp_no_delay(true)
            .set_timeout(None)
            .add_header("x-gateway-id", gateway_id.as_str())
            .map_err(|e| {
                std::io::Error::other(format!("cannot build the discovery client: {e}"))
            })?,
        discovery_tls,
    )
    .map_err(|e| std::io::Error::other(format!("cannot build the discovery client: {e}")))?;
    let panics = Panics::new();
    let budget = Arc::new(http::budget::Budget::new(config.max_buffered_bytes));
    let live = Arc::new(context::Live::default());
    let metrics = Arc::new(observe::counters::Metrics::new());
    let idempotency = Arc::new(idempotency::open(&config, metrics.clone())?);
    let ctx = Arc::new(Context {
        metrics,
        router,
        upstreams,
        discovery,
        stop: Trigger::new(),
        kill: Trigger::new(),
        default_host: addr.to_string(),
        requests: Arc::default(),
        watchdog: Arc::default(),
        panics,
        budget,
        config,
        live,
        gate,
        idempotency,
        tls,
    });
    ctx.live.start(&ctx);
    // Every loop restarts if it panics: a ring must keep following discovery,
    // and without the watchdog no wait would end at the stop or the kill.
    let mut background = Vec::new();
    for balancer in ctx.router.balancers() {
        background.extend(discover::watch::spawn_watch(&ctx, balancer));
    }
    let c = ctx.clone();
    background.push(task::spawn(supervise(
        ctx.panics.clone(),
        "pool reaper",
        move || reap(c.clone()),
    )));
    let c = ctx.clone();
    background.push(task::spawn(supervise(
        ctx.panics.clone(),
        "watchdog",
        move || {
            let c = c.clone();
            async move { c.watchdog.run(&c.stop, &c.kill).await }
        },
    )));
    let mut admin_routes = admin::status::routes(ctx.clone());
    admin::ready::routes(&mut admin_routes);
    let admin = shared::serve::serve_with(
        admin_routes,
        admin_listener,
        shared::serve::Options {
            limits: shared::serve::Limits::default(),
            panics: ctx.panics.clone(),
            tls: None,
        },
    )?;
    let connections = Tracker::default();
    if ctx.config.ready_timeout.is_zero() {
        // Before spawn returns: a caller may connect at once.
        if let Err(e) = ctx.gate.open() {
            ctx.stop.fire();
            return Err(e);
        }
        ctx.metrics.ready.set(1);
    }
    let mut tls_listeners = tls_listeners.into_iter();
    let listeners = listeners
        .into_iter()
        .map(|plain| (plain, tls_listeners.next()))
        .collect();
    let workers = proxy::workers::spawn(&ctx, listeners, &connections)?;
    if let Some(tls_addr) = tls_addr {
        log::info!(addr:% = tls_addr; "gateway TLS port on https://{tls_addr}, opened with the client port");
    }
    log::info!(addr:% = admin.addr(); "gateway admin listening on http://{}", admin.addr());
    if !ctx.config.ready_timeout.is_zero() {
        log::info!(addr:% = addr; "gateway bound to {addr}; it listens once every route has an available instance, or after ready_timeout ({})",
            shared::config::format_duration(ctx.config.ready_timeout));
        let c = ctx.clone();
        background.push(task::spawn(supervise(
            ctx.panics.clone(),
            "readiness",
            move || admin::ready::open_when_ready(c.clone()),
        )));
    }
    Ok(Handle {
        addr,
        tls_addr,
        ctx,
        workers,
        connections,
        admin,
        background,
    })
}

/// Closes expired idle upstream connections, forgets instances nobody uses,
/// and samples the per-instance statistics for the windowed rates of `/status`.
async fn reap(ctx: Arc<Context>) {
    let mut sampled = std::time::Instant::now();
    while !ctx.stop.is_fired() {
        task::sleep(Duration::from_secs(1))
            .or(async {
                ctx.stop.wait().await;
            })
            .await;
        ctx.upstreams.reap();
        if sampled.elapsed() >= observe::stats::SAMPLE_EVERY {
            sampled = std::time::Instant::now();
            for up in ctx.upstreams.all() {
                up.stats.sample(sampled);
            }
        }
    }
}
