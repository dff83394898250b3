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
//! Cost on the request path: one atomic add and one subtract for requests
//! with a body, nothing for those without.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The shared count of reserved bytes and its cap.
#[derive(Debug)]
pub struct Budget {
    held: AtomicUsize,
    cap: usize,
}

impl Budget {
    pub fn new(cap: usize) -> Self {
        Budget {
            held: AtomicUsize::new(0),
            cap,
        }
    }

    /// Bytes reserved now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// An empty reservation, to grow as bytes arrive.
    pub fn empty(&self) -> Reservation<'_> {
        Reservation {
            budget: self,
            bytes: 0,
        }
    }

    /// Reserves `bytes`, or `None` if that would pass the cap.
    pub fn reserve(&self, bytes: usize) -> Option<Reservation<'_>> {
        let mut r = self.empty();
        r.grow_to(bytes).then_some(r)
    }

    fn take(&self, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        let before = self.held.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > self.cap {
            self.held.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// Bytes held for one request; given back on drop.
#[derive(Debug)]
pub struct Reservation<'a> {
    budget: &'a Budget,
    bytes: usize,
}

impl Reservation<'_> {
    /// Grows the reservation to `total` bytes; false (and unchanged) if the cap forbids it.
    pub fn grow_to(&mut self, total: usize) -> bool {
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
            self.budget.held.fetch_sub(self.bytes, Ordering::Relaxed);
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
}
