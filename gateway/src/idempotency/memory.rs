//! The in-process store: records in a map, bounded in entries and bytes,
//! each dropped at the end of its ttl, the least recently used evicted
//! first when a bound is reached (counted: an evicted key would run again).
//!
//! A gateway restart forgets every record; two gateways on one port each
//! keep their own. Both are what the etcd store is for.

use super::record::Record;
use super::store::{Store, StoreFuture};
use crate::observe::counters::Metrics;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Entry {
    record: Record,
    expires: Instant,
    /// Its place in [`Inner::lru`].
    used: u64,
    size: usize,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<String, Entry>,
    /// Use order: oldest first.
    lru: BTreeMap<u64, String>,
    next_use: u64,
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

    fn claim_now(&self, id: &str, record: &Record, ttl: Duration) -> Option<Record> {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(found) = inner.live(id, now, &self.metrics) {
            return Some(found);
        }
        self.put(&mut inner, id, record.clone(), now + ttl);
        None
    }

    fn settle_now(&self, id: &str, record: &Record, ttl: Duration) {
        let mut inner = self.lock();
        inner.remove(id);
        self.put(&mut inner, id, record.clone(), Instant::now() + ttl);
    }

    /// Inserts, then evicts the least recently used until within bounds
    /// (never the record just put).
    fn put(&self, inner: &mut Inner, id: &str, record: Record, expires: Instant) {
        let size = id.len() + record.size();
        let used = inner.touch(id);
        inner.bytes += size;
        inner.map.insert(
            id.to_string(),
            Entry {
                record,
                expires,
                used,
                size,
            },
        );
        let now = Instant::now();
        while inner.map.len() > self.max_entries || inner.bytes > self.max_bytes {
            let Some((_, oldest)) = inner.lru.pop_first() else {
                break;
            };
            if oldest == id {
                inner.lru.insert(used, oldest);
                break;
            }
            if let Some(gone) = inner.take(&oldest) {
                if gone.expires <= now {
                    self.metrics.idempotency.expirations.inc();
                } else {
                    self.metrics.idempotency.evictions.inc();
                }
            }
        }
        self.metrics.idempotency.entries.set(inner.map.len() as i64);
        self.metrics.idempotency.bytes.set(inner.bytes as i64);
    }
}

impl Inner {
    /// The record under `id` unless its ttl is over (then it is dropped),
    /// marked used.
    fn live(&mut self, id: &str, now: Instant, metrics: &Metrics) -> Option<Record> {
        let expired = self.map.get(id)?.expires <= now;
        if expired {
            self.remove(id);
            metrics.idempotency.expirations.inc();
            return None;
        }
        let used = self.touch(id);
        let entry = self.map.get_mut(id)?;
        self.lru.remove(&entry.used);
        entry.used = used;
        Some(entry.record.clone())
    }

    /// A new place at the young end of the use order for `id`.
    fn touch(&mut self, id: &str) -> u64 {
        self.next_use += 1;
        self.lru.insert(self.next_use, id.to_string());
        self.next_use
    }

    /// Removes `id` from the map only (its use order entry is the caller's).
    fn take(&mut self, id: &str) -> Option<Entry> {
        let entry = self.map.remove(id)?;
        self.bytes -= entry.size;
        Some(entry)
    }

    fn remove(&mut self, id: &str) {
        if let Some(entry) = self.take(id) {
            self.lru.remove(&entry.used);
        }
    }
}

impl Store for MemoryStore {
    fn claim<'a>(
        &'a self,
        id: &'a str,
        record: &'a Record,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<Record>> {
        let found = self.claim_now(id, record, ttl);
        Box::pin(std::future::ready(Ok(found)))
    }

    fn settle<'a>(&'a self, id: &'a str, record: &'a Record, ttl: Duration) -> StoreFuture<'a, ()> {
        self.settle_now(id, record, ttl);
        Box::pin(std::future::ready(Ok(())))
    }

    fn release<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        self.lock().remove(id);
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::record::State;

    fn record(fingerprint: &str) -> Record {
        Record {
            fingerprint: fingerprint.into(),
            state: State::InFlight,
            since_ms: 0,
            request_id: "r".into(),
            token: "t".into(),
            tries: Vec::new(),
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn the_first_claim_wins_and_the_next_sees_its_record() {
        let store = MemoryStore::new(10, 1 << 20, Arc::new(Metrics::new()));
        assert_eq!(store.claim_now("k", &record("a"), DAY), None);
        assert_eq!(store.claim_now("k", &record("b"), DAY), Some(record("a")));
    }

    #[test]
    fn a_record_past_its_ttl_is_gone() {
        let metrics = Arc::new(Metrics::new());
        let store = MemoryStore::new(10, 1 << 20, metrics.clone());
        assert_eq!(store.claim_now("k", &record("a"), Duration::ZERO), None);
        assert_eq!(store.claim_now("k", &record("b"), DAY), None);
        assert_eq!(metrics.idempotency.expirations.get(), 1);
    }

    #[test]
    fn the_least_recently_used_go_first_and_are_counted() {
        let metrics = Arc::new(Metrics::new());
        let store = MemoryStore::new(3, 1 << 20, metrics.clone());
        for k in ["a", "b", "c"] {
            store.claim_now(k, &record(k), DAY);
        }
        // "a" used again: "b" is now the oldest.
        assert!(store.claim_now("a", &record("x"), DAY).is_some());
        store.claim_now("d", &record("d"), DAY);
        assert_eq!(metrics.idempotency.evictions.get(), 1);
        assert!(store.claim_now("a", &record("x"), DAY).is_some());
        assert_eq!(
            store.claim_now("b", &record("b"), DAY),
            None,
            "b was evicted"
        );
        assert_eq!(store.lock().map.len(), 3);
    }

    #[test]
    fn the_byte_bound_holds() {
        let metrics = Arc::new(Metrics::new());
        let one = "k0".len() + record("f").size();
        let store = MemoryStore::new(1000, one * 5, metrics.clone());
        for i in 0..50 {
            store.claim_now(&format!("k{}", i % 10), &record("f"), DAY);
        }
        let inner = store.lock();
        assert!(inner.bytes <= one * 5, "{}", inner.bytes);
        assert_eq!(inner.map.len(), inner.lru.len());
        assert!(metrics.idempotency.evictions.get() > 0);
    }
}
