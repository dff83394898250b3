//! Binds the client address and accepts connections, each in its own task
//! on the accepting worker's executor (see [`crate::worker`]).
//!
//! Each worker gets its own socket: with `reuse_port`, one SO_REUSEPORT
//! socket per worker bound to the same address; without, duplicates of one
//! socket (one accept queue, shared).
//!
//! With `reuse_port` (the default) the socket is bound with SO_REUSEADDR and
//! SO_REUSEPORT, so several gateways on one host share the address: the
//! kernel gives each its own accept queue and spreads new connections over
//! them by a hash of the client's address and port.
//!
//! The sockets are bound at start but listened on only when the gateway is
//! ready ([`crate::ready`]): a SO_REUSEPORT socket joins its port's group at
//! `listen()`, so a gateway that cannot serve takes no connection from its
//! peers. Until then each accept loop waits for the gate to open.
//!
//! Shutdown: the gate closes first, and the accept loops stop; only then does
//! the gateway tell its connections it is stopping, so clients told
//! `Connection: close` reconnect to a peer, never to this closing socket.
//! Each connection then ends after the request it is serving, an idle one
//! after a short drain window ([`crate::connection`]); whatever is still
//! running after `drain_timeout` is cut by the [`crate::deadline::Watchdog`]. With
//! SO_REUSEPORT, connections the kernel already queued for *this* socket are
//! reset when it closes rather than handed to a sibling, so before closing
//! the socket the loop takes everything left in its queue (non-blocking
//! accepts until `WouldBlock`) and serves those too. What can still be lost is
//! a connection completing its handshake in the microseconds between that
//! last accept and the close; Linux 5.14+ with `net.ipv4.tcp_migrate_req=1`
//! moves even those to a sibling.
//!
//! A connection's first request is never cut by the shutdown: the client
//! connected before the gateway stopped, so the task waits (at most
//! [`connection::DRAIN_WINDOW`] once stopping) for its first bytes.

use crate::connection;
use crate::runtime::{self, net};
use crate::Context;
use async_std::task;
use futures_lite::FutureExt;
use shared::shutdown::Tracker;
use std::io::ErrorKind;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// Listen backlog, per worker socket (the kernel caps it at
/// `net.core.somaxconn`). A burst of thousands of connections arrives while
/// the accept task waits its turn behind the workers' busy connections; a
/// full queue drops the handshake's last ACK while the client already sends
/// its request, which then waits for a retransmission (a second or more):
/// at 10,000 clients that was the p99.
const BACKLOG: i32 = 65535;

/// A bound client socket, registered with a worker's reactor once on the
/// worker's thread.
#[derive(Debug)]
pub struct Bound {
    listener: std::net::TcpListener,
    addr: SocketAddr,
}

impl Bound {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }

    /// Another handle on the same socket (and accept queue).
    pub(crate) fn try_clone(&self) -> std::io::Result<Bound> {
        Ok(Bound {
            listener: self.listener.try_clone()?,
            addr: self.addr,
        })
    }
}

/// One socket per worker on `listen`: the first binds (a port 0 picks the
/// port), the others join it with SO_REUSEPORT, or share it without.
pub fn bind_all(listen: &str, reuse_port: bool, workers: usize) -> std::io::Result<Vec<Bound>> {
    let first = bind(listen, reuse_port)?;
    let addr = first.addr.to_string();
    let mut all = Vec::with_capacity(workers);
    for _ in 1..workers.max(1) {
        all.push(if reuse_port {
            bind(&addr, true)?
        } else {
            first.try_clone()?
        });
    }
    all.insert(0, first);
    Ok(all)
}

/// Binds `listen` (an `ip:port` or `host:port`), with SO_REUSEPORT when
/// `reuse_port`, without listening yet (see [`listen`]).
pub fn bind(listen: &str, reuse_port: bool) -> std::io::Result<Bound> {
    let cannot = |e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}"))
    };
    let addr = listen
        .to_socket_addrs()
        .map_err(cannot)?
        .next()
        .ok_or_else(|| {
            std::io::Error::new(
                ErrorKind::InvalidInput,
                format!("cannot listen on {listen}: it resolves to no address"),
            )
        })?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(cannot)?;
    // What std's bind does on Unix: a restarted gateway rebinds at once.
    socket.set_reuse_address(true).map_err(cannot)?;
    if reuse_port {
        socket.set_reuse_port(true).map_err(cannot)?;
    }
    socket.bind(&addr.into()).map_err(cannot)?;
    let listener: std::net::TcpListener = socket.into();
    let addr = listener.local_addr()?;
    Ok(Bound { listener, addr })
}

/// Starts listening on a bound socket: from now on the kernel queues
/// connections for it (and, with SO_REUSEPORT, hashes some of the port's to it).
pub(crate) fn listen(bound: &Bound) -> std::io::Result<()> {
    socket2::SockRef::from(&bound.listener)
        .listen(BACKLOG)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", bound.addr)))
}

/// The accept loop of one worker: waits for the gate to open, runs until it
/// closes, then serves what is left in its socket's queue; connection tasks
/// go on this worker.
pub async fn accept(ctx: &Arc<Context>, bound: Bound, connections: &Tracker) {
    let gate = &ctx.gate;
    if !gate.opens().await {
        return; // stopped before it was ready: never listened
    }
    let listener = match net::Listener::from_std(bound.listener) {
        Ok(l) => l,
        Err(e) => {
            log::error!("cannot accept on this worker: {e}");
            return;
        }
    };
    while !gate.is_closed() {
        let accepted = listener
            .accept()
            .or(async {
                gate.closes().await;
                Err(std::io::Error::other("stopping"))
            })
            .await;
        match accepted {
            Ok((stream, peer)) => serve(ctx, stream, peer, connections),
            Err(_) if gate.is_closed() => break,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                log::warn!("accept failed: {e}");
                task::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let queued = drain_queue(ctx, &listener, connections);
    drop(listener);
    if queued > 0 {
        log::info!(connections = queued; "stopped accepting; served {queued} connections left in the accept queue");
    }
}

/// Takes every connection already in the socket's accept queue; how many.
fn drain_queue(ctx: &Arc<Context>, listener: &net::Listener, connections: &Tracker) -> usize {
    let mut queued = 0;
    loop {
        match listener.try_accept() {
            Ok(Some((stream, peer))) => match net::Stream::from_std(stream) {
                Ok(stream) => {
                    queued += 1;
                    serve(ctx, stream, peer, connections);
                }
                Err(e) => log::warn!("cannot serve a queued connection: {e}"),
            },
            Ok(None) => return queued,
            Err(e) => {
                log::warn!("draining the accept queue failed: {e}");
                return queued;
            }
        }
    }
}

/// Serves one connection in its own task on this worker's executor.
fn serve(ctx: &Arc<Context>, stream: net::Stream, peer: SocketAddr, connections: &Tracker) {
    let tracked = connections.enter();
    let ctx = ctx.clone();
    let spawned = runtime::spawn(async move {
        let open = ctx.metrics.client_connections.inc() + 1;
        ctx.metrics.traffic.connected(open);
        // Ends within a tick of the drain time running out: every wait it
        // makes is bounded by its deadline, which the watchdog then kills.
        // A panic ends this connection only (logged and counted).
        let serve = connection::serve(&ctx, stream, peer);
        shared::panics::guard(&ctx.panics, "connection", serve).await;
        ctx.metrics.client_connections.dec();
        drop(tracked);
    });
    if let Err(e) = spawned {
        log::error!("cannot serve a connection: {e}");
    }
}
