//! The gateway: clients POST to it, and it forwards each request round robin
//! to an available instance of the routed namespace.
//!
//! A request's path, in the order of the modules: [`listener`] accepts the
//! connection; [`connection`] reads the request with the [`codec`] from the
//! client's [`session`] (its socket, input and deadline, and the one writer
//! of bytes to the client) and routes it to a namespace's [`ring`];
//! [`failover`] picks instances and decides on retries; [`forward`] makes
//! each try over a [`pool`]ed connection and streams the answer back through
//! the session, every wait bounded by a [`deadline`]. Off the request path,
//! [`watch`] keeps the rings in step with discovery, and [`admin`] serves
//! metrics and status.
//!
//! SIGHUP: [`reload`] swaps in a new [`Context`] (config and routes) that
//! every request after it uses, keeping rings and pools; [`stats`] holds
//! each instance's counters for the per-upstream metrics and `/status`.
//!
//! Hostile clients: [`target`] normalizes what is routed and forwarded,
//! [`budget`] bounds the request bytes held across connections, and a panic
//! ends one connection or restarts one background loop, never the process
//! (`gateway_panics_total`).
//!
//! Start and stop: [`ready`] keeps the client port unlistened until every
//! route has an instance (`ready_timeout`), and closes it first at shutdown;
//! the pool holds every instance to `allowed_upstreams` ([`pool`]).
//!
//! Cores: [`worker`] runs `worker_threads` threads, each with its own
//! executor, listener, idle pools, round-robin cursors and metric shards;
//! [`retry`] is the failover policy as a pure function; [`selection`] is how
//! a ring's member is chosen (round robin).

mod admin;
mod budget;
mod codec;
mod connection;
mod console;
mod deadline;
mod failover;
mod forward;
mod history;
mod listener;
mod metrics;
mod passive;
mod pool;
mod ready;
pub mod reload;
mod retry;
mod ring;
mod runtime;
mod selection;
mod session;
mod source;
mod stats;
mod target;
mod traffic;
mod watch;
mod worker;

use async_std::task::{self, JoinHandle};
use futures_lite::FutureExt;
use shared::config::GatewayConfig;
use shared::panics::{supervise, Panics};
use shared::serve::Served;
use shared::shutdown::{Tracker, Trigger};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// What every task of the gateway shares.
#[derive(Debug)]
pub struct Context {
    pub config: GatewayConfig,
    pub router: Arc<ring::Router>,
    pub upstreams: Arc<pool::Upstreams>,
    pub metrics: Arc<metrics::Metrics>,
    /// Client for discovery: the watch streams and lookups after a timeout.
    pub discovery: surf::Client,
    /// Fired at shutdown: stop accepting, finish the current requests.
    pub stop: Trigger,
    /// Fired when the drain time is over: cut what is left.
    pub kill: Trigger,
    /// `Host` for HTTP/1.0 requests that carry none.
    pub default_host: String,
    /// Requests seen per worker, for access log sampling.
    pub requests: Arc<worker::PerWorker<AtomicU64>>,
    /// Enforces the deadlines of every wait on the request path.
    pub watchdog: Arc<deadline::Watchdog>,
    /// Panics caught in connections and background loops.
    pub panics: Panics,
    /// Request bytes buffered across all connections (`max_buffered_bytes`).
    pub budget: Arc<budget::Budget>,
    /// The newest context after reloads ([`reload`]); shared by every generation.
    pub live: Arc<reload::Live>,
    /// The client port: listened on once ready, closed first at shutdown.
    pub(crate) gate: Arc<ready::Gate>,
}

impl Context {
    /// A copy for a new generation: the same config and router (which a
    /// reload then replaces), everything else shared.
    pub fn share(&self) -> Context {
        Context {
            config: self.config.clone(),
            router: self.router.clone(),
            upstreams: self.upstreams.clone(),
            metrics: self.metrics.clone(),
            discovery: self.discovery.clone(),
            stop: self.stop.clone(),
            kill: self.kill.clone(),
            default_host: self.default_host.clone(),
            requests: self.requests.clone(),
            watchdog: self.watchdog.clone(),
            panics: self.panics.clone(),
            budget: self.budget.clone(),
            live: self.live.clone(),
            gate: self.gate.clone(),
        }
    }

    /// The context in force now: the newest generation, or this one once stopped.
    pub fn current(self: &Arc<Self>) -> Arc<Context> {
        self.live.current().unwrap_or_else(|| self.clone())
    }
}

