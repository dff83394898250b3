//! The load itself: one task per keep-alive connection, closed or open loop.
//!
//! The hot loop must not be the bottleneck, so each task owns its connection,
//! its request (patched in place, see `body`), its response buffers and its
//! tally (histogram and counters), merged only at the end; the only shared
//! writes are the task's own progress counters, on their own cache line.
//!
//! Closed loop: each connection sends its next request when the answer to the
//! previous one arrives. Open loop: requests are due at fixed times, `1/rate`
//! apart; a free connection claims the next due slot from a shared counter, and
//! latency runs from the slot's time, so a stall that delays later requests
//! shows in their latency instead of silently lowering the rate
//! (coordinated omission corrected).

use crate::body::Request;
use crate::connection::{Answer, Connection, Plain, Stream, Tls, TlsDialer};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Failure times kept per connection for the chaos window; beyond this only counted.
const MAX_FAILURE_TIMES: usize = 100_000;
/// Described failures kept per connection.
const MAX_SAMPLES: usize = 3;
/// Pause after a refused connect in closed loop, so a dead target is not a busy loop.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// What every connection task reads; built once per run.
#[derive(Debug)]
pub struct Plan {
    pub addr: SocketAddr,
    /// TLS to the target (an `https://` URL); `None` for plain HTTP.
    pub tls: Option<TlsDialer>,
    /// `Host` header.
    pub host: String,
    /// Request target.
    pub target: String,
    pub body_size: usize,
    pub verify: bool,
    pub start: Instant,
    pub end: Instant,
    /// Open loop: requests per second over all connections.
    pub rate: Option<f64>,
    /// Open loop: the next slot to claim.
    pub next_slot: AtomicU64,
    /// The instance a chaos scenario watches leave and rejoin.
    pub watched: Option<Arc<Watched>>,
}

impl Plan {
    fn since_start(&self, at: Instant) -> u64 {
        micros(at.saturating_duration_since(self.start))
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// When one instance (`x-served-by`) was last seen before a fault was lifted
/// and first seen after: where it left and rejoined the traffic.
#[derive(Debug)]
pub struct Watched {
    pub key: String,
    /// µs since start; `u64::MAX` until the fault is lifted.
    lifted_at: AtomicU64,
    /// µs since start, plus one (0: never).
    last_before: AtomicU64,
    /// µs since start (`u64::MAX`: never).
    first_after: AtomicU64,
}

impl Watched {
    pub fn new(key: String) -> Watched {
        Watched {
            key,
            lifted_at: AtomicU64::new(u64::MAX),
            last_before: AtomicU64::new(0),
            first_after: AtomicU64::new(u64::MAX),
        }
    }

    fn saw(&self, at_us: u64) {
        if at_us < self.lifted_at.load(Ordering::Relaxed) {
            self.last_before.fetch_max(at_us + 1, Ordering::Relaxed);
        } else {
            self.first_after.fetch_min(at_us, Ordering::Relaxed);
        }
    }

    /// The fault is over from `at` (since start) on.
    pub fn lifted(&self, at: Duration) {
        self.lifted_at.store(micros(at), Ordering::Relaxed);
    }

    /// Its last answer before the fault was lifted.
    pub fn left(&self) -> Option<Duration> {
        match self.last_before.load(Ordering::Relaxed) {
            0 => None,
            t => Some(Duration::from_micros(t - 1)),
        }
    }

    /// Its first answer after the fault was lifted.
    pub fn rejoined(&self) -> Option<Duration> {
        match self.first_after.load(Ordering::Relaxed) {
            u64::MAX => None,
            t => Some(Duration::from_micros(t)),
        }
    }
}

/// Live counters of one connection, read by the progress ticker. Aligned so
/// two connections never share a cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Live {
    pub answered: AtomicU64,
    pub failed: AtomicU64,
}

/// Requests that got no answer, by what went wrong.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Transport {
    /// The connection could not be opened.
    pub connect: u64,
    /// The request could not be written.
    pub write: u64,
    /// The answer could not be read or parsed.
    pub read: u64,
    /// The server closed (or reset) the connection instead of answering.
    pub closed: u64,
    /// Still unanswered when the drain time after the run was over.
    pub timeout: u64,
}

impl Transport {
    pub fn total(&self) -> u64 {
        self.connect + self.write + self.read + self.closed + self.timeout
    }

