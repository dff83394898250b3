//! `max_buffered_bytes`: one bound on the request bodies buffered across all
//! client connections, so many slow or heavy clients together cannot grow the
//! gateway's memory without limit.
//!
//! A declared body (Content-Length) is reserved whole before any of it is
//! read, since the gateway buffers it whole before forwarding (a retry sends
//! it again): a request that cannot fit is refused at once, before its client
//! sends the body (or before `100 Continue`). A chunked body is reserved as
//! it arrives. The reservation is given back when the request is done.
//!
//! Cost on the request path: none shared between workers, as a rule. Each
//! worker takes credit from the shared count in chunks (at most a quarter
//! of the cap over all workers) and reserves from its own credit; given
//! back bytes go to its credit, the excess over two chunks to the shared
//! count. Near the cap, a reservation that does not fit first returns every
//! worker's unused credit, so parked credit never refuses a request that
//! would fit. What is granted never passes the cap.

use crate::runtime::slots::PerWorker;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The shared count of bytes taken (reserved or parked as credit), its cap,
/// and each worker's unused credit.
#[derive(Debug)]
pub(crate) struct Budget {
    taken: AtomicUsize,
    cap: usize,
    credit: PerWorker<AtomicUsize>,
    chunk: usize,
}

impl Budget {
    pub(crate) fn new(cap: usize) -> Self {
        Budget {
            taken: AtomicUsize::new(0),
            cap,
            credit: PerWorker::default(),
            chunk: (cap / (4 * crate::runtime::slots::slots())).min(64 * 1024),
        }
    }

    /// Bytes reserved now.
    pub(crate) fn held(&self) -> usize {
        let parked: usize = self.credit.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        self.taken.load(Ordering::Relaxed).saturating_sub(parked)
    }

    /// An empty reservation, to grow as bytes arrive.
    pub(crate) fn empty(&self) -> Reservation<'_> {
        Reservation {
            budget: self,
            bytes: 0,
        }
    }

    /// Reserves `bytes`, or `None` if that would pass the cap.
    #[cfg(test)]
    pub(crate) fn reserve(&self, bytes: usize) -> Option<Reservation<'_>> {
        let mut r = self.empty();
        r.grow_to(bytes).then_some(r)
    }

    fn take(&self, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        let local = self.credit.local();
        let spend = |c: usize| c.checked_sub(bytes);
        if local
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, spend)
            .is_ok()
        {
            return true;
        }
        let refill = bytes.max(self.chunk);
        if self.grab(refill) {
            local.fetch_add(refill - bytes, Ordering::Relaxed);
            return true;
        }
        if refill > bytes && self.grab(bytes) {
            return true;
        }
        // Near the cap: what other workers hold unused must not refuse this.
        for c in self.credit.iter() {
            let unused = c.swap(0, Ordering::Relaxed);
            if unused > 0 {
                self.taken.fetch_sub(unused, Ordering::Relaxed);
            }
        }
        self.grab(bytes)
    }

    /// Takes `bytes` from the shared count if they fit under the cap.
    fn grab(&self, bytes: usize) -> bool {
        let before = self.taken.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > self.cap {
            self.taken.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Returns `bytes` to this worker's credit, the excess over two chunks
    /// to the shared count.
    fn give(&self, bytes: usize) {
        let local = self.credit.local();
        let now = local.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if now > 2 * self.chunk {
            let extra = now - self.chunk;
            let spend = |c: usize| c.checked_sub(extra);
            if local
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, spend)
                .is_ok()
            {
                self.taken.fetch_sub(extra, Ordering::Relaxed);
            }
        }
    }
}

/// Bytes held for one request; given back on drop.
#[derive(Debug)]
pub(crate) struct Reservation<'a> {
    budget: &'a Budget,
    bytes: usize,
}

impl Reservation<'_> {
    /// Grows the reservation to `total` bytes; false (and unchanged) if the cap forbids it.
    pub(crate) fn grow_to(&mut self, total: usize) -> bool {
        let more = total.saturating_sub(self.bytes);
        if !self.budget.take(more) {
            return false;
        }
        self.bytes += more;
        true
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_under_the_cap_and_are_given_back() {
        let b = Budget::new(100);
        let a = b.reserve(60).unwrap();
        assert!(b.reserve(41).is_none(), "over the cap");
        assert_eq!(b.held(), 60, "a refused reservation holds nothing");
        let mut c = b.empty();
        assert!(c.grow_to(30));
        assert!(c.grow_to(40));
        assert!(!c.grow_to(41));
        assert_eq!(b.held(), 100);
        drop(a);
        assert!(c.grow_to(90));
        drop(c);
        assert_eq!(b.held(), 0);
        assert!(b.reserve(0).is_some());
    }

    #[test]
    fn concurrent_reservations_never_pass_the_cap() {
        let b = std::sync::Arc::new(Budget::new(1000));
        // The counter may pass the cap for an instant (an add undone at once);
        // what was granted never does.
        let granted = std::sync::Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (b, granted) = (b.clone(), granted.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(r) = b.reserve(300) {
                            let now = granted.fetch_add(300, Ordering::SeqCst) + 300;
                            assert!(now <= 1000, "{now}");
                            granted.fetch_sub(300, Ordering::SeqCst);
                            drop(r);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn credit_parked_by_one_worker_never_refuses_another() {
        let b = std::sync::Arc::new(Budget::new(1 << 20));
        drop(b.reserve(100).unwrap());
        assert!(b.taken.load(Ordering::Relaxed) > 0, "slot 0 keeps credit");
        assert_eq!(b.held(), 0);
        let b2 = b.clone();
        std::thread::spawn(move || {
            crate::runtime::slots::tests::as_worker(1);
            let all = b2.reserve(1 << 20);
            assert!(
                all.is_some(),
                "the whole cap, despite the credit parked in slot 0"
            );
            assert_eq!(b2.held(), 1 << 20);
        })
        .join()
        .unwrap();
        assert_eq!(b.held(), 0);
    }
}
