//! `/metrics` on the admin port: counters bumped on the request path, and the
//! rings, pools, watch streams and per-instance statistics read from their
//! own state at scrape time.
//!
//! Served in the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]), which
//! every scraper reads and a browser shows.

use crate::budget::Budget;
use crate::pool::Upstreams;
use crate::reload::Live;
use crate::ring::{Router, WatchState};
use crate::runtime::clock;
use crate::worker::PerWorker;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use shared::panics::Panics;
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

/// Why an instance was skipped without a connection being tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Skip {
    /// Every address of it is outside `allowed_upstreams`.
    Denied,
    /// Its host name does not resolve.
    Unresolved,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Denied => "denied",
            Skip::Unresolved => "unresolved",
        }
    }
}

/// (instance, why) pairs already logged; beyond this many the set starts
/// again, so a flood of names costs bounded memory and a line each at worst.
const SKIPS_REMEMBERED: usize = 4096;

/// The content type of `/metrics`.
pub const CONTENT_TYPE: &str = shared::process_metrics::CONTENT_TYPE;

/// Why a try was given up and another instance chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failover {
    Connect,
    Timeout,
    Broken,
    Status5xx,
}

impl Failover {
    pub fn as_str(self) -> &'static str {
        match self {
            Failover::Connect => "connect",
            Failover::Timeout => "timeout",
            Failover::Broken => "broken",
            Failover::Status5xx => "status_5xx",
        }
    }
}

/// The gateway's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Per worker: requests by status, their latency and attempts.
    requests: Arc<Requests>,
    failovers: Family<Cause, Counter>,
    pub keepalive_retries: Counter,
    /// Requests answered 503 because the gateway was out of descriptors or
    /// local ports: its own trouble, not an instance's.
    pub local_shortages: Counter,
    lookups: Family<Outcome, Counter>,
    reloads: Family<ReloadResult, Counter>,
    pub client_connections: Gauge,
    /// Client bytes and the most connections at once ([`crate::traffic`]).
    pub traffic: Arc<crate::traffic::ClientTraffic>,
    skipped: Family<Reason, Counter>,
    /// Which skips were logged already (see [`Metrics::skipped`]).
    skips_logged: std::sync::Mutex<std::collections::HashSet<(String, Skip)>>,
    /// 1 once the client port is listened on, 0 before and while draining.
    pub ready: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Namespace {
    namespace: String,
}

/// State read at scrape time rather than counted on the request path.
#[derive(Debug)]
pub struct Sources {
    /// Where the router in force is (it changes on reload).
    pub live: Arc<Live>,
    pub upstreams: Arc<Upstreams>,
    pub panics: Panics,
    pub budget: Arc<Budget>,
}

impl Metrics {
    pub fn new(sources: Sources) -> Self {
        let mut registry = Registry::with_prefix("gateway");
        let requests = Arc::new(Requests::default());
        let failovers = Family::<Cause, Counter>::default();
        let keepalive_retries = Counter::default();
        let local_shortages = Counter::default();
        let lookups = Family::<Outcome, Counter>::default();
        let client_connections = Gauge::default();
        let reloads = Family::<ReloadResult, Counter>::default();
        let skipped = Family::<Reason, Counter>::default();
        let ready = Gauge::default();
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
        let traffic = Arc::new(crate::traffic::ClientTraffic::default());
        registry.register_collector(Box::new(crate::traffic::TrafficCollector(traffic.clone())));
        registry.register_collector(Box::new(State(sources)));
        Metrics {
            registry,
            requests,
            failovers,
            keepalive_retries,
            local_shortages,
            lookups,
            reloads,
            client_connections,
            traffic,
            skipped,
            skips_logged: std::sync::Mutex::default(),
            ready,
        }
    }

    /// Counts a try that skipped `upstream` for `why`; true the first time
    /// this instance was skipped for this reason, so the caller logs it once
    /// rather than on every request.
    pub fn skipped(&self, why: Skip, upstream: &str) -> bool {
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
    pub fn reload(&self, result: &'static str) {
        self.reloads.get_or_create(&ReloadResult { result }).inc();
    }

    /// Counts one answered request, in the calling worker's shard.
    pub fn request(&self, status: u16, seconds: f64, attempts: u32) {
        self.requests.count(status, seconds, attempts);
    }

    pub fn failover(&self, cause: Failover) {
        self.failovers
            .get_or_create(&Cause {
                cause: cause.as_str(),
            })
            .inc();
    }

    pub fn lookup(&self, outcome: &'static str) {
        self.lookups.get_or_create(&Outcome { outcome }).inc();
    }

    /// The `/metrics` text: the registry, then the process metrics.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode_registry(&mut out, &self.registry).is_err() {
            out.clear();
        }
        let mut text = shared::process_metrics::text_format(&out);
        shared::process_metrics::render(&mut text);
        text
    }
}

