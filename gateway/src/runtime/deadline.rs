//! Coarse deadlines for the request path, kept by each worker's own timers.
//!
//! Each connection task owns a [`Deadline`]. A wait arms it with a few
//! stores on the task's own worker and, when the deadline is earlier than
//! anything the worker already holds for it, one push on that worker's
//! binary heap (a thread-local of the runtime). The worker's run loop pops
//! what is due after each look at epoll and wakes those tasks, and its
//! blocking `epoll_wait` sleeps until the next timer at most. So a timeout
//! is found and delivered on the thread that runs its task: no lock is
//! taken per connection or per wait, and no other thread takes part. A wait
//! whose future is ready when first polled (most writes) arms nothing.
//!
//! Why this design. Before, every deadline was listed under one global
//! mutex (taken on every accepted connection) and swept every 20 ms by a
//! task on another thread, whose wakes crossed threads (a remote queue and
//! an eventfd write per overdue wait), and async-io's timers, before that,
//! woke async-io's reactor thread on every insert. A heap per worker is
//! what nginx keeps (its red-black tree of timers per worker process) and
//! needs no synchronisation, since tasks never leave the worker that
//! spawned them.
//!
//! What it costs:
//! - Deadlines are rounded up to [`TICK`], so they fire up to a tick late
//!   (and by at most one batch of tasks early, as the worker's clock is read
//!   once per turn); the worker wakes at most once per tick for its timers.
//! - Cancelling is lazy: a wait that ends leaves its heap entry, which is
//!   dropped (or, if a later wait of the same deadline is armed, pushed again
//!   at that wait's time) when it comes due. A connection whose waits keep
//!   the same limit therefore pushes about once per limit, not once per
//!   wait, but a worker may wake for an entry nobody waits on any more, and
//!   entries outlive their connections until due: the heap is compacted
//!   when it doubles, so it holds about twice the armed waits at most (or
//!   1024 entries).
//! - A deadline is another allocation per connection (its `Timer`, which
//!   the heap shares), and a timer lives on in the heap until its entry
//!   comes due or a compaction drops it (its task's waker is let go when the
//!   deadline is dropped).
//! - The stop and the end of the drain time come from another thread: one
//!   broadcast ([`Watchdog::run`]) bumps an epoch and writes each sleeping
//!   worker's eventfd; each worker then wakes its own waits that must end.
//! - A wait on a thread that is no worker (tests, background tasks) has no
//!   heap: it falls back to async-std's timer and a short global list that
//!   the broadcast wakes.

use super::{clock, worker_id};
use atomic_waker::AtomicWaker;
use shared::shutdown::Trigger;
use std::cell::RefCell;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Poll;
use std::time::Duration;

/// The resolution of deadlines, in clock milliseconds: each is rounded up to
/// a multiple of it, so the timers due in one tick are handled in one turn.
pub(crate) const TICK: u64 = 10;

/// Bits of an armed word that count arms; the rest is the deadline in clock milliseconds.
const GENERATION_BITS: u32 = 20;

/// Broadcasts so far (each stop, each end of a drain): a worker looks at its
/// armed timers again when this moves.
static EPOCH: AtomicU64 = AtomicU64::new(0);
/// The watchdogs whose drain time is over (several gateways may share a
/// process, as in the tests).
static KILLED: Mutex<Vec<usize>> = Mutex::new(Vec::new());
/// Waits armed on threads that are no workers, woken by every broadcast.
static OFF_WORKER: Mutex<Vec<Weak<Timer>>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a wait ended without its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interrupted {
    /// The deadline passed.
    Elapsed,
    /// The gateway is stopping (only for waits that allow it).
    Stopping,
}

impl From<Interrupted> for std::io::Error {
    fn from(i: Interrupted) -> Self {
        match i {
            Interrupted::Elapsed => {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "deadline passed")
            }
            Interrupted::Stopping => std::io::Error::other("gateway stopping"),
        }
    }
}

