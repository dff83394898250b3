//! How a ring member is chosen for each try: the seam where least
//! connections or weighted selection would plug in, as one new file
//! implementing [`Selection`]. Round robin now.

use crate::balance::ring::Ring;
use crate::runtime::slots::PerWorker;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Chooses which member of a (non-empty) ring a try looks at next;
/// [`crate::balance::ring::Balancer::pick`] skips those tried or cooling down and
/// asks again.
pub(crate) trait Selection: std::fmt::Debug + Send + Sync {
    /// An index into `ring.members`.
    fn next(&self, ring: &Ring) -> usize;
}

/// Round robin with one cursor per worker: exact (each member within one
/// pick of N/k) for the picks of one worker, within one pick per worker
/// over all of them, and no cursor written by two workers.
#[derive(Debug, Default)]
pub(crate) struct RoundRobin {
    cursor: PerWorker<AtomicUsize>,
}

impl Selection for RoundRobin {
    fn next(&self, ring: &Ring) -> usize {
        let n = ring.members.len().max(1);
        self.cursor.local().fetch_add(1, Ordering::Relaxed) % n
    }
}
