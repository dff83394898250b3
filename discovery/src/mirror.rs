//! The local mirror of the registry: every instance's durable record as the
//! store pushed it, plus what only this process knows of it (consecutive
//! check results, the last check, when it is next due), each namespace's
//! round-robin cursor and the available set pushed to watchers.
//!
//! Pure in-memory state behind one mutex that is never held across an await,
//! so a lookup never waits for a health check's network round trip nor for
//! the store. Every operation under the lock touches one instance, one
//! namespace (bounded by `max_instances_per_namespace`) or one entry of the
//! check schedule: nothing walks every instance per tick, so a registration
//! flood cannot make the lock slow for lookups and checks. Every change of a
//! namespace's *routable* set (available and not in maintenance), whether
//! made here or pushed from another replica, bumps its version and is
//! announced to the watch hub (known here only as [`Announce`]: the hub
//! serves streams read from the registry above).

use crate::store::{now_unix_ms, Record, Sink};
use shared::wire::{
    authority, Endpoint, InstanceInfo, InstanceStatus, LookupResponse, Port, WatchEvent,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Who hears of every change of a namespace's routable set: the watch hub.
pub(crate) trait Announce: std::fmt::Debug + Send + Sync {
    /// `namespace`'s routable set (or its version) changed. Must not block.
    fn changed(&self, namespace: &str);
}

/// Thresholds and timing of the health state machine, from the config.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub deregister_after: Duration,
    /// Every instance is checked once per interval, at its own offset in it.
    pub interval: Duration,
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

/// What the health state machine decided from one check; the caller writes
/// it to the store (the mirror's status changes when the store pushes it back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The record as it was when the check was recorded.
    pub record: Record,
    /// The status to flip to, and since when (Unix ms), if a threshold was crossed.
    pub flip: Option<(InstanceStatus, u64)>,
    /// Unavailable past `deregister_after`: drop it (the `since_unix_ms` of
    /// its unavailability, for the store's compare-and-swap).
    pub expire: Option<u64>,
}

/// Why a lookup found nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupError {
    UnknownNamespace,
    NoneAvailable,
}

/// A position in the check schedule: due time, then a sequence number for ties.
type Slot = (Instant, u64);

#[derive(Debug)]
struct Instance {
    record: Record,
    consecutive_failures: u32,
    consecutive_successes: u32,
    last_check: Option<(CheckResult, SystemTime)>,
    /// Where it waits in the schedule; `None` while its check is in flight.
    due: Option<Slot>,
    /// Its place within each interval, from its id: checks spread over the
    /// interval instead of all instances being checked at once.
    phase: u64,
}

impl Instance {
    fn new(record: Record) -> Self {
        Instance {
            phase: phase_of(&record.id),
            record,
            consecutive_failures: 0,
            consecutive_successes: 0,
            last_check: None,
            due: None,
        }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            id: self.record.id.clone(),
            host: self.record.host.clone(),
            port: self.record.port,
            weight: self.record.weight,
        }
    }

    fn info(&self) -> InstanceInfo {
        let r = &self.record;
        InstanceInfo {
            id: r.id.clone(),
            host: r.host.clone(),
            port: r.port,
            status: r.status,
            health_check_path: r.health_check_path.clone(),
            weight: r.weight,
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
            since_unix_ms: r.since_unix_ms,
            maintenance: r.maintenance_since_unix_ms.is_some(),
            maintenance_since_unix_ms: r.maintenance_since_unix_ms,
        }
    }

    fn check_target(&self, due: Instant) -> CheckTarget {
        let r = &self.record;
        CheckTarget {
            namespace: r.namespace.clone(),
            id: r.id.clone(),
            host: r.host.clone(),
            port: r.port,
            path: r.health_check_path.clone(),
            due,
        }
    }
}

