//! The registry as the handlers and the checker see it: writes go to the
//! [`Store`] (which pushes them into the mirror), reads come from the local
//! [`Mirror`], and the health state machine's verdicts become status flips
//! written with compare-and-swap.
//!
//! Renewals of unchanged instances (an app re-registers every few seconds)
//! are answered from the mirror without a store write, so a remote store sees
//! writes only when something durable changes.

use crate::mirror::{CheckResult, CheckTarget, LookupError, Mirror, StatusCounts};
use crate::store::{
    now_unix_ms, Caps, NewInstance, Record, Registered, Store, StoreError, StoreHealth,
};
use shared::wire::{InstanceInfo, InstanceStatus, LookupResponse, Port, WatchEvent};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// What recording a check changed, for the checker's logs and metrics.
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    /// The new status, if it flipped.
    pub flipped: Option<InstanceStatus>,
    /// The instance, if it was dropped for being unavailable past `deregister_after`.
    pub expired: Option<Record>,
    /// The store could not take the change (it will be tried at the next check).
    pub store_error: Option<StoreError>,
}

/// The mirror and the store together. Cheap to share: wrap it in an `Arc`.
#[derive(Debug)]
pub struct Registry {
    mirror: Arc<Mirror>,
    store: Arc<dyn Store>,
    caps: Caps,
}

impl Registry {
    /// `store` must feed `mirror`: opened with it as its
    /// [`Sink`](crate::store::Sink) (see `open_store` in lib.rs).
    pub fn new(mirror: Arc<Mirror>, store: Arc<dyn Store>, caps: Caps) -> Self {
        Registry {
            mirror,
            store,
            caps,
        }
    }

    /// Adds an instance, or renews it (same host:port keeps its id, status
    /// and maintenance). A new instance, and a renewed one that is not
    /// available, is checked at once. Beyond the caps a new instance is
    /// refused; a renewal always passes.
    pub async fn register(
        &self,
        namespace: &str,
        host: &str,
        port: Port,
        (health_check_path, weight): (&str, u32),
    ) -> Result<Registered, StoreError> {
        let settings = (health_check_path, weight);
        if let Some(record) = self.mirror.renew(namespace, host, port, settings) {
            return Ok(Registered {
                record,
                created: false,
            });
        }
        let new = NewInstance {
            namespace: namespace.to_string(),
            host: host.to_string(),
            port,
            health_check_path: health_check_path.to_string(),
            weight,
            now_unix_ms: now_unix_ms(),
        };
        let done = self.store.register(new, self.caps).await?;
        if !done.created {
            // Its path or weight changed: still check it at once if it is not available.
            self.mirror.renew(namespace, host, port, settings);
        }
        Ok(done)
    }

    /// Removes an instance; `Ok(None)` if it was not registered.
    pub async fn deregister(
        &self,
        namespace: &str,
        host: &str,
        port: Port,
    ) -> Result<Option<Record>, StoreError> {
        self.store.deregister(namespace, host, port).await
    }

    /// Puts the instance in maintenance (`on`), or lifts it; `Ok(None)` if unknown.
    pub async fn set_maintenance(
        &self,
        namespace: &str,
        host: &str,
        port: Port,
        on: bool,
    ) -> Result<Option<Record>, StoreError> {
        let since = on.then(now_unix_ms);
        self.store
            .set_maintenance(namespace, host, port, since)
            .await
    }

    /// Applies a check's result; writes a status flip (compare-and-swap) or
    /// an expiry to the store.
    pub async fn record_check(&self, target: &CheckTarget, result: CheckResult) -> Recorded {
        let mut recorded = Recorded::default();
        let Some(verdict) = self.mirror.record_check(target, result) else {
            return recorded;
        };
        let record = &verdict.record;
        if let Some((status, since)) = verdict.flip {
            match self
                .store
                .set_status(&record.namespace, &record.id, record.status, status, since)
                .await
            {
                Ok(true) => recorded.flipped = Some(status),
                // Changed meanwhile (another replica, a re-registration): the
                // store pushes the newer state; nothing more to do here.
                Ok(false) => return recorded,
                Err(e) => {
                    recorded.store_error = Some(e);
                    return recorded;
                }
            }
        }
        if let Some(since) = verdict.expire {
            match self
                .store
                .expire(&record.namespace, &record.id, since)
                .await
            {
                Ok(gone) => recorded.expired = gone,
                Err(e) => recorded.store_error = Some(e),
            }
        }
        recorded
    }

