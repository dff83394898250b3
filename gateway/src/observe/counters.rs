//! The counters the request path bumps: requests by status with their
//! latency and attempts (sharded per worker), failovers, lookups, reloads,
//! skips and the client connections. `/metrics` encodes them with the state
//! it reads at scrape time ([`crate::admin`]).

use crate::observe::causes::{Failover, Skip};
use crate::observe::idempotency::IdempotencyMetrics;
use crate::runtime::slots::PerWorker;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Status {
    code: u16,
}

/// Status codes counted one by one (0..600).
const STATUSES: usize = 600;
/// Upper bounds of `request_duration_seconds`: 100 us doubling to 13 s.
const LATENCY_BOUNDS: [f64; 18] = {
    let mut b = [0.0001; 18];
    let mut i = 1;
    while i < 18 {
        b[i] = b[i - 1] * 2.0;
        i += 1;
    }
    b
};
/// Upper bounds of `attempts_per_request`.
const ATTEMPT_BOUNDS: [f64; 6] = [1.0, 2.0, 3.0, 4.0, 5.0, 8.0];

/// One worker's share of the per-request counters: plain atomics on its own
/// cache lines, summed at scrape time (a shared histogram would be a lock
/// taken by every worker on every request).
#[derive(Debug)]
struct RequestShard {
    by_status: Box<[AtomicU64]>,
    /// Per bound of [`LATENCY_BOUNDS`], then above them all.
    latency: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    latency_sum_ns: AtomicU64,
    attempts: [AtomicU64; ATTEMPT_BOUNDS.len() + 1],
    attempts_sum: AtomicU64,
}

impl Default for RequestShard {
    fn default() -> Self {
        RequestShard {
            by_status: (0..STATUSES).map(|_| AtomicU64::new(0)).collect(),
            latency: Default::default(),
            latency_sum_ns: AtomicU64::new(0),
            attempts: Default::default(),
            attempts_sum: AtomicU64::new(0),
        }
    }
}

fn bucket(bounds: &[f64], value: f64) -> usize {
    bounds
        .iter()
        .position(|b| value <= *b)
        .unwrap_or(bounds.len())
}

/// The request counters of every worker, exported as their sums.
#[derive(Debug, Default)]
struct Requests(PerWorker<RequestShard>);

impl Requests {
    fn count(&self, status: u16, seconds: f64, attempts: u32) {
        let shard = self.0.local();
        let status = usize::from(status).min(STATUSES - 1);
        shard.by_status[status].fetch_add(1, Ordering::Relaxed);
        shard.latency[bucket(&LATENCY_BOUNDS, seconds)].fetch_add(1, Ordering::Relaxed);
        shard
            .latency_sum_ns
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
        if attempts > 0 {
            shard.attempts[bucket(&ATTEMPT_BOUNDS, f64::from(attempts))]
                .fetch_add(1, Ordering::Relaxed);
            shard
                .attempts_sum
                .fetch_add(u64::from(attempts), Ordering::Relaxed);
        }
    }

    /// Answered requests by status, summed over the workers.
    fn by_status(&self) -> Vec<(u16, u64)> {
        (0..STATUSES)
            .filter_map(|code| {
                let n = self.0.sum(|s| &s.by_status[code]);
                (n > 0).then_some((code as u16, n))
            })
            .collect()
    }
}

