//! `GET /api/watch?namespace=`: Server-Sent Events pushing a namespace's
//! routable set (available and not in maintenance), read from the local mirror.
//!
//! Instance sets are state, not a log: every event is the whole set, so a
//! watcher that falls behind loses nothing by skipping to the newest one. So
//! nothing is queued per watcher. The mirror bumps a per-namespace
//! generation and wakes that namespace's streams ([`Topic`]); a stream's body
//! is produced only when the connection asks for more bytes, and then it is
//! the newest snapshot, serialized once per version and shared by every
//! watcher of the namespace. A watcher that stops reading holds at most the
//! one event it was being sent, never blocks the registry or other watchers,
//! and gets the latest version when it reads again.
//!
//! Streams are capped on their own (`max_watchers`, [`Hub::admit`]): they
//! hold their connection for as long as they last, and must never take the
//! connections that register, lookup and the health checks need.
//!
//! Warm-up: a discovery that just started with an empty registry does not
//! know yet what the apps will re-register, so until `warmup` has passed
//! every event says `"warming": true` and gateways let it add instances but
//! never remove any. When the warm-up ends every stream is woken and re-sends
//! its namespace's set without the flag (same version: the set did not
//! change, only how far it can be trusted), so gateways learn the final set.

use crate::counters::Counters;
use crate::mirror::Announce;
use crate::registry::Registry;
use futures_lite::{AsyncBufRead, AsyncRead, Future};
use prometheus_client::metrics::gauge::Gauge;
use shared::shutdown::Trigger;
use shared::wire::WatchEvent;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The watch streams: who watches which namespace, and how many may.
#[derive(Debug)]
pub(crate) struct Hub {
    topics: Mutex<HashMap<String, Watched>>,
    closed: Trigger,
    /// Streams open now (admitted and not yet dropped).
    open: AtomicUsize,
    /// Most streams open at once.
    cap: usize,
    next_id: AtomicU64,
    /// Until when this discovery is warming up (`None`: it never does).
    warm_until: Option<Instant>,
}

/// A namespace's topic and how many streams follow it (removed at zero, so
/// namespaces nobody watches cost nothing).
#[derive(Debug)]
struct Watched {
    topic: Arc<Topic>,
    streams: usize,
}

impl Default for Hub {
    /// A hub without a cap (the registry's unit tests serve no streams).
    fn default() -> Self {
        Hub::with_cap(usize::MAX)
    }
}

impl Hub {
    pub(crate) fn with_cap(cap: usize) -> Self {
        Hub {
            topics: Mutex::default(),
            closed: Trigger::new(),
            open: AtomicUsize::new(0),
            cap,
            next_id: AtomicU64::new(0),
            warm_until: None,
        }
    }

    /// The hub of a discovery that warms up for `warmup` from now (zero: not at all).
    pub(crate) fn warming_for(mut self, warmup: Duration) -> Self {
        self.warm_until = (!warmup.is_zero()).then(|| Instant::now() + warmup);
        self
    }

    /// Whether events sent now must say `"warming": true`.
    pub(crate) fn warming(&self) -> bool {
        self.warm_until.is_some_and(|until| Instant::now() < until)
    }

    /// Waits for the end of the warm-up, then wakes every stream so it
    /// re-sends its set as warmed. Returns at once without a warm-up.
    pub(crate) async fn end_warmup(self: Arc<Self>) {
        let Some(until) = self.warm_until else {
            return;
        };
        log::info!(seconds = until.saturating_duration_since(Instant::now()).as_secs_f64();
            "warming up: watch events say \"warming\" until the apps have re-registered");
        async_std::task::sleep(until.saturating_duration_since(Instant::now())).await;
        log::info!("warm-up over: watch streams re-send their sets as warmed");
        self.wake_all();
    }

