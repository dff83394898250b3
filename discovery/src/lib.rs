//! Discovery: the registry of application instances, their health checks,
//! round-robin lookup and the watch stream that pushes available sets to gateways.
//!
//! A request's path through the crate: `registration` (register/deregister)
//! and `maintenance` write through the `registry` to the `store` (memory, or
//! a remote store shared by replicas), which pushes every change into the
//! local `mirror`; `lookup`, `watch`, `/api/services` and the dashboard read
//! the mirror only. `health` checks instances, runs the state machine in the
//! mirror and writes status flips to the store; every change of a routable
//! set wakes the `watch` streams. `access` decides who may register which
//! hosts; `budget` splits the descriptors between clients and checks; `probe`
//! is one check on the wire; `counters` are what the handlers, the checker
//! and the watch hub count, which `metrics` renders.
//!
//! The modules in layers, each naming only those below it (no circle:
//! testkit/tests/layers.rs checks):
//!
//! - at the bottom, naming no other module: `access`, `probe`, `budget`,
//!   `counters`;
//! - `store`: the trait, its sink, its record policy (on `access`) and its
//!   memory implementation; `etcd` beside it, implementing it;
//! - `mirror`, fed by the store through `store::Sink`; it announces changes
//!   through `mirror::Announce`, so it never names the watch hub;
//! - `registry`: the store and the mirror together;
//! - `health` (the checker) and `watch` (the hub, which hears the mirror's
//!   announcements, and its streams, which read the registry);
//! - on top, the HTTP handlers (`registration`, `maintenance`, `lookup`,
//!   `dashboard`, and the routes here), `metrics` rendering, and [`spawn`],
//!   which chooses the store (`open_store`: the one place `etcd` is named
//!   outside it) and wires them together.

mod access;
pub mod budget;
mod cluster;
mod counters;
mod dashboard;
pub mod etcd;
mod health;
mod lookup;
mod maintenance;
mod metrics;
mod mirror;
mod probe;
mod registration;
mod registry;
pub mod store;
mod trends;
mod watch;

use access::AllowedHosts;
use async_std::task::{self, JoinHandle};
use counters::Counters;
use mirror::{Mirror, Policy};
use registry::Registry;
use shared::api::json_response;
use shared::config::{DiscoveryConfig, ServerTlsConfig, StoreUrl};
use shared::https::ClientTls;
use shared::panics::{supervise, Panics};
use shared::serve::{Limits, Options, Served};
use shared::shutdown::Trigger;
use shared::tls::{Certificates, ServerTls};
use std::net::SocketAddr;
use std::sync::Arc;
use tide::{Request, StatusCode};
use watch::Hub;

pub use watch::encode_event;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct State {
    registry: Arc<Registry>,
    hub: Arc<Hub>,
    counters: Arc<Counters>,
    metrics: Arc<metrics::Metrics>,
    config: Arc<DiscoveryConfig>,
    allowed: Arc<AllowedHosts>,
    /// Open watch streams, for the console's cluster view.
    watchers: Arc<cluster::Watchers>,
    /// Replicas seen in the store, remembered when they leave it.
    seen: Arc<cluster::Seen>,
    /// The last 15 minutes of counts, for the console's charts.
    trends: Arc<trends::Trends>,
    /// How the console's cluster view asks peer replicas (`https://` ones
    /// verified against `discovery_ca`).
    peers: surf::Client,
}

/// A running discovery service.
#[derive(Debug)]
pub struct Handle {
    served: Served,
    checker: JoinHandle<()>,
    stop: Trigger,
    hub: Arc<Hub>,
    config: Arc<DiscoveryConfig>,
    registry: Arc<Registry>,
    /// The listener's certificates, when it speaks TLS.
    tls: Option<Arc<ServerTls>>,
    /// The peer client's CA, when there is one.
    peers_tls: Option<Arc<ClientTls>>,
}

impl Handle {
    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    /// `http://host:port` (`https://` when `listen` speaks TLS), the base
    /// URL apps and gateways are given.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr())
    }

    /// SIGHUP: reads the certificate files of `tls` and `discovery_ca`
    /// again, as named at start. Good ones serve every handshake after
    /// this (connections already open keep theirs); a missing, broken,
    /// mismatched or expired one refuses the whole reload, logged with its
    /// name, and the ones in force stay. `tls.client_ca`, and the paths
    /// themselves, need a restart.
    pub fn reload_tls(&self) -> Result<(), String> {
        let result = reload_files(&self.config, self.tls.as_deref(), self.peers_tls.as_deref());
        match &result {
            Ok(()) => log::info!("TLS certificates reloaded"),
            Err(why) => log::error!(error = why.as_str();
                "TLS reload refused, the certificates in force stay: {why}"),
        }
        result
    }

    /// Stops health checks, ends watch streams, lets requests finish, closes the port.
    pub async fn shutdown(self) {
        self.stop.fire();
        self.checker.await;
        self.hub.close();
        self.served.shutdown(self.config.drain_timeout).await;
        self.registry.close().await;
        log::info!("discovery stopped");
    }
}

