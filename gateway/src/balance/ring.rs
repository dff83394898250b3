//! Routes and round-robin rings.
//!
//! Each routed namespace has a [`Balancer`]: the current ring of instances,
//! swapped whole when discovery pushes a new set (arc-swap: readers never
//! lock), each ring with the [`Selection`] its route's [`Policy`] built for
//! it: one turn order shared by every worker, so N requests give each of k
//! instances N/k, plus or minus one, however many workers serve them.

use crate::balance::pool::Upstream;
use crate::balance::selection::{Policy, Selection, Share};
use crate::observe::stats::UpstreamStats;
use crate::runtime::clock;
use arc_swap::ArcSwap;
use shared::config::{IdempotencyConfig, IdempotencyMode, RouteConfig};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::RwLock;
use std::sync::{Arc, Mutex};

/// How long the per-upstream series of an instance that left the ring are
/// still exported (a rate over the last minutes still sees its last requests).
pub(crate) const DEPARTED_KEPT_MS: u64 = 5 * 60 * 1000;

/// The instances of a namespace at one version of discovery's pushed set.
#[derive(Debug)]
pub(crate) struct Ring {
    pub(crate) members: Vec<Arc<Upstream>>,
    /// Each member's registered weight (same order as `members`).
    pub(crate) weights: Vec<u32>,
    /// Version of the watch event it was built from (0: none yet).
    pub(crate) version: u64,
    /// Members kept from before a watch reconnect, not in discovery's answer yet.
    pub(crate) held: usize,
    /// The turn order over `members`, built by the balancer when it takes
    /// the ring in ([`Balancer::replace`]).
    selection: Box<dyn Selection>,
}

impl Default for Ring {
    fn default() -> Self {
        Ring::new(Vec::new(), Vec::new(), 0, 0)
    }
}

impl Ring {
    /// A ring of `members` with their `weights` (a missing weight is 1).
    pub(crate) fn new(
        members: Vec<Arc<Upstream>>,
        mut weights: Vec<u32>,
        version: u64,
        held: usize,
    ) -> Ring {
        weights.resize(members.len(), 1);
        Ring {
            members,
            weights,
            version,
            held,
            selection: Policy::default().build(&[], 0),
        }
    }
}

/// State of the watch stream feeding a ring, for `/status` and `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct WatchStatus {
    state: AtomicU8,
    pub(crate) reconnects: AtomicU64,
    /// [`crate::runtime::clock`] milliseconds of the last event received.
    pub(crate) last_event_ms: AtomicU64,
    /// [`crate::runtime::clock`] milliseconds of the last sign that the snapshot is
    /// current: an event or a keep-alive on a connected stream. Alerts key on
    /// this, so a calm but healthy system does not look stale.
    pub(crate) last_confirmed_ms: AtomicU64,
    /// [`crate::runtime::clock`] milliseconds until which held members stay.
    pub(crate) grace_until_ms: AtomicU64,
    /// Streams opened so far: the number of the one open now, which tells
    /// the holder whether a snapshot came on it or on one already gone.
    stream: AtomicU64,
    /// [`crate::runtime::clock`] milliseconds when the current stream opened.
    opened_ms: AtomicU64,
    /// `watch_idle_timeout` in milliseconds (0: not set, no staleness check).
    idle_ms: AtomicU64,
}

/// Where a watch stream stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WatchState {
    Connecting,
    Connected,
    Disconnected,
}

