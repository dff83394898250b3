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

//!
//! Records are judged as they arrive (see [`super::records`]): unreadable,
//! out-of-policy or over-cap ones are set aside, the same on every replica.
//! A replica key counts only while it is on a lease.
//!
//! A watch can go quiet without breaking: a member frozen (SIGSTOP, a stuck
//! disk) still accepts connections and never answers. So while the watch is
//! open, its member is asked every [`PROBE_EVERY`] for the newest revision
//! under the prefix (a linearizable read, through the leader), within
//! [`PROBE_DEADLINE`]: no answer in time, or a revision the watch has not
//! delivered one probe later, and the mirror reports itself stale and moves
//! the watch to another member. The mirror's age is the time since a probe
//! or an event last proved it current, never the time since some other call
//! reached some other member.

use super::client::{self, prefix_end, Client, KeyValue, RangeRequest};
use super::keys::{Key, Keys};
use super::records::Records;
use crate::store::{Record, RecordPolicy, SetAside, Sink};
use shared::backoff::Backoff;
use shared::shutdown::Trigger;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often the watch's member is asked whether the watch is current.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(1);

/// How long that member has to answer before the view is called stale.
pub(crate) const PROBE_DEADLINE: Duration = Duration::from_secs(1);

/// The mirror of the prefix.
pub struct Mirror {
    inner: Mutex<Records>,
    sink: Arc<dyn Sink>,
    keys: Keys,
    policy: RecordPolicy,
    /// The watch is open and confirmed.
    watching: AtomicBool,
    /// Live replica ids (their keys exist, on a lease). A lock of its own,
    /// never held while calling anything: `owns` reads it under the core's
    /// lock, while `inner` is held when calling into the core (the sink).
    live: Mutex<Arc<BTreeSet<String>>>,
    /// Keys under the replicas prefix without a lease: not replicas (a leaf lock).
    ignored: Mutex<BTreeSet<String>>,
    /// When the mirror was last known current (a leaf lock too, for `health`).
    synced_at: Mutex<Option<Instant>>,
    /// Where the watch runs and how it went stale (a leaf lock).
    watch: Mutex<WatchState>,
}

/// The watch as `/api/store` shows it.
#[derive(Clone, Debug, Default)]
pub(crate) struct WatchState {
    pub endpoint: Option<String>,
    /// Why the view is stale now; cleared when a watch is open again.
    pub stale: Option<String>,
    /// The last reason, kept.
    pub last_stale: Option<String>,
    pub stale_total: u64,
}

