//! The ordered stop shared by `up` (Ctrl-C, SIGTERM, SIGHUP, a closed stdout)
//! and `up down`: the gateway first (it stops accepting and lets requests in
//! flight finish), then every app (each deregisters, so discovery's set and
//! the gateway's ring shrink cleanly), then discovery last, each group waited
//! for before the next gets its SIGTERM. Whatever outlives its grace period is
//! killed.

use crate::out::Out;
use crate::pids;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

/// A process to stop: `up` waits on its own children, `down` polls pids.
pub trait Member {
    fn name(&self) -> &str;
    /// The pid to signal, if it still runs.
    fn pid(&mut self) -> Option<u32>;
}

/// Stop order: 0 gateway, 1 apps (and anything unknown), 2 discovery.
pub fn rank(name: &str) -> u8 {
    match name {
        "gateway" => 0,
        "discovery" => 2,
        _ => 1,
    }
}

/// How long each group has after SIGTERM before it is killed.
pub const GRACE: Duration = Duration::from_secs(10);

/// Stops `members` group by group; returns the names that had to be killed.
pub fn in_order<M: Member>(members: &mut [M], grace: Duration, out: &mut Out) -> Vec<String> {
    let mut killed = Vec::new();
    for group in 0..=2u8 {
        let mut now: Vec<&mut M> = members
            .iter_mut()
            .filter(|m| rank(m.name()) == group)
            .collect();
        for m in now.iter_mut() {
            if let Some(pid) = m.pid() {
                pids::signal(pid, Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        while now.iter_mut().any(|m| m.pid().is_some()) {
            if Instant::now() >= deadline {
                for m in now.iter_mut() {
                    if let Some(pid) = m.pid() {
                        out.line(format_args!(
                            "up: {} (pid {pid}) did not stop within {grace:?}: killing it",
                            m.name()
                        ));
                        pids::signal(pid, Signal::SIGKILL);
                        killed.push(m.name().to_string());
                    }
                }
                let hard = Instant::now() + Duration::from_secs(2);
                while now.iter_mut().any(|m| m.pid().is_some()) && Instant::now() < hard {
                    std::thread::sleep(Duration::from_millis(20));
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    killed
}
