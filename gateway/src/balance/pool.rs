//! Upstream instances and their keep-alive connection pools.
//!
//! An [`Upstream`] outlives the rings that list it, so its idle connections
//! survive ring updates. Idle connections are bounded per instance
//! (`pool_max_idle`) and closed after `pool_idle_timeout`; the most recently
//! used one is reused first, as it is the least likely to have been closed by
//! the instance.
//!
//! Each worker keeps its own idle list per instance ([`PerWorker`]): a
//! connection is checked out and in by the worker whose requests use it, so
//! the lists' locks are never contended, and `pool_max_idle` bounds each
//! worker's list, as nginx's `keepalive` bounds each worker's cache.
//!
//! A connection is pooled, and handed out again, only when it is known to be
//! empty: bytes left after a complete answer, or anything that arrives while
//! it idles (seen at checkout, and by the reaper every second), close it;
//! bytes blame the instance ([`crate::balance::passive`]). Checkout asks the kernel
//! (one peek per reuse): the worker may not have seen the event yet.
//!
//! An instance of a namespace with `upstream_tls` is its own [`Upstream`]
//! (even at a `host:port` a plain namespace lists too), whose connections are
//! TLS ([`UpstreamStream`]); a pooled one is handed out only under the TLS
//! settings it was made with (a reload that reads new files retires it).

use crate::balance::passive::{Fault, PassiveHealth, Policy};
use crate::http::upstream_tls::{UpstreamStream, UpstreamTls};
use crate::observe::causes::Skip;
use crate::runtime::deadline::Deadline;
use crate::runtime::net::{Stream, Unread};
use crate::runtime::slots::{Padded, PerWorker};
use crate::runtime::{clock, Until};
use arc_swap::ArcSwap;
use shared::allowed::AllowedHosts;
use shared::http1::{ReadBuf, ResponseHead};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Room for a typical response head and small body in one read.
const CONN_BUFFER: usize = 4 * 1024;

/// A connection to an instance, with its read buffer and response head scratch.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) stream: UpstreamStream,
    pub(crate) buf: ReadBuf,
    /// The [`UpstreamTls::generation`] it was made under; 0 for plain.
    tls_generation: u64,
    pub(crate) head: ResponseHead,
    /// Came from the pool: the instance may have closed it meanwhile.
    pub(crate) reused: bool,
    /// Some byte of an answer to the request now in flight has arrived: from
    /// then on the request is never sent to another instance.
    pub(crate) answering: bool,
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    /// [`clock`] milliseconds when it was checked in.
    since: u64,
}

impl Idle {
    /// How long it has idled, at [`clock`] time `now`.
    fn idled(&self, now: u64) -> Duration {
        Duration::from_millis(now.saturating_sub(self.since))
    }
}

/// Pool limits and the passive-health policy, from the config at start.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) max_idle: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) passive: Policy,
}

/// One instance: where it is, its idle connections, and whether to avoid it for now.
#[derive(Debug)]
pub(crate) struct Upstream {
    /// `host:port` as discovery names it; also what `exclude` lists.
    pub(crate) key: String,
    /// The addresses it may be connected at (`allowed_upstreams`).
    addrs: Vec<SocketAddr>,
    /// Why it is never connected to: every address it resolved to is
    /// outside `allowed_upstreams`.
    refused: Option<String>,
    /// Per worker, most recently used last.
    idle: PerWorker<Mutex<Vec<Idle>>>,
    limits: Limits,
    /// Milliseconds on [`clock`] until which it is skipped in round robin.
    cooling_until: AtomicU64,
    pub(crate) opened: AtomicU64,
    /// Tries to it in progress now ([`Upstream::begin_try`]): what a
    /// least-connections selection would compare. On a cache line of its
    /// own: every worker writes it, and every pick reads the fields beside.
    in_flight: Padded<AtomicU64>,
    /// Requests, errors and latency of the tries made to it (`/metrics`, `/status`).
    pub(crate) stats: Arc<crate::observe::stats::UpstreamStats>,
    /// What its answers got wrong ([`crate::balance::passive`]).
    pub(crate) health: Arc<PassiveHealth>,
    /// Its namespace's `upstream_tls`, swapped in place by a reload; `None`: plain.
    tls: Option<Arc<ArcSwap<UpstreamTls>>>,
}

