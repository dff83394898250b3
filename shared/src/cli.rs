//! The flags every service binary shares, so `discovery`, `gateway` and `app`
//! read their config file, log level and log format the same way, and check
//! a config the same way (`--check-config`, like `nginx -t`).
//!
//! A binary's `main` calls [`Common::start`] (logging, then the file), applies
//! its own flags and the environment, then [`Common::check`]: under
//! `--check-config` that prints the effective config and gives the exit code;
//! otherwise it refuses what the start would refuse, with the same message,
//! before anything binds.
//!
//! Every binary parses its flags with [`parse`], which adds two hidden ones:
//! `--completions SHELL` (the shell completion script) and `--man` (the man
//! page), printed on stdout before any config is read.

use crate::config::{AppConfig, DiscoveryConfig, GatewayConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Display;
use std::io::Write;
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::process::ExitCode;

/// The hidden flag that prints the completion script.
const COMPLETIONS: &str = "completions";
/// The hidden flag that prints the man page.
const MAN: &str = "man";

/// `P::parse()` with two hidden flags more, for packagers: `--completions
/// bash|zsh|fish|elvish|powershell` prints the binary's completion script,
/// `--man` its man page (roff, section 1); either then exits 0 (1 when
/// stdout cannot be written), before any config file is read or anything
/// binds. Errors and `--help` exit as `P::parse()` does.
pub fn parse<P: clap::Parser>() -> P {
    let mut matches = with_doc_flags(P::command()).get_matches();
    if let Some(code) = print_docs(&matches, P::command(), &mut std::io::stdout().lock()) {
        std::process::exit(code);
    }
    P::from_arg_matches_mut(&mut matches)
        .unwrap_or_else(|e| e.format(&mut with_doc_flags(P::command())).exit())
}

/// `cmd` with the hidden `--completions SHELL` and `--man`; each is
/// exclusive: given with anything else it is an error.
fn with_doc_flags(cmd: clap::Command) -> clap::Command {
    cmd.arg(
        clap::Arg::new(COMPLETIONS)
            .long(COMPLETIONS)
            .value_name("SHELL")
            .value_parser(clap::value_parser!(clap_complete::Shell))
            .help("Print the completion script for SHELL and exit")
            .hide(true)
            .exclusive(true),
    )
    .arg(
        clap::Arg::new(MAN)
            .long(MAN)
            .action(clap::ArgAction::SetTrue)
            .help("Print the man page (roff) and exit")
            .hide(true)
            .exclusive(true),
    )
}

/// What `--completions` or `--man` asked for, written to `out`; the exit
/// code, or `None` when neither was given. `cmd`: the binary's own flags.
fn print_docs(matches: &clap::ArgMatches, cmd: clap::Command, out: &mut dyn Write) -> Option<i32> {
    let written = if let Some(shell) = matches.get_one::<clap_complete::Shell>(COMPLETIONS) {
        completions(cmd, *shell, out)
    } else if matches.get_flag(MAN) {
        man_page(cmd, out)
    } else {
        return None;
    };
    Some(match written.and_then(|()| out.flush()) {
        Ok(()) => 0,
        // `--man | head`: the reader has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 1,
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            1
        }
    })
}

/// The completion script of `cmd` (named after it) for `shell`.
pub fn completions(
    mut cmd: clap::Command,
    shell: clap_complete::Shell,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let name = cmd.get_name().to_string();
    // generate() panics on a write error; render to memory first.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    out.write_all(&script)
}

/// The man page of `cmd`: roff, section 1, titled with its name.
pub fn man_page(cmd: clap::Command, out: &mut dyn Write) -> std::io::Result<()> {
    clap_mangen::Man::new(cmd).section("1").render(out)
}

/// `--config FILE`, `--log-level LEVEL`, `--log-format pretty|json` and
/// `--check-config`; flatten into a binary's flags.
#[derive(clap::Args)]
pub struct Common {
    /// JSON config file (keys as in the README); defaults apply without one.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// error, warn, info, debug or trace (or LOG_LEVEL).
    #[arg(long)]
    pub log_level: Option<String>,
    /// pretty or json (or LOG_FORMAT); default: pretty on a terminal, JSON otherwise.
    #[arg(long, value_enum)]
    pub log_format: Option<crate::logging::LogFormat>,
    /// Check the config file and flags as a start would, print the effective
    /// config as JSON on stdout and exit: 0 when good, 2 (with the error on
    /// stderr) when not. Binds nothing and contacts nothing.
    #[arg(long)]
    pub check_config: bool,
}

/// The exit code of a config (or any start-up) error.
pub const EXIT_INVALID: u8 = 2;

/// A config `--check-config` can check.
pub trait Check: Serialize + Clone {
    /// Replaces secrets with `"(redacted)"` before the config is printed.
    fn redact(&mut self) {}

    /// What a start would refuse before serving: `validate()`, and
    /// addresses, allow-lists and URLs that do not parse (or resolve).
    fn check(&self) -> Result<(), String>;
}

