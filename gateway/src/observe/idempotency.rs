//! Counters of `Idempotency-Key` handling ([`crate::idempotency`]): what
//! happened to keyed requests per route, and how the store behaves
//! (latency, errors, evictions, size). `/metrics` exports them, `/status`
//! shows the per-route ones.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What happened to one request on a route that honours keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// Carried a key on a listed method (every keyed request counts here once).
    Keyed,
    /// First arrival: claimed and forwarded.
    Executed,
    /// Answered with the stored answer.
    Replayed,
    /// 409: the same key is still in flight.
    Conflict,
    /// 422: the same key with another fingerprint.
    Mismatch,
    /// 409: the key's first execution has an unknown outcome.
    OutcomeUnknown,
    /// 409: executed, but its answer was larger than `max_stored_body`.
    NotStored,
    /// 400: `require`, and no key.
    Missing,
    /// 400: a key that is not a valid one (too long, bad characters, several).
    Invalid,
    /// The store failed and the request was forwarded without the guarantee.
    FailedOpen,
    /// The store failed and the request was refused 503.
    FailedClosed,
}

/// Every event, in the order the counters are laid out.
pub(crate) const EVENTS: [Event; 11] = [
    Event::Keyed,
    Event::Executed,
    Event::Replayed,
    Event::Conflict,
    Event::Mismatch,
    Event::OutcomeUnknown,
    Event::NotStored,
    Event::Missing,
    Event::Invalid,
    Event::FailedOpen,
    Event::FailedClosed,
];

impl Event {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Event::Keyed => "keyed",
            Event::Executed => "executed",
            Event::Replayed => "replayed",
            Event::Conflict => "conflict",
            Event::Mismatch => "mismatch",
            Event::OutcomeUnknown => "outcome_unknown",
            Event::NotStored => "not_stored",
            Event::Missing => "missing_key",
            Event::Invalid => "invalid_key",
            Event::FailedOpen => "store_failed_open",
            Event::FailedClosed => "store_failed_closed",
        }
    }

    fn index(self) -> usize {
        EVENTS.iter().position(|e| *e == self).unwrap_or(0)
    }
}

/// A store operation, for its latency and errors.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Op {
    pub(crate) op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteEvent {
    route: String,
    event: &'static str,
}

/// Per route prefix, a count per [`Event`].
#[derive(Debug, Default)]
struct Routes(Mutex<BTreeMap<String, Arc<[AtomicU64; EVENTS.len()]>>>);

/// Upper bounds of `idempotency_store_seconds`: 50 us doubling to about 3 s.
fn store_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 17)
}

#[derive(Debug)]
pub(crate) struct IdempotencyMetrics {
    routes: Arc<Routes>,
    pub(crate) evictions: Counter,
    pub(crate) expirations: Counter,
    store_errors: Family<Op, Counter>,
    store_seconds: Family<Op, Histogram>,
    /// `store_seconds` of claim, settle and release, looked up once: each
    /// keyed request observes two.
    seconds_of: [Histogram; 3],
    /// Records held by the memory store, and their bytes.
    pub(crate) entries: Gauge,
    pub(crate) bytes: Gauge,
}

/// The store operations, in the order of `seconds_of`.
const OPS: [&str; 3] = ["claim", "settle", "release"];

impl Default for IdempotencyMetrics {
    fn default() -> Self {
        let store_seconds: Family<Op, Histogram> =
            Family::new_with_constructor(|| Histogram::new(store_buckets()));
        let seconds_of = OPS.map(|op| store_seconds.get_or_create(&Op { op }).clone());
        IdempotencyMetrics {
            routes: Arc::default(),
            evictions: Counter::default(),
            expirations: Counter::default(),
            store_errors: Family::default(),
            store_seconds,
            seconds_of,
            entries: Gauge::default(),
            bytes: Gauge::default(),
        }
    }
}

impl IdempotencyMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(RoutesCollector(self.routes.clone())));
        registry.register(
            "idempotency_evictions",
            "Idempotency records evicted by the memory store's bounds (entries or bytes) before their ttl: a retry of such a key would run again",
            self.evictions.clone(),
        );
        registry.register(
            "idempotency_expirations",
            "Idempotency records dropped by the memory store at the end of their ttl",
            self.expirations.clone(),
        );
        registry.register(
            "idempotency_store_errors",
            "Idempotency store calls that failed, by operation (claim, settle, release)",
            self.store_errors.clone(),
        );
        registry.register(
            "idempotency_store_seconds",
            "Idempotency store call latency, by operation (claim, settle, release)",
            self.store_seconds.clone(),
        );
        registry.register(
            "idempotency_entries",
            "Idempotency records held by the memory store",
            self.entries.clone(),
        );
        registry.register(
            "idempotency_stored_bytes",
            "Bytes of idempotency records held by the memory store",
            self.bytes.clone(),
        );
    }

    /// Counts `event` on the route with `prefix`.
    pub(crate) fn count(&self, prefix: &str, event: Event) {
        let mut routes = self.routes.0.lock().unwrap_or_else(|p| p.into_inner());
        let counts = match routes.get(prefix) {
            Some(c) => c,
            None => routes.entry(prefix.to_string()).or_default(),
        };
        counts[event.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// One store call: its latency, and whether it failed.
    pub(crate) fn store_call(&self, op: &'static str, seconds: f64, failed: bool) {
        match OPS.iter().position(|o| *o == op) {
            Some(i) => self.seconds_of[i].observe(seconds),
            None => self
                .store_seconds
                .get_or_create(&Op { op })
                .observe(seconds),
        }
        if failed {
            self.store_errors.get_or_create(&Op { op }).inc();
        }
    }

    /// Store errors so far, every operation together.
    pub(crate) fn store_errors(&self) -> u64 {
        OPS.iter()
            .map(|op| self.store_errors.get_or_create(&Op { op }).get())
            .sum()
    }

    /// Per route prefix, each event's count.
    pub(crate) fn per_route(&self) -> Vec<(String, Vec<(&'static str, u64)>)> {
        let routes = self.routes.0.lock().unwrap_or_else(|p| p.into_inner());
        routes
            .iter()
            .map(|(prefix, counts)| (prefix.clone(), snapshot(counts)))
            .collect()
    }
}

fn snapshot(counts: &[AtomicU64; EVENTS.len()]) -> Vec<(&'static str, u64)> {
    EVENTS
        .iter()
        .zip(counts.iter())
        .map(|(e, n)| (e.as_str(), n.load(Ordering::Relaxed)))
        .collect()
}

/// Exports [`Routes`] as `idempotency_requests{route, event}`.
#[derive(Debug)]
struct RoutesCollector(Arc<Routes>);

impl Collector for RoutesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "idempotency_requests",
            "Requests on routes that honour Idempotency-Key, by route and event (keyed, executed, replayed, conflict, mismatch, outcome_unknown, not_stored, missing_key, invalid_key, store_failed_open, store_failed_closed)",
            None,
            MetricType::Counter,
        )?;
        let routes = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        for (route, counts) in routes.iter() {
            for (event, n) in snapshot(counts) {
                let labels = RouteEvent {
                    route: route.clone(),
                    event,
                };
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
