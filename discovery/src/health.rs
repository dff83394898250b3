//! The health checker: every instance is checked once per
//! `health_check_time_interval`, at its own phase within the interval (from
//! its id), so checks spread evenly instead of all starting at each tick. New
//! registrations and instances a gateway excluded in a lookup are due at once.
//!
//! At most `max_concurrent_checks` checks are in flight: the loop takes a
//! slot before it takes a due check from the registry, so a registration
//! flood makes checks wait in the schedule, not pile up as tasks. A check
//! that could not start within an interval of its due time, or could not open
//! its socket for this process's own trouble, is *not made*: the instance
//! keeps its status, the check is counted apart and logged (at most once per
//! [`NOT_MADE_LOG_EVERY`]). The loop runs under `supervise` and each check
//! under `guard`, so a panic ends one check, never the checker.

use crate::access::{resolve, AllowedHosts, ResolveError};
use crate::counters::Counters;
use crate::mirror::{CheckResult, CheckTarget};
use crate::probe::{self, Probe};
use crate::registry::Registry;
use async_lock::Semaphore;
use async_std::task;
use futures_lite::FutureExt;
use shared::config::format_duration;
use shared::panics::{guard, Panics};
use shared::shutdown::Trigger;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A burst of checks that could not be made is logged at most this often.
pub const NOT_MADE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Everything a check needs; cloned into each check's task.
#[derive(Clone)]
pub struct Checker {
    pub registry: Arc<Registry>,
    pub counters: Arc<Counters>,
    pub allowed: Arc<AllowedHosts>,
    pub interval: Duration,
    pub threshold: Duration,
    pub slots: Arc<Semaphore>,
    pub panics: Panics,
    pub not_made: Arc<Throttle>,
    /// The namespaces checked over TLS (`upstream_tls`), their files read.
    pub tls: Arc<HashMap<String, probe::Tls>>,
}

/// What became of one check.
enum Outcome {
    Made(CheckResult, &'static str),
    NotMade(String),
}

impl Checker {
    /// Takes due checks and starts them, one per free slot, until `stop` fires.
    pub async fn run(&self, wake: &async_channel::Receiver<()>, stop: &Trigger) {
        loop {
            let slot = async { Some(self.slots.acquire_arc().await) }
                .or(async {
                    stop.wait().await;
                    None
                })
                .await;
            let Some(slot) = slot else { return };
            let target = loop {
                match self.registry.take_due(Instant::now()) {
                    Ok(target) => break target,
                    Err(next) => {
                        let wait = next.map_or(Duration::from_secs(3600), |t| {
                            t.saturating_duration_since(Instant::now())
                        });
                        let woken = async {
                            task::sleep(wait).await;
                            true
                        }
                        .or(async {
                            // Closed only when the registry is gone: then sleep it out.
                            if wake.recv().await.is_err() {
                                task::sleep(wait).await;
                            }
                            true
                        })
                        .or(async {
                            stop.wait().await;
                            false
                        })
                        .await;
                        if !woken {
                            return;
                        }
                    }
                }
            };
            let late = target.due.elapsed();
            if late > self.interval {
                self.not_made(
                    &target,
                    format!(
                        "the checker is overloaded: the check waited {} for a slot",
                        format_duration(late)
                    ),
                );
                continue;
            }
            let checker = self.clone();
            task::spawn(async move {
                let _slot = slot;
                let made = guard(&checker.panics, "health check", checker.check(&target)).await;
                if made.is_none() {
                    checker.not_made(&target, "the check panicked".into());
                }
            });
        }
    }

