//! Plain round robin: one cursor per ring generation, shared by every worker.

use super::Selection;
use crate::balance::pool::Upstream;
use crate::runtime::slots::Padded;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Member `turn % n` for the `turn`-th pick: exact rotation across workers.
#[derive(Debug, Default)]
pub(crate) struct RoundRobin {
    /// On its own cache line: every worker adds to it.
    cursor: Padded<AtomicUsize>,
}

impl RoundRobin {
    pub(crate) fn starting_at(position: usize) -> Self {
        RoundRobin {
            cursor: Padded::new(AtomicUsize::new(position)),
        }
    }
}

impl Selection for RoundRobin {
    fn next(&self, members: &[Arc<Upstream>]) -> usize {
        self.cursor.fetch_add(1, Ordering::Relaxed) % members.len().max(1)
    }

    fn position(&self) -> usize {
        self.cursor.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::pool::tests::upstream_at;

    #[test]
    fn picks_in_strict_turn_from_where_it_starts() {
        let members: Vec<Arc<Upstream>> = (0..3).map(upstream_at).collect();
        let rr = RoundRobin::starting_at(4);
        let picks: Vec<usize> = (0..6).map(|_| rr.next(&members)).collect();
        assert_eq!(picks, [1, 2, 0, 1, 2, 0]);
        assert_eq!(rr.position(), 10);
    }

    #[test]
    fn every_thread_shares_one_rotation() {
        let members: Vec<Arc<Upstream>> = (0..3).map(upstream_at).collect();
        let rr = Arc::new(RoundRobin::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (rr, members) = (rr.clone(), members.clone());
                std::thread::spawn(move || {
                    let mut counts = [0usize; 3];
                    for _ in 0..3000 {
                        counts[rr.next(&members)] += 1;
                    }
                    counts
                })
            })
            .collect();
        let mut total = [0usize; 3];
        for t in threads {
            for (sum, n) in total.iter_mut().zip(t.join().unwrap()) {
                *sum += n;
            }
        }
        assert_eq!(total, [4000, 4000, 4000]);
    }
}