    fn add(&mut self, o: &Transport) {
        self.connect += o.connect;
        self.write += o.write;
        self.read += o.read;
        self.closed += o.closed;
        self.timeout += o.timeout;
    }
}

/// A failed request, described.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Sample {
    /// Seconds since the start.
    pub at_s: f64,
    pub what: String,
}

/// What one connection saw; merged into the summary at the end.
#[derive(Clone, Debug)]
pub struct Tally {
    /// Microseconds, every answered request.
    pub latency: Histogram<u32>,
    /// Requests attempted, transport failures included.
    pub sent: u64,
    pub answered: u64,
    pub ok: u64,
    /// 200 with a body other than the one sent.
    pub mismatched: u64,
    /// 200 with the right body but no `x-served-by` (verification on).
    pub unattributed: u64,
    pub statuses: Vec<(u16, u64)>,
    pub transport: Transport,
    pub served_by: Vec<(String, u64)>,
    /// µs since start of every failed request (up to a cap).
    pub failure_times: Vec<u64>,
    pub samples: Vec<(u64, String)>,
    /// Connections opened (over TLS: full handshakes made).
    pub opened: u64,
    /// Over TLS: the version and cipher suite of the first connection.
    pub tls_params: Option<String>,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            // Auto-resizing: memory follows the largest latency seen, not a fixed hour.
            latency: match Histogram::new(3) {
                Ok(h) => h,
                Err(_) => unreachable!("3 significant figures are in range"),
            },
            sent: 0,
            answered: 0,
            ok: 0,
            mismatched: 0,
            unattributed: 0,
            statuses: Vec::new(),
            transport: Transport::default(),
            served_by: Vec::new(),
            failure_times: Vec::new(),
            samples: Vec::new(),
            opened: 0,
            tls_params: None,
        }
    }
}

impl Tally {
    /// Adds `other` into this one.
    pub fn merge(&mut self, other: &Tally) {
        // Both auto-resize, so adding cannot fall out of range.
        let _ = self.latency.add(&other.latency);
        self.sent += other.sent;
        self.answered += other.answered;
        self.ok += other.ok;
        self.mismatched += other.mismatched;
        self.unattributed += other.unattributed;
        for (code, n) in &other.statuses {
            *entry(&mut self.statuses, *code) += n;
        }
        self.transport.add(&other.transport);
        for (key, n) in &other.served_by {
            match self.served_by.iter_mut().find(|(k, _)| k == key) {
                Some((_, m)) => *m += n,
                None => self.served_by.push((key.clone(), *n)),
            }
        }
        self.failure_times.extend_from_slice(&other.failure_times);
        self.samples.extend(other.samples.iter().cloned());
        self.opened += other.opened;
        if self.tls_params.is_none() {
            self.tls_params.clone_from(&other.tls_params);
        }
    }

    fn fail(&mut self, live: &Live, at_us: u64, what: impl FnOnce() -> String) {
        live.failed.fetch_add(1, Ordering::Relaxed);
        if self.failure_times.len() < MAX_FAILURE_TIMES {
            self.failure_times.push(at_us);
        }
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push((at_us, what()));
        }
    }

    fn count_served_by(&mut self, key: &str) {
        match self.served_by.iter_mut().find(|(k, _)| k == key) {
            Some((_, n)) => *n += 1,
            None => self.served_by.push((key.to_string(), 1)),
        }
    }
}

fn entry(statuses: &mut Vec<(u16, u64)>, code: u16) -> &mut u64 {
    let i = match statuses.iter().position(|(c, _)| *c == code) {
        Some(i) => i,
        None => {
            statuses.push((code, 0));
            statuses.len() - 1
        }
    };
    &mut statuses[i].1
}

/// A connection's tally on its way out: handed over when the task ends, and
/// also when it is cancelled at the drain deadline (a request then in flight
/// counts as a timeout), so no count is lost either way.
struct Outbox {
    tally: Tally,
    /// A request is out (or a connect under way) without an answer yet.
    in_flight: bool,
    plan: Arc<Plan>,
    live: Arc<Board>,
    index: usize,
    sink: Arc<Mutex<Vec<Tally>>>,
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if self.in_flight {
            self.tally.transport.timeout += 1;
            let at = self.plan.since_start(Instant::now());
            let live = &self.live.lives[self.index];
            self.tally.fail(live, at, || {
                "no answer before the drain time ran out".into()
            });
        }
        let tally = std::mem::take(&mut self.tally);
        match self.sink.lock() {
            Ok(mut all) => all.push(tally),
            Err(poisoned) => poisoned.into_inner().push(tally),
        }
    }
}

