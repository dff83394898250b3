//! The health checker: `GET <health_check_path>` on every instance every
//! `health_check_time_interval`, each check its own task with
//! `timeout_threshold` as its deadline, so one hanging instance never delays
//! the others. New registrations and instances a gateway excluded in a lookup
//! are checked at once instead of at the next tick.

use crate::metrics::Metrics;
use crate::registry::{CheckResult, CheckTarget, Registry};
use async_std::task;
use futures_lite::FutureExt;
use shared::shutdown::Trigger;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything a check needs; cloned into each check's task.
#[derive(Clone)]
pub struct Checker {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub client: surf::Client,
    pub threshold: Duration,
}

/// A client that opens a fresh connection per check: a pooled one could be
/// stale and fail a healthy instance, and a new connection is what proves liveness.
pub fn client() -> Result<surf::Client, String> {
    surf::Config::new()
        .set_http_keep_alive(false)
        .set_tcp_no_delay(true)
        .set_timeout(None)
        .try_into()
        .map_err(|e| format!("cannot build the health check client: {e}"))
}

enum Event {
    Tick,
    CheckNow(String, String),
    Stop,
}

/// Runs until `stop` fires.
pub async fn run(
    checker: Checker,
    interval: Duration,
    check_now: async_channel::Receiver<(String, String)>,
    stop: Trigger,
) {
    let mut next_tick = Instant::now() + interval;
    loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        let event = async {
            task::sleep(wait).await;
            Event::Tick
        }
        .or(async {
            match check_now.recv().await {
                Ok((ns, id)) => Event::CheckNow(ns, id),
                Err(_) => futures_lite::future::pending().await,
            }
        })
        .or(async {
            stop.wait().await;
            Event::Stop
        })
        .await;
        match event {
            Event::Tick => {
                next_tick += interval;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + interval;
                }
                for (namespace, gone) in checker.registry.expire() {
                    checker.metrics.expired.inc();
                    log::info!(namespace = namespace.as_str(), id = gone.id.as_str(), port:% = gone.port;
                        "instance dropped after being unavailable too long");
                }
                for target in checker.registry.due_checks() {
                    task::spawn(checker.clone().check(target));
                }
            }
            Event::CheckNow(ns, id) => {
                if let Some(target) = checker.registry.begin_check(&ns, &id) {
                    task::spawn(checker.clone().check(target));
                }
            }
            Event::Stop => return,
        }
    }
}

impl Checker {
    /// One health check, recorded in the registry and the metrics.
    pub async fn check(self, target: CheckTarget) {
        let started = Instant::now();
        let answer =
            async_std::future::timeout(self.threshold, self.client.get(&target.url).send()).await;
        let latency = started.elapsed();
        let (outcome, failure) = match answer {
            Ok(Ok(res)) if res.status() == 200 => ("ok", None),
            Ok(Ok(res)) => ("bad_status", Some(format!("answered {}", res.status()))),
            Ok(Err(e)) => ("error", Some(format!("request failed: {e}"))),
            Err(_) => (
                "timeout",
                Some(format!(
                    "no answer within {}",
                    shared::config::format_duration(self.threshold)
                )),
            ),
        };
        Metrics::outcome(&self.metrics.checks, outcome);
        self.metrics.check_seconds.observe(latency.as_secs_f64());
        let reason = failure.clone().unwrap_or_default();
        if let Some(status) = self
            .registry
            .record_check(&target, CheckResult { latency, failure })
        {
            log::info!(namespace = target.namespace.as_str(), id = target.id.as_str(),
                url = target.url.as_str(), status = status.as_str(), reason = reason.as_str();
                "instance is now {}", status.as_str());
        }
    }
}
