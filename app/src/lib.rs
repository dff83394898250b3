//! Service A: the application instances behind the gateway. Business logic is
//! an echo: a JSON body comes back byte for byte, which makes the gateway's
//! forwarding easy to check end to end.
//!
//! A request's path through the crate: `access` logs it and stamps
//! `x-served-by`; `echo` answers business POSTs and `health` the checks, both
//! slowed down or failed by `chaos` when `--chaos` is on. The knobs themselves
//! live on the `admin` listener, beside `/metrics`: never registered, so no
//! client of the gateway reaches them. Beside the servers, `registration`
//! keeps the instance known to discovery from bind to shutdown.

mod access;
mod admin;
mod chaos;
mod echo;
mod executions;
mod health;
mod registration;

use async_std::net::TcpListener;
use shared::config::{AppConfig, ServerTlsConfig};
use shared::panics::Panics;
use shared::serve::{Limits, Options, Served, TlsOptions};
use shared::tls::{Certificates, ServerTls};
use shared::wire::Port;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tide::http::Method;
use tide::{Request, StatusCode};

/// How long shutdown lets an operator's admin call finish.
const ADMIN_DRAIN: Duration = Duration::from_millis(500);

/// What every handler shares; cloned per request, so only `Arc`s and copies.
#[derive(Clone)]
pub(crate) struct State {
    /// `None` without `--chaos`: the hot path then reads no knob at all.
    chaos: Option<Arc<chaos::Knobs>>,
    /// `host:port` as registered, for the `x-served-by` header.
    served_by: Arc<str>,
    max_body_bytes: usize,
    /// Business requests per `Idempotency-Key` (admin `GET /executions`).
    executions: Arc<executions::Executions>,
}

/// A running app instance.
#[derive(Debug)]
pub struct Handle {
    served: Served,
    admin: Served,
    registration: registration::Registration,
    served_by: Arc<str>,
    drain_timeout: Duration,
    panics: Panics,
    /// The serving port's certificates and where they come from, when it speaks TLS.
    tls: Option<(Arc<ServerTls>, ServerTlsConfig)>,
}

impl Handle {
    /// The bound socket address (the real port when the config asked for 0).
    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    /// `http://addr` (`https://` when the port speaks TLS), the base URL
    /// clients and tests use.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr())
    }

    /// SIGHUP: reads the serving port's certificate files (`tls`) and the
    /// ones discovery is reached with (`discovery_ca`, `discovery_cert`)
    /// again, as named at start. Good ones serve every handshake after
    /// this; a bad one is logged with its name and the ones in force stay.
    pub fn reload_tls(&self) -> Result<(), String> {
        // Every file read first, then swapped: a bad one changes nothing.
        let result = self
            .tls
            .as_ref()
            .map(|(_, config)| load_certificates(config))
            .transpose()
            .and_then(|certificates| {
                self.registration.reload_tls()?;
                if let (Some((server, _)), Some(certificates)) = (&self.tls, certificates) {
                    server.replace(certificates);
                }
                Ok(())
            });
        match &result {
            Ok(()) => log::info!("TLS certificates reloaded"),
            Err(why) => log::error!(error = why.as_str();
                "TLS reload refused, the certificates in force stay: {why}"),
        }
        result
    }

    /// The admin listener (`/chaos`, `/metrics`, `/health_check`): for
    /// operators and tests, never registered with discovery.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.addr()
    }

    /// `http://admin_addr`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr())
    }

    /// `host:port` as registered with discovery and sent in `x-served-by`.
    pub fn served_by(&self) -> &str {
        &self.served_by
    }

    /// Panics caught so far (connections and background loops), as in
    /// `app_panics_total`.
    pub fn panics(&self) -> u64 {
        self.panics.count()
    }

    /// Leaves discovery first (so no new traffic is routed here), then lets
    /// requests in progress finish within `drain_timeout`, then closes the
    /// ports, the admin one last.
    pub async fn shutdown(self) {
        self.registration.leave().await;
        self.served.shutdown(self.drain_timeout).await;
        self.admin.shutdown(ADMIN_DRAIN).await;
        log::info!("app stopped");
    }
}

