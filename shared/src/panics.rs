//! Panic isolation: a panic inside a library (tide, async-h1, http-types and
//! surf `unwrap` on input they cannot represent) ends at most one connection or
//! one background task, never the process. The release profile unwinds, every
//! connection task runs under [`guard`], and every background loop under
//! [`supervise`], which restarts it. Each panic is logged and counted, and the
//! count is served as `<service>_panics_total`.

use futures_lite::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The panics a service caught, shared by all its tasks.
#[derive(Clone, Debug, Default)]
pub struct Panics {
    count: Arc<AtomicU64>,
}

impl Panics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Panics caught so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Logs and counts one caught panic of `what`.
    pub fn record(&self, what: &str, payload: &(dyn std::any::Any + Send)) {
        self.count.fetch_add(1, Ordering::Relaxed);
        log::error!(task = what; "panic caught in {what}: {}", message(payload));
    }
}

/// The text a panic was raised with, when it has one.
pub fn message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// Runs `fut`, turning a panic in it into `None` (logged and counted).
///
/// For one-shot work such as a connection: the panic ends only that work.
pub async fn guard<T>(panics: &Panics, what: &str, fut: impl Future<Output = T>) -> Option<T> {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(v) => Some(v),
        Err(payload) => {
            panics.record(what, payload.as_ref());
            None
        }
    }
}

/// Runs the loop that `make` builds until it returns; if it panics, records
/// the panic and starts a new one after a capped back-off (100 ms doubling to
/// 5 s), so a loop that panics at once does not spin.
///
/// For background loops (health checks, watch, registration renewal, pool
/// reaper): they must keep running whatever one iteration met.
pub async fn supervise<F, Fut>(panics: Panics, what: &'static str, mut make: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match guard(&panics, what, make()).await {
            Some(()) => return,
            None => {
                log::warn!(task = what; "restarting {what} in {backoff:?}");
                async_std::task::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[async_std::test]
    async fn a_panic_is_caught_counted_and_the_value_is_none() {
        let panics = Panics::new();
        let got: Option<u32> = guard(&panics, "test", async { panic!("boom") }).await;
        assert_eq!(got, None);
        assert_eq!(panics.count(), 1);
        assert_eq!(guard(&panics, "test", async { 7 }).await, Some(7));
        assert_eq!(panics.count(), 1);
    }

    #[async_std::test]
    async fn a_supervised_loop_is_restarted_after_a_panic() {
        let panics = Panics::new();
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        supervise(panics.clone(), "test loop", move || {
            let r = r.clone();
            async move {
                if r.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("iteration failed");
                }
            }
        })
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(panics.count(), 2);
    }
}