/// A histogram summed over the workers' shards.
struct Summed {
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

impl Summed {
    fn of<'a, const N: usize>(
        bounds: &[f64],
        shards: impl Iterator<Item = (&'a [AtomicU64; N], u64)>,
        scale: f64,
    ) -> Summed {
        let mut counts = [0u64; N];
        let mut sum = 0u64;
        for (shard, s) in shards {
            for (c, a) in counts.iter_mut().zip(shard) {
                *c += a.load(Ordering::Relaxed);
            }
            sum += s;
        }
        let buckets = counts
            .iter()
            .enumerate()
            .map(|(i, n)| (bounds.get(i).copied().unwrap_or(f64::INFINITY), *n))
            .collect();
        Summed {
            buckets,
            sum: sum as f64 * scale,
            count: counts.iter().sum(),
        }
    }
}

impl EncodeMetric for Summed {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.sum,
            self.count,
            &self.buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Exports [`Requests`] under the names the shared counters had.
#[derive(Debug)]
struct RequestsCollector(Arc<Requests>);

impl Collector for RequestsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "requests",
            "Client requests by the status answered",
            None,
            MetricType::Counter,
        )?;
        for (code, n) in self.0.by_status() {
            ConstCounter::new(n).encode(family.encode_family(&Status { code })?)?;
        }
        let shards = &self.0 .0;
        let latency = Summed::of(
            &LATENCY_BOUNDS,
            shards
                .iter()
                .map(|s| (&s.latency, s.latency_sum_ns.load(Ordering::Relaxed))),
            1e-9,
        );
        latency.encode(encoder.encode_descriptor(
            "request_duration_seconds",
            "Time from a complete request head to the end of the response",
            None,
            MetricType::Histogram,
        )?)?;
        let attempts = Summed::of(
            &ATTEMPT_BOUNDS,
            shards
                .iter()
                .map(|s| (&s.attempts, s.attempts_sum.load(Ordering::Relaxed))),
            1.0,
        );
        attempts.encode(encoder.encode_descriptor(
            "attempts_per_request",
            "Instances tried per request",
            None,
            MetricType::Histogram,
        )?)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cause {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadResult {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

/// (instance, why) pairs already logged; beyond this many the set starts
/// again, so a flood of names costs bounded memory and a line each at worst.
const SKIPS_REMEMBERED: usize = 4096;

#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Per worker: requests by status, their latency and attempts.
    requests: Arc<Requests>,
    failovers: Family<Cause, Counter>,
    pub(crate) keepalive_retries: Counter,
    /// Requests answered 503 because the gateway was out of descriptors or
    /// local ports: its own trouble, not an instance's.
    pub(crate) local_shortages: Counter,
    lookups: Family<Outcome, Counter>,
    reloads: Family<ReloadResult, Counter>,
    tls_handshakes: Family<ReloadResult, Counter>,
    upstream_tls_handshakes: Family<ReloadResult, Counter>,
    pub(crate) client_connections: Gauge,
    /// Client bytes and the most connections at once ([`crate::observe::traffic`]).
    pub(crate) traffic: Arc<crate::observe::traffic::ClientTraffic>,
    skipped: Family<Reason, Counter>,
    /// Which skips were logged already (see [`Metrics::skipped`]).
    skips_logged: std::sync::Mutex<std::collections::HashSet<(String, Skip)>>,
    /// 1 once the client port is listened on, 0 before and while draining.
    pub(crate) ready: Gauge,
    /// Idempotency-Key handling (observe::idempotency).
    pub(crate) idempotency: IdempotencyMetrics,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("gateway");
        let requests = Arc::new(Requests::default());
        let failovers = Family::<Cause, Counter>::default();
        let keepalive_retries = Counter::default();
        let local_shortages = Counter::default();
        let lookups = Family::<Outcome, Counter>::default();
        let client_connections = Gauge::default();
        let reloads = Family::<ReloadResult, Counter>::default();
        let tls_handshakes = Family::<ReloadResult, Counter>::default();
        let upstream_tls_handshakes = Family::<ReloadResult, Counter>::default();
        let skipped = Family::<Reason, Counter>::default();
        let ready = Gauge::default();
        let idempotency = IdempotencyMetrics::default();
        idempotency.register(&mut registry);
        registry.register(
            "upstreams_skipped",
            "Tries that skipped an instance without connecting, by reason (denied: every address outside allowed_upstreams; unresolved: its host name does not resolve)",
            skipped.clone(),
        );
        registry.register(
            "ready",
            "1 while the gateway accepts on its client port (ready), 0 before it is ready and while it drains",
            ready.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP) by result: ok, or error (the old config was kept)",
            reloads.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes on the tls port by result: ok, failed (not TLS, no common version or cipher, a closed connection), or timeout (not over within tls.handshake_timeout)",
            tls_handshakes.clone(),
        );
        registry.register(
            "upstream_tls_handshakes",
            "TLS handshakes with instances of routes with upstream_tls, by result: ok, failed (the handshake failed or timed out: wrong CA, name mismatch, no common version), or refused (the instance refused it by an alert before answering, as a TLS 1.3 instance does after checking the client certificate; such a handshake was counted ok first)",
            upstream_tls_handshakes.clone(),
        );
        registry.register_collector(Box::new(RequestsCollector(requests.clone())));
        registry.register(
            "failovers",
            "Tries given up for another instance, by cause (connect, timeout, broken, status_5xx)",
            failovers.clone(),
        );
        registry.register(
            "keepalive_retries",
            "Pooled connections found closed before any answer and retried on a fresh one",
            keepalive_retries.clone(),
        );
        registry.register(
            "local_shortages",
            "Requests answered 503 because the gateway could not open an upstream connection for want of descriptors or local ports (no instance was blamed)",
            local_shortages.clone(),
        );
        registry.register(
            "discovery_lookups",
            "Lookups sent to discovery after a timeout, by outcome (ok, none_available, error, timeout)",
            lookups.clone(),
        );
        registry.register(
            "client_connections",
            "Open client connections",
            client_connections.clone(),
        );
        let traffic = Arc::new(crate::observe::traffic::ClientTraffic::default());
        registry.register_collector(Box::new(crate::observe::traffic::TrafficCollector(
            traffic.clone(),
        )));
        Metrics {
            registry,
            traffic,
            requests,
            failovers,
            keepalive_retries,
            local_shortages,
            lookups,
            reloads,
            tls_handshakes,
            upstream_tls_handshakes,
            client_connections,
            skipped,
            skips_logged: std::sync::Mutex::default(),
            ready,
            idempotency,
        }
    }