impl Upstream {
    pub(crate) fn new(key: String, addrs: Vec<SocketAddr>, limits: Limits) -> Self {
        Upstream {
            key,
            addrs,
            refused: None,
            idle: PerWorker::default(),
            limits,
            cooling_until: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            in_flight: Padded::new(AtomicU64::new(0)),
            stats: Arc::default(),
            health: Arc::default(),
            tls: None,
        }
    }

    /// Whether its connections are TLS (`upstream_tls`).
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Counts a try to it as in flight until the guard is dropped.
    pub(crate) fn begin_try(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Tries to it in progress now.
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Keeps only the addresses `allowed` allows. With none left, the
    /// instance is never connected to: every connect fails at once as
    /// [`Skipped`], which the request fails over like a refused connect (the
    /// next member at once, this one cooled down for `connect_cooldown`, and
    /// counted). Logged here, once per instance, not per request.
    pub(crate) fn screened(mut self, allowed: &AllowedHosts) -> Self {
        let (ok, denied): (Vec<SocketAddr>, Vec<SocketAddr>) = self
            .addrs
            .iter()
            .partition(|a| allowed.check(a.ip()).is_ok());
        let Some(first) = denied.first() else {
            return self;
        };
        let why = allowed
            .check(first.ip())
            .err()
            .unwrap_or_else(|| format!("{first} is refused"));
        if ok.is_empty() {
            log::warn!(upstream = self.key.as_str(), reason = "denied";
                "never connecting to this instance: {why}; requests skip it as if it refused connections");
            self.refused = Some(why);
        } else {
            log::warn!(upstream = self.key.as_str(), reason = "denied";
                "connecting to this instance only at its allowed addresses: {why}");
        }
        self.addrs = ok;
        self
    }

    /// Whether `allowed_upstreams` refuses every address of it.
    pub(crate) fn is_refused(&self) -> bool {
        self.refused.is_some()
    }

    /// The calling worker's idle list.
    fn lock(&self) -> MutexGuard<'_, Vec<Idle>> {
        lock(self.idle.local())
    }

