//! Worker threads: the per-worker hot path.
//!
//! `worker_threads` OS threads each run their own executor (async-std's
//! `async-executor`, driven by `async-io`'s `block_on`) and accept on their
//! own SO_REUSEPORT socket, so the kernel spreads connections over them and
//! a connection's requests never leave the thread that accepted it. What a
//! request writes lives in per-worker slots ([`PerWorker`]): the round-robin
//! cursors, the idle pools and the metric shards, each on its own cache
//! line, summed only when `/metrics` or `/status` is read. Nothing on the
//! request path is locked or written by two workers.
//!
//! Background tasks (watch, reaper, watchdog, the admin port) stay on
//! async-std's global executor, in slot 0.

use crate::listener::{self, Bound};
use crate::runtime;
use crate::Context;
use shared::shutdown::{Tracker, Trigger};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

thread_local! {
    /// This thread's slot: 0 unless it is a worker.
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Slots in every per-worker array: one per core, plus slot 0 for threads
/// that are not workers. More workers than cores share slots (still correct:
/// every slot is atomic, only no longer private).
pub fn slots() -> usize {
    static SLOTS: OnceLock<usize> = OnceLock::new();
    *SLOTS.get_or_init(|| cores().min(255) + 1)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The slot of the calling thread.
pub fn slot() -> usize {
    SLOT.with(Cell::get)
}

/// Workers to run for `configured` (0: one per core).
pub fn count(configured: usize) -> usize {
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
struct Padded<T>(T);

/// One `T` per slot; each worker uses its own ([`PerWorker::local`]).
#[derive(Debug)]
pub struct PerWorker<T> {
    items: Box<[Padded<T>]>,
}

impl<T> PerWorker<T> {
    pub fn new(mut make: impl FnMut() -> T) -> Self {
        PerWorker {
            items: (0..slots()).map(|_| Padded(make())).collect(),
        }
    }

    /// The calling thread's value. Slots are below [`slots`] by construction
    /// (workers' slots wrap when they are handed out), so no wrap here.
    pub fn local(&self) -> &T {
        &self.items[slot()].0
    }

    /// Every slot's value, for sums at scrape time.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter().map(|p| &p.0)
    }

    /// One counter summed over the slots.
    pub fn sum(&self, counter: impl Fn(&T) -> &AtomicU64) -> u64 {
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

/// The running workers.
#[derive(Debug)]
pub struct Workers {
    /// One message per worker whose accept loop ended (queue drained).
    stopped: async_channel::Receiver<()>,
    count: usize,
    /// Fired once the connections are over: the workers' executors end.
    finished: Trigger,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Waits until every worker stopped accepting and served its queue.
    pub async fn stopped_accepting(&self) {
        for _ in 0..self.count {
            if self.stopped.recv().await.is_err() {
                return;
            }
        }
    }

    /// Ends the workers' threads (after their connections are done).
    pub async fn finish(self) {
        self.finished.fire();
        let threads = self.threads;
        async_std::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// Starts one worker per listener, each on its own thread with its own executor.
pub fn spawn(
    ctx: &Arc<Context>,
    listeners: Vec<Bound>,
    connections: &Tracker,
) -> std::io::Result<Workers> {
    let count = listeners.len();
    let (done, stopped) = async_channel::bounded(count.max(1));
    let finished = Trigger::new();
    let mut threads = Vec::with_capacity(count);
    for (i, bound) in listeners.into_iter().enumerate() {
        let (ctx, connections, done, finished) = (
            ctx.clone(),
            connections.clone(),
            done.clone(),
            finished.clone(),
        );
        let slot = 1 + i % (slots() - 1).max(1);
        let thread = std::thread::Builder::new()
            .name(format!("gateway-worker-{i}"))
            .spawn(move || {
                SLOT.with(|s| s.set(slot));
                let run = async move {
                    listener::accept(&ctx, bound, &connections).await;
                    let _ = done.send(()).await;
                    // Keep serving this worker's connections until they are over.
                    finished.wait().await;
                };
                if let Err(e) = runtime::run(run) {
                    log::error!("gateway worker {i} stopped: {e}");
                }
            })?;
        threads.push(thread);
    }
    Ok(Workers {
        stopped,
        count,
        finished,
        threads,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Makes the calling thread use `slot`, as worker threads do.
    pub(crate) fn as_worker(slot: usize) {
        SLOT.with(|s| s.set(slot));
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
