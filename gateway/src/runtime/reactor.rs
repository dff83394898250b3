//! One worker's epoll: every socket the worker owns is registered once,
//! edge-triggered for reading and writing, and stays registered until it is
//! dropped. A wait therefore costs no system call of its own (async-io's
//! one-shot registrations re-arm with `epoll_ctl` before every wait, and its
//! `polling` adds a timerfd and an eventfd re-arm around every `epoll_wait`).
//!
//! Readiness lives in each [`Source`]: an event sets the bits and wakes the
//! waiting task; a read or write that comes back short or with `WouldBlock`
//! clears them. Clearing is a compare-and-swap against the state the I/O
//! started from, so an event that arrived meanwhile is never lost.

use atomic_waker::AtomicWaker;
use rustix::event::epoll::{self, CreateFlags, EventData, EventFlags};
use rustix::event::{eventfd, EventfdFlags};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use slab::Slab;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

/// The key of the eventfd that wakes a sleeping worker from another thread.
const NOTIFY_KEY: u64 = u64::MAX;
/// Events taken per `epoll_wait`.
const EVENTS: usize = 1024;

/// Readiness bit: reading will not block.
pub(crate) const READ: usize = 1;
/// Readiness bit: writing will not block.
pub(crate) const WRITE: usize = 2;
/// The peer closed its side (or the socket failed): a short read no longer
/// means the next one would block, since no further event will come.
const CLOSED: usize = 4;
/// Each event adds this to the state, so a clear based on an older state fails.
const TICK: usize = 8;

/// One registered descriptor: its readiness and the tasks waiting on it.
#[derive(Debug)]
pub(crate) struct Source {
    key: usize,
    /// Tasks woken by this source run before the others (see [`Reactor::poll`]).
    urgent: bool,
    /// `ticks * TICK | CLOSED | WRITE | READ`.
    state: AtomicUsize,
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl Source {
    pub(crate) fn is_ready(&self, bit: usize) -> bool {
        self.state.load(Ordering::Acquire) & bit != 0
    }

    /// The readiness state now, to [`Source::clear`] against later.
    pub(crate) fn state(&self) -> usize {
        self.state.load(Ordering::Acquire)
    }

    /// Ready for `bit` now, or `Pending` with the task's waker stored.
    pub(crate) fn poll_ready(&self, bit: usize, cx: &mut Context<'_>) -> Poll<usize> {
        let state = self.state.load(Ordering::Acquire);
        if state & bit != 0 {
            return Poll::Ready(state);
        }
        self.waker(bit).register(cx.waker());
        // An event may have come between the load and the registration.
        let state = self.state.load(Ordering::Acquire);
        if state & bit != 0 {
            Poll::Ready(state)
        } else {
            Poll::Pending
        }
    }

    /// Marks `bit` not ready, unless an event came since `seen` was read.
    pub(crate) fn clear(&self, bit: usize, seen: usize) {
        let _ = self
            .state
            .compare_exchange(seen, seen & !bit, Ordering::AcqRel, Ordering::Acquire);
    }

    /// After a short read or write: the kernel buffer was drained or
    /// filled, so `bit` is cleared, unless the peer already closed (the
    /// next read then returns the end at once, and no event announces it).
    pub(crate) fn clear_after_short(&self, bit: usize, seen: usize) {
        if bit == READ && seen & CLOSED != 0 {
            return;
        }
        self.clear(bit, seen);
    }

    /// Its key in the reactor's map (what its events carry).
    #[cfg(test)]
    pub(crate) fn key(&self) -> usize {
        self.key
    }

    fn waker(&self, bit: usize) -> &AtomicWaker {
        if bit == READ {
            &self.reader
        } else {
            &self.writer
        }
    }

    fn set(&self, bits: usize) {
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                Some(s.wrapping_add(TICK) | bits)
            });
        if bits & READ != 0 {
            self.reader.wake();
        }
        if bits & WRITE != 0 {
            self.writer.wake();
        }
    }
}

/// A worker's epoll instance, the sources registered with it, and the
/// eventfd other threads use to wake it.
#[derive(Debug)]
pub(crate) struct Reactor {
    epoll: OwnedFd,
    notify: OwnedFd,
    /// Sources by key. Locked by the worker once per batch of events, and by
    /// whoever registers or drops a source (a pool reaper may, from another
    /// thread): never contended on the request path.
    sources: Mutex<Slab<Arc<Source>>>,
    /// The worker is in (or about to enter) a blocking `epoll_wait`.
    sleeping: AtomicBool,
    /// The eventfd was written since the worker last woke.
    notified: AtomicBool,
}

