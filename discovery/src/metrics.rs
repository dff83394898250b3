//! `GET /metrics`: Prometheus text for registrations, lookups, health checks and watchers.

use crate::registry::Registry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry as Prom;
use shared::panics::Panics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceStatus {
    namespace: String,
    status: &'static str,
}

/// Discovery's counters; each handler bumps its own.
#[derive(Debug)]
pub struct Metrics {
    prom: Prom,
    pub registrations: Family<Outcome, Counter>,
    pub deregistrations: Family<Outcome, Counter>,
    pub lookups: Family<Outcome, Counter>,
    pub checks: Family<Outcome, Counter>,
    pub check_seconds: Histogram,
    pub expired: Counter,
    pub watchers: Gauge,
    instances: Family<NamespaceStatus, Gauge>,
    /// Mirrors `panics` at each render (`discovery_panics_total`).
    panics_total: Counter,
    panics: Panics,
}

impl Metrics {
    /// `panics` is where the server and the checker count the panics they caught.
    pub fn new(panics: Panics) -> Self {
        let registrations = Family::default();
        let deregistrations = Family::default();
        let lookups = Family::default();
        let checks = Family::default();
        let check_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        let expired = Counter::default();
        let watchers = Gauge::default();
        let instances = Family::default();
        let mut prom = Prom::with_prefix("discovery");
        prom.register(
            "registrations",
            "Registrations by outcome (created, renewed, rejected)",
            registrations.clone(),
        );
        prom.register(
            "deregistrations",
            "Deregistrations by outcome (removed, unknown, rejected)",
            deregistrations.clone(),
        );
        prom.register(
            "lookups",
            "Lookups by outcome (ok, unknown_namespace, none_available, rejected)",
            lookups.clone(),
        );
        prom.register(
            "health_checks",
            "Health checks by outcome (ok, timeout, bad_status, error, refused: an address \
             outside allowed_hosts; not_made: could not be made, status kept)",
            checks.clone(),
        );
        prom.register(
            "health_check_duration_seconds",
            "Latency of health checks",
            check_seconds.clone(),
        );
        prom.register(
            "expired",
            "Instances dropped after being unavailable for deregister_after",
            expired.clone(),
        );
        prom.register("watchers", "Open watch streams", watchers.clone());
        let panics_total = Counter::default();
        prom.register(
            "panics",
            "Panics caught in connections, health checks and the checker loop",
            panics_total.clone(),
        );
        prom.register(
            "instances",
            "Registered instances by namespace and status",
            instances.clone(),
        );
        Metrics {
            prom,
            registrations,
            deregistrations,
            lookups,
            checks,
            check_seconds,
            expired,
            watchers,
            instances,
            panics_total,
            panics,
        }
    }

    pub fn outcome(family: &Family<Outcome, Counter>, outcome: &'static str) {
        family.get_or_create(&Outcome { outcome }).inc();
    }

    /// The text exposition, with instance counts read from the registry now.
    pub fn render(&self, registry: &Registry) -> String {
        let caught = self.panics.count();
        let shown = self.panics_total.get();
        if caught > shown {
            self.panics_total.inc_by(caught - shown);
        }
        self.instances.clear();
        for (namespace, c) in registry.counts() {
            for (status, n) in [
                ("pending", c.pending),
                ("available", c.available),
                ("unavailable", c.unavailable),
            ] {
                self.instances
                    .get_or_create(&NamespaceStatus {
                        namespace: namespace.clone(),
                        status,
                    })
                    .set(n as i64);
            }
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.prom).is_err() {
            out.clear();
        }
        out
    }
}
