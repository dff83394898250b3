//! The state file `just up` writes (`target/up/state.json`): the URLs of the
//! running system and, for each process it started, its pid, command line and
//! log file. `loadtest --chaos discovery` uses it to stop and restart
//! discovery; `up` reads it back at exit to stop every process it lists,
//! including one the load test restarted; `up down` (`just down`) signals
//! the `up` it names, or stops the listed processes itself when `up` is gone.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where `just up` keeps its state, relative to the workspace root.
pub const DEFAULT_PATH: &str = "target/up/state.json";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RunState {
    pub discovery_url: String,
    pub gateway_url: String,
    pub admin_url: String,
    /// Working directory the command lines are relative to.
    pub cwd: PathBuf,
    /// By name: `discovery`, `gateway`, `app-8080`, ...
    pub processes: BTreeMap<String, Process>,
    /// Every gateway's admin base URL when more than one serves
    /// `gateway_url` (`just cluster`'s two on one port); empty: `admin_url` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway_admin_urls: Vec<String>,
    /// Each app's admin base URL (`/chaos`, `/metrics`), by the `host:port` it
    /// is registered as: the chaos knobs are not on the business port.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub app_admin_urls: BTreeMap<String, String>,
    /// The token the apps register with, so instances another tool starts
    /// (`loadtest --chaos kill`) can register too. The file is private (0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_token: Option<String>,
    /// With `up --tls`: the PEM file of the CA that signed every certificate
    /// of the run, which `loadtest` trusts for an `https://` gateway URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The pid of the `up` supervisor itself, which `up down` signals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_pid: Option<u32>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Process {
    pub pid: u32,
    /// Program and arguments, as started.
    pub argv: Vec<String>,
    /// Where its stdout and stderr go (appended).
    pub log: PathBuf,
}

impl RunState {
    pub fn load(path: &Path) -> Result<RunState, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read {} (is `just up` running?): {e}",
                path.display()
            )
        })?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes the file whole, through a rename, so a reader never sees half of it.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        let tmp = path.with_extension("json.tmp");
        // Owner-only: it may hold the registration token.
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::remove_file(&tmp);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(text.as_bytes())
        };
        write().map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}