    /// Puts a check back in the schedule without touching the instance: the
    /// check could not be made.
    pub fn skip_check(&self, target: &CheckTarget) {
        self.mirror.skip_check(target)
    }

    /// The earliest check due at `now` among the instances this replica owns.
    pub fn take_due(&self, now: Instant) -> Result<CheckTarget, Option<Instant>> {
        let store = &self.store;
        self.mirror
            .take_due(now, &|namespace, id| store.owns(namespace, id))
    }

    /// The next routable instance round robin, skipping `exclude` (`host:port`).
    pub fn lookup(
        &self,
        namespace: &str,
        exclude: &[String],
    ) -> Result<LookupResponse, LookupError> {
        self.mirror.lookup(namespace, exclude)
    }

    /// The namespace's routable set as pushed to watchers.
    pub fn snapshot(&self, namespace: &str) -> Arc<WatchEvent> {
        self.mirror.snapshot(namespace)
    }

    /// Every namespace with every instance, for `/api/services` and the dashboard.
    pub fn services(&self) -> BTreeMap<String, Vec<InstanceInfo>> {
        self.mirror.services()
    }

    /// Instance counts by status per namespace.
    pub fn counts(&self) -> BTreeMap<String, StatusCounts> {
        self.mirror.counts()
    }

    /// The store's reachability, for `/metrics` and the dashboard.
    pub fn store_health(&self) -> StoreHealth {
        self.store.health()
    }

    /// The store's view of the cluster (see [`Store::cluster`]).
    pub async fn store_cluster(&self) -> crate::store::StoreCluster {
        self.store.cluster().await
    }

    /// How stale the mirror may be (see [`Store::mirror_age`]).
    pub fn store_mirror_age(&self) -> Option<std::time::Duration> {
        self.store.mirror_age()
    }

