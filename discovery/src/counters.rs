//! The counters and gauges discovery bumps as it works: registrations,
//! deregistrations and lookups (the handlers), health checks and expiries
//! (the checker), open and refused watch streams (the watch hub). Low in the
//! crate, so whoever counts needs nothing else; `metrics` registers them and
//! renders them on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Outcome {
    pub outcome: &'static str,
}

/// Discovery's counters; each handler bumps its own. Clones of the same
/// series are registered by `metrics::Metrics`.
#[derive(Debug)]
pub(crate) struct Counters {
    pub registrations: Family<Outcome, Counter>,
    pub deregistrations: Family<Outcome, Counter>,
    pub lookups: Family<Outcome, Counter>,
    pub checks: Family<Outcome, Counter>,
    pub check_seconds: Histogram,
    pub expired: Counter,
    pub watchers: Gauge,
    /// Watch streams refused at `max_watchers`.
    pub watchers_refused: Counter,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            registrations: Family::default(),
            deregistrations: Family::default(),
            lookups: Family::default(),
            checks: Family::default(),
            check_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            expired: Counter::default(),
            watchers: Gauge::default(),
            watchers_refused: Counter::default(),
        }
    }
}

impl Counters {
    pub(crate) fn outcome(family: &Family<Outcome, Counter>, outcome: &'static str) {
        family.get_or_create(&Outcome { outcome }).inc();
    }
}
