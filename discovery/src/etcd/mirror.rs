//! This replica's copy of everything under the prefix, fed by ONE watch on
//! the prefix (plus this replica's own writes, applied as they succeed), and
//! passed on to the core through the store's [`Sink`].
//!
//! Every key carries the revision it was written at: a change is applied only
//! if it is newer than what the mirror holds, and a delete leaves a tombstone
//! until the watch has passed its revision, so the watch echoing a write this
//! replica already applied, or delivering an older put after a newer local
//! delete, changes nothing. When the watch's start revision was compacted
//! away, the whole prefix is read again at one revision and replaces the
//! mirror ([`Sink::reset`]).
//!
//! When etcd cannot be reached the mirror is simply kept (static stability):
//! lookups, `/api/watch` and the dashboard go on from it, and its age says
//! how stale it may be.

use super::client::{self, prefix_end, Client, KeyValue};
use super::keys::{Key, Keys};
use crate::store::{Record, Sink};
use shared::backoff::Backoff;
use shared::shutdown::Trigger;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The mirror of the prefix.
pub struct Mirror {
    inner: Mutex<Inner>,
    sink: Arc<dyn Sink>,
    keys: Keys,
    /// The watch is open and confirmed.
    watching: AtomicBool,
    /// Live replica ids (their keys exist). A lock of its own, never held
    /// while calling anything: `owns` reads it under the core's lock, while
    /// `inner` is held when calling into the core (the sink).
    live: Mutex<Arc<BTreeSet<String>>>,
    /// When the mirror was last known current (a leaf lock too, for `health`).
    synced_at: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct Inner {
    /// Instance key → (mod revision, record).
    instances: HashMap<Vec<u8>, (i64, Record)>,
    /// (namespace, id) → instance key.
    by_id: HashMap<(String, String), Vec<u8>>,
    /// Instances per namespace, for the caps.
    per_namespace: HashMap<String, usize>,
    /// Deleted keys → the revision of the delete, until the watch passes it.
    tombstones: HashMap<Vec<u8>, i64>,
    /// The revision the mirror is complete up to (from the watch or a full read).
    revision: i64,
}

impl Inner {
    fn insert(&mut self, key: Vec<u8>, rev: i64, record: Record, sink: &dyn Sink) {
        let ns_id = (record.namespace.clone(), record.id.clone());
        if let Some((_, old)) = self.instances.get(&key) {
            if old.id != record.id {
                // Deregistered and registered again while this replica looked away.
                self.by_id.remove(&(old.namespace.clone(), old.id.clone()));
                sink.remove(&old.namespace, &old.id);
            }
        } else {
            *self
                .per_namespace
                .entry(record.namespace.clone())
                .or_default() += 1;
        }
        self.by_id.insert(ns_id, key.clone());
        self.tombstones.remove(&key);
        self.instances.insert(key, (rev, record.clone()));
        sink.put(record);
    }

    fn delete(&mut self, key: &[u8], rev: i64, sink: &dyn Sink) -> Option<Record> {
        self.tombstones.insert(key.to_vec(), rev);
        let (_, gone) = self.instances.remove(key)?;
        self.by_id
            .remove(&(gone.namespace.clone(), gone.id.clone()));
        if let Some(n) = self.per_namespace.get_mut(&gone.namespace) {
            *n -= 1;
            if *n == 0 {
                self.per_namespace.remove(&gone.namespace);
            }
        }
        sink.remove(&gone.namespace, &gone.id);
        Some(gone)
    }

