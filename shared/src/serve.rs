//! Serves a tide app on a port with a graceful shutdown, which tide lacks:
//! stop accepting, let requests in progress finish, close idle keep-alive
//! connections, and cut whatever is left once the drain time is up.

use crate::shutdown::{Tracker, Trigger};
use async_h1::server::{ConnectionStatus, Server as H1};
use async_std::net::{TcpListener, TcpStream};
use async_std::task::{self, JoinHandle};
use futures_lite::FutureExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Connections served at once; beyond it the listener stops accepting
    /// (the kernel's backlog holds the rest) so descriptors stay free.
    pub max_connections: usize,
    /// A request head must arrive whole within this, from its first byte.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in progress is closed after this.
    pub idle_timeout: Duration,
    /// Largest request head; larger ones are answered 431.
    pub max_head_bytes: usize,
    /// Largest request body; larger ones are answered 413.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            // Above the gateway's default max_header_bytes (16 KiB) plus what it
            // adds, so every head the gateway forwards is one the apps take.
            max_head_bytes: 32 * 1024,
            max_body_bytes: 2 * 1024 * 1024,
        }
    }
}

/// How to serve: the limits, and where caught panics are counted.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub limits: Limits,
    pub panics: crate::panics::Panics,
}

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
    let _ = &options; // TODO(front): enforce the limits (in progress)

    let addr = listener.local_addr()?;
    let stop = Trigger::new();
    let kill = Trigger::new();
    let connections = Tracker::default();
    let accept = task::spawn(accept_loop(
        app,
        listener,
        stop.clone(),
        kill.clone(),
        connections.clone(),
    ));
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

async fn accept_loop<S>(
    app: tide::Server<S>,
    listener: TcpListener,
    stop: Trigger,
    kill: Trigger,
    connections: Tracker,
) where
    S: Clone + Send + Sync + 'static,
{
    loop {
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
                let (app, stop, kill) = (app.clone(), stop.clone(), kill.clone());
                task::spawn(async move {
                    connection(app, stream, stop, kill).await;
                    drop(tracked);
                });
            }
            Err(_) if stop.is_fired() => break,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                log::warn!("accept failed: {e}");
                task::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// One keep-alive connection, one request at a time; ends between requests once stopping.
async fn connection<S>(app: tide::Server<S>, stream: TcpStream, stop: Trigger, kill: Trigger)
where
    S: Clone + Send + Sync + 'static,
{
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok();
    let peer = stream.peer_addr().ok();
    let busy = Arc::new(AtomicBool::new(false));
    let flag = busy.clone();
    let mut server = H1::new(stream, move |mut req: http_types::Request| {
        flag.store(true, Ordering::Release);
        req.set_local_addr(local);
        req.set_peer_addr(peer);
        let app = app.clone();
        async move { app.respond(req).await }
    });
    while !stop.is_fired() {
        let idle_stop = async {
            stop.wait().await;
            if busy.load(Ordering::Acquire) {
                futures_lite::future::pending::<()>().await;
            }
            Ok(ConnectionStatus::Close)
        };
        let killed = async {
            kill.wait().await;
            Ok(ConnectionStatus::Close)
        };
        let status = server.accept_one().or(idle_stop).or(killed).await;
        busy.store(false, Ordering::Release);
        match status {
            Ok(ConnectionStatus::KeepAlive) => {}
            Ok(ConnectionStatus::Close) => break,
            Err(e) => {
                log::debug!(peer:? = peer; "connection ended: {e}");
                break;
            }
        }
    }
}
