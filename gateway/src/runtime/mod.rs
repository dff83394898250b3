//! The runtime of one worker thread: its own task queue and its own epoll
//! ([`reactor`]), so a request is read, forwarded and answered without
//! another thread taking part.
//!
//! async-std's tasks all share one async-io reactor: a socket event for a
//! task on worker B is collected by whichever thread holds the reactor, which
//! then wakes B through a futex, and every wait re-arms a one-shot epoll
//! registration. Measured at two workers, that cross-thread traffic and the
//! extra system calls were most of the gap to nginx (bench/results.md). Here
//! each worker polls its own epoll between batches of its own tasks, the way
//! nginx's and HAProxy's workers do. The tasks are async-task's (what
//! async-std's executor is built on); the sockets are std's, made
//! non-blocking, behind the futures-io traits the rest of the gateway uses.
//!
//! The worker keeps its tasks' deadlines too ([`deadline`]): a heap of
//! timers per worker, looked at once per turn, and `epoll_wait` sleeps until
//! the earliest at most.
//!
//! Other threads may still wake a worker's task (the shutdown broadcast,
//! async-std timers, channels): the task goes on the worker's remote queue
//! and the eventfd interrupts its `epoll_wait`.

pub(crate) mod buffers;
mod cpu_quota;
pub(crate) mod deadline;
mod idle;
pub(crate) mod listen;
pub(crate) mod net;
mod reactor;
pub(crate) mod slots;

use async_task::Runnable;
use idle::IdleSpin;
use reactor::Reactor;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Tasks run between two looks at epoll. Bounds how long ready sockets wait
/// while others run (fairness at 10,000 connections) without paying a
/// system call per task.
const BATCH: usize = 128;

/// What other threads reach of a worker: its reactor and its remote queue.
#[derive(Debug)]
struct Shared {
    id: usize,
    reactor: Reactor,
    remote: Mutex<Vec<Runnable>>,
}

impl Shared {
    fn schedule(self: &Arc<Self>, runnable: Runnable) {
        if CURRENT_ID.with(Cell::get) == self.id {
            if WAKING_URGENT.with(Cell::get) {
                URGENT.with(|q| q.borrow_mut().push_back(runnable));
            } else {
                LOCAL.with(|q| q.borrow_mut().push_back(runnable));
            }
        } else {
            self.remote
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(runnable);
            self.reactor.wake();
        }
    }
}

thread_local! {
    /// The id of the runtime this thread runs (0: none).
    static CURRENT_ID: Cell<usize> = const { Cell::new(0) };
    static CURRENT: RefCell<Option<Arc<Shared>>> = const { RefCell::new(None) };
    /// Tasks ready to run on this worker.
    static LOCAL: RefCell<VecDeque<Runnable>> = const { RefCell::new(VecDeque::new()) };
    /// Tasks woken by an upstream connection: run first, all of them.
    static URGENT: RefCell<VecDeque<Runnable>> = const { RefCell::new(VecDeque::new()) };
    /// The reactor is waking tasks for an urgent source.
    static WAKING_URGENT: Cell<bool> = const { Cell::new(false) };
    /// The time as read after the worker's last look at epoll.
    static NOW: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Blocking looks at epoll this worker made (what the tests count).
    #[cfg(test)]
    static SLEEPS: Cell<u64> = const { Cell::new(0) };
}

/// Every running worker, for the broadcasts of [`deadline`] (stop, kill).
static RUNTIMES: Mutex<Vec<std::sync::Weak<Shared>>> = Mutex::new(Vec::new());

/// Wakes every worker sleeping in `epoll_wait`, to look at its timers again.
fn wake_all() {
    let all: Vec<Arc<Shared>> = RUNTIMES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter_map(std::sync::Weak::upgrade)
        .collect();
    for shared in all {
        shared.reactor.wake();
    }
}

/// The id of the runtime the calling thread runs (0: none).
fn worker_id() -> usize {
    CURRENT_ID.with(Cell::get)
}

