//! Per-instance request statistics: what `/metrics` exports per upstream and
//! what `/status` shows the console (request and error rates, p50/p99).
//!
//! The hot path pays a few relaxed atomic adds per try, in the calling
//! worker's own shard ([`PerWorker`]; summed when read): every
//! [`crate::balance::pool::Upstream`] owns its [`UpstreamStats`] from the moment it
//! joins, so nothing is looked up by label per request. Rates and
//! percentiles over the last half minute are computed off the request path,
//! from samples the reaper takes every few seconds.

use crate::observe::causes::Failover;
use crate::observe::history::{History, Point};
use crate::runtime::slots::PerWorker;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Latency buckets per octave: percentiles are read to within about 19 %.
const PER_OCTAVE: u32 = 4;
/// Buckets with a bound (the last count is above every bound).
const BOUNDED: usize = 80;
/// The smallest bound, in microseconds.
const FIRST_BOUND_US: f64 = 100.0;
/// Every how many fine buckets one is exported to Prometheus (one per octave:
/// 100 us, 200 us, ... 52 s).
const EXPORT_EVERY: usize = PER_OCTAVE as usize;
/// Status codes counted one by one: 100..=599.
const CODES: usize = 500;
/// How often a sample is taken for the windowed rates, and how many are kept.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const SAMPLES: usize = 7;

/// Upper bounds of the latency buckets, in microseconds.
fn bounds() -> &'static [u64; BOUNDED] {
    static BOUNDS: OnceLock<[u64; BOUNDED]> = OnceLock::new();
    BOUNDS.get_or_init(|| {
        std::array::from_fn(|i| {
            (FIRST_BOUND_US * 2f64.powf(i as f64 / f64::from(PER_OCTAVE))).round() as u64
        })
    })
}

/// One instance's counters and latency histogram, shared by the rings that
/// list it; counted per worker.
#[derive(Debug)]
pub(crate) struct UpstreamStats {
    shards: PerWorker<Shard>,
    /// Taken by [`UpstreamStats::sample`], oldest first.
    samples: Mutex<VecDeque<Sample>>,
    /// One point per sample for the last 15 minutes ([`crate::observe::history`]).
    history: Mutex<History>,
}

/// One worker's counts for one instance.
#[derive(Debug)]
struct Shard {
    /// Answers by status code (index: code - 100).
    codes: Box<[AtomicU64]>,
    /// Tries given up on this instance, by [`Failover`] cause.
    failed: [AtomicU64; 4],
    /// Latency of every try (answered or failed), by bucket.
    buckets: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

/// The cumulative figures at one moment.
#[derive(Clone, Debug)]
struct Sample {
    at: Instant,
    requests: u64,
    errors: u64,
    buckets: Vec<u64>,
}

/// The figures of the last window (up to half a minute), for the console.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Window {
    pub(crate) seconds: f64,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    /// `None` when no try ended in the window.
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            codes: (0..CODES).map(|_| AtomicU64::new(0)).collect(),
            failed: Default::default(),
            buckets: (0..=BOUNDED).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Default for UpstreamStats {
    fn default() -> Self {
        UpstreamStats {
            shards: PerWorker::default(),
            samples: Mutex::new(VecDeque::new()),
            history: Mutex::default(),
        }
    }
}

fn cause_index(cause: Failover) -> usize {
    match cause {
        Failover::Connect => 0,
        Failover::Timeout => 1,
        Failover::Broken => 2,
        Failover::Status5xx => 3,
    }
}

/// Every cause, in index order.
pub(crate) const CAUSES: [Failover; 4] = [
    Failover::Connect,
    Failover::Timeout,
    Failover::Broken,
    Failover::Status5xx,
];

impl UpstreamStats {
    /// A try that got an answer with `status` (a 5xx that is failed over
    /// counts here and in [`UpstreamStats::failed`]).
    pub(crate) fn answered(&self, status: u16, took: Duration) {
        if let Some(slot) = usize::from(status)
            .checked_sub(100)
            .and_then(|i| self.shards.local().codes.get(i))
        {
            slot.fetch_add(1, Ordering::Relaxed);
        }
        self.observe(took);
    }

    /// A try given up on this instance, for `cause`.
    pub(crate) fn failed(&self, cause: Failover, took: Duration) {
        self.shards.local().failed[cause_index(cause)].fetch_add(1, Ordering::Relaxed);
        if cause != Failover::Status5xx {
            self.observe(took);
        }
    }

