//! `/metrics` on the admin port: the counters bumped on the request path
//! ([`crate::observe::counters`]), then the rings, pools, watch streams and
//! per-instance statistics read from their own state at scrape time.
//!
//! Served in the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]), which
//! every scraper reads and a browser shows.

use crate::balance::pool::{Upstream, Upstreams};
use crate::balance::ring::{Balancer, Router, Tracked, WatchState};
use crate::context::{Context, Live};
use crate::http::budget::Budget;
use crate::observe::stats::{UpstreamStats, CAUSES};
use crate::runtime::clock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use shared::panics::Panics;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The content type of `/metrics`.
pub(crate) const CONTENT_TYPE: &str = shared::process_metrics::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Namespace {
    namespace: String,
}

/// State read at scrape time rather than counted on the request path.
#[derive(Debug)]
struct Sources {
    /// Where the router in force is (it changes on reload).
    pub(crate) live: Arc<Live>,
    pub(crate) upstreams: Arc<Upstreams>,
    pub(crate) panics: Panics,
    pub(crate) budget: Arc<Budget>,
}

/// The `/metrics` text: the request-path counters, the state read now,
/// then the process metrics.
pub(crate) fn render(ctx: &Context) -> String {
    let mut out = String::new();
    let mut state = Registry::with_prefix("gateway");
    state.register_collector(Box::new(State(Sources {
        live: ctx.live.clone(),
        upstreams: ctx.upstreams.clone(),
        panics: ctx.panics.clone(),
        budget: ctx.budget.clone(),
    })));
    let encoded = ctx
        .metrics
        .encode(&mut out)
        .and_then(|()| prometheus_client::encoding::text::encode_registry(&mut out, &state));
    if encoded.is_err() {
        out.clear();
    }
    let mut text = shared::process_metrics::text_format(&out);
    shared::process_metrics::render(&mut text);
    text
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
        value: impl Fn(&Balancer) -> i64,
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

/// One family with a series per instance the pools know, as
/// [`State::per_namespace`] has one per namespace.
fn per_upstream(
    encoder: &mut DescriptorEncoder,
    upstreams: &[Arc<Upstream>],
    (name, help): (&str, &str),
    kind: MetricType,
    value: impl Fn(&Upstream) -> i64,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for up in upstreams {
        let labels = UpstreamLabel {
            upstream: up.key.clone(),
        };
        let metric = family.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value(up).max(0) as u64).encode(metric)?,
            _ => ConstGauge::new(value(up)).encode(metric)?,
        }
    }
    Ok(())
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
struct Latency<'a>(&'a UpstreamStats);

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
    fn tracked_once(&self) -> Vec<(String, Tracked)> {
        let mut by_key: std::collections::BTreeMap<String, (Vec<String>, Tracked)> =
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
    /// [`crate::balance::ring::DEPARTED_KEPT_MS`].
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
            for cause in CAUSES {
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
            for fault in crate::balance::passive::FAULTS {
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
        per_upstream(
            &mut encoder,
            &upstreams,
            (
                "pool_idle_connections",
                "Idle keep-alive connections per instance",
            ),
            MetricType::Gauge,
            |up| up.idle_count() as i64,
        )?;
        per_upstream(
            &mut encoder,
            &upstreams,
            (
                "upstream_cooling_down",
                "1 while an instance is skipped: it refused a connection, or passive health cooled it down",
            ),
            MetricType::Gauge,
            |up| i64::from(up.is_cooling()),
        )?;
        per_upstream(
            &mut encoder,
            &upstreams,
            (
                "upstream_connections_opened",
                "Connections opened to each instance",
            ),
            MetricType::Counter,
            |up| up.opened.load(Ordering::Relaxed) as i64,
        )?;
        Ok(())
    }
}
