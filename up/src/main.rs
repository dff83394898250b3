//! `up`: runs the whole system locally, the way `just up` does.
//!
//! Checks every port first (no half-started system), starts discovery, the
//! apps and the gateway from the shipped config files, waits until the
//! gateway routes to every app, prints where everything is, streams readable
//! logs, and on Ctrl-C stops every process it started, by pid.

mod logs;
mod plan;
mod supervise;

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Start discovery, the apps and the gateway; Ctrl-C stops them all.
#[derive(Parser)]
#[command(version)]
struct Flags {
    /// Folder with discovery.json, app.json and gateway.json.
    #[arg(long, default_value = "config")]
    config_dir: PathBuf,
    /// Folder with the discovery, app and gateway binaries (default: beside this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where the pids, command lines and logs go.
    #[arg(long, default_value = shared::runstate::DEFAULT_PATH)]
    state: PathBuf,
    /// Ports of the apps (the seed's three by default).
    #[arg(long, value_delimiter = ',', default_values_t = [8080u16, 8081, 8082])]
    app_ports: Vec<u16>,
    /// Pick free ports instead of the configured ones (for tests).
    #[arg(long)]
    free_ports: bool,
    /// Seconds to wait for the gateway to route to every app.
    #[arg(long, default_value_t = 30)]
    ready_within: u64,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let bin_dir = match flags.bin_dir.clone().or_else(plan::own_dir) {
        Some(dir) => dir,
        None => return fail("cannot tell where the binaries are: pass --bin-dir"),
    };
    let plan = match plan::Plan::new(
        &flags.config_dir,
        &bin_dir,
        &flags.state,
        &flags.app_ports,
        flags.free_ports,
    ) {
        Ok(plan) => plan,
        Err(e) => return fail(&e),
    };
    if let Err(e) = plan.check() {
        return fail(&e);
    }
    match supervise::run(&plan, std::time::Duration::from_secs(flags.ready_within)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("up: {message}");
    ExitCode::FAILURE
}