    /// Most streams open at once.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// A place among the open streams, or `None` at the cap. Taken before the
    /// stream starts, so a refused watcher costs one short answer.
    pub(crate) fn admit(self: &Arc<Self>, counters: &Counters) -> Option<Admission> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.cap).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            counters.watchers_refused.inc();
            return None;
        }
        counters.watchers.inc();
        Some(Admission {
            hub: self.clone(),
            gauge: counters.watchers.clone(),
        })
    }

    /// Ends every stream once it has sent what it was sending (at shutdown,
    /// so the server can drain).
    pub(crate) fn close(&self) {
        self.closed.fire();
        self.wake_all();
    }

    /// Wakes every stream of every namespace.
    fn wake_all(&self) {
        let topics: Vec<Arc<Topic>> = self.lock().values().map(|w| w.topic.clone()).collect();
        for topic in topics {
            topic.changed();
        }
    }

    fn subscribe(self: &Arc<Self>, namespace: &str) -> Subscription {
        let topic = {
            let mut topics = self.lock();
            let watched = topics
                .entry(namespace.to_string())
                .or_insert_with(|| Watched {
                    topic: Arc::default(),
                    streams: 0,
                });
            watched.streams += 1;
            watched.topic.clone()
        };
        Subscription {
            hub: self.clone(),
            namespace: namespace.to_string(),
            topic,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
        }
    }

    fn leave(&self, sub: &Subscription) {
        sub.topic.forget(sub.id);
        let mut topics = self.lock();
        if let Some(watched) = topics.get_mut(&sub.namespace) {
            watched.streams = watched.streams.saturating_sub(1);
            if watched.streams == 0 {
                topics.remove(&sub.namespace);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Watched>> {
        // The map holds no invariant a panic could break half-way.
        self.topics.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The mirror announces every change of a namespace's routable set here.
impl Announce for Hub {
    /// Wakes every stream of `namespace`, never waiting on any of them.
    fn changed(&self, namespace: &str) {
        let topic = self.lock().get(namespace).map(|w| w.topic.clone());
        if let Some(topic) = topic {
            topic.changed();
        }
    }
}

/// One open stream's place under the cap; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Admission {
    hub: Arc<Hub>,
    gauge: Gauge,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.hub.open.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// One namespace's "latest version" cell: a generation bumped on every
/// change, the wakers of streams waiting for one, and the newest event
/// serialized once for all of them.
#[derive(Debug, Default)]
struct Topic {
    generation: AtomicU64,
    waiting: Mutex<HashMap<u64, Waker>>,
    /// The last event written, by version and warming flag: versions only
    /// grow within a namespace (the mirror never drops one), so a version
    /// names one set, and warming only ever ends.
    encoded: Mutex<Option<(Sent, Arc<[u8]>)>>,
}

/// What a stream last sent: a set's version and whether it said warming.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sent {
    version: u64,
    warming: bool,
}

impl Sent {
    /// Later events order after earlier ones: a newer version, or the same
    /// one once warmed.
    fn order(self) -> (u64, bool) {
        (self.version, !self.warming)
    }
}

impl Topic {
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let waiting = std::mem::take(&mut *lock(&self.waiting));
        for waker in waiting.into_values() {
            waker.wake();
        }
    }

    /// Ready once the generation is past `seen`; else wakes `cx` when it is.
    fn poll_change(&self, id: u64, seen: u64, cx: &mut Context<'_>) -> Poll<()> {
        let mut waiting = lock(&self.waiting);
        // Checked under the lock `changed` takes after bumping: a change
        // either shows here or finds this waker.
        if self.generation() != seen {
            return Poll::Ready(());
        }
        match waiting.get(&id) {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => {
                waiting.insert(id, cx.waker().clone());
            }
        }
        Poll::Pending
    }

    fn forget(&self, id: u64) {
        lock(&self.waiting).remove(&id);
    }

    /// `snapshot` as an SSE event, serialized once per version (and warming
    /// flag) however many watch.
    fn encoded(&self, snapshot: &WatchEvent, warming: bool) -> Arc<[u8]> {
        let key = Sent {
            version: snapshot.version,
            warming,
        };
        if let Some((sent, bytes)) = &*lock(&self.encoded) {
            if *sent == key {
                return bytes.clone();
            }
        }
        // Serialized outside the lock: a large set takes a while, and every
        // watcher woken by the change would otherwise block an executor
        // thread waiting for it. At worst two threads encode the same version.
        let bytes: Arc<[u8]> = encode_message(snapshot, warming).into();
        let mut cached = lock(&self.encoded);
        if cached.as_ref().is_none_or(|(s, _)| s.order() < key.order()) {
            *cached = Some((key, bytes.clone()));
        }
        bytes
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Wakers and a cached event: nothing a panic could leave half-made.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A stream's membership of its namespace's topic; leaves it when dropped.
#[derive(Debug)]
struct Subscription {
    hub: Arc<Hub>,
    namespace: String,
    topic: Arc<Topic>,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.leave(self);
    }
}

/// One SSE event carrying a snapshot of a warmed discovery.
pub fn encode_event(event: &WatchEvent) -> Vec<u8> {
    encode_message(event, false)
}

/// The `data:` as [`shared::wire::WatchMessage`] reads it, without copying the set.
#[derive(serde::Serialize)]
struct Outgoing<'a> {
    #[serde(flatten)]
    event: &'a WatchEvent,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    warming: bool,
}

/// One SSE event carrying a snapshot, saying whether discovery is warming.
fn encode_message(event: &WatchEvent, warming: bool) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::with_capacity(64 + 64 * event.instances.len());
    let _ = write!(out, "event: instances\nid: {}\ndata: ", event.version);
    // Compact JSON has no newline to break the `data:` line. A WatchEvent is
    // strings and numbers, so this cannot fail; if it did, the data is empty.
    let data = out.len();
    if serde_json::to_writer(&mut out, &Outgoing { event, warming }).is_err() {
        out.truncate(data);
    }
    out.extend_from_slice(b"\n\n");
    out
}

const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// What a watch stream needs besides its admission.
pub(crate) struct StreamSpec {
    pub registry: Arc<Registry>,
    pub namespace: String,
    pub keepalive: Duration,
}

/// The response body of one watch stream: the snapshot at once, then the
/// newest one after each change, keep-alive comments when nothing changes
/// for `keepalive`; it ends when the hub closes. Produces bytes only when
/// the connection reads, so it holds at most the event being written.
pub(crate) struct WatchBody {
    registry: Arc<Registry>,
    sub: Subscription,
    /// The last event sent.
    sent: Option<Sent>,
    chunk: Chunk,
    at: usize,
    keepalive: Duration,
    /// Boxed sleep; in a mutex only so the body is `Sync` as tide requires
    /// (reached through `get_mut`, never locked).
    timer: Mutex<Pin<Box<dyn Future<Output = ()> + Send>>>,
    _admission: Admission,
}

enum Chunk {
    Event(Arc<[u8]>),
    KeepAlive,
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Event(b) => b,
            Chunk::KeepAlive => KEEPALIVE,
        }
    }
}

