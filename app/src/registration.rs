//! Keeps this instance registered with discovery for as long as it serves:
//! registers right after binding, retries with capped backoff and jitter while
//! discovery is away (never giving up: discovery may come up later), renews
//! every `register_interval` so a discovery that restarted with an empty
//! registry relearns the instance, and deregisters on shutdown.
//!
//! Renewal is idempotent at discovery (200, same id), so its cost is one small
//! request per interval.
//!
//! The bodies also suit the seed's Go discovery: the host travels as `ip`
//! (its name; ours reads it as an alias of `host`) and the port as a string,
//! and a 404 on `/api/deregister` is retried on the seed's `/api/unregister`.
//!
//! With a `registration_token`, both calls carry `Authorization: Bearer`. A
//! refusal (401/403/429: wrong token, host not allowed, registry full) is
//! logged as an error once, not on every retry, and retried with backoff: an
//! operator may fix discovery's side without restarting the app.

use async_std::future::timeout;
use async_std::task::{self, JoinHandle};
use futures_lite::FutureExt;
use shared::backoff::Backoff;
use shared::config::AppConfig;
use shared::panics::Panics;
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
    /// The seed's name for deregistration, tried when `deregister_url` is a 404.
    unregister_url: Url,
    register_body: Vec<u8>,
    deregister_body: Vec<u8>,
    /// For log lines: which instance this is.
    instance: String,
    namespace: String,
    interval: Duration,
    backoff_cap: Duration,
    /// `Bearer <token>`, when discovery asks for one.
    authorization: Option<Secret>,
}

/// A header value that must not show in logs or `Debug` output.
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(redacted)")
    }
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

