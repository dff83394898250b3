//! `discovery [--config FILE] [--listen ADDR]`: runs until SIGINT/SIGTERM.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Service registry with health checks, round-robin lookup and a watch stream.
#[derive(Parser)]
#[command(version)]
struct Flags {
    /// JSON config file (keys as in the README); defaults apply without one.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8500 (beats the file).
    #[arg(long)]
    listen: Option<String>,
    /// error, warn, info, debug or trace (or LOG_LEVEL).
    #[arg(long)]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    shared::logging::init(flags.log_level.as_deref());
    let mut config: shared::config::DiscoveryConfig =
        match shared::config::load(flags.config.as_deref()) {
            Ok(c) => c,
            Err(e) => return shared::shutdown::fail(&e),
        };
    if let Some(listen) = flags.listen {
        config.listen = listen;
    }
    shared::shutdown::run_until_signal(discovery::spawn(config), |h| h.shutdown())
}
