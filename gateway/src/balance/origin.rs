//! Where a namespace's requests find their instances now, kept with its
//! balancer: the pushed ring ([`Kind::Watch`]) or a lookup per try
//! ([`Kind::Lookup`]), and which discovery URL serves each. The watcher
//! ([`crate::discover::watch`]) sets it; the request path and `/status` read it.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// No URL index.
const NONE: usize = usize::MAX;

/// Which source a namespace's requests use now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Pushed sets over `/api/watch`; picks from the ring.
    Watch,
    /// `/api/lookup` per try.
    Lookup,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Watch => "watch",
            Kind::Lookup => "lookup",
        }
    }
}

/// Per namespace: the source in use and which discovery URL serves it.
#[derive(Debug)]
pub(crate) struct Origin {
    kind: AtomicU8,
    /// Index in `discovery_urls()` of the URL whose watch stream is open.
    watching: AtomicUsize,
    /// Index of the URL that answered the last lookup.
    answered: AtomicUsize,
}

impl Default for Origin {
    fn default() -> Self {
        Origin {
            kind: AtomicU8::new(Kind::Watch as u8),
            watching: AtomicUsize::new(NONE),
            answered: AtomicUsize::new(NONE),
        }
    }
}

impl Origin {
    pub(crate) fn kind(&self) -> Kind {
        if self.kind.load(Ordering::Relaxed) == Kind::Lookup as u8 {
            Kind::Lookup
        } else {
            Kind::Watch
        }
    }

    /// Sets the source; true if it changed.
    pub(crate) fn set_kind(&self, kind: Kind) -> bool {
        self.kind.swap(kind as u8, Ordering::Relaxed) != kind as u8
    }

    /// The watch stream from URL `at` is open (`None`: no stream open).
    pub(crate) fn set_watching(&self, at: Option<usize>) {
        self.watching.store(at.unwrap_or(NONE), Ordering::Relaxed);
    }

    pub(crate) fn watching(&self) -> Option<usize> {
        Some(self.watching.load(Ordering::Relaxed)).filter(|i| *i != NONE)
    }

    /// A lookup should start with URL `at` (it answered).
    pub(crate) fn set_answered(&self, at: usize) {
        self.answered.store(at, Ordering::Relaxed);
    }

    /// The URL indexes in the order lookups try them: the live watch's URL,
    /// else the one that answered last, then the others in order.
    pub(crate) fn lookup_order(&self, n: usize) -> Vec<usize> {
        let first = self
            .watching()
            .or(Some(self.answered.load(Ordering::Relaxed)).filter(|i| *i != NONE))
            .filter(|i| *i < n);
        let mut order: Vec<usize> = first.into_iter().collect();
        order.extend((0..n).filter(|i| Some(*i) != first));
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_start_with_the_live_watch_then_the_last_answer() {
        let s = Origin::default();
        assert_eq!(s.lookup_order(3), vec![0, 1, 2]);
        s.set_answered(2);
        assert_eq!(s.lookup_order(3), vec![2, 0, 1]);
        s.set_watching(Some(1));
        assert_eq!(s.lookup_order(3), vec![1, 0, 2]);
        s.set_watching(None);
        assert_eq!(s.lookup_order(3), vec![2, 0, 1]);
        // An index beyond the list (the list changed) is ignored.
        assert_eq!(s.lookup_order(2), vec![0, 1]);
    }

    #[test]
    fn the_kind_flips_and_says_so() {
        let s = Origin::default();
        assert_eq!(s.kind(), Kind::Watch);
        assert!(s.set_kind(Kind::Lookup));
        assert!(!s.set_kind(Kind::Lookup));
        assert_eq!(s.kind().as_str(), "lookup");
    }
}
