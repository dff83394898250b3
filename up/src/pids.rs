//! Looking at and signalling processes by pid, for processes `up` may not
//! have started itself (one `loadtest` restarted) or that `up down` finds in
//! the state file.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn pid(pid: u32) -> Option<Pid> {
    i32::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .map(Pid::from_raw)
}

/// Whether a process with this pid runs. A zombie (exited, not yet reaped by
/// its parent) does not count: it holds no port and does no work.
pub fn alive(p: u32) -> bool {
    let Some(at) = pid(p) else {
        return false;
    };
    if kill(at, None).is_err() {
        return false;
    }
    // /proc/PID/stat: "PID (comm) S ...", where comm may hold spaces or parentheses.
    match std::fs::read_to_string(format!("/proc/{p}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_none_or(|state| state != 'Z' && state != 'X'),
        Err(_) => true,
    }
}

/// Whether `pid` runs `program` (compared with its argv[0]): a stale state
/// file may name a pid the system has since given to another program.
pub fn runs(p: u32, program: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{p}/cmdline")) else {
        return false;
    };
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    argv0 == program.as_bytes()
}

/// Whether `pid` is an `up` supervisor (its argv[0] names a file `up`).
pub fn runs_up(p: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{p}/cmdline")) else {
        return false;
    };
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let argv0 = String::from_utf8_lossy(argv0);
    std::path::Path::new(argv0.as_ref())
        .file_name()
        .is_some_and(|n| n == "up")
}

/// Sends `signal`; a pid that is gone is not an error worth reporting.
pub fn signal(p: u32, signal: Signal) {
    if let Some(at) = pid(p) {
        let _ = kill(at, signal);
    }
}
