//! [`Store`] on etcd: several replicas share one registry.
//!
//! Writes go to etcd as transactions guarded by the key's revision
//! (compare-and-swap), and each one that succeeds is applied to this
//! replica's mirror at once (read-your-writes); the mirror's one watch brings
//! the other replicas' writes. Reads never reach etcd. When etcd cannot be
//! reached, writes answer `Unavailable` (503, nothing changed) and the mirror
//! keeps serving.

use super::client::{
    self, Client, Compare, DeleteRangeRequest, Op, PutRequest, RangeRequest, TxnRequest,
};
use super::keys::Keys;
use super::mirror::Mirror;
use super::owners;
use super::presence::{self, Presence};
use crate::store::{
    Caps, NewInstance, Record, RecordPolicy, Registered, Sink, Store, StoreError, StoreFuture,
    StoreHealth,
};
use async_std::task::JoinHandle;
use shared::panics::{supervise, Panics};
use shared::shutdown::Trigger;
use shared::wire::{authority, InstanceStatus, Port};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Deadline of one etcd call on one member.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// How long start-up waits for etcd to answer the first read.
const OPEN_DEADLINE: Duration = Duration::from_secs(10);

/// Compare-and-swap retries of a read-modify-write before giving up.
const CAS_TRIES: usize = 5;

/// The etcd store of one replica.
pub struct EtcdStore {
    client: Arc<Client>,
    keys: Keys,
    mirror: Arc<Mirror>,
    replica_id: String,
    presence: Arc<Presence>,
    stop: Trigger,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.client.endpoints())
            .field("replica_id", &self.replica_id)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: client::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn encode(record: &Record) -> Vec<u8> {
    // A Record is plain data: serialising it cannot fail.
    serde_json::to_vec(record).unwrap_or_default()
}

/// Where and how a replica opens its etcd store.
#[derive(Clone, Debug)]
pub struct Options<'a> {
    /// `host:port` of each member.
    pub endpoints: &'a [String],
    pub prefix: &'a str,
    pub replica_id: Option<String>,
    pub advertise_url: Option<String>,
    /// What a record found in etcd must satisfy to be served.
    pub policy: RecordPolicy,
}

impl EtcdStore {
    /// Connects, reads the whole registry into `sink`, then starts the
    /// watch and the replica's presence. Fails if no member answers the read.
    pub async fn open(
        options: Options<'_>,
        sink: Arc<dyn Sink>,
        panics: &Panics,
    ) -> Result<Arc<EtcdStore>, String> {
        let Options {
            endpoints,
            prefix,
            replica_id,
            advertise_url,
            policy,
        } = options;
        let client = Arc::new(Client::new(endpoints, CALL_TIMEOUT).map_err(|e| e.to_string())?);
        let keys = Keys::new(prefix);
        let mirror = Arc::new(Mirror::new(keys.clone(), policy, sink));
        // An etcd cluster electing a leader answers within seconds: wait that long, then say why not.
        let mut backoff =
            shared::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let deadline = std::time::Instant::now() + OPEN_DEADLINE;
        let revision = loop {
            match mirror.load(&client).await {
                Ok(revision) => break revision,
                Err(e) if std::time::Instant::now() >= deadline => {
                    return Err(format!(
                        "store etcd://{}/{prefix}: cannot read the registry: {e}",
                        endpoints.join(",")
                    ))
                }
                Err(e) => {
                    log::warn!("etcd not ready, retrying: {e}");
                    async_std::task::sleep(backoff.next_delay()).await;
                }
            }
        };
        let replica_id = replica_id
            .unwrap_or_else(|| format!("r{}-{:08x}", std::process::id(), fastrand::u32(..)));
        let presence = Arc::new(Presence::default());
        let stop = Trigger::new();
        let follow = {
            let (mirror, client, stop) = (mirror.clone(), client.clone(), stop.clone());
            async_std::task::spawn(supervise(panics.clone(), "etcd mirror", move || {
                mirror.clone().follow(client.clone(), stop.clone())
            }))
        };
        let hold = {
            let (client, mirror, keys, stop) =
                (client.clone(), mirror.clone(), keys.clone(), stop.clone());
            let (id, url, presence) = (replica_id.clone(), advertise_url, presence.clone());
            async_std::task::spawn(supervise(panics.clone(), "etcd presence", move || {
                presence::hold(
                    client.clone(),
                    mirror.clone(),
                    keys.clone(),
                    id.clone(),
                    url.clone(),
                    presence.clone(),
                    stop.clone(),
                )
            }))
        };
        log::info!(replica = replica_id.as_str(), revision = revision, endpoints:? = endpoints;
            "etcd store open: registry read");
        Ok(Arc::new(EtcdStore {
            client,
            keys,
            mirror,
            replica_id,
            presence,
            stop,
            tasks: Mutex::new(vec![follow, hold]),
        }))
    }

    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// Whether etcd answers and the mirror's watch is open.
    pub fn connected(&self) -> bool {
        self.presence.connected.load(Ordering::Relaxed) && self.mirror.watching()
    }