/// Starts a watch stream for an admitted watcher.
pub(crate) fn open_stream(hub: &Arc<Hub>, spec: StreamSpec, admission: Admission) -> WatchBody {
    WatchBody {
        sub: hub.subscribe(&spec.namespace),
        registry: spec.registry,
        sent: None,
        chunk: Chunk::KeepAlive,
        // Nothing of the placeholder chunk is sent: the snapshot comes first.
        at: KEEPALIVE.len(),
        keepalive: spec.keepalive,
        timer: Mutex::new(sleep(spec.keepalive)),
        _admission: admission,
    }
}

fn sleep(d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async_std::task::sleep(d))
}

impl WatchBody {
    /// The next chunk to send, `None` at the end of the stream.
    fn poll_next_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Chunk>> {
        let topic = self.sub.topic.clone();
        loop {
            // A stream opened as the hub closes still gets its snapshot.
            if self.sent.is_some() && self.sub.hub.closed.is_fired() {
                return Poll::Ready(None);
            }
            // Read before the snapshot: a change made after this read shows
            // as a newer generation below, so none is missed.
            let seen = topic.generation();
            let snapshot = self.registry.snapshot(&self.sub.namespace);
            // Read after the generation too: the end of the warm-up bumps it.
            let warming = self.sub.hub.warming();
            let now = Sent {
                version: snapshot.version,
                warming,
            };
            if self.sent != Some(now) {
                self.sent = Some(now);
                self.rearm();
                return Poll::Ready(Some(Chunk::Event(topic.encoded(&snapshot, warming))));
            }
            drop(snapshot);
            if topic.poll_change(self.sub.id, seen, cx).is_ready() {
                continue;
            }
            let timer = self.timer.get_mut().unwrap_or_else(PoisonError::into_inner);
            if timer.as_mut().poll(cx).is_ready() {
                self.rearm();
                return Poll::Ready(Some(Chunk::KeepAlive));
            }
            return Poll::Pending;
        }
    }

