//! Accepts client connections, each in its own task on the accepting
//! worker's runtime (see [`crate::proxy::workers`]).
//!
//! Each worker accepts on its own socket, bound at start
//! ([`crate::runtime::listen`]): with `reuse_port`, one SO_REUSEPORT socket
//! per worker bound to the same address; without, duplicates of one socket
//! (one accept queue, shared).
//!
//! With `reuse_port` (the default) the socket is bound with SO_REUSEADDR and
//! SO_REUSEPORT, so several gateways on one host share the address: the
//! kernel gives each its own accept queue and spreads new connections over
//! them by a hash of the client's address and port.
//!
//! The sockets are bound at start but listened on only when the gateway is
//! ready ([`crate::admin::ready`]): a SO_REUSEPORT socket joins its port's group at
//! `listen()`, so a gateway that cannot serve takes no connection from its
//! peers. Until then each accept loop waits for the gate to open.
//!
//! Shutdown: the gate closes first, and the accept loops stop; only then does
//! the gateway tell its connections it is stopping, so clients told
//! `Connection: close` reconnect to a peer, never to this closing socket.
//! Each connection then ends after the request it is serving, an idle one
//! after a short drain window ([`crate::proxy::connection`]); whatever is still
//! running after `drain_timeout` is cut (every wait it makes ends then). With
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

use crate::context::Context;
use crate::proxy::connection;
use crate::runtime::listen::Bound;
use crate::runtime::{self, net};
use async_std::task;
use futures_lite::FutureExt;
use shared::shutdown::Tracker;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The accept loop of one worker: waits for the gate to open, runs until it
/// closes, then serves what is left in its socket's queue; connection tasks
/// go on this worker. `tls`: the socket is the TLS port's.
pub(crate) async fn accept(ctx: &Arc<Context>, bound: Bound, tls: bool, connections: &Tracker) {
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
            Ok((stream, peer)) => spawn_connection(ctx, stream, peer, tls, connections),
            Err(_) if gate.is_closed() => break,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                log::warn!("accept failed: {e}");
                task::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let queued = drain_queue(ctx, &listener, tls, connections);
    drop(listener);
    if queued > 0 {
        log::info!(connections = queued; "stopped accepting; served {queued} connections left in the accept queue");
    }
}

/// Takes every connection already in the socket's accept queue; how many.
fn drain_queue(
    ctx: &Arc<Context>,
    listener: &net::Listener,
    tls: bool,
    connections: &Tracker,
) -> usize {
    let mut queued = 0;
    loop {
        match listener.try_accept() {
            Ok(Some((stream, peer))) => match net::Stream::from_std(stream) {
                Ok(stream) => {
                    queued += 1;
                    spawn_connection(ctx, stream, peer, tls, connections);
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

/// Serves one connection in its own task on this worker's runtime.
fn spawn_connection(
    ctx: &Arc<Context>,
    stream: net::Stream,
    peer: SocketAddr,
    tls: bool,
    connections: &Tracker,
) {
    let tracked = connections.enter();
    let ctx = ctx.clone();
    let spawned = runtime::spawn(async move {
        let open = ctx.metrics.client_connections.inc() + 1;
        ctx.metrics.traffic.connected(open);
        // Ends soon after the drain time runs out: every wait it makes is
        // bounded by the connection's deadline, which ends them all then.
        // A panic ends this connection only (logged and counted).
        let tls = ctx.tls.as_deref().filter(|_| tls);
        let serve = connection::serve_connection(&ctx, stream, peer, tls);
        shared::panics::guard(&ctx.panics, "connection", serve).await;
        ctx.metrics.client_connections.dec();
        drop(tracked);
    });
    if let Err(e) = spawned {
        log::error!("cannot serve a connection: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::test_support::{on_worker, read_to_end, PATIENCE};
    use crate::proxy::test_support::{answering, config, context};
    use crate::runtime::listen::{self, Gate};
    use std::io::Write;

    /// Connections the kernel queued before the gate closed are served,
    /// each in its own task, after the loop stopped accepting.
    #[test]
    fn connections_queued_when_the_gate_closes_are_still_served() {
        let (instance, _) = answering("served");
        let bound = listen::bind("127.0.0.1:0", false).unwrap();
        let addr = bound.local_addr().unwrap();
        let gate = Gate::new(&[bound.try_clone().unwrap()], addr).unwrap();
        let mut shared = context(config(), &[instance]).share();
        shared.gate = Arc::new(gate);
        let ctx = Arc::new(shared);
        ctx.gate.open().unwrap();
        let clients: Vec<_> = (0..3)
            .map(|_| {
                let mut peer = std::net::TcpStream::connect(addr).unwrap();
                peer.set_read_timeout(Some(PATIENCE)).unwrap();
                peer.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                    .unwrap();
                std::thread::spawn(move || read_to_end(&mut peer))
            })
            .collect();
        ctx.gate.close();
        let connections = Tracker::default();
        let left = on_worker(async move {
            accept(&ctx, bound, false, &connections).await;
            connections.drained(PATIENCE).await;
            connections.live()
        });
        assert_eq!(left, 0);
        for client in clients {
            let read = String::from_utf8(client.join().unwrap()).unwrap();
            assert!(read.starts_with("HTTP/1.1 200 OK\r\n"), "{read}");
            assert!(read.ends_with("\r\n\r\nserved"), "{read}");
        }
    }
}
