//! Serves a tide app on a port: our own HTTP/1 front in place of async-h1's
//! server, and a graceful shutdown, which tide lacks.
//!
//! async-h1 and http-types `unwrap` on input they cannot represent (a header
//! value above 0x7F ends the process), refuse HTTP/1.0, stop at 8 KiB heads
//! and lose pipelined bytes. The front reads heads and bodies with the
//! project's strict codec ([`crate::http1`]), refuses what tide could not
//! take with a JSON error, and hands tide only requests it can represent
//! ([`front`]); it writes tide's answers with its own framing ([`respond`]).
//! Every connection runs under [`crate::panics::guard`] and every handler
//! call under a catch that answers 500: a panic ends at most one connection.
//!
//! Shutdown: stop accepting, let requests in progress finish, close idle
//! keep-alive connections, and cut whatever is left once the drain time is up.
//!
//! TLS ([`TlsOptions`]): each connection's handshake runs in the
//! connection's own task, bounded by the handshake timeout, so a client that
//! sends nothing (or plain HTTP, refused at its first bytes) never holds up
//! the accept loop or another client. A silent one counts as idle at the
//! connection cap. A client certificate verified against the listener's
//! client CA reaches handlers as [`PeerCertificate`] in the request's
//! extensions.

mod connection;
mod front;
mod respond;
mod slots;

use crate::shutdown::{Tracker, Trigger};
use async_std::net::TcpListener;
use async_std::task::{self, JoinHandle};
use connection::Shared;
use futures_lite::FutureExt;
use slots::Slots;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A running tide server: its bound address and the way to stop it.
#[derive(Debug)]
pub struct Served {
    addr: SocketAddr,
    stop: Trigger,
    kill: Trigger,
    connections: Tracker,
    accept: JoinHandle<()>,
}

/// What a served port tolerates from its clients.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections served at once; at the cap the listener stops accepting
    /// (the kernel's backlog holds the rest) so descriptors stay free, and
    /// closes connections idle for 250 ms or more (between requests, or
    /// connected and silent) to make room.
    pub max_connections: usize,
    /// A request head must arrive whole within this from its first byte (a
    /// new connection's first byte too, counted from the accept): 408 and
    /// close otherwise.
    pub header_timeout: Duration,
    /// A whole request body must arrive within this once its head is in
    /// (not per read: a body dripped a byte at a time is cut too): 408 and
    /// close otherwise.
    pub body_timeout: Duration,
    /// A keep-alive connection with no request in progress is closed after
    /// this; it also bounds each write of an answer to a client that does
    /// not read.
    pub idle_timeout: Duration,
    /// Largest request head; larger ones are answered 431.
    pub max_head_bytes: usize,
    /// Largest request body; larger ones are answered 413.
    pub max_body_bytes: usize,
    /// The kernel's send buffer per connection (`SO_SNDBUF`; the kernel
    /// doubles it), or `None` for its own autotuned one, which grows to
    /// megabytes. A long-lived stream to a client that stops reading (a
    /// stalled watcher) holds at most this much in the kernel, and its
    /// server finds out as soon as that is full.
    pub send_buffer: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            // Above the gateway's default max_header_bytes (16 KiB) plus what it
            // adds, so every head the gateway forwards is one the apps take.
            max_head_bytes: 32 * 1024,
            max_body_bytes: 2 * 1024 * 1024,
            send_buffer: None,
        }
    }
}

/// How to serve: the limits, where caught panics are counted, and TLS.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub limits: Limits,
    pub panics: crate::panics::Panics,
    /// The port speaks HTTPS; plain HTTP without it.
    pub tls: Option<TlsOptions>,
}

/// TLS on a served port: the certificates (replaceable by the caller, who
/// keeps a clone of `server`: [`crate::tls::ServerTls::replace`]) and how
/// long a handshake may take.
#[derive(Clone, Debug)]
pub struct TlsOptions {
    pub server: Arc<crate::tls::ServerTls>,
    /// A handshake not over by then is closed.
    pub handshake_timeout: Duration,
    /// Handshakes by outcome, for the caller's metrics.
    pub handshakes: Arc<Handshakes>,
}

impl TlsOptions {
    /// `server` with `handshake_timeout` and fresh counts.
    pub fn new(server: Arc<crate::tls::ServerTls>, handshake_timeout: Duration) -> TlsOptions {
        TlsOptions {
            server,
            handshake_timeout,
            handshakes: Arc::default(),
        }
    }
}

