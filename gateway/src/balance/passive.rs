//! Passive health: what an instance's own answers say about it, as Envoy's
//! outlier detection has it. A refused connect cools an instance down at
//! once ([`crate::proxy::retry::cools_down`]); answers it gets wrong (malformed, cut
//! short, stray bytes, a wrong request id) count in a row, and
//! `passive_health_failures` of them cool it down for `connect_cooldown`.
//! A good answer starts the count again.
//!
//! Stray bytes weigh more: HTTP/1.1 cannot tell a stray answer that arrives
//! after the connection was reused from the real one, so an instance that
//! sent one gets no pooled connection until its cool-down ends, and a stray
//! can touch at most the one request it raced.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// What an instance got wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Bytes after a complete answer, or on a pooled connection while it idled.
    StrayBytes,
    /// Not a valid HTTP/1.1 answer: its head, its framing, an unsolicited 101.
    Malformed,
    /// An answer that stopped before its end: closed, reset or stalled.
    CutShort,
    /// An answer without the `x-request-id` the gateway sent (`verify_request_id`).
    WrongRequestId,
}

/// Every fault, in the order they are counted and exported.
pub(crate) const FAULTS: [Fault; 4] = [
    Fault::StrayBytes,
    Fault::Malformed,
    Fault::CutShort,
    Fault::WrongRequestId,
];

impl Fault {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Fault::StrayBytes => "stray_bytes",
            Fault::Malformed => "malformed",
            Fault::CutShort => "cut_short",
            Fault::WrongRequestId => "wrong_request_id",
        }
    }

    fn index(self) -> usize {
        match self {
            Fault::StrayBytes => 0,
            Fault::Malformed => 1,
            Fault::CutShort => 2,
            Fault::WrongRequestId => 3,
        }
    }
}

/// The gateway's side: how many faults in a row, and for how long after.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    pub(crate) failures: u32,
    pub(crate) cooldown: Duration,
}

/// One instance's record. Written off the hot path only: a good answer
/// reads `in_a_row` and writes it only when it was not zero.
#[derive(Debug, Default)]
pub(crate) struct PassiveHealth {
    in_a_row: AtomicU32,
    counts: [AtomicU64; 4],
    /// Clock milliseconds until which its connections are not pooled.
    no_pool_until: AtomicU64,
}

impl PassiveHealth {
    /// Counts `fault` at clock time `now_ms`; true when the instance is to
    /// be cooled down now (the count in a row reached the policy's).
    pub(crate) fn blame(&self, fault: Fault, policy: Policy, now_ms: u64) -> bool {
        self.counts[fault.index()].fetch_add(1, Ordering::Relaxed);
        if fault == Fault::StrayBytes {
            let until = now_ms.saturating_add(policy.cooldown.as_millis() as u64);
            self.no_pool_until.fetch_max(until, Ordering::Relaxed);
        }
        let in_a_row = self.in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if in_a_row >= policy.failures {
            self.in_a_row.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// A good answer: the faults no longer run in a row.
    pub(crate) fn answered(&self) {
        if self.in_a_row.load(Ordering::Relaxed) != 0 {
            self.in_a_row.store(0, Ordering::Relaxed);
        }
    }

    /// Whether a connection to it may go back to the pool at `now_ms`.
    pub(crate) fn may_pool(&self, now_ms: u64) -> bool {
        self.no_pool_until.load(Ordering::Relaxed) <= now_ms
    }

    /// Faults of this kind so far.
    pub(crate) fn count(&self, fault: Fault) -> u64 {
        self.counts[fault.index()].load(Ordering::Relaxed)
    }

    /// Faults in a row now (for `/status`).
    pub(crate) fn in_a_row(&self) -> u32 {
        self.in_a_row.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        failures: 3,
        cooldown: Duration::from_secs(2),
    };

    #[test]
    fn faults_in_a_row_cool_down_and_a_good_answer_starts_again() {
        let h = PassiveHealth::default();
        assert!(!h.blame(Fault::Malformed, POLICY, 0));
        assert!(!h.blame(Fault::CutShort, POLICY, 0));
        h.answered();
        assert_eq!(h.in_a_row(), 0);
        assert!(!h.blame(Fault::CutShort, POLICY, 0));
        assert!(!h.blame(Fault::WrongRequestId, POLICY, 0));
        assert!(h.blame(Fault::Malformed, POLICY, 0), "the third in a row");
        assert_eq!(h.in_a_row(), 0, "counted again after the cool-down");
        assert_eq!(h.count(Fault::Malformed), 2);
        assert_eq!(h.count(Fault::CutShort), 2);
        assert_eq!(h.count(Fault::WrongRequestId), 1);
    }

    #[test]
    fn stray_bytes_stop_pooling_until_the_cool_down_ends() {
        let h = PassiveHealth::default();
        assert!(h.may_pool(1_000));
        h.blame(Fault::Malformed, POLICY, 1_000);
        assert!(h.may_pool(1_000), "only stray bytes stop pooling");
        h.blame(Fault::StrayBytes, POLICY, 1_000);
        assert!(!h.may_pool(1_000));
        assert!(!h.may_pool(2_999));
        assert!(h.may_pool(3_000));
        assert_eq!(h.count(Fault::StrayBytes), 1);
    }

    #[test]
    fn a_policy_of_one_cools_down_at_the_first_fault() {
        let h = PassiveHealth::default();
        let one = Policy {
            failures: 1,
            ..POLICY
        };
        assert!(h.blame(Fault::CutShort, one, 0));
        assert!(h.blame(Fault::CutShort, one, 0));
    }
}
