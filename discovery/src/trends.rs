//! The last 15 minutes of the registry, for the console's charts
//! (`GET /api/trends`): every [`EVERY`] a sample of each namespace's
//! available and total counts, and this replica's registrations and failed
//! health checks per second since the sample before, in a bounded ring of
//! [`POINTS`]. A console opened fresh draws the whole quarter hour at once.

use crate::counters::{Counters, Outcome};
use crate::registry::Registry;
use crate::store::now_unix_ms;
use serde_json::{json, Value};
use shared::shutdown::Trigger;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a sample is taken.
pub const EVERY: Duration = Duration::from_secs(5);
/// Samples kept: 15 minutes at one per 5 s.
pub const POINTS: usize = 180;
/// Namespaces recorded per sample at most (the first by name): a flood of
/// namespaces costs bounded memory.
const MAX_NAMESPACES: usize = 256;

/// One sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub at_unix_ms: u64,
    /// Per namespace: `(available, total)`.
    pub namespaces: BTreeMap<String, (usize, usize)>,
    /// Since the sample before (`None` for the first one).
    pub registrations_per_second: Option<f64>,
    pub check_failures_per_second: Option<f64>,
}

/// The ring of samples, oldest first.
#[derive(Debug)]
pub struct Trends {
    inner: Mutex<Inner>,
    cap: usize,
}

#[derive(Debug, Default)]
struct Inner {
    points: VecDeque<Point>,
    /// The counters at the last sample: when, registrations, failed checks.
    last: Option<(Instant, u64, u64)>,
}

impl Default for Trends {
    fn default() -> Self {
        Trends::with_capacity(POINTS)
    }
}

impl Trends {
    pub fn with_capacity(cap: usize) -> Self {
        Trends {
            inner: Mutex::default(),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one sample: `counts` per namespace `(available, total)`, and
    /// the cumulative registrations and failed checks at `now`.
    pub fn record(
        &self,
        now: Instant,
        at_unix_ms: u64,
        counts: impl IntoIterator<Item = (String, (usize, usize))>,
        registrations: u64,
        check_failures: u64,
    ) {
        let mut inner = self.lock();
        let rates = inner.last.and_then(|(then, r0, f0)| {
            let seconds = now.saturating_duration_since(then).as_secs_f64();
            (seconds > 0.0).then(|| {
                (
                    registrations.saturating_sub(r0) as f64 / seconds,
                    check_failures.saturating_sub(f0) as f64 / seconds,
                )
            })
        });
        inner.last = Some((now, registrations, check_failures));
        if inner.points.len() == self.cap {
            inner.points.pop_front();
        }
        inner.points.push_back(Point {
            at_unix_ms,
            namespaces: counts.into_iter().take(MAX_NAMESPACES).collect(),
            registrations_per_second: rates.map(|r| r.0),
            check_failures_per_second: rates.map(|r| r.1),
        });
    }

    /// The samples taken after `after_unix_ms` (0: all), oldest first.
    pub fn since(&self, after_unix_ms: u64) -> Vec<Point> {
        let inner = self.lock();
        let first = inner
            .points
            .partition_point(|p| p.at_unix_ms <= after_unix_ms);
        inner.points.range(first..).cloned().collect()
    }

    /// `/api/trends`'s answer.
    pub fn json(&self, after_unix_ms: u64) -> Value {
        let points: Vec<Value> = self
            .since(after_unix_ms)
            .into_iter()
            .map(|p| {
                json!({
                    "at_unix_ms": p.at_unix_ms,
                    "namespaces": p.namespaces.into_iter()
                        .map(|(ns, (available, total))| (ns, json!([available, total])))
                        .collect::<serde_json::Map<_, _>>(),
                    "registrations_per_second": p.registrations_per_second,
                    "check_failures_per_second": p.check_failures_per_second,
                })
            })
            .collect();
        json!({
            "now_unix_ms": now_unix_ms(),
            "interval_seconds": EVERY.as_secs_f64(),
            "points_kept": self.cap,
            "points": points,
        })
    }
}

/// Registrations (created and renewed) and failed health checks (timeout,
/// bad status, error) counted so far.
fn counted(counters: &Counters) -> (u64, u64) {
    let sum = |family: &prometheus_client::metrics::family::Family<
        Outcome,
        prometheus_client::metrics::counter::Counter,
    >,
               outcomes: &[&'static str]| {
        outcomes
            .iter()
            .map(|outcome| family.get_or_create(&Outcome { outcome }).get())
            .sum::<u64>()
    };
    (
        sum(&counters.registrations, &["created", "renewed"]),
        sum(&counters.checks, &["timeout", "bad_status", "error"]),
    )
}

/// Samples the registry every [`EVERY`] until `stop` fires.
pub async fn run(
    trends: Arc<Trends>,
    registry: Arc<Registry>,
    counters: Arc<Counters>,
    stop: Trigger,
) {
    use futures_lite::FutureExt;
    while !stop.is_fired() {
        let counts = registry.counts().into_iter().map(|(ns, c)| {
            let total = c.pending + c.available + c.unavailable;
            (ns, (c.available, total))
        });
        let (registrations, failures) = counted(&counters);
        trends.record(
            Instant::now(),
            now_unix_ms(),
            counts,
            registrations,
            failures,
        );
        async_std::task::sleep(EVERY).or(stop.wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(n: usize) -> Vec<(String, (usize, usize))> {
        vec![("svc".to_string(), (n, 3))]
    }

    #[test]
    fn samples_are_bounded_and_rates_come_from_successive_ones() {
        let t = Trends::with_capacity(4);
        let t0 = Instant::now();
        t.record(t0, 1000, ns(3), 10, 0);
        t.record(t0 + Duration::from_secs(5), 6000, ns(2), 20, 5);
        let points = t.since(0);
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].registrations_per_second, None, "no sample before");
        assert_eq!(points[1].registrations_per_second, Some(2.0));
        assert_eq!(points[1].check_failures_per_second, Some(1.0));
        assert_eq!(points[1].namespaces["svc"], (2, 3));
        for i in 2..10u64 {
            t.record(
                t0 + Duration::from_secs(5 * i),
                1000 + 5000 * i,
                ns(1),
                20,
                5,
            );
        }
        let kept: Vec<u64> = t.since(0).iter().map(|p| p.at_unix_ms).collect();
        assert_eq!(kept, vec![31000, 36000, 41000, 46000], "the newest four");
        assert_eq!(t.since(41000).len(), 1);
        let json = t.json(41000);
        assert_eq!(json["points"][0]["namespaces"]["svc"], json!([1, 3]));
        assert_eq!(json["points"][0]["registrations_per_second"], json!(0.0));
    }

    #[test]
    fn at_most_so_many_namespaces_per_sample() {
        let t = Trends::default();
        let many = (0..1000).map(|i| (format!("ns{i:04}"), (1, 1)));
        t.record(Instant::now(), 1, many, 0, 0);
        assert_eq!(t.since(0)[0].namespaces.len(), MAX_NAMESPACES);
    }
}
