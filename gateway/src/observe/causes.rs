//! Why the request path gave up on a try or skipped an instance: named
//! once, counted in the gateway-wide counters, the per-instance statistics
//! and the logs, and decided on by the retry policy.

/// Why an instance was skipped without a connection being tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Skip {
    /// Every address of it is outside `allowed_upstreams`.
    Denied,
    /// Its host name does not resolve.
    Unresolved,
}

impl Skip {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Skip::Denied => "denied",
            Skip::Unresolved => "unresolved",
        }
    }
}

/// Why a try was given up and another instance chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failover {
    Connect,
    Timeout,
    Broken,
    Status5xx,
}

impl Failover {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Failover::Connect => "connect",
            Failover::Timeout => "timeout",
            Failover::Broken => "broken",
            Failover::Status5xx => "status_5xx",
        }
    }
}
