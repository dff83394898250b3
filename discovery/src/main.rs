//! `discovery [--config FILE] [--listen ADDR] [--discovery-ca FILE]
//! [--check-config]`: runs until SIGINT/SIGTERM; with `--check-config`,
//! checks the config (and reads the files it names), prints it and exits.
//! With `tls` configured, SIGHUP reads the certificate files again
//! (`discovery::Handle::reload_tls`); without it SIGHUP ends the process as
//! it always has.
//!
//! Env `DISCOVERY_REGISTRATION_TOKEN` (when set and not empty) beats the
//! file's `registration_token`: a secret is better kept out of files.

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
    /// PEM CA file peer replicas' https:// advertise_urls are verified against (beats the file).
    #[arg(long)]
    discovery_ca: Option<String>,
}

fn main() -> ExitCode {
    let flags: Flags = shared::cli::parse();
    let mut config: shared::config::DiscoveryConfig = match flags.common.start() {
        Ok(c) => c,
        Err(code) => return code,
    };
    set(&mut config.listen, flags.listen);
    if flags.discovery_ca.is_some() {
        config.discovery_ca = flags.discovery_ca;
    }
    if let Some(token) = std::env::var_os("DISCOVERY_REGISTRATION_TOKEN") {
        if !token.is_empty() {
            config.registration_token = Some(token.to_string_lossy().into_owned());
        }
    }
    if let Some(code) = flags
        .common
        .check_with_files(&config, discovery::check_files)
    {
        return code;
    }
    // Room for every connection and check the config allows, as far as the hard limit lets.
    let wanted = config.max_connections + config.max_concurrent_checks;
    discovery::budget::raise_nofile(wanted as u64 + discovery::budget::RESERVED);
    if config.tls.is_some() {
        let reload = |h: &discovery::Handle| {
            let _ = h.reload_tls();
            std::future::ready(())
        };
        return shared::shutdown::run_until_signal_with_reload(
            discovery::spawn(config),
            |h| h.shutdown(),
            reload,
        );
    }
    shared::shutdown::run_until_signal(discovery::spawn(config), |h| h.shutdown())
}
