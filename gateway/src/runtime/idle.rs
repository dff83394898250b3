//! How long a worker with nothing to do keeps looking at epoll before it
//! sleeps in it.
//!
//! A worker asleep in `epoll_wait` is woken by whoever makes its socket
//! ready: the kernel, on the core that sent the packet, wakes the thread and,
//! if the worker's core idles, sends it an interrupt. On a virtual machine
//! that interrupt exits to the hypervisor on both cores, and it is paid by
//! the sender: the client's or the upstream's core. Measured on a 2-core
//! machine with the load generator on the other core, TLS handshakes cost
//! that core about 35 µs more each against the gateway than against nginx,
//! whose single worker never slept, only because the gateway woke 2.3 times
//! a handshake (bench/results-tls.md).
//!
//! So, as the kernel's own guest halt-polling does where it is on, an idle
//! worker first looks without sleeping for a while, the *window*, and the
//! window follows how long the worker has been idling lately: a spell that
//! ended within the most (`idle_spin`, [`most`]) after the worker went to
//! sleep would have been caught by looking longer, so the window doubles
//! (from [`GROW_START`]); a longer spell halves it, down to nothing. Under
//! steady load with short gaps a worker looks through them; on a quiet one
//! it sleeps at once. A process held to a CPU quota never looks ([`super::cpu_quota`]).
//!
//! The looks must not take the core from anyone who wants it (a client or an
//! instance on the same machine): between two looks the worker yields the
//! core (`sched_yield`, at once back when nothing else is runnable), and a
//! gap of more than [`CONTENDED`] between two looks means something else ran:
//! the worker sleeps then, and the window starts shut again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The longest a worker looks before sleeping, in nanoseconds: `idle_spin`
/// (by default the kernel's guest halt-polling default, 200 µs).
static MOST: AtomicU64 = AtomicU64::new(200_000);

/// Sets [`most`] for the workers started after this.
pub(crate) fn set_most(most: Duration) {
    MOST.store(
        most.as_nanos().min(u128::from(u64::MAX)) as u64,
        Ordering::Relaxed,
    );
}

/// The longest a worker looks before sleeping.
pub(crate) fn most() -> Duration {
    Duration::from_nanos(MOST.load(Ordering::Relaxed))
}

/// Where the window starts when it first grows.
const GROW_START: Duration = Duration::from_micros(50);
/// Two looks further apart than this had another task run between them (a
/// look and a yield take a microsecond or two).
const CONTENDED: Duration = Duration::from_micros(30);

/// One worker's idle spells and its looking window.
#[derive(Debug)]
pub(crate) struct IdleSpin {
    max: Duration,
    window: Duration,
    /// When the current idle spell began (none: the worker is busy).
    since: Option<Instant>,
    /// The current spell went to sleep in `epoll_wait`.
    slept: bool,
    /// The last look of the current spell, if the worker only looked since.
    last: Option<Instant>,
    /// Another task ran between two looks of the current spell.
    contended: bool,
}

impl IdleSpin {
    /// A window of at most `max`, starting closed (sleep at once).
    pub(crate) fn new(max: Duration) -> IdleSpin {
        IdleSpin {
            max,
            window: Duration::ZERO,
            since: None,
            slept: false,
            last: None,
            contended: false,
        }
    }

    /// Whether a worker that finds nothing to do at `now` may sleep: its
    /// spell has outlasted the window. A spell's first look never sleeps.
    pub(crate) fn may_sleep(&self, now: Instant) -> bool {
        self.since.is_some_and(|since| {
            self.contended || now.saturating_duration_since(since) >= self.window
        })
    }

    /// A look (without sleeping) at `now` found nothing to do: the spell
    /// begins, or goes on; far from the last look, another task ran between.
    pub(crate) fn looked(&mut self, now: Instant) {
        if let Some(last) = self.last {
            self.contended |= now.saturating_duration_since(last) > CONTENDED;
        }
        self.since.get_or_insert(now);
        self.last = Some(now);
    }

    /// The worker is going to sleep in this spell.
    pub(crate) fn sleeping(&mut self) {
        self.slept = true;
        self.last = None;
    }

