//! What the proxy's unit tests share: a [`Context`] built without starting
//! a gateway (no ports, no watch, no background task), instances played by
//! std sockets on threads, and a port that refuses connections.

use crate::balance::pool::{Limits, Upstream, Upstreams};
use crate::balance::ring::{Balancer, Ring, Router};
use crate::context::{Context, Live};
use crate::http::budget::Budget;
use crate::http::test_support::PATIENCE;
use crate::observe::counters::Metrics;
use crate::runtime::listen::Gate;
use shared::allowed::{AllowedHosts, Setting};
use shared::config::GatewayConfig;
use shared::panics::Panics;
use shared::shutdown::Trigger;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The default config, with the waits a test may run into made short, and
/// a discovery that is not there.
pub(crate) fn config() -> GatewayConfig {
    GatewayConfig {
        discovery_url: format!("http://{}", refusing_addr()),
        connect_timeout: Duration::from_secs(1),
        upstream_timeout: Duration::from_secs(2),
        request_deadline: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        client_header_timeout: Duration::from_secs(2),
        ..GatewayConfig::default()
    }
}

/// A context for `config`, as `spawn` builds it but with nothing started;
/// its first route's ring holds `members`.
pub(crate) fn context(config: GatewayConfig, members: &[SocketAddr]) -> Arc<Context> {
    let limits = Limits {
        max_idle: config.pool_max_idle,
        idle_timeout: config.pool_idle_timeout,
        passive: crate::balance::passive::Policy {
            failures: config.passive_health_failures,
            cooldown: config.connect_cooldown,
        },
    };
    let allowed = AllowedHosts::parse_setting(Setting::GATEWAY, &config.allowed_upstreams).unwrap();
    let upstreams = Arc::new(Upstreams::new(limits, allowed));
    let router = Arc::new(Router::new(&config.routes));
    let ring: Vec<Arc<Upstream>> = members
        .iter()
        .map(|addr| upstreams.get(&addr.to_string(), vec![*addr], ""))
        .collect();
    router.balancers()[0].replace(Ring::new(ring, Vec::new(), 1, 0));
    let gate = Gate::new(&[], "127.0.0.1:0".parse().unwrap()).unwrap();
    Arc::new(Context {
        router,
        upstreams,
        idempotency: Arc::new(crate::idempotency::open(&config, Arc::new(Metrics::new())).unwrap()),
        metrics: Arc::new(Metrics::new()),
        discovery: surf::Client::new(),
        stop: Trigger::new(),
        kill: Trigger::new(),
        default_host: "gw.test".into(),
        requests: Arc::default(),
        watchdog: Arc::default(),
        panics: Panics::new(),
        budget: Arc::new(Budget::new(config.max_buffered_bytes)),
        live: Arc::new(Live::default()),
        gate: Arc::new(gate),
        tls: None,
        config,
    })
}

/// The first route's balancer.
pub(crate) fn balancer(ctx: &Context) -> &Balancer {
    &ctx.router.balancers()[0]
}

/// The pooled instance at `addr` (made if new).
pub(crate) fn upstream(ctx: &Context, addr: SocketAddr) -> Arc<Upstream> {
    ctx.upstreams.get(&addr.to_string(), vec![addr], "")
}

/// An address on 127.0.0.1 where nothing listens: connects are refused.
pub(crate) fn refusing_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// One request as an instance read it: its head, as text, and its body.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) head: String,
    pub(crate) body: Vec<u8>,
}

/// What an instance does with a request: the bytes it answers, in parts
/// written [`PAUSE`] apart, and whether it closes the connection after them.
pub(crate) type Answer = Box<dyn Fn(&Received) -> (Vec<Vec<u8>>, bool) + Send + Sync>;

/// Between the parts of an answer: long enough for the gateway to read
/// each part on its own.
pub(crate) const PAUSE: Duration = Duration::from_millis(50);

/// An instance on 127.0.0.1: a thread per connection reads each request
/// (head, then a `content-length` body) and answers as `answer` says, until
/// the gateway closes. Also how many requests it has read.
pub(crate) fn instance(answer: Answer) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (answer, seen) = (Arc::new(answer), Arc::new(AtomicUsize::new(0)));
    let counted = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let (answer, seen) = (answer.clone(), seen.clone());
            std::thread::spawn(move || {
                conn.set_read_timeout(Some(PATIENCE)).unwrap();
                while let Some(request) = read_request(&mut conn) {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let (parts, close) = answer(&request);
                    for (i, part) in parts.iter().enumerate() {
                        if i > 0 {
                            std::thread::sleep(PAUSE);
                        }
                        if conn.write_all(part).is_err() {
                            return;
                        }
                    }
                    if close {
                        return;
                    }
                }
            });
        }
    });
    (addr, counted)
}

/// An instance that answers every request `200` with `body`.
pub(crate) fn answering(body: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    instance(Box::new(move |_| (vec![ok(body)], false)))
}

/// A `200` answer with `body`, framed by its length.
pub(crate) fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads one request: `None` when the connection ends first.
fn read_request(conn: &mut TcpStream) -> Option<Received> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8(head).ok()?;
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .map_or(0, |n| n.trim().parse().unwrap_or(0));
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).ok()?;
    Some(Received { head, body })
}