    /// Lets the store go (at shutdown).
    pub async fn close(&self) {
        self.store.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::Policy;
    use crate::store::MemoryStore;
    use crate::watch::Hub;
    use async_std::task::block_on;
    use std::time::Duration;

    const INTERVAL: Duration = Duration::from_secs(3600);

    struct Fixture {
        r: Registry,
        mirror: Arc<Mirror>,
        wake: async_channel::Receiver<()>,
    }

    fn registry_with(
        max_ns: usize,
        max: usize,
        deregister_after: Duration,
        unhealthy: u32,
    ) -> Fixture {
        let (tx, wake) = async_channel::bounded(1);
        let policy = Policy {
            healthy_threshold: 1,
            unhealthy_threshold: unhealthy,
            deregister_after,
            interval: INTERVAL,
        };
        let mirror = Arc::new(Mirror::new(policy, Arc::new(Hub::default()), tx));
        let store = Arc::new(MemoryStore::new(mirror.clone()));
        let caps = Caps {
            max_instances: max,
            max_instances_per_namespace: max_ns,
        };
        Fixture {
            r: Registry::new(mirror.clone(), store, caps),
            mirror,
            wake,
        }
    }

    fn registry() -> Fixture {
        registry_with(100, 1000, Duration::from_secs(60), 2)
    }

    fn reg(r: &Registry, ns: &str, host: &str, port: u16) -> Registered {
        block_on(r.register(ns, host, Port(port), ("/h", 1))).unwrap()
    }

    /// Takes `id`'s check out of the schedule, whenever it is due.
    fn take(r: &Registry, id: &str) -> CheckTarget {
        let far = Instant::now() + 10 * INTERVAL;
        let mut others = Vec::new();
        let found = loop {
            let t = r.take_due(far).expect("the instance is scheduled");
            if t.id == id {
                break t;
            }
            others.push(t);
        };
        for t in others {
            r.skip_check(&t);
        }
        found
    }

    fn check(r: &Registry, ns: &str, id: &str, failure: Option<&str>) -> Recorded {
        let t = take(r, id);
        assert_eq!(t.namespace, ns);
        block_on(r.record_check(
            &t,
            CheckResult {
                latency: Duration::from_millis(1),
                failure: failure.map(String::from),
            },
        ))
    }

    #[test]
    fn registration_is_idempotent_and_checked_at_once() {
        let Fixture { r, mirror, wake } = registry();
        let a = reg(&r, "ns", "127.0.0.1", 1);
        assert!(a.created);
        assert_eq!(a.record.status, InstanceStatus::Pending);
        assert!(wake.try_recv().is_ok(), "the checker is woken");
        let due = r.take_due(Instant::now()).unwrap();
        assert_eq!(due.id, a.record.id);
        assert_eq!(
            r.take_due(Instant::now()),
            Err(None),
            "in flight, not due twice"
        );
        let b = reg(&r, "ns", "127.0.0.1", 1);
        assert!(!b.created);
        assert_eq!(a.record.id, b.record.id);
        let c = reg(&r, "ns", "127.0.0.2", 1);
        assert_ne!(c.record.id, a.record.id);
        assert_eq!(mirror.total(), 2);
    }

    #[test]
    fn thresholds_and_versions() {
        let Fixture { r, .. } = registry();
        let id = reg(&r, "ns", "h", 1).record.id;
        assert_eq!(r.snapshot("ns").version, 0);
        assert_eq!(
            check(&r, "ns", &id, None).flipped,
            Some(InstanceStatus::Available)
        );
        assert_eq!(r.snapshot("ns").version, 1);
        assert_eq!(
            check(&r, "ns", &id, Some("down")).flipped,
            None,
            "one failure is under the threshold of 2"
        );
        assert_eq!(
            check(&r, "ns", &id, Some("down")).flipped,
            Some(InstanceStatus::Unavailable)
        );
        let snap = r.snapshot("ns");
        assert_eq!((snap.version, snap.instances.len()), (2, 0));
        assert_eq!(r.lookup("ns", &[]), Err(LookupError::NoneAvailable));
        assert_eq!(r.lookup("nope", &[]), Err(LookupError::UnknownNamespace));
    }

    #[test]
    fn a_check_not_made_changes_nothing_but_the_schedule() {
        let Fixture { r, .. } = registry();
        let id = reg(&r, "ns", "h", 1).record.id;
        check(&r, "ns", &id, None);
        let t = take(&r, &id);
        r.skip_check(&t);
        let info = &r.services()["ns"][0];
        assert_eq!(info.status, InstanceStatus::Available);
        assert_eq!(info.consecutive_successes, 1);
        assert!(r.take_due(Instant::now()).is_err(), "rescheduled, not now");
        take(&r, &id);
    }

    #[test]
    fn lookup_is_round_robin_and_honours_exclude() {
        let Fixture { r, .. } = registry();
        let ids: Vec<String> = (1..=3).map(|p| reg(&r, "ns", "h", p).record.id).collect();
        for id in &ids {
            check(&r, "ns", id, None);
        }
        let mut seen = std::collections::HashMap::new();
        for _ in 0..30 {
            *seen.entry(r.lookup("ns", &[]).unwrap().id).or_insert(0) += 1;
        }
        assert!(ids.iter().all(|id| seen[id] == 10), "{seen:?}");
        assert!(r.take_due(Instant::now()).is_err(), "nothing due now");
        for _ in 0..10 {
            let got = r.lookup("ns", &["h:1".into()]).unwrap();
            assert_ne!(got.port, Port(1));
        }
        let due = r.take_due(Instant::now()).unwrap();
        assert_eq!(due.id, ids[0], "the excluded instance is due at once");
    }

    #[test]
    fn caps_refuse_new_instances_but_not_renewals() {
        let Fixture { r, mirror, .. } = registry_with(2, 3, Duration::from_secs(60), 2);
        reg(&r, "a", "h", 1);
        reg(&r, "a", "h", 2);
        let err = block_on(r.register("a", "h", Port(3), ("/h", 1))).unwrap_err();
        assert!(
            err.to_string().contains("max_instances_per_namespace"),
            "{err:?}"
        );
        reg(&r, "b", "h", 1);
        let err = block_on(r.register("c", "h", Port(1), ("/h", 1))).unwrap_err();
        assert!(err.to_string().contains("max_instances"), "{err:?}");
        assert!(!reg(&r, "a", "h", 1).created, "a renewal passes at the cap");
        block_on(r.deregister("b", "h", Port(1))).unwrap().unwrap();
        assert!(
            reg(&r, "c", "h", 1).created,
            "room again after a deregistration"
        );
        assert_eq!(mirror.total(), 3);
    }

    #[test]
    fn checks_are_spread_over_the_interval() {
        let Fixture { r, .. } = registry_with(1000, 1000, Duration::from_secs(60), 2);
        let now = Instant::now();
        for p in 1..=200 {
            reg(&r, "ns", "h", p);
        }
        let mut targets = Vec::new();
        while let Ok(t) = r.take_due(Instant::now()) {
            targets.push(t);
        }
        assert_eq!(targets.len(), 200);
        for t in &targets {
            block_on(r.record_check(
                t,
                CheckResult {
                    latency: Duration::ZERO,
                    failure: None,
                },
            ));
        }
        let mut next = Vec::new();
        while let Ok(t) = r.take_due(now + 3 * INTERVAL) {
            next.push(t.due);
        }
        assert_eq!(next.len(), 200);
        let first = next[0];
        let last = next[next.len() - 1];
        assert!(
            first >= now + INTERVAL / 2,
            "at least half an interval later"
        );
        assert!(
            last <= now + 2 * INTERVAL,
            "within one and a half intervals"
        );
        assert!(
            last - first > INTERVAL / 2,
            "spread over the interval, not bunched: {:?}",
            last - first
        );
    }

    #[test]
    fn an_instance_unavailable_too_long_is_dropped_at_its_check() {
        let Fixture { r, mirror, .. } = registry_with(10, 10, Duration::ZERO, 1);
        let id = reg(&r, "ns", "h", 1).record.id;
        let got = check(&r, "ns", &id, Some("down"));
        assert_eq!(got.expired.map(|g| g.id), Some(id));
        assert_eq!(mirror.total(), 0);
        assert_eq!(r.take_due(Instant::now() + 10 * INTERVAL), Err(None));
    }

    #[test]
    fn maintenance_is_not_routable_survives_renewal_and_keeps_its_time() {
        let Fixture { r, .. } = registry();
        let ids: Vec<String> = (1..=2).map(|p| reg(&r, "ns", "h", p).record.id).collect();
        for id in &ids {
            check(&r, "ns", id, None);
        }
        let v = r.snapshot("ns").version;
        let on = block_on(r.set_maintenance("ns", "h", Port(1), true))
            .unwrap()
            .unwrap();
        let since = on.maintenance_since_unix_ms.expect("in maintenance");
        let snap = r.snapshot("ns");
        assert_eq!(snap.version, v + 1);
        assert_eq!(snap.instances.len(), 1);
        assert_eq!(snap.instances[0].id, ids[1]);
        for _ in 0..4 {
            assert_eq!(r.lookup("ns", &[]).unwrap().id, ids[1]);
        }
        let again = block_on(r.set_maintenance("ns", "h", Port(1), true))
            .unwrap()
            .unwrap();
        assert_eq!(again.maintenance_since_unix_ms, Some(since), "kept");
        assert!(!reg(&r, "ns", "h", 1).created);
        assert!(r.services()["ns"][0].maintenance, "survives renewal");
        check(&r, "ns", &ids[0], None);
        assert_eq!(
            r.snapshot("ns").instances.len(),
            1,
            "still checked, not routed"
        );
        assert!(block_on(r.set_maintenance("ns", "h", Port(9), true))
            .unwrap()
            .is_none());
        block_on(r.set_maintenance("ns", "h", Port(1), false))
            .unwrap()
            .unwrap();
        assert_eq!(r.snapshot("ns").instances.len(), 2);
        assert!(r.services()["ns"][0].maintenance_since_unix_ms.is_none());
    }
}
