//! The store: where registrations live durably, behind one trait so discovery
//! can keep them in memory (one process, the default; [`MemoryStore`], here)
//! or in etcd (several replicas sharing one registry; `crate::etcd`, beside
//! this module and built on it). Which one runs is chosen where discovery
//! starts (`open_store` in lib.rs), from `config.store`: nothing here names
//! an implementation but the memory one.
//!
//! # The contract
//!
//! A store owns the *durable* part of each instance, a [`Record`]: who it is
//! (namespace, host, port, a stable id), where it is checked, its status and
//! since when, and its maintenance state. It does **not** own the health
//! state machine (consecutive results, thresholds, when the next check is
//! due), the round-robin cursor, the per-namespace versions pushed to
//! watchers, or the watch hub: those live in discovery's core
//! ([`crate::registry`]), which is the same whatever the store.
//!
//! **Reads never reach the store.** The core keeps a local in-memory mirror
//! (lookups, `/api/watch` snapshots, `/api/services`, the dashboard and the
//! metrics read it), and the store *feeds* that mirror through the [`Sink`]
//! it is opened with: every change the store accepts, from this process
//! or from another replica (etcd's watch), is pushed as [`Sink::put`] /
//! [`Sink::remove`], and a full reload (start-up, a compacted watch) as
//! [`Sink::reset`]. A write method must have pushed its own change into the
//! sink **before** its future completes (read-your-writes: a register
//! followed at once by a lookup sees the instance). Pushing the same record
//! twice (once from the write, again from the watch) is harmless: the core
//! compares and ignores what did not change. Sink calls are synchronous,
//! cheap, never block on I/O, and may come from any task.
//!
//! **Writes are few.** The core calls the store only when durable state
//! changes: a new registration (a renewal of an unchanged instance is served
//! from the mirror without a write), a deregistration, a status *flip* (not
//! every check), an expiry, a maintenance change.
//!
//! **Identity.** An instance is keyed by namespace and `host:port`
//! (host normalized). Its id is made by the store when the key is first
//! created and is then the same whichever replica serves it (etcd: create the
//! key in a transaction, `create_revision == 0`, else read the existing id).
//! Renewing an existing key keeps its id, status, `since` and maintenance; it
//! only updates `health_check_path` and `weight`.
//!
//! **Compare-and-swap.** [`Store::set_status`] and [`Store::expire`] name the
//! state they expect; when the stored record no longer matches (another
//! replica flipped it, the app re-registered), they change nothing and answer
//! `Ok(false)` / `Ok(None)`. The core then waits for the sink to bring the
//! newer state.
//!
//! **Who checks what.** Every replica schedules every instance, but the
//! checker asks [`Store::owns`] before each check and only checks the
//! instances it owns (memory: all of them; etcd: hashing over live replicas,
//! or the leader). It must be cheap and non-blocking: it is called with the
//! mirror's lock held, so it must not take a lock the store holds while it
//! calls the sink (the lock order is: the store's, then the mirror's).
//!
//! **Unreachable store.** Writes answer [`StoreError::Unavailable`] (the API
//! answers 503, nothing changes); reads go on from the mirror (static
//! stability); [`Store::health`] says so for `/metrics` and the dashboard.
//!
//! Durable fields a remote store serialises are exactly [`Record`]'s (serde).

mod cluster;
mod memory;

pub use cluster::{ListedReplica, MemberHealth, StoreCluster};
pub use memory::MemoryStore;

use crate::access::AllowedHosts;
use serde::{Deserialize, Serialize};
use shared::wire::{authority, InstanceStatus, MaintenanceAnswer, Port, Registration};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed future borrowing the store, so the trait stays object safe.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The durable part of an instance: what every replica agrees on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Made by the store at creation; the same on every replica.
    pub id: String,
    pub namespace: String,
    /// Normalized (see `shared::wire::normalize_host`): the key with `port`.
    pub host: String,
    pub port: Port,
    pub health_check_path: String,
    /// Its share under weighted round robin (1..=1000); left out of the
    /// stored JSON when 1, so records written before weights read the same.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub weight: u32,
    pub status: InstanceStatus,
    /// Unix milliseconds when it entered `status` (registration time while pending).
    pub since_unix_ms: u64,
    /// Unix milliseconds since when it is in maintenance; `None` when it is not.
    /// An instance in maintenance is never routed to, and stays in maintenance
    /// across re-registrations until lifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_since_unix_ms: Option<u64>,
}

fn one() -> u32 {
    1
}

fn is_one(w: &u32) -> bool {
    *w == 1
}