fn current() -> std::io::Result<Arc<Shared>> {
    CURRENT.with(|c| c.borrow().clone()).ok_or_else(|| {
        std::io::Error::other("not on a gateway worker thread (no runtime to register with)")
    })
}

/// The time now. On a worker it is read once per turn of the event loop,
/// right after epoll answers (as nginx caches its time), not once per use:
/// where the clock is not read in user space (some virtual machines' clock
/// sources), each read is a system call, and a request made a dozen. A
/// request's latency is then measured between the events that began and
/// ended it.
pub(crate) fn now() -> Instant {
    NOW.with(Cell::get).unwrap_or_else(Instant::now)
}

/// Milliseconds since the process started, on [`now`]: the clock of
/// deadlines and cool-downs.
pub(crate) fn clock() -> u64 {
    now().saturating_duration_since(start()).as_millis() as u64
}

fn start() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// A point on [`clock`]: what a request's time budgets are measured against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Until(u64);

impl Until {
    /// `limit` from now.
    pub(crate) fn after(limit: std::time::Duration) -> Until {
        Until(clock().saturating_add(limit.as_millis() as u64))
    }

    /// What is left (zero once passed).
    pub(crate) fn left(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0.saturating_sub(clock()))
    }

    pub(crate) fn passed(self) -> bool {
        clock() >= self.0
    }
}

/// The longest an idle worker looks at epoll before sleeping (`idle_spin`),
/// for the workers started after this.
pub(crate) fn set_idle_spin(most: std::time::Duration) {
    idle::set_most(most);
}

/// Spawns `future` on this thread's worker runtime.
///
/// # Errors
/// When the calling thread runs no runtime.
pub(crate) fn spawn<F>(future: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let shared = current()?;
    let (runnable, task) = async_task::spawn(future, move |r| shared.schedule(r));
    task.detach();
    runnable.schedule();
    Ok(())
}

/// Runs one task. Connection tasks catch their own panics
/// (`shared::panics::guard`); this keeps the worker alive whatever a task does.
fn run_task(runnable: Runnable) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runnable.run()));
}