/// What a deadline shares with the heap of the worker it is armed on. Only
/// that worker touches it on the request path; the fields are atomics
/// because a [`Deadline`] must be `Sync`, and a broadcast reads them.
#[derive(Debug)]
struct Timer {
    /// `deadline_ms << GENERATION_BITS | generation`; 0 when nothing is armed.
    armed: AtomicU64,
    /// The armed word the worker found overdue.
    fired: AtomicU64,
    generation: AtomicU64,
    /// The current wait ends when the gateway stops.
    interruptible: AtomicBool,
    /// The drain time is over: every wait ends at once.
    killed: AtomicBool,
    /// The [`EPOCH`] that `killed` was last brought up to date with.
    epoch: AtomicU64,
    /// The [`Watchdog`] it came from (0: none, never killed).
    watchdog: usize,
    /// The runtime whose heap holds this timer's entry at `queued`.
    home: AtomicUsize,
    /// The time of this timer's earliest entry on `home`'s heap (0: none).
    queued: AtomicU64,
    waker: AtomicWaker,
}

impl Timer {
    fn new(watchdog: usize, killed: bool, epoch: u64) -> Timer {
        Timer {
            armed: AtomicU64::new(0),
            fired: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            interruptible: AtomicBool::new(false),
            killed: AtomicBool::new(killed),
            epoch: AtomicU64::new(epoch),
            watchdog,
            home: AtomicUsize::new(0),
            queued: AtomicU64::new(0),
            waker: AtomicWaker::new(),
        }
    }

    /// Whether its watchdog's drain time is over. Looks in [`KILLED`] only
    /// once after each broadcast.
    fn is_killed(&self) -> bool {
        if self.watchdog == 0 {
            return false;
        }
        if self.killed.load(Ordering::Acquire) {
            return true;
        }
        let epoch = EPOCH.load(Ordering::SeqCst);
        if self.epoch.load(Ordering::Relaxed) == epoch {
            return false;
        }
        let killed = lock(&KILLED).contains(&self.watchdog);
        self.refresh(epoch, killed)
    }

    fn refresh(&self, epoch: u64, killed: bool) -> bool {
        if killed {
            self.killed.store(true, Ordering::Release);
        }
        self.epoch.store(epoch, Ordering::Relaxed);
        killed || self.killed.load(Ordering::Acquire)
    }
}

/// An entry of a worker's heap: `timer` is due at `at` (or was: see [`Timers::pop_due`]).
#[derive(Debug)]
struct Entry {
    at: u64,
    timer: Arc<Timer>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    /// Reversed: the heap's top is the earliest entry.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.at.cmp(&self.at)
    }
}

/// One worker's timers.
#[derive(Debug, Default)]
struct Timers {
    heap: BinaryHeap<Entry>,
    /// The [`EPOCH`] this worker last looked at.
    epoch: u64,
    /// The heap's length that makes the next push compact it first.
    compact_at: usize,
}

thread_local! {
    static TIMERS: RefCell<Timers> = RefCell::new(Timers::default());
}

/// Entries kept before the heap is ever compacted.
const COMPACT_MIN: usize = 1024;

impl Timers {
    fn push(&mut self, at: u64, timer: Arc<Timer>, id: usize) {
        if self.heap.len() >= self.compact_at.max(COMPACT_MIN) {
            self.compact(id);
            self.compact_at = self.heap.len() * 2;
        }
        self.heap.push(Entry { at, timer });
    }

    /// Drops the entries no wait needs: their timer's current entry is
    /// elsewhere, or nothing is armed on it (its connection may be gone).
    fn compact(&mut self, id: usize) {
        let entries = std::mem::take(&mut self.heap).into_vec();
        let kept: Vec<Entry> = entries
            .into_iter()
            .filter(|e| {
                let t = &e.timer;
                let current = t.home.load(Ordering::Relaxed) == id
                    && t.queued.load(Ordering::Relaxed) == e.at;
                if current && t.armed.load(Ordering::Acquire) == 0 {
                    t.queued.store(0, Ordering::Relaxed);
                    return false;
                }
                current
            })
            .collect();
        self.heap = BinaryHeap::from(kept);
    }

