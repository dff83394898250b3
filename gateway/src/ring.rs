//! Routes and round-robin rings.
//!
//! Each routed namespace has a [`Balancer`]: the current ring of instances,
//! swapped whole when discovery pushes a new set (arc-swap: readers never
//! lock), and one atomic cursor, so N requests over k instances give each
//! N/k, plus or minus one, however many run at once.

use crate::pool::Upstream;
use arc_swap::ArcSwap;
use shared::config::RouteConfig;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

/// The instances of a namespace at one version of discovery's pushed set.
#[derive(Debug, Default)]
pub struct Ring {
    pub members: Vec<Arc<Upstream>>,
    /// Version of the watch event it was built from (0: none yet).
    pub version: u64,
    /// Members kept from before a watch reconnect, not in discovery's answer yet.
    pub held: usize,
}

/// State of the watch stream feeding a ring, for `/status` and `/metrics`.
#[derive(Debug, Default)]
pub struct WatchStatus {
    state: AtomicU8,
    pub reconnects: AtomicU64,
    /// [`crate::pool::clock`] milliseconds of the last event received.
    pub last_event_ms: AtomicU64,
    /// [`crate::pool::clock`] milliseconds until which held members stay.
    pub grace_until_ms: AtomicU64,
}

/// Where a watch stream stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchState {
    Connecting,
    Connected,
    Disconnected,
}

impl WatchStatus {
    pub fn set(&self, state: WatchState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub fn get(&self) -> WatchState {
        match self.state.load(Ordering::Relaxed) {
            1 => WatchState::Connected,
            2 => WatchState::Disconnected,
            _ => WatchState::Connecting,
        }
    }
}

impl WatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            WatchState::Connecting => "connecting",
            WatchState::Connected => "connected",
            WatchState::Disconnected => "disconnected",
        }
    }
}

/// One namespace's ring, cursor and watch state.
#[derive(Debug)]
pub struct Balancer {
    pub namespace: String,
    ring: ArcSwap<Ring>,
    cursor: AtomicUsize,
    pub watch: WatchStatus,
}

impl Balancer {
    pub fn new(namespace: &str) -> Self {
        Balancer {
            namespace: namespace.to_string(),
            ring: ArcSwap::from_pointee(Ring::default()),
            cursor: AtomicUsize::new(0),
            watch: WatchStatus::default(),
        }
    }

    pub fn ring(&self) -> Arc<Ring> {
        self.ring.load_full()
    }

    pub fn replace(&self, ring: Ring) {
        self.ring.store(Arc::new(ring));
    }

    /// The next member in round-robin order that this request has not tried
    /// and that is not cooling down after a refused connection; a cooling one
    /// only if nothing else is left.
    pub fn pick(&self, tried: &[Arc<Upstream>]) -> Option<Arc<Upstream>> {
        let ring = self.ring.load();
        let n = ring.members.len();
        let mut fallback = None;
        for _ in 0..n {
            let at = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
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
    pub fn has_untried(&self, tried: &[Arc<Upstream>]) -> bool {
        self.ring
            .load()
            .members
            .iter()
            .any(|m| !tried.iter().any(|t| Arc::ptr_eq(t, m)))
    }
}

/// Path prefixes to balancers; the longest matching prefix wins.
#[derive(Debug)]
pub struct Router {
    routes: Vec<(String, Arc<Balancer>)>,
    balancers: Vec<Arc<Balancer>>,
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Self {
        let mut balancers: Vec<Arc<Balancer>> = Vec::new();
        let mut table = Vec::new();
        for route in routes {
            let balancer = match balancers.iter().find(|b| b.namespace == route.namespace) {
                Some(b) => b.clone(),
                None => {
                    let b = Arc::new(Balancer::new(&route.namespace));
                    balancers.push(b.clone());
                    b
                }
            };
            table.push((route.prefix.clone(), balancer));
        }
        table.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Router {
            routes: table,
            balancers,
        }
    }

    /// The balancer for a request target (path and query).
    pub fn route(&self, target: &[u8]) -> Option<&Arc<Balancer>> {
        self.routes
            .iter()
            .find(|(prefix, _)| matches(prefix.as_bytes(), target))
            .map(|(_, b)| b)
    }

    /// One balancer per routed namespace.
    pub fn balancers(&self) -> &[Arc<Balancer>] {
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
    use crate::pool::Limits;
    use std::time::Duration;

    fn upstream(port: u16) -> Arc<Upstream> {
        let limits = Limits {
            max_idle: 1,
            idle_timeout: Duration::from_secs(1),
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
    fn longest_prefix_wins_on_segment_boundaries() {
        let routes = vec![
            RouteConfig {
                prefix: "/".into(),
                namespace: "a".into(),
            },
            RouteConfig {
                prefix: "/api".into(),
                namespace: "b".into(),
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
