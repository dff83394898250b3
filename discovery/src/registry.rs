//! The registry: namespaces, their instances, each instance's health, and when
//! each is next due for a health check.
//!
//! Pure in-memory state behind one mutex that is never held across an await,
//! so a lookup never waits for a health check's network round trip. Every
//! operation under the lock touches one instance, one namespace (bounded by
//! `max_instances_per_namespace`) or one entry of the check schedule: nothing
//! walks every instance per tick, so a registration flood cannot make the
//! lock slow for lookups and checks. Every change of a namespace's
//! *available* set bumps its version and is announced to the watch hub.

use crate::watch::Hub;
use shared::wire::{
    authority, Endpoint, InstanceInfo, InstanceStatus, LookupResponse, Port, Registration,
    WatchEvent,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Thresholds, timing and caps, from the config.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub deregister_after: Duration,
    /// Every instance is checked once per interval, at its own offset in it.
    pub interval: Duration,
    pub max_instances: usize,
    pub max_instances_per_namespace: usize,
}

/// Which instance a health check is for, where to send it, and when it was due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckTarget {
    pub namespace: String,
    pub id: String,
    /// Normalized at registration: an IP literal or a lower-case name.
    pub host: String,
    pub port: Port,
    pub path: String,
    pub due: Instant,
}

impl CheckTarget {
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }
}

/// What one health check found.
#[derive(Clone, Debug)]
pub struct CheckResult {
    pub latency: Duration,
    /// `None` when the instance answered 200 in time, else why it failed.
    pub failure: Option<String>,
}

/// What recording a check changed.
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    /// The new status, if it flipped.
    pub flipped: Option<InstanceStatus>,
    /// The instance, if it was dropped for being unavailable past `deregister_after`.
    pub expired: Option<Registration>,
}

/// Why a lookup found nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupError {
    UnknownNamespace,
    NoneAvailable,
}

/// A registration refused because a cap is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Full(pub String);

/// A position in the check schedule: due time, then a sequence number for ties.
type Slot = (Instant, u64);

#[derive(Debug)]
struct Instance {
    id: String,
    host: String,
    port: Port,
    health_check_path: String,
    status: InstanceStatus,
    consecutive_failures: u32,
    consecutive_successes: u32,
    last_check: Option<(CheckResult, SystemTime)>,
    unavailable_since: Option<Instant>,
    /// Where it waits in the schedule; `None` while its check is in flight.
    due: Option<Slot>,
    /// Its place within each interval, from its id: checks spread over the
    /// interval instead of all instances being checked at once.
    phase: u64,
}

impl Instance {
    fn authority(&self) -> String {
        authority(&self.host, self.port)
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            id: self.id.clone(),
            host: self.host.clone(),
            port: self.port,
        }
    }

    fn registration(&self, namespace: &str) -> Registration {
        Registration {
            id: self.id.clone(),
            namespace: namespace.to_string(),
            host: self.host.clone(),
            port: self.port,
            status: self.status,
        }
    }

    fn info(&self) -> InstanceInfo {
        InstanceInfo {
            id: self.id.clone(),
            host: self.host.clone(),
            port: self.port,
            status: self.status,
            health_check_path: self.health_check_path.clone(),
            last_check_latency_ms: self
                .last_check
                .as_ref()
                .map(|(r, _)| r.latency.as_secs_f64() * 1000.0),
            last_check_unix_ms: self.last_check.as_ref().map(|(_, at)| {
                at.duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0)
            }),
            last_check_error: self
                .last_check
                .as_ref()
                .and_then(|(r, _)| r.failure.clone()),
            consecutive_failures: self.consecutive_failures,
            consecutive_successes: self.consecutive_successes,
        }
    }

    fn check_target(&self, namespace: &str, due: Instant) -> CheckTarget {
        CheckTarget {
            namespace: namespace.to_string(),
            id: self.id.clone(),
            host: self.host.clone(),
            port: self.port,
            path: self.health_check_path.clone(),
            due,
        }
    }
}

#[derive(Debug)]
struct Namespace {
    /// In registration order, which is also the round-robin order.
    instances: Vec<Instance>,
    cursor: usize,
    snapshot: Arc<WatchEvent>,
}

impl Namespace {
    fn new(name: &str) -> Self {
        Namespace {
            instances: Vec::new(),
            cursor: 0,
            snapshot: Arc::new(empty_snapshot(name)),
        }
    }

    fn find(&self, host: &str, port: Port) -> Option<usize> {
        self.instances
            .iter()
            .position(|i| i.port == port && i.host == host)
    }