impl Mirror {
    pub fn new(keys: Keys, policy: RecordPolicy, sink: Arc<dyn Sink>) -> Mirror {
        Mirror {
            inner: Mutex::new(Records::default()),
            sink,
            keys,
            policy,
            watching: AtomicBool::new(false),
            live: Mutex::default(),
            ignored: Mutex::default(),
            synced_at: Mutex::default(),
            watch: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Records> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The served record at `key` and its mod revision.
    pub fn get(&self, key: &[u8]) -> Option<(i64, Record)> {
        self.lock().served(key).map(|(rev, r)| (rev, r.clone()))
    }

    /// The mod revision of a record at `key` that is held but set aside
    /// (a registration of that instance overwrites it).
    pub fn set_aside_rev(&self, key: &[u8]) -> Option<i64> {
        self.lock().set_aside_rev(key)
    }

    /// The key and record of instance `id`.
    pub fn by_id(&self, namespace: &str, id: &str) -> Option<(Vec<u8>, i64, Record)> {
        let inner = self.lock();
        let key = inner.key_of(namespace, id)?.clone();
        let (rev, rec) = inner.served(&key)?;
        Some((key.clone(), rev, rec.clone()))
    }

    /// Served instances in `namespace`, in all namespaces, and namespaces known.
    pub fn counts(&self, namespace: &str) -> (usize, usize, usize) {
        self.lock().counts(namespace)
    }

    /// What is set aside, for `/api/store` and the metrics.
    pub fn set_aside(&self) -> SetAside {
        self.lock().set_aside()
    }

    /// Live replica ids, this one included once its key landed.
    pub fn replicas(&self) -> BTreeSet<String> {
        self.live_set().as_ref().clone()
    }

    /// Replica keys without a lease, not counted as replicas.
    pub fn ignored_replicas(&self) -> Vec<String> {
        let ignored = self.ignored.lock().unwrap_or_else(|p| p.into_inner());
        ignored.iter().cloned().collect()
    }

    /// Runs `f` over the live replica ids without copying them.
    pub fn with_replicas<T>(&self, f: impl FnOnce(&BTreeSet<String>) -> T) -> T {
        f(&self.live_set())
    }

    pub(crate) fn watch_state(&self) -> WatchState {
        self.watch.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn change_watch(&self, change: impl FnOnce(&mut WatchState)) {
        change(&mut self.watch.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn mark_synced(&self, at: Instant) {
        let mut synced = self.synced_at.lock().unwrap_or_else(|p| p.into_inner());
        if synced.is_none_or(|t| t < at) {
            *synced = Some(at);
        }
    }

    fn live_set(&self) -> Arc<BTreeSet<String>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Changes the live set; answers what `change` answered.
    fn change_live(&self, change: impl FnOnce(&mut BTreeSet<String>) -> bool) -> bool {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        change(Arc::make_mut(&mut live))
    }

    fn change_ignored(&self, change: impl FnOnce(&mut BTreeSet<String>) -> bool) -> bool {
        change(&mut self.ignored.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// What the record in `kv` is worth: served if valid, else why not.
    fn judge(&self, kv: &KeyValue) -> Result<Record, String> {
        let record: Record =
            serde_json::from_slice(&kv.value).map_err(|e| format!("unreadable record: {e}"))?;
        if self.keys.instance(&record.namespace, &record.authority()) != kv.key {
            return Err(format!(
                "its key does not match its namespace {:?} and {}",
                record.namespace,
                record.authority()
            ));
        }
        self.policy.check(&record)?;
        Ok(record)
    }

    /// Applies this replica's own successful put (its record at `rev`).
    pub fn put_local(&self, key: &[u8], rev: i64, record: Record) {
        let judged = self.policy.check(&record).map(|()| record);
        let mut inner = self.lock();
        if inner.newer(key, rev) {
            // An overwrite keeps the key's create revision; a new key is created at `rev`.
            let create = inner.created(key).unwrap_or(rev);
            inner.put(
                key.to_vec(),
                (rev, create),
                judged,
                &self.policy.caps,
                &*self.sink,
            );
        }
    }

    /// Applies what etcd answered about `key` after a failed compare (or a
    /// read): its current value, or its absence at `rev`.
    pub fn learn(&self, key: &[u8], kv: Option<&KeyValue>, rev: i64) {
        match kv {
            Some(kv) => self.apply_put(kv),
            None => self.apply_delete(key, rev),
        }
    }

    /// Applies this replica's own successful delete of `key` at `rev`.
    pub fn delete_local(&self, key: &[u8], rev: i64) -> Option<Record> {
        let mut inner = self.lock();
        if inner.newer(key, rev) {
            inner.delete(key, rev, &self.policy.caps, &*self.sink)
        } else {
            None
        }
    }

    fn apply_put(&self, kv: &KeyValue) {
        match self.keys.parse(&kv.key) {
            Some(Key::Instance) => {
                let judged = self.judge(kv);
                if let Err(why) = &judged {
                    log::warn!(key:% = String::from_utf8_lossy(&kv.key), reason = why.as_str();
                        "etcd holds an instance record that is not served: set aside");
                }
                let mut inner = self.lock();
                if inner.newer(&kv.key, kv.mod_revision) {
                    inner.put(
                        kv.key.clone(),
                        (kv.mod_revision, kv.create_revision),
                        judged,
                        &self.policy.caps,
                        &*self.sink,
                    );
                }
            }
            Some(Key::Replica(id)) => self.replica_put(id, kv.lease),
            None => {}
        }
    }

    /// A replica key counts only on a lease: a key put without one would
    /// never expire, and the instances hashed to it would never be checked.
    fn replica_put(&self, id: String, lease: i64) {
        if lease == 0 {
            let left = self.change_live(|live| live.remove(&id));
            if self.change_ignored(|ignored| ignored.insert(id.clone())) || left {
                log::warn!(replica = id.as_str();
                    "a replica key without a lease: not counted as a replica");
            }
            return;
        }
        self.change_ignored(|ignored| ignored.remove(&id));
        if self.change_live(|live| live.insert(id.clone())) {
            log::info!(replica = id.as_str(); "replica joined");
        }
    }

    fn apply_delete(&self, key: &[u8], rev: i64) {
        match self.keys.parse(key) {
            Some(Key::Instance) => {
                let mut inner = self.lock();
                if inner.newer(key, rev) {
                    inner.delete(key, rev, &self.policy.caps, &*self.sink);
                }
            }
            Some(Key::Replica(id)) => {
                self.change_ignored(|ignored| ignored.remove(&id));
                if self.change_live(|live| live.remove(&id)) {
                    log::info!(replica = id.as_str(); "replica left: its checks move to the others");
                }
            }
            None => {}
        }
    }

    /// Replaces the mirror with a full read at `revision`, keeping this
    /// replica's own writes that are newer than it.
    fn reset(&self, revision: i64, kvs: Vec<KeyValue>) {
        let mut fresh = Records::at(revision);
        let (mut live, mut ignored) = (BTreeSet::new(), BTreeSet::new());
        let (null, caps) = (NullSink, &self.policy.caps);
        let mut valid = Vec::new();
        for kv in kvs {
            match self.keys.parse(&kv.key) {
                Some(Key::Instance) => match self.judge(&kv) {
                    // Oldest first, as the watch would have brought them: every
                    // replica serves the same ones, and none needs a regroup.
                    Ok(record) => valid.push((kv.create_revision, kv.key, kv.mod_revision, record)),
                    Err(why) => {
                        log::warn!(key:% = String::from_utf8_lossy(&kv.key), reason = why.as_str();
                            "etcd holds an instance record that is not served: set aside");
                        fresh.put(
                            kv.key,
                            (kv.mod_revision, kv.create_revision),
                            Err(why),
                            caps,
                            &null,
                        );
                    }
                },
                Some(Key::Replica(id)) if kv.lease != 0 => {
                    live.insert(id);
                }
                Some(Key::Replica(id)) => {
                    ignored.insert(id);
                }
                None => {}
            }
        }
        valid.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (create, key, rev, record) in valid {
            fresh.put(key, (rev, create), Ok(record), caps, &null);
        }
        let mut inner = self.lock();
        for (key, entry) in inner.entries() {
            if entry.rev > revision && fresh.newer(key, entry.rev) {
                fresh.put_entry(key.clone(), entry, caps, &null);
            }
        }
        let dead: Vec<(Vec<u8>, i64)> = inner
            .tombstones
            .iter()
            .filter(|(_, rev)| **rev > revision)
            .map(|(k, r)| (k.clone(), *r))
            .collect();
        for (key, rev) in dead {
            fresh.delete(&key, rev, caps, &null);
        }
        let records = fresh.served_records();
        *inner = fresh;
        self.sink.reset(records);
        drop(inner);
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(live);
        *self.ignored.lock().unwrap_or_else(|p| p.into_inner()) = ignored;
        self.mark_synced(Instant::now());
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
        self.mark_synced(Instant::now());
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
    /// it breaks or goes stale, the prefix read again when the watch's
    /// revision was compacted.
    pub async fn follow(self: Arc<Self>, client: Arc<Client>, stop: Trigger) {
        use futures_lite::FutureExt;
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        let mut reload = false;
        while !stop.is_fired() {
            let ended = self
                .follow_once(&client, &mut reload, &mut backoff)
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
                    self.change_watch(|w| {
                        w.stale
                            .get_or_insert_with(|| format!("etcd watch down: {why}"));
                    });
                }
            }
            let pause = backoff.next_delay();
            async_std::task::sleep(pause).or(stop.wait()).await;
        }
    }

    /// Opens one watch and follows it, probing its member, until either fails.
    async fn follow_once(
        &self,
        client: &Client,
        reload: &mut bool,
        backoff: &mut Backoff,
    ) -> client::Result<()> {
        use futures_lite::FutureExt;
        if *reload {
            let rev = self.load(client).await?;
            log::info!(revision = rev; "etcd read again: mirror replaced");
            *reload = false;
        }
        let from = self.lock().revision + 1;
        let end = prefix_end(self.keys.root());
        let mut watch = client.watch(self.keys.root(), &end, from).await?;
        let endpoint = watch.endpoint.clone();
        self.watching.store(true, Ordering::Relaxed);
        self.change_watch(|w| {
            w.endpoint = Some(endpoint.clone());
            w.stale = None;
        });
        log::info!(endpoint = endpoint.as_str(), from = from; "etcd watch open");
        self.events(client, &mut watch, reload, backoff)
            .or(self.probe(client, &endpoint))
            .await
    }

    /// Applies the watch's events until it breaks or is canceled.
    async fn events(
        &self,
        client: &Client,
        watch: &mut client::Watch,
        reload: &mut bool,
        backoff: &mut Backoff,
    ) -> client::Result<()> {
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
                    log::warn!(compact_revision = res.compact_revision;
                        "etcd compacted past the mirror: reading everything again");
                    *reload = true;
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
    }

    /// Asks the watch's member, every [`PROBE_EVERY`], for the newest mod
    /// revision under the prefix; fails (the view is stale) when it does not
    /// answer within [`PROBE_DEADLINE`], or when the watch has still not
    /// delivered what the previous probe saw. Each good probe proves the
    /// mirror current as of when it was sent.
    async fn probe(&self, client: &Client, endpoint: &str) -> client::Result<()> {
        let newest = RangeRequest {
            key: self.keys.root().to_vec(),
            range_end: prefix_end(self.keys.root()),
            limit: 1,
            sort_order: Some("DESCEND"),
            sort_target: Some("MOD"),
            keys_only: true,
            ..Default::default()
        };
        let mut undelivered: Option<i64> = None;
        loop {
            async_std::task::sleep(PROBE_EVERY).await;
            let asked = Instant::now();
            let res = match client.range_on(endpoint, &newest, PROBE_DEADLINE).await {
                Ok(res) => res,
                Err(e) => {
                    let why = format!("etcd member {endpoint} did not answer a read: {e}");
                    return Err(self.went_stale(client, endpoint, why));
                }
            };
            let seen = res.kvs.first().map_or(0, |kv| kv.mod_revision);
            let have = self.lock().revision;
            if seen <= have {
                undelivered = None;
                self.mark_synced(asked);
                continue;
            }
            match undelivered {
                Some(rev) if have < rev => {
                    let why = format!(
                        "the watch on {endpoint} has not delivered revision {rev} \
                         within {PROBE_EVERY:?} (it is at {have})"
                    );
                    return Err(self.went_stale(client, endpoint, why));
                }
                _ => undelivered = Some(seen),
            }
        }
    }

    /// Records that the view went stale on `endpoint` and stops preferring it.
    fn went_stale(&self, client: &Client, endpoint: &str, why: String) -> client::Error {
        log::warn!(endpoint = endpoint, reason = why.as_str();
            "etcd watch stale: this replica's view is not current, moving to another member");
        client.demote(endpoint);
        self.watching.store(false, Ordering::Relaxed);
        let at = crate::store::now_unix_ms();
        self.change_watch(|w| {
            w.stale = Some(why.clone());
            w.last_stale = Some(format!("{why} (at unix ms {at})"));
            w.stale_total += 1;
        });
        client::Error::Unavailable(why)
    }
}

/// A sink that drops everything: for building a fresh mirror before it replaces the old one.
struct NullSink;

impl Sink for NullSink {
    fn put(&self, _: Record) {}
    fn remove(&self, _: &str, _: &str) {}
    fn reset(&self, _: Vec<Record>) {}
}