/// A running gateway.
#[derive(Debug)]
pub struct Handle {
    addr: SocketAddr,
    ctx: Arc<Context>,
    workers: worker::Workers,
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
/// (watch, reaper, watchdog, admin port; requests run on the [`worker`]s):
/// one thread, unless ASYNC_STD_THREAD_COUNT says otherwise. It only takes
/// effect before the first task is spawned, so `main` calls it first thing.
pub fn init_runtime() {
    let config = async_global_executor::GlobalExecutorConfig::default()
        .with_env_var("ASYNC_STD_THREAD_COUNT")
        .with_min_threads(1)
        .with_max_threads(1);
    async_global_executor::init_with_config(config);
}

/// Starts the gateway on `config.listen` and its admin port on `config.admin_listen`.
pub async fn spawn(config: GatewayConfig) -> std::io::Result<Handle> {
    config
        .validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let listeners = listener::bind_all(
        &config.listen,
        config.reuse_port,
        worker::count(config.worker_threads),
    )?;
    let addr = match listeners.first() {
        Some(l) => l.local_addr()?,
        None => return Err(std::io::Error::other("no listener bound")),
    };
    let gate = Arc::new(ready::Gate::new(&listeners, addr)?);
    let router = Arc::new(ring::Router::new(&config.routes));
    let setting = shared::allowed::Setting::GATEWAY;
    let allowed = shared::allowed::AllowedHosts::parse_setting(setting, &config.allowed_upstreams)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let limits = pool::Limits {
        max_idle: config.pool_max_idle,
        idle_timeout: config.pool_idle_timeout,
        passive: passive::Policy {
            failures: config.passive_health_failures,
            cooldown: config.connect_cooldown,
        },
    };
    let upstreams = Arc::new(pool::Upstreams::new(limits, allowed));
    // Bound before the discovery client is built: every watch stream names
    // this gateway by its admin URL (`x-gateway-id`), which discovery's
    // console shows beside the stream's address.
    let admin_listener = shared::serve::bind(&config.admin_listen).await?;
    let gateway_id = format!("http://{}", admin_listener.local_addr()?);
    let discovery = surf::Config::new()
        .set_http_keep_alive(false)
        .set_tcp_no_delay(true)
        .set_timeout(None)
        .add_header("x-gateway-id", gateway_id.as_str())
        .map_err(|e| std::io::Error::other(format!("cannot build the discovery client: {e}")))?
        .try_into()
        .map_err(|e| std::io::Error::other(format!("cannot build the discovery client: {e}")))?;
    let panics = Panics::new();
    let budget = Arc::new(budget::Budget::new(config.max_buffered_bytes));
    let live = Arc::new(reload::Live::default());
    let ctx = Arc::new(Context {
        metrics: Arc::new(metrics::Metrics::new(metrics::Sources {
            live: live.clone(),
            upstreams: upstreams.clone(),
            panics: panics.clone(),
            budget: budget.clone(),
        })),
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
    });
    ctx.live.start(&ctx);
    // Every loop restarts if it panics: a ring must keep following discovery,
    // and without the watchdog no deadline on the request path would fire.
    let mut background = Vec::new();
    for balancer in ctx.router.balancers() {
        background.extend(spawn_watch(&ctx, balancer));
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
    let mut admin_routes = admin::routes(ctx.clone());
    ready::routes(&mut admin_routes);
    let admin = shared::serve::serve_with(
        admin_routes,
        admin_listener,
        shared::serve::Options {
            limits: shared::serve::Limits::default(),
            panics: ctx.panics.clone(),
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
    let workers = worker::spawn(&ctx, listeners, &connections)?;
    log::info!(addr:% = admin.addr(); "gateway admin listening on http://{}", admin.addr());
    if !ctx.config.ready_timeout.is_zero() {
        log::info!(addr:% = addr; "gateway bound to {addr}; it listens once every route has an available instance, or after ready_timeout ({})",
            shared::config::format_duration(ctx.config.ready_timeout));
        let c = ctx.clone();
        background.push(task::spawn(supervise(
            ctx.panics.clone(),
            "readiness",
            move || ready::open_when_ready(c.clone()),
        )));
    }
    Ok(Handle {
        addr,
        ctx,
        workers,
        connections,
        admin,
        background,
    })
}

/// Starts what keeps `balancer`'s ring in step with discovery: the watch
/// tasks (see [`watch`]), each restarting if it panics. Used at start and by
/// a reload that routes a new namespace.
pub(crate) fn spawn_watch(
    ctx: &Arc<Context>,
    balancer: &Arc<ring::Balancer>,
) -> Vec<JoinHandle<()>> {
    let (tx, rx) = async_channel::bounded(16);
    let (c, b) = (ctx.clone(), balancer.clone());
    let follow = task::spawn(supervise(ctx.panics.clone(), "watch follow", move || {
        watch::follow(c.clone(), b.clone(), tx.clone())
    }));
    let (c, b) = (ctx.clone(), balancer.clone());
    let hold = task::spawn(supervise(ctx.panics.clone(), "watch hold", move || {
        watch::hold(c.clone(), b.clone(), rx.clone())
    }));
    vec![follow, hold]
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
        if sampled.elapsed() >= stats::SAMPLE_EVERY {
            sampled = std::time::Instant::now();
            for up in ctx.upstreams.all() {
                up.stats.sample(sampled);
            }
        }
    }
}
