//! `gateway [--config FILE] [--listen ADDR] [--admin-listen ADDR] [--discovery-url URL]`.

use clap::Parser;
use shared::cli::{set, Common};
use std::process::ExitCode;

/// Round-robin HTTP/1.1 gateway fed by discovery's pushed instance sets.
#[derive(Parser)]
#[command(version)]
struct Flags {
    #[command(flatten)]
    common: Common,
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
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let mut config: shared::config::GatewayConfig = match flags.common.start() {
        Ok(c) => c,
        Err(code) => return code,
    };
    set(&mut config.listen, flags.listen);
    set(&mut config.admin_listen, flags.admin_listen);
    set(&mut config.discovery_url, flags.discovery_url);
    set(&mut config.access_log_sample, flags.access_log_sample);
    set(&mut config.worker_threads, flags.worker_threads);
    gateway::init_runtime(config.worker_threads);
    shared::shutdown::run_until_signal(gateway::spawn(config), |h| h.shutdown())
}
