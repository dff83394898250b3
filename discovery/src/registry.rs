//! The registry: namespaces, their instances and each instance's health.
//!
//! Pure in-memory state behind one mutex that is never held across an await,
//! so a lookup never waits for a health check's network round trip. Every
//! change of a namespace's *available* set bumps its version and is announced
//! to the watch hub.

use crate::watch::Hub;
use shared::wire::{
    authority, Endpoint, InstanceInfo, InstanceStatus, LookupResponse, Port, Registration,
    WatchEvent,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Consecutive-result thresholds and expiry, from the config.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub deregister_after: Duration,
}

/// Which instance a health check is for, and where to send it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckTarget {
    pub namespace: String,
    pub id: String,
    pub url: String,
}

/// What one health check found.
#[derive(Clone, Debug)]
pub struct CheckResult {
    pub latency: Duration,
    /// `None` when the instance answered 200 in time, else why it failed.
    pub failure: Option<String>,
}

/// Why a lookup found nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupError {
    UnknownNamespace,
    NoneAvailable,
}

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
    /// A check is in flight; the next tick skips it instead of piling up.
    checking: bool,
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

    fn check_target(&self, namespace: &str) -> CheckTarget {
        CheckTarget {
            namespace: namespace.to_string(),
            id: self.id.clone(),
            url: format!("http://{}{}", self.authority(), self.health_check_path),
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

/// The registry. Cheap to share: wrap it in an `Arc`.
#[derive(Debug)]
pub struct Registry {
    namespaces: Mutex<BTreeMap<String, Namespace>>,
    policy: Policy,
    hub: Arc<Hub>,
    /// Instances to check at once (new registrations, lookups that excluded them).
    check_now: async_channel::Sender<(String, String)>,
}

/// The outcome of a registration.
#[derive(Clone, Debug, PartialEq)]
pub struct Registered {
    pub registration: Registration,
    /// False when the same host:port was already registered (same id kept).
    pub created: bool,
}

impl Registry {
    pub fn new(
        policy: Policy,
        hub: Arc<Hub>,
        check_now: async_channel::Sender<(String, String)>,
    ) -> Self {
        Registry {
            namespaces: Mutex::new(BTreeMap::new()),
            policy,
            hub,
            check_now,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Namespace>> {
        // A panic elsewhere cannot leave the map half-updated in a way that matters more
        // than stopping discovery would, so keep serving from it.
        self.namespaces.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an instance, or renews it (same host:port keeps its id and status).
    pub fn register(
        &self,
        namespace: &str,
        host: &str,
        port: Port,
        health_check_path: &str,
    ) -> Registered {
        let (registered, check) = {
            let mut map = self.lock();
            let ns = map
                .entry(namespace.to_string())
                .or_insert_with(|| Namespace::new(namespace));
            match ns.find(host, port) {
                Some(at) => {
                    let inst = &mut ns.instances[at];
                    inst.health_check_path = health_check_path.to_string();
                    let check = inst.status != InstanceStatus::Available;
                    (
                        Registered {
                            registration: inst.registration(namespace),
                            created: false,
                        },
                        check.then(|| inst.id.clone()),
                    )
                }
                None => {
                    let inst = Instance {
                        id: format!("{:016x}", fastrand::u64(..)),
                        host: host.to_string(),
                        port,
                        health_check_path: health_check_path.to_string(),
                        status: InstanceStatus::Pending,
                        consecutive_failures: 0,
                        consecutive_successes: 0,
                        last_check: None,
                        unavailable_since: None,
                        checking: false,
                    };
                    let id = inst.id.clone();
                    let registration = inst.registration(namespace);
                    ns.instances.push(inst);
                    (
                        Registered {
                            registration,
                            created: true,
                        },
                        Some(id),
                    )
                }
            }
        };
        if let Some(id) = check {
            // Full queue: the next tick checks it anyway.
            let _ = self.check_now.try_send((namespace.to_string(), id));
        }
        registered
    }

    /// Removes an instance; `None` if it was not registered.
    pub fn deregister(&self, namespace: &str, host: &str, port: Port) -> Option<Registration> {
        let (removed, changed) = {
            let mut map = self.lock();
            let ns = map.get_mut(namespace)?;
            let at = ns.find(host, port)?;
            let inst = ns.instances.remove(at);
            (inst.registration(namespace), ns.refresh(namespace))
        };
        if changed {
            self.hub.notify(namespace);
        }
        Some(removed)
    }

    /// The next available instance round robin, skipping `exclude` (`host:port`).
    ///
    /// Excluded instances are queued for an immediate re-check: a gateway excludes
    /// an instance because it just timed out there.
    pub fn lookup(
        &self,
        namespace: &str,
        exclude: &[String],
    ) -> Result<LookupResponse, LookupError> {
        let mut recheck = Vec::new();
        let answer = {
            let mut map = self.lock();
            let ns = map
                .get_mut(namespace)
                .ok_or(LookupError::UnknownNamespace)?;
            let available = ns.available_count();
            let mut candidates = Vec::with_capacity(available);
            for inst in &ns.instances {
                let excluded = !exclude.is_empty() && exclude.contains(&inst.authority());
                if excluded {
                    recheck.push(inst.id.clone());
                } else if inst.status == InstanceStatus::Available {
                    candidates.push(inst);
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
        for id in recheck {
            let _ = self.check_now.try_send((namespace.to_string(), id));
        }
        answer
    }

    /// The namespace's available set as pushed to watchers (version 0, empty, if unknown).
    pub fn snapshot(&self, namespace: &str) -> Arc<WatchEvent> {
        match self.lock().get(namespace) {
            Some(ns) => ns.snapshot.clone(),
            None => Arc::new(empty_snapshot(namespace)),
        }
    }

    /// Every namespace with every instance, for `/api/services` and the dashboard.
    pub fn services(&self) -> BTreeMap<String, Vec<InstanceInfo>> {
        self.lock()
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

    /// Marks every instance not already being checked as checking, and returns them.
    pub fn due_checks(&self) -> Vec<CheckTarget> {
        let mut map = self.lock();
        let mut due = Vec::new();
        for (name, ns) in map.iter_mut() {
            for inst in ns.instances.iter_mut().filter(|i| !i.checking) {
                inst.checking = true;
                due.push(inst.check_target(name));
            }
        }
        due
    }

    /// Marks one instance as checking, unless it is gone or already being checked.
    pub fn begin_check(&self, namespace: &str, id: &str) -> Option<CheckTarget> {
        let mut map = self.lock();
        let inst = map
            .get_mut(namespace)?
            .instances
            .iter_mut()
            .find(|i| i.id == id && !i.checking)?;
        inst.checking = true;
        Some(inst.check_target(namespace))
    }

    /// Applies a check's result; returns the new status if it flipped.
    pub fn record_check(
        &self,
        target: &CheckTarget,
        result: CheckResult,
    ) -> Option<InstanceStatus> {
        let policy = self.policy;
        let flipped = {
            let mut map = self.lock();
            let ns = map.get_mut(&target.namespace)?;
            let inst = ns.instances.iter_mut().find(|i| i.id == target.id)?;
            inst.checking = false;
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
                    inst.unavailable_since = Some(Instant::now());
                }
            }
            inst.last_check = Some((result, SystemTime::now()));
            let after = inst.status;
            if after == before {
                None
            } else {
                ns.refresh(&target.namespace);
                Some(after)
            }
        };
        if flipped.is_some() {
            self.hub.notify(&target.namespace);
        }
        flipped
    }

    /// Drops instances unavailable for longer than `deregister_after`; returns them.
    pub fn expire(&self) -> Vec<(String, Registration)> {
        let limit = self.policy.deregister_after;
        let mut gone = Vec::new();
        let mut map = self.lock();
        for (name, ns) in map.iter_mut() {
            ns.instances.retain(|i| {
                let expired = i.unavailable_since.is_some_and(|t| t.elapsed() >= limit);
                if expired {
                    gone.push((name.clone(), i.registration(name)));
                }
                !expired
            });
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> (Registry, async_channel::Receiver<(String, String)>) {
        let (tx, rx) = async_channel::bounded(64);
        let policy = Policy {
            healthy_threshold: 1,
            unhealthy_threshold: 2,
            deregister_after: Duration::from_secs(60),
        };
        (Registry::new(policy, Arc::new(Hub::default()), tx), rx)
    }

    fn pass(r: &Registry, ns: &str, id: &str) -> Option<InstanceStatus> {
        let t = r.begin_check(ns, id).unwrap();
        r.record_check(
            &t,
            CheckResult {
                latency: Duration::from_millis(1),
                failure: None,
            },
        )
    }

    fn fail(r: &Registry, ns: &str, id: &str) -> Option<InstanceStatus> {
        let t = r.begin_check(ns, id).unwrap();
        r.record_check(
            &t,
            CheckResult {
                latency: Duration::from_millis(1),
                failure: Some("down".into()),
            },
        )
    }

    #[test]
    fn registration_is_idempotent_and_queues_a_check() {
        let (r, rx) = registry();
        let a = r.register("ns", "127.0.0.1", Port(1), "/h");
        assert!(a.created);
        assert_eq!(a.registration.status, InstanceStatus::Pending);
        assert_eq!(rx.try_recv().unwrap().1, a.registration.id);
        let b = r.register("ns", "127.0.0.1", Port(1), "/h");
        assert!(!b.created);
        assert_eq!(a.registration.id, b.registration.id);
        let c = r.register("ns", "127.0.0.2", Port(1), "/h");
        assert_ne!(c.registration.id, a.registration.id);
    }

    #[test]
    fn thresholds_and_versions() {
        let (r, _rx) = registry();
        let id = r.register("ns", "h", Port(1), "/h").registration.id;
        assert_eq!(r.snapshot("ns").version, 0);
        assert_eq!(pass(&r, "ns", &id), Some(InstanceStatus::Available));
        assert_eq!(r.snapshot("ns").version, 1);
        assert_eq!(
            fail(&r, "ns", &id),
            None,
            "one failure is under the threshold of 2"
        );
        assert_eq!(fail(&r, "ns", &id), Some(InstanceStatus::Unavailable));
        let snap = r.snapshot("ns");
        assert_eq!((snap.version, snap.instances.len()), (2, 0));
        assert_eq!(r.lookup("ns", &[]), Err(LookupError::NoneAvailable));
        assert_eq!(r.lookup("nope", &[]), Err(LookupError::UnknownNamespace));
    }

    #[test]
    fn lookup_is_round_robin_and_honours_exclude() {
        let (r, rx) = registry();
        let ids: Vec<String> = (1..=3)
            .map(|p| r.register("ns", "h", Port(p), "/h").registration.id)
            .collect();
        for id in &ids {
            pass(&r, "ns", id);
        }
        while rx.try_recv().is_ok() {}
        let mut seen = std::collections::HashMap::new();
        for _ in 0..30 {
            *seen.entry(r.lookup("ns", &[]).unwrap().id).or_insert(0) += 1;
        }
        assert!(ids.iter().all(|id| seen[id] == 10), "{seen:?}");
        for _ in 0..10 {
            let got = r.lookup("ns", &["h:1".into()]).unwrap();
            assert_ne!(got.port, Port(1));
        }
        assert!(
            rx.try_recv().is_ok(),
            "the excluded instance is queued for a re-check"
        );
    }
}
