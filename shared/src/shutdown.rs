//! Shutdown plumbing shared by every service: a broadcast trigger, a count of
//! live connections to drain, and the SIGINT/SIGTERM wait used by each `main`.

use async_std::task;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A one-way broadcast: every clone's `wait()` resolves once `fire()` is called.
///
/// Built on a channel nobody sends on: closing it wakes every receiver.
#[derive(Clone, Debug)]
pub struct Trigger {
    tx: async_channel::Sender<()>,
    rx: async_channel::Receiver<()>,
}

impl Default for Trigger {
    fn default() -> Self {
        let (tx, rx) = async_channel::bounded(1);
        Trigger { tx, rx }
    }
}

impl Trigger {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn fire(&self) {
        self.tx.close();
    }

    pub fn is_fired(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves once `fire()` has been called (at once if it already was).
    pub async fn wait(&self) {
        let _ = self.rx.recv().await;
    }
}

/// Counts live connections (or requests) so shutdown can wait for them.
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    live: Arc<AtomicUsize>,
}

/// Decrements its tracker when dropped, however the task ends.
#[derive(Debug)]
pub struct Tracked {
    live: Arc<AtomicUsize>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Tracker {
    pub fn enter(&self) -> Tracked {
        self.live.fetch_add(1, Ordering::AcqRel);
        Tracked {
            live: self.live.clone(),
        }
    }

    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Waits until nothing is live or `limit` passes; true if it drained.
    pub async fn drained(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.live() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            task::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

/// Prints a start-up error and gives the exit code for it.
pub fn fail(error: &dyn std::fmt::Display) -> std::process::ExitCode {
    // Once on a terminal: see `cli::fail`.
    crate::cli::fail(error)
}

/// The body of every service's `main`: start it, wait for SIGINT/SIGTERM,
/// shut it down gracefully and exit 0. A second signal exits at once.
/// SIGHUP keeps its default action (the process ends): see
/// [`run_until_signal_with_reload`] for services that reload.
pub fn run_until_signal<H, Start, Stop, Stopping>(
    start: Start,
    stop: Stop,
) -> std::process::ExitCode
where
    Start: std::future::Future<Output = std::io::Result<H>>,
    Stop: FnOnce(H) -> Stopping,
    Stopping: std::future::Future<Output = ()>,
{
    run(start, stop, None::<fn(&H) -> std::future::Ready<()>>)
}

/// Like [`run_until_signal`], and each SIGHUP calls `reload` (which reads the
/// config again) instead of ending the process. Signals that arrive while a
/// reload runs wait for it.
pub fn run_until_signal_with_reload<H, Start, Stop, Stopping, Reload, Reloading>(
    start: Start,
    stop: Stop,
    reload: Reload,
) -> std::process::ExitCode
where
    Start: std::future::Future<Output = std::io::Result<H>>,
    Stop: FnOnce(H) -> Stopping,
    Stopping: std::future::Future<Output = ()>,
    Reload: Fn(&H) -> Reloading,
    Reloading: std::future::Future<Output = ()>,
{
    run(start, stop, Some(reload))
}

fn run<H, Start, Stop, Stopping, Reload, Reloading>(
    start: Start,
    stop: Stop,
    reload: Option<Reload>,
) -> std::process::ExitCode
where
    Start: std::future::Future<Output = std::io::Result<H>>,
    Stop: FnOnce(H) -> Stopping,
    Stopping: std::future::Future<Output = ()>,
    Reload: Fn(&H) -> Reloading,
    Reloading: std::future::Future<Output = ()>,
{
    use futures_lite::{FutureExt, StreamExt};
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    task::block_on(async {
        // Registered before starting, so a signal during start-up is not lost.
        let wanted: &[i32] = if reload.is_some() {
            &[SIGINT, SIGTERM, SIGHUP]
        } else {
            &[SIGINT, SIGTERM]
        };
        let mut signals = match signal_hook_async_std::Signals::new(wanted) {
            Ok(s) => s,
            Err(e) => return fail(&format!("cannot listen for signals: {e}")),
        };
        let handle = match start.await {
            Ok(h) => h,
            Err(e) => return fail(&e),
        };
        let signal = loop {
            let signal = signals.next().await.unwrap_or(SIGTERM);
            match &reload {
                Some(reload) if signal == SIGHUP => {
                    log::info!(signal = signal; "reloading the configuration");
                    reload(&handle).await;
                }
                _ => break signal,
            }
        };
        log::info!(signal = signal; "shutting down");
        let stopped = async {
            stop(handle).await;
            std::process::ExitCode::SUCCESS
        };
        let forced = async {
            // A hang-up while draining is not a reason to stop draining.
            while signals.next().await == Some(SIGHUP) {}
            log::warn!("second signal: exiting without finishing");
            std::process::ExitCode::from(130)
        };
        let code = stopped.or(forced).await;
        // Grouped warnings still being counted are printed before exiting.
        log::logger().flush();
        code
    })
}
