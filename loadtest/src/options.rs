//! What a run is asked to do, and where the running system is.
//!
//! The addresses default to the state file `just up` writes, so a plain
//! `just loadtest` finds the system wherever `up` put it; a flag beats the
//! file, the file beats the seed's fixed ports.

use shared::runstate::RunState;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Gateway address when neither a flag nor the state file names one.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8000";
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:8001";
pub const DEFAULT_DISCOVERY_URL: &str = "http://127.0.0.1:8500";

/// A fault injected while the load runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chaos {
    /// SIGKILL an extra app instance this run started, then restart it on the same port.
    Kill,
    /// Make one registered instance answer after 3 s (past the gateway's upstream timeout).
    Slow,
    /// Stop discovery (from the state file) and start it again.
    Discovery,
}

impl FromStr for Chaos {
    type Err = String;
    fn from_str(s: &str) -> Result<Chaos, String> {
        match s {
            "kill" => Ok(Chaos::Kill),
            "slow" => Ok(Chaos::Slow),
            "discovery" => Ok(Chaos::Discovery),
            other => Err(format!(
                "unknown chaos {other:?}: use kill, slow or discovery"
            )),
        }
    }
}

impl fmt::Display for Chaos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Chaos::Kill => "kill",
            Chaos::Slow => "slow",
            Chaos::Discovery => "discovery",
        })
    }
}

/// Everything a run needs; `main` fills it from the flags, tests build it directly.
#[derive(Clone, Debug)]
pub struct Options {
    /// Gateway base URL: `http://host:port` or `https://host:port`,
    /// optionally with a path prefix.
    pub url: String,
    /// The PEM file of the CA an `https://` gateway's certificate must chain
    /// to (`--cacert`); the system's roots are never used.
    pub cacert: Option<PathBuf>,
    /// Request path, appended to the URL's path.
    pub path: String,
    pub duration: Duration,
    /// Keep-alive connections (closed loop: also the concurrency).
    pub connections: usize,
    /// Open loop: requests per second over all connections; `None` is closed loop.
    pub rate: Option<f64>,
    /// Bytes of each JSON body.
    pub body_size: usize,
    /// Check every echo byte for byte and require `x-served-by`; off for a
    /// target that answers a fixed body (the load generator benchmark).
    pub verify: bool,
    /// Gateway admin base URL (`/status`), for the chaos scenarios.
    pub admin_url: String,
    /// Discovery base URL, for the chaos scenarios.
    pub discovery_url: String,
    /// The PEM file of the CA an `https://` discovery's certificate must
    /// chain to (`--discovery-ca`; `up --tls` with everything: the state
    /// file's CA). Chaos slow reads discovery's instances with it.
    pub discovery_ca: Option<PathBuf>,
    /// The state file of `just up` (chaos discovery stops and restarts from it).
    pub state: PathBuf,
    /// Namespace the gateway routes the path to.
    pub namespace: String,
    pub chaos: Option<Chaos>,
    /// When the fault starts, from the start of the load (default: a third in).
    pub chaos_at: Option<Duration>,
    /// How long the fault lasts (default: a third of the duration).
    pub chaos_for: Option<Duration>,
    /// The `app` binary chaos kill starts (default: beside this executable).
    pub app_bin: Option<PathBuf>,
    /// How long requests still in flight at the end may take; after that they
    /// count as transport errors (timeouts).
    pub drain_timeout: Duration,
    /// Show the live progress bar on stderr.
    pub progress: bool,
    /// Idempotency-Key check instead of plain load: each keyed POST sent
    /// several times, concurrently and after its answer (see [`crate::idempotency`]).
    pub idempotency: bool,
    /// Every gateway's admin URL (`just cluster` runs two on one port), for
    /// the idempotency check's look at each route's rule and store.
    pub gateway_admin_urls: Vec<String>,
    /// Each app's admin URL, where the idempotency check reads the
    /// executions per key (`GET /executions`).
    pub app_admin_urls: Vec<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            url: DEFAULT_URL.into(),
            cacert: None,
            path: "/".into(),
            duration: Duration::from_secs(10),
            connections: 64,
            rate: None,
            body_size: 256,
            verify: true,
            admin_url: DEFAULT_ADMIN_URL.into(),
            discovery_url: DEFAULT_DISCOVERY_URL.into(),
            discovery_ca: None,
            state: PathBuf::from(shared::runstate::DEFAULT_PATH),
            namespace: "service A".into(),
            chaos: None,
            chaos_at: None,
            chaos_for: None,
            app_bin: None,
            drain_timeout: Duration::from_secs(10),
            progress: false,
            idempotency: false,
            gateway_admin_urls: Vec::new(),
            app_admin_urls: Vec::new(),
        }
    }
}