    /// The keep-alive comes `keepalive` after the last thing sent.
    fn rearm(&mut self) {
        *self.timer.get_mut().unwrap_or_else(PoisonError::into_inner) = sleep(self.keepalive);
    }
}

impl AsyncBufRead for WatchBody {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<&[u8]>> {
        let this = self.get_mut();
        while this.at >= this.chunk.bytes().len() {
            match this.poll_next_chunk(cx) {
                Poll::Ready(Some(chunk)) => {
                    this.chunk = chunk;
                    this.at = 0;
                }
                Poll::Ready(None) => return Poll::Ready(Ok(&[])),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(&this.chunk.bytes()[this.at..]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.at = (this.at + amt).min(this.chunk.bytes().len());
    }
}

impl AsyncRead for WatchBody {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = match self.as_mut().poll_fill_buf(cx) {
            Poll::Ready(Ok(bytes)) => {
                let n = bytes.len().min(buf.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                n
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        self.consume(n);
        Poll::Ready(Ok(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::wire::{Endpoint, Port, WatchMessage};

    fn set() -> WatchEvent {
        WatchEvent {
            namespace: "ns".into(),
            version: 7,
            instances: vec![Endpoint {
                id: "a".into(),
                host: "127.0.0.1".into(),
                port: Port(8080),
                weight: 1,
            }],
        }
    }

    fn data(event: &[u8]) -> WatchMessage {
        let text = std::str::from_utf8(event).unwrap();
        let line = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn an_event_says_warming_only_while_warming() {
        let warm = data(&encode_message(&set(), true));
        assert!(warm.warming);
        assert_eq!(warm.event, set());
        let plain = encode_event(&set());
        assert!(!String::from_utf8_lossy(&plain).contains("warming"));
        assert!(!data(&plain).warming);
    }

    #[test]
    fn a_hub_warms_for_its_warmup_only() {
        assert!(!Hub::default().warming(), "no warm-up unless asked");
        assert!(!Hub::default().warming_for(Duration::ZERO).warming());
        assert!(Hub::default()
            .warming_for(Duration::from_secs(60))
            .warming());
        let hub = Arc::new(Hub::default().warming_for(Duration::from_millis(20)));
        async_std::task::block_on(hub.clone().end_warmup());
        assert!(!hub.warming(), "over once end_warmup returns");
    }

    #[test]
    fn the_warmed_set_replaces_the_warming_one_in_the_cache() {
        let topic = Topic::default();
        let warming = topic.encoded(&set(), true);
        assert!(data(&warming).warming);
        let warmed = topic.encoded(&set(), false);
        assert!(!data(&warmed).warming);
        assert!(Arc::ptr_eq(&warmed, &topic.encoded(&set(), false)));
    }
}