/// Why a register call did not succeed.
#[derive(Debug, PartialEq)]
enum Failure {
    /// Discovery answered and said no (a 4xx): retrying as is will not help
    /// until someone changes a token, `allowed_hosts` or a cap.
    Refused { status: u16, body: String },
    /// Discovery away, slow or failing: retrying is the cure.
    Unreachable(String),
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
        let register_body = seed_compatible(&register).map_err(std::io::Error::other)?;
        let deregister_body = seed_compatible(&deregister).map_err(std::io::Error::other)?;
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
            unregister_url: url("/api/unregister")?,
            register_body,
            deregister_body,
            instance: shared::wire::authority(host.as_deref().unwrap_or("(caller ip)"), port),
            namespace: config.namespace.clone(),
            interval: config.register_interval,
            // Waiting longer than an interval between tries would make a
            // returning discovery wait longer than a healthy one does.
            backoff_cap: config.register_backoff_max.min(config.register_interval),
            authorization: config
                .registration_token
                .as_deref()
                .map(|t| Secret(format!("Bearer {t}"))),
        })
    }

    /// Starts the register/renew loop in the background, restarted (and
    /// counted in `panics`) should it ever panic.
    pub fn start(self, panics: Panics) -> Registration {
        let registrar = Arc::new(self);
        let stop = Trigger::new();
        let (r, s) = (registrar.clone(), stop.clone());
        let task = task::spawn(shared::panics::supervise(
            panics,
            "registration renewal",
            move || r.clone().run(s.clone()),
        ));
        Registration {
            registrar,
            stop,
            task,
        }
    }

    async fn run(self: Arc<Self>, stop: Trigger) {
        let mut backoff = Backoff::new(BACKOFF_BASE.min(self.backoff_cap), self.backoff_cap);
        let mut ever_registered = false;
        // The last refusal logged: the same one again is not logged again.
        let mut refused: Option<u16> = None;
        while !stop.is_fired() {
            let wait = match self.register().await {
                Ok(outcome) => {
                    refused = None;
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
                Err(Failure::Refused { status, body }) => {
                    let delay = backoff.next_delay();
                    if refused != Some(status) {
                        refused = Some(status);
                        log::error!(status = status, namespace = self.namespace.as_str(),
                            instance = self.instance.as_str(), url = self.register_url.as_str();
                            "discovery refused the registration ({status}: {body}); {}; retrying \
                             with backoff, logged again only if the answer changes",
                            refusal_hint(status, self.authorization.is_some()));
                    } else {
                        log::debug!(status = status, retry_in_ms = delay.as_millis() as u64;
                            "registration still refused");
                    }
                    delay
                }
                Err(Failure::Unreachable(e)) => {
                    refused = None;
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

    async fn register(&self) -> Result<Outcome, Failure> {
        match self
            .post(&self.register_url, &self.register_body)
            .await
            .map_err(Failure::Unreachable)?
        {
            (StatusCode::Created, _) => Ok(Outcome::Created),
            (StatusCode::Ok, _) => Ok(Outcome::Renewed),
            (status, body) if status.is_client_error() => Err(Failure::Refused {
                status: status.into(),
                body,
            }),
            (status, body) => Err(Failure::Unreachable(format!(
                "discovery answered {status}: {body}"
            ))),
        }
    }

    /// Posts a JSON body; the status and (up to a few KiB of) the answer.
    async fn post(&self, url: &Url, body: &[u8]) -> Result<(StatusCode, String), String> {
        let mut req = surf::RequestBuilder::new(Method::Post, url.clone())
            .body(body.to_vec())
            .content_type(mime::JSON);
        if let Some(authorization) = &self.authorization {
            req = req.header("authorization", authorization.0.as_str());
        }
        let mut res = self.client.send(req).await.map_err(|e| e.to_string())?;
        let mut text = res.body_string().await.unwrap_or_default();
        text.truncate(text.floor_char_boundary(4096));
        Ok((res.status(), text))
    }
}

/// The JSON body with the host under the seed's name `ip` rather than `host`.
/// The seed's discovery knows `ip` only; ours takes `ip` as an alias of
/// `host`, and refuses a body naming both (a duplicate field), so the one
/// name both understand is sent.
fn seed_compatible(request: &impl serde::Serialize) -> serde_json::Result<Vec<u8>> {
    let mut body = serde_json::to_value(request)?;
    if let Some(object) = body.as_object_mut() {
        if let Some(host) = object.remove("host") {
            object.insert("ip".into(), host);
        }
    }
    serde_json::to_vec(&body)
}

/// What to check for a refusal, in words an operator can act on.
fn refusal_hint(status: u16, has_token: bool) -> &'static str {
    match (status, has_token) {
        (401, false) => {
            "discovery wants a token: set --registration-token or REGISTRATION_TOKEN \
             to its registration_token"
        }
        (401, true) => "the token does not match discovery's registration_token",
        (403, _) => "discovery does not allow this host: check its allowed_hosts",
        (429, _) => "discovery holds as many instances as it allows (max_instances)",
        _ => "the request was refused as it is",
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
        let deregister = async {
            match r.post(&r.deregister_url, &r.deregister_body).await {
                // The seed's discovery has no /api/deregister: its name is
                // /api/unregister (ours answers 404 there too for an unknown
                // instance, which costs one more call at shutdown).
                Ok((StatusCode::NotFound, _)) => {
                    r.post(&r.unregister_url, &r.deregister_body).await
                }
                other => other,
            }
        };
        match timeout(DEREGISTER_WAIT, deregister).await {
            Ok(Ok((StatusCode::Ok, _))) => {
                log::info!(instance = r.instance.as_str(); "deregistered from discovery")
            }
            Ok(Ok((StatusCode::NotFound, _))) => {
                log::info!(instance = r.instance.as_str(); "discovery did not know this instance")
            }
            Ok(Ok((status, body))) if status.is_client_error() => {
                log::error!(instance = r.instance.as_str(), status = u16::from(status);
                    "discovery refused the deregistration ({status}: {body}); {}",
                    refusal_hint(status.into(), r.authorization.is_some()))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bodies_name_the_host_ip_and_our_discovery_reads_them() {
        let register = RegisterRequest {
            namespace: "service A".into(),
            port: Port(8080),
            host: Some("127.0.0.1".into()),
            health_check_path: None,
        };
        let body = seed_compatible(&register).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["ip"], "127.0.0.1");
        assert_eq!(json["port"], "8080", "the seed's port is a string");
        assert!(json.get("host").is_none());
        let read: RegisterRequest = serde_json::from_slice(&body).unwrap();
        assert_eq!(read, register);
        // Why not both: our discovery refuses `host` and `ip` together.
        let both = r#"{"namespace":"a","port":"1","host":"127.0.0.1","ip":"127.0.0.1"}"#;
        assert!(serde_json::from_str::<RegisterRequest>(both).is_err());
        let no_host = DeregisterRequest {
            namespace: "a".into(),
            port: Port(1),
            host: None,
        };
        let json: serde_json::Value =
            serde_json::from_slice(&seed_compatible(&no_host).unwrap()).unwrap();
        assert!(json.get("ip").is_none() && json.get("host").is_none());
    }
}
