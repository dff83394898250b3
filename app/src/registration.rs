//! Keeps this instance registered with discovery for as long as it serves:
//! registers right after binding, retries with capped backoff and jitter while
//! discovery is away (never giving up: discovery may come up later), renews
//! every `register_interval` so a discovery that restarted with an empty
//! registry relearns the instance, and deregisters on shutdown.
//!
//! Renewal is idempotent at discovery (200, same id), so its cost is one small
//! request per interval.
//!
//! `discovery_url` may list several discoveries (comma-separated). Each
//! registration and renewal goes to the one that last took it (the first
//! listed, at start); when that one fails, the next ones are tried in order,
//! wrapping around, in the same round, and the first that takes it is the one
//! used from then on. So a dead URL costs nothing while another works, and an
//! instance moves as soon as its discovery fails, not one interval later.
//! Shutdown deregisters from every discovery that took a registration during
//! this run (at once, within the same deadline): replicas sharing one store
//! answer 404 after the first, which costs a call; discoveries of their own
//! each keep a copy, routed to, until told or until their checks and
//! `deregister_after` remove it.
//!
//! The bodies also suit the seed's Go discovery: the host travels as `ip`
//! (its name; ours reads it as an alias of `host`) and the port as a string,
//! and a 404 on `/api/deregister` is retried on the seed's `/api/unregister`.
//!
//! With a `registration_token`, both calls carry `Authorization: Bearer`. A
//! refusal (401/403/429: wrong token, host not allowed, registry full) is
//! logged as an error once, not on every retry, and retried with backoff: an
//! operator may fix discovery's side without restarting the app. A refusal
//! also moves registration to the next discovery, if any takes it.

use async_std::future::timeout;
use async_std::task::{self, JoinHandle};
use futures_lite::FutureExt;
use shared::backoff::Backoff;
use shared::config::{AppConfig, CertificateConfig};
use shared::https::ClientTls;
use shared::panics::Panics;
use shared::shutdown::Trigger;
use shared::wire::{DeregisterRequest, Port, RegisterRequest};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
/// How long shutdown waits for discovery to confirm deregistration (every
/// discovery at once, so the same however many there are).
const DEREGISTER_WAIT: Duration = Duration::from_millis(1500);

