//! `app [--config FILE] [--port N] [--discovery-url URL[,URL...]] [--chaos]
//! [--check-config] ...`: one instance of Service A; runs until SIGINT/SIGTERM,
//! then deregisters and drains. With `--check-config`, checks the config,
//! prints it and exits.
//!
//! Precedence: flag, then environment (`REGISTRATION_TOKEN`), then the file,
//! then the defaults. With `tls` or `discovery_ca` configured, SIGHUP reads
//! the certificate files again (`app::Handle::reload_tls`).

use clap::Parser;
use shared::cli::{set, Common};
use shared::config::{parse_duration, AppConfig};
use std::process::ExitCode;
use std::time::Duration;

/// Service A: echoes JSON bodies and keeps itself registered with discovery.
#[derive(Parser)]
#[command(version)]
struct Flags {
    #[command(flatten)]
    common: Common,
    /// Port to listen on; 0 picks a free one, and the real one is registered.
    #[arg(long)]
    port: Option<u16>,
    /// Interface to bind, e.g. 127.0.0.1 or 0.0.0.0.
    #[arg(long)]
    bind: Option<String>,
    /// Host registered with discovery; an empty one lets discovery use the caller's IP.
    #[arg(long)]
    advertise_host: Option<String>,
    /// Base URL of discovery, e.g. http://127.0.0.1:8500, or several
    /// comma-separated: registration goes to the first that takes it.
    #[arg(long)]
    discovery_url: Option<String>,
    /// Namespace to register in (default "service A").
    #[arg(long)]
    namespace: Option<String>,
    /// Re-registration period, e.g. 10s or 500ms.
    #[arg(long, value_parser = parse_duration)]
    register_interval: Option<Duration>,
    /// Path discovery health-checks (served by this app too).
    #[arg(long)]
    health_check_path: Option<String>,
    /// Turns on PUT/GET /chaos on the admin port; `--chaos=false` overrides a file that turns it on.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    chaos: Option<bool>,
    /// Port of the admin listener (/chaos, /metrics, /health_check) on --bind;
    /// 0 picks a free one (logged at start). Never registered with discovery.
    #[arg(long)]
    admin_port: Option<u16>,
    /// Token discovery requires to register (its registration_token). Prefer
    /// the environment variable REGISTRATION_TOKEN: a flag shows in `ps`.
    #[arg(long)]
    registration_token: Option<String>,
    /// Largest request head taken, in bytes (default 32768: above the gateway's 16 KiB).
    #[arg(long)]
    max_header_bytes: Option<usize>,
    /// PEM CA file an https:// discovery_url's certificate must chain to.
    #[arg(long)]
    discovery_ca: Option<String>,
    /// PEM client certificate shown to an https discovery (with --discovery-key).
    #[arg(long)]
    discovery_cert: Option<String>,
    /// PEM private key of --discovery-cert.
    #[arg(long)]
    discovery_key: Option<String>,
}

impl Flags {
    /// A flag beats the file, the file beats the default; gives back the
    /// common flags, which say what to do with the result.
    fn apply(self, config: &mut AppConfig) -> Common {
        let Flags {
            common,
            port,
            bind,
            advertise_host,
            discovery_url,
            namespace,
            register_interval,
            health_check_path,
            chaos,
            admin_port,
            registration_token,
            max_header_bytes,
            discovery_ca,
            discovery_cert,
            discovery_key,
        } = self;
        set(&mut config.port, port);
        set(&mut config.bind, bind);
        set(&mut config.advertise_host, advertise_host);
        set(&mut config.discovery_url, discovery_url);
        set(&mut config.namespace, namespace);
        set(&mut config.register_interval, register_interval);
        set(&mut config.health_check_path, health_check_path);
        set(&mut config.chaos, chaos);
        set(&mut config.admin_port, admin_port);
        set(&mut config.max_header_bytes, max_header_bytes);
        if registration_token.is_some() {
            config.registration_token = registration_token;
        }
        for (field, flag) in [
            (&mut config.discovery_ca, discovery_ca),
            (&mut config.discovery_cert, discovery_cert),
            (&mut config.discovery_key, discovery_key),
        ] {
            if flag.is_some() {
                *field = flag;
            }
        }
        common
    }
}

/// The environment beats the file (and loses to a flag, applied after).
fn apply_env(config: &mut AppConfig) {
    // An empty one counts as unset, as `REGISTRATION_TOKEN=` is meant.
    if let Some(token) = std::env::var_os("REGISTRATION_TOKEN").filter(|t| !t.is_empty()) {
        // A token that is not UTF-8 cannot be valid; validation then names it.
        config.registration_token = Some(token.to_string_lossy().into_owned());
    }
}

fn main() -> ExitCode {
    let flags: Flags = shared::cli::parse();
    let mut config: AppConfig = match flags.common.start() {
        Ok(c) => c,
        Err(code) => return code,
    };
    apply_env(&mut config);
    let common = flags.apply(&mut config);
    if let Some(code) = common.check_with_files(&config, app::check_files) {
        return code;
    }
    // With TLS files to rotate, SIGHUP reads them again; otherwise it ends
    // the process as it always has.
    if config.tls.is_some() || config.discovery_ca.is_some() {
        let reload = |h: &app::Handle| {
            let _ = h.reload_tls();
            std::future::ready(())
        };
        return shared::shutdown::run_until_signal_with_reload(
            app::spawn(config),
            |h| h.shutdown(),
            reload,
        );
    }
    shared::shutdown::run_until_signal(app::spawn(config), |h| h.shutdown())
}
