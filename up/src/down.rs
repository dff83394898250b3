//! `up down` (`just down`): stops a running system from its state file, from
//! any terminal. With the `up` supervisor alive it gets SIGTERM and does the
//! ordered stop itself; whatever the file lists that still runs after that
//! (the supervisor was killed, or a process was started outside it) is
//! stopped in the same order here. Waits until every process has exited.

use crate::out::Out;
use crate::pids;
use crate::stop::{self, Member};
use nix::sys::signal::Signal;
use shared::runstate::RunState;
use std::path::Path;
use std::time::{Duration, Instant};

/// A process from the state file, followed by pid.
struct Listed {
    name: String,
    pid: u32,
}

impl Member for Listed {
    fn name(&self) -> &str {
        &self.name
    }

    fn pid(&mut self) -> Option<u32> {
        pids::alive(self.pid).then_some(self.pid)
    }
}

/// How long the supervisor has to stop its children before `down` takes over.
const SUPERVISOR_GRACE: Duration = Duration::from_secs(40);

pub fn run(state_path: &Path, out: &mut Out) -> Result<(), String> {
    let state = match RunState::load(state_path) {
        Ok(state) => state,
        Err(_) if !state_path.exists() => {
            out.line(format_args!(
                "up: nothing is running (no state file at {})",
                state_path.display()
            ));
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let mut stopped = 0;
    if let Some(pid) = state
        .up_pid
        .filter(|p| pids::alive(*p) && pids::runs_up(*p))
    {
        out.line(format_args!(
            "up: stopping the system (SIGTERM to up, pid {pid}): the gateway, then the apps, then discovery"
        ));
        pids::signal(pid, Signal::SIGTERM);
        let deadline = Instant::now() + SUPERVISOR_GRACE;
        while pids::alive(pid) {
            if Instant::now() >= deadline {
                out.line(format_args!(
                    "up: up (pid {pid}) did not stop within {SUPERVISOR_GRACE:?}: killing it"
                ));
                pids::signal(pid, Signal::SIGKILL);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        stopped += 1;
    }
    // Whatever the file lists that still runs the program it names.
    let mut left: Vec<Listed> = state
        .processes
        .iter()
        .filter(|(_, p)| {
            pids::alive(p.pid)
                && p.argv
                    .first()
                    .is_some_and(|program| pids::runs(p.pid, program))
        })
        .map(|(name, p)| Listed {
            name: name.clone(),
            pid: p.pid,
        })
        .collect();
    if !left.is_empty() {
        let names: Vec<String> = left
            .iter()
            .map(|l| format!("{} (pid {})", l.name, l.pid))
            .collect();
        out.line(format_args!("up: stopping {}", names.join(", ")));
        stop::in_order(&mut left, stop::GRACE, out);
        stopped += left.len();
    }
    // `up` removes the file itself when it stops; a stale one goes here.
    let _ = std::fs::remove_file(state_path);
    if stopped == 0 {
        out.line(format_args!(
            "up: nothing is running (removed the stale state file {})",
            state_path.display()
        ));
    } else {
        out.line("up: stopped");
    }
    Ok(())
}