    /// The most recently used idle connection that has not expired and is
    /// known to be empty: one on which anything arrived while it idled is
    /// closed (the end: the instance closed it; bytes: a stray answer, and
    /// the instance is blamed), and the next one looked at.
    pub(crate) fn checkout(&self) -> Option<Conn> {
        let mut idle = self.lock();
        while let Some(mut entry) = idle.pop() {
            if entry.idled(clock()) < self.limits.idle_timeout
                && self.same_tls(&entry.conn)
                && self.still_empty(&mut entry.conn)
            {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Whether `conn` was made under the TLS settings in force (always, for plain).
    fn same_tls(&self, conn: &Conn) -> bool {
        match &self.tls {
            None => true,
            Some(tls) => tls.load().generation == conn.tls_generation,
        }
    }

    /// Whether nothing arrived on an idle connection (one peek). The end of
    /// the stream means the instance closed it; bytes are a stray answer,
    /// and the instance is blamed. Either way the caller drops it.
    fn still_empty(&self, conn: &mut Conn) -> bool {
        match conn.stream.unread() {
            Unread::Nothing => true,
            Unread::Closed => false,
            Unread::Bytes => {
                self.stray("on a pooled connection while it idled");
                false
            }
        }
    }

    /// Returns a connection whose exchange ended cleanly, if it is known to
    /// be empty and there is room; bytes after a complete answer close it
    /// and blame the instance.
    pub(crate) fn checkin(&self, mut conn: Conn) {
        // Checked again at checkout; here only what is known already.
        let unread = match conn.stream.is_readable_now() {
            true => conn.stream.unread(),
            false => Unread::Nothing,
        };
        if !conn.buf.is_empty() || unread == Unread::Bytes {
            self.stray("after a complete answer");
            return;
        }
        if unread == Unread::Closed {
            return; // the instance closed it after answering
        }
        if !self.health.may_pool(clock()) {
            return; // it sent stray bytes lately: one connection per request until its cool-down ends
        }
        conn.buf.shrink();
        conn.reused = true;
        let mut idle = self.lock();
        if idle.len() < self.limits.max_idle {
            idle.push(Idle {
                conn,
                since: clock(),
            });
        }
    }

    /// Counts `fault` against the instance, and cools it down when the
    /// faults in a row reach `passive_health_failures`. True when it did.
    pub(crate) fn blame(&self, fault: Fault) -> bool {
        let cool = self.health.blame(fault, self.limits.passive, clock());
        if cool {
            self.cool_down(self.limits.passive.cooldown);
        }
        cool
    }

    /// A good answer: its faults no longer run in a row.
    pub(crate) fn answered_well(&self) {
        self.health.answered();
    }

    fn stray(&self, when: &str) {
        let cooled = self.blame(Fault::StrayBytes);
        log::warn!(upstream = self.key.as_str(), fault = Fault::StrayBytes.as_str(), cooled_down = cooled;
            "stray bytes {when}: the connection is closed, and none is pooled until the cool-down ends");
    }

    /// Opens a new connection, trying each resolved address, all within `timeout`.
    /// An instance `allowed_upstreams` refuses, or one whose host did not
    /// resolve, fails at once as [`Skipped`]: nothing is connected to.
    pub(crate) async fn connect(
        &self,
        deadline: &Deadline,
        timeout: Duration,
    ) -> std::io::Result<Conn> {
        if let Some(why) = &self.refused {
            let why = format!("{} is not connected to: {why}", self.key);
            return Err(Skipped::error(Skip::Denied, why));
        }
        if self.addrs.is_empty() {
            let why = format!("{} resolved to no address", self.key);
            return Err(Skipped::error(Skip::Unresolved, why));
        }
        let mut last = std::io::Error::other(format!("{} resolved to no address", self.key));
        let until = Until::after(timeout);
        for addr in &self.addrs {
            let left = until.left();
            match deadline.within(left, Stream::connect(*addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    let (stream, tls_generation) = match &self.tls {
                        None => (UpstreamStream::from(stream), 0),
                        Some(tls) => {
                            let tls = tls.load_full();
                            let shake = tls.connect(&self.key, stream);
                            match deadline.within(until.left(), shake).await {
                                Ok(Ok(stream)) => (stream, tls.generation),
                                Ok(Err(e)) => {
                                    last = Handshake::error(format!(
                                        "TLS handshake with {addr} failed: {e}"
                                    ));
                                    continue;
                                }
                                Err(_) => {
                                    last = Handshake::error(format!(
                                        "TLS handshake with {addr} timed out"
                                    ));
                                    continue;
                                }
                            }
                        }
                    };
                    self.opened.fetch_add(1, Ordering::Relaxed);
                    return Ok(Conn {
                        stream,
                        buf: ReadBuf::with_capacity(CONN_BUFFER),
                        head: ResponseHead::default(),
                        reused: false,
                        answering: false,
                        tls_generation,
                    });
                }
                Ok(Err(e)) => last = e,
                Err(_) => {
                    last = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connect to {addr} timed out"),
                    )
                }
            }
        }
        Err(last)
    }

    /// Skips this instance in round robin for `period` (it refused a
    /// connection, or got too many answers wrong in a row).
    pub(crate) fn cool_down(&self, period: Duration) {
        let until = clock() + period.as_millis() as u64;
        self.cooling_until.fetch_max(until, Ordering::Relaxed);
    }

    pub(crate) fn is_cooling(&self) -> bool {
        self.cooling_until.load(Ordering::Relaxed) > clock()
    }

    /// Idle connections over every worker.
    pub(crate) fn idle_count(&self) -> usize {
        self.idle.iter().map(|l| lock(l).len()).sum()
    }

    /// Closes idle connections past the idle timeout, and those on which
    /// anything arrived while they idled, in every worker's list: what the
    /// instance sends to a connection nobody reads never waits for a request.
    pub(crate) fn expire_idle(&self) {
        let timeout = self.limits.idle_timeout;
        for list in self.idle.iter() {
            let now = clock();
            lock(list).retain_mut(|i| self.still_empty(&mut i.conn) && i.idled(now) < timeout);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connect not even tried: the gateway's destination policy
/// (`allowed_upstreams`) refuses the instance, or its host did not resolve.
/// Nothing was sent anywhere; the request fails over as after a refused connect.
#[derive(Debug)]
pub(crate) struct Skipped {
    pub(crate) why: Skip,
    message: String,
}

impl Skipped {
    fn error(why: Skip, message: String) -> std::io::Error {
        let kind = match why {
            Skip::Denied => std::io::ErrorKind::PermissionDenied,
            Skip::Unresolved => std::io::ErrorKind::NotFound,
        };
        std::io::Error::new(kind, Skipped { why, message })
    }
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Skipped {}

/// A TLS handshake with an instance that failed (or was refused by the
/// instance before any answer): nothing of the request reached it.
#[derive(Debug)]
pub(crate) struct Handshake(String);

impl Handshake {
    pub(crate) fn error(message: String) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, Handshake(message))
    }
}

impl std::fmt::Display for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Handshake {}

/// Whether a failed connect was a failed TLS handshake.
pub(crate) fn handshake_failed(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<Handshake>().is_some())
}

/// Why a failed connect was [`Skipped`], if it was.
pub(crate) fn skipped(e: &std::io::Error) -> Option<Skip> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<Skipped>())
        .map(|s| s.why)
}

/// Every instance the gateway knows, by key, shared by all rings.
#[derive(Debug)]
pub(crate) struct Upstreams {
    map: Mutex<HashMap<String, Arc<Upstream>>>,
    /// Each namespace's `upstream_tls` in force, by namespace.
    tls: Mutex<HashMap<String, Arc<ArcSwap<UpstreamTls>>>>,
    limits: Limits,
    /// `allowed_upstreams`: every instance made here is screened by it.
    allowed: AllowedHosts,
}

impl Upstreams {
    pub(crate) fn new(limits: Limits, allowed: AllowedHosts) -> Self {
        Upstreams {
            map: Mutex::new(HashMap::new()),
            tls: Mutex::new(HashMap::new()),
            limits,
            allowed,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Upstream>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The instance for `key` in `namespace`, created with `addrs` (those
    /// `allowed_upstreams` allows) if new. A namespace with `upstream_tls`
    /// has instances of its own, whose connections are TLS.
    pub(crate) fn get(&self, key: &str, addrs: Vec<SocketAddr>, namespace: &str) -> Arc<Upstream> {
        let tls = lock(&self.tls).get(namespace).cloned();
        let entry = match &tls {
            None => key.to_string(),
            Some(_) => format!("{key} tls:{namespace}"),
        };
        self.lock()
            .entry(entry)
            .or_insert_with(|| {
                let mut made = Upstream::new(key.to_string(), addrs, self.limits);
                made.tls = tls;
                Arc::new(made.screened(&self.allowed))
            })
            .clone()
    }

    /// Whether `namespace` has `upstream_tls` settings in force.
    pub(crate) fn has_tls(&self, namespace: &str) -> bool {
        lock(&self.tls).contains_key(namespace)
    }

    /// Puts `tls` in force for `namespace`'s instances: new connections use
    /// it, connections pooled under older settings are not reused.
    pub(crate) fn set_tls(&self, namespace: &str, tls: UpstreamTls) {
        let mut all = lock(&self.tls);
        match all.get(namespace) {
            Some(slot) => slot.store(Arc::new(tls)),
            None => {
                all.insert(namespace.to_string(), Arc::new(ArcSwap::from_pointee(tls)));
            }
        }
    }

    /// Expires idle connections, and forgets instances no ring or request holds any more.
    pub(crate) fn reap(&self) {
        let mut map = self.lock();
        map.retain(|_, up| Arc::strong_count(up) > 1);
        for up in map.values() {
            up.expire_idle();
        }
    }

    pub(crate) fn all(&self) -> Vec<Arc<Upstream>> {
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }
}

/// The addresses of `host`: an IP literal as it is, a name through the resolver
/// (IPv4 first, as instances usually bind 127.0.0.1 rather than ::1).
pub(crate) async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let mut addrs: Vec<SocketAddr> = async_std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .await?
        .collect();
    addrs.sort_by_key(|a| a.is_ipv6());
    Ok(addrs)
}

/// A try in flight to an instance; counted until dropped.
#[derive(Debug)]
pub(crate) struct InFlight<'a>(&'a Upstream);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shared::allowed::{default_ranges, Setting};