impl Common {
    /// Starts logging (not under `--check-config`, whose stdout carries the
    /// config alone), then loads the config file (defaults without one). On
    /// a bad file the error is printed once and the exit code to return given.
    pub fn start<T: DeserializeOwned + Default>(&self) -> Result<T, ExitCode> {
        if !self.check_config {
            crate::logging::init_with(self.log_level.as_deref(), self.log_format);
        }
        crate::config::load(self.config.as_deref()).map_err(|e| fail(&e))
    }

    /// [`Common::check`], and under `--check-config` also `files`: the
    /// service reads the files a good config names (certificates, CA files)
    /// as a start would, and a missing or bad one fails the check, named.
    pub fn check_with_files<T: Check>(
        &self,
        config: &T,
        files: impl FnOnce(&T) -> Result<(), String>,
    ) -> Option<ExitCode> {
        if self.check_config && config.check().is_ok() {
            if let Err(why) = files(config) {
                return Some(fail(&format!("invalid configuration: {why}")));
            }
        }
        self.check(config)
    }

    /// Checks `config` (the file with the flags and environment applied).
    /// `Some(code)`: exit with it (`--check-config`, or a config a start would
    /// refuse, its error printed once); `None`: go on and start.
    pub fn check<T: Check>(&self, config: &T) -> Option<ExitCode> {
        if let Err(why) = config.check() {
            return Some(fail(&format!("invalid configuration: {why}")));
        }
        if !self.check_config {
            return None;
        }
        let printed = effective(config).and_then(|text| {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{text}")
                .and_then(|()| out.flush())
                .map_err(|e| format!("cannot print the configuration: {e}"))
        });
        Some(match printed {
            Ok(()) => {
                eprintln!("configuration ok");
                ExitCode::SUCCESS
            }
            Err(why) => fail(&why),
        })
    }
}

/// The config as pretty JSON, keys in the struct's order, secrets redacted.
pub fn effective<T: Check>(config: &T) -> Result<String, String> {
    let mut shown = config.clone();
    shown.redact();
    serde_json::to_string_pretty(&shown).map_err(|e| format!("cannot show the configuration: {e}"))
}

/// What a redacted secret reads as.
const REDACTED: &str = "(redacted)";

fn redact(secret: &mut Option<String>) {
    if secret.is_some() {
        *secret = Some(REDACTED.into());
    }
}

/// Prints a start-up error once, and gives the exit code for it (2).
///
/// To stderr, where a person running the binary looks; and also as a log
/// line when the log goes somewhere else (stdout to a collector, stderr to
/// a terminal), so the collector learns why the process ended. When stdout
/// and stderr are one terminal, pipe or file, the stderr line alone is
/// written: both would print the error twice there.
pub fn fail(error: &dyn Display) -> ExitCode {
    eprintln!("error: {error}");
    if !stdout_is_stderr() {
        log::error!("{error}");
    }
    ExitCode::from(EXIT_INVALID)
}

/// Whether stdout and stderr are the same open file (terminal, pipe or
/// file: one device and inode); true also when either cannot be examined.
fn stdout_is_stderr() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let identity = |fd: std::os::fd::BorrowedFd<'_>| {
        let file = std::fs::File::from(fd.try_clone_to_owned().ok()?);
        let meta = file.metadata().ok()?;
        Some((meta.dev(), meta.ino()))
    };
    match (
        identity(std::io::stdout().as_fd()),
        identity(std::io::stderr().as_fd()),
    ) {
        (Some(out), Some(err)) => out == err,
        _ => true,
    }
}

/// A flag given on the command line beats the value from the file.
pub fn set<T>(field: &mut T, flag: Option<T>) {
    if let Some(value) = flag {
        *field = value;
    }
}

