//! Accepts client connections and gives each its own task.
//!
//! Shutdown: the accept loop stops at once; each connection ends after the
//! request it is serving (idle ones at once); whatever is still running after
//! `drain_timeout` is cut by the [`crate::deadline::Watchdog`].

use crate::connection;
use crate::Context;
use async_std::net::TcpListener;
use async_std::task::{self, JoinHandle};
use futures_lite::FutureExt;
use shared::shutdown::Tracker;
use std::sync::Arc;
use std::time::Duration;

/// Starts the accept loop; `connections` counts the live connection tasks.
pub fn spawn(ctx: Arc<Context>, listener: TcpListener, connections: Tracker) -> JoinHandle<()> {
    task::spawn(async move {
        loop {
            let accepted = listener
                .accept()
                .or(async {
                    ctx.stop.wait().await;
                    Err(std::io::Error::other("stopping"))
                })
                .await;
            match accepted {
                Ok((stream, peer)) => {
                    let tracked = connections.enter();
                    let ctx = ctx.clone();
                    task::spawn(async move {
                        ctx.metrics.client_connections.inc();
                        // Ends within a tick of the drain time running out: every wait it
                        // makes is bounded by its deadline, which the watchdog then kills.
                        // A panic ends this connection only (logged and counted).
                        let serve = connection::serve(&ctx, stream, peer);
                        shared::panics::guard(&ctx.panics, "connection", serve).await;
                        ctx.metrics.client_connections.dec();
                        drop(tracked);
                    });
                }
                Err(_) if ctx.stop.is_fired() => return,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    log::warn!("accept failed: {e}");
                    task::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    })
}