    /// Pops the entries due at `now`: the armed ones overdue go to `due`,
    /// those armed again for later are pushed again at their new time.
    fn pop_due(&mut self, now: u64, id: usize, due: &mut Vec<Arc<Timer>>) {
        while self.heap.peek().is_some_and(|e| e.at <= now) {
            let Some(Entry { at, timer }) = self.heap.pop() else {
                break;
            };
            if timer.home.load(Ordering::Relaxed) != id
                || timer.queued.load(Ordering::Relaxed) != at
            {
                continue; // superseded by an earlier entry, or moved to another worker
            }
            timer.queued.store(0, Ordering::Relaxed);
            let word = timer.armed.load(Ordering::Acquire);
            if word == 0 {
                continue; // the wait ended in time: cancelled
            }
            let armed_at = word >> GENERATION_BITS;
            if armed_at <= now {
                timer.fired.store(word, Ordering::Release);
                due.push(timer);
            } else {
                timer.queued.store(armed_at, Ordering::Relaxed);
                self.heap.push(Entry {
                    at: armed_at,
                    timer,
                });
            }
        }
    }

    /// After a broadcast: the armed waits that must end now (those that end
    /// at the stop, and every one whose watchdog's drain time is over).
    fn interrupted(&mut self, epoch: u64, due: &mut Vec<Arc<Timer>>) {
        self.epoch = epoch;
        if self.heap.is_empty() {
            return;
        }
        let killed = lock(&KILLED).clone();
        for e in self.heap.iter() {
            let t = &e.timer;
            let dead = t.watchdog != 0 && t.refresh(epoch, killed.contains(&t.watchdog));
            if t.armed.load(Ordering::Acquire) != 0
                && (dead || t.interruptible.load(Ordering::Relaxed))
            {
                due.push(t.clone());
            }
        }
    }
}

/// Called by the worker `id` once per turn of its loop (after announcing a
/// sleep, before deciding to block): wakes the waits overdue, and after a
/// broadcast those that must end. Their tasks go on the worker's own queue.
pub(super) fn turn(id: usize) {
    let epoch = EPOCH.load(Ordering::SeqCst);
    let now = clock();
    let mut due = Vec::new();
    TIMERS.with(|t| {
        let mut t = t.borrow_mut();
        if t.epoch != epoch {
            t.interrupted(epoch, &mut due);
        }
        t.pop_due(now, id, &mut due);
    });
    // Woken outside the borrow: a waker may do anything.
    for timer in due {
        timer.waker.wake();
    }
}

/// How long the worker may sleep in `epoll_wait` for its timers: until the
/// earliest one (`None`: no timer, sleep until an event).
pub(super) fn timeout() -> Option<Duration> {
    let next = TIMERS.with(|t| t.borrow().heap.peek().map(|e| e.at))?;
    // Read afresh: the turn's clock is as old as the batch of tasks it ran.
    let now = super::start().elapsed().as_millis() as u64;
    Some(Duration::from_millis(next.saturating_sub(now)))
}

/// At the end of a worker: its timers' tasks are dropped.
pub(super) fn clear() {
    let entries = TIMERS.with(|t| std::mem::take(&mut *t.borrow_mut()));
    for e in entries.heap {
        drop(e.timer.waker.take());
    }
}

/// Wakes every worker (and every wait off the workers) to look at its
/// timers again: the gateway stops, or a drain time is over.
fn broadcast() {
    EPOCH.fetch_add(1, Ordering::SeqCst);
    super::wake_all();
    let waiting: Vec<Arc<Timer>> = lock(&OFF_WORKER).iter().filter_map(Weak::upgrade).collect();
    for timer in waiting {
        timer.waker.wake();
    }
}

/// The deadline of one task: at most one wait is armed at a time.
#[derive(Debug)]
pub(crate) struct Deadline {
    timer: Arc<Timer>,
}

impl Default for Deadline {
    /// A deadline of no watchdog: its waits end at their limit (or stop) only.
    fn default() -> Self {
        Deadline {
            timer: Arc::new(Timer::new(0, false, 0)),
        }
    }
}

impl Drop for Deadline {
    /// Lets go of the task's waker now: a heap entry may hold the timer
    /// until it comes due, and the waker would keep the task's memory.
    fn drop(&mut self) {
        drop(self.timer.waker.take());
    }
}