impl Record {
    /// What a renewal may change (the health-check path and the weight),
    /// taken from `new`; `None` when they are already as `new` says.
    pub fn renewed(&self, new: &NewInstance) -> Option<Record> {
        (self.health_check_path != new.health_check_path || self.weight != new.weight).then(|| {
            Record {
                health_check_path: new.health_check_path.clone(),
                weight: new.weight,
                ..self.clone()
            }
        })
    }

    /// `host:port`, the key within the namespace.
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }

    /// Available and not in maintenance: what lookups answer and watchers get.
    pub fn routable(&self) -> bool {
        self.status == InstanceStatus::Available && self.maintenance_since_unix_ms.is_none()
    }

    /// The answer to register and deregister.
    pub fn registration(&self) -> Registration {
        Registration {
            id: self.id.clone(),
            namespace: self.namespace.clone(),
            host: self.host.clone(),
            port: self.port,
            status: self.status,
        }
    }

    /// The answer to a maintenance change.
    pub fn maintenance(&self) -> MaintenanceAnswer {
        MaintenanceAnswer {
            id: self.id.clone(),
            namespace: self.namespace.clone(),
            host: self.host.clone(),
            port: self.port,
            status: self.status,
            maintenance: self.maintenance_since_unix_ms.is_some(),
            maintenance_since_unix_ms: self.maintenance_since_unix_ms,
        }
    }
}

/// A registration as the core asks the store to create or renew it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewInstance {
    pub namespace: String,
    pub host: String,
    pub port: Port,
    pub health_check_path: String,
    pub weight: u32,
    /// Now, in Unix milliseconds: `since_unix_ms` of a created record.
    pub now_unix_ms: u64,
}

/// Caps on new registrations (renewals always pass).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    pub max_instances: usize,
    pub max_instances_per_namespace: usize,
}

/// What [`Store::register`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registered {
    /// The record as stored after the call.
    pub record: Record,
    /// False when the key existed (same id kept, status and maintenance kept).
    pub created: bool,
}

/// Why a write was not made. Nothing changed in either case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// A cap is reached (answered 429); the message names it.
    Full(String),
    /// The store cannot be reached or refused the write (answered 503).
    Unavailable(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Full(m) | StoreError::Unavailable(m) => f.write_str(m),
        }
    }
}

/// How the store is doing, for `/metrics`, `/api/store` and the dashboard.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StoreHealth {
    /// `"memory"` or `"etcd"`.
    pub backend: &'static str,
    /// False while this replica cannot trust its view: etcd away, or the
    /// watch stale (reads go on from the mirror).
    pub reachable: bool,
    /// False while writes cannot be made: unreachable, an etcd alarm
    /// (`NOSPACE`), or the last write failed.
    pub writable: bool,
    /// Why it is unreachable, or other detail worth showing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Why the view is stale now (the watch is being moved to another member).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale: Option<String>,
    /// The last time the view went stale, and why (kept after it recovered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_stale: Option<String>,
    /// How many times the view went stale since start.
    pub stale_total: u64,
    /// The member the watch reads from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch_endpoint: Option<String>,
    /// Why writes cannot be made (an alarm, or the last write's error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_error: Option<String>,
    /// Live replicas (their keys on a lease), this one included once its key landed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    /// Keys under the replicas prefix that are not replicas (no lease).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored_replica_keys: Vec<String>,
    /// Records found in the store but not served (see [`SetAside`]).
    pub set_aside: SetAside,
}

/// Records in the store that this replica does not serve: unreadable or
/// outside the registration policy (`invalid`), or beyond a cap (`over_cap`).
/// Every replica sets aside the same ones, whatever order they arrived in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SetAside {
    pub invalid: usize,
    pub over_cap: usize,
    /// The first of them by key (at most [`SET_ASIDE_SHOWN`]), with why.
    pub records: Vec<SetAsideRecord>,
}

/// How many set-aside records `/api/store` names.
pub const SET_ASIDE_SHOWN: usize = 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SetAsideRecord {
    pub key: String,
    pub reason: String,
}

/// What a record arriving from a shared store must satisfy to be served:
/// the same rules a registration passes (strict fields, `allowed_hosts`),
/// checked on every replica alike. A host name is resolved at every health
/// check (a name that resolves outside `allowed_hosts` is never checked
/// healthy); an IP literal is held to `allowed_hosts` here, before any
/// gateway can learn it.
#[derive(Clone, Debug)]
pub struct RecordPolicy {
    pub allowed: Arc<AllowedHosts>,
    pub caps: Caps,
}

