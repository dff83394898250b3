//! Keeps this instance registered with discovery for as long as it serves:
//! registers right after binding, retries with capped backoff and jitter while
//! discovery is away (never giving up: discovery may come up later), renews
//! every `register_interval` so a discovery that restarted with an empty
//! registry relearns the instance, and deregisters on shutdown.
//!
//! Renewal is idempotent at discovery (200, same id), so its cost is one small
//! request per interval.

use async_std::future::timeout;
use async_std::task::{self, JoinHandle};
use futures_lite::FutureExt;
use shared::backoff::Backoff;
use shared::config::AppConfig;
use shared::shutdown::Trigger;
use shared::wire::{DeregisterRequest, Port, RegisterRequest};
use std::sync::Arc;
use std::time::Duration;
use surf::http::{mime, Method};
use surf::{StatusCode, Url};

/// First retry delay; it doubles up to the cap.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Deadline of one register call: a discovery that hangs must not stop renewals.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long shutdown waits for a register call in flight before cutting it.
const STOP_WAIT: Duration = Duration::from_millis(500);
/// How long shutdown waits for discovery to confirm deregistration.
const DEREGISTER_WAIT: Duration = Duration::from_millis(1500);

/// Everything the loop and the final deregistration need.
#[derive(Debug)]
pub struct Registrar {
    client: surf::Client,
    register_url: Url,
    deregister_url: Url,
    register_body: Vec<u8>,
    deregister_body: Vec<u8>,
    /// For log lines: which instance this is.
    instance: String,
    namespace: String,
    interval: Duration,
    backoff_cap: Duration,
}

/// The running loop; `leave` ends it and deregisters.
#[derive(Debug)]
pub struct Registration {
    registrar: Arc<Registrar>,
    stop: Trigger,
    task: JoinHandle<()>,
}

/// What one successful register call told us.
enum Outcome {
    /// 201: discovery did not know this instance (first time, or it restarted).
    Created,
    /// 200: a renewal of an instance discovery knows.
    Renewed,
}

impl Registrar {
    /// Checks the URL and builds the bodies; an error here fails start-up.
    pub fn new(config: &AppConfig, port: Port) -> std::io::Result<Registrar> {
        let base = config.discovery_url.trim_end_matches('/');
        let url = |path: &str| {
            Url::parse(&format!("{base}{path}")).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("invalid discovery_url {:?}: {e}", config.discovery_url),
                )
            })
        };
        // An empty advertise_host leaves the host to discovery: the caller's IP.
        let host = Some(config.advertise_host.clone()).filter(|h| !h.is_empty());
        let register = RegisterRequest {
            namespace: config.namespace.clone(),
            port,
            host: host.clone(),
            health_check_path: Some(config.health_check_path.clone()),
        };
        let deregister = DeregisterRequest {
            namespace: config.namespace.clone(),
            port,
            host: host.clone(),
        };
        let client = surf::Config::new()
            // One call per interval needs no pool, and a pooled connection to
            // a discovery that restarted would only fail the next call.
            .set_http_keep_alive(false)
            .set_tcp_no_delay(true)
            .set_timeout(Some(REQUEST_TIMEOUT))
            .try_into()
            .map_err(|e| std::io::Error::other(format!("cannot build the HTTP client: {e}")))?;
        Ok(Registrar {
            client,
            register_url: url("/api/register")?,
            deregister_url: url("/api/deregister")?,
            register_body: serde_json::to_vec(&register).map_err(std::io::Error::other)?,
            deregister_body: serde_json::to_vec(&deregister).map_err(std::io::Error::other)?,
            instance: shared::wire::authority(host.as_deref().unwrap_or("(caller ip)"), port),
            namespace: config.namespace.clone(),
            interval: config.register_interval,
            // Waiting longer than an interval between tries would make a
            // returning discovery wait longer than a healthy one does.
            backoff_cap: config.register_backoff_max.min(config.register_interval),
        })
    }

    /// Starts the register/renew loop in the background.
    pub fn start(self) -> Registration {
        let registrar = Arc::new(self);
        let stop = Trigger::new();
        let task = task::spawn(registrar.clone().run(stop.clone()));
        Registration {
            registrar,
            stop,
            task,
        }
    }

    async fn run(self: Arc<Self>, stop: Trigger) {
        let mut backoff = Backoff::new(BACKOFF_BASE.min(self.backoff_cap), self.backoff_cap);
        let mut ever_registered = false;
        while !stop.is_fired() {
            let wait = match self.register().await {
                Ok(outcome) => {
                    let failed = backoff.attempts();
                    match outcome {
                        Outcome::Created if ever_registered => log::info!(
                            namespace = self.namespace.as_str(), instance = self.instance.as_str();
                            "registered with discovery again: it had forgotten this instance"),
                        Outcome::Created | Outcome::Renewed if !ever_registered || failed > 0 => {
                            log::info!(namespace = self.namespace.as_str(),
                                instance = self.instance.as_str(), failed_attempts = failed;
                                "registered with discovery")
                        }
                        _ => log::debug!(instance = self.instance.as_str(); "registration renewed"),
                    }
                    ever_registered = true;
                    backoff.reset();
                    self.interval
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    log::warn!(attempt = backoff.attempts(), retry_in_ms = delay.as_millis() as u64,
                        url = self.register_url.as_str();
                        "cannot register with discovery: {e}");
                    delay
                }
            };
            task::sleep(wait).or(stop.wait()).await;
        }
    }

    async fn register(&self) -> Result<Outcome, String> {
        match self.post(&self.register_url, &self.register_body).await? {
            (StatusCode::Created, _) => Ok(Outcome::Created),
            (StatusCode::Ok, _) => Ok(Outcome::Renewed),
            (status, body) => Err(format!("discovery answered {status}: {body}")),
        }
    }

    /// Posts a JSON body; the status and (up to a few KiB of) the answer.
    async fn post(&self, url: &Url, body: &[u8]) -> Result<(StatusCode, String), String> {
        let req = surf::RequestBuilder::new(Method::Post, url.clone())
            .body(body.to_vec())
            .content_type(mime::JSON);
        let mut res = self.client.send(req).await.map_err(|e| e.to_string())?;
        let mut text = res.body_string().await.unwrap_or_default();
        text.truncate(text.floor_char_boundary(4096));
        Ok((res.status(), text))
    }
}

impl Registration {
    /// Ends the loop, then deregisters, waiting at most ~2 s in all: shutdown
    /// must not hang on a discovery that is away.
    pub async fn leave(mut self) {
        self.stop.fire();
        // A register call in flight could otherwise land after the deregistration.
        if timeout(STOP_WAIT, &mut self.task).await.is_err() {
            self.task.cancel().await;
        }
        let r = &self.registrar;
        match timeout(
            DEREGISTER_WAIT,
            r.post(&r.deregister_url, &r.deregister_body),
        )
        .await
        {
            Ok(Ok((StatusCode::Ok, _))) => {
                log::info!(instance = r.instance.as_str(); "deregistered from discovery")
            }
            Ok(Ok((StatusCode::NotFound, _))) => {
                log::info!(instance = r.instance.as_str(); "discovery did not know this instance")
            }
            Ok(Ok((status, body))) => {
                log::warn!(instance = r.instance.as_str(); "deregistration answered {status}: {body}")
            }
            Ok(Err(e)) => log::warn!(instance = r.instance.as_str(); "cannot deregister: {e}"),
            Err(_) => log::warn!(instance = r.instance.as_str();
                "cannot deregister: discovery did not answer within {DEREGISTER_WAIT:?}"),
        }
    }
}