impl Reactor {
    pub(crate) fn new() -> io::Result<Reactor> {
        let epoll = epoll::create(CreateFlags::CLOEXEC)?;
        let notify = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(
            &epoll,
            &notify,
            EventData::new_u64(NOTIFY_KEY),
            EventFlags::IN | EventFlags::ET,
        )?;
        Ok(Reactor {
            epoll,
            notify,
            sources: Mutex::new(Slab::with_capacity(1024)),
            sleeping: AtomicBool::new(false),
            notified: AtomicBool::new(false),
        })
    }

    /// Registers `fd` for both directions, edge-triggered, with the readiness
    /// it starts with (`READ | WRITE` for a fresh accepted socket: the first
    /// try finds out).
    pub(crate) fn register(
        &self,
        fd: BorrowedFd<'_>,
        ready: usize,
        urgent: bool,
    ) -> io::Result<Arc<Source>> {
        let mut sources = self.lock();
        let entry = sources.vacant_entry();
        let source = Arc::new(Source {
            key: entry.key(),
            urgent,
            state: AtomicUsize::new(ready),
            reader: AtomicWaker::new(),
            writer: AtomicWaker::new(),
        });
        epoll::add(
            &self.epoll,
            fd,
            EventData::new_u64(entry.key() as u64),
            EventFlags::IN | EventFlags::OUT | EventFlags::RDHUP | EventFlags::ET,
        )?;
        entry.insert(source.clone());
        Ok(source)
    }

    /// Forgets `source` (its descriptor is about to close).
    pub(crate) fn deregister(&self, source: &Source, fd: BorrowedFd<'_>) {
        let _ = epoll::delete(&self.epoll, fd);
        let mut sources = self.lock();
        if sources
            .get(source.key)
            .is_some_and(|s| std::ptr::eq(Arc::as_ptr(s), source))
        {
            sources.remove(source.key);
        }
    }

    /// Wakes the worker if it sleeps in `epoll_wait` (called from other threads).
    pub(crate) fn wake(&self) {
        if self.sleeping.load(Ordering::SeqCst) && !self.notified.swap(true, Ordering::SeqCst) {
            let _ = rustix::io::write(&self.notify, &1u64.to_ne_bytes());
        }
    }

    /// Announces a blocking wait: after this, [`Reactor::wake`] writes the
    /// eventfd. The caller checks its queues once more before blocking.
    pub(crate) fn prepare_sleep(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
    }

    /// Waits for events (at most `timeout`; `None`: until one arrives) and wakes the tasks waiting on them, telling `wake_urgent` which
    /// wakes come from urgent sources (upstream connections): their tasks
    /// finish requests already taken, so they run before tasks that would
    /// take new ones. That keeps what a worker holds in flight (and its
    /// upstream connections) near one batch of events however many clients
    /// wait, as nginx's event loop does, instead of reading every waiting
    /// client's request before answering any.
    pub(crate) fn poll(
        &self,
        events: &mut Vec<epoll::Event>,
        timeout: Option<Duration>,
        wake_urgent: &dyn Fn(bool),
    ) -> io::Result<usize> {
        let timeout = timeout.map(|t| rustix::time::Timespec {
            tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: t.subsec_nanos().into(),
        });
        events.clear();
        let waited = epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(events),
            timeout.as_ref(),
        );
        self.sleeping.store(false, Ordering::SeqCst);
        match waited {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
        if events.is_empty() {
            return Ok(0); // a look that found nothing (the spins before sleeping)
        }
        let sources = self.lock();
        for event in events.iter() {
            let epoll::Event { flags, data } = *event;
            let key = data.u64();
            if key == NOTIFY_KEY {
                self.notified.store(false, Ordering::SeqCst);
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(&self.notify, &mut buf);
                continue;
            }
            let Some(source) = sources.get(key as usize) else {
                continue;
            };
            let broken = EventFlags::HUP | EventFlags::ERR;
            let mut bits = 0;
            if flags.intersects(EventFlags::RDHUP | broken) {
                bits |= READ | CLOSED;
            }
            if flags.intersects(EventFlags::IN | EventFlags::PRI) {
                bits |= READ;
            }
            if flags.intersects(EventFlags::OUT | broken) {
                bits |= WRITE;
            }
            wake_urgent(source.urgent);
            source.set(bits);
        }
        wake_urgent(false);
        Ok(events.len())
    }

    /// Drops every source's waiting tasks: at the end of a worker, what is
    /// still registered would otherwise keep its task (and socket) alive.
    pub(crate) fn clear(&self) {
        let drained: Vec<Arc<Source>> = self.lock().drain().collect();
        for source in drained {
            drop(source.reader.take());
            drop(source.writer.take());
        }
    }

    /// Sources registered now.
    #[cfg(test)]
    pub(crate) fn registered(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, Slab<Arc<Source>>> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl AsFd for Reactor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}

/// Events buffer for [`Reactor::poll`].
pub(crate) fn events() -> Vec<epoll::Event> {
    Vec::with_capacity(EVENTS)
}