/// Disarms a deadline when its wait ends, however it ends.
struct Disarm<'a>(&'a Timer);

impl Drop for Disarm<'_> {
    fn drop(&mut self) {
        self.0.armed.store(0, Ordering::Release);
    }
}

impl Deadline {
    /// Awaits `fut`, giving up after `limit`.
    pub(crate) async fn within<T>(
        &self,
        limit: Duration,
        fut: impl Future<Output = T>,
    ) -> Result<T, Interrupted> {
        self.wait(limit, fut, None).await
    }

    /// Awaits `fut`, giving up after `limit` or when `stop` fires.
    pub(crate) async fn within_or_stop<T>(
        &self,
        limit: Duration,
        stop: &Trigger,
        fut: impl Future<Output = T>,
    ) -> Result<T, Interrupted> {
        self.wait(limit, fut, Some(stop)).await
    }

    async fn wait<T>(
        &self,
        limit: Duration,
        fut: impl Future<Output = T>,
        stop: Option<&Trigger>,
    ) -> Result<T, Interrupted> {
        let mut fut = pin!(fut);
        let timer = &self.timer;
        debug_assert_eq!(
            timer.armed.load(Ordering::Relaxed),
            0,
            "waits on one deadline must not nest: the inner one would disarm the outer"
        );
        let generation =
            timer.generation.fetch_add(1, Ordering::Relaxed) & ((1 << GENERATION_BITS) - 1);
        let at = due_at(clock(), limit);
        let word = (at << GENERATION_BITS) | generation;
        timer.interruptible.store(stop.is_some(), Ordering::Relaxed);
        timer.armed.store(word, Ordering::Release);
        let _disarm = Disarm(timer);
        let id = worker_id();
        // Polled only off the workers (an async fn does nothing before).
        let mut fallback = pin!(sleep_or_stop(limit, stop));
        let mut queued = false;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(v));
            }
            // What is ready at once (most writes) never touches the timers.
            if !queued {
                queued = true;
                if id == 0 {
                    // Listed before the first look at `killed`: a broadcast
                    // after that look finds it.
                    off_worker(timer);
                } else {
                    arm_here(timer, at, id);
                }
            }
            timer.waker.register(cx.waker());
            if timer.fired.load(Ordering::Acquire) == word || timer.is_killed() {
                return Poll::Ready(Err(Interrupted::Elapsed));
            }
            if stop.is_some_and(Trigger::is_fired) {
                return Poll::Ready(Err(Interrupted::Stopping));
            }
            if id == 0 && fallback.as_mut().poll(cx).is_ready() {
                let stopped = stop.is_some_and(Trigger::is_fired);
                return Poll::Ready(Err(if stopped {
                    Interrupted::Stopping
                } else {
                    Interrupted::Elapsed
                }));
            }
            Poll::Pending
        })
        .await
    }
}

/// The clock time a wait of `limit` armed at `now` ends, rounded up to [`TICK`].
fn due_at(now: u64, limit: Duration) -> u64 {
    // Capped so the shift into the armed word keeps every bit (a year).
    let limit = limit.as_millis().min(1 << 35) as u64;
    now.saturating_add(limit)
        .div_ceil(TICK)
        .saturating_mul(TICK)
        .max(TICK)
}

/// Puts `timer` on the heap of the worker `id` for `at`, unless an entry
/// there already comes due no later (it is pushed again when it pops).
fn arm_here(timer: &Arc<Timer>, at: u64, id: usize) {
    let queued = timer.queued.load(Ordering::Relaxed);
    if timer.home.load(Ordering::Relaxed) == id && queued != 0 && queued <= at {
        return;
    }
    timer.home.store(id, Ordering::Relaxed);
    timer.queued.store(at, Ordering::Relaxed);
    TIMERS.with(|t| t.borrow_mut().push(at, timer.clone(), id));
}

/// Off the workers, a wait is listed for the broadcasts instead.
fn off_worker(timer: &Arc<Timer>) {
    let mut waiting = lock(&OFF_WORKER);
    waiting.retain(|w| {
        w.upgrade()
            .is_some_and(|t| t.armed.load(Ordering::Relaxed) != 0)
    });
    waiting.push(Arc::downgrade(timer));
}

