//! Coarse deadlines for the request path.
//!
//! Every async-io timer wakes async-io's reactor thread when it is inserted
//! (an eventfd write and a context switch): with a timer around each read
//! and write, that was the largest avoidable cost per request. Instead, each
//! connection task owns a [`Deadline`]; a wait arms it with two atomic stores,
//! and one sweeper task checks every armed deadline each [`TICK`] and wakes
//! the overdue ones. Deadlines therefore fire up to one tick late.
//!
//! The sweeper also interrupts idle waits when the gateway stops, and every
//! wait once the drain time is over.

use crate::runtime::clock;
use atomic_waker::AtomicWaker;
use shared::shutdown::Trigger;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::Duration;

/// How often overdue waits are looked for.
pub(crate) const TICK: Duration = Duration::from_millis(20);

/// Bits of an armed word that count arms; the rest is the deadline in clock milliseconds.
const GENERATION_BITS: u32 = 20;

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

/// The deadline of one task: at most one wait is armed at a time.
#[derive(Debug, Default)]
pub(crate) struct Deadline {
    /// `deadline_ms << GENERATION_BITS | generation`; 0 when nothing is armed.
    armed: AtomicU64,
    /// The armed word the sweeper found overdue.
    fired: AtomicU64,
    /// The current wait ends when the gateway stops.
    interruptible: AtomicBool,
    /// The drain time is over: every wait ends at once.
    killed: AtomicBool,
    generation: AtomicU64,
    waker: AtomicWaker,
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
        debug_assert_eq!(
            self.armed.load(Ordering::Relaxed),
            0,
            "waits on one deadline must not nest: the inner one would disarm the outer"
        );
        let generation =
            self.generation.fetch_add(1, Ordering::Relaxed) & ((1 << GENERATION_BITS) - 1);
        let at = clock().saturating_add(limit.as_millis() as u64).max(1);
        let word = (at << GENERATION_BITS) | generation;
        self.interruptible.store(stop.is_some(), Ordering::Relaxed);
        self.armed.store(word, Ordering::Release);
        let outcome = std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(v));
            }
            self.waker.register(cx.waker());
            if self.fired.load(Ordering::Acquire) == word || self.killed.load(Ordering::Acquire) {
                return Poll::Ready(Err(Interrupted::Elapsed));
            }
            if stop.is_some_and(Trigger::is_fired) {
                return Poll::Ready(Err(Interrupted::Stopping));
            }
            Poll::Pending
        })
        .await;
        self.armed.store(0, Ordering::Release);
        outcome
    }
}

/// Every task's deadline, and the sweeper that enforces them.
#[derive(Debug, Default)]
pub(crate) struct Watchdog {
    deadlines: Mutex<Vec<Weak<Deadline>>>,
    killed: AtomicBool,
}

impl Watchdog {
    /// A deadline for a new task; the watchdog forgets it when the task drops it.
    pub(crate) fn deadline(&self) -> Arc<Deadline> {
        let d = Arc::new(Deadline::default());
        let mut all = self.lock();
        d.killed
            .store(self.killed.load(Ordering::Acquire), Ordering::Release);
        all.push(Arc::downgrade(&d));
        d
    }

    /// Ends every wait, now and from now on.
    pub(crate) fn kill(&self) {
        let all = self.lock();
        self.killed.store(true, Ordering::Release);
        for d in all.iter().filter_map(Weak::upgrade) {
            d.killed.store(true, Ordering::Release);
            d.waker.wake();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Deadline>>> {
        self.deadlines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes overdue waits (and, when stopping, interruptible ones); drops gone tasks.
    pub(crate) fn sweep(&self, stopping: bool) {
        let now = clock();
        self.lock().retain(|weak| {
            let Some(d) = weak.upgrade() else {
                return false;
            };
            let word = d.armed.load(Ordering::Acquire);
            if word != 0 && word >> GENERATION_BITS <= now {
                d.fired.store(word, Ordering::Release);
                d.waker.wake();
            } else if stopping && word != 0 && d.interruptible.load(Ordering::Relaxed) {
                d.waker.wake();
            }
            true
        });
    }

    /// Sweeps every tick until `done` fires; at once when `stop` fires, so
    /// idle waits end then, while busy ones keep their deadlines during the
    /// drain. When `done` fires, every wait is ended.
    pub(crate) async fn run(&self, stop: &Trigger, done: &Trigger) {
        use futures_lite::FutureExt;
        let mut stopping = false;
        while !done.is_fired() {
            let stop_now = async {
                if stopping {
                    futures_lite::future::pending::<()>().await;
                }
                stop.wait().await;
            };
            async_std::task::sleep(TICK)
                .or(stop_now)
                .or(done.wait())
                .await;
            stopping = stop.is_fired();
            self.sweep(stopping);
        }
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn ready_futures_pass_and_pending_ones_time_out() {
        async_std::task::block_on(async {
            let dog = Arc::new(Watchdog::default());
            let (stop, done) = (Trigger::new(), Trigger::new());
            let sweeper = {
                let (dog, stop, done) = (dog.clone(), stop.clone(), done.clone());
                async_std::task::spawn(async move { dog.run(&stop, &done).await })
            };
            let d = dog.deadline();
            assert_eq!(
                d.within(Duration::from_millis(50), async { 7 }).await,
                Ok(7)
            );
            let started = Instant::now();
            let never = futures_lite::future::pending::<()>();
            assert_eq!(
                d.within(Duration::from_millis(60), never).await,
                Err(Interrupted::Elapsed)
            );
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(55) && took < Duration::from_millis(60) + TICK * 5,
                "{took:?}"
            );
            // A later wait is not fired by the earlier one's expiry.
            let slow = async_std::task::sleep(Duration::from_millis(30));
            assert_eq!(d.within(Duration::from_secs(5), slow).await, Ok(()));
            let idle = futures_lite::future::pending::<()>();
            let stopping = async {
                async_std::task::sleep(Duration::from_millis(30)).await;
                stop.fire();
            };
            let (waited, ()) = futures_lite::future::zip(
                d.within_or_stop(Duration::from_secs(5), &stop, idle),
                stopping,
            )
            .await;
            assert_eq!(waited, Err(Interrupted::Stopping));
            let busy = async_std::task::sleep(Duration::from_millis(20));
            assert_eq!(
                d.within(Duration::from_secs(5), busy).await,
                Ok(()),
                "busy waits survive the stop"
            );
            let never = futures_lite::future::pending::<()>();
            assert_eq!(
                d.within(Duration::from_millis(30), never).await,
                Err(Interrupted::Elapsed),
                "and keep their deadlines"
            );
            done.fire();
            sweeper.await;
            let never = futures_lite::future::pending::<()>();
            assert_eq!(
                d.within(Duration::from_secs(5), never).await,
                Err(Interrupted::Elapsed),
                "killed: waits end at once"
            );
            drop(d);
            dog.sweep(false);
            assert!(dog.lock().is_empty(), "a dropped deadline is forgotten");
        });
    }
}