/// Rings, watch streams, pools, panics and buffered bytes, read at scrape time.
#[derive(Debug)]
struct State(Sources);

impl std::ops::Deref for State {
    type Target = Sources;
    fn deref(&self) -> &Sources {
        &self.0
    }
}

impl State {
    /// The router in force (an empty one once the gateway stopped).
    fn router(&self) -> Arc<Router> {
        self.live
            .router()
            .unwrap_or_else(|| Arc::new(Router::new(&[])))
    }

    fn per_namespace(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        kind: MetricType,
        value: impl Fn(&crate::ring::Balancer) -> i64,
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(name, help, None, kind)?;
        for b in self.router().balancers() {
            let labels = Namespace {
                namespace: b.namespace.clone(),
            };
            let metric = family.encode_family(&labels)?;
            match kind {
                MetricType::Counter => ConstCounter::new(value(b).max(0) as u64).encode(metric)?,
                _ => ConstGauge::new(value(b)).encode(metric)?,
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Member {
    namespace: String,
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberCode {
    namespace: String,
    upstream: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberCause {
    namespace: String,
    upstream: String,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberFault {
    namespace: String,
    upstream: String,
    fault: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Build {
    version: &'static str,
    revision: &'static str,
}

/// One instance's latency histogram, encoded from its own buckets.
struct Latency<'a>(&'a crate::stats::UpstreamStats);

impl EncodeMetric for Latency<'_> {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let (buckets, sum, count) = self.0.histogram();
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl State {
    /// Every tracked instance once, with the namespaces that list it joined
    /// by commas: an instance registered in two namespaces is one upstream,
    /// with one set of counters, and its series are not repeated.
    fn tracked_once(&self) -> Vec<(String, crate::ring::Tracked)> {
        let mut by_key: std::collections::BTreeMap<String, (Vec<String>, crate::ring::Tracked)> =
            std::collections::BTreeMap::new();
        for b in self.router().balancers() {
            for t in b.tracked() {
                by_key
                    .entry(t.key.clone())
                    .or_insert_with(|| (Vec::new(), t))
                    .0
                    .push(b.namespace.clone());
            }
        }
        by_key
            .into_values()
            .map(|(mut namespaces, t)| {
                namespaces.sort();
                (namespaces.join(","), t)
            })
            .collect()
    }

    /// The per-instance series: requests by code, latency and failovers, for
    /// every instance of every routed ring, and those that left one within
    /// [`crate::ring::DEPARTED_KEPT_MS`].
    fn per_upstream(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let tracked = self.tracked_once();
        let mut requests = encoder.encode_descriptor(
            "upstream_requests",
            "Tries answered by each instance, by the status it answered",
            None,
            MetricType::Counter,
        )?;
        for (namespace, t) in &tracked {
            for (code, n) in t.stats.codes() {
                let labels = MemberCode {
                    namespace: namespace.clone(),
                    upstream: t.key.clone(),
                    code,
                };
                ConstCounter::new(n).encode(requests.encode_family(&labels)?)?;
            }
        }
        let mut latency = encoder.encode_descriptor(
            "upstream_request_duration_seconds",
            "Time of each try on each instance, answered or failed, to the end of the answer",
            None,
            MetricType::Histogram,
        )?;
        for (namespace, t) in &tracked {
            let labels = Member {
                namespace: namespace.clone(),
                upstream: t.key.clone(),
            };
            Latency(&t.stats).encode(latency.encode_family(&labels)?)?;
        }
        let mut failovers = encoder.encode_descriptor(
            "upstream_failovers",
            "Tries given up on each instance, by cause (connect, timeout, broken, status_5xx)",
            None,
            MetricType::Counter,
        )?;
        for (namespace, t) in &tracked {
            for cause in crate::stats::CAUSES {
                let labels = MemberCause {
                    namespace: namespace.clone(),
                    upstream: t.key.clone(),
                    cause: cause.as_str(),
                };
                ConstCounter::new(t.stats.failovers(cause))
                    .encode(failovers.encode_family(&labels)?)?;
            }
        }
        let mut faults = encoder.encode_descriptor(
            "upstream_faults",
            "Wrong answers from each instance, by fault (stray_bytes, malformed, cut_short, wrong_request_id); passive_health_failures in a row cool it down",
            None,
            MetricType::Counter,
        )?;
        for (namespace, t) in &tracked {
            for fault in crate::passive::FAULTS {
                let labels = MemberFault {
                    namespace: namespace.clone(),
                    upstream: t.key.clone(),
                    fault: fault.as_str(),
                };
                ConstCounter::new(t.health.count(fault)).encode(faults.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

impl Collector for State {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let build = Build {
            version: env!("CARGO_PKG_VERSION"),
            revision: shared::build_info::REVISION,
        };
        let mut info = encoder.encode_descriptor(
            "build_info",
            "Always 1; the labels say which build runs",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1).encode(info.encode_family(&build)?)?;
        self.per_upstream(&mut encoder)?;
        ConstCounter::new(self.panics.count()).encode(encoder.encode_descriptor(
            "panics",
            "Panics caught (in a connection, which ended, or a background loop, which restarted)",
            None,
            MetricType::Counter,
        )?)?;
        ConstGauge::new(self.budget.held() as i64).encode(encoder.encode_descriptor(
            "buffered_request_bytes",
            "Request body bytes reserved now against max_buffered_bytes",
            None,
            MetricType::Gauge,
        )?)?;
        self.per_namespace(
            &mut encoder,
            "ring_size",
            "Instances in the ring",
            MetricType::Gauge,
            |b| b.ring().members.len() as i64,
        )?;
        self.per_namespace(
            &mut encoder,
            "ring_version",
            "Watch event version the ring was built from",
            MetricType::Gauge,
            |b| b.ring().version as i64,
        )?;
        self.per_namespace(
            &mut encoder,
            "ring_held_members",
            "Members kept from before a watch reconnect while discovery relearns them",
            MetricType::Gauge,
            |b| b.ring().held as i64,
        )?;
        self.per_namespace(
            &mut encoder,
            "watch_connected",
            "1 while the watch stream is connected",
            MetricType::Gauge,
            |b| i64::from(b.watch.get() == WatchState::Connected),
        )?;
        self.per_namespace(
            &mut encoder,
            "watch_snapshot_age_seconds",
            "Seconds since discovery last confirmed the ring (an event or a keep-alive; -1: never)",
            MetricType::Gauge,
            |b| match b.watch.last_confirmed_ms.load(Ordering::Relaxed) {
                0 => -1,
                at => (clock().saturating_sub(at) / 1000) as i64,
            },
        )?;
        self.per_namespace(
            &mut encoder,
            "watch_reconnects",
            "Times the watch stream was lost and opened again",
            MetricType::Counter,
            |b| b.watch.reconnects.load(Ordering::Relaxed) as i64,
        )?;
        let upstreams = self.upstreams.all();
        let mut idle = encoder.encode_descriptor(
            "pool_idle_connections",
            "Idle keep-alive connections per instance",
            None,
            MetricType::Gauge,
        )?;
        for up in &upstreams {
            let labels = UpstreamLabel {
                upstream: up.key.clone(),
            };
            ConstGauge::new(up.idle_count() as i64).encode(idle.encode_family(&labels)?)?;
        }
        let mut cooling = encoder.encode_descriptor(
            "upstream_cooling_down",
            "1 while an instance is skipped: it refused a connection, or passive health cooled it down",
            None,
            MetricType::Gauge,
        )?;
        for up in &upstreams {
            let labels = UpstreamLabel {
                upstream: up.key.clone(),
            };
            ConstGauge::new(i64::from(up.is_cooling())).encode(cooling.encode_family(&labels)?)?;
        }
        let mut opened = encoder.encode_descriptor(
            "upstream_connections_opened",
            "Connections opened to each instance",
            None,
            MetricType::Counter,
        )?;
        for up in &upstreams {
            let labels = UpstreamLabel {
                upstream: up.key.clone(),
            };
            ConstCounter::new(up.opened.load(Ordering::Relaxed))
                .encode(opened.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
