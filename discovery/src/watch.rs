//! `GET /api/watch?namespace=`: Server-Sent Events pushing a namespace's
//! routable set (available and not in maintenance), read from the local mirror.
//!
//! Each stream has its own task. The mirror wakes it, for a change made here
//! or pushed by the store from another replica, through a one-slot
//! async-channel with `try_send`, so a watcher that stops reading never blocks
//! the registry or other watchers: its wake-ups coalesce, and when it reads
//! again it gets the newest snapshot (every event is the whole set, so
//! skipping an intermediate one loses nothing).

use crate::metrics::Metrics;
use crate::registry::Registry;
use async_std::task;
use futures_lite::{AsyncBufRead, AsyncRead, FutureExt, Stream};
use prometheus_client::metrics::gauge::Gauge;
use shared::shutdown::Trigger;
use shared::wire::WatchEvent;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// Fan-out of "namespace changed" wake-ups to watch streams.
#[derive(Debug, Default)]
pub struct Hub {
    watchers: Mutex<Vec<Watcher>>,
    closed: Trigger,
}

#[derive(Debug)]
struct Watcher {
    namespace: String,
    wake: async_channel::Sender<()>,
}

impl Hub {
    /// A wake-up channel for `namespace`; it closes when the hub does.
    pub fn subscribe(&self, namespace: &str) -> async_channel::Receiver<()> {
        let (wake, rx) = async_channel::bounded(1);
        if self.closed.is_fired() {
            return rx; // `wake` dropped: the stream ends after its snapshot.
        }
        self.lock().push(Watcher {
            namespace: namespace.to_string(),
            wake,
        });
        rx
    }

    /// Wakes every watcher of `namespace`, never waiting; forgets the gone ones.
    pub fn notify(&self, namespace: &str) {
        self.lock().retain(|w| {
            if w.namespace != namespace {
                return !w.wake.is_closed();
            }
            !matches!(
                w.wake.try_send(()),
                Err(async_channel::TrySendError::Closed(_))
            )
        });
    }

    /// Ends every stream (at shutdown, so the server can drain).
    pub fn close(&self) {
        self.closed.fire();
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Watcher>> {
        self.watchers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One SSE event carrying a snapshot.
pub fn encode_event(event: &WatchEvent) -> Vec<u8> {
    let data = serde_json::to_string(event).unwrap_or_default();
    format!("event: instances\nid: {}\ndata: {data}\n\n", event.version).into_bytes()
}

const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// Starts the task feeding one watch stream and returns the response body.
pub fn open_stream(
    registry: Arc<Registry>,
    hub: &Hub,
    metrics: &Metrics,
    namespace: String,
    keepalive: Duration,
) -> ChannelBody {
    let wake = hub.subscribe(&namespace);
    let (out, body) = async_channel::bounded::<Vec<u8>>(8);
    let gauge = metrics.watchers.clone();
    gauge.inc();
    task::spawn(async move {
        feed(registry, namespace, wake, out, keepalive).await;
        // Counted until the stream's task ends, however it ends.
        drop(GaugeGuard(gauge));
    });
    ChannelBody::new(body)
}

struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn feed(
    registry: Arc<Registry>,
    namespace: String,
    wake: async_channel::Receiver<()>,
    out: async_channel::Sender<Vec<u8>>,
    keepalive: Duration,
) {
    let mut sent = None;
    loop {
        let snapshot = registry.snapshot(&namespace);
        if sent != Some(snapshot.version) {
            if out.send(encode_event(&snapshot)).await.is_err() {
                return; // the client went away
            }
            sent = Some(snapshot.version);
        }
        let next = async {
            match wake.recv().await {
                Ok(()) => Next::Changed,
                Err(_) => Next::Closed,
            }
        }
        .or(async {
            task::sleep(keepalive).await;
            Next::Idle
        })
        .await;
        match next {
            Next::Changed => {}
            Next::Idle => {
                if out.send(KEEPALIVE.to_vec()).await.is_err() {
                    return;
                }
            }
            Next::Closed => return, // hub closed: shutting down
        }
    }
}

enum Next {
    Changed,
    Idle,
    Closed,
}

/// A response body read from a channel of byte chunks; ends when the sender is dropped.
pub struct ChannelBody {
    rx: Pin<Box<async_channel::Receiver<Vec<u8>>>>,
    chunk: Vec<u8>,
    at: usize,
}

impl ChannelBody {
    pub fn new(rx: async_channel::Receiver<Vec<u8>>) -> Self {
        ChannelBody {
            rx: Box::pin(rx),
            chunk: Vec::new(),
            at: 0,
        }
    }
}

impl AsyncBufRead for ChannelBody {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<&[u8]>> {
        let this = self.get_mut();
        while this.at >= this.chunk.len() {
            match this.rx.as_mut().poll_next(cx) {
                Poll::Ready(Some(chunk)) => {
                    this.chunk = chunk;
                    this.at = 0;
                }
                Poll::Ready(None) => return Poll::Ready(Ok(&[])),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(&this.chunk[this.at..]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.at = (this.at + amt).min(this.chunk.len());
    }
}

impl AsyncRead for ChannelBody {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let available = match self.as_mut().poll_fill_buf(cx) {
            Poll::Ready(Ok(bytes)) => {
                let n = bytes.len().min(buf.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                n
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        self.consume(available);
        Poll::Ready(Ok(available))
    }
}
