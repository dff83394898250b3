//! `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header): per route,
//! a request carrying a key on a listed method runs at most once per
//! (route, key, client scope) within the route's ttl; repeats get the
//! stored answer, a 409 while the first is in flight or its outcome is
//! unknown, a 422 when the key comes with another request. The rules and
//! why are in docs/idempotency.md; the request path's side is
//! [`crate::proxy::keyed`].
//!
//! - `key`: whether a request is keyed, its record id and fingerprint;
//! - `record`: the record, what a repeat sees, what a finished request leaves;
//! - `store`: the [`store::Store`] trait; `memory` and `etcd` implement it.
//!
//! A floor between `balance/` and `context`: it uses `http/` (the stored
//! answer, [`crate::http::session::stored`]) and `observe/` (its counters).

pub(crate) mod etcd;
pub(crate) mod key;
pub(crate) mod memory;
pub(crate) mod record;
pub(crate) mod store;

use crate::observe::counters::Metrics;
use crate::runtime;
use record::{Digest, Record};
use shared::config::{GatewayConfig, StoreUrl};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{Store, StoreError};

/// How long one etcd member may take to answer a store call before the
/// next is asked: the call sits on a request's path.
const ETCD_CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// How much longer than `request_deadline` an in-flight record may stand
/// before a repeat takes its gateway for gone (outcome unknown).
const STALE_MARGIN: Duration = Duration::from_secs(5);

/// The gateway's idempotency store, shared by every generation of the context.
#[derive(Debug)]
pub(crate) struct Idempotency {
    store: Box<dyn Store>,
    /// `"memory"` or `"etcd"`, for `/status`.
    pub(crate) kind: &'static str,
    pub(crate) fail_open: bool,
    metrics: Arc<Metrics>,
}

/// The store `config` names.
pub(crate) fn open(config: &GatewayConfig, metrics: Arc<Metrics>) -> std::io::Result<Idempotency> {
    let url = StoreUrl::parse(&config.idempotency_store)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let (store, kind): (Box<dyn Store>, _) = match url {
        StoreUrl::Memory => {
            let (entries, bytes) = (config.idempotency_max_entries, config.idempotency_max_bytes);
            let store = memory::MemoryStore::new(entries, bytes, metrics.clone());
            (Box::new(store), "memory")
        }
        StoreUrl::Etcd { endpoints, prefix } => {
            let store = etcd::EtcdStore::new(&endpoints, &prefix, ETCD_CALL_TIMEOUT)?;
            (Box::new(store), "etcd")
        }
    };
    Ok(Idempotency {
        store,
        kind,
        fail_open: config.idempotency_fail_open,
        metrics,
    })
}

/// When an in-flight record is taken for its gateway gone.
pub(crate) fn stale_after(config: &GatewayConfig) -> Duration {
    config.request_deadline + STALE_MARGIN
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Idempotency {
    /// [`Store::claim`], timed and counted.
    pub(crate) async fn claim(
        &self,
        id: &Digest,
        record: &Record,
        ttl: Duration,
    ) -> Result<Option<Record>, StoreError> {
        let started = runtime::now();
        let got = self.store.claim(id, record, ttl).await;
        self.timed("claim", started, got.is_err());
        got
    }

    /// [`Store::settle`] (a state to keep) or [`Store::release`] (`None`), timed and counted.
    pub(crate) async fn finish(
        &self,
        id: &Digest,
        record: Option<Record>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let started = runtime::now();
        let (op, done) = match record {
            Some(record) => ("settle", self.store.settle(id, record, ttl).await),
            None => ("release", self.store.release(id).await),
        };
        self.timed(op, started, done.is_err());
        done
    }

    /// On the worker's clock (read once per turn of its event loop): an
    /// etcd call is timed to the turn, a memory one reads as 0.
    fn timed(&self, op: &'static str, started: Instant, failed: bool) {
        let seconds = runtime::now()
            .saturating_duration_since(started)
            .as_secs_f64();
        self.metrics.idempotency.store_call(op, seconds, failed);
    }
}
