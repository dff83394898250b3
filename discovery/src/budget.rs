//! Splits the process's file descriptors between client connections and
//! health checks, so that no number of clients can leave the checker without
//! sockets (which used to make discovery mark every instance unavailable).

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// Descriptors kept for everything else: stdio, the listener, the event
/// loop, resolver sockets, log files.
pub const RESERVED: u64 = 32;

/// How many connections and checks may be open at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub connections: usize,
    pub checks: usize,
    /// The soft `RLIMIT_NOFILE` it was planned against, if known and finite.
    pub nofile: Option<u64>,
}

/// Fits `max_connections` and `max_checks` under the current descriptor limit.
pub fn plan(max_connections: usize, max_checks: usize) -> Budget {
    let soft = getrlimit(Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
        .filter(|s| *s != RLIM_INFINITY);
    split(soft, max_connections, max_checks)
}

/// The split for a given soft limit: checks get up to a quarter of what is
/// left after [`RESERVED`], connections the rest; each at least 1.
pub fn split(soft: Option<u64>, max_connections: usize, max_checks: usize) -> Budget {
    let Some(soft) = soft else {
        return Budget {
            connections: max_connections,
            checks: max_checks,
            nofile: None,
        };
    };
    let free = usize::try_from(soft.saturating_sub(RESERVED)).unwrap_or(usize::MAX);
    let checks = max_checks.min(free / 4).max(1);
    let connections = max_connections.min(free.saturating_sub(checks)).max(1);
    Budget {
        connections,
        checks,
        nofile: Some(soft),
    }
}

/// Raises the soft descriptor limit towards the hard one, as far as
/// `wanted` (what the config asks for): a process-wide choice, made by the
/// binary. Returns the soft limit now in force.
pub fn raise_nofile(wanted: u64) -> Option<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    let target = wanted.min(hard);
    if soft != RLIM_INFINITY
        && target > soft
        && setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok()
    {
        return Some(target);
    }
    Some(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_limit_keeps_descriptors_for_checks() {
        let b = split(Some(128), 1024, 256);
        assert_eq!(b.checks, 24);
        assert_eq!(b.connections, 72);
        assert!(b.checks + b.connections + RESERVED as usize <= 128);
        let b = split(Some(1 << 20), 1024, 256);
        assert_eq!((b.connections, b.checks), (1024, 256));
        let b = split(None, 5, 6);
        assert_eq!((b.connections, b.checks), (5, 6));
        let b = split(Some(10), 1024, 256);
        assert_eq!((b.connections, b.checks), (1, 1));
    }
}