impl RecordPolicy {
    /// `Ok` if `record` may be served, else why not.
    pub fn check(&self, record: &Record) -> Result<(), String> {
        shared::wire::validate_namespace(&record.namespace)
            .map_err(|e| format!("namespace: {e}"))?;
        match shared::wire::normalize_host(&record.host) {
            Ok(host) if host == record.host => {}
            Ok(host) => {
                return Err(format!(
                    "host {:?} is not normalized ({host:?})",
                    record.host
                ))
            }
            Err(e) => return Err(format!("host: {e}")),
        }
        if record.port.0 == 0 {
            return Err("port 0".into());
        }
        shared::wire::validate_path(&record.health_check_path)
            .map_err(|e| format!("health_check_path: {e}"))?;
        if !(1..=shared::wire::MAX_WEIGHT).contains(&record.weight) {
            return Err(format!("weight {} is not 1 to 1000", record.weight));
        }
        if record.id.is_empty() || record.id.len() > 64 {
            return Err("id must be 1 to 64 characters".into());
        }
        let bare = record.host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
            self.allowed
                .check(ip)
                .map_err(|e| format!("host not allowed: {e}"))?;
        }
        Ok(())
    }
}

/// Where a store pushes every change it accepts or learns of: the core's mirror.
///
/// Implemented by [`crate::mirror::Mirror`]. Every call is synchronous and
/// cheap (one lock, no I/O) and idempotent.
pub trait Sink: Send + Sync {
    /// An instance was created or changed (here or on another replica).
    fn put(&self, record: Record);
    /// An instance is gone (deregistered or expired, here or elsewhere).
    fn remove(&self, namespace: &str, id: &str);
    /// The store's whole content after a (re)load: every instance not in
    /// `records` is gone, every one in it is put.
    fn reset(&self, records: Vec<Record>);
}

/// Durable registrations. See the module documentation for the contract.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Creates the instance keyed by namespace and `host:port`, or renews it
    /// (keeps id, status, since and maintenance; sets `health_check_path` and `weight`).
    /// A new instance starts `pending`, not in maintenance. Beyond `caps`, a
    /// new instance is refused with [`StoreError::Full`].
    fn register(
        &self,
        new: NewInstance,
        caps: Caps,
    ) -> StoreFuture<'_, Result<Registered, StoreError>>;

    /// Removes the instance at `host:port`; `Ok(None)` if there was none.
    fn deregister<'a>(
        &'a self,
        namespace: &'a str,
        host: &'a str,
        port: Port,
    ) -> StoreFuture<'a, Result<Option<Record>, StoreError>>;

    /// Compare-and-swap of a status flip: sets `status` (and `since_unix_ms`)
    /// if the instance `id` still has status `expected`; `Ok(false)` if it is
    /// gone or its status is no longer `expected` (nothing written).
    fn set_status<'a>(
        &'a self,
        namespace: &'a str,
        id: &'a str,
        expected: InstanceStatus,
        status: InstanceStatus,
        since_unix_ms: u64,
    ) -> StoreFuture<'a, Result<bool, StoreError>>;

    /// Removes instance `id` if it is still unavailable since `since_unix_ms`
    /// (dropped for being unavailable past `deregister_after`); `Ok(None)`
    /// if it changed meanwhile (nothing written).
    fn expire<'a>(
        &'a self,
        namespace: &'a str,
        id: &'a str,
        since_unix_ms: u64,
    ) -> StoreFuture<'a, Result<Option<Record>, StoreError>>;

    /// Puts the instance at `host:port` in maintenance since `since_unix_ms`
    /// (`Some`; one already in maintenance keeps its original time) or lifts
    /// it (`None`). `Ok(None)` if there is no such instance.
    fn set_maintenance<'a>(
        &'a self,
        namespace: &'a str,
        host: &'a str,
        port: Port,
        since_unix_ms: Option<u64>,
    ) -> StoreFuture<'a, Result<Option<Record>, StoreError>>;

    /// Whether this replica health-checks instance `id`. Cheap, non-blocking.
    fn owns(&self, _namespace: &str, _id: &str) -> bool {
        true
    }

    /// Reachability and detail for `/metrics` and the dashboard.
    fn health(&self) -> StoreHealth;

    /// The replicas the store lists and how its members answer, for the
    /// console's cluster view (memory: nothing to list).
    fn cluster(&self) -> StoreFuture<'_, StoreCluster> {
        Box::pin(async { StoreCluster::default() })
    }

    /// How stale this replica's mirror may be: the time since it was last
    /// known to be in step with the store (`None`: always in step, as memory is).
    fn mirror_age(&self) -> Option<std::time::Duration> {
        None
    }

    /// Lets go of what the store holds (etcd: its lease, so the other replicas
    /// take its checks at once). Called once at shutdown.
    fn close(&self) -> StoreFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Unix time now in milliseconds.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
