//! `discovery [--config FILE] [--listen ADDR]`: runs until SIGINT/SIGTERM.

use clap::Parser;
use shared::cli::{set, Common};
use std::process::ExitCode;

/// Service registry with health checks, round-robin lookup and a watch stream.
#[derive(Parser)]
#[command(version)]
struct Flags {
    #[command(flatten)]
    common: Common,
    /// Address to listen on, e.g. 127.0.0.1:8500 (beats the file).
    #[arg(long)]
    listen: Option<String>,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let mut config: shared::config::DiscoveryConfig = match flags.common.start() {
        Ok(c) => c,
        Err(code) => return code,
    };
    set(&mut config.listen, flags.listen);
    shared::shutdown::run_until_signal(discovery::spawn(config), |h| h.shutdown())
}