    /// One health check, recorded in the registry and the metrics.
    async fn check(&self, target: &CheckTarget) {
        let started = Instant::now();
        let outcome = async_std::future::timeout(self.threshold, self.attempt(target))
            .await
            .unwrap_or_else(|_| {
                let latency = started.elapsed();
                // The timer fired well after its deadline: this process was too
                // busy to run the check, which says nothing about the instance.
                if latency > self.threshold + self.threshold / 4 + Duration::from_millis(50) {
                    return Outcome::NotMade(format!(
                        "the checker ran late: its {} deadline was seen after {}",
                        format_duration(self.threshold),
                        format_duration(latency)
                    ));
                }
                let why = format!("no answer within {}", format_duration(self.threshold));
                Outcome::Made(
                    CheckResult {
                        latency,
                        failure: Some(why),
                    },
                    "timeout",
                )
            });
        let (result, label) = match outcome {
            Outcome::Made(result, label) => (result, label),
            Outcome::NotMade(why) => return self.not_made(target, why),
        };
        Counters::outcome(&self.counters.checks, label);
        self.counters
            .check_seconds
            .observe(result.latency.as_secs_f64());
        let reason = result.failure.clone();
        let recorded = self.registry.record_check(target, result).await;
        if let Some(e) = &recorded.store_error {
            log::warn!(namespace = target.namespace.as_str(), id = target.id.as_str(),
                instance = target.authority().as_str(), reason = e.to_string().as_str();
                "health check result not stored, it is tried again at the next check: {e}");
        }
        match (recorded.flipped, reason) {
            // A failed check says why; a passing one has nothing to add.
            (Some(status), Some(reason)) => {
                log::info!(namespace = target.namespace.as_str(), id = target.id.as_str(),
                    instance = target.authority().as_str(), status = status.as_str(),
                    reason = reason.as_str();
                    "instance is now {}", status.as_str())
            }
            (Some(status), None) => {
                log::info!(namespace = target.namespace.as_str(), id = target.id.as_str(),
                    instance = target.authority().as_str(), status = status.as_str();
                    "instance is now {}", status.as_str())
            }
            (None, _) => {}
        }
        if let Some(gone) = recorded.expired {
            self.counters.expired.inc();
            log::info!(namespace = target.namespace.as_str(), id = gone.id.as_str(),
                instance = target.authority().as_str();
                "instance dropped after being unavailable too long");
        }
    }

    /// Resolves (names again at every check), holds every address to
    /// `allowed_hosts`, then makes the exchange.
    async fn attempt(&self, target: &CheckTarget) -> Outcome {
        let started = Instant::now();
        let failed = |why: String, label| {
            Outcome::Made(
                CheckResult {
                    latency: started.elapsed(),
                    failure: Some(why),
                },
                label,
            )
        };
        let addrs = match resolve(&target.host, target.port.0, self.threshold).await {
            Ok(addrs) => addrs,
            Err(ResolveError::Local(e)) => {
                return Outcome::NotMade(format!("cannot resolve {}: {e}", target.host))
            }
            Err(e) => return failed(e.to_string(), "error"),
        };
        if let Err(why) = self.allowed.check_all(&addrs) {
            return failed(format!("not checked: {why}"), "refused");
        }
        let request = probe::request(&target.authority(), &target.path);
        let tls = self
            .tls
            .get(&target.namespace)
            .map(|tls| (tls, target.host.as_str()));
        match probe::probe(&addrs, &request, tls).await {
            Probe::Healthy => Outcome::Made(
                CheckResult {
                    latency: started.elapsed(),
                    failure: None,
                },
                "ok",
            ),
            Probe::Unhealthy(why) => {
                let label = if why.starts_with("answered") {
                    "bad_status"
                } else {
                    "error"
                };
                failed(why, label)
            }
            Probe::NotMade(why) => Outcome::NotMade(why),
        }
    }

    /// Leaves the instance as it was, reschedules its check, counts and (rate-limited) logs it.
    fn not_made(&self, target: &CheckTarget, why: String) {
        self.registry.skip_check(target);
        Counters::outcome(&self.counters.checks, "not_made");
        if let Some(also) = self.not_made.pass() {
            log::warn!(namespace = target.namespace.as_str(), id = target.id.as_str(),
                instance = target.authority().as_str(), reason = why.as_str(), also_not_made = also;
                "health check not made, status kept: {why} ({also} more since the last such line)");
        }
    }
}

/// Lets one event through per period and counts the ones held back.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Throttle {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(held back since the last pass)` when this event may be logged.
    pub fn pass(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, held) = &mut *state;
        if last.is_some_and(|t| t.elapsed() < self.every) {
            *held += 1;
            return None;
        }
        *last = Some(Instant::now());
        Some(std::mem::take(held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_lets_one_through_per_period_and_counts_the_rest() {
        let t = Throttle::new(Duration::from_secs(3600));
        assert_eq!(t.pass(), Some(0));
        assert_eq!(t.pass(), None);
        assert_eq!(t.pass(), None);
        let t2 = Throttle::new(Duration::ZERO);
        assert_eq!(t2.pass(), Some(0));
        assert_eq!(t2.pass(), Some(0));
    }
}