/// The live counters of every connection, for the progress bar.
#[derive(Debug)]
pub struct Board {
    pub lives: Vec<Live>,
    /// Set when the load is over.
    pub done: AtomicBool,
}

impl Board {
    pub fn new(connections: usize) -> Board {
        Board {
            lives: (0..connections).map(|_| Live::default()).collect(),
            done: AtomicBool::new(false),
        }
    }

    /// Answered and failed requests so far, over all connections.
    pub fn totals(&self) -> (u64, u64) {
        self.lives.iter().fold((0, 0), |(a, f), l| {
            (
                a + l.answered.load(Ordering::Relaxed),
                f + l.failed.load(Ordering::Relaxed),
            )
        })
    }
}

/// Runs every connection until the end of the plan, waits up to `drain` for
/// the requests still in flight, and returns every connection's tally.
pub async fn drive(plan: Arc<Plan>, board: Arc<Board>, drain: Duration) -> Vec<Tally> {
    let sink = Arc::new(Mutex::new(Vec::new()));
    let mut tasks: Vec<_> = (0..board.lives.len())
        .map(|i| {
            let outbox = Outbox {
                tally: Tally::default(),
                in_flight: false,
                plan: plan.clone(),
                live: board.clone(),
                index: i,
                sink: sink.clone(),
            };
            // Plain or TLS, chosen here once for the connection's whole life.
            match &plan.tls {
                None => async_std::task::spawn(connection::<Plain>(outbox, ())),
                Some(tls) => async_std::task::spawn(connection::<Tls>(outbox, tls.clone())),
            }
        })
        .collect();
    let deadline = plan.end + drain;
    for task in tasks.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = async_std::future::timeout(left, task).await;
    }
    for task in tasks {
        // A no-op for finished tasks; the rest are cut here, their tallies
        // handed over by `Outbox::drop`.
        task.cancel().await;
    }
    board.done.store(true, Ordering::Relaxed);
    let mut all = match sink.lock() {
        Ok(mut all) => std::mem::take(&mut *all),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    all.shrink_to_fit();
    all
}