    /// Live replica ids as this replica's mirror sees them.
    pub fn replicas(&self) -> Vec<String> {
        self.mirror.replicas().into_iter().collect()
    }

    /// The current value of `key` in etcd, applied to the mirror.
    async fn read(&self, key: &[u8]) -> client::Result<Option<(i64, Record)>> {
        let res = self
            .client
            .range(&RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })
            .await?;
        self.mirror.learn(key, res.kvs.first(), res.header.revision);
        Ok(self.mirror.get(key))
    }

    /// Writes `next` over `key` if it still is at revision `rev`; on a
    /// conflict, learns the current value. True if written.
    async fn swap(&self, key: &[u8], rev: i64, next: &Record) -> client::Result<bool> {
        let res = self
            .write(&TxnRequest {
                compare: vec![Compare::mod_revision(key, rev)],
                success: vec![Op::Put(PutRequest {
                    key: key.to_vec(),
                    value: encode(next),
                    lease: 0,
                })],
                failure: vec![Op::Range(RangeRequest {
                    key: key.to_vec(),
                    ..Default::default()
                })],
            })
            .await?;
        if res.succeeded {
            self.mirror
                .put_local(key, res.header.revision, next.clone());
        } else {
            self.mirror
                .learn(key, res.ranged().next(), res.header.revision);
        }
        Ok(res.succeeded)
    }

    /// Read-modify-write of the record at `key` with compare-and-swap:
    /// `change` answers the record to write, or `None` to leave it.
    /// `Ok(None)` if there is no record.
    async fn update(
        &self,
        key: &[u8],
        change: impl Fn(&Record) -> Option<Record>,
    ) -> client::Result<Option<Record>> {
        let mut current = self.mirror.get(key);
        for _ in 0..CAS_TRIES {
            let Some((rev, record)) = current else {
                // Not in the mirror: make sure it is not in etcd either.
                match self.read(key).await? {
                    Some(found) => {
                        current = Some(found);
                        continue;
                    }
                    None => return Ok(None),
                }
            };
            let Some(next) = change(&record) else {
                return Ok(Some(record));
            };
            if self.swap(key, rev, &next).await? {
                return Ok(Some(next));
            }
            current = self.mirror.get(key);
            if current.is_none() {
                return Ok(None);
            }
        }
        Err(client::Error::Unavailable(format!(
            "{} concurrent writes to {} in a row",
            CAS_TRIES,
            String::from_utf8_lossy(key)
        )))
    }

    async fn register_now(&self, new: NewInstance, caps: Caps) -> Result<Registered, StoreError> {
        let key = self
            .keys
            .instance(&new.namespace, &authority(&new.host, new.port));
        let renew = |r: &Record| r.renewed(&new);
        if self.mirror.get(&key).is_some() {
            let record = self.update(&key, renew).await.map_err(unavailable)?;
            if let Some(record) = record {
                return Ok(Registered {
                    record,
                    created: false,
                });
            }
        }
        // Caps are counted on this replica's mirror: exact on one replica,
        // off by the registrations in flight elsewhere on several.
        let (in_namespace, total, namespaces) = self.mirror.counts(&new.namespace);
        let namespace = new.namespace.as_str();
        if in_namespace >= caps.max_instances_per_namespace {
            return Err(StoreError::Full(format!(
                "namespace {namespace:?} already has {in_namespace} instances \
                 (max_instances_per_namespace)"
            )));
        }
        if total >= caps.max_instances {
            return Err(StoreError::Full(format!(
                "discovery already has {total} instances (max_instances)"
            )));
        }
        if in_namespace == 0 && namespaces >= caps.max_instances {
            return Err(StoreError::Full(format!(
                "discovery already knows {namespaces} namespaces (max_instances)"
            )));
        }
        let record = Record {
            id: format!("{:016x}", fastrand::u64(..)),
            namespace: new.namespace.clone(),
            host: new.host.clone(),
            port: new.port,
            health_check_path: new.health_check_path.clone(),
            weight: new.weight,
            status: InstanceStatus::Pending,
            since_unix_ms: new.now_unix_ms,
            maintenance_since_unix_ms: None,
        };
        self.create(&key, record, renew).await
    }

    /// Creates the record at `key`: where the key is absent, or over a record
    /// set aside there (unreadable, out of policy or over a cap: a fresh
    /// registration of the instance replaces it, on whichever replica it
    /// arrives). Where a served record appeared meanwhile, renews that one.
    async fn create(
        &self,
        key: &[u8],
        record: Record,
        renew: impl Fn(&Record) -> Option<Record>,
    ) -> Result<Registered, StoreError> {
        for _ in 0..CAS_TRIES {
            let compare = match self.mirror.set_aside_rev(key) {
                Some(rev) => Compare::mod_revision(key, rev),
                None => Compare::absent(key),
            };
            let res = self
                .write(&TxnRequest {
                    compare: vec![compare],
                    success: vec![Op::Put(PutRequest {
                        key: key.to_vec(),
                        value: encode(&record),
                        lease: 0,
                    })],
                    failure: vec![Op::Range(RangeRequest {
                        key: key.to_vec(),
                        ..Default::default()
                    })],
                })
                .await
                .map_err(unavailable)?;
            if res.succeeded {
                self.mirror
                    .put_local(key, res.header.revision, record.clone());
                return Ok(Registered {
                    record,
                    created: true,
                });
            }
            self.mirror
                .learn(key, res.ranged().next(), res.header.revision);
            if self.mirror.get(key).is_some() {
                // Made meanwhile by another registration: the id is the one it made.
                return match self.update(key, &renew).await.map_err(unavailable)? {
                    Some(record) => Ok(Registered {
                        record,
                        created: false,
                    }),
                    None => Err(StoreError::Unavailable(
                        "the instance was removed while it registered; retry".into(),
                    )),
                };
            }
            // Absent or set aside as learnt just now: try again against that.
        }
        Err(StoreError::Unavailable(format!(
            "{CAS_TRIES} concurrent writes to {} in a row; retry",
            String::from_utf8_lossy(key)
        )))
    }

    /// A transaction that writes: its outcome says whether etcd takes writes.
    async fn write(&self, txn: &TxnRequest) -> client::Result<client::TxnResponse> {
        let res = self.client.txn(txn).await;
        self.presence.wrote(&res);
        res
    }

    async fn deregister_now(
        &self,
        namespace: &str,
        host: &str,
        port: Port,
    ) -> Result<Option<Record>, StoreError> {
        let key = self.keys.instance(namespace, &authority(host, port));
        let res = self
            .client
            .delete(&DeleteRangeRequest {
                key: key.clone(),
                range_end: Vec::new(),
                prev_kv: true,
            })
            .await;
        self.presence.wrote(&res);
        let res = res.map_err(unavailable)?;
        let held = self.mirror.delete_local(&key, res.header.revision);
        let stored = res
            .prev_kvs
            .first()
            .and_then(|kv| serde_json::from_slice::<Record>(&kv.value).ok());
        Ok(stored.or(held))
    }

    async fn set_status_now(
        &self,
        namespace: &str,
        id: &str,
        expected: InstanceStatus,
        status: InstanceStatus,
        since_unix_ms: u64,
    ) -> Result<bool, StoreError> {
        let Some((key, rev, record)) = self.mirror.by_id(namespace, id) else {
            return Ok(false);
        };
        if record.status != expected {
            return Ok(false);
        }
        let next = Record {
            status,
            since_unix_ms,
            ..record
        };
        self.swap(&key, rev, &next).await.map_err(unavailable)
    }

    async fn expire_now(
        &self,
        namespace: &str,
        id: &str,
        since_unix_ms: u64,
    ) -> Result<Option<Record>, StoreError> {
        let Some((key, rev, record)) = self.mirror.by_id(namespace, id) else {
            return Ok(None);
        };
        if record.status != InstanceStatus::Unavailable || record.since_unix_ms != since_unix_ms {
            return Ok(None);
        }
        let res = self
            .write(&TxnRequest {
                compare: vec![Compare::mod_revision(&key, rev)],
                success: vec![Op::Delete(DeleteRangeRequest {
                    key: key.clone(),
                    ..Default::default()
                })],
                failure: vec![Op::Range(RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                })],
            })
            .await
            .map_err(unavailable)?;
        if res.succeeded {
            self.mirror.delete_local(&key, res.header.revision);
            Ok(Some(record))
        } else {
            self.mirror
                .learn(&key, res.ranged().next(), res.header.revision);
            Ok(None)
        }
    }
}

