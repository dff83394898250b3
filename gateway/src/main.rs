//! `gateway [--config FILE] [--listen ADDR] [--admin-listen ADDR] [--discovery-url URL]
//! [--idempotency-store URL] [--discovery-ca FILE] [--check-config]`.
//!
//! SIGHUP reloads the config file (see `gateway::reload`); SIGINT/SIGTERM drain and stop.

use clap::Parser;
use shared::cli::{set, Common};
use std::process::ExitCode;

/// mimalloc, not glibc's malloc: a keyed request's record is freed cold, at
/// eviction, where glibc's free lists cost most: keyed POSTs ran at 0.83x the
/// unkeyed throughput with glibc, 0.98x with mimalloc, which costs unkeyed
/// POSTs nothing (bench/results-idempotency.md, bench/results-allocator.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Where idempotency records live: memory or etcd://HOST:PORT[,...]/PREFIX (beats the file).
    #[arg(long)]
    idempotency_store: Option<String>,
    /// PEM CA file an https:// discovery_url's certificate must chain to (beats the file).
    #[arg(long)]
    discovery_ca: Option<String>,
}

fn main() -> ExitCode {
    let flags: Flags = shared::cli::parse();
    let mut config: shared::config::GatewayConfig = match flags.common.start() {
        Ok(c) => c,
        Err(code) => return code,
    };
    flags.apply(&mut config);
    if let Some(code) = flags.common.check_with_files(&config, gateway::check_files) {
        return code;
    }
    gateway::init_runtime();
    // SIGHUP: read the file again, the flags beating it as at start.
    let reload = move |h: &gateway::Handle| {
        let next = shared::config::load(flags.common.config.as_deref())
            .map(|mut c| {
                flags.apply(&mut c);
                c
            })
            .map_err(|e| e.to_string());
        let ctx = h.context();
        async move {
            let _ = gateway::reload::apply(&ctx, next).await;
        }
    };
    shared::shutdown::run_until_signal_with_reload(gateway::spawn(config), |h| h.shutdown(), reload)
}

impl Flags {
    /// A flag given on the command line beats the file.
    fn apply(&self, config: &mut shared::config::GatewayConfig) {
        set(&mut config.listen, self.listen.clone());
        set(&mut config.admin_listen, self.admin_listen.clone());
        set(&mut config.discovery_url, self.discovery_url.clone());
        set(&mut config.access_log_sample, self.access_log_sample);
        set(&mut config.worker_threads, self.worker_threads);
        set(
            &mut config.idempotency_store,
            self.idempotency_store.clone(),
        );
        if self.discovery_ca.is_some() {
            config.discovery_ca.clone_from(&self.discovery_ca);
        }
    }
}