/// The addresses after flags, state file and defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    pub url: String,
    /// The CA to trust for an `https://` URL: the flag's, else the state
    /// file's when the URL is the state file's too (`up --tls`).
    pub cacert: Option<PathBuf>,
    /// The first of `gateway_admin_urls`.
    pub admin_url: String,
    pub discovery_url: String,
    /// The CA to trust for an `https://` discovery URL: the state file's when
    /// the discovery URL is the state file's too (the flag's is applied by
    /// the caller).
    pub discovery_ca: Option<PathBuf>,
    /// Every gateway's admin URL: the flag's comma-separated list, else the
    /// state file's `gateway_admin_urls`, else `admin_url` alone.
    pub gateway_admin_urls: Vec<String>,
    /// Each app's admin URL, from the state file.
    pub app_admin_urls: Vec<String>,
}

impl Endpoints {
    /// A flag beats the state file (if it can be read), which beats the
    /// fixed default. `admin_url` may list several gateways, comma-separated.
    pub fn resolve(
        url: Option<String>,
        admin_url: Option<String>,
        discovery_url: Option<String>,
        state: &Path,
    ) -> Endpoints {
        Endpoints::resolve_with_ca(url, None, admin_url, discovery_url, state)
    }

    /// [`Endpoints::resolve`] with the `--cacert` flag.
    pub fn resolve_with_ca(
        url: Option<String>,
        cacert: Option<PathBuf>,
        admin_url: Option<String>,
        discovery_url: Option<String>,
        state: &Path,
    ) -> Endpoints {
        let file = RunState::load(state).ok();
        let pick = |flag: Option<String>, from_file: Option<&String>, default: &str| {
            flag.or_else(|| from_file.filter(|s| !s.is_empty()).cloned())
                .unwrap_or_else(|| default.to_string())
        };
        let listed = |text: &str| -> Vec<String> {
            text.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_string)
                .collect()
        };
        let gateway_admin_urls = match (&admin_url, &file) {
            (Some(flag), _) => listed(flag),
            (None, Some(f)) if !f.gateway_admin_urls.is_empty() => f.gateway_admin_urls.clone(),
            _ => Vec::new(),
        };
        let admin_url = pick(
            gateway_admin_urls.first().cloned(),
            file.as_ref().map(|s| &s.admin_url),
            DEFAULT_ADMIN_URL,
        );
        let gateway_admin_urls = if gateway_admin_urls.is_empty() {
            vec![admin_url.clone()]
        } else {
            gateway_admin_urls
        };
        // The file's CA goes with the file's URLs (`up --tls` signs them all).
        let file_ca = |from_file: bool| {
            file.as_ref()
                .filter(|_| from_file)
                .and_then(|f| f.ca_file.clone())
        };
        let cacert = cacert.or_else(|| file_ca(url.is_none()));
        let discovery_ca = file_ca(discovery_url.is_none());
        Endpoints {
            url: pick(url, file.as_ref().map(|s| &s.gateway_url), DEFAULT_URL),
            cacert,
            admin_url,
            discovery_url: pick(
                discovery_url,
                file.as_ref().map(|s| &s.discovery_url),
                DEFAULT_DISCOVERY_URL,
            ),
            discovery_ca,
            gateway_admin_urls,
            app_admin_urls: file
                .map(|f| f.app_admin_urls.into_values().collect())
                .unwrap_or_default(),
        }
    }
}

impl Options {
    /// When the fault starts and how long it lasts, defaults applied.
    pub fn chaos_window(&self) -> (Duration, Duration) {
        (
            self.chaos_at.unwrap_or(self.duration / 3),
            self.chaos_for.unwrap_or(self.duration / 3),
        )
    }