/// Reads every file first, then swaps: a bad one changes nothing.
fn reload_files(
    config: &DiscoveryConfig,
    server: Option<&ServerTls>,
    peers: Option<&ClientTls>,
) -> Result<(), String> {
    let certificates = match (server, &config.tls) {
        (Some(_), Some(tls)) => Some(load_certificates(tls)?),
        _ => None,
    };
    if let Some(peers) = peers {
        peers.reload().map_err(|e| format!("discovery_ca: {e}"))?;
    }
    if let (Some(server), Some(certificates)) = (server, certificates) {
        server.replace(certificates);
    }
    Ok(())
}

/// The listener's certificates, read and checked; the error names the file.
fn load_certificates(tls: &ServerTlsConfig) -> Result<Certificates, String> {
    Certificates::load(&tls.pairs()).map_err(|e| format!("tls: {e}"))
}

/// The listener's TLS settings from `tls` (certificates and client CA).
fn server_tls(tls: &ServerTlsConfig) -> Result<ServerTls, String> {
    let certificates = load_certificates(tls)?;
    let client_ca = match &tls.client_ca {
        Some(ca) => Some(shared::tls::load_roots(ca).map_err(|e| format!("tls.client_ca: {e}"))?),
        None => None,
    };
    ServerTls::new(certificates, client_ca).map_err(|e| format!("tls: {e}"))
}

/// The CA file peer replicas are verified against, read.
fn peers_tls(config: &DiscoveryConfig) -> Result<Option<Arc<ClientTls>>, String> {
    config
        .discovery_ca
        .as_deref()
        .map(|ca| ClientTls::load(ca, None).map_err(|e| format!("discovery_ca: {e}")))
        .transpose()
}

/// Reads and checks the files `config` names (the listener's certificates
/// and keys, its client CA, `discovery_ca`, each `upstream_tls` CA and
/// client certificate) as a start would, binding and contacting nothing:
/// `--check-config` calls it.
pub fn check_files(config: &DiscoveryConfig) -> Result<(), String> {
    if let Some(tls) = &config.tls {
        server_tls(tls)?;
    }
    peers_tls(config)?;
    probe::load_all(&config.upstream_tls)?;
    Ok(())
}

/// Largest request body taken (registrations and lookups are far smaller).
const MAX_BODY_BYTES: usize = 64 * 1024;
/// The kernel's send buffer per connection (doubled by the kernel): room for
/// a snapshot of about a thousand instances. A watcher that stops reading
/// then pins this much kernel memory, not the megabytes autotuning would let
/// it grow to, and its stream stops producing at once.
const SEND_BUFFER: usize = 64 * 1024;