    /// Work came at `now`: the spell ends, and if it slept, its length sets
    /// the window for the next.
    pub(crate) fn busy(&mut self, now: Instant) {
        let Some(since) = self.since.take() else {
            return;
        };
        self.last = None;
        if std::mem::take(&mut self.contended) {
            self.window = Duration::ZERO;
            self.slept = false;
        } else if std::mem::take(&mut self.slept) {
            let idle = now.saturating_duration_since(since);
            self.window = if idle > self.max {
                self.window / 2
            } else {
                (self.window * 2).max(GROW_START).min(self.max)
            };
            if self.window < GROW_START.min(self.max) {
                self.window = Duration::ZERO;
            }
        }
    }

    /// The current window (what the tests look at).
    #[cfg(test)]
    pub(crate) fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    /// One idle spell: nothing found at `start`, a sleep when the window
    /// allowed it (if it did before `end`), work at `end`.
    fn spell(spin: &mut IdleSpin, start: Instant, end: Duration) -> bool {
        spin.looked(start);
        let mut slept = false;
        for at in [Duration::ZERO, spin.window(), end] {
            if at <= end && spin.may_sleep(start + at) && !slept {
                spin.sleeping();
                slept = true;
            }
        }
        spin.busy(start + end);
        slept
    }

    #[test]
    fn a_quiet_worker_sleeps_after_one_look() {
        let mut spin = IdleSpin::new(Duration::from_micros(200));
        let t = Instant::now();
        assert!(!spin.may_sleep(t), "busy: the first look comes first");
        spin.looked(t);
        assert!(spin.may_sleep(t), "the window starts closed");
        // Long spells keep it closed.
        for i in 0..5 {
            assert!(spell(&mut spin, t + i * 10_000 * US, 5_000 * US));
            assert_eq!(spin.window(), Duration::ZERO);
        }
    }

    #[test]
    fn short_spells_open_the_window_up_to_the_most_and_long_ones_close_it() {
        let mut spin = IdleSpin::new(Duration::from_micros(200));
        let t = Instant::now();
        // Gaps of 120 µs: each sleep was too early, so the window grows,
        // 50, 100, 200 µs, and stops at the most.
        let mut windows = Vec::new();
        for i in 0..5 {
            spell(&mut spin, t + i * 1_000 * US, 120 * US);
            windows.push(spin.window().as_micros());
        }
        assert_eq!(windows, [50, 100, 200, 200, 200]);
        // Now the gaps are caught without sleeping: the window stays.
        assert!(!spell(&mut spin, t + 10_000 * US, 150 * US));
        assert_eq!(spin.window(), Duration::from_micros(200));
        // Spells longer than the most halve it, then shut it.
        let mut windows = Vec::new();
        for i in 0..4 {
            assert!(spell(&mut spin, t + (20 + i) * 10_000 * US, 5_000 * US));
            windows.push(spin.window().as_micros());
        }
        assert_eq!(windows, [100, 50, 0, 0]);
    }

    #[test]
    fn a_spell_that_never_slept_leaves_the_window_as_it_was() {
        let mut spin = IdleSpin::new(Duration::from_micros(200));
        let t = Instant::now();
        spin.looked(t);
        spin.busy(t + 10 * US);
        assert_eq!(spin.window(), Duration::ZERO);
        assert!(!spin.may_sleep(t + 20 * US), "busy again: no spell");
    }

    #[test]
    fn another_task_running_between_two_looks_ends_the_looking_and_shuts_the_window() {
        let mut spin = IdleSpin::new(Duration::from_micros(200));
        let t = Instant::now();
        for i in 0..3 {
            spell(&mut spin, t + i * 1_000 * US, 120 * US);
        }
        assert_eq!(spin.window(), Duration::from_micros(200));
        // Looks a microsecond apart: keep looking.
        spin.looked(t + 10_000 * US);
        spin.looked(t + 10_001 * US);
        assert!(!spin.may_sleep(t + 10_001 * US));
        // The next look comes 40 µs later: the core went to someone else.
        spin.looked(t + 10_041 * US);
        assert!(spin.may_sleep(t + 10_041 * US), "sleep at once");
        spin.sleeping();
        spin.busy(t + 10_100 * US);
        assert_eq!(spin.window(), Duration::ZERO, "and start shut");
        assert!(spell(&mut spin, t + 20_000 * US, 10 * US));
        assert_eq!(spin.window(), 50 * US, "a short spell opens it again");
    }

    #[test]
    fn a_most_of_zero_never_looks_twice() {
        let mut spin = IdleSpin::new(Duration::ZERO);
        let t = Instant::now();
        for i in 0..4 {
            assert!(spell(&mut spin, t + i * 1_000 * US, 10 * US));
            assert_eq!(spin.window(), Duration::ZERO);
        }
    }
}