/// A stable spread of ids over the interval (FNV-1a; not a security boundary).
fn phase_of(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[derive(Debug)]
struct Namespace {
    /// In the order the store pushed them, which is also the round-robin order.
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
            .position(|i| i.record.port == port && i.record.host == host)
    }

    fn position(&self, id: &str) -> Option<usize> {
        self.instances.iter().position(|i| i.record.id == id)
    }

    fn routable_count(&self) -> usize {
        self.instances
            .iter()
            .filter(|i| i.record.routable())
            .count()
    }

    /// Rebuilds the pushed snapshot; true if the routable set changed.
    fn refresh(&mut self, name: &str) -> bool {
        let available: Vec<Endpoint> = self
            .instances
            .iter()
            .filter(|i| i.record.routable())
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
    /// In maintenance, whatever their status.
    pub maintenance: usize,
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
    fn put(&mut self, inst: &mut Instance, at: Instant) -> bool {
        if let Some(old) = inst.due.take() {
            self.entries.remove(&old);
        }
        self.seq += 1;
        let slot = (at, self.seq);
        self.entries.insert(
            slot,
            (inst.record.namespace.clone(), inst.record.id.clone()),
        );
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

/// What applying pushed changes did, acted on once the lock is released.
#[derive(Default)]
struct Applied {
    /// Namespaces whose routable set changed.
    changed: BTreeSet<String>,
    /// The earliest due time moved earlier.
    earliest: bool,
}

impl Inner {
    /// Puts or updates `record` (see [`Sink::put`]).
    fn put(&mut self, record: Record, now: Instant, applied: &mut Applied) {
        let name = record.namespace.clone();
        let ns = self
            .namespaces
            .entry(name.clone())
            .or_insert_with(|| Namespace::new(&name));
        if let Some(at) = ns.position(&record.id) {
            let inst = &mut ns.instances[at];
            if inst.record == record {
                return;
            }
            inst.record = record;
        } else {
            // The same key under another id: it was removed and made again
            // elsewhere, and this removal was not seen. The new one wins.
            if let Some(stale) = ns.find(&record.host, record.port) {
                let gone = ns.instances.remove(stale);
                self.schedule.remove(&gone);
                self.total -= 1;
            }
            let mut inst = Instance::new(record);
            applied.earliest |= self.schedule.put(&mut inst, now);
            ns.instances.push(inst);
            self.total += 1;
        }
        if ns.refresh(&name) {
            applied.changed.insert(name);
        }
    }

    fn remove(&mut self, namespace: &str, id: &str, applied: &mut Applied) {
        let Some(ns) = self.namespaces.get_mut(namespace) else {
            return;
        };
        let Some(at) = ns.position(id) else { return };
        let gone = ns.instances.remove(at);
        self.schedule.remove(&gone);
        self.total -= 1;
        if ns.refresh(namespace) {
            applied.changed.insert(namespace.to_string());
        }
    }
}

/// The mirror. Cheap to share: wrap it in an `Arc`.
#[derive(Debug)]
pub struct Mirror {
    inner: Mutex<Inner>,
    policy: Policy,
    hub: Arc<dyn Announce>,
    /// Start of the check phases.
    epoch: Instant,
    /// Wakes the checker when the earliest due time moved earlier.
    wake: async_channel::Sender<()>,
}

impl Mirror {
    /// `wake` should be a channel of capacity 1 that the checker listens to.
    pub(crate) fn new(
        policy: Policy,
        hub: Arc<dyn Announce>,
        wake: async_channel::Sender<()>,
    ) -> Self {
        Mirror {
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

    fn announce(&self, applied: Applied) {
        self.wake(applied.earliest);
        for namespace in &applied.changed {
            self.hub.changed(namespace);
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

    /// A renewal served from the mirror: the record at `host:port` if it is
    /// there with this `health_check_path` and `weight` (else the store must
    /// write). One that is not available is checked at once, unless a check
    /// is in flight.
    pub fn renew(
        &self,
        namespace: &str,
        host: &str,
        port: Port,
        (path, weight): (&str, u32),
    ) -> Option<Record> {
        let mut guard = self.lock();
        let Inner {
            namespaces,
            schedule,
            ..
        } = &mut *guard;
        let ns = namespaces.get_mut(namespace)?;
        let at = ns.find(host, port)?;
        let inst = &mut ns.instances[at];
        if inst.record.health_check_path != path || inst.record.weight != weight {
            return None;
        }
        let mut earliest = false;
        if inst.record.status != InstanceStatus::Available && inst.due.is_some() {
            earliest = schedule.put(inst, Instant::now());
        }
        let record = inst.record.clone();
        drop(guard);
        self.wake(earliest);
        Some(record)
    }

    /// The next routable instance round robin, skipping `exclude` (`host:port`).
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
            let available = ns.routable_count();
            let mut candidates = Vec::with_capacity(available);
            for inst in &mut ns.instances {
                let excluded = !exclude.is_empty() && exclude.contains(&inst.record.authority());
                // Not already due or in flight: check it now.
                if excluded && inst.due.is_some_and(|(t, _)| t > now) {
                    earliest |= schedule.put(inst, now);
                } else if !excluded && inst.record.routable() {
                    candidates.push(&*inst);
                }
            }
            if candidates.is_empty() {
                Err(LookupError::NoneAvailable)
            } else {
                let pick = &candidates[ns.cursor % candidates.len()].record;
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

    /// The namespace's routable set as pushed to watchers (version 0, empty, if unknown).
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
                    match i.record.status {
                        InstanceStatus::Pending => c.pending += 1,
                        InstanceStatus::Available => c.available += 1,
                        InstanceStatus::Unavailable => c.unavailable += 1,
                    }
                    c.maintenance += usize::from(i.record.maintenance_since_unix_ms.is_some());
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

    /// Takes the earliest check due at `now` that this replica `owns` out of
    /// the schedule (the instance is then in flight until
    /// [`record_check`](Self::record_check) or [`skip_check`](Self::skip_check));
    /// else when the next one is due. One owned elsewhere keeps its place in
    /// the series, unchecked here, so it is checked here again as soon as
    /// ownership moves.
    pub fn take_due(
        &self,
        now: Instant,
        owns: &dyn Fn(&str, &str) -> bool,
    ) -> Result<CheckTarget, Option<Instant>> {
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
                .and_then(|ns| ns.instances.iter_mut().find(|i| i.record.id == id));
            // Entries of removed instances are removed with them; skip any stray one.
            let Some(inst) = inst.filter(|i| i.due == Some(slot)) else {
                continue;
            };
            inst.due = None;
            if owns(&namespace, &id) {
                return Ok(inst.check_target(due));
            }
            let next = self.next_slot(inst.phase, now);
            inner.schedule.put(inst, next);
        }
    }

    /// Puts a check back in the schedule, its next slot, without touching the
    /// instance's state: the check could not be made.
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
            .and_then(|ns| ns.instances.iter_mut().find(|i| i.record.id == target.id))
        else {
            return;
        };
        if inst.due.is_some() {
            return;
        }
        let at = self.next_slot(inst.phase, now);
        let earliest = schedule.put(inst, at);
        drop(guard);
        self.wake(earliest);
    }

    /// Applies a check's result to the instance's counters (the health state
    /// machine) and schedules its next check; says whether its status must
    /// flip or it must be dropped, which the caller writes to the store.
    /// `None` if the instance is gone.
    pub fn record_check(&self, target: &CheckTarget, result: CheckResult) -> Option<Verdict> {
        let policy = self.policy;
        let now = Instant::now();
        let now_ms = now_unix_ms();
        let mut guard = self.lock();
        let Inner {
            namespaces,
            schedule,
            ..
        } = &mut *guard;
        let ns = namespaces.get_mut(&target.namespace)?;
        let at = ns.position(&target.id)?;
        let inst = &mut ns.instances[at];
        let before = inst.record.status;
        let mut flip = None;
        if result.failure.is_none() {
            inst.consecutive_successes = inst.consecutive_successes.saturating_add(1);
            inst.consecutive_failures = 0;
            if before != InstanceStatus::Available
                && inst.consecutive_successes >= policy.healthy_threshold
            {
                flip = Some(InstanceStatus::Available);
            }
        } else {
            inst.consecutive_failures = inst.consecutive_failures.saturating_add(1);
            inst.consecutive_successes = 0;
            if before != InstanceStatus::Unavailable
                && inst.consecutive_failures >= policy.unhealthy_threshold
            {
                flip = Some(InstanceStatus::Unavailable);
            }
        }
        inst.last_check = Some((result, SystemTime::now()));
        let flip = flip.map(|status| (status, now_ms));
        let (after, since) = flip.unwrap_or((before, inst.record.since_unix_ms));
        let unavailable_for = Duration::from_millis(now_ms.saturating_sub(since));
        let expire = (after == InstanceStatus::Unavailable
            && unavailable_for >= policy.deregister_after)
            .then_some(since);
        let mut earliest = false;
        if inst.due.is_none() {
            let next = self.next_slot(inst.phase, now);
            earliest = schedule.put(inst, next);
        }
        let verdict = Verdict {
            record: inst.record.clone(),
            flip,
            expire,
        };
        drop(guard);
        self.wake(earliest);
        Some(verdict)
    }
}

impl Sink for Mirror {
    fn put(&self, record: Record) {
        let mut applied = Applied::default();
        self.lock().put(record, Instant::now(), &mut applied);
        self.announce(applied);
    }

    fn remove(&self, namespace: &str, id: &str) {
        let mut applied = Applied::default();
        self.lock().remove(namespace, id, &mut applied);
        self.announce(applied);
    }

    fn reset(&self, records: Vec<Record>) {
        let mut applied = Applied::default();
        {
            let mut inner = self.lock();
            let keep: BTreeSet<(&str, &str)> = records
                .iter()
                .map(|r| (r.namespace.as_str(), r.id.as_str()))
                .collect();
            let gone: Vec<(String, String)> = inner
                .namespaces
                .iter()
                .flat_map(|(name, ns)| {
                    ns.instances
                        .iter()
                        .filter(|i| !keep.contains(&(name.as_str(), i.record.id.as_str())))
                        .map(|i| (name.clone(), i.record.id.clone()))
                })
                .collect();
            for (namespace, id) in gone {
                inner.remove(&namespace, &id, &mut applied);
            }
            let now = Instant::now();
            for record in records {
                inner.put(record, now, &mut applied);
            }
        }
        self.announce(applied);
    }
}