/// Starts discovery on `config.listen` (port 0 picks a free port).
///
/// Client connections and health checks share the descriptor limit as
/// [`budget::plan`] splits it; the binary raises the soft limit first.
pub async fn spawn(config: DiscoveryConfig) -> std::io::Result<Handle> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    config.validate().map_err(|e| invalid(e.to_string()))?;
    let allowed = Arc::new(AllowedHosts::parse(&config.allowed_hosts).map_err(invalid)?);
    // The TLS files first: a missing or bad one stops the start, naming it.
    let check_tls = Arc::new(probe::load_all(&config.upstream_tls).map_err(invalid)?);
    let tls = match &config.tls {
        Some(t) => Some((
            Arc::new(server_tls(t).map_err(invalid)?),
            t.handshake_timeout,
        )),
        None => None,
    };
    let tls = tls.map(|(server, timeout)| shared::serve::TlsOptions::new(server, timeout));
    let peers_tls = peers_tls(&config).map_err(invalid)?;
    let peers = shared::https::client(
        surf::Config::new()
            .set_http_keep_alive(false)
            .set_timeout(None),
        peers_tls.clone(),
    )
    .map_err(std::io::Error::other)?;
    let config = Arc::new(config);
    let budget = budget::plan(config.max_connections, config.max_concurrent_checks);
    // Warming from now: the registry starts empty (memory) until the apps re-register.
    let hub = Arc::new(
        Hub::with_cap(watcher_cap(
            config.watchers(),
            config.max_connections,
            budget.connections,
        ))
        .warming_for(config.warmup()),
    );
    let (wake, woken) = async_channel::bounded(1);
    let policy = Policy {
        healthy_threshold: config.healthy_threshold,
        unhealthy_threshold: config.unhealthy_threshold,
        deregister_after: config.deregister_after,
        interval: config.health_check_time_interval,
    };
    let caps = store::Caps {
        max_instances: config.max_instances,
        max_instances_per_namespace: config.max_instances_per_namespace,
    };
    let panics = Panics::new();
    let mirror = Arc::new(Mirror::new(policy, hub.clone(), wake));
    // The one place the store is chosen: `open_store` reads `config.store`.
    let store = open_store(&config, &allowed, mirror.clone(), &panics)
        .await
        .map_err(invalid)?;
    let registry = Arc::new(Registry::new(mirror, store, caps));
    let counters = Arc::new(Counters::default());
    let metrics = Arc::new(metrics::Metrics::new(
        &counters,
        panics.clone(),
        tls.as_ref().map(|t| t.handshakes.clone()),
    ));
    let checker = health::Checker {
        registry: registry.clone(),
        counters: counters.clone(),
        allowed: allowed.clone(),
        interval: config.health_check_time_interval,
        threshold: config.timeout_threshold,
        slots: Arc::new(async_lock::Semaphore::new(budget.checks)),
        panics: panics.clone(),
        not_made: Arc::new(health::Throttle::new(health::NOT_MADE_LOG_EVERY)),
        tls: check_tls,
    };
    let stop = Trigger::new();
    {
        use futures_lite::FutureExt;
        let (hub, stop) = (hub.clone(), stop.clone());
        task::spawn(async move { hub.end_warmup().or(stop.wait()).await });
    }
    let trends = Arc::new(trends::Trends::default());
    task::spawn(trends::run(
        trends.clone(),
        registry.clone(),
        counters.clone(),
        stop.clone(),
    ));
    let state = State {
        registry: registry.clone(),
        hub: hub.clone(),
        counters,
        metrics,
        config: config.clone(),
        allowed,
        watchers: Arc::default(),
        seen: Arc::default(),
        trends,
        peers,
    };
    let limits = Limits {
        max_connections: budget.connections,
        header_timeout: config.client_header_timeout,
        idle_timeout: config.idle_timeout,
        max_body_bytes: MAX_BODY_BYTES,
        send_buffer: Some(SEND_BUFFER),
        ..Limits::default()
    };
    let listener = shared::serve::bind(&config.listen).await?;
    let server_tls = tls.as_ref().map(|t| t.server.clone());
    let served = shared::serve::serve_with(
        routes(state),
        listener,
        Options {
            limits,
            panics: panics.clone(),
            tls,
        },
    )?;
    let scheme = if server_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let checker = {
        let stop = stop.clone();
        task::spawn(supervise(panics, "health checker", move || {
            let (checker, woken, stop) = (checker.clone(), woken.clone(), stop.clone());
            async move { checker.run(&woken, &stop).await }
        }))
    };
    log::info!(addr:% = served.addr(), max_connections = budget.connections,
        max_concurrent_checks = budget.checks, max_watchers = hub.cap(),
        nofile = budget.nofile.unwrap_or(0),
        token = config.registration_token.is_some(), store = config.store.as_str(),
        tls = server_tls.is_some();
        "discovery listening on {scheme}://{}", served.addr());
    Ok(Handle {
        served,
        checker,
        stop,
        hub,
        config,
        registry,
        tls: server_tls,
        peers_tls,
    })
}

/// Builds the store `config.store` names, feeding `sink` (the one place a
/// store kind is chosen). A remote store loads its content into `sink` before
/// this returns. Background tasks run under `panics` (see `shared::panics`).
async fn open_store(
    config: &DiscoveryConfig,
    allowed: &Arc<AllowedHosts>,
    sink: Arc<dyn store::Sink>,
    panics: &Panics,
) -> Result<Arc<dyn store::Store>, String> {
    match StoreUrl::parse(&config.store)? {
        StoreUrl::Memory => Ok(Arc::new(store::MemoryStore::new(sink))),
        StoreUrl::Etcd { endpoints, prefix } => {
            // Records written into etcd by hand (or by another build) pass the
            // rules a registration passes before any replica serves them.
            let policy = store::RecordPolicy {
                allowed: allowed.clone(),
                caps: store::Caps {
                    max_instances: config.max_instances,
                    max_instances_per_namespace: config.max_instances_per_namespace,
                },
            };
            let store = etcd::EtcdStore::open(
                etcd::Options {
                    endpoints: &endpoints,
                    prefix: &prefix,
                    replica_id: config.replica_id.clone(),
                    advertise_url: config.advertise_url.clone(),
                    policy,
                },
                sink,
                panics,
            )
            .await?;
            Ok(store)
        }
    }
}

