//! Worker threads: the per-worker hot path.
//!
//! `worker_threads` OS threads each run the gateway's own runtime (its task
//! queue and its epoll, [`crate::runtime`]) and accept on their own
//! SO_REUSEPORT socket, so the kernel spreads connections over them and a
//! connection's requests never leave the thread that accepted it. What a
//! request writes lives in the worker's slot ([`crate::runtime::slots`]).
//!
//! Background tasks (watch, reaper, the admin port) stay on async-std's
//! global executor, in slot 0.

use crate::context::Context;
use crate::proxy::accept;
use crate::runtime::listen::Bound;
use crate::runtime::{self, slots};
use shared::shutdown::{Tracker, Trigger};
use std::sync::Arc;

/// The running workers.
#[derive(Debug)]
pub(crate) struct Workers {
    /// One message per worker whose accept loop ended (queue drained).
    stopped: async_channel::Receiver<()>,
    count: usize,
    /// Fired once the connections are over: the workers' runtimes end.
    finished: Trigger,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Waits until every worker stopped accepting and served its queue.
    pub(crate) async fn stopped_accepting(&self) {
        for _ in 0..self.count {
            if self.stopped.recv().await.is_err() {
                return;
            }
        }
    }

    /// Ends the workers' threads (after their connections are done).
    pub(crate) async fn finish(self) {
        self.finished.fire();
        let threads = self.threads;
        async_std::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// Starts one worker per listener, each on its own thread with its own
/// runtime; a worker given a TLS port's socket too accepts on both.
pub(crate) fn spawn(
    ctx: &Arc<Context>,
    listeners: Vec<(Bound, Option<Bound>)>,
    connections: &Tracker,
) -> std::io::Result<Workers> {
    let count = listeners.len();
    let (done, stopped) = async_channel::bounded(count.max(1));
    let finished = Trigger::new();
    let mut threads = Vec::with_capacity(count);
    for (i, (bound, tls)) in listeners.into_iter().enumerate() {
        let (ctx, connections, done, finished) = (
            ctx.clone(),
            connections.clone(),
            done.clone(),
            finished.clone(),
        );
        let slot = slots::worker_slot(i);
        let thread = std::thread::Builder::new()
            .name(format!("gateway-worker-{i}"))
            .spawn(move || {
                slots::enter(slot);
                let run = async move {
                    let plain = accept::accept(&ctx, bound, false, &connections);
                    match tls {
                        None => plain.await,
                        Some(tls) => {
                            let tls = accept::accept(&ctx, tls, true, &connections);
                            futures_lite::future::zip(plain, tls).await;
                        }
                    }
                    let _ = done.send(()).await;
                    // Keep serving this worker's connections until they are over.
                    finished.wait().await;
                };
                if let Err(e) = runtime::run(run) {
                    log::error!("gateway worker {i} stopped: {e}");
                }
            })?;
        threads.push(thread);
    }
    Ok(Workers {
        stopped,
        count,
        finished,
        threads,
    })
}