/// `validate()`'s errors, then the ones `more` adds, joined as validate joins them.
fn checked(
    validated: Result<(), crate::config::ConfigError>,
    more: impl FnOnce(&mut Vec<String>),
) -> Result<(), String> {
    let mut errors: Vec<String> = validated.err().map(|e| e.to_string()).into_iter().collect();
    more(&mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// `key` names an address a listener binds: `HOST:PORT` that resolves.
fn address(errors: &mut Vec<String>, key: &str, value: &str) {
    match value.to_socket_addrs().map(|mut found| found.next()) {
        Ok(Some(_)) => {}
        Ok(None) => errors.push(format!("{key} {value:?} resolves to no address")),
        Err(e) => errors.push(format!(
            "{key} must be HOST:PORT (e.g. 127.0.0.1:8000), got {value:?}: {e}"
        )),
    }
}

impl Check for DiscoveryConfig {
    fn redact(&mut self) {
        redact(&mut self.registration_token);
    }

    fn check(&self) -> Result<(), String> {
        checked(self.validate(), |errors| {
            address(errors, "listen", &self.listen);
            if let Err(why) = crate::allowed::AllowedHosts::parse(&self.allowed_hosts) {
                errors.push(why);
            }
        })
    }
}

impl Check for GatewayConfig {
    fn check(&self) -> Result<(), String> {
        // validate() parses allowed_upstreams and every discovery URL.
        checked(self.validate(), |errors| {
            address(errors, "listen", &self.listen);
            address(errors, "admin_listen", &self.admin_listen);
            let fixed = |a: &str| {
                a.to_socket_addrs()
                    .ok()
                    .and_then(|mut all| all.next())
                    .filter(|a| a.port() != 0)
            };
            if fixed(&self.listen).is_some() && fixed(&self.listen) == fixed(&self.admin_listen) {
                errors.push(format!(
                    "admin_listen must differ from listen (both {:?})",
                    self.listen
                ));
            }
        })
    }
}

impl Check for AppConfig {
    fn redact(&mut self) {
        redact(&mut self.registration_token);
    }

    fn check(&self) -> Result<(), String> {
        // validate() checks every discovery URL.
        checked(self.validate(), |errors| {
            if let Err(e) = (self.bind.as_str(), self.port).to_socket_addrs() {
                errors.push(format!(
                    "bind must be an IP address or a host name to listen on, got {:?}: {e}",
                    self.bind
                ));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn addresses_allow_lists_and_urls_are_checked() {
        assert!(DiscoveryConfig::default().check().is_ok());
        assert!(GatewayConfig::default().check().is_ok());
        assert!(AppConfig::default().check().is_ok());
        let d = DiscoveryConfig {
            listen: "127.0.0.1:99999".into(),
            allowed_hosts: vec!["10.0.0.0/33".into()],
            ..DiscoveryConfig::default()
        };
        let why = d.check().unwrap_err();
        assert!(why.contains("listen must be HOST:PORT"), "{why}");
        assert!(why.contains("allowed_hosts"), "{why}");
        let g = GatewayConfig {
            listen: "127.0.0.1:8000".into(),
            admin_listen: "127.0.0.1:8000".into(),
            ..GatewayConfig::default()
        };
        assert!(g.check().unwrap_err().contains("admin_listen must differ"));
        let g = GatewayConfig {
            admin_listen: "nowhere".into(),
            ..GatewayConfig::default()
        };
        assert!(g
            .check()
            .unwrap_err()
            .contains("admin_listen must be HOST:PORT"));
        let a = AppConfig {
            bind: "not an address".into(),
            discovery_url: "http://127.0.0.1:1,http://127.0.0.1:99999".into(),
            ..AppConfig::default()
        };
        let why = a.check().unwrap_err();
        assert!(
            why.contains("bind must be") && why.contains("discovery_url"),
            "{why}"
        );
    }

    #[derive(clap::Parser)]
    #[command(name = "demo", version)]
    struct Demo {
        #[command(flatten)]
        common: Common,
    }

    fn docs(args: &[&str]) -> (Option<i32>, String) {
        use clap::CommandFactory;
        let matches = with_doc_flags(Demo::command())
            .try_get_matches_from(args)
            .unwrap();
        let mut out = Vec::new();
        let code = print_docs(&matches, Demo::command(), &mut out);
        (code, String::from_utf8(out).unwrap())
    }

    #[test]
    fn completions_and_man_page_name_the_flags() {
        let (code, bash) = docs(&["demo", "--completions", "bash"]);
        assert_eq!(code, Some(0));
        assert!(bash.contains("demo") && bash.contains("--config"), "{bash}");
        let (code, zsh) = docs(&["demo", "--completions", "zsh"]);
        assert_eq!(code, Some(0));
        assert!(zsh.starts_with("#compdef demo"), "{zsh}");
        let (code, man) = docs(&["demo", "--man"]);
        assert_eq!(code, Some(0));
        assert!(man.contains(".TH demo 1"), "{man}");
        assert!(man.contains("\\-\\-check\\-config"), "{man}");
        // The flags are hidden: neither in the page nor in --help.
        assert!(!man.contains("completions"), "{man}");
        // Without them, the binary goes on; with anything else, an error.
        assert_eq!(docs(&["demo", "--config", "x.json"]).0, None);
        let both = with_doc_flags(<Demo as clap::CommandFactory>::command())
            .try_get_matches_from(["demo", "--man", "--config", "x.json"]);
        assert!(both.is_err());
    }

    #[test]
    fn the_effective_config_hides_secrets() {
        let a = AppConfig {
            registration_token: Some("s3cret".into()),
            ..AppConfig::default()
        };
        let text = effective(&a).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["registration_token"], "(redacted)");
        assert_eq!(json["discovery_url"], "http://127.0.0.1:8500");
        // Unset stays null, and everything else reads back as it was.
        let text = effective(&AppConfig::default()).unwrap();
        let back: AppConfig = crate::config::parse(&text).unwrap();
        assert_eq!(back, AppConfig::default());
    }
}