/// Off the workers: async-std's timer for the limit, the trigger for the stop.
async fn sleep_or_stop(limit: Duration, stop: Option<&Trigger>) {
    let sleep = async_std::task::sleep(limit);
    match stop {
        Some(stop) => futures_lite::future::or(sleep, stop.wait()).await,
        None => sleep.await,
    }
}

/// Hands out the deadlines of one gateway's tasks, and ends their waits at
/// the stop and at the end of the drain time.
#[derive(Debug)]
pub(crate) struct Watchdog {
    id: usize,
    killed: AtomicBool,
}

impl Default for Watchdog {
    fn default() -> Self {
        static IDS: AtomicUsize = AtomicUsize::new(1);
        Watchdog {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            killed: AtomicBool::new(false),
        }
    }
}

impl Watchdog {
    /// A deadline for a new task: nothing shared is written.
    pub(crate) fn deadline(&self) -> Arc<Deadline> {
        // The epoch first: a kill after it moves the epoch, which the
        // deadline's first wait then notices.
        let epoch = EPOCH.load(Ordering::SeqCst);
        let killed = self.killed.load(Ordering::SeqCst);
        Arc::new(Deadline {
            timer: Arc::new(Timer::new(self.id, killed, epoch)),
        })
    }

    /// Ends every wait of this watchdog's deadlines, now and from now on.
    pub(crate) fn kill(&self) {
        if self.killed.swap(true, Ordering::SeqCst) {
            return;
        }
        lock(&KILLED).push(self.id);
        broadcast();
    }

    /// When `stop` fires, ends the idle waits (those that allow it), while
    /// busy ones keep their deadlines during the drain; when `done` fires,
    /// ends every wait.
    pub(crate) async fn run(&self, stop: &Trigger, done: &Trigger) {
        futures_lite::future::or(stop.wait(), done.wait()).await;
        broadcast();
        done.wait().await;
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{run, spawn};
    use futures_lite::future::{pending, yield_now};
    use std::cell::Cell;
    use std::sync::atomic::AtomicU64;
    use std::task::{Context, Wake, Waker};
    use std::thread::ThreadId;
    use std::time::Instant;

    /// Sleeps `ms` on the worker's own timers.
    async fn nap(ms: u64) {
        let never = pending::<()>();
        let slept = Deadline::default()
            .within(Duration::from_millis(ms), never)
            .await;
        assert_eq!(slept, Err(Interrupted::Elapsed));
    }

    fn queued_here() -> usize {
        TIMERS.with(|t| t.borrow().heap.len())
    }

    /// The threads a future's wakes came from.
    #[derive(Default)]
    struct Woken(Mutex<Vec<ThreadId>>);

    impl Woken {
        fn threads(&self) -> Vec<ThreadId> {
            self.0.lock().unwrap().clone()
        }
    }

    struct Relay {
        inner: Waker,
        log: Arc<Woken>,
    }

    impl Wake for Relay {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.log.0.lock().unwrap().push(std::thread::current().id());
            self.inner.wake_by_ref();
        }
    }

    /// `fut`, with every wake it asks for recorded in `log`.
    fn recorded<F: Future>(log: Arc<Woken>, fut: F) -> impl Future<Output = F::Output> {
        let mut fut = Box::pin(fut);
        std::future::poll_fn(move |cx| {
            let waker = Waker::from(Arc::new(Relay {
                inner: cx.waker().clone(),
                log: log.clone(),
            }));
            fut.as_mut().poll(&mut Context::from_waker(&waker))
        })
    }

