//! The memory store: registrations in this process only, lost when it stops
//! (apps re-register, so a restarted discovery relearns them). The default.
//!
//! Its map is authoritative for writes (ids, caps, compare-and-swap) and every
//! accepted change is pushed to the sink before the call returns, so the
//! core's mirror is always in step with it.

use super::{
    Caps, NewInstance, Record, Registered, Sink, Store, StoreError, StoreFuture, StoreHealth,
};
use shared::wire::{InstanceStatus, Port};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Registrations in memory, fed to the core's mirror as they change.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    sink: Arc<dyn Sink>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    /// Per namespace, in registration order.
    namespaces: BTreeMap<String, Vec<Record>>,
    total: usize,
}

impl Inner {
    fn find(&mut self, namespace: &str, pred: impl Fn(&Record) -> bool) -> Option<&mut Record> {
        self.namespaces
            .get_mut(namespace)?
            .iter_mut()
            .find(|r| pred(r))
    }

    fn take(&mut self, namespace: &str, pred: impl Fn(&Record) -> bool) -> Option<Record> {
        let list = self.namespaces.get_mut(namespace)?;
        let at = list.iter().position(pred)?;
        self.total -= 1;
        Some(list.remove(at))
    }
}

impl MemoryStore {
    pub fn new(sink: Arc<dyn Sink>) -> Self {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            sink,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave a half-made record: keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `change` under the lock and pushes its result into the sink under
    /// it too, so two writes reach the mirror in the order they were made.
    fn write<T>(&self, change: impl FnOnce(&mut Inner, &dyn Sink) -> T) -> T {
        let mut inner = self.lock();
        change(&mut inner, &*self.sink)
    }

    fn register_now(&self, new: NewInstance, caps: Caps) -> Result<Registered, StoreError> {
        self.write(|inner, sink| {
            let same = |r: &Record| r.port == new.port && r.host == new.host;
            if let Some(r) = inner.find(&new.namespace, same) {
                if let Some(renewed) = r.renewed(&new) {
                    *r = renewed;
                    sink.put(r.clone());
                }
                return Ok(Registered {
                    record: r.clone(),
                    created: false,
                });
            }
            let namespace = new.namespace.as_str();
            let in_namespace = inner.namespaces.get(namespace).map_or(0, Vec::len);
            if in_namespace >= caps.max_instances_per_namespace {
                return Err(StoreError::Full(format!(
                    "namespace {namespace:?} already has {in_namespace} instances \
                     (max_instances_per_namespace)"
                )));
            }
            if inner.total >= caps.max_instances {
                return Err(StoreError::Full(format!(
                    "discovery already has {} instances (max_instances)",
                    inner.total
                )));
            }
            // Emptied namespaces are kept (watchers hold their versions): bound them too.
            if !inner.namespaces.contains_key(namespace)
                && inner.namespaces.len() >= caps.max_instances
            {
                return Err(StoreError::Full(format!(
                    "discovery already knows {} namespaces (max_instances)",
                    inner.namespaces.len()
                )));
            }
            let record = Record {
                id: format!("{:016x}", fastrand::u64(..)),
                namespace: new.namespace.clone(),
                host: new.host,
                port: new.port,
                health_check_path: new.health_check_path,
                weight: new.weight,
                status: InstanceStatus::Pending,
                since_unix_ms: new.now_unix_ms,
                maintenance_since_unix_ms: None,
            };
            inner
                .namespaces
                .entry(new.namespace)
                .or_default()
                .push(record.clone());
            inner.total += 1;
            sink.put(record.clone());
            Ok(Registered {
                record,
                created: true,
            })
        })
    }
}

impl Store for MemoryStore {
    fn register(
        &self,
        new: NewInstance,
        caps: Caps,
    ) -> StoreFuture<'_, Result<Registered, StoreError>> {
        let done = self.register_now(new, caps);
        Box::pin(async move { done })
    }

    fn deregister<'a>(
        &'a self,
        namespace: &'a str,
        host: &'a str,
        port: Port,
    ) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        let gone = self.write(|inner, sink| {
            let gone = inner.take(namespace, |r| r.port == port && r.host == host)?;
            sink.remove(namespace, &gone.id);
            Some(gone)
        });
        Box::pin(async move { Ok(gone) })
    }

    fn set_status<'a>(
        &'a self,
        namespace: &'a str,
        id: &'a str,
        expected: InstanceStatus,
        status: InstanceStatus,
        since_unix_ms: u64,
    ) -> StoreFuture<'a, Result<bool, StoreError>> {
        let done = self.write(|inner, sink| {
            let Some(r) = inner.find(namespace, |r| r.id == id && r.status == expected) else {
                return false;
            };
            r.status = status;
            r.since_unix_ms = since_unix_ms;
            sink.put(r.clone());
            true
        });
        Box::pin(async move { Ok(done) })
    }

    fn expire<'a>(
        &'a self,
        namespace: &'a str,
        id: &'a str,
        since_unix_ms: u64,
    ) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        let gone = self.write(|inner, sink| {
            let gone = inner.take(namespace, |r| {
                r.id == id
                    && r.status == InstanceStatus::Unavailable
                    && r.since_unix_ms == since_unix_ms
            })?;
            sink.remove(namespace, id);
            Some(gone)
        });
        Box::pin(async move { Ok(gone) })
    }

    fn set_maintenance<'a>(
        &'a self,
        namespace: &'a str,
        host: &'a str,
        port: Port,
        since_unix_ms: Option<u64>,
    ) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        let done = self.write(|inner, sink| {
            let r = inner.find(namespace, |r| r.port == port && r.host == host)?;
            let wanted = match (r.maintenance_since_unix_ms, since_unix_ms) {
                (Some(kept), Some(_)) => Some(kept),
                (_, wanted) => wanted,
            };
            if r.maintenance_since_unix_ms != wanted {
                r.maintenance_since_unix_ms = wanted;
                sink.put(r.clone());
            }
            Some(r.clone())
        });
        Box::pin(async move { Ok(done) })
    }

    fn health(&self) -> StoreHealth {
        StoreHealth {
            backend: "memory",
            reachable: true,
            writable: true,
            ..StoreHealth::default()
        }
    }
}