    /// An instance at `127.0.0.1:port`, for the tests of rings and selections.
    pub(crate) fn upstream_at(port: u16) -> Arc<Upstream> {
        Arc::new(Upstream::new(
            format!("127.0.0.1:{port}"),
            Vec::new(),
            limits(),
        ))
    }

    /// One idle connection kept a second; cooled down after 3 faults for 2 s.
    fn limits() -> Limits {
        Limits {
            max_idle: 1,
            idle_timeout: Duration::from_secs(1),
            passive: crate::balance::passive::Policy {
                failures: 3,
                cooldown: Duration::from_secs(2),
            },
        }
    }

    fn upstream(addrs: &[&str]) -> Upstream {
        let addrs = addrs.iter().map(|a| a.parse().unwrap()).collect();
        let policy = AllowedHosts::parse_setting(Setting::GATEWAY, &default_ranges()).unwrap();
        Upstream::new("instance:9".into(), addrs, limits()).screened(&policy)
    }

    #[test]
    fn a_try_is_in_flight_until_its_guard_drops() {
        let up = upstream_at(1);
        let first = up.begin_try();
        let second = up.begin_try();
        assert_eq!(up.in_flight(), 2);
        drop(first);
        assert_eq!(up.in_flight(), 1);
        drop(second);
        assert_eq!(up.in_flight(), 0);
    }