    fn observe(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let i = bounds().partition_point(|b| *b < us);
        let shard = self.shards.local();
        shard.buckets[i].fetch_add(1, Ordering::Relaxed);
        shard.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Answers by status code, the codes seen only.
    pub(crate) fn codes(&self) -> Vec<(u16, u64)> {
        (0..CODES)
            .map(|i| (i as u16 + 100, self.shards.sum(|s| &s.codes[i])))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub(crate) fn failovers(&self, cause: Failover) -> u64 {
        self.shards.sum(|s| &s.failed[cause_index(cause)])
    }

    /// Answered tries.
    pub(crate) fn requests(&self) -> u64 {
        (0..CODES).map(|i| self.shards.sum(|s| &s.codes[i])).sum()
    }

    /// 5xx answers and tries that got no answer (connect, timeout, broken).
    pub(crate) fn errors(&self) -> u64 {
        let server_errors: u64 = (400..CODES).map(|i| self.shards.sum(|s| &s.codes[i])).sum();
        server_errors
            + [Failover::Connect, Failover::Timeout, Failover::Broken]
                .iter()
                .map(|c| self.failovers(*c))
                .sum::<u64>()
    }

    fn bucket_counts(&self) -> Vec<u64> {
        (0..=BOUNDED)
            .map(|i| self.shards.sum(|s| &s.buckets[i]))
            .collect()
    }

    /// The latency histogram as Prometheus buckets `(upper bound in seconds,
    /// count in it)` (not cumulative; the last bound is infinity), the sum in
    /// seconds and the count.
    pub(crate) fn histogram(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let counts = self.bucket_counts();
        let mut out = Vec::with_capacity(BOUNDED / EXPORT_EVERY + 1);
        let mut pending = 0;
        for (i, n) in counts.iter().enumerate() {
            pending += n;
            if i == BOUNDED {
                out.push((f64::INFINITY, pending));
            } else if i % EXPORT_EVERY == 0 {
                out.push((bounds()[i] as f64 / 1e6, pending));
                pending = 0;
            }
        }
        let count = counts.iter().sum();
        let sum = self.shards.sum(|s| &s.sum_us) as f64 / 1e6;
        (out, sum, count)
    }

    /// Records the cumulative figures now, keeping the last half minute or so.
    pub(crate) fn sample(&self, now: Instant) {
        let sample = Sample {
            at: now,
            requests: self.requests(),
            errors: self.errors(),
            buckets: self.bucket_counts(),
        };
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(before) = samples.back() {
            let point = between(before, &sample, crate::observe::history::now_unix_ms());
            self.history
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(point);
        }
        samples.push_back(sample);
        while samples.len() > SAMPLES {
            samples.pop_front();
        }
    }

    /// Rates and percentiles since the oldest sample kept (everything since
    /// the instance joined, before the first sample).
    pub(crate) fn window(&self, now: Instant) -> Window {
        let oldest = self
            .samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .front()
            .cloned();
        let counts = self.bucket_counts();
        let (seconds, requests, errors, delta) = match oldest {
            Some(s) => (
                now.saturating_duration_since(s.at).as_secs_f64(),
                self.requests().saturating_sub(s.requests),
                self.errors().saturating_sub(s.errors),
                counts
                    .iter()
                    .zip(&s.buckets)
                    .map(|(n, then)| n.saturating_sub(*then))
                    .collect(),
            ),
            None => (0.0, self.requests(), self.errors(), counts),
        };
        Window {
            seconds,
            requests,
            errors,
            p50_ms: quantile(&delta, 0.5),
            p99_ms: quantile(&delta, 0.99),
        }
    }
}

impl UpstreamStats {
    /// The history points taken after `after_unix_ms` (0: all of them).
    pub fn history(&self, after_unix_ms: u64) -> Vec<Point> {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .since(after_unix_ms)
    }
}

/// What happened between two samples, as one history point at `at_unix_ms`.
fn between(before: &Sample, after: &Sample, at_unix_ms: u64) -> Point {
    let seconds = after.at.saturating_duration_since(before.at).as_secs_f64();
    let per_second = |now: u64, then: u64| {
        if seconds > 0.0 {
            now.saturating_sub(then) as f64 / seconds
        } else {
            0.0
        }
    };
    let delta: Vec<u64> = after
        .buckets
        .iter()
        .zip(&before.buckets)
        .map(|(n, then)| n.saturating_sub(*then))
        .collect();
    Point {
        at_unix_ms,
        requests_per_second: per_second(after.requests, before.requests),
        errors_per_second: per_second(after.errors, before.errors),
        p99_ms: quantile(&delta, 0.99),
    }
}

/// The `q` quantile of bucket counts, in milliseconds, interpolated within
/// its bucket; `None` for no observations.
fn quantile(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0);
    let mut seen = 0u64;
    for (i, n) in counts.iter().enumerate() {
        if *n == 0 {
            continue;
        }
        if (seen + n) as f64 >= rank {
            let bounds = bounds();
            let upper = bounds.get(i).copied().unwrap_or(bounds[BOUNDED - 1]) as f64;
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] as f64 };
            let within = (rank - seen as f64) / *n as f64;
            return Some((lower + (upper - lower) * within) / 1000.0);
        }
        seen += n;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_fall_in_the_right_bucket() {
        let s = UpstreamStats::default();
        for _ in 0..98 {
            s.answered(200, Duration::from_millis(2));
        }
        s.answered(503, Duration::from_millis(100));
        s.failed(Failover::Timeout, Duration::from_millis(100));
        let w = s.window(Instant::now());
        let p50 = w.p50_ms.unwrap();
        assert!((1.6..=2.4).contains(&p50), "{p50}");
        let p99 = w.p99_ms.unwrap();
        assert!((80.0..=120.0).contains(&p99), "{p99}");
        assert_eq!((s.requests(), s.errors()), (99, 2));
        assert_eq!(s.codes(), vec![(200, 98), (503, 1)]);
        let (buckets, sum, count) = s.histogram();
        assert_eq!(count, 100);
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 100);
        assert_eq!(buckets.first().unwrap().0, 0.0001);
        assert!(buckets.last().unwrap().0.is_infinite());
        assert!((sum - 0.396).abs() < 0.001, "{sum}");
    }