    fn position(&self, id: &str) -> Option<usize> {
        self.instances.iter().position(|i| i.id == id)
    }

    fn available_count(&self) -> usize {
        self.instances
            .iter()
            .filter(|i| i.status == InstanceStatus::Available)
            .count()
    }

    /// Rebuilds the pushed snapshot; true if the available set changed.
    fn refresh(&mut self, name: &str) -> bool {
        let available: Vec<Endpoint> = self
            .instances
            .iter()
            .filter(|i| i.status == InstanceStatus::Available)
            .map(Instance::endpoint)
            .collect();
        if available == self.snapshot.instances && self.snapshot.version > 0 {
            return false;
        }
        if available.is_empty() && self.snapshot.version == 0 {
            return false;
        }
        self.snapshot = Arc::new(WatchEvent {
            namespace: name.to_string(),
            version: self.snapshot.version + 1,
            instances: available,
        });
        true
    }
}

fn empty_snapshot(namespace: &str) -> WatchEvent {
    WatchEvent {
        namespace: namespace.to_string(),
        version: 0,
        instances: Vec::new(),
    }
}

/// Counts by status, for the metrics page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusCounts {
    pub pending: usize,
    pub available: usize,
    pub unavailable: usize,
}

/// Instances waiting for their next check, earliest first.
#[derive(Debug, Default)]
struct Schedule {
    entries: BTreeMap<Slot, (String, String)>,
    seq: u64,
}

impl Schedule {
    /// Puts `inst` in the schedule at `at` (moving it if it was there);
    /// true if it is now the earliest entry.
    fn put(&mut self, namespace: &str, inst: &mut Instance, at: Instant) -> bool {
        if let Some(old) = inst.due.take() {
            self.entries.remove(&old);
        }
        self.seq += 1;
        let slot = (at, self.seq);
        self.entries
            .insert(slot, (namespace.to_string(), inst.id.clone()));
        inst.due = Some(slot);
        self.entries.keys().next() == Some(&slot)
    }

    fn remove(&mut self, inst: &Instance) {
        if let Some(slot) = inst.due {
            self.entries.remove(&slot);
        }
    }
}

/// Everything behind the lock.
#[derive(Debug, Default)]
struct Inner {
    namespaces: BTreeMap<String, Namespace>,
    /// Instances in all namespaces.
    total: usize,
    schedule: Schedule,
}

/// The registry. Cheap to share: wrap it in an `Arc`.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
    policy: Policy,
    hub: Arc<Hub>,
    /// Start of the check phases.
    epoch: Instant,
    /// Wakes the checker when the earliest due time moved earlier.
    wake: async_channel::Sender<()>,
}

/// The outcome of a registration.
#[derive(Clone, Debug, PartialEq)]
pub struct Registered {
    pub registration: Registration,
    /// False when the same host:port was already registered (same id kept).
    pub created: bool,
}