    /// Counts a try that skipped `upstream` for `why`; true the first time
    /// this instance was skipped for this reason, so the caller logs it once
    /// rather than on every request.
    pub(crate) fn skipped(&self, why: Skip, upstream: &str) -> bool {
        self.skipped
            .get_or_create(&Reason {
                reason: why.as_str(),
            })
            .inc();
        let mut logged = self.skips_logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.len() >= SKIPS_REMEMBERED {
            logged.clear();
        }
        logged.insert((upstream.to_string(), why))
    }

    /// Counts one reload: `"ok"` or `"error"`.
    pub(crate) fn reload(&self, result: &'static str) {
        self.reloads.get_or_create(&ReloadResult { result }).inc();
    }

    /// Counts one TLS handshake: `"ok"`, `"failed"` or `"timeout"`.
    pub(crate) fn tls_handshake(&self, result: &'static str) {
        self.tls_handshakes
            .get_or_create(&ReloadResult { result })
            .inc();
    }

    /// Counts one TLS handshake with an instance: `"ok"`, `"failed"` or `"refused"`.
    pub(crate) fn upstream_tls_handshake(&self, result: &'static str) {
        self.upstream_tls_handshakes
            .get_or_create(&ReloadResult { result })
            .inc();
    }

    /// Counts one answered request, in the calling worker's shard.
    pub(crate) fn request(&self, status: u16, seconds: f64, attempts: u32) {
        self.requests.count(status, seconds, attempts);
    }

    pub(crate) fn failover(&self, cause: Failover) {
        self.failovers
            .get_or_create(&Cause {
                cause: cause.as_str(),
            })
            .inc();
    }

    pub(crate) fn lookup(&self, outcome: &'static str) {
        self.lookups.get_or_create(&Outcome { outcome }).inc();
    }

    /// Appends the counters to `out`, in the OpenMetrics text that
    /// prometheus-client writes.
    pub(crate) fn encode(&self, out: &mut String) -> std::fmt::Result {
        prometheus_client::encoding::text::encode_registry(out, &self.registry)
    }
}