    /// Whether a change of `key` at `rev` is newer than what is held.
    fn newer(&self, key: &[u8], rev: i64) -> bool {
        let held = self.instances.get(key).map_or(0, |(r, _)| *r);
        let dead = self.tombstones.get(key).copied().unwrap_or(0);
        rev > held && rev > dead
    }
}

impl Mirror {
    pub fn new(keys: Keys, sink: Arc<dyn Sink>) -> Mirror {
        Mirror {
            inner: Mutex::new(Inner::default()),
            sink,
            keys,
            watching: AtomicBool::new(false),
            live: Mutex::default(),
            synced_at: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record at `key` and its mod revision.
    pub fn get(&self, key: &[u8]) -> Option<(i64, Record)> {
        self.lock().instances.get(key).cloned()
    }

    /// The key and record of instance `id`.
    pub fn by_id(&self, namespace: &str, id: &str) -> Option<(Vec<u8>, i64, Record)> {
        let inner = self.lock();
        let key = inner
            .by_id
            .get(&(namespace.to_string(), id.to_string()))?
            .clone();
        let (rev, rec) = inner.instances.get(&key)?.clone();
        Some((key, rev, rec))
    }

    /// Instances in `namespace`, in all namespaces, and namespaces known.
    pub fn counts(&self, namespace: &str) -> (usize, usize, usize) {
        let inner = self.lock();
        (
            inner.per_namespace.get(namespace).copied().unwrap_or(0),
            inner.instances.len(),
            inner.per_namespace.len(),
        )
    }

    /// Live replica ids, this one included once its key landed.
    pub fn replicas(&self) -> BTreeSet<String> {
        self.live_set().as_ref().clone()
    }

    /// Runs `f` over the live replica ids without copying them.
    pub fn with_replicas<T>(&self, f: impl FnOnce(&BTreeSet<String>) -> T) -> T {
        f(&self.live_set())
    }

    fn mark_synced(&self) {
        *self.synced_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    fn live_set(&self) -> Arc<BTreeSet<String>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Changes the live set; answers what `change` answered.
    fn change_live(&self, change: impl FnOnce(&mut BTreeSet<String>) -> bool) -> bool {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        change(Arc::make_mut(&mut live))
    }

    /// Applies this replica's own successful put (its record at `rev`).
    pub fn put_local(&self, key: &[u8], rev: i64, record: Record) {
        let mut inner = self.lock();
        if inner.newer(key, rev) {
            inner.insert(key.to_vec(), rev, record, &*self.sink);
        }
    }

    /// Applies what etcd answered about `key` after a failed compare (or a
    /// read): its current value, or its absence at `rev`.
    pub fn learn(&self, key: &[u8], kv: Option<&KeyValue>, rev: i64) {
        match kv {
            Some(kv) => self.apply_put(kv),
            None => {
                let mut inner = self.lock();
                if inner.newer(key, rev) {
                    inner.delete(key, rev, &*self.sink);
                }
            }
        }
    }

    /// Applies this replica's own successful delete of `key` at `rev`.
    pub fn delete_local(&self, key: &[u8], rev: i64) -> Option<Record> {
        let mut inner = self.lock();
        if inner.newer(key, rev) {
            inner.delete(key, rev, &*self.sink)
        } else {
            None
        }
    }

    fn apply_put(&self, kv: &KeyValue) {
        match self.keys.parse(&kv.key) {
            Some(Key::Instance) => {
                let record: Record = match serde_json::from_slice(&kv.value) {
                    Ok(r) => r,
                    Err(e) => {
                        log::warn!(key:% = String::from_utf8_lossy(&kv.key);
                            "etcd holds an unreadable instance, ignored: {e}");
                        return;
                    }
                };
                let mut inner = self.lock();
                if inner.newer(&kv.key, kv.mod_revision) {
                    inner.insert(kv.key.clone(), kv.mod_revision, record, &*self.sink);
                }
            }
            Some(Key::Replica(id)) if self.change_live(|live| live.insert(id.clone())) => {
                log::info!(replica = id.as_str(); "replica joined");
            }
            Some(Key::Replica(_)) | None => {}
        }
    }

    fn apply_delete(&self, key: &[u8], rev: i64) {
        match self.keys.parse(key) {
            Some(Key::Instance) => {
                let mut inner = self.lock();
                if inner.newer(key, rev) {
                    inner.delete(key, rev, &*self.sink);
                }
            }
            Some(Key::Replica(id)) if self.change_live(|live| live.remove(&id)) => {
                log::info!(replica = id.as_str(); "replica left: its checks move to the others");
            }
            Some(Key::Replica(_)) | None => {}
        }
    }

    /// Replaces the mirror with a full read at `revision`, keeping this
    /// replica's own writes that are newer than it.
    fn reset(&self, revision: i64, kvs: Vec<KeyValue>) {
        let mut fresh = Inner {
            revision,
            ..Inner::default()
        };
        let mut replicas = BTreeSet::new();
        let null = NullSink;
        for kv in kvs {
            match self.keys.parse(&kv.key) {
                Some(Key::Instance) => match serde_json::from_slice::<Record>(&kv.value) {
                    Ok(record) => fresh.insert(kv.key, kv.mod_revision, record, &null),
                    Err(e) => log::warn!(key:% = String::from_utf8_lossy(&kv.key);
                        "etcd holds an unreadable instance, ignored: {e}"),
                },
                Some(Key::Replica(id)) => {
                    replicas.insert(id);
                }
                None => {}
            }
        }
        let mut inner = self.lock();
        for (key, (rev, record)) in &inner.instances {
            if *rev > revision && !fresh.instances.contains_key(key) {
                fresh.insert(key.clone(), *rev, record.clone(), &null);
            }
        }
        for (key, rev) in &inner.tombstones {
            if *rev > revision {
                fresh.delete(key, *rev, &null);
            }
        }
        let records = fresh.instances.values().map(|(_, r)| r.clone()).collect();
        *inner = fresh;
        self.sink.reset(records);
        drop(inner);
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(replicas);
        self.mark_synced();
    }

    /// The watch delivered everything up to `revision`.
    fn advance(&self, revision: i64) {
        let mut inner = self.lock();
        if revision > inner.revision {
            inner.revision = revision;
        }
        let upto = inner.revision;
        inner.tombstones.retain(|_, r| *r > upto);
        drop(inner);
        self.mark_synced();
    }

    /// Marks the mirror current as of now (the watch is open and etcd answers).
    pub fn touch(&self) {
        if self.watching() {
            self.mark_synced();
        }
    }

    pub fn watching(&self) -> bool {
        self.watching.load(Ordering::Relaxed)
    }

    /// How long since the mirror was last known current; `None` before the first read.
    pub fn age(&self) -> Option<Duration> {
        self.synced_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed())
    }

    /// Reads the whole prefix into the mirror; the revision read at.
    pub async fn load(&self, client: &Client) -> client::Result<i64> {
        let (revision, kvs) = client.range_prefix(self.keys.root()).await?;
        self.reset(revision, kvs);
        Ok(revision)
    }

    /// Keeps the mirror in step with etcd until `stop` fires: one watch on the
    /// prefix from the mirror's revision, reopened (on the next member) when
    /// it breaks, the prefix read again when the watch's revision was compacted.
    pub async fn follow(self: Arc<Self>, client: Arc<Client>, stop: Trigger) {
        use futures_lite::FutureExt;
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        let mut reload = false;
        while !stop.is_fired() {
            let run = async {
                if reload {
                    let rev = self.load(&client).await?;
                    log::info!(revision = rev; "etcd read again: mirror replaced");
                    reload = false;
                }
                let from = self.lock().revision + 1;
                let end = prefix_end(self.keys.root());
                let mut watch = client.watch(self.keys.root(), &end, from).await?;
                self.watching.store(true, Ordering::Relaxed);
                log::info!(endpoint = watch.endpoint.as_str(), from = from; "etcd watch open");
                loop {
                    let res = match watch.next().await {
                        Ok(res) => res,
                        Err(e) => {
                            client.demote(&watch.endpoint);
                            return Err(e);
                        }
                    };
                    if res.canceled {
                        if res.compact_revision == 0 {
                            client.demote(&watch.endpoint);
                        } else {
                            log::warn!(compact_revision = res.compact_revision, from = from;
                                "etcd compacted past the mirror: reading everything again");
                            reload = true;
                        }
                        return Err(client::Error::Unavailable(format!(
                            "watch canceled: {}",
                            res.cancel_reason
                        )));
                    }
                    backoff.reset();
                    for event in &res.events {
                        if event.is_delete() {
                            self.apply_delete(&event.kv.key, event.kv.mod_revision);
                        } else {
                            self.apply_put(&event.kv);
                        }
                    }
                    self.advance(res.header.revision);
                }
            };
            let ended = run
                .or(async {
                    stop.wait().await;
                    Ok(())
                })
                .await;
            self.watching.store(false, Ordering::Relaxed);
            if let Err(why) = ended {
                if !stop.is_fired() {
                    log::warn!(age_ms = self.age().map_or(0, |a| a.as_millis() as u64);
                        "etcd watch down, serving the last mirror: {why}");
                }
            }
            let pause = backoff.next_delay();
            async_std::task::sleep(pause).or(stop.wait()).await;
        }
    }
}

/// A sink that drops everything: for building a fresh mirror before it replaces the old one.
struct NullSink;

impl Sink for NullSink {
    fn put(&self, _: Record) {}
    fn remove(&self, _: &str, _: &str) {}
    fn reset(&self, _: Vec<Record>) {}
}