    fn connect(up: &Upstream) -> std::io::Result<Conn> {
        let deadline = Deadline::default();
        futures_lite::future::block_on(up.connect(&deadline, Duration::from_secs(1)))
    }

    // 0.0.0.0 (unspecified) is denied by the default policy; nothing here
    // connects anywhere.
    #[test]
    fn an_instance_at_denied_addresses_only_is_never_connected_to() {
        let up = upstream(&["0.0.0.0:9"]);
        assert!(up.is_refused());
        let e = connect(&up).err().unwrap();
        assert_eq!(skipped(&e), Some(Skip::Denied));
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("allowed_upstreams"), "{e}");
        assert_eq!(up.opened.load(Ordering::Relaxed), 0);
        assert!(
            !shared::local_trouble::is_local_trouble(&e),
            "the instance's fault, not ours"
        );
    }

    #[test]
    fn denied_addresses_are_dropped_and_allowed_ones_kept() {
        let up = upstream(&["0.0.0.0:9", "127.0.0.1:9"]);
        assert!(!up.is_refused());
        assert_eq!(up.addrs, vec!["127.0.0.1:9".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn an_instance_without_addresses_is_skipped_as_unresolved() {
        let up = upstream(&[]);
        assert!(!up.is_refused());
        let e = connect(&up).err().unwrap();
        assert_eq!(skipped(&e), Some(Skip::Unresolved));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(skipped(&refused), None);
    }
}
