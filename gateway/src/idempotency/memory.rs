//! The in-process store: records in a map, bounded in entries and bytes,
//! each dropped at the end of its ttl, the least recently used evicted
//! first when a bound is reached (counted: an evicted key would run again).
//!
//! A gateway restart forgets every record; two gateways on one port each
//! keep their own. Both are what the etcd store is for.

use super::record::{Digest, Record};
use super::store::{Store, StoreFuture};
use crate::observe::counters::Metrics;
use crate::runtime;
use hashlink::LinkedHashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Entry {
    record: Record,
    expires: Instant,
    size: usize,
}

/// The records in use order, least recently used first. A linked hash map
/// keeps the order in the entries themselves and reuses the nodes of
/// removed ones, so a claim and its settle allocate no bookkeeping.
#[derive(Debug, Default)]
struct Inner {
    map: LinkedHashMap<Digest, Entry>,
    bytes: usize,
}

#[derive(Debug)]
pub(crate) struct MemoryStore {
    inner: Mutex<Inner>,
    max_entries: usize,
    max_bytes: usize,
    metrics: Arc<Metrics>,
}

impl MemoryStore {
    pub(crate) fn new(max_entries: usize, max_bytes: usize, metrics: Arc<Metrics>) -> Self {
        MemoryStore {
            inner: Mutex::default(),
            max_entries,
            max_bytes,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn claim_now(&self, id: &Digest, record: &Record, ttl: Duration) -> Option<Record> {
        let now = runtime::now();
        let mut inner = self.lock();
        if let Some(found) = inner.live(id, now, &self.metrics) {
            return Some(found);
        }
        inner.put(id, record.in_flight(), now + ttl);
        self.bound(&mut inner, id);
        None
    }

    /// Puts the settled record in its entry's place (in again if it was
    /// evicted while in flight): the record is moved, not copied. Its
    /// request id is dropped now, while warm, not at the eviction: only an
    /// operator reads it, and only from etcd.
    fn settle_now(&self, id: &Digest, mut record: Record, ttl: Duration) {
        record.request_id = String::new();
        let mut inner = self.lock();
        inner.put(id, record, runtime::now() + ttl);
        self.bound(&mut inner, id);
    }

    /// Evicts the least recently used until within bounds (never `keep`,
    /// the record just put), counting each; then the gauges.
    fn bound(&self, inner: &mut Inner, keep: &Digest) {
        let now = runtime::now();
        while inner.map.len() > self.max_entries || inner.bytes > self.max_bytes {
            match inner.map.front() {
                Some((oldest, _)) if oldest != keep => {}
                _ => break,
            }
            let Some((_, gone)) = inner.map.pop_front() else {
                break;
            };
            inner.bytes -= gone.size;
            if gone.expires <= now {
                self.metrics.idempotency.expirations.inc();
            } else {
                self.metrics.idempotency.evictions.inc();
            }
        }
        self.metrics.idempotency.entries.set(inner.map.len() as i64);
        self.metrics.idempotency.bytes.set(inner.bytes as i64);
    }
}

impl Inner {
    /// The record under `id` unless its ttl is over (then it is dropped),
    /// marked used.
    fn live(&mut self, id: &Digest, now: Instant, metrics: &Metrics) -> Option<Record> {
        let expired = self.map.get(id)?.expires <= now;
        if expired {
            self.remove(id);
            metrics.idempotency.expirations.inc();
            return None;
        }
        self.map.to_back(id);
        self.map.get(id).map(|entry| entry.record.clone())
    }

    /// Sets `id`'s record, at the young end of the use order.
    fn put(&mut self, id: &Digest, record: Record, expires: Instant) {
        let size = std::mem::size_of::<Digest>() + record.size();
        let entry = Entry {
            record,
            expires,
            size,
        };
        self.bytes += size;
        // insert, not replace: an entry put again moves to the young end.
        if let Some(old) = self.map.insert(*id, entry) {
            self.bytes -= old.size;
        }
    }

    fn remove(&mut self, id: &Digest) {
        if let Some(entry) = self.map.remove(id) {
            self.bytes -= entry.size;
        }
    }
}

impl Store for MemoryStore {
    fn claim<'a>(
        &'a self,
        id: &'a Digest,
        record: &'a Record,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<Record>> {
        StoreFuture::ready(Ok(self.claim_now(id, record, ttl)))
    }

    fn settle<'a>(&'a self, id: &'a Digest, record: Record, ttl: Duration) -> StoreFuture<'a, ()> {
        self.settle_now(id, record, ttl);
        StoreFuture::ready(Ok(()))
    }

    fn release<'a>(&'a self, id: &'a Digest) -> StoreFuture<'a, ()> {
        self.lock().remove(id);
        StoreFuture::ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::record::State;

    /// A digest named by a short string, for reading the tests.
    fn id(name: &str) -> Digest {
        let mut d = [0u8; 32];
        d[..name.len()].copy_from_slice(name.as_bytes());
        Digest(d)
    }

    fn record(fingerprint: &str) -> Record {
        Record {
            fingerprint: id(fingerprint),
            state: State::InFlight,
            since_ms: 0,
            request_id: "r".into(),
            token: String::new(),
            tries: Vec::new(),
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn the_first_claim_wins_and_the_next_sees_its_record() {
        let store = MemoryStore::new(10, 1 << 20, Arc::new(Metrics::new()));
        assert_eq!(store.claim_now(&id("k"), &record("a"), DAY), None);
        let first = store.claim_now(&id("k"), &record("b"), DAY);
        assert_eq!(first, Some(record("a").in_flight()));
        assert_eq!(first.map(|r| r.fingerprint), Some(id("a")));
    }

    #[test]
    fn a_record_past_its_ttl_is_gone() {
        let metrics = Arc::new(Metrics::new());
        let store = MemoryStore::new(10, 1 << 20, metrics.clone());
        assert_eq!(
            store.claim_now(&id("k"), &record("a"), Duration::ZERO),
            None
        );
        assert_eq!(store.claim_now(&id("k"), &record("b"), DAY), None);
        assert_eq!(metrics.idempotency.expirations.get(), 1);
    }

    #[test]
    fn the_least_recently_used_go_first_and_are_counted() {
        let metrics = Arc::new(Metrics::new());
        let store = MemoryStore::new(3, 1 << 20, metrics.clone());
        for k in ["a", "b", "c"] {
            store.claim_now(&id(k), &record(k), DAY);
        }
        // "a" used again: "b" is now the oldest.
        assert!(store.claim_now(&id("a"), &record("x"), DAY).is_some());
        store.claim_now(&id("d"), &record("d"), DAY);
        assert_eq!(metrics.idempotency.evictions.get(), 1);
        assert!(store.claim_now(&id("a"), &record("x"), DAY).is_some());
        assert_eq!(
            store.claim_now(&id("b"), &record("b"), DAY),
            None,
            "b was evicted"
        );
        assert_eq!(store.lock().map.len(), 3);
    }

    #[test]
    fn a_settle_replaces_the_claim_in_place_and_counts_its_bytes_once() {
        let store = MemoryStore::new(10, 1 << 20, Arc::new(Metrics::new()));
        store.claim_now(&id("k"), &record("a"), DAY);
        let done = Record {
            state: State::Unknown {
                why: "x".repeat(100),
            },
            ..record("a")
        };
        store.settle_now(&id("k"), done.clone(), DAY);
        let kept = Record {
            request_id: String::new(),
            ..done
        };
        let found = store.claim_now(&id("k"), &record("a"), DAY);
        assert_eq!(found, Some(kept.clone()));
        let inner = store.lock();
        assert_eq!(inner.map.len(), 1);
        assert_eq!(inner.bytes, std::mem::size_of::<Digest>() + kept.size());
    }

    #[test]
    fn a_record_evicted_in_flight_is_settled_anew() {
        let store = MemoryStore::new(1, 1 << 20, Arc::new(Metrics::new()));
        store.claim_now(&id("a"), &record("a"), DAY);
        store.claim_now(&id("b"), &record("b"), DAY);
        store.settle_now(&id("a"), record("a"), DAY);
        assert!(store.claim_now(&id("a"), &record("a"), DAY).is_some());
        assert_eq!(store.lock().map.len(), 1, "b made room");
    }

    #[test]
    fn the_byte_bound_holds() {
        let metrics = Arc::new(Metrics::new());
        let one = std::mem::size_of::<Digest>() + record("f").size();
        let store = MemoryStore::new(1000, one * 5, metrics.clone());
        for i in 0..50 {
            store.claim_now(&id(&format!("k{}", i % 10)), &record("f"), DAY);
        }
        let inner = store.lock();
        assert!(inner.bytes <= one * 5, "{}", inner.bytes);
        assert!(metrics.idempotency.evictions.get() > 0);
    }
}
