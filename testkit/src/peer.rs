//! A real HTTP instance whose health check the test controls: status, delay.

use shared::serve::Served;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug)]
pub struct Knobs {
    status: AtomicU16,
    delay_ms: AtomicU64,
    checks: AtomicU64,
}

/// A tide server on 127.0.0.1:0 answering `GET /health_check`.
#[derive(Debug)]
pub struct Peer {
    served: Served,
    knobs: Arc<Knobs>,
}

impl Peer {
    pub async fn start() -> Peer {
        let knobs = Arc::new(Knobs {
            status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            checks: AtomicU64::new(0),
        });
        let mut app = tide::with_state(knobs.clone());
        app.at("/health_check")
            .get(|req: tide::Request<Arc<Knobs>>| async move {
                let k = req.state();
                k.checks.fetch_add(1, Ordering::Relaxed);
                let delay = k.delay_ms.load(Ordering::Relaxed);
                if delay > 0 {
                    async_std::task::sleep(Duration::from_millis(delay)).await;
                }
                Ok(tide::Response::new(k.status.load(Ordering::Relaxed)))
            });
        let served = shared::serve::serve(app, "127.0.0.1:0").await.unwrap();
        Peer { served, knobs }
    }

    pub fn port(&self) -> u16 {
        self.served.addr().port()
    }

    pub fn set_status(&self, status: u16) {
        self.knobs.status.store(status, Ordering::Relaxed);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.knobs
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Health checks received so far.
    pub fn checks(&self) -> u64 {
        self.knobs.checks.load(Ordering::Relaxed)
    }

    /// Closes the port: later checks are refused.
    pub async fn stop(self) {
        self.served.shutdown(Duration::ZERO).await;
    }
}
