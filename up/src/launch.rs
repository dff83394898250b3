//! Starting a child that dies with `up`, whatever kills `up`.
//!
//! The Linux parent-death signal (`PR_SET_PDEATHSIG`) must be set in the child
//! between fork and exec, which `std::process::Command` offers only through
//! `unsafe` `pre_exec` (the workspace forbids unsafe code). So `up` starts
//! itself as a tiny launcher, `up exec-child --parent PID -- PROGRAM ARGS`,
//! which sets the signal with nix's safe wrapper, checks that its parent is
//! still `PID` (if `up` died in between, the signal would never come), and
//! execs the program in its own place: same pid, same argv, same environment.
//! The setting survives exec (not for set-uid programs, which these are not).
//!
//! The signal fires when the *thread* that forked the child ends, so every
//! child is started from `up`'s main thread, which lives as long as `up`.

use nix::sys::prctl::set_pdeathsig;
use nix::sys::signal::Signal;
use nix::unistd::{execvp, getppid};
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::OnceLock;

/// The signal a child gets when `up` dies: SIGTERM, so the gateway still
/// drains and the apps still try to deregister.
pub const ON_PARENT_DEATH: Signal = Signal::SIGTERM;

/// One process to start: program and arguments, extra environment, log file.
#[derive(Debug)]
pub struct Spec<'a> {
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub log: &'a Path,
    /// Append to the log (a restart) rather than start it afresh.
    pub append: bool,
}

/// Starts `spec` through the launcher: stdin from /dev/null, stdout and
/// stderr to the log, its own process group (a Ctrl-C in the terminal reaches
/// only `up`, which then stops the children in order).
pub fn spawn(spec: &Spec) -> Result<Child, String> {
    let me = own_exe()?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(spec.append)
        .truncate(!spec.append)
        .open(spec.log)
        .map_err(|e| format!("cannot open {}: {e}", spec.log.display()))?;
    let err = log
        .try_clone()
        .map_err(|e| format!("cannot open {}: {e}", spec.log.display()))?;
    let Some(program) = spec.argv.first() else {
        return Err("empty command line".into());
    };
    Command::new(me)
        .arg("exec-child")
        .arg("--parent")
        .arg(std::process::id().to_string())
        .arg("--")
        .args(spec.argv)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))
}

/// This executable's path, taken once at the first call (made at start-up):
/// rebuilt while `up` runs, the path stays good, where `/proc/self/exe` would
/// then read "... (deleted)".
pub fn own_exe() -> Result<PathBuf, String> {
    static EXE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    EXE.get_or_init(|| {
        std::env::current_exe()
            .map_err(|e| format!("cannot find the up executable to launch with: {e}"))
    })
    .clone()
}

/// The launcher's side (`up exec-child`): arm the parent-death signal, make
/// sure the parent is still there, become the program. Returns only on failure.
pub fn exec_child(parent: u32, argv: &[OsString]) -> ExitCode {
    if let Err(e) = set_pdeathsig(ON_PARENT_DEATH) {
        crate::out::error(format_args!("cannot set the parent-death signal: {e}"));
        return ExitCode::from(126);
    }
    // Set too late if the parent already died: we were re-parented. Stop here.
    if u32::try_from(getppid().as_raw()).ok() != Some(parent) {
        crate::out::error("the up process that started this one is gone: not starting");
        return ExitCode::from(1);
    }
    let args: Result<Vec<CString>, _> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes().to_vec()))
        .collect();
    let args = match args {
        Ok(args) if !args.is_empty() => args,
        _ => {
            crate::out::error("exec-child needs a command line without NUL bytes");
            return ExitCode::from(2);
        }
    };
    let Err(e) = execvp(&args[0], &args);
    crate::out::error(format_args!(
        "cannot run {}: {e}",
        args[0].to_string_lossy()
    ));
    ExitCode::from(127)
}