/// Everything the loop and the final deregistration need.
#[derive(Debug)]
pub struct Registrar {
    client: surf::Client,
    /// The CA and client certificate of `https://` discoveries, reloadable.
    tls: Option<Arc<ClientTls>>,
    /// A client certificate is shown to discovery (`discovery_cert`).
    certificate: bool,
    /// The discoveries of `discovery_url`, in the order given.
    targets: Vec<Target>,
    /// The index in `targets` of the one tried first: the last that took a
    /// registration (the first listed, until one has).
    current: AtomicUsize,
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

/// One discovery of `discovery_url` and its endpoints.
#[derive(Debug)]
struct Target {
    /// The base URL as configured, for log lines.
    base: String,
    register_url: Url,
    deregister_url: Url,
    /// The seed's name for deregistration, tried when `deregister_url` is a 404.
    unregister_url: Url,
    /// It took a registration during this run, so it may hold the instance.
    held: AtomicBool,
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

/// A registration some discovery took.
struct Taken {
    outcome: Outcome,
    /// The index of the discovery that took it.
    at: usize,
    /// Why the discoveries tried before it (from the current one on) did not.
    passed_over: Vec<String>,
}

/// Why a register call did not succeed.
#[derive(Debug, PartialEq)]
enum Failure {
    /// Discovery answered and said no (a 4xx): retrying as is will not help
    /// until someone changes a token, `allowed_hosts` or a cap.
    Refused {
        status: u16,
        body: String,
        /// The discovery that said it.
        url: String,
    },
    /// Discovery away, slow or failing: retrying is the cure.
    Unreachable(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused { status, body, .. } => write!(f, "refused ({status}: {body})"),
            Failure::Unreachable(why) => f.write_str(why),
        }
    }
}

impl Registrar {
    /// Checks the URLs and builds the bodies; an error here fails start-up.
    pub fn new(config: &AppConfig, port: Port) -> std::io::Result<Registrar> {
        let invalid = |why: String| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid discovery_url {:?}: {why}", config.discovery_url),
            )
        };
        let bases = config.discovery_urls();
        if bases.is_empty() {
            return Err(invalid("it names no URL".into()));
        }
        let targets = bases
            .into_iter()
            .map(|base| {
                let url = |path: &str| {
                    Url::parse(&format!("{base}{path}"))
                        .map_err(|e| invalid(format!("{base}: {e}")))
                };
                Ok(Target {
                    register_url: url("/api/register")?,
                    deregister_url: url("/api/deregister")?,
                    unregister_url: url("/api/unregister")?,
                    held: AtomicBool::new(false),
                    base,
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        // An empty advertise_host leaves the host to discovery: the caller's IP.
        let host = Some(config.advertise_host.clone()).filter(|h| !h.is_empty());
        let register = RegisterRequest {
            namespace: config.namespace.clone(),
            port,
            host: host.clone(),
            health_check_path: Some(config.health_check_path.clone()),
            weight: Some(config.weight).filter(|w| *w != 1),
        };
        let deregister = DeregisterRequest {
            namespace: config.namespace.clone(),
            port,
            host: host.clone(),
        };
        let register_body = seed_compatible(&register).map_err(std::io::Error::other)?;
        let deregister_body = seed_compatible(&deregister).map_err(std::io::Error::other)?;
        let tls = client_tls(config)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let client = shared::https::client(
            surf::Config::new()
                // One call per interval needs no pool, and a pooled connection to
                // a discovery that restarted would only fail the next call.
                .set_http_keep_alive(false)
                .set_tcp_no_delay(true)
                .set_timeout(Some(REQUEST_TIMEOUT)),
            tls.clone(),
        )
        .map_err(std::io::Error::other)?;
        Ok(Registrar {
            client,
            tls,
            certificate: config.discovery_cert.is_some(),
            targets,
            current: AtomicUsize::new(0),
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

    /// Every base URL, for log lines about all of them.
    fn bases(&self) -> String {
        let bases: Vec<&str> = self.targets.iter().map(|t| t.base.as_str()).collect();
        bases.join(",")
    }

    async fn run(self: Arc<Self>, stop: Trigger) {
        let mut backoff = Backoff::new(BACKOFF_BASE.min(self.backoff_cap), self.backoff_cap);
        let mut ever_registered = false;
        // The last refusal logged: the same one again is not logged again.
        let mut refused: Option<u16> = None;
        // The discovery that took the last registration, if the last round had one.
        let mut with: Option<usize> = None;
        while !stop.is_fired() {
            let wait = match self.register().await {
                Ok(Taken {
                    outcome,
                    at,
                    passed_over,
                }) => {
                    refused = None;
                    let failed = backoff.attempts();
                    let url = self.targets[at].base.as_str();
                    let moved = with.is_some_and(|w| w != at);
                    let note = match passed_over.as_slice() {
                        [] => String::new(),
                        failed => format!(" (passed over {})", failed.join("; ")),
                    };
                    match outcome {
                        _ if moved => log::info!(namespace = self.namespace.as_str(),
                            instance = self.instance.as_str(), url = url;
                            "registered with discovery {url} instead{note}"),
                        Outcome::Created if ever_registered => log::info!(
                            namespace = self.namespace.as_str(), instance = self.instance.as_str(),
                            url = url;
                            "registered with discovery again: it had forgotten this instance{note}"),
                        _ if !ever_registered || failed > 0 || !note.is_empty() => {
                            log::info!(namespace = self.namespace.as_str(),
                                instance = self.instance.as_str(), failed_attempts = failed,
                                url = url;
                                "registered with discovery{note}")
                        }
                        _ => log::debug!(instance = self.instance.as_str(), url = url;
                            "registration renewed"),
                    }
                    ever_registered = true;
                    with = Some(at);
                    backoff.reset();
                    self.interval
                }
                Err(Failure::Refused { status, body, url }) => {
                    with = None;
                    let delay = backoff.next_delay();
                    if refused != Some(status) {
                        refused = Some(status);
                        log::error!(status = status, namespace = self.namespace.as_str(),
                            instance = self.instance.as_str(), url = url.as_str();
                            "discovery refused the registration ({status}: {body}); {}; retrying \
                             with backoff, logged again only if the answer changes",
                            refusal_hint(status, self.authorization.is_some(), self.certificate));
                    } else {
                        log::debug!(status = status, retry_in_ms = delay.as_millis() as u64;
                            "registration still refused");
                    }
                    delay
                }
                Err(Failure::Unreachable(e)) => {
                    with = None;
                    refused = None;
                    let delay = backoff.next_delay();
                    log::warn!(attempt = backoff.attempts(), retry_in_ms = delay.as_millis() as u64,
                        url = self.bases().as_str();
                        "cannot register with discovery: {e}");
                    delay
                }
            };
            task::sleep(wait).or(stop.wait()).await;
        }
    }

    /// Registers with the current discovery or, failing that, with each next
    /// one in turn (wrapping around); the first to take it becomes current.
    /// When none does: a refusal if any discovery refused (what an operator
    /// must act on), else why each was unreachable.
    async fn register(&self) -> Result<Taken, Failure> {
        let count = self.targets.len();
        let first = self.current.load(Ordering::Acquire) % count;
        let mut failures = Vec::new();
        for at in (first..count).chain(0..first) {
            let target = &self.targets[at];
            match self.register_at(target).await {
                Ok(outcome) => {
                    target.held.store(true, Ordering::Release);
                    self.current.store(at, Ordering::Release);
                    let passed_over = failures
                        .into_iter()
                        .map(|(i, f): (usize, Failure)| format!("{}: {f}", self.targets[i].base))
                        .collect();
                    return Ok(Taken {
                        outcome,
                        at,
                        passed_over,
                    });
                }
                Err(failure) => failures.push((at, failure)),
            }
        }
        if let Some(pos) = failures
            .iter()
            .position(|(_, f)| matches!(f, Failure::Refused { .. }))
        {
            return Err(failures.swap_remove(pos).1);
        }
        Err(Failure::Unreachable(match failures.as_slice() {
            [(_, only)] => only.to_string(),
            all => all
                .iter()
                .map(|(i, f)| format!("{}: {f}", self.targets[*i].base))
                .collect::<Vec<_>>()
                .join("; "),
        }))
    }

    async fn register_at(&self, target: &Target) -> Result<Outcome, Failure> {
        match self
            .post(&target.register_url, &self.register_body)
            .await
            .map_err(Failure::Unreachable)?
        {
            (StatusCode::Created, _) => Ok(Outcome::Created),
            (StatusCode::Ok, _) => Ok(Outcome::Renewed),
            (status, body) if status.is_client_error() => Err(Failure::Refused {
                status: status.into(),
                body,
                url: target.base.clone(),
            }),
            (status, body) => Err(Failure::Unreachable(format!(
                "discovery answered {status}: {body}"
            ))),
        }
    }

    /// Deregisters from `targets[at]` within `DEREGISTER_WAIT`, logging the outcome.
    async fn deregister_at(&self, at: usize) {
        let target = &self.targets[at];
        let deregister = async {
            match self
                .post(&target.deregister_url, &self.deregister_body)
                .await
            {
                // The seed's discovery has no /api/deregister: its name is
                // /api/unregister (ours answers 404 there too for an unknown
                // instance, which costs one more call at shutdown).
                Ok((StatusCode::NotFound, _)) => {
                    self.post(&target.unregister_url, &self.deregister_body)
                        .await
                }
                other => other,
            }
        };
        let (instance, url) = (self.instance.as_str(), target.base.as_str());
        match timeout(DEREGISTER_WAIT, deregister).await {
            Ok(Ok((StatusCode::Ok, _))) => {
                log::info!(instance = instance, url = url; "deregistered from discovery")
            }
            Ok(Ok((StatusCode::NotFound, _))) => {
                log::info!(instance = instance, url = url; "discovery did not know this instance")
            }
            Ok(Ok((status, body))) if status.is_client_error() => {
                log::error!(instance = instance, url = url, status = u16::from(status);
                    "discovery refused the deregistration ({status}: {body}); {}",
                    refusal_hint(status.into(), self.authorization.is_some(), self.certificate))
            }
            Ok(Ok((status, body))) => {
                log::warn!(instance = instance, url = url;
                    "deregistration answered {status}: {body}")
            }
            Ok(Err(e)) => log::warn!(instance = instance, url = url; "cannot deregister: {e}"),
            Err(_) => log::warn!(instance = instance, url = url;
                "cannot deregister: discovery did not answer within {DEREGISTER_WAIT:?}"),
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

/// The CA file (`discovery_ca`) and client certificate (`discovery_cert`,
/// `discovery_key`) `https://` discoveries are reached with, read and
/// checked; the error names the file.
pub fn client_tls(config: &AppConfig) -> Result<Option<Arc<ClientTls>>, String> {
    let Some(ca) = config.discovery_ca.as_deref() else {
        return Ok(None);
    };
    let cert = match (&config.discovery_cert, &config.discovery_key) {
        (Some(cert), Some(key)) => Some(CertificateConfig {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    ClientTls::load(ca, cert)
        .map(Some)
        .map_err(|e| format!("discovery_ca/discovery_cert: {e}"))
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
fn refusal_hint(status: u16, has_token: bool, has_certificate: bool) -> &'static str {
    match (status, has_token, has_certificate) {
        (401, false, false) => {
            "discovery wants a token: set --registration-token or REGISTRATION_TOKEN \
             to its registration_token (or a client certificate: discovery_cert and \
             discovery_key, over https)"
        }
        (401, true, _) => "the token does not match discovery's registration_token",
        (401, false, true) => {
            "discovery did not take the client certificate: is discovery_url https, and \
             does discovery's tls.client_ca issue discovery_cert?"
        }
        (403, ..) => "discovery does not allow this host: check its allowed_hosts",
        (429, ..) => "discovery holds as many instances as it allows (max_instances)",
        _ => "the request was refused as it is",
    }
}

impl Registration {
    /// SIGHUP: the CA and client certificate files read again (see
    /// [`ClientTls::reload`]); without https settings, nothing to do.
    pub fn reload_tls(&self) -> Result<(), String> {
        match &self.registrar.tls {
            Some(tls) => tls
                .reload()
                .map_err(|e| format!("discovery_ca/discovery_cert: {e}")),
            None => Ok(()),
        }
    }

    /// Ends the loop, then deregisters, waiting at most ~2 s in all: shutdown
    /// must not hang on a discovery that is away.
    ///
    /// Every discovery that took a registration during this run is told, all
    /// at once: one that failed and was left may be back (a partition, not a
    /// restart) and still route to this instance until its checks notice.
    /// When none ever took it, the current one is told anyway: a register
    /// call cut short may have landed.
    pub async fn leave(mut self) {
        self.stop.fire();
        // A register call in flight could otherwise land after the deregistration.
        if timeout(STOP_WAIT, &mut self.task).await.is_err() {
            self.task.cancel().await;
        }
        let r = &self.registrar;
        let mut holders: Vec<usize> = (0..r.targets.len())
            .filter(|&at| r.targets[at].held.load(Ordering::Acquire))
            .collect();
        if holders.is_empty() {
            holders.push(r.current.load(Ordering::Acquire) % r.targets.len());
        }
        let calls: Vec<JoinHandle<()>> = holders
            .into_iter()
            .map(|at| {
                let r = r.clone();
                task::spawn(async move { r.deregister_at(at).await })
            })
            .collect();
        // Each call is bounded by DEREGISTER_WAIT, and they run side by side.
        for call in calls {
            call.await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn several_discovery_urls_are_taken_in_order_the_first_current() {
        let config = AppConfig {
            discovery_url: "http://127.0.0.1:1, http://127.0.0.1:8500/,".into(),
            ..AppConfig::default()
        };
        let r = Registrar::new(&config, Port(8080)).unwrap();
        let urls: Vec<&str> = r.targets.iter().map(|t| t.register_url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://127.0.0.1:1/api/register",
                "http://127.0.0.1:8500/api/register"
            ]
        );
        assert_eq!(r.current.load(Ordering::Relaxed), 0);
        assert!(r.targets.iter().all(|t| !t.held.load(Ordering::Relaxed)));
        assert_eq!(r.bases(), "http://127.0.0.1:1,http://127.0.0.1:8500");
        for bad in ["", "http://127.0.0.1:1,http://[::1"] {
            let config = AppConfig {
                discovery_url: bad.into(),
                ..AppConfig::default()
            };
            let err = Registrar::new(&config, Port(8080)).unwrap_err().to_string();
            assert!(err.contains("invalid discovery_url"), "{bad:?}: {err}");
        }
    }

    #[async_std::test]
    async fn all_unreachable_names_each_url() {
        let dead = |_: u8| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let (a, b) = (dead(0), dead(1));
        let config = AppConfig {
            discovery_url: format!("http://127.0.0.1:{a},http://127.0.0.1:{b}"),
            ..AppConfig::default()
        };
        let r = Registrar::new(&config, Port(8080)).unwrap();
        match r.register().await {
            Err(Failure::Unreachable(why)) => {
                assert!(why.contains(&format!("http://127.0.0.1:{a}: ")), "{why}");
                assert!(why.contains(&format!("; http://127.0.0.1:{b}: ")), "{why}");
            }
            _ => panic!("registered with nothing listening"),
        }
        assert_eq!(
            r.current.load(Ordering::Relaxed),
            0,
            "no move without success"
        );
    }

    #[test]
    fn bodies_name_the_host_ip_and_our_discovery_reads_them() {
        let register = RegisterRequest {
            namespace: "service A".into(),
            port: Port(8080),
            host: Some("127.0.0.1".into()),
            health_check_path: None,
            weight: None,
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
