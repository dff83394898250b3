//! `up`'s own output. Nothing here panics on a closed stdout (`println!` does,
//! which is how `just up | tee log` then Ctrl-C used to orphan every child):
//! a failed write, or a pipe or terminal found hung up, marks stdout closed,
//! which the supervisor takes as a request to stop.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::fmt::Display;
use std::io::Write;
use std::os::fd::AsFd;

/// Stdout, until it fails.
#[derive(Debug, Default)]
pub struct Out {
    closed: bool,
}

impl Out {
    /// Writes one line; a failure (EPIPE, EIO) marks stdout closed and later lines are dropped.
    pub fn line(&mut self, text: impl Display) {
        if self.closed {
            return;
        }
        let mut stdout = std::io::stdout().lock();
        if writeln!(stdout, "{text}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            self.closed = true;
        }
    }

    /// Whether stdout is gone: a write failed, or the pipe lost its reader or
    /// the terminal hung up (seen without writing, by polling the descriptor).
    pub fn closed(&mut self) -> bool {
        if !self.closed && hung_up() {
            self.closed = true;
        }
        self.closed
    }
}

/// A pipe without a reader polls POLLERR, a hung-up terminal POLLHUP; a file
/// or a live terminal or pipe neither.
fn hung_up() -> bool {
    let stdout = std::io::stdout();
    let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLOUT)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) if n > 0 => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP)),
        _ => false,
    }
}

/// A line to stderr that cannot panic (eprintln! does when stderr is closed).
pub fn error(text: impl Display) {
    let _ = writeln!(std::io::stderr().lock(), "up: {text}");
}