    /// Rejects combinations that cannot run, naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=crate::body::MAX_CONNECTIONS).contains(&self.connections) {
            return Err(format!(
                "--connections must be from 1 to {}",
                crate::body::MAX_CONNECTIONS
            ));
        }
        if self.duration.is_zero() {
            return Err("--duration must be above zero".into());
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err("--rate must be a positive number of requests per second".into());
            }
        }
        let least = crate::body::min_size();
        if self.body_size < least {
            return Err(format!(
                "--body-size must be at least {least} bytes (room for the connection id and sequence number)"
            ));
        }
        if !self.path.starts_with('/') {
            return Err("--path must start with '/'".into());
        }
        if self.url.starts_with("https://") && self.cacert.is_none() {
            return Err(format!(
                "{} is https: name the CA its certificate chains to with --cacert PATH \
                 (the system's roots are not used; `just up --tls` writes it to target/up/tls/ca.crt)",
                self.url
            ));
        }
        if self.chaos == Some(Chaos::Slow)
            && self.discovery_url.starts_with("https://")
            && self.discovery_ca.is_none()
        {
            return Err(format!(
                "discovery at {} is https: chaos slow reads its instances there, so name the CA \
                 its certificate chains to with --discovery-ca PATH (`just up --tls` writes it \
                 to target/up/tls/ca.crt, and the state file names it)",
                self.discovery_url
            ));
        }
        if self.idempotency && self.chaos.is_some() {
            return Err("--idempotency does not combine with --chaos".into());
        }
        if self.idempotency && self.rate.is_some() {
            return Err("--idempotency runs a closed loop: leave out --rate".into());
        }
        if self.chaos.is_some() {
            let (at, lasting) = self.chaos_window();
            if at + lasting >= self.duration {
                return Err(format!(
                    "the fault must be over before the load ends: --chaos-at ({}) + --chaos-for ({}) must be under --duration ({})",
                    shared::config::format_duration(at),
                    shared::config::format_duration(lasting),
                    shared::config::format_duration(self.duration)
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chaos_names_parse_and_print() {
        for c in [Chaos::Kill, Chaos::Slow, Chaos::Discovery] {
            assert_eq!(c.to_string().parse::<Chaos>(), Ok(c));
        }
        assert!("nuke".parse::<Chaos>().is_err());
    }

    #[test]
    fn flags_beat_the_state_file_which_beats_defaults() {
        let dir = testkit::tempdir::TempDir::new("loadtest-opts");
        let path = dir.join("state.json");
        let missing = Endpoints::resolve(None, None, None, &path);
        assert_eq!(missing.url, DEFAULT_URL);
        assert_eq!(missing.discovery_url, DEFAULT_DISCOVERY_URL);
        let state = RunState {
            gateway_url: "http://127.0.0.1:9000".into(),
            admin_url: "http://127.0.0.1:9001".into(),
            discovery_url: "http://127.0.0.1:9500".into(),
            ..RunState::default()
        };
        state.save(&path).unwrap();
        let e = Endpoints::resolve(Some("http://h:1".into()), None, None, &path);
        assert_eq!(e.url, "http://h:1");
        assert_eq!(e.admin_url, "http://127.0.0.1:9001");
        assert_eq!(e.gateway_admin_urls, ["http://127.0.0.1:9001"]);
        assert_eq!(e.discovery_url, "http://127.0.0.1:9500");
        // Two gateways on one port: every admin URL, from the file or the flag.
        RunState {
            gateway_admin_urls: vec!["http://a:1".into(), "http://b:2".into()],
            app_admin_urls: [("127.0.0.1:1".to_string(), "http://c:3".to_string())].into(),
            ..state
        }
        .save(&path)
        .unwrap();
        let e = Endpoints::resolve(None, None, None, &path);
        assert_eq!(e.admin_url, "http://a:1");
        assert_eq!(e.gateway_admin_urls, ["http://a:1", "http://b:2"]);
        assert_eq!(e.app_admin_urls, ["http://c:3"]);
        let e = Endpoints::resolve(None, Some("http://x:1, http://y:2".into()), None, &path);
        assert_eq!(e.admin_url, "http://x:1");
        assert_eq!(e.gateway_admin_urls, ["http://x:1", "http://y:2"]);
    }

    #[test]
    fn the_state_files_ca_goes_with_the_state_files_url_and_https_needs_one() {
        let dir = testkit::tempdir::TempDir::new("loadtest-ca");
        let path = dir.join("state.json");
        RunState {
            gateway_url: "https://localhost:8443".into(),
            ca_file: Some("/run/ca.crt".into()),
            ..RunState::default()
        }
        .save(&path)
        .unwrap();
        let e = Endpoints::resolve(None, None, None, &path);
        assert_eq!(e.url, "https://localhost:8443");
        assert_eq!(e.cacert, Some(PathBuf::from("/run/ca.crt")));
        // Discovery's URL from the file: the file's CA for it too; another: none.
        assert_eq!(e.discovery_ca, Some(PathBuf::from("/run/ca.crt")));
        let e = Endpoints::resolve(None, None, Some("https://d:1".into()), &path);
        assert_eq!(e.discovery_ca, None);
        assert_eq!(e.cacert, Some(PathBuf::from("/run/ca.crt")));
        // Another URL: not the file's CA, the flag's if any.
        let e = Endpoints::resolve(Some("https://h:1".into()), None, None, &path);
        assert_eq!(e.cacert, None);
        let e = Endpoints::resolve_with_ca(
            Some("https://h:1".into()),
            Some("/mine.crt".into()),
            None,
            None,
            &path,
        );
        assert_eq!(e.cacert, Some(PathBuf::from("/mine.crt")));
        let mut o = Options {
            url: "https://h:1".into(),
            ..Options::default()
        };
        assert!(o.validate().unwrap_err().contains("--cacert"));
        o.cacert = Some("/mine.crt".into());
        assert!(o.validate().is_ok());
        // Chaos slow reads an https discovery: its CA is needed too.
        o.chaos = Some(Chaos::Slow);
        o.discovery_url = "https://d:1".into();
        assert!(o.validate().unwrap_err().contains("--discovery-ca"));
        o.discovery_ca = Some("/mine.crt".into());
        assert!(o.validate().is_ok());
    }

    #[test]
    fn a_fault_must_end_inside_the_run() {
        let mut o = Options {
            chaos: Some(Chaos::Slow),
            duration: Duration::from_secs(3),
            ..Options::default()
        };
        assert!(o.validate().is_ok(), "defaults: a third in, a third long");
        o.chaos_for = Some(Duration::from_secs(2));
        assert!(o.validate().unwrap_err().contains("--chaos-for"));
        o.chaos = None;
        o.body_size = 10;
        assert!(o.validate().unwrap_err().contains("--body-size"));
    }
}
