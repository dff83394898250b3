//! `up`: runs the whole system locally, the way `just up` does, and `up down`
//! stops it from anywhere.
//!
//! Checks every fixed port first (no half-started system), starts discovery,
//! the apps and the gateway from the shipped config files, each with a
//! parent-death signal so none outlives `up`, learns the ports of those on
//! port 0 (`--free-ports`) from their logs, waits until the gateway routes
//! to every app, prints where everything is, streams readable logs, restarts
//! a process that crashes, and on Ctrl-C, SIGTERM, SIGHUP or a closed stdout
//! stops the gateway, then the apps, then discovery.

mod down;
mod launch;
mod logs;
mod out;
mod pids;
mod plan;
mod ports;
mod stop;
mod supervise;
mod tls;

use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

/// Start discovery, the apps and the gateway; Ctrl-C (or `up down`) stops them all.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    start: Flags,
}

#[derive(Subcommand)]
enum Command {
    /// Stop the running system (the one the state file lists) and wait until every process has exited.
    Down {
        /// The state file `up` wrote.
        #[arg(long, default_value = shared::runstate::DEFAULT_PATH)]
        state: PathBuf,
    },
    /// Internal: how `up` starts each child (sets the parent-death signal, then execs).
    #[command(hide = true)]
    ExecChild {
        /// The pid of the `up` that must still be the parent.
        #[arg(long)]
        parent: u32,
        /// Program and arguments.
        #[arg(last = true, required = true)]
        argv: Vec<OsString>,
    },
}

#[derive(clap::Args)]
struct Flags {
    /// Folder with discovery.json, app.json and gateway.json.
    #[arg(long, default_value = "config")]
    config_dir: PathBuf,
    /// Folder with the discovery, app and gateway binaries (default: beside this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where the pids, command lines, registration token and logs go.
    #[arg(long, default_value = shared::runstate::DEFAULT_PATH)]
    state: PathBuf,
    /// Ports of the apps, comma-separated (the seed's three by default).
    #[arg(long, value_delimiter = ',', conflicts_with = "apps")]
    app_ports: Option<Vec<u16>>,
    /// How many apps, on consecutive ports from 8080.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=100))]
    apps: Option<u16>,
    /// Gateway port (the interface stays the config file's).
    #[arg(long)]
    gateway_port: Option<u16>,
    /// Gateway admin port.
    #[arg(long)]
    admin_port: Option<u16>,
    /// Discovery port.
    #[arg(long)]
    discovery_port: Option<u16>,
    /// Any free ports for everything no port flag names: each process binds port 0 and up reads the port it got from its log (tests, or a second system beside `just up`).
    #[arg(long)]
    free_ports: bool,
    /// Run the apps without `--chaos` (no fault knobs; `loadtest --chaos slow` then cannot work).
    #[arg(long)]
    no_chaos: bool,
    /// The token apps register with (default: a random one for this run, kept in the state file).
    #[arg(long)]
    registration_token: Option<String>,
    /// Over TLS: a local CA and certificates for localhost in the state folder
    /// (tls/, reused while valid), the gateway's HTTPS port (--tls-port, 8443)
    /// beside its plain one; `just loadtest` then loads it over HTTPS.
    #[arg(long)]
    tls: bool,
    /// The gateway's HTTPS port with --tls.
    #[arg(long, requires = "tls")]
    tls_port: Option<u16>,
    /// Seconds to wait for the gateway to route to every app.
    #[arg(long, default_value_t = 30)]
    ready_within: u64,
}

/// The seed's app ports.
const FIRST_APP_PORT: u16 = 8080;

fn main() -> ExitCode {
    let cli: Cli = shared::cli::parse();
    match cli.command {
        Some(Command::ExecChild { parent, argv }) => launch::exec_child(parent, &argv),
        Some(Command::Down { state }) => match down::run(&state, &mut out::Out::default()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        None => start(cli.start),
    }
}

fn start(flags: Flags) -> ExitCode {
    if let Err(e) = launch::own_exe() {
        return fail(&e);
    }
    let bin_dir = match flags.bin_dir.clone().or_else(plan::own_dir) {
        Some(dir) => dir,
        None => return fail("cannot tell where the binaries are: pass --bin-dir"),
    };
    let app_ports = match (flags.app_ports, flags.apps) {
        (Some(ports), _) => ports,
        (None, Some(n)) => (0..n)
            .filter_map(|i| FIRST_APP_PORT.checked_add(i))
            .collect(),
        (None, None) => vec![FIRST_APP_PORT, FIRST_APP_PORT + 1, FIRST_APP_PORT + 2],
    };
    let registration_token = match flags.registration_token {
        Some(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()) => t,
        Some(_) => return fail("--registration-token must be visible ASCII characters"),
        None => match plan::new_token() {
            Ok(t) => t,
            Err(e) => return fail(&e),
        },
    };
    let plan = match plan::Plan::new(&plan::Options {
        config_dir: &flags.config_dir,
        bin_dir: &bin_dir,
        state: &flags.state,
        app_ports,
        free: flags.free_ports,
        discovery_port: flags.discovery_port,
        gateway_port: flags.gateway_port,
        admin_port: flags.admin_port,
        chaos: !flags.no_chaos,
        registration_token,
        tls: flags.tls,
        tls_port: flags.tls_port,
    }) {
        Ok(plan) => plan,
        Err(e) => return fail(&e),
    };
    if let Err(e) = plan.check() {
        return fail(&e);
    }
    match supervise::run(plan, std::time::Duration::from_secs(flags.ready_within)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(message: &str) -> ExitCode {
    out::error(message);
    ExitCode::FAILURE
}
