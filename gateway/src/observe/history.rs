//! The last 15 minutes of each instance, for the console's charts
//! (`GET /status/history`, served by [`crate::admin::status`]).
//!
//! Every [`crate::observe::stats::SAMPLE_EVERY`] the reaper samples each instance's
//! cumulative counters ([`crate::observe::stats::UpstreamStats::sample`]); the figures
//! between two successive samples (requests and errors per second, p99
//! latency) become one [`Point`] in a bounded ring of [`POINTS`] per
//! instance: 180 points at 5 s, a quarter of an hour. Nothing of it is on the
//! request path, and a console opened fresh draws the whole quarter at once.

use serde_json::{json, Value};
use std::collections::VecDeque;

/// Points kept per instance: 15 minutes at one per 5 s sample.
pub(crate) const POINTS: usize = 180;

/// What happened on one instance between two samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Point {
    /// When the later sample was taken (Unix time, ms).
    pub at_unix_ms: u64,
    pub requests_per_second: f64,
    pub errors_per_second: f64,
    /// `None` when no try ended between the two samples.
    pub p99_ms: Option<f64>,
}

impl Point {
    /// `[at_unix_ms, requests_per_second, errors_per_second, p99_ms|null]`:
    /// arrays, not objects, so 100 instances' quarter hours stay small.
    pub(crate) fn to_json(self) -> Value {
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        json!([
            self.at_unix_ms,
            round(self.requests_per_second),
            round(self.errors_per_second),
            self.p99_ms.map(round),
        ])
    }
}

/// A ring of the newest points, oldest first.
#[derive(Debug)]
pub(crate) struct History {
    points: VecDeque<Point>,
    cap: usize,
}

impl Default for History {
    fn default() -> Self {
        History::with_capacity(POINTS)
    }
}

impl History {
    pub(crate) fn with_capacity(cap: usize) -> Self {
        History {
            points: VecDeque::with_capacity(cap.min(POINTS)),
            cap: cap.max(1),
        }
    }

    /// Adds `point`, dropping the oldest when full.
    pub(crate) fn push(&mut self, point: Point) {
        if self.points.len() == self.cap {
            self.points.pop_front();
        }
        self.points.push_back(point);
    }

    /// The points taken after `after_unix_ms` (0: all), oldest first.
    pub(crate) fn since(&self, after_unix_ms: u64) -> Vec<Point> {
        // Points are in time order: skip the older ones from the front.
        let first = self
            .points
            .partition_point(|p| p.at_unix_ms <= after_unix_ms);
        self.points.range(first..).copied().collect()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.points.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// Unix time now in milliseconds.
pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(at: u64) -> Point {
        Point {
            at_unix_ms: at,
            requests_per_second: at as f64,
            errors_per_second: 0.0,
            p99_ms: None,
        }
    }

    #[test]
    fn keeps_the_newest_points_up_to_its_capacity() {
        let mut h = History::with_capacity(3);
        assert!(h.is_empty());
        for at in 1..=5 {
            h.push(point(at));
        }
        assert_eq!(h.len(), 3);
        let kept: Vec<u64> = h.since(0).iter().map(|p| p.at_unix_ms).collect();
        assert_eq!(kept, vec![3, 4, 5], "the oldest went first");
    }

    #[test]
    fn since_answers_only_the_points_after_it() {
        let mut h = History::default();
        for at in [1000, 2000, 3000, 4000] {
            h.push(point(at));
        }
        let after: Vec<u64> = h.since(2000).iter().map(|p| p.at_unix_ms).collect();
        assert_eq!(after, vec![3000, 4000]);
        assert!(h.since(4000).is_empty());
        assert_eq!(h.since(1).len(), 4);
    }

    #[test]
    fn the_default_holds_a_quarter_hour_of_five_second_points() {
        assert_eq!(
            POINTS as f64 * crate::observe::stats::SAMPLE_EVERY.as_secs_f64(),
            900.0
        );
        let mut h = History::default();
        for at in 0..1000 {
            h.push(point(at));
        }
        assert_eq!(h.len(), POINTS);
        assert_eq!(h.since(0)[0].at_unix_ms, 1000 - POINTS as u64);
    }

    #[test]
    fn points_are_compact_arrays() {
        let p = Point {
            at_unix_ms: 5,
            requests_per_second: 1.23456,
            errors_per_second: 0.5,
            p99_ms: Some(2.0),
        };
        assert_eq!(p.to_json(), json!([5, 1.235, 0.5, 2.0]));
        assert_eq!(point(7).to_json()[3], Value::Null);
    }
}