/// Runs `root` and every task it spawns on the calling thread until `root`
/// is done; what it spawned and left running is dropped then.
pub(crate) fn run<F>(root: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    static IDS: AtomicUsize = AtomicUsize::new(1);
    let shared = Arc::new(Shared {
        id: IDS.fetch_add(1, Ordering::Relaxed),
        reactor: Reactor::new()?,
        remote: Mutex::new(Vec::new()),
    });
    CURRENT_ID.with(|c| c.set(shared.id));
    start();
    NOW.with(|n| n.set(Some(Instant::now())));
    CURRENT.with(|c| *c.borrow_mut() = Some(shared.clone()));
    RUNTIMES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Arc::downgrade(&shared));
    let s = shared.clone();
    let (runnable, root) = async_task::spawn(root, move |r| s.schedule(r));
    runnable.schedule();
    let mut events = reactor::events();
    let mut taken = Vec::new();
    let wake_urgent = |on: bool| WAKING_URGENT.with(|u| u.set(on));
    // Before sleeping, a worker with nothing to do looks at epoll for a while
    // (`idle`): the next event is often microseconds away. Not under a CPU
    // quota, where the looks would be taken from the quota (`cpu_quota`).
    let mut spin = IdleSpin::new(idle::most());
    let outcome = loop {
        while let Some(runnable) = URGENT.with(|q| q.borrow_mut().pop_front()) {
            run_task(runnable);
        }
        for _ in 0..BATCH {
            let Some(runnable) = LOCAL.with(|q| q.borrow_mut().pop_front()) else {
                break;
            };
            run_task(runnable);
        }
        if root.is_finished() {
            break Ok(());
        }
        // Only a turn that may block announces it: while the worker only
        // looks, other threads' wakes wait in the remote queue for the next
        // turn instead of writing the eventfd.
        let may_block = cpu_quota::held() || spin.may_sleep(now());
        if may_block {
            shared.reactor.prepare_sleep();
        }
        std::mem::swap(
            &mut taken,
            &mut *shared.remote.lock().unwrap_or_else(|p| p.into_inner()),
        );
        // Due timers and, after a broadcast, interrupted waits: their tasks
        // go on LOCAL. After the announcement, like the remote queue.
        deadline::turn(shared.id);
        // URGENT is empty here: only the reactor's poll below fills it.
        let idle = taken.is_empty() && LOCAL.with(|q| q.borrow().is_empty());
        LOCAL.with(|q| q.borrow_mut().extend(taken.drain(..)));
        let block = idle && may_block;
        let timeout = if block {
            #[cfg(test)]
            SLEEPS.with(|n| n.set(n.get() + 1));
            spin.sleeping();
            deadline::timeout()
        } else {
            Some(std::time::Duration::ZERO)
        };
        let polled = shared.reactor.poll(&mut events, timeout, &wake_urgent);
        let now = Instant::now();
        NOW.with(|n| n.set(Some(now)));
        match polled {
            Ok(0) if idle && !block => {
                spin.looked(now);
                // Whatever else wants this core runs before the next look.
                std::thread::yield_now();
            }
            Ok(0) if idle => {} // a timer's time: its tasks are due next turn
            Ok(_) => spin.busy(now),
            Err(e) => break Err(e),
        }
    };
    // Tasks still parked on sockets or timers are dropped with them.
    shared.reactor.clear();
    deadline::clear();
    RUNTIMES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|w| !std::ptr::eq(w.as_ptr(), Arc::as_ptr(&shared)));
    LOCAL.with(|q| q.borrow_mut().clear());
    URGENT.with(|q| q.borrow_mut().clear());
    shared
        .remote
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    CURRENT.with(|c| *c.borrow_mut() = None);
    NOW.with(|n| n.set(None));
    CURRENT_ID.with(|c| c.set(0));
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    use std::time::{Duration, Instant};

    #[test]
    fn tasks_talk_over_sockets_on_one_thread_and_are_woken_from_others() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let out = got.clone();
        run(async move {
            let listener = net::Listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = listener.local_addr().unwrap();
            spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 5];
                s.read_exact(&mut buf).await.unwrap();
                s.write_all(&buf).await.unwrap();
            })
            .unwrap();
            let mut c = net::Stream::connect(addr).await.unwrap();
            c.write_all(b"hello").await.unwrap();
            let mut buf = [0u8; 5];
            c.read_exact(&mut buf).await.unwrap();
            out.lock().unwrap().extend_from_slice(&buf);
            // A wake from another thread (async-io's timer thread).
            async_io::Timer::after(Duration::from_millis(10)).await;
            out.lock().unwrap().push(b'!');
        })
        .unwrap();
        assert_eq!(&*got.lock().unwrap(), b"hello!");
    }

    #[test]
    fn a_short_read_that_drained_the_last_bytes_before_the_end_still_sees_the_end() {
        // The bytes and the FIN arrive together, with one edge: the short read
        // must not wait for another event before reading the end.
        let (tx, rx) = std::sync::mpsc::channel();
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let writer = std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            std::io::Write::write_all(&mut s, b"hello").unwrap();
        });
        run(async move {
            let mut c = net::Stream::connect(addr).await.unwrap();
            writer.join().unwrap();
            std::thread::sleep(Duration::from_millis(50)); // both bytes and FIN are in
            let mut all = Vec::new();
            let read = c.read_to_end(&mut all);
            let timeout = async {
                async_io::Timer::after(Duration::from_secs(2)).await;
                Err(std::io::Error::other("hung waiting for the end"))
            };
            let got = futures_lite::future::or(read, timeout).await;
            tx.send((got.map_err(|e| e.to_string()), all)).unwrap();
        })
        .unwrap();
        let (got, all) = rx.recv().unwrap();
        assert_eq!(got, Ok(5));
        assert_eq!(all, b"hello");
    }

    /// What a pooled connection must be checked for: nothing, bytes nobody
    /// asked for (before the worker saw their event, too), or the end; and
    /// readiness left over from a read that filled its buffer exactly is
    /// cleared by the look.
    #[test]
    fn unread_tells_nothing_from_stray_bytes_from_the_end() {
        let (tx, rx) = std::sync::mpsc::channel();
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let peer = std::thread::spawn(move || server.accept().unwrap().0);
        run(async move {
            let mut c = net::Stream::connect(addr).await.unwrap();
            let mut s = peer.join().unwrap();
            let wait = || std::thread::sleep(Duration::from_millis(50));
            let mut seen = vec![c.unread()];
            std::io::Write::write_all(&mut s, b"ab").unwrap();
            wait(); // the worker is busy: its reactor has not seen the bytes
            seen.push(c.unread());
            let mut two = [0u8; 2];
            c.read_exact(&mut two).await.unwrap(); // exactly filled: readiness stays
            seen.push(c.unread());
            seen.push(c.unread());
            drop(s);
            wait();
            async_io::Timer::after(Duration::from_millis(1)).await;
            seen.push(c.unread());
            tx.send(seen).unwrap();
        })
        .unwrap();
        use net::Unread::*;
        assert_eq!(
            rx.recv().unwrap(),
            [Nothing, Bytes, Nothing, Nothing, Closed]
        );
    }

    /// Another thread wakes the worker's only task at every moment of its
    /// way to sleep (still running, spinning, announcing, in `epoll_wait`):
    /// no wake may be lost, or the worker sleeps for good (it has no timer
    /// to wake it).
    #[test]
    fn a_wake_from_another_thread_as_the_worker_goes_to_sleep_is_never_lost() {
        const ROUNDS: usize = 3000;
        #[derive(Default)]
        struct Baton {
            flag: std::sync::atomic::AtomicBool,
            waker: Mutex<Option<std::task::Waker>>,
            /// Rounds the worker has parked for.
            parked: AtomicUsize,
        }
        let baton = Arc::new(Baton::default());
        let b = baton.clone();
        let worker = std::thread::spawn(move || {
            run(async move {
                for round in 1..=ROUNDS {
                    std::future::poll_fn(|cx| {
                        if b.flag.swap(false, Ordering::SeqCst) {
                            return std::task::Poll::Ready(());
                        }
                        *b.waker.lock().unwrap() = Some(cx.waker().clone());
                        if b.flag.swap(false, Ordering::SeqCst) {
                            return std::task::Poll::Ready(());
                        }
                        b.parked.store(round, Ordering::SeqCst);
                        std::task::Poll::Pending
                    })
                    .await;
                }
            })
            .unwrap()
        });
        for round in 1..=ROUNDS {
            let waiting = Instant::now();
            while baton.parked.load(Ordering::SeqCst) < round {
                assert!(
                    waiting.elapsed() < Duration::from_secs(20),
                    "round {}: the worker never ran its woken task",
                    round - 1
                );
                std::thread::yield_now();
            }
            // From at once to well after the longest look before sleeping
            // (`idle_spin`, 200 µs): every step of going to sleep.
            let delay = Duration::from_nanos((round % 101) as u64 * 3_000);
            let started = Instant::now();
            while started.elapsed() < delay {
                std::hint::spin_loop();
            }
            let waker = baton.waker.lock().unwrap().take();
            baton.flag.store(true, Ordering::SeqCst);
            waker.expect("parked with a waker").wake();
        }
        worker.join().unwrap();
    }

    #[test]
    fn outside_a_worker_spawn_and_sockets_say_why() {
        let e = spawn(async {}).unwrap_err();
        assert!(e.to_string().contains("worker"), "{e}");
    }
}