/// The serving port's certificates, read and checked; the error names the file.
fn load_certificates(tls: &ServerTlsConfig) -> Result<Certificates, String> {
    Certificates::load(&tls.pairs()).map_err(|e| format!("tls: {e}"))
}

/// The serving port's TLS settings from `tls` (certificates and client CA).
fn server_tls(tls: &ServerTlsConfig) -> Result<ServerTls, String> {
    let certificates = load_certificates(tls)?;
    let client_ca = match &tls.client_ca {
        Some(ca) => Some(shared::tls::load_roots(ca).map_err(|e| format!("tls.client_ca: {e}"))?),
        None => None,
    };
    ServerTls::new(certificates, client_ca).map_err(|e| format!("tls: {e}"))
}

/// Reads and checks the files `config` names (the serving port's
/// certificates, keys and client CA; `discovery_ca`, `discovery_cert` and
/// `discovery_key`) as a start would, binding and contacting nothing:
/// `--check-config` calls it.
pub fn check_files(config: &AppConfig) -> Result<(), String> {
    if let Some(tls) = &config.tls {
        server_tls(tls)?;
    }
    registration::client_tls(config)?;
    Ok(())
}

/// Binds `config.bind:config.port`, serves, then registers with discovery in
/// the background (retrying while discovery is away; never failing start-up).
pub async fn spawn(config: AppConfig) -> std::io::Result<Handle> {
    config
        .validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    // Certificates first: a bad one stops the start, naming its file.
    let tls = match &config.tls {
        Some(t) => Some((
            Arc::new(
                server_tls(t)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
            ),
            t.clone(),
        )),
        None => None,
    };
    let listener = TcpListener::bind((config.bind.as_str(), config.port))
        .await
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {}:{}: {e}", config.bind, config.port),
            )
        })?;
    let admin_listener = TcpListener::bind((config.bind.as_str(), config.admin_port))
        .await
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot listen (admin) on {}:{}: {e}",
                    config.bind, config.admin_port
                ),
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
        executions: Arc::default(),
    };
    let panics = Panics::new();
    let limits = Limits {
        max_head_bytes: config.max_header_bytes,
        max_body_bytes: config.max_body_bytes,
        ..Limits::default()
    };
    let admin = shared::serve::serve_with(
        admin::routes(state.clone(), panics.clone()),
        admin_listener,
        Options {
            limits: admin::limits(),
            panics: panics.clone(),
            // Plain, like the gateway's admin port: for operators and
            // scrapers, never registered (docs/tls.md).
            tls: None,
        },
    )?;
    let served = shared::serve::serve_with(
        routes(state, &config),
        listener,
        Options {
            limits,
            panics: panics.clone(),
            tls: tls
                .as_ref()
                .map(|(server, t)| TlsOptions::new(server.clone(), t.handshake_timeout)),
        },
    )?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    log::info!(addr:% = served.addr(), served_by = &*served_by, chaos = config.chaos,
        tls = tls.is_some();
        "app listening on {scheme}://{}", served.addr());
    log::info!(addr:% = admin.addr(), chaos = config.chaos;
        "app admin listening on http://{} (chaos knobs, metrics; never registered)", admin.addr());
    Ok(Handle {
        served,
        admin,
        registration: registrar.start(panics.clone()),
        served_by,
        drain_timeout: config.drain_timeout,
        panics,
        tls,
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
    // Other methods there: 405 with `Allow: POST`.
    for path in ["/", "/*"] {
        shared::api::allow(app.at(path).post(echo::echo), &[Method::Post]);
    }
    // The knobs live on the admin port; here `/chaos` is never business either,
    // so no method reaches it: each is named, or `/*` would take it (an echo
    // for POST, a 405 for the others).
    for path in ["/chaos", "/chaos/"] {
        let mut route = app.at(path);
        route.all(|_: Request<State>| status(StatusCode::NotFound));
        for method in shared::api::ROUTED_METHODS {
            route.method(method, |_: Request<State>| status(StatusCode::NotFound));
        }
    }
    app
}

/// A bare status; `json_errors` gives it the JSON error body.
async fn status(status: StatusCode) -> tide::Result {
    Ok(tide::Response::new(status))
}