    /// Runs `root` on a worker of its own thread.
    fn worker<F>(root: F) -> std::thread::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        std::thread::spawn(move || run(root).unwrap())
    }

    #[test]
    fn waits_end_at_their_limit_at_the_stop_and_at_the_kill_on_a_worker() {
        let dog = Arc::new(Watchdog::default());
        let (stop, done) = (Trigger::new(), Trigger::new());
        let sweeper = {
            let (dog, stop, done) = (dog.clone(), stop.clone(), done.clone());
            async_std::task::spawn(async move { dog.run(&stop, &done).await })
        };
        let (tx, rx) = std::sync::mpsc::channel();
        run(async move {
            let d = dog.deadline();
            assert_eq!(
                d.within(Duration::from_millis(50), async { 7 }).await,
                Ok(7)
            );
            let started = Instant::now();
            assert_eq!(
                d.within(Duration::from_millis(60), pending::<()>()).await,
                Err(Interrupted::Elapsed)
            );
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(55) && took < Duration::from_secs(5),
                "{took:?}"
            );
            // A later wait is not fired by the earlier one's expiry.
            assert_eq!(d.within(Duration::from_secs(5), nap(30)).await, Ok(()));
            // A busy wait of another task, armed before the stop.
            let busy_over = Arc::new(AtomicBool::new(false));
            let (busy_dog, over, busy_tx) = (dog.clone(), busy_over.clone(), tx.clone());
            spawn(async move {
                let d = busy_dog.deadline();
                let got = d.within(Duration::from_secs(30), pending::<()>()).await;
                over.store(true, Ordering::SeqCst);
                busy_tx.send(("busy", got)).unwrap();
            })
            .unwrap();
            // A deadline handed out before the kill, first armed after it.
            let early = dog.deadline();
            let stopping = async {
                nap(30).await;
                stop.fire();
            };
            let (waited, ()) = futures_lite::future::zip(
                d.within_or_stop(Duration::from_secs(5), &stop, pending::<()>()),
                stopping,
            )
            .await;
            assert_eq!(waited, Err(Interrupted::Stopping));
            assert_eq!(
                d.within(Duration::from_secs(5), nap(20)).await,
                Ok(()),
                "busy waits survive the stop"
            );
            assert_eq!(
                d.within(Duration::from_millis(30), pending::<()>()).await,
                Err(Interrupted::Elapsed),
                "and keep their deadlines"
            );
            assert!(!busy_over.load(Ordering::SeqCst), "the other task's too");
            done.fire();
            let started = Instant::now();
            assert_eq!(
                d.within(Duration::from_secs(30), pending::<()>()).await,
                Err(Interrupted::Elapsed),
                "killed: waits end at once"
            );
            assert_eq!(
                early.within(Duration::from_secs(30), pending::<()>()).await,
                Err(Interrupted::Elapsed),
            );
            assert_eq!(
                dog.deadline()
                    .within(Duration::from_secs(30), pending::<()>())
                    .await,
                Err(Interrupted::Elapsed),
                "so do later deadlines'"
            );
            assert!(started.elapsed() < Duration::from_secs(20));
            while !busy_over.load(Ordering::SeqCst) {
                nap(10).await;
            }
            tx.send(("main", Ok(()))).unwrap();
        })
        .unwrap();
        let got: Vec<_> = rx.try_iter().collect();
        assert_eq!(
            got,
            [("busy", Err(Interrupted::Elapsed)), ("main", Ok(()))],
            "the wait armed before the kill ended too"
        );
        async_std::task::block_on(sweeper);
    }

    #[test]
    fn off_a_worker_waits_fall_back_to_async_std_timers() {
        async_std::task::block_on(async {
            let d = Deadline::default();
            assert_eq!(d.within(Duration::from_secs(5), async { 1 }).await, Ok(1));
            let started = Instant::now();
            assert_eq!(
                d.within(Duration::from_millis(50), pending::<()>()).await,
                Err(Interrupted::Elapsed)
            );
            let took = started.elapsed();
            assert!(took >= Duration::from_millis(45), "{took:?}");
            let stop = Trigger::new();
            let stopping = async {
                async_std::task::sleep(Duration::from_millis(20)).await;
                stop.fire();
            };
            let (waited, ()) = futures_lite::future::zip(
                d.within_or_stop(Duration::from_secs(30), &stop, pending::<()>()),
                stopping,
            )
            .await;
            assert_eq!(waited, Err(Interrupted::Stopping));
            // The kill reaches waits off the workers through their list.
            let dog = Arc::new(Watchdog::default());
            let d = dog.deadline();
            let killer = {
                let dog = dog.clone();
                async move {
                    async_std::task::sleep(Duration::from_millis(20)).await;
                    dog.kill();
                }
            };
            let started = Instant::now();
            let (waited, ()) = futures_lite::future::zip(
                d.within(Duration::from_secs(30), pending::<()>()),
                killer,
            )
            .await;
            assert_eq!(waited, Err(Interrupted::Elapsed));
            assert!(started.elapsed() < Duration::from_secs(20));
        });
    }

    #[test]
    fn timers_fire_in_the_order_of_their_deadlines() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let out = order.clone();
        run(async move {
            let (tx, rx) = async_channel::unbounded();
            for ms in [300u64, 100, 400, 200] {
                let (order, tx) = (out.clone(), tx.clone());
                spawn(async move {
                    nap(ms).await;
                    order.lock().unwrap().push(ms);
                    let _ = tx.send(()).await;
                })
                .unwrap();
            }
            for _ in 0..4 {
                rx.recv().await.unwrap();
            }
        })
        .unwrap();
        assert_eq!(*order.lock().unwrap(), [100, 200, 300, 400]);
    }

    #[test]
    fn a_wait_that_ended_in_time_never_fires() {
        let (tx, rx) = std::sync::mpsc::channel();
        run(async move {
            let log = Arc::new(Woken::default());
            let d = Deadline::default();
            // Ends in time: after a turn of the worker.
            let soon = async {
                yield_now().await;
                5
            };
            let got = recorded(log.clone(), d.within(Duration::from_millis(50), soon)).await;
            // Dropped while waiting.
            let dropped = Deadline::default();
            let cut = futures_lite::future::or(
                recorded(
                    log.clone(),
                    dropped.within(Duration::from_millis(60), async {
                        pending::<()>().await;
                        0
                    }),
                ),
                async { Ok(6) },
            )
            .await;
            let queued = queued_here();
            nap(200).await; // well past both deadlines
            let fired = (
                d.timer.fired.load(Ordering::SeqCst),
                dropped.timer.fired.load(Ordering::SeqCst),
            );
            tx.send((got, cut, queued, fired, log.threads().len(), queued_here()))
                .unwrap();
        })
        .unwrap();
        let (got, cut, queued, fired, wakes, left) = rx.recv().unwrap();
        assert_eq!((got, cut), (Ok(5), Ok(6)));
        assert_eq!(queued, 2, "both waits were on the worker's heap");
        assert_eq!(fired, (0, 0), "neither fired");
        assert_eq!(wakes, 1, "the only wake was the yield's");
        assert_eq!(left, 0, "their entries are gone");
    }

    #[test]
    fn a_timer_set_from_a_task_fires_on_its_own_worker() {
        let (tx, rx) = std::sync::mpsc::channel();
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let tx = tx.clone();
                worker(async move {
                    let log = Arc::new(Woken::default());
                    let d = Deadline::default();
                    let (ltx, lrx) = async_channel::bounded(1);
                    let log2 = log.clone();
                    spawn(async move {
                        let got =
                            recorded(log2, d.within(Duration::from_millis(100), pending::<()>()))
                                .await;
                        let _ = ltx.send(got).await;
                    })
                    .unwrap();
                    let got = lrx.recv().await.unwrap();
                    tx.send((std::thread::current().id(), got, log.threads()))
                        .unwrap();
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let seen: Vec<_> = rx.try_iter().collect();
        assert_eq!(seen.len(), 2);
        for (worker, got, woken_on) in seen {
            assert_eq!(got, Err(Interrupted::Elapsed));
            assert!(!woken_on.is_empty());
            assert!(
                woken_on.iter().all(|t| *t == worker),
                "woken from another thread: {woken_on:?} (worker {worker:?})"
            );
        }
    }

    #[test]
    fn the_worker_sleeps_until_its_next_timer() {
        let (tx, rx) = std::sync::mpsc::channel();
        run(async move {
            let sleeps = || crate::runtime::SLEEPS.with(Cell::get);
            // A far timer, and a near one armed after it.
            spawn(async {
                let _ = Deadline::default()
                    .within(Duration::from_secs(60), pending::<()>())
                    .await;
            })
            .unwrap();
            yield_now().await;
            let (before, started) = (sleeps(), Instant::now());
            nap(300).await;
            let (took, slept) = (started.elapsed(), sleeps() - before);
            let left = timeout();
            tx.send((took, slept, left)).unwrap();
        })
        .unwrap();
        let (took, slept, left) = rx.recv().unwrap();
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_secs(10),
            "woke for the near timer, not the far one: {took:?}"
        );
        // One sleep until the timer, give or take a spurious wake: not one
        // per tick (30) nor a spin.
        assert!((1..=8).contains(&slept), "{slept} sleeps");
        let left = left.expect("the far timer is still due");
        assert!(
            left > Duration::from_secs(30) && left <= Duration::from_secs(60),
            "{left:?}"
        );
    }

    #[test]
    fn many_connections_deadlines_take_no_shared_lock() {
        const TASKS: usize = 500;
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = async_channel::bounded::<()>(2);
        let ready = Arc::new(AtomicU64::new(0));
        let dog = Arc::new(Watchdog::default());
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (tx, go, ready, dog) = (tx.clone(), go_rx.clone(), ready.clone(), dog.clone());
                worker(async move {
                    ready.fetch_add(1, Ordering::SeqCst);
                    let _ = go.recv().await;
                    let (done_tx, done_rx) = async_channel::unbounded();
                    for i in 0..TASKS {
                        let (dog, done_tx) = (dog.clone(), done_tx.clone());
                        spawn(async move {
                            let d = dog.deadline();
                            // Waits that end in time, with the same limit: one entry.
                            let mut got = Ok(());
                            for _ in 0..3 {
                                got = got.and(d.within(Duration::from_secs(60), yield_now()).await);
                            }
                            let limit = Duration::from_millis(50 + (i % 7) as u64 * 10);
                            let cut = d.within(limit, pending::<()>()).await;
                            let _ = done_tx.send(got.map(|()| cut)).await;
                        })
                        .unwrap();
                    }
                    yield_now().await;
                    let peak = queued_here();
                    let mut elapsed = 0;
                    for _ in 0..TASKS {
                        if done_rx.recv().await.unwrap() == Ok(Err(Interrupted::Elapsed)) {
                            elapsed += 1;
                        }
                    }
                    tx.send((elapsed, peak)).unwrap();
                })
            })
            .collect();
        let wait = Instant::now();
        while ready.load(Ordering::SeqCst) < 2 {
            assert!(
                wait.elapsed() < Duration::from_secs(30),
                "workers never started"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // Every process-wide lock of the runtime held meanwhile.
        let runtimes = crate::runtime::RUNTIMES.lock().unwrap();
        let off_worker = lock(&OFF_WORKER);
        for _ in 0..2 {
            go_tx.send_blocking(()).unwrap();
        }
        let mut seen = Vec::new();
        for _ in 0..2 {
            seen.push(
                rx.recv_timeout(Duration::from_secs(60))
                    .expect("a worker waited on a shared lock"),
            );
        }
        drop((runtimes, off_worker));
        for w in workers {
            w.join().unwrap();
        }
        for (elapsed, peak) in seen {
            assert_eq!(elapsed, TASKS);
            // Each worker's heap holds its own tasks' entries only (one
            // each, however many waits), not the other worker's.
            assert_eq!(peak, TASKS);
        }
    }

    #[test]
    fn the_heap_keeps_no_more_than_twice_the_armed_waits() {
        let (tx, rx) = std::sync::mpsc::channel();
        run(async move {
            let mut most = 0;
            // Short-lived connections: each arms a long deadline once and is gone.
            for _ in 0..20_000 {
                let d = Deadline::default();
                let _ = d.within(Duration::from_secs(60), yield_now()).await;
                most = most.max(queued_here());
            }
            tx.send(most).unwrap();
        })
        .unwrap();
        let most = rx.recv().unwrap();
        assert!(most <= 2 * COMPACT_MIN + 1, "{most} entries");
    }
}
