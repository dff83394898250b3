//! `app [--config FILE] [--port N] [--discovery-url URL] [--chaos] ...`: one
//! instance of Service A; runs until SIGINT/SIGTERM, then deregisters and drains.

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
    /// Base URL of discovery, e.g. http://127.0.0.1:8500.
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
    /// Turns on PUT/GET /chaos; `--chaos=false` overrides a file that turns it on.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    chaos: Option<bool>,
}

impl Flags {
    /// A flag beats the file, the file beats the default.
    fn apply(self, config: &mut AppConfig) {
        let Flags {
            common: _,
            port,
            bind,
            advertise_host,
            discovery_url,
            namespace,
            register_interval,
            health_check_path,
            chaos,
        } = self;
        set(&mut config.port, port);
        set(&mut config.bind, bind);
        set(&mut config.advertise_host, advertise_host);
        set(&mut config.discovery_url, discovery_url);
        set(&mut config.namespace, namespace);
        set(&mut config.register_interval, register_interval);
        set(&mut config.health_check_path, health_check_path);
        set(&mut config.chaos, chaos);
    }
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let mut config: AppConfig = match flags.common.start() {
        Ok(c) => c,
        Err(code) => return code,
    };
    flags.apply(&mut config);
    shared::shutdown::run_until_signal(app::spawn(config), |h| h.shutdown())
}
