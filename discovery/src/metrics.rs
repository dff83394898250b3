//! `GET /metrics`: Prometheus text for registrations, lookups, health checks
//! and watchers (the [`Counters`] the crate bumps), the registry's instances
//! and store, the build and the process. Served as the classic text format
//! (`text/plain; version=0.0.4`), which browsers show and every scraper reads;
//! prometheus-client writes OpenMetrics, which
//! [`shared::process_metrics::text_format`] turns into it.

use crate::counters::{Counters, Outcome};
use crate::registry::Registry;
use crate::store::StoreHealth;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as Prom;
use shared::panics::Panics;
use shared::serve::Handshakes;
use std::sync::Arc;

/// The content type of `/metrics`, the same as the gateway's.
pub(crate) const CONTENT_TYPE: &str = shared::process_metrics::CONTENT_TYPE;

/// Every health check outcome, created at zero so alerts on their rates see a series at once.
const CHECK_OUTCOMES: [&str; 6] = [
    "ok",
    "timeout",
    "bad_status",
    "error",
    "refused",
    "not_made",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Build {
    version: &'static str,
    revision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceStatus {
    namespace: String,
    status: &'static str,
}

/// Discovery's series: the [`Counters`], and gauges read at each render.
#[derive(Debug)]
pub(crate) struct Metrics {
    prom: Prom,
    instances: Family<NamespaceStatus, Gauge>,
    /// Seconds since the least recently checked instance's last check, read at render.
    oldest_check_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// 1 while the store is reachable (always, for memory), read at render.
    store_connected: Gauge,
    /// Seconds since the mirror was last known in step with the store, read at render.
    store_mirror_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// The store's writability, set-aside records, stale watches and replicas, read at render.
    store: StoreGauges,
    /// Mirrors `panics` at each render (`discovery_panics_total`).
    panics_total: Counter,
    panics: Panics,
    /// Mirrors the TLS port's handshakes at each render
    /// (`discovery_tls_handshakes_total`), when `listen` speaks TLS.
    tls: Option<(Family<TlsResult, Counter>, Arc<Handshakes>)>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsResult {
    result: &'static str,
}

impl Metrics {
    /// Registers `counters` (the series stay shared with whoever bumps them);
    /// `panics` is where the server and the checker count the panics they caught.
    pub(crate) fn new(
        counters: &Counters,
        panics: Panics,
        handshakes: Option<Arc<Handshakes>>,
    ) -> Self {
        let Counters {
            registrations,
            deregistrations,
            lookups,
            checks,
            check_seconds,
            expired,
            watchers,
            watchers_refused,
        } = counters;
        let instances = Family::default();
        let oldest_check_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let mut prom = Prom::with_prefix("discovery");
        let build = Family::<Build, Gauge>::default();
        build
            .get_or_create(&Build {
                version: env!("CARGO_PKG_VERSION"),
                revision: shared::build_info::REVISION,
            })
            .set(1);
        prom.register(
            "build_info",
            "Always 1; the labels say which build runs (git revision, or unknown)",
            build,
        );
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
        for outcome in CHECK_OUTCOMES {
            let _ = checks.get_or_create(&Outcome { outcome });
        }
        prom.register(
            "health_check_oldest_age_seconds",
            "Seconds since the least recently checked instance was last checked \
             (0 when none has been checked): grows without bound if checks stall",
            oldest_check_age.clone(),
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
        prom.register(
            "watchers_refused",
            "Watch streams refused (429) because max_watchers were open",
            watchers_refused.clone(),
        );
        let store_connected = Gauge::default();
        prom.register(
            "store_connected",
            "1 while the registry's store (etcd) is reachable; at 0 lookups and watches \
             go on from the last mirror and writes answer 503",
            store_connected.clone(),
        );
        let store_mirror_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        prom.register(
            "store_mirror_age_seconds",
            "Seconds since this replica's mirror was last known in step with the store \
             (about 1 at most while connected; 0 for the memory store)",
            store_mirror_age.clone(),
        );
        let store = StoreGauges::register(&mut prom);
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
        let tls = handshakes.map(|handshakes| {
            let family = Family::<TlsResult, Counter>::default();
            prom.register(
                "tls_handshakes",
                "TLS handshakes on the listener by result: ok, failed (not TLS, no common \
                 version, a client certificate from another CA) and timeout",
                family.clone(),
            );
            (family, handshakes)
        });
        Metrics {
            prom,
            instances,
            oldest_check_age,
            store_connected,
            store_mirror_age,
            store,
            panics_total,
            panics,
            tls,
        }
    }

    /// The text exposition, with instance counts read from the registry now.
    pub(crate) fn render(&self, registry: &Registry) -> String {
        let caught = self.panics.count();
        let shown = self.panics_total.get();
        if caught > shown {
            self.panics_total.inc_by(caught - shown);
        }
        if let Some((family, handshakes)) = &self.tls {
            use std::sync::atomic::Ordering::Relaxed;
            for (result, n) in [
                ("ok", &handshakes.ok),
                ("failed", &handshakes.failed),
                ("timeout", &handshakes.timeout),
            ] {
                let counter = family.get_or_create(&TlsResult { result });
                let (now, shown) = (n.load(Relaxed), counter.get());
                if now > shown {
                    counter.inc_by(now - shown);
                }
            }
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
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let oldest = registry
            .services()
            .values()
            .flatten()
            .filter_map(|i| i.last_check_unix_ms)
            .min()
            .map_or(0.0, |at| now_ms.saturating_sub(at) as f64 / 1000.0);
        self.oldest_check_age.set(oldest);
        let health = registry.store_health();
        self.store_connected.set(i64::from(health.reachable));
        self.store.set(&health);
        self.store_mirror_age
            .set(registry.store_mirror_age().map_or(0.0, |a| a.as_secs_f64()));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.prom).is_err() {
            out.clear();
        }
        let mut text = shared::process_metrics::text_format(&out);
        shared::process_metrics::render(&mut text);
        text
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

/// What `/api/store` says, as series an alert can watch.
#[derive(Debug)]
struct StoreGauges {
    writable: Gauge,
    set_aside: Family<Reason, Gauge>,
    stale: Counter,
    replicas: Gauge,
    ignored_replica_keys: Gauge,
}

impl StoreGauges {
    fn register(prom: &mut Prom) -> StoreGauges {
        let gauges = StoreGauges {
            writable: Gauge::default(),
            set_aside: Family::default(),
            stale: Counter::default(),
            replicas: Gauge::default(),
            ignored_replica_keys: Gauge::default(),
        };
        prom.register(
            "store_writable",
            "1 while the store takes writes; 0 while it is unreachable, raises an alarm \
             (etcd NOSPACE) or refused the last write (see /api/store)",
            gauges.writable.clone(),
        );
        for reason in ["invalid", "over_cap"] {
            let _ = gauges.set_aside.get_or_create(&Reason { reason });
        }
        prom.register(
            "store_set_aside",
            "Records in the store this replica does not serve: invalid (unreadable, or outside \
             the registration policy: allowed_hosts, strict fields) or over_cap (beyond \
             max_instances or max_instances_per_namespace); listed in /api/store",
            gauges.set_aside.clone(),
        );
        prom.register(
            "store_watch_stale",
            "Times this replica found its watch of the store stale (a member not answering \
             or not delivering) and moved it to another member",
            gauges.stale.clone(),
        );
        prom.register(
            "store_replicas",
            "Live discovery replicas (keys on a lease) sharing the checks",
            gauges.replicas.clone(),
        );
        prom.register(
            "store_ignored_replica_keys",
            "Keys under the replicas prefix without a lease: not counted as replicas",
            gauges.ignored_replica_keys.clone(),
        );
        gauges
    }

    fn set(&self, health: &StoreHealth) {
        self.writable.set(i64::from(health.writable));
        for (reason, n) in [
            ("invalid", health.set_aside.invalid),
            ("over_cap", health.set_aside.over_cap),
        ] {
            self.set_aside
                .get_or_create(&Reason { reason })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let shown = self.stale.get();
        if health.stale_total > shown {
            self.stale.inc_by(health.stale_total - shown);
        }
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.replicas.set(count(health.replicas.len()));
        self.ignored_replica_keys
            .set(count(health.ignored_replica_keys.len()));
    }
}
