//! Routes and round-robin rings.
//!
//! Each routed namespace has a [`Balancer`]: the current ring of instances,
//! swapped whole when discovery pushes a new set (arc-swap: readers never
//! lock), and a [`Selection`] that chooses among its members: round robin
//! with one cursor per worker, so N requests through one worker give each of
//! k instances N/k, plus or minus one, however many run at once; across W
//! workers each gets N/k within W. No cursor is written by two workers.

use crate::balance::pool::Upstream;
use crate::balance::selection::{RoundRobin, Selection};
use crate::observe::stats::UpstreamStats;
use crate::runtime::clock;
use arc_swap::ArcSwap;
use shared::config::RouteConfig;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// How long the per-upstream series of an instance that left the ring are
/// still exported (a rate over the last minutes still sees its last requests).
pub(crate) const DEPARTED_KEPT_MS: u64 = 5 * 60 * 1000;

/// The instances of a namespace at one version of discovery's pushed set.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    pub(crate) members: Vec<Arc<Upstream>>,
    /// Version of the watch event it was built from (0: none yet).
    pub(crate) version: u64,
    /// Members kept from before a watch reconnect, not in discovery's answer yet.
    pub(crate) held: usize,
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
}

/// One namespace's ring, cursor and watch state.
#[derive(Debug)]
pub(crate) struct Balancer {
    pub(crate) namespace: String,
    ring: ArcSwap<Ring>,
    selection: Box<dyn Selection>,
    pub(crate) watch: WatchStatus,
    /// Where requests find instances: the ring (watch) or a lookup per try.
    pub(crate) source: crate::balance::origin::Origin,
    /// Members now and lately, for the per-upstream series.
    tracked: Mutex<Vec<Tracked>>,
}

impl Balancer {
    pub(crate) fn new(namespace: &str) -> Self {
        Balancer {
            namespace: namespace.to_string(),
            ring: ArcSwap::from_pointee(Ring::default()),
            selection: Box::new(RoundRobin::default()),
            watch: WatchStatus::default(),
            source: crate::balance::origin::Origin::default(),
            tracked: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn ring(&self) -> Arc<Ring> {
        self.ring.load_full()
    }

    pub(crate) fn replace(&self, ring: Ring) {
        self.track(&ring.members, clock(), DEPARTED_KEPT_MS);
        self.ring.store(Arc::new(ring));
    }

    /// Notes who joined and who left, and forgets those gone longer than `keep_ms`.
    fn track(&self, members: &[Arc<Upstream>], now_ms: u64, keep_ms: u64) {
        let mut tracked = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
        for t in tracked.iter_mut() {
            let member = members.iter().find(|m| m.key == t.key);
            match member {
                Some(m) => {
                    t.left_ms = None;
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
                });
            }
        }
        tracked.retain(|t| {
            t.left_ms
                .is_none_or(|left| now_ms.saturating_sub(left) < keep_ms)
        });
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

    /// The next member in round-robin order that this request has not tried
    /// and that is not cooling down after a refused connection; a cooling one
    /// only if nothing else is left.
    pub(crate) fn pick(&self, tried: &[Arc<Upstream>]) -> Option<Arc<Upstream>> {
        let ring = self.ring.load();
        let n = ring.members.len();
        let mut fallback = None;
        for _ in 0..n {
            let at = self.selection.next(&ring);
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
    /// Per route (same order): answers must carry the request's id.
    verify_request_id: Vec<bool>,
    balancers: Vec<Arc<Balancer>>,
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
                        Some(b) => b.clone(),
                        None => {
                            let b = Arc::new(Balancer::new(&route.namespace));
                            made.push(b.clone());
                            b
                        }
                    };
                    balancers.push(b.clone());
                    b
                }
            };
            table.push((route.prefix.clone(), balancer, route.verify_request_id));
        }
        table.sort_by_key(|(prefix, ..)| std::cmp::Reverse(prefix.len()));
        let verify_request_id = table.iter().map(|(.., verify)| *verify).collect();
        let routes = table.into_iter().map(|(p, b, _)| (p, b)).collect();
        (
            Router {
                routes,
                verify_request_id,
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
        self.verify_request_id
            .get(route.0)
            .copied()
            .unwrap_or(false)
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
    use crate::balance::pool::Limits;
    use std::time::Duration;

    fn upstream(port: u16) -> Arc<Upstream> {
        let limits = Limits {
            max_idle: 1,
            idle_timeout: Duration::from_secs(1),
            passive: crate::balance::passive::Policy {
                failures: 3,
                cooldown: Duration::from_secs(2),
            },
        };
        Arc::new(Upstream::new(
            format!("127.0.0.1:{port}"),
            Vec::new(),
            limits,
        ))
    }

    fn balancer(n: u16) -> Balancer {
        let b = Balancer::new("ns");
        b.replace(Ring {
            members: (1..=n).map(upstream).collect(),
            version: 1,
            held: 0,
        });
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
        let b = Balancer::new("ns");
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
    fn longest_prefix_wins_on_segment_boundaries() {
        let routes = vec![
            RouteConfig {
                prefix: "/".into(),
                namespace: "a".into(),
                verify_request_id: false,
            },
            RouteConfig {
                prefix: "/api".into(),
                namespace: "b".into(),
                verify_request_id: false,
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
