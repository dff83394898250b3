//! Service A: the application instances behind the gateway. Business logic is
//! an echo: a JSON body comes back byte for byte, which makes the gateway's
//! forwarding easy to check end to end.
//!
//! A request's path through the crate: `access` logs it and stamps
//! `x-served-by`; `echo` answers business POSTs and `health` the checks, both
//! slowed down or failed by `chaos` when `--chaos` is on. Beside the server,
//! `registration` keeps the instance known to discovery from bind to shutdown.

mod access;
mod chaos;
mod echo;
mod health;
mod registration;

use async_std::net::TcpListener;
use shared::config::AppConfig;
use shared::serve::Served;
use shared::wire::Port;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tide::{Request, StatusCode};

/// What every handler shares; cloned per request, so only `Arc`s and copies.
#[derive(Clone)]
pub(crate) struct State {
    /// `None` without `--chaos`: the hot path then reads no knob at all.
    chaos: Option<Arc<chaos::Knobs>>,
    /// `host:port` as registered, for the `x-served-by` header.
    served_by: Arc<str>,
    max_body_bytes: usize,
}

/// A running app instance.
#[derive(Debug)]
pub struct Handle {
    served: Served,
    registration: registration::Registration,
    served_by: Arc<str>,
    drain_timeout: Duration,
}

impl Handle {
    /// The bound socket address (the real port when the config asked for 0).
    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    /// `http://addr`, the base URL clients and tests use.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `host:port` as registered with discovery and sent in `x-served-by`.
    pub fn served_by(&self) -> &str {
        &self.served_by
    }

    /// Leaves discovery first (so no new traffic is routed here), then lets
    /// requests in progress finish within `drain_timeout`, then closes the port.
    pub async fn shutdown(self) {
        self.registration.leave().await;
        self.served.shutdown(self.drain_timeout).await;
        log::info!("app stopped");
    }
}

/// Binds `config.bind:config.port`, serves, then registers with discovery in
/// the background (retrying while discovery is away; never failing start-up).
pub async fn spawn(config: AppConfig) -> std::io::Result<Handle> {
    config
        .validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let listener = TcpListener::bind((config.bind.as_str(), config.port))
        .await
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {}:{}: {e}", config.bind, config.port),
            )
        })?;
    let addr = listener.local_addr()?;
    let port = Port(addr.port());
    // An empty advertise_host lets discovery take the caller's IP; the bound
    // IP is the best local guess of that for the header.
    let host = match config.advertise_host.as_str() {
        "" => addr.ip().to_string(),
        h => h.to_string(),
    };
    let served_by: Arc<str> = shared::wire::authority(&host, port).into();
    // Built before serving: a bad discovery URL fails start-up, not a retry loop.
    let registrar = registration::Registrar::new(&config, port)?;
    let state = State {
        chaos: config.chaos.then(|| Arc::new(chaos::Knobs::default())),
        served_by: served_by.clone(),
        max_body_bytes: config.max_body_bytes,
    };
    let served = shared::serve::serve_on(routes(state, &config), listener)?;
    log::info!(addr:% = served.addr(), served_by = &*served_by, chaos = config.chaos;
        "app listening on http://{}", served.addr());
    Ok(Handle {
        served,
        registration: registrar.start(),
        served_by,
        drain_timeout: config.drain_timeout,
    })
}

fn routes(state: State, config: &AppConfig) -> tide::Server<State> {
    let mut app = tide::with_state(state.clone());
    // Outermost first: the access log sees the final status, JSON error body included.
    app.with(access::AccessLog::new(
        state.served_by.clone(),
        &config.health_check_path,
    ));
    app.with(shared::api::json_errors());
    app.at("/health_check").get(health::check);
    if config.health_check_path != "/health_check" {
        app.at(&config.health_check_path).get(health::check);
    }
    // Any other path is business: tide's `/*` needs one character, hence `/` too.
    app.at("/").post(echo::echo);
    app.at("/*").post(echo::echo);
    for path in ["/chaos", "/chaos/"] {
        // POST must be named here, or the `/*` POST route would take it.
        if config.chaos {
            app.at(path)
                .get(chaos::show)
                .put(chaos::set)
                .post(|_: Request<State>| async {
                    let mut res = tide::Response::new(StatusCode::MethodNotAllowed);
                    res.insert_header("allow", "GET, PUT");
                    Ok(res)
                });
        } else {
            app.at(path)
                .post(|_: Request<State>| status(StatusCode::NotFound))
                .all(|_: Request<State>| status(StatusCode::NotFound));
        }
    }
    app
}

/// A bare status; `json_errors` gives it the JSON error body.
async fn status(status: StatusCode) -> tide::Result {
    Ok(tide::Response::new(status))
}