/// One connection's loop, over plain TCP or TLS (`S`); a connection closed
/// (by the server, an error or a fault) is opened again, with a new handshake.
async fn connection<S: Stream>(mut out: Outbox, dialer: S::Dialer) {
    let plan = out.plan.clone();
    let board = out.live.clone();
    let live = &board.lives[out.index];
    let mut request = Request::new(&plan.host, &plan.target, out.index, plan.body_size);
    let mut res = Answer::default();
    let mut conn: Option<Connection<S>> = None;
    let mut seq: u64 = 0;
    // When the last answer arrived: the closed loop's next request goes out now.
    let mut answered_at: Option<Instant> = None;
    loop {
        // When this request is due: now (closed loop) or its slot (open loop).
        let due = match plan.rate {
            None => {
                let now = answered_at.take().unwrap_or_else(Instant::now);
                if now >= plan.end {
                    break;
                }
                now
            }
            Some(rate) => {
                let slot = plan.next_slot.fetch_add(1, Ordering::Relaxed);
                let at = plan.start + Duration::from_secs_f64(slot as f64 / rate);
                let now = Instant::now();
                if at >= plan.end || now >= plan.end {
                    break;
                }
                if at > now {
                    async_std::task::sleep(at - now).await;
                }
                at
            }
        };
        out.tally.sent += 1;
        out.in_flight = true;
        let mut sent_at = due;
        if conn.is_none() {
            match Connection::<S>::open(plan.addr, &dialer).await {
                Ok(c) => {
                    out.tally.opened += 1;
                    if out.tally.tls_params.is_none() {
                        out.tally.tls_params = c.tls_params();
                    }
                    conn = Some(c);
                    // Closed loop: latency from the write, the connect not included.
                    if plan.rate.is_none() {
                        sent_at = Instant::now();
                    }
                }
                Err(e) => {
                    out.in_flight = false;
                    out.tally.transport.connect += 1;
                    let at = plan.since_start(Instant::now());
                    out.tally.fail(live, at, || format!("connect: {e}"));
                    if plan.rate.is_none() {
                        async_std::task::sleep(CONNECT_BACKOFF).await;
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else {
            continue;
        };
        seq += 1;
        request.set_seq(seq);
        if let Err(e) = c.send(request.bytes()).await {
            conn = None;
            out.in_flight = false;
            out.tally.transport.write += 1;
            let at = plan.since_start(Instant::now());
            out.tally.fail(live, at, || format!("write: {e}"));
            continue;
        }
        let read = c.read_into(&mut res).await;
        out.in_flight = false;
        let done = Instant::now();
        let at = plan.since_start(done);
        if let Err(e) = read {
            conn = None;
            let closed = matches!(
                e.kind(),
                ErrorKind::UnexpectedEof
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
            );
            if closed {
                out.tally.transport.closed += 1;
            } else {
                out.tally.transport.read += 1;
            }
            out.tally.fail(live, at, || format!("read: {e}"));
            continue;
        }
        if !res.keep_alive {
            conn = None;
        }
        answered_at = Some(done);
        live.answered.fetch_add(1, Ordering::Relaxed);
        let t = &mut out.tally;
        t.answered += 1;
        let took = micros(done.saturating_duration_since(sent_at)).max(1);
        // Grows the (auto-resizing) histogram; clamps only if that ever failed.
        if t.latency.record(took).is_err() {
            t.latency.saturating_record(took);
        }
        *entry(&mut t.statuses, res.status) += 1;
        judge(t, live, &plan, &res, request.body(), at);
    }
}

/// Sorts one answer into OK, bad status, mismatch or unattributed.
fn judge(t: &mut Tally, live: &Live, plan: &Plan, res: &Answer, sent: &[u8], at: u64) {
    if res.status != 200 {
        t.fail(live, at, || {
            format!("status {}: {}", res.status, snippet(&res.body))
        });
        return;
    }
    if plan.verify && res.body != sent {
        t.mismatched += 1;
        t.fail(live, at, || {
            format!(
                "200 with a different body: sent {}, got {}",
                snippet(sent),
                snippet(&res.body)
            )
        });
        return;
    }
    match res.served_by() {
        Some(by) => {
            t.count_served_by(by);
            if let Some(w) = &plan.watched {
                if w.key == by {
                    w.saw(at);
                }
            }
        }
        None if plan.verify => {
            t.unattributed += 1;
            t.fail(live, at, || {
                "200 echo without an x-served-by header".to_string()
            });
            return;
        }
        None => {}
    }
    t.ok += 1;
}

fn snippet(bytes: &[u8]) -> String {
    const MAX: usize = 120;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]);
    if bytes.len() > MAX {
        format!("{text}… ({} bytes)", bytes.len())
    } else {
        text.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_instance_leaves_before_and_rejoins_after_the_lift() {
        let w = Watched::new("127.0.0.1:1".into());
        assert_eq!((w.left(), w.rejoined()), (None, None));
        w.saw(0);
        w.saw(1_000_000);
        w.saw(500_000);
        w.lifted(Duration::from_secs(2));
        w.saw(3_000_000);
        w.saw(2_500_000);
        assert_eq!(w.left(), Some(Duration::from_secs(1)));
        assert_eq!(w.rejoined(), Some(Duration::from_millis(2500)));
    }

    #[test]
    fn tallies_merge_counts_histograms_and_spread() {
        let mut a = Tally::default();
        a.latency.record(100).unwrap();
        a.ok = 1;
        a.statuses.push((200, 1));
        a.served_by.push(("x:1".into(), 1));
        let mut b = Tally::default();
        b.latency.record(10_000_000).unwrap();
        b.ok = 2;
        b.statuses.push((200, 2));
        b.statuses.push((502, 1));
        b.served_by.push(("x:1".into(), 1));
        b.served_by.push(("x:2".into(), 1));
        b.transport.closed = 1;
        a.merge(&b);
        assert_eq!(a.ok, 3);
        assert_eq!(a.latency.len(), 2);
        assert!(a.latency.max() >= 9_990_000);
        assert_eq!(a.statuses, vec![(200, 3), (502, 1)]);
        assert_eq!(a.served_by, vec![("x:1".into(), 2), ("x:2".into(), 1)]);
        assert_eq!(a.transport.total(), 1);
    }
}