impl Registry {
    /// `wake` should be a channel of capacity 1 that the checker listens to.
    pub fn new(policy: Policy, hub: Arc<Hub>, wake: async_channel::Sender<()>) -> Self {
        Registry {
            inner: Mutex::new(Inner::default()),
            policy,
            hub,
            epoch: Instant::now(),
            wake,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the map half-updated in a way that matters more
        // than stopping discovery would, so keep serving from it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self, earliest: bool) {
        if earliest {
            // Full: a wake-up is already pending, which is all the checker needs.
            let _ = self.wake.try_send(());
        }
    }

    /// The next time in `phase`'s series (epoch + phase + k * interval) that
    /// is at least half an interval from `now`.
    fn next_slot(&self, phase: u64, now: Instant) -> Instant {
        let interval = self.policy.interval.as_nanos().max(1);
        let from = now.saturating_duration_since(self.epoch).as_nanos() + interval / 2;
        let phase = u128::from(phase) % interval;
        let k = if from <= phase {
            0
        } else {
            (from - phase).div_ceil(interval)
        };
        let at = phase + k * interval;
        self.epoch + Duration::from_nanos(u64::try_from(at).unwrap_or(u64::MAX))
    }

    /// Adds an instance, or renews it (same host:port keeps its id and status).
    ///
    /// A new instance, and a renewed one that is not available, is checked at
    /// once. Beyond `max_instances_per_namespace` or `max_instances`, a new
    /// instance is refused; a renewal always passes.
    pub fn register(
        &self,
        namespace: &str,
        host: &str,
        port: Port,
        health_check_path: &str,
    ) -> Result<Registered, Full> {
        let mut guard = self.lock();
        let Inner {
            namespaces,
            total,
            schedule,
        } = &mut *guard;
        let now = Instant::now();
        let existing = namespaces.get_mut(namespace).and_then(|ns| {
            let at = ns.find(host, port)?;
            Some(&mut ns.instances[at])
        });
        if let Some(inst) = existing {
            inst.health_check_path = health_check_path.to_string();
            let registration = inst.registration(namespace);
            let mut earliest = false;
            // Not available: check it at once, unless a check is in flight.
            if inst.status != InstanceStatus::Available && inst.due.is_some() {
                earliest = schedule.put(namespace, inst, now);
            }
            drop(guard);
            self.wake(earliest);
            return Ok(Registered {
                registration,
                created: false,
            });
        }
        let in_namespace = namespaces.get(namespace).map_or(0, |ns| ns.instances.len());
        if in_namespace >= self.policy.max_instances_per_namespace {
            return Err(Full(format!(
                "namespace {namespace:?} already has {in_namespace} instances \
                 (max_instances_per_namespace)"
            )));
        }
        if *total >= self.policy.max_instances {
            return Err(Full(format!(
                "discovery already has {total} instances (max_instances)"
            )));
        }
        // Emptied namespaces are kept (watchers hold their versions): bound them too.
        if !namespaces.contains_key(namespace) && namespaces.len() >= self.policy.max_instances {
            return Err(Full(format!(
                "discovery already knows {} namespaces (max_instances)",
                namespaces.len()
            )));
        }
        let raw_id = fastrand::u64(..);
        let mut inst = Instance {
            id: format!("{raw_id:016x}"),
            host: host.to_string(),
            port,
            health_check_path: health_check_path.to_string(),
            status: InstanceStatus::Pending,
            consecutive_failures: 0,
            consecutive_successes: 0,
            last_check: None,
            unavailable_since: None,
            due: None,
            phase: raw_id,
        };
        let earliest = schedule.put(namespace, &mut inst, now);
        let registration = inst.registration(namespace);
        namespaces
            .entry(namespace.to_string())
            .or_insert_with(|| Namespace::new(namespace))
            .instances
            .push(inst);
        *total += 1;
        drop(guard);
        self.wake(earliest);
        Ok(Registered {
            registration,
            created: true,
        })
    }

    /// Removes an instance; `None` if it was not registered.
    pub fn deregister(&self, namespace: &str, host: &str, port: Port) -> Option<Registration> {
        let (removed, changed) = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let ns = inner.namespaces.get_mut(namespace)?;
            let at = ns.find(host, port)?;
            let inst = ns.instances.remove(at);
            let changed = ns.refresh(namespace);
            inner.schedule.remove(&inst);
            inner.total -= 1;
            (inst.registration(namespace), changed)
        };
        if changed {
            self.hub.notify(namespace);
        }
        Some(removed)
    }

    /// The next available instance round robin, skipping `exclude` (`host:port`).
    ///
    /// Excluded instances are moved to the front of the check schedule: a
    /// gateway excludes an instance because it just timed out there.
    pub fn lookup(
        &self,
        namespace: &str,
        exclude: &[String],
    ) -> Result<LookupResponse, LookupError> {
        let now = Instant::now();
        let mut earliest = false;
        let answer = {
            let mut guard = self.lock();
            let Inner {
                namespaces,
                schedule,
                ..
            } = &mut *guard;
            let ns = namespaces
                .get_mut(namespace)
                .ok_or(LookupError::UnknownNamespace)?;
            let available = ns.available_count();
            let mut candidates = Vec::with_capacity(available);
            for inst in &mut ns.instances {
                let excluded = !exclude.is_empty() && exclude.contains(&inst.authority());
                // Not in flight already, nor due sooner: check it now.
                if excluded && inst.due.is_some_and(|(t, _)| t > now) {
                    earliest |= schedule.put(namespace, inst, now);
                } else if !excluded && inst.status == InstanceStatus::Available {
                    candidates.push(&*inst);
                }
            }
            if candidates.is_empty() {
                Err(LookupError::NoneAvailable)
            } else {
                let pick = candidates[ns.cursor % candidates.len()];
                let answer = LookupResponse {
                    id: pick.id.clone(),
                    namespace: namespace.to_string(),
                    host: pick.host.clone(),
                    ip: pick.host.clone(),
                    port: pick.port,
                    service_available_count: available,
                };
                ns.cursor = ns.cursor.wrapping_add(1);
                Ok(answer)
            }
        };
        self.wake(earliest);
        answer
    }