/// Watch streams allowed at once: `max_watchers`, or its share of the
/// connections when the descriptor limit lowered them, and always at least
/// one connection short of them, so the rest of the API keeps connections
/// of its own (validation keeps `max_watchers` below `max_connections`).
fn watcher_cap(max_watchers: usize, max_connections: usize, connections: usize) -> usize {
    let share = if connections >= max_connections {
        max_watchers
    } else {
        let scaled = max_watchers as u128 * connections as u128 / max_connections.max(1) as u128;
        usize::try_from(scaled).unwrap_or(usize::MAX)
    };
    share.min(connections.saturating_sub(1))
}

fn routes(state: State) -> tide::Server<State> {
    let mut app = tide::with_state(state);
    app.with(shared::api::json_errors());
    dashboard::routes(&mut app);
    app.at("/health_check").get(|_| async {
        Ok(json_response(
            StatusCode::Ok,
            &serde_json::json!({"status": "ok"}),
        ))
    });
    for path in ["/api/register", "/api/register/"] {
        app.at(path).post(registration::register);
    }
    for path in ["/api/deregister", "/api/deregister/", "/api/unregister"] {
        app.at(path).post(registration::deregister);
    }
    for path in ["/api/lookup", "/api/lookup/"] {
        app.at(path).post(lookup::post).get(lookup::get);
    }
    for path in ["/api/maintenance", "/api/maintenance/"] {
        app.at(path)
            .put(maintenance::start)
            .delete(maintenance::lift);
    }
    // Readiness, beside liveness (/health_check): 503 while this replica
    // cannot trust its view (etcd away, or its watch stale), so a load
    // balancer sends apps and gateways to a replica that can.
    app.at("/ready").get(ready);
    app.at("/api/services").get(registration::services);
    // The registry's store: backend, reachable, detail (the console's banner).
    app.at("/api/store").get(|req: Request<State>| async move {
        Ok(json_response(
            StatusCode::Ok,
            &req.state().registry.store_health(),
        ))
    });
    app.at("/api/watch").get(watch_stream);
    // The console's cluster view and charts (see `cluster` and `trends`).
    app.at("/api/cluster").get(cluster::cluster);
    app.at("/api/cluster/local").get(cluster::local);
    app.at("/api/trends").get(trends);
    app.at("/metrics").get(|req: Request<State>| async move {
        let state = req.state();
        let mut res = tide::Response::new(StatusCode::Ok);
        res.set_body(state.metrics.render(&state.registry));
        res.insert_header("content-type", metrics::CONTENT_TYPE);
        Ok(res)
    });
    // Any other method on these paths: 405 with `Allow`.
    {
        use tide::http::Method::{Delete, Get, Post, Put};
        let allowed: [(&[&str], &[tide::http::Method]); 7] = [
            (&["/api/register", "/api/register/"], &[Post]),
            (
                &["/api/deregister", "/api/deregister/", "/api/unregister"],
                &[Post],
            ),
            (&["/api/lookup", "/api/lookup/"], &[Get, Post]),
            (&["/api/maintenance", "/api/maintenance/"], &[Put, Delete]),
            (
                &[
                    "/api/services",
                    "/api/watch",
                    "/api/cluster",
                    "/api/cluster/local",
                    "/api/trends",
                ],
                &[Get],
            ),
            (&["/metrics"], &[Get]),
            (&["/health_check"], &[Get]),
        ];
        for (paths, methods) in allowed {
            for path in paths {
                shared::api::allow(&mut app.at(path), methods);
            }
        }
    }
    app
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchQuery {
    namespace: Option<String>,
}

async fn watch_stream(req: Request<State>) -> tide::Result {
    let invalid = |m: String| {
        Ok(shared::api::error_response(
            StatusCode::BadRequest,
            "invalid_field",
            m,
        ))
    };
    let namespace = match req.query::<WatchQuery>() {
        Ok(WatchQuery {
            namespace: Some(ns),
        }) => ns,
        Ok(_) => return invalid("namespace is required".into()),
        Err(e) => return invalid(e.to_string()),
    };
    if let Err(m) = shared::wire::validate_namespace(&namespace) {
        return invalid(m);
    }
    let state = req.state();
    // Checked before the stream starts: a refused watcher holds its
    // connection only for this answer, which closes it.
    let Some(admission) = state.hub.admit(&state.counters) else {
        return Ok(too_many_watchers(state.hub.cap()));
    };
    let registered = state.watchers.register(&req, &namespace);
    let spec = watch::StreamSpec {
        registry: state.registry.clone(),
        namespace,
        keepalive: state.config.watch_keepalive,
    };
    let body = cluster::Tracked {
        body: watch::open_stream(&state.hub, spec, admission),
        _registered: registered,
    };
    let mut res = tide::Response::new(StatusCode::Ok);
    res.set_body(tide::Body::from_reader(body, None));
    res.set_content_type("text/event-stream");
    res.insert_header("cache-control", "no-cache");
    Ok(res)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TrendsQuery {
    since: Option<u64>,
}

/// `GET /api/trends[?since=<unix ms>]`: the samples after `since` (all of
/// the last 15 minutes without it); see [`trends`].
async fn trends(req: Request<State>) -> tide::Result {
    match req.query::<TrendsQuery>() {
        Ok(q) => Ok(json_response(
            StatusCode::Ok,
            &req.state().trends.json(q.since.unwrap_or(0)),
        )),
        Err(e) => Ok(shared::api::error_response(
            StatusCode::BadRequest,
            "invalid_field",
            format!("since: {e}"),
        )),
    }
}

/// `/ready`: 200 `{"status": "ready"}`, or 503 `{"status": "stale", "reason"}`
/// while the store cannot be trusted, with `Retry-After`.
async fn ready(req: Request<State>) -> tide::Result {
    let health = req.state().registry.store_health();
    if health.reachable {
        return Ok(json_response(
            StatusCode::Ok,
            &serde_json::json!({"status": "ready"}),
        ));
    }
    let reason = health
        .stale
        .or(health.detail)
        .unwrap_or_else(|| "the store cannot be reached".into());
    let mut res = json_response(
        StatusCode::ServiceUnavailable,
        &serde_json::json!({"status": "stale", "reason": reason}),
    );
    res.insert_header("retry-after", shared::api::RETRY_AFTER_SECONDS.to_string());
    Ok(res)
}

/// 429 at the watch cap, closing the connection so its slot is free at once.
fn too_many_watchers(cap: usize) -> tide::Response {
    let mut res = shared::api::error_response(
        StatusCode::TooManyRequests,
        "too_many_watchers",
        format!("{cap} watch streams are open, as many as max_watchers allows; retry later"),
    );
    res.insert_header("retry-after", shared::api::RETRY_AFTER_SECONDS.to_string());
    res.insert_header("connection", "close");
    res
}

#[cfg(test)]
mod tests {
    use super::watcher_cap;

    #[test]
    fn the_watcher_cap_keeps_connections_for_the_rest_of_the_api() {
        assert_eq!(watcher_cap(512, 1024, 1024), 512);
        // The descriptor limit lowered the connections: watchers keep their share.
        assert_eq!(watcher_cap(512, 1024, 72), 36);
        assert_eq!(watcher_cap(1023, 1024, 72), 71);
        assert_eq!(watcher_cap(1, 1024, 1), 0);
        assert_eq!(
            watcher_cap(usize::MAX - 1, usize::MAX, usize::MAX),
            usize::MAX - 1
        );
    }

    #[test]
    fn max_watchers_must_be_at_least_one_and_below_max_connections() {
        let ok = shared::config::DiscoveryConfig::default();
        assert!(ok.validate().is_ok());
        assert_eq!(ok.watchers(), 512, "half the connections by default");
        let small = shared::config::DiscoveryConfig {
            max_connections: 64,
            ..Default::default()
        };
        assert!(
            small.validate().is_ok(),
            "a small max_connections needs no max_watchers"
        );
        assert_eq!(small.watchers(), 32);
        for (watchers, connections) in [(0, 1024), (1024, 1024), (2000, 1024)] {
            let c = shared::config::DiscoveryConfig {
                max_watchers: Some(watchers),
                max_connections: connections,
                ..Default::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("max_watchers"), "{e}");
        }
    }
}