/// TLS handshakes on a port by outcome.
#[derive(Debug, Default)]
pub struct Handshakes {
    /// Over, with or without a client certificate.
    pub ok: std::sync::atomic::AtomicU64,
    /// Refused or broken: not TLS (plain HTTP), no common version or
    /// cipher, a client certificate that does not chain to the client CA.
    pub failed: std::sync::atomic::AtomicU64,
    /// Not over within the handshake timeout.
    pub timeout: std::sync::atomic::AtomicU64,
}

/// The certificate a client presented on a TLS connection, verified against
/// the listener's client CA (the leaf, DER), in the request's extensions:
/// `req.ext::<PeerCertificate>()`. Absent when the client presented none.
#[derive(Clone, Debug)]
pub struct PeerCertificate(pub Arc<rustls_pki_types::CertificateDer<'static>>);

/// Binds `listen` (port 0 picks a free port) and serves `app` until `shutdown`.
pub async fn serve<S>(app: tide::Server<S>, listen: &str) -> std::io::Result<Served>
where
    S: Clone + Send + Sync + 'static,
{
    serve_with(app, bind(listen).await?, Options::default())
}

/// Binds `listen` (port 0 picks a free port), naming the address in the error.
pub async fn bind(listen: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))
}

/// Serves `app` on a listener bound by the caller, with default options.
pub fn serve_on<S>(app: tide::Server<S>, listener: TcpListener) -> std::io::Result<Served>
where
    S: Clone + Send + Sync + 'static,
{
    serve_with(app, listener, Options::default())
}

/// Serves `app` on a listener bound by the caller, within `options`.
pub fn serve_with<S>(
    app: tide::Server<S>,
    listener: TcpListener,
    options: Options,
) -> std::io::Result<Served>
where
    S: Clone + Send + Sync + 'static,
{
    let addr = listener.local_addr()?;
    let stop = Trigger::new();
    let kill = Trigger::new();
    let connections = Tracker::default();
    let tls = options.tls.map(|tls| connection::Tls {
        acceptor: futures_rustls::TlsAcceptor::from(tls.server.config()),
        handshake_timeout: tls.handshake_timeout,
        handshakes: tls.handshakes,
    });
    let shared = Arc::new(Shared {
        app,
        limits: options.limits,
        panics: options.panics,
        stop: stop.clone(),
        kill: kill.clone(),
        tls,
    });
    let accept = task::spawn(accept_loop(shared, listener, connections.clone()));
    Ok(Served {
        addr,
        stop,
        kill,
        connections,
        accept,
    })
}

impl Served {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting at once, waits up to `drain` for requests in progress,
    /// then closes every connection that is left.
    pub async fn shutdown(self, drain: Duration) {
        self.stop.fire();
        self.accept.await;
        if !self.connections.drained(drain).await {
            log::warn!(addr:% = self.addr, left = self.connections.live(); "drain time over, closing connections");
        }
        self.kill.fire();
        self.connections.drained(Duration::from_secs(1)).await;
    }
}

/// How long a connection must have been idle before it is closed to make
/// room at the connection cap (a client that just connected gets this long
/// to send its request).
const REAP_GRACE: Duration = Duration::from_millis(250);

async fn accept_loop<S>(shared: Arc<Shared<S>>, listener: TcpListener, connections: Tracker)
where
    S: Clone + Send + Sync + 'static,
{
    let slots = Arc::new(Slots::default());
    let max = shared.limits.max_connections.max(1);
    let grace = REAP_GRACE.min(shared.limits.idle_timeout);
    let stop = shared.stop.clone();
    loop {
        // At the cap: accept nothing (the kernel's backlog holds the rest, and
        // descriptors stay free), and make room by closing idle connections.
        while slots.len() >= max && !stop.is_fired() {
            slots.reap_idle(grace);
            slots
                .freed(grace.max(Duration::from_millis(10)))
                .or(stop.wait())
                .await;
        }
        let accepted = listener
            .accept()
            .or(async {
                stop.wait().await;
                Err(std::io::Error::other("stopping"))
            })
            .await;
        match accepted {
            Ok((stream, _)) => {
                let tracked = connections.enter();
                let held = slots.enter();
                let shared = shared.clone();
                task::spawn(async move {
                    let panics = shared.panics.clone();
                    crate::panics::guard(
                        &panics,
                        "connection",
                        connection::serve(&shared, stream, held),
                    )
                    .await;
                    drop(tracked);
                });
            }
            Err(_) if stop.is_fired() => break,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of
                // spinning, and make room if the cap is not what ran out.
                log::warn!("accept failed: {e}");
                slots.reap_idle(grace);
                task::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // Idle keep-alive connections close now; busy ones after their answer.
    slots.close_all_when_idle();
}