impl Store for EtcdStore {
    fn register(
        &self,
        new: NewInstance,
        caps: Caps,
    ) -> StoreFuture<'_, Result<Registered, StoreError>> {
        Box::pin(self.register_now(new, caps))
    }

    fn deregister<'a>(
        &'a self,
        namespace: &'a str,
        host: &'a str,
        port: Port,
    ) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        Box::pin(self.deregister_now(namespace, host, port))
    }

    fn set_status<'a>(
        &'a self,
        namespace: &'a str,
        id: &'a str,
        expected: InstanceStatus,
        status: InstanceStatus,
        since_unix_ms: u64,
    ) -> StoreFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.set_status_now(namespace, id, expected, status, since_unix_ms))
    }

    fn expire<'a>(
        &'a self,
        namespace: &'a str,
        id: &'a str,
        since_unix_ms: u64,
    ) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        Box::pin(self.expire_now(namespace, id, since_unix_ms))
    }

    fn set_maintenance<'a>(
        &'a self,
        namespace: &'a str,
        host: &'a str,
        port: Port,
        since_unix_ms: Option<u64>,
    ) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        Box::pin(async move {
            let key = self.keys.instance(namespace, &authority(host, port));
            self.update(&key, |r| {
                match (r.maintenance_since_unix_ms, since_unix_ms) {
                    (Some(_), Some(_)) | (None, None) => None,
                    (_, since) => Some(Record {
                        maintenance_since_unix_ms: since,
                        ..r.clone()
                    }),
                }
            })
            .await
            .map_err(unavailable)
        })
    }

    fn owns(&self, _namespace: &str, id: &str) -> bool {
        let me = self.replica_id.as_str();
        self.mirror.with_replicas(|live| {
            // Until its own key shows in the mirror, a replica counts itself in.
            let me_too = (!live.contains(me)).then_some(me);
            owners::owner(live.iter().map(String::as_str).chain(me_too), id) == Some(me)
        })
    }

    fn health(&self) -> StoreHealth {
        let age = self.mirror.age().unwrap_or_default();
        let watch = self.mirror.watch_state();
        let reachable = self.connected();
        let write_error = self.presence.write_trouble();
        StoreHealth {
            backend: "etcd",
            reachable,
            writable: reachable && write_error.is_none(),
            detail: Some(format!(
                "replica {}, {} live replica(s), mirror age {} ms, endpoints {}",
                self.replica_id,
                self.mirror.with_replicas(|r| r.len()),
                age.as_millis(),
                self.client.endpoints().join(",")
            )),
            stale: watch.stale.filter(|_| !self.mirror.watching()),
            last_stale: watch.last_stale,
            stale_total: watch.stale_total,
            watch_endpoint: watch.endpoint,
            write_error,
            replicas: self.replicas(),
            ignored_replica_keys: self.mirror.ignored_replicas(),
            set_aside: self.mirror.set_aside(),
        }
    }

    fn cluster(&self) -> StoreFuture<'_, crate::store::StoreCluster> {
        Box::pin(super::cluster::view(
            &self.client,
            &self.keys,
            &self.replica_id,
        ))
    }

    fn mirror_age(&self) -> Option<Duration> {
        // Touched by every watch event and every keep-alive: about a second at most while connected.
        self.mirror.age()
    }

    fn close(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.stop.fire();
            let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
            for task in tasks {
                task.await;
            }
            // Revoking the lease drops the replica key now: the others take its checks at once.
            let lease = self.presence.lease.swap(0, Ordering::Relaxed);
            if lease != 0 {
                // Bounded: with etcd away, the lease simply expires within its TTL.
                let revoke = async_std::future::timeout(CALL_TIMEOUT, self.client.revoke(lease));
                match revoke.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => log::warn!(replica = self.replica_id.as_str();
                        "could not revoke the replica lease (it expires within its TTL): {e}"),
                    Err(_) => log::warn!(replica = self.replica_id.as_str();
                        "etcd did not answer the lease revoke in time (it expires within its TTL)"),
                }
            }
        })
    }
}
