//! `gateway [--config FILE] [--listen ADDR] [--admin-listen ADDR] [--discovery-url URL]`.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Round-robin HTTP/1.1 gateway fed by discovery's pushed instance sets.
#[derive(Parser)]
#[command(version)]
struct Flags {
    /// JSON config file (keys as in the README); defaults apply without one.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address clients send requests to, e.g. 127.0.0.1:8000 (beats the file).
    #[arg(long)]
    listen: Option<String>,
    /// Address of /metrics, /status and /health_check (beats the file).
    #[arg(long)]
    admin_listen: Option<String>,
    /// Discovery's base URL, e.g. http://127.0.0.1:8500 (beats the file).
    #[arg(long)]
    discovery_url: Option<String>,
    /// Executor threads (0: one per core).
    #[arg(long)]
    worker_threads: Option<usize>,
    /// Log one request in N (0: failures only, 1: every request).
    #[arg(long)]
    access_log_sample: Option<u64>,
    /// error, warn, info, debug or trace (or LOG_LEVEL).
    #[arg(long)]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    shared::logging::init(flags.log_level.as_deref());
    let mut config: shared::config::GatewayConfig =
        match shared::config::load(flags.config.as_deref()) {
            Ok(c) => c,
            Err(e) => return shared::shutdown::fail(&e),
        };
    if let Some(v) = flags.listen {
        config.listen = v;
    }
    if let Some(v) = flags.admin_listen {
        config.admin_listen = v;
    }
    if let Some(v) = flags.discovery_url {
        config.discovery_url = v;
    }
    if let Some(v) = flags.access_log_sample {
        config.access_log_sample = v;
    }
    if let Some(v) = flags.worker_threads {
        config.worker_threads = v;
    }
    gateway::init_runtime(config.worker_threads);
    shared::shutdown::run_until_signal(gateway::spawn(config), |h| h.shutdown())
}
