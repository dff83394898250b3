//! The client port's sockets: bound at start, listened on only once the
//! gateway is ready ([`Gate`]).
//!
//! Each worker gets its own socket: with `reuse_port`, one SO_REUSEPORT
//! socket per worker bound to the same address; without, duplicates of one
//! socket (one accept queue, shared).
//!
//! With `reuse_port` (the default) the socket is bound with SO_REUSEADDR and
//! SO_REUSEPORT, so several gateways on one host share the address: the
//! kernel gives each its own accept queue and spreads new connections over
//! them by a hash of the client's address and port. A SO_REUSEPORT socket
//! joins its port's group only at `listen()`, so a gateway that cannot serve
//! takes no connection from its peers until its gate opens.

use futures_lite::FutureExt;
use rustix::net::{self, ipproto, sockopt, AddressFamily, SocketFlags, SocketType};
use shared::shutdown::Trigger;
use std::io::ErrorKind;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::time::Instant;

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
pub(crate) struct Bound {
    pub(crate) listener: std::net::TcpListener,
    addr: SocketAddr,
}

impl Bound {
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
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
pub(crate) fn bind_all(
    listen: &str,
    reuse_port: bool,
    workers: usize,
) -> std::io::Result<Vec<Bound>> {
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
pub(crate) fn bind(listen: &str, reuse_port: bool) -> std::io::Result<Bound> {
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
    let socket = tcp_socket(addr, SocketFlags::CLOEXEC).map_err(cannot)?;
    // What std's bind does on Unix: a restarted gateway rebinds at once.
    sockopt::set_socket_reuseaddr(&socket, true)
        .map_err(std::io::Error::from)
        .map_err(cannot)?;
    if reuse_port {
        sockopt::set_socket_reuseport(&socket, true)
            .map_err(std::io::Error::from)
            .map_err(cannot)?;
    }
    net::bind(&socket, &addr)
        .map_err(std::io::Error::from)
        .map_err(cannot)?;
    let listener = std::net::TcpListener::from(socket);
    let addr = listener.local_addr()?;
    Ok(Bound { listener, addr })
}

/// Starts listening on a bound socket: from now on the kernel queues
/// connections for it (and, with SO_REUSEPORT, hashes some of the port's to it).
pub(crate) fn listen(bound: &Bound) -> std::io::Result<()> {
    net::listen(&bound.listener, BACKLOG).map_err(|e| {
        let e = std::io::Error::from(e);
        std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", bound.addr))
    })
}

/// A TCP socket for `addr`'s family, with `flags`.
pub(crate) fn tcp_socket(addr: SocketAddr, flags: SocketFlags) -> std::io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    net::socket_with(family, SocketType::STREAM, flags, Some(ipproto::TCP))
        .map_err(std::io::Error::from)
}

/// The client port's gate: shut (bound, not listening) until the gateway is
/// ready, open (listening) until it stops accepting.
#[derive(Debug)]
pub(crate) struct Gate {
    /// Duplicates of the workers' bound sockets, listened on when the gate
    /// opens and dropped then: once the workers close theirs, nothing may
    /// keep the port listening.
    pending: Mutex<Vec<Bound>>,
    opened: Trigger,
    closed: Trigger,
    addr: SocketAddr,
    created: Instant,
}

impl Gate {
    /// A gate on every socket in `bound` (the client port's, and the TLS
    /// port's if there is one); `addr` is the client port's address.
    pub(crate) fn new<'a>(
        bound: impl IntoIterator<Item = &'a Bound>,
        addr: SocketAddr,
    ) -> std::io::Result<Gate> {
        let pending = bound
            .into_iter()
            .map(Bound::try_clone)
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot share {addr}: {e}")))?;
        Ok(Gate {
            pending: Mutex::new(pending),
            opened: Trigger::new(),
            closed: Trigger::new(),
            addr,
            created: Instant::now(),
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<Bound>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Listens on every worker's socket and lets the workers accept. Does
    /// nothing once closed (the gateway is stopping) or already open.
    pub(crate) fn open(&self) -> std::io::Result<()> {
        let mut pending = self.pending();
        if self.closed.is_fired() || self.opened.is_fired() {
            return Ok(());
        }
        for bound in pending.iter() {
            listen(bound)?;
        }
        pending.clear();
        self.opened.fire();
        log::info!(addr:% = self.addr; "gateway listening on http://{}", self.addr);
        Ok(())
    }

    /// Stops accepting: the workers' accept loops end (serving what their
    /// queues hold); a gate never opened stays unlistened.
    pub(crate) fn close(&self) {
        let mut pending = self.pending();
        self.closed.fire();
        pending.clear();
    }

    pub(crate) fn is_open(&self) -> bool {
        self.opened.is_fired() && !self.closed.is_fired()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_fired()
    }

    /// Waits until the gate opens (true) or closes first (false).
    pub(crate) async fn opens(&self) -> bool {
        self.opened.wait().or(self.closed.wait()).await;
        self.opened.is_fired()
    }

    /// Whether the gate has opened (it may have closed since).
    pub(crate) fn has_opened(&self) -> bool {
        self.opened.is_fired()
    }

    /// The client address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Time since the gateway started (bound its sockets).
    pub(crate) fn age(&self) -> std::time::Duration {
        self.created.elapsed()
    }

    /// Resolves once the gate closes.
    pub(crate) async fn closes(&self) {
        self.closed.wait().await;
    }
}