    /// The namespace's available set as pushed to watchers (version 0, empty, if unknown).
    pub fn snapshot(&self, namespace: &str) -> Arc<WatchEvent> {
        match self.lock().namespaces.get(namespace) {
            Some(ns) => ns.snapshot.clone(),
            None => Arc::new(empty_snapshot(namespace)),
        }
    }

    /// Every namespace with every instance, for `/api/services` and the dashboard.
    pub fn services(&self) -> BTreeMap<String, Vec<InstanceInfo>> {
        self.lock()
            .namespaces
            .iter()
            .map(|(name, ns)| {
                (
                    name.clone(),
                    ns.instances.iter().map(Instance::info).collect(),
                )
            })
            .collect()
    }

    /// Instance counts by status per namespace.
    pub fn counts(&self) -> BTreeMap<String, StatusCounts> {
        self.lock()
            .namespaces
            .iter()
            .map(|(name, ns)| {
                let mut c = StatusCounts::default();
                for i in &ns.instances {
                    match i.status {
                        InstanceStatus::Pending => c.pending += 1,
                        InstanceStatus::Available => c.available += 1,
                        InstanceStatus::Unavailable => c.unavailable += 1,
                    }
                }
                (name.clone(), c)
            })
            .collect()
    }

    /// Instances in all namespaces.
    #[cfg(test)]
    pub fn total(&self) -> usize {
        self.lock().total
    }