impl WatchStatus {
    pub(crate) fn set(&self, state: WatchState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// Where the stream stands. A connected stream that has said nothing
    /// (no event, no keep-alive) for `watch_idle_timeout` is reported
    /// disconnected: the watcher is about to drop it, and its snapshot can no
    /// longer be trusted to be current.
    pub(crate) fn get(&self) -> WatchState {
        match self.state.load(Ordering::Relaxed) {
            1 if self.silent(clock()) => WatchState::Disconnected,
            1 => WatchState::Connected,
            2 => WatchState::Disconnected,
            _ => WatchState::Connecting,
        }
    }

    /// Records `watch_idle_timeout`, past which a silent stream is not live.
    pub(crate) fn set_idle_timeout(&self, idle: std::time::Duration) {
        let ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        self.idle_ms.store(ms, Ordering::Relaxed);
    }

    /// Notes a stream just opened; its number, for [`WatchStatus::live_on`].
    pub(crate) fn opened(&self) -> u64 {
        self.opened_ms.store(clock().max(1), Ordering::Relaxed);
        self.stream.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Whether stream number `stream` is the one open now, connected, and
    /// heard from (opened, an event or a keep-alive) within the idle timeout.
    pub(crate) fn live_on(&self, stream: u64) -> bool {
        self.stream.load(Ordering::Acquire) == stream
            && self.state.load(Ordering::Relaxed) == WatchState::Connected as u8
            && !self.silent(clock())
    }

    /// Nothing heard on the current stream for longer than the idle timeout.
    fn silent(&self, now_ms: u64) -> bool {
        let idle = self.idle_ms.load(Ordering::Relaxed);
        let heard = self
            .last_confirmed_ms
            .load(Ordering::Relaxed)
            .max(self.opened_ms.load(Ordering::Relaxed));
        idle > 0 && now_ms.saturating_sub(heard) > idle
    }
}

impl WatchState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            WatchState::Connecting => "connecting",
            WatchState::Connected => "connected",
            WatchState::Disconnected => "disconnected",
        }
    }
}

/// An instance this namespace's ring lists, or listed lately: whose
/// statistics `/metrics` exports under this namespace.
#[derive(Clone, Debug)]
pub(crate) struct Tracked {
    pub(crate) key: String,
    pub(crate) stats: Arc<UpstreamStats>,
    /// Its wrong answers, by fault.
    pub(crate) health: Arc<crate::balance::passive::PassiveHealth>,
    /// [`clock`] milliseconds when it left the ring; `None` while in it.
    pub(crate) left_ms: Option<u64>,
    /// [`clock`] milliseconds when it last joined the ring (slow start).
    pub(crate) joined_ms: u64,
}

/// One namespace's ring, cursor and watch state.
#[derive(Debug)]
pub(crate) struct Balancer {
    pub(crate) namespace: String,
    ring: ArcSwap<Ring>,
    /// How its rings' selections are built; a reload may change it.
    policy: RwLock<Policy>,
    pub(crate) watch: WatchStatus,
    /// Where requests find instances: the ring (watch) or a lookup per try.
    pub(crate) source: crate::balance::origin::Origin,
    /// Members now and lately, for the per-upstream series.
    tracked: Mutex<Vec<Tracked>>,
}

