//! Discovery: the registry of application instances, their health checks,
//! round-robin lookup and the watch stream that pushes available sets to gateways.
//!
//! A request's path through the crate: `registration` (register/deregister)
//! and `lookup` read and change the `registry`; `health` checks instances and
//! flips their status there; every change of an available set wakes the
//! `watch` streams.

mod dashboard;
mod health;
mod lookup;
mod metrics;
mod registration;
mod registry;
mod watch;

use async_std::task::{self, JoinHandle};
use registry::{Policy, Registry};
use shared::api::json_response;
use shared::config::DiscoveryConfig;
use shared::serve::Served;
use shared::shutdown::Trigger;
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
    metrics: Arc<metrics::Metrics>,
    config: Arc<DiscoveryConfig>,
}

/// A running discovery service.
#[derive(Debug)]
pub struct Handle {
    served: Served,
    checker: JoinHandle<()>,
    stop: Trigger,
    hub: Arc<Hub>,
    config: Arc<DiscoveryConfig>,
}

impl Handle {
    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    /// `http://host:port`, the base URL apps and gateways are given.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Stops health checks, ends watch streams, lets requests finish, closes the port.
    pub async fn shutdown(self) {
        self.stop.fire();
        self.checker.await;
        self.hub.close();
        self.served.shutdown(self.config.drain_timeout).await;
        log::info!("discovery stopped");
    }
}

/// Starts discovery on `config.listen` (port 0 picks a free port).
pub async fn spawn(config: DiscoveryConfig) -> std::io::Result<Handle> {
    config
        .validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let config = Arc::new(config);
    let hub = Arc::new(Hub::default());
    let (check_now, check_queue) = async_channel::bounded(4096);
    let policy = Policy {
        healthy_threshold: config.healthy_threshold,
        unhealthy_threshold: config.unhealthy_threshold,
        deregister_after: config.deregister_after,
    };
    let registry = Arc::new(Registry::new(policy, hub.clone(), check_now));
    let metrics = Arc::new(metrics::Metrics::default());
    let checker = health::Checker {
        registry: registry.clone(),
        metrics: metrics.clone(),
        client: health::client().map_err(std::io::Error::other)?,
        threshold: config.timeout_threshold,
    };
    let stop = Trigger::new();
    let state = State {
        registry,
        hub: hub.clone(),
        metrics,
        config: config.clone(),
    };
    let served = shared::serve::serve(routes(state), &config.listen).await?;
    let checker = task::spawn(health::run(
        checker,
        config.health_check_time_interval,
        check_queue,
        stop.clone(),
    ));
    log::info!(addr:% = served.addr(); "discovery listening on http://{}", served.addr());
    Ok(Handle {
        served,
        checker,
        stop,
        hub,
        config,
    })
}

fn routes(state: State) -> tide::Server<State> {
    let mut app = tide::with_state(state);
    app.with(shared::api::json_errors());
    app.at("/").get(dashboard::page);
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
    app.at("/api/services").get(registration::services);
    app.at("/api/watch").get(watch_stream);
    app.at("/metrics").get(|req: Request<State>| async move {
        let state = req.state();
        let mut res = tide::Response::new(StatusCode::Ok);
        res.set_body(state.metrics.render(&state.registry));
        res.set_content_type("text/plain; version=0.0.4");
        Ok(res)
    });
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
    let body = watch::open_stream(
        state.registry.clone(),
        &state.hub,
        &state.metrics,
        namespace,
        state.config.watch_keepalive,
    );
    let mut res = tide::Response::new(StatusCode::Ok);
    res.set_body(tide::Body::from_reader(body, None));
    res.set_content_type("text/event-stream");
    res.insert_header("cache-control", "no-cache");
    Ok(res)
}