    #[test]
    fn the_window_counts_only_what_came_after_the_oldest_sample() {
        let s = UpstreamStats::default();
        s.answered(200, Duration::from_secs(1));
        let t0 = Instant::now();
        s.sample(t0);
        s.answered(200, Duration::from_millis(1));
        let w = s.window(t0 + Duration::from_secs(5));
        assert_eq!((w.requests, w.errors, w.seconds), (1, 0, 5.0));
        assert!(w.p99_ms.unwrap() < 2.0);
        for i in 0..20 {
            s.sample(t0 + Duration::from_secs(i));
        }
        assert_eq!(s.samples.lock().unwrap().len(), SAMPLES);
    }

    #[test]
    fn each_sample_after_the_first_adds_a_history_point_of_what_came_between() {
        let s = UpstreamStats::default();
        let t0 = Instant::now();
        s.sample(t0);
        assert!(s.history(0).is_empty(), "one sample is no interval yet");
        for _ in 0..10 {
            s.answered(200, Duration::from_millis(3));
        }
        s.answered(502, Duration::from_millis(40));
        s.failed(Failover::Connect, Duration::from_millis(1));
        s.sample(t0 + Duration::from_secs(5));
        let points = s.history(0);
        assert_eq!(points.len(), 1);
        let p = points[0];
        // 11 answered and 2 errors (the 502 and the refused connection) in 5 s.
        assert!((p.requests_per_second - 2.2).abs() < 1e-9, "{p:?}");
        assert!((p.errors_per_second - 0.4).abs() < 1e-9, "{p:?}");
        let p99 = p.p99_ms.unwrap();
        assert!((30.0..=50.0).contains(&p99), "{p99}");
        // Nothing in the next interval: zero rates, no latency.
        s.sample(t0 + Duration::from_secs(10));
        let quiet = s.history(p.at_unix_ms.saturating_sub(1));
        assert_eq!(quiet.len(), 2);
        assert_eq!(quiet[1].requests_per_second, 0.0);
        assert_eq!(quiet[1].p99_ms, None);
        // Bounded: a quarter hour's points, whatever runs longer.
        for i in 3..400 {
            s.sample(t0 + Duration::from_secs(5 * i));
        }
        assert_eq!(s.history(0).len(), crate::observe::history::POINTS);
    }
}