    /// Takes the earliest check due at `now` out of the schedule (the
    /// instance is then in flight until [`record_check`](Self::record_check)
    /// or [`skip_check`](Self::skip_check)); else when the next one is due.
    pub fn take_due(&self, now: Instant) -> Result<CheckTarget, Option<Instant>> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        loop {
            let Some(entry) = inner.schedule.entries.first_entry() else {
                return Err(None);
            };
            let (due, _) = *entry.key();
            if due > now {
                return Err(Some(due));
            }
            let (slot, (namespace, id)) = entry.remove_entry();
            let inst = inner
                .namespaces
                .get_mut(&namespace)
                .and_then(|ns| ns.instances.iter_mut().find(|i| i.id == id));
            // Entries of removed instances are removed with them; skip any stray one.
            if let Some(inst) = inst.filter(|i| i.due == Some(slot)) {
                inst.due = None;
                return Ok(inst.check_target(&namespace, due));
            }
        }
    }

    /// Puts a check back in the schedule, its next slot, without touching the
    /// instance's status: the check could not be made.
    pub fn skip_check(&self, target: &CheckTarget) {
        let now = Instant::now();
        let mut guard = self.lock();
        let Inner {
            namespaces,
            schedule,
            ..
        } = &mut *guard;
        let Some(inst) = namespaces
            .get_mut(&target.namespace)
            .and_then(|ns| ns.instances.iter_mut().find(|i| i.id == target.id))
        else {
            return;
        };
        if inst.due.is_some() {
            return;
        }
        let at = self.next_slot(inst.phase, now);
        let earliest = schedule.put(&target.namespace, inst, at);
        drop(guard);
        self.wake(earliest);
    }

    /// Applies a check's result and schedules the next check; drops the
    /// instance instead if it has been unavailable past `deregister_after`.
    pub fn record_check(&self, target: &CheckTarget, result: CheckResult) -> Recorded {
        let policy = self.policy;
        let now = Instant::now();
        let mut recorded = Recorded::default();
        let mut earliest = false;
        {
            let mut guard = self.lock();
            let Inner {
                namespaces,
                total,
                schedule,
            } = &mut *guard;
            let Some(ns) = namespaces.get_mut(&target.namespace) else {
                return recorded;
            };
            let Some(at) = ns.position(&target.id) else {
                return recorded;
            };
            let inst = &mut ns.instances[at];
            let before = inst.status;
            if result.failure.is_none() {
                inst.consecutive_successes = inst.consecutive_successes.saturating_add(1);
                inst.consecutive_failures = 0;
                if before != InstanceStatus::Available
                    && inst.consecutive_successes >= policy.healthy_threshold
                {
                    inst.status = InstanceStatus::Available;
                    inst.unavailable_since = None;
                }
            } else {
                inst.consecutive_failures = inst.consecutive_failures.saturating_add(1);
                inst.consecutive_successes = 0;
                if before != InstanceStatus::Unavailable
                    && inst.consecutive_failures >= policy.unhealthy_threshold
                {
                    inst.status = InstanceStatus::Unavailable;
                    inst.unavailable_since = Some(now);
                }
            }
            inst.last_check = Some((result, SystemTime::now()));
            let after = inst.status;
            if after != before {
                recorded.flipped = Some(after);
            }
            let expired = inst
                .unavailable_since
                .is_some_and(|t| now.saturating_duration_since(t) >= policy.deregister_after);
            if expired {
                let gone = ns.instances.remove(at);
                schedule.remove(&gone);
                *total -= 1;
                recorded.expired = Some(gone.registration(&target.namespace));
            } else if inst.due.is_none() {
                let next = self.next_slot(inst.phase, now);
                earliest = schedule.put(&target.namespace, inst, next);
            }
            if after != before {
                ns.refresh(&target.namespace);
            }
        }
        self.wake(earliest);
        if recorded.flipped.is_some() {
            self.hub.notify(&target.namespace);
        }
        recorded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(3600);

    fn registry_with(max_ns: usize, max: usize) -> (Registry, async_channel::Receiver<()>) {
        let (tx, rx) = async_channel::bounded(1);
        let policy = Policy {
            healthy_threshold: 1,
            unhealthy_threshold: 2,
            deregister_after: Duration::from_secs(60),
            interval: INTERVAL,
            max_instances: max,
            max_instances_per_namespace: max_ns,
        };
        (Registry::new(policy, Arc::new(Hub::default()), tx), rx)
    }

    fn registry() -> (Registry, async_channel::Receiver<()>) {
        registry_with(100, 1000)
    }

    fn reg(r: &Registry, ns: &str, host: &str, port: u16) -> Registered {
        r.register(ns, host, Port(port), "/h").unwrap()
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
        r.record_check(
            &t,
            CheckResult {
                latency: Duration::from_millis(1),
                failure: failure.map(String::from),
            },
        )
    }

    #[test]
    fn registration_is_idempotent_and_checked_at_once() {
        let (r, wake) = registry();
        let a = reg(&r, "ns", "127.0.0.1", 1);
        assert!(a.created);
        assert_eq!(a.registration.status, InstanceStatus::Pending);
        assert!(wake.try_recv().is_ok(), "the checker is woken");
        let due = r.take_due(Instant::now()).unwrap();
        assert_eq!(due.id, a.registration.id);
        assert_eq!(
            r.take_due(Instant::now()),
            Err(None),
            "in flight, not due twice"
        );
        let b = reg(&r, "ns", "127.0.0.1", 1);
        assert!(!b.created);
        assert_eq!(a.registration.id, b.registration.id);
        let c = reg(&r, "ns", "127.0.0.2", 1);
        assert_ne!(c.registration.id, a.registration.id);
        assert_eq!(r.total(), 2);
    }

    #[test]
    fn thresholds_and_versions() {
        let (r, _wake) = registry();
        let id = reg(&r, "ns", "h", 1).registration.id;
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
        let (r, _wake) = registry();
        let id = reg(&r, "ns", "h", 1).registration.id;
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
        let (r, _wake) = registry();
        let ids: Vec<String> = (1..=3)
            .map(|p| reg(&r, "ns", "h", p).registration.id)
            .collect();
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
        let (r, _wake) = registry_with(2, 3);
        reg(&r, "a", "h", 1);
        reg(&r, "a", "h", 2);
        let err = r.register("a", "h", Port(3), "/h").unwrap_err();
        assert!(err.0.contains("max_instances_per_namespace"), "{err:?}");
        reg(&r, "b", "h", 1);
        let err = r.register("c", "h", Port(1), "/h").unwrap_err();
        assert!(err.0.contains("max_instances"), "{err:?}");
        assert!(!reg(&r, "a", "h", 1).created, "a renewal passes at the cap");
        r.deregister("b", "h", Port(1)).unwrap();
        assert!(
            reg(&r, "c", "h", 1).created,
            "room again after a deregistration"
        );
        assert_eq!(r.total(), 3);
    }

    #[test]
    fn checks_are_spread_over_the_interval() {
        let (r, _wake) = registry_with(1000, 1000);
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
            r.record_check(
                t,
                CheckResult {
                    latency: Duration::ZERO,
                    failure: None,
                },
            );
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
        let (tx, _rx) = async_channel::bounded(1);
        let policy = Policy {
            healthy_threshold: 1,
            unhealthy_threshold: 1,
            deregister_after: Duration::ZERO,
            interval: INTERVAL,
            max_instances: 10,
            max_instances_per_namespace: 10,
        };
        let r = Registry::new(policy, Arc::new(Hub::default()), tx);
        let id = reg(&r, "ns", "h", 1).registration.id;
        let got = check(&r, "ns", &id, Some("down"));
        assert_eq!(got.expired.map(|g| g.id), Some(id));
        assert_eq!(r.total(), 0);
        assert_eq!(r.take_due(Instant::now() + 10 * INTERVAL), Err(None));
    }
}
