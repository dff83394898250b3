//! Client sessions and bytes: connections open now and the most at once
//! since start, request bytes read from clients and answer bytes written to
//! them. Shown on the console (`/status` `clients`) and on `/metrics`:
//! `gateway_client_connections` (the gauge [`crate::observe::counters::Metrics`]
//! already had), `gateway_client_connections_max`,
//! `gateway_client_bytes_received_total`, `gateway_client_bytes_sent_total`.
//!
//! The hot path pays one relaxed atomic add per read or write batch, in the
//! calling worker's own shard ([`PerWorker`]), through
//! [`crate::http::session::Session`], the one place client bytes pass; the maximum
//! is one `fetch_max` per accepted connection.

use crate::runtime::slots::PerWorker;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// One worker's byte counts.
#[derive(Debug, Default)]
struct Shard {
    received: AtomicU64,
    sent: AtomicU64,
}

/// Bytes to and from clients, and the most connections open at once.
#[derive(Debug, Default)]
pub(crate) struct ClientTraffic {
    shards: PerWorker<Shard>,
    max_connections: AtomicI64,
}

impl ClientTraffic {
    /// `n` request bytes read from a client.
    pub(crate) fn received(&self, n: usize) {
        self.shards
            .local()
            .received
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// `n` answer bytes written to a client.
    pub(crate) fn sent(&self, n: usize) {
        self.shards
            .local()
            .sent
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A connection was accepted and `open` are open now, it included.
    pub(crate) fn connected(&self, open: i64) {
        self.max_connections.fetch_max(open, Ordering::Relaxed);
    }

    pub(crate) fn bytes_received(&self) -> u64 {
        self.shards.sum(|s| &s.received)
    }

    pub(crate) fn bytes_sent(&self) -> u64 {
        self.shards.sum(|s| &s.sent)
    }

    pub(crate) fn max_connections(&self) -> i64 {
        self.max_connections.load(Ordering::Relaxed)
    }

    /// `/status`'s `clients`: `connections` open now (`open`), `connections_max`,
    /// `bytes_received` and `bytes_sent` since start.
    pub(crate) fn status(&self, open: i64) -> Value {
        json!({
            "connections": open,
            "connections_max": self.max_connections().max(open),
            "bytes_received": self.bytes_received(),
            "bytes_sent": self.bytes_sent(),
        })
    }
}

/// Exports [`ClientTraffic`] on `/metrics`.
#[derive(Debug)]
pub(crate) struct TrafficCollector(pub(crate) Arc<ClientTraffic>);

impl Collector for TrafficCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        ConstGauge::new(self.0.max_connections()).encode(encoder.encode_descriptor(
            "client_connections_max",
            "The most client connections open at once since start",
            None,
            MetricType::Gauge,
        )?)?;
        ConstCounter::new(self.0.bytes_received()).encode(encoder.encode_descriptor(
            "client_bytes_received",
            "Request bytes read from clients (heads and bodies)",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(self.0.bytes_sent()).encode(encoder.encode_descriptor(
            "client_bytes_sent",
            "Answer bytes written to clients (relayed answers and the gateway's own)",
            None,
            MetricType::Counter,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_bytes_and_keeps_the_most_connections_at_once() {
        let t = ClientTraffic::default();
        t.received(100);
        t.received(23);
        t.sent(7);
        for open in [1, 2, 3, 2, 1] {
            t.connected(open);
        }
        assert_eq!((t.bytes_received(), t.bytes_sent()), (123, 7));
        assert_eq!(t.max_connections(), 3);
        assert_eq!(
            t.status(1),
            json!({"connections": 1, "connections_max": 3, "bytes_received": 123, "bytes_sent": 7})
        );
    }
}
