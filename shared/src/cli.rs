//! The flags every service binary shares, so `discovery`, `gateway` and `app`
//! read their config file, log level and log format the same way.

use serde::de::DeserializeOwned;
use std::path::PathBuf;
use std::process::ExitCode;

/// `--config FILE`, `--log-level LEVEL` and `--log-format pretty|json`;
/// flatten into a binary's flags.
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
}

impl Common {
    /// Starts logging, then loads the config file (defaults without one);
    /// on a bad file the error is logged and the exit code to return given.
    pub fn start<T: DeserializeOwned + Default>(&self) -> Result<T, ExitCode> {
        crate::logging::init_with(self.log_level.as_deref(), self.log_format);
        crate::config::load(self.config.as_deref()).map_err(|e| crate::shutdown::fail(&e))
    }
}

/// A flag given on the command line beats the value from the file.
pub fn set<T>(field: &mut T, flag: Option<T>) {
    if let Some(value) = flag {
        *field = value;
    }
}
