//! Per-worker slots: what the request path writes (round-robin cursors,
//! idle pools, metric shards) lives in one slot per worker thread, each on
//! its own cache line, summed only when `/metrics` or `/status` is read, so
//! no counter on the request path is written by two workers.
//!
//! Threads that are not workers (background tasks on async-std's global
//! executor, the admin port) use slot 0.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

thread_local! {
    /// This thread's slot: 0 unless it is a worker.
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Slots in every per-worker array: one per core, plus slot 0 for threads
/// that are not workers. More workers than cores share slots (still correct:
/// every slot is atomic, only no longer private).
pub(crate) fn slots() -> usize {
    static SLOTS: OnceLock<usize> = OnceLock::new();
    *SLOTS.get_or_init(|| cores().min(255) + 1)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The slot of the calling thread.
pub(crate) fn slot() -> usize {
    SLOT.with(Cell::get)
}

/// Workers to run for `configured` (0: one per core).
pub(crate) fn count(configured: usize) -> usize {
    if configured == 0 {
        cores()
    } else {
        configured
    }
}

/// Keeps a value on its own cache line (128 bytes: adjacent-line prefetch
/// pairs 64-byte lines on x86), so one worker's writes never invalidate
/// another's.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(T);

impl<T> Padded<T> {
    pub(crate) const fn new(value: T) -> Self {
        Padded(value)
    }
}

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// One `T` per slot; each worker uses its own ([`PerWorker::local`]).
#[derive(Debug)]
pub(crate) struct PerWorker<T> {
    items: Box<[Padded<T>]>,
}

impl<T> PerWorker<T> {
    pub(crate) fn new(mut make: impl FnMut() -> T) -> Self {
        PerWorker {
            items: (0..slots()).map(|_| Padded(make())).collect(),
        }
    }

    /// The calling thread's value. Slots are below [`slots`] by construction
    /// (workers' slots wrap when they are handed out), so no wrap here.
    pub(crate) fn local(&self) -> &T {
        &self.items[slot()].0
    }

    /// Every slot's value, for sums at scrape time.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter().map(|p| &p.0)
    }

    /// One counter summed over the slots.
    pub(crate) fn sum(&self, counter: impl Fn(&T) -> &AtomicU64) -> u64 {
        self.iter()
            .map(|t| counter(t).load(Ordering::Relaxed))
            .sum()
    }
}

impl<T: Default> Default for PerWorker<T> {
    fn default() -> Self {
        PerWorker::new(T::default)
    }
}

/// Makes the calling thread use `slot`: a worker thread calls it first
/// thing, with the slot [`worker_slot`] gave it.
pub(crate) fn enter(slot: usize) {
    SLOT.with(|s| s.set(slot));
}

/// The slot of worker `i`: slots above 0, wrapping when there are more
/// workers than cores.
pub(crate) fn worker_slot(i: usize) -> usize {
    1 + i % (slots() - 1).max(1)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    /// Makes the calling thread use `slot`, as worker threads do.
    pub(crate) fn as_worker(slot: usize) {
        enter(slot);
    }
    #[test]
    fn each_thread_counts_in_its_own_slot_and_reads_sum_them() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let per: Arc<PerWorker<AtomicUsize>> = Arc::default();
        assert_eq!(slot(), 0, "not a worker");
        per.local().fetch_add(1, Ordering::Relaxed);
        let p = per.clone();
        std::thread::spawn(move || {
            SLOT.with(|s| s.set(1));
            p.local().fetch_add(10, Ordering::Relaxed);
        })
        .join()
        .unwrap();
        let all: Vec<usize> = per.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        assert_eq!(all.len(), slots());
        assert_eq!(all[..2], [1, 10], "slots() is at least 2");
        assert_eq!(all.iter().sum::<usize>(), 11);
    }

    #[test]
    fn zero_workers_is_one_per_core() {
        assert_eq!(count(3), 3);
        assert_eq!(count(0), slots() - 1);
    }
}