impl Balancer {
    pub(crate) fn new(namespace: &str, policy: Policy) -> Self {
        Balancer {
            namespace: namespace.to_string(),
            ring: ArcSwap::from_pointee(Ring::default()),
            policy: RwLock::new(policy),
            watch: WatchStatus::default(),
            source: crate::balance::origin::Origin::default(),
            tracked: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn ring(&self) -> Arc<Ring> {
        self.ring.load_full()
    }

    /// Takes in a new ring: its selection is built by the policy, from
    /// where the old ring's rotation stood.
    pub(crate) fn replace(&self, mut ring: Ring) {
        let joined = self.track(&ring.members, clock(), DEPARTED_KEPT_MS);
        let shares: Vec<Share> = ring
            .weights
            .iter()
            .zip(joined)
            .map(|(weight, joined_ms)| Share {
                weight: *weight,
                joined_ms,
            })
            .collect();
        let position = self.ring.load().selection.position();
        ring.selection = self.policy().build(&shares, position);
        self.ring.store(Arc::new(ring));
    }

    fn policy(&self) -> Policy {
        *self.policy.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes how selections are built (a reload); the ring in force is
    /// taken in again under the new policy.
    pub(crate) fn set_policy(&self, policy: Policy) {
        {
            let mut current = self.policy.write().unwrap_or_else(|p| p.into_inner());
            if *current == policy {
                return;
            }
            *current = policy;
        }
        let ring = self.ring.load();
        self.replace(Ring::new(
            ring.members.clone(),
            ring.weights.clone(),
            ring.version,
            ring.held,
        ));
    }

    /// Notes who joined and who left, and forgets those gone longer than
    /// `keep_ms`; when each member joined.
    fn track(&self, members: &[Arc<Upstream>], now_ms: u64, keep_ms: u64) -> Vec<u64> {
        let mut tracked = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
        for t in tracked.iter_mut() {
            let member = members.iter().find(|m| m.key == t.key);
            match member {
                Some(m) => {
                    if t.left_ms.take().is_some() {
                        t.joined_ms = now_ms; // back: available again from now
                    }
                    // The pool forgot it meanwhile and made it anew: follow the new one.
                    t.stats = m.stats.clone();
                    t.health = m.health.clone();
                }
                None => {
                    t.left_ms.get_or_insert(now_ms);
                }
            }
        }
        for m in members {
            if !tracked.iter().any(|t| t.key == m.key) {
                tracked.push(Tracked {
                    key: m.key.clone(),
                    stats: m.stats.clone(),
                    health: m.health.clone(),
                    left_ms: None,
                    joined_ms: now_ms,
                });
            }
        }
        tracked.retain(|t| {
            t.left_ms
                .is_none_or(|left| now_ms.saturating_sub(left) < keep_ms)
        });
        members
            .iter()
            .map(|m| {
                tracked
                    .iter()
                    .find(|t| t.key == m.key)
                    .map_or(now_ms, |t| t.joined_ms)
            })
            .collect()
    }

    /// The instances whose series are exported now: the ring's, and those
    /// that left it less than [`DEPARTED_KEPT_MS`] ago.
    pub(crate) fn tracked(&self) -> Vec<Tracked> {
        let mut tracked = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
        let now = clock();
        tracked.retain(|t| {
            t.left_ms
                .is_none_or(|left| now.saturating_sub(left) < DEPARTED_KEPT_MS)
        });
        tracked.clone()
    }

    /// The member for a request's next try: one not tried by it and not
    /// cooling down after a refused connection (a cooling one only if
    /// nothing else is left).
    ///
    /// A first try takes the next turn of the shared rotation. A failover
    /// walks the ring on from the member it last tried, taking no turn, so
    /// one request's retries do not shift every other client's rotation.
    pub(crate) fn pick(&self, tried: &[Arc<Upstream>]) -> Option<Arc<Upstream>> {
        let ring = self.ring.load();
        let n = ring.members.len();
        let after = tried
            .last()
            .and_then(|last| ring.members.iter().position(|m| Arc::ptr_eq(m, last)));
        let mut fallback = None;
        for step in 0..n {
            let at = match after {
                Some(last) => (last + 1 + step) % n,
                None => ring.selection.next(&ring.members),
            };
            let member = &ring.members[at];
            if tried.iter().any(|t| Arc::ptr_eq(t, member)) {
                continue;
            }
            if !member.is_cooling() {
                return Some(member.clone());
            }
            fallback.get_or_insert_with(|| member.clone());
        }
        fallback
    }

    /// Whether some member has not been tried by this request.
    pub(crate) fn has_untried(&self, tried: &[Arc<Upstream>]) -> bool {
        self.ring
            .load()
            .members
            .iter()
            .any(|m| !tried.iter().any(|t| Arc::ptr_eq(t, m)))
    }
}

/// A route chosen by a [`Router`]: valid for that router (one generation of
/// the config), which a connection keeps for the whole request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Route(usize);

/// Path prefixes to balancers; the longest matching prefix wins.
#[derive(Debug)]
pub(crate) struct Router {
    routes: Vec<(String, Arc<Balancer>)>,
    /// Per route (same order): what it asks of its requests and answers.
    rules: Vec<RouteRules>,
    balancers: Vec<Arc<Balancer>>,
}

/// What a route asks beyond its namespace, read once per request by the
/// route's index rather than looked up in the config.
#[derive(Debug)]
struct RouteRules {
    /// Answers must carry the request's id.
    verify_request_id: bool,
    /// Its `Idempotency-Key` rule, unless its mode is off.
    idempotency: Option<IdempotencyConfig>,
}

impl Router {
    pub(crate) fn new(routes: &[RouteConfig]) -> Self {
        Self::rebuilt(routes, &[]).0
    }

    /// The router for `routes` after a reload: the balancer of a namespace
    /// in `known` is kept (its ring, cursor, pools and watch go on); the
    /// second part is the balancers made for new namespaces, whose watch
    /// must be started.
    pub(crate) fn rebuilt(
        routes: &[RouteConfig],
        known: &[Arc<Balancer>],
    ) -> (Self, Vec<Arc<Balancer>>) {
        let mut made = Vec::new();
        let mut balancers: Vec<Arc<Balancer>> = Vec::new();
        let mut table = Vec::new();
        for route in routes {
            let balancer = match balancers.iter().find(|b| b.namespace == route.namespace) {
                Some(b) => b.clone(),
                None => {
                    let b = match known.iter().find(|b| b.namespace == route.namespace) {
                        Some(b) => {
                            b.set_policy(Policy::of(route));
                            b.clone()
                        }
                        None => {
                            let b = Arc::new(Balancer::new(&route.namespace, Policy::of(route)));
                            made.push(b.clone());
                            b
                        }
                    };
                    balancers.push(b.clone());
                    b
                }
            };
            let rules = RouteRules {
                verify_request_id: route.verify_request_id,
                idempotency: (route.idempotency.mode != IdempotencyMode::Off)
                    .then(|| route.idempotency.clone()),
            };
            table.push((route.prefix.clone(), balancer, rules));
        }
        table.sort_by_key(|(prefix, ..)| std::cmp::Reverse(prefix.len()));
        let (routes, rules) = table.into_iter().map(|(p, b, r)| ((p, b), r)).unzip();
        (
            Router {
                routes,
                rules,
                balancers,
            },
            made,
        )
    }

    /// The route for a request target (path and query): chosen right after
    /// the head, so a request no route takes is answered before its body is read.
    pub(crate) fn choose(&self, target: &[u8]) -> Option<Route> {
        self.routes
            .iter()
            .position(|(prefix, _)| matches(prefix.as_bytes(), target))
            .map(Route)
    }

    /// Whether a route this router chose requires answers to carry the request's id.
    pub(crate) fn verifies_request_id(&self, route: Route) -> bool {
        self.rules.get(route.0).is_some_and(|r| r.verify_request_id)
    }

    /// The `Idempotency-Key` rule of a route this router chose, unless its
    /// mode is off.
    pub(crate) fn idempotency(&self, route: Route) -> Option<&IdempotencyConfig> {
        self.rules.get(route.0)?.idempotency.as_ref()
    }

    /// The path prefix of a route this router chose.
    pub(crate) fn prefix(&self, route: Route) -> Option<&str> {
        self.routes.get(route.0).map(|(p, _)| p.as_str())
    }

    /// The balancer of a route this router chose.
    pub(crate) fn balancer(&self, route: Route) -> Option<&Arc<Balancer>> {
        self.routes.get(route.0).map(|(_, b)| b)
    }

    /// The balancer for a request target (the tests' shorthand).
    #[cfg(test)]
    pub(crate) fn route(&self, target: &[u8]) -> Option<&Arc<Balancer>> {
        self.choose(target).and_then(|r| self.balancer(r))
    }

    /// One balancer per routed namespace.
    pub(crate) fn balancers(&self) -> &[Arc<Balancer>] {
        &self.balancers
    }
}

/// `/api` matches `/api`, `/api/x` and `/api?q`, not `/apix`.
fn matches(prefix: &[u8], target: &[u8]) -> bool {
    match target.strip_prefix(prefix) {
        Some(rest) => {
            prefix.ends_with(b"/") || rest.is_empty() || rest[0] == b'/' || rest[0] == b'?'
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::pool::tests::upstream_at as upstream;
    use std::time::Duration;

    fn balancer(n: u16) -> Balancer {
        let b = Balancer::new("ns", Policy::default());
        b.replace(Ring::new((1..=n).map(upstream).collect(), Vec::new(), 1, 0));
        b
    }

    #[test]
    fn round_robin_is_exact_under_concurrency() {
        let b = Arc::new(balancer(3));
        let counts: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut seen = std::collections::HashMap::new();
                    for _ in 0..3000 {
                        *seen.entry(b.pick(&[]).unwrap().key.clone()).or_insert(0) += 1;
                    }
                    seen
                })
            })
            .collect();
        let mut total = std::collections::HashMap::new();
        for t in counts {
            for (k, v) in t.join().unwrap() {
                *total.entry(k).or_insert(0) += v;
            }
        }
        assert!(total.values().all(|v| *v == 4000), "{total:?}");
    }

    #[test]
    fn a_failover_walks_on_from_its_last_try_without_taking_a_turn() {
        let b = balancer(3);
        let members = b.ring().members.clone();
        let first = b.pick(&[]).unwrap();
        assert!(Arc::ptr_eq(&first, &members[0]));
        // The request fails over twice: members 1 then 2, in ring order.
        let second = b.pick(std::slice::from_ref(&first)).unwrap();
        assert!(Arc::ptr_eq(&second, &members[1]));
        let third = b.pick(&[first.clone(), second.clone()]).unwrap();
        assert!(Arc::ptr_eq(&third, &members[2]));
        // The next request still gets the next turn: member 1.
        assert!(Arc::ptr_eq(&b.pick(&[]).unwrap(), &members[1]));
    }

    #[test]
    fn a_new_ring_continues_the_rotation_and_a_policy_change_keeps_it() {
        let b = balancer(3);
        let _ = b.pick(&[]);
        let _ = b.pick(&[]);
        let members = b.ring().members.clone();
        b.replace(Ring::new(members.clone(), Vec::new(), 2, 0));
        assert!(
            Arc::ptr_eq(&b.pick(&[]).unwrap(), &members[2]),
            "third turn"
        );
        b.set_policy(Policy {
            balance: shared::config::Balance::WeightedRoundRobin,
            slow_start: Duration::ZERO,
        });
        b.replace(Ring::new(members.clone(), vec![1, 1, 2], 3, 0));
        let picks: Vec<String> = (0..4).map(|_| b.pick(&[]).unwrap().key.clone()).collect();
        let heavy = picks.iter().filter(|k| **k == members[2].key).count();
        assert_eq!(heavy, 2, "weights 1/1/2 over one cycle: {picks:?}");
    }

    #[test]
    fn a_member_that_comes_back_joins_anew() {
        let b = Balancer::new("ns", Policy::default());
        let (one, two) = (upstream(1), upstream(2));
        assert_eq!(
            b.track(&[one.clone(), two.clone()], 1_000, 60_000),
            [1_000, 1_000]
        );
        b.track(std::slice::from_ref(&one), 2_000, 60_000);
        assert_eq!(
            b.track(&[one.clone(), two.clone()], 3_000, 60_000),
            [1_000, 3_000]
        );
    }

    #[test]
    fn skips_tried_and_cooling_members() {
        let b = balancer(3);
        let first = b.pick(&[]).unwrap();
        let second = b.pick(std::slice::from_ref(&first)).unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        let ring = b.ring();
        ring.members[0].cool_down(Duration::from_secs(60));
        for _ in 0..6 {
            assert_ne!(b.pick(&[]).unwrap().key, ring.members[0].key);
        }
        let all: Vec<_> = ring.members.clone();
        assert!(b.pick(&all).is_none());
        assert!(!b.has_untried(&all));
        let others: Vec<_> = ring.members[1..].to_vec();
        assert_eq!(
            b.pick(&others).unwrap().key,
            ring.members[0].key,
            "a cooling one as a last resort"
        );
    }

    #[test]
    fn a_stream_is_live_only_while_connected_current_and_heard_from() {
        let w = WatchStatus::default();
        w.set_idle_timeout(Duration::from_secs(60));
        let first = w.opened();
        w.set(WatchState::Connected);
        assert!(w.live_on(first));
        assert_eq!(w.get(), WatchState::Connected);
        let second = w.opened();
        assert!(!w.live_on(first), "a snapshot of a stream gone since");
        assert!(w.live_on(second));
        w.set(WatchState::Disconnected);
        assert!(!w.live_on(second));
        // Silent past the idle timeout: neither live nor reported connected.
        w.set(WatchState::Connected);
        w.set_idle_timeout(Duration::from_millis(1));
        w.opened_ms.store(1, Ordering::Relaxed);
        w.last_confirmed_ms.store(1, Ordering::Relaxed);
        assert!(w.silent(clock().max(1) + 2));
        assert!(!w.silent(2), "heard from 1 ms ago");
    }

    #[test]
    fn departed_members_are_tracked_for_a_while_then_dropped() {
        let b = Balancer::new("ns", Policy::default());
        let (one, two) = (upstream(1), upstream(2));
        b.track(&[one.clone(), two.clone()], 1_000, 500);
        b.track(std::slice::from_ref(&one), 1_100, 500);
        let t = b.tracked.lock().unwrap().clone();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].left_ms, Some(1_100));
        b.track(std::slice::from_ref(&one), 1_599, 500);
        assert_eq!(
            b.tracked.lock().unwrap().len(),
            2,
            "kept 499 ms after leaving"
        );
        b.track(std::slice::from_ref(&one), 1_600, 500);
        assert_eq!(b.tracked.lock().unwrap().len(), 1, "dropped 500 ms after");
        b.track(&[one.clone(), two.clone()], 1_700, 500);
        assert!(b
            .tracked
            .lock()
            .unwrap()
            .iter()
            .all(|t| t.left_ms.is_none()));
    }

    #[test]
    fn a_rebuilt_router_keeps_the_balancers_of_remaining_namespaces() {
        let route = |prefix: &str, namespace: &str| RouteConfig {
            prefix: prefix.into(),
            namespace: namespace.into(),
            verify_request_id: false,
            ..RouteConfig::default()
        };
        let old = Router::new(&[route("/", "a"), route("/b", "b")]);
        let (new, made) = Router::rebuilt(&[route("/", "a"), route("/c", "c")], old.balancers());
        assert!(Arc::ptr_eq(&new.balancers()[0], &old.balancers()[0]));
        assert_eq!(made.len(), 1);
        assert_eq!(made[0].namespace, "c");
        assert!(Arc::ptr_eq(new.route(b"/c/x").unwrap(), &made[0]));
        assert_eq!(new.route(b"/b").unwrap().namespace, "a");
    }

    #[test]
    fn each_route_keeps_its_own_rules() {
        let keyed = shared::config::IdempotencyConfig {
            mode: IdempotencyMode::Honor,
            ..Default::default()
        };
        let routes = vec![
            RouteConfig {
                prefix: "/pay".into(),
                namespace: "a".into(),
                verify_request_id: true,
                idempotency: keyed.clone(),
                ..RouteConfig::default()
            },
            RouteConfig {
                prefix: "/".into(),
                namespace: "a".into(),
                ..RouteConfig::default()
            },
        ];
        let r = Router::new(&routes);
        let pay = r.choose(b"/pay/1").unwrap();
        let other = r.choose(b"/other").unwrap();
        assert!(r.verifies_request_id(pay) && !r.verifies_request_id(other));
        assert_eq!(r.idempotency(pay), Some(&keyed));
        assert_eq!(r.idempotency(other), None, "mode off");
    }

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let routes = vec![
            RouteConfig {
                prefix: "/".into(),
                namespace: "a".into(),
                verify_request_id: false,
                ..RouteConfig::default()
            },
            RouteConfig {
                prefix: "/api".into(),
                namespace: "b".into(),
                verify_request_id: false,
                ..RouteConfig::default()
            },
        ];
        let r = Router::new(&routes);
        assert_eq!(r.route(b"/api/x").unwrap().namespace, "b");
        assert_eq!(r.route(b"/api?x=1").unwrap().namespace, "b");
        assert_eq!(r.route(b"/apix").unwrap().namespace, "a");
        let only_api = Router::new(&routes[1..]);
        assert!(only_api.route(b"/other").is_none());
    }
}
