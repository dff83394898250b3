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
//! bytes blame the instance ([`crate::passive`]). Checkout asks the kernel
//! (one peek per reuse): the worker may not have seen the event yet.

use crate::deadline::Deadline;
use crate::passive::{Fault, PassiveHealth, Policy};
use crate::runtime::net::{Stream, Unread};
use crate::runtime::{clock, Until};
use crate::worker::PerWorker;
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
pub struct Conn {
    pub stream: Stream,
    pub buf: ReadBuf,
    pub head: ResponseHead,
    /// Came from the pool: the instance may have closed it meanwhile.
    pub reused: bool,
    /// Some byte of an answer to the request now in flight has arrived: from
    /// then on the request is never sent to another instance.
    pub answering: bool,
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
pub struct Limits {
    pub max_idle: usize,
    pub idle_timeout: Duration,
    pub passive: Policy,
}

/// One instance: where it is, its idle connections, and whether to avoid it for now.
#[derive(Debug)]
pub struct Upstream {
    /// `host:port` as discovery names it; also what `exclude` lists.
    pub key: String,
    addrs: Vec<SocketAddr>,
    /// Per worker, most recently used last.
    idle: PerWorker<Mutex<Vec<Idle>>>,
    limits: Limits,
    /// Milliseconds on [`clock`] until which it is skipped in round robin.
    cooling_until: AtomicU64,
    pub opened: AtomicU64,
    /// Requests, errors and latency of the tries made to it (`/metrics`, `/status`).
    pub stats: Arc<crate::stats::UpstreamStats>,
    /// What its answers got wrong ([`crate::passive`]).
    pub health: Arc<PassiveHealth>,
}

impl Upstream {
    pub fn new(key: String, addrs: Vec<SocketAddr>, limits: Limits) -> Self {
        Upstream {
            key,
            addrs,
            idle: PerWorker::default(),
            limits,
            cooling_until: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            stats: Arc::default(),
            health: Arc::default(),
        }
    }

    /// The calling worker's idle list.
    fn lock(&self) -> MutexGuard<'_, Vec<Idle>> {
        lock(self.idle.local())
    }

    /// The most recently used idle connection that has not expired and is
    /// known to be empty: one on which anything arrived while it idled is
    /// closed (the end: the instance closed it; bytes: a stray answer, and
    /// the instance is blamed), and the next one looked at.
    pub fn checkout(&self) -> Option<Conn> {
        let mut idle = self.lock();
        while let Some(entry) = idle.pop() {
            if entry.idled(clock()) >= self.limits.idle_timeout {
                continue;
            }
            match entry.conn.stream.unread() {
                Unread::Nothing => return Some(entry.conn),
                Unread::Closed => {}
                Unread::Bytes => self.stray("on a pooled connection while it idled"),
            }
        }
        None
    }

    /// Returns a connection whose exchange ended cleanly, if it is known to
    /// be empty and there is room; bytes after a complete answer close it
    /// and blame the instance.
    pub fn checkin(&self, mut conn: Conn) {
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
    pub fn blame(&self, fault: Fault) -> bool {
        let cool = self.health.blame(fault, self.limits.passive, clock());
        if cool {
            self.cool_down(self.limits.passive.cooldown);
        }
        cool
    }

    /// A good answer: its faults no longer run in a row.
    pub fn answered_well(&self) {
        self.health.answered();
    }

    fn stray(&self, when: &str) {
        let cooled = self.blame(Fault::StrayBytes);
        log::warn!(upstream = self.key.as_str(), fault = Fault::StrayBytes.as_str(), cooled_down = cooled;
            "stray bytes {when}: the connection is closed, and none is pooled until the cool-down ends");
    }

    /// Opens a new connection, trying each resolved address, all within `timeout`.
    pub async fn connect(&self, deadline: &Deadline, timeout: Duration) -> std::io::Result<Conn> {
        let mut last = std::io::Error::other(format!("{} resolved to no address", self.key));
        let until = Until::after(timeout);
        for addr in &self.addrs {
            let left = until.left();
            match deadline.within(left, Stream::connect(*addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    self.opened.fetch_add(1, Ordering::Relaxed);
                    return Ok(Conn {
                        stream,
                        buf: ReadBuf::with_capacity(CONN_BUFFER),
                        head: ResponseHead::default(),
                        reused: false,
                        answering: false,
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
    pub fn cool_down(&self, period: Duration) {
        let until = clock() + period.as_millis() as u64;
        self.cooling_until.fetch_max(until, Ordering::Relaxed);
    }

    pub fn is_cooling(&self) -> bool {
        self.cooling_until.load(Ordering::Relaxed) > clock()
    }

    /// Idle connections over every worker.
    pub fn idle_count(&self) -> usize {
        self.idle.iter().map(|l| lock(l).len()).sum()
    }

    /// Closes idle connections past the idle timeout, and those on which
    /// anything arrived while they idled, in every worker's list: what the
    /// instance sends to a connection nobody reads never waits for a request.
    pub fn expire_idle(&self) {
        let timeout = self.limits.idle_timeout;
        for list in self.idle.iter() {
            let now = clock();
            let mut strays = 0;
            lock(list).retain(|i| {
                match i.conn.stream.unread() {
                    Unread::Nothing => return i.idled(now) < timeout,
                    Unread::Closed => {}
                    Unread::Bytes => strays += 1,
                }
                false
            });
            for _ in 0..strays {
                self.stray("on a pooled connection while it idled");
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every instance the gateway knows, by key, shared by all rings.
#[derive(Debug)]
pub struct Upstreams {
    map: Mutex<HashMap<String, Arc<Upstream>>>,
    limits: Limits,
}

impl Upstreams {
    pub fn new(limits: Limits) -> Self {
        Upstreams {
            map: Mutex::new(HashMap::new()),
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Upstream>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The instance for `key`, created with `addrs` if new.
    pub fn get(&self, key: &str, addrs: Vec<SocketAddr>) -> Arc<Upstream> {
        self.lock()
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(Upstream::new(key.to_string(), addrs, self.limits)))
            .clone()
    }

    /// Expires idle connections, and forgets instances no ring or request holds any more.
    pub fn reap(&self) {
        let mut map = self.lock();
        map.retain(|_, up| Arc::strong_count(up) > 1);
        for up in map.values() {
            up.expire_idle();
        }
    }

    pub fn all(&self) -> Vec<Arc<Upstream>> {
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }
}

/// The addresses of `host`: an IP literal as it is, a name through the resolver
/// (IPv4 first, as instances usually bind 127.0.0.1 rather than ::1).
pub async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
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
