//! Keeps each ring in step with discovery's pushed sets, and keeps serving
//! when discovery is away.
//!
//! Two tasks per routed namespace. The *watcher* holds discovery's
//! `/api/watch` stream open, reconnecting with capped exponential backoff and
//! jitter, and passes what it reads over an async-channel. The *holder*
//! resolves each snapshot's instances and swaps the ring; it is the only
//! writer of the ring.
//!
//! Static stability: losing the stream changes nothing in the ring. When the
//! stream comes back, discovery may have restarted with an empty registry
//! that the apps' re-registration is refilling, so its first snapshots are
//! incomplete. For `relearn_grace` after a reconnect, members of the last
//! ring missing from the new snapshots are kept (after the fresh ones) rather
//! than dropped; then the ring follows discovery exactly again. A member that
//! really died in the meantime costs a refused connect and a failover, not an
//! error.

use crate::pool::{clock, resolve, Upstream};
use crate::ring::{Balancer, Ring, WatchState};
use crate::Context;
use async_std::task;
use futures_lite::FutureExt;
use shared::backoff::Backoff;
use shared::sse::{self, Line};
use shared::wire::WatchEvent;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest silence on the stream (discovery sends keep-alives) before it is presumed dead.
const STREAM_IDLE: Duration = Duration::from_secs(45);
/// Longest watch event line accepted.
const MAX_LINE: usize = 16 * 1024 * 1024;

/// What the watcher tells the holder.
#[derive(Debug)]
pub enum Update {
    /// The stream (re)opened; `reconnect` is false the first time.
    Opened {
        reconnect: bool,
    },
    Snapshot(WatchEvent),
}

/// The watcher task: runs until the gateway stops.
pub async fn follow(
    ctx: Arc<Context>,
    balancer: Arc<Balancer>,
    updates: async_channel::Sender<Update>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut opened_before = false;
    let stopped = || async {
        ctx.stop.wait().await;
    };
    while !ctx.stop.is_fired() {
        balancer.watch.set(WatchState::Connecting);
        let run = async {
            let reader = open(&ctx, &balancer.namespace).await?;
            backoff.reset();
            balancer.watch.set(WatchState::Connected);
            log::info!(namespace = balancer.namespace.as_str(); "watch stream open");
            let reconnect = std::mem::replace(&mut opened_before, true);
            if reconnect {
                balancer.watch.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            let _ = updates.send(Update::Opened { reconnect }).await;
            read_events(reader, &balancer, &updates).await
        };
        let ended = run.or(async {
            stopped().await;
            Ok(())
        });
        if let Err(why) = ended.await {
            if !ctx.stop.is_fired() {
                log::warn!(namespace = balancer.namespace.as_str(), attempt = backoff.attempts() + 1;
                    "watch stream unavailable, keeping the last ring: {why}");
            }
        }
        balancer.watch.set(WatchState::Disconnected);
        let pause = backoff.next_delay();
        task::sleep(pause).or(stopped()).await;
    }
}

type Reader = Box<dyn futures_lite::AsyncBufRead + Unpin + Send + Sync>;

async fn open(ctx: &Context, namespace: &str) -> Result<Reader, String> {
    let mut url = surf::Url::parse(&format!("{}/api/watch", ctx.config.discovery_url))
        .map_err(|e| format!("bad discovery_url: {e}"))?;
    url.query_pairs_mut().append_pair("namespace", namespace);
    let answer =
        async_std::future::timeout(Duration::from_secs(5), ctx.discovery.get(url).send()).await;
    let mut res = match answer {
        Ok(Ok(res)) => res,
        Ok(Err(e)) => return Err(format!("cannot reach discovery: {e}")),
        Err(_) => return Err("discovery did not answer within 5s".into()),
    };
    if res.status() != 200 {
        return Err(format!("discovery answered {}", res.status()));
    }
    Ok(Box::new(res.take_body().into_reader()))
}

async fn read_events(
    mut reader: Reader,
    balancer: &Balancer,
    updates: &async_channel::Sender<Update>,
) -> Result<(), String> {
    let mut parser = sse::Parser::default();
    loop {
        let line =
            async_std::future::timeout(STREAM_IDLE, sse::next(&mut reader, &mut parser, MAX_LINE))
                .await
                .map_err(|_| format!("no event or keep-alive for {STREAM_IDLE:?}"))?
                .map_err(|e| format!("stream broke: {e}"))?;
        match line {
            None => return Err("discovery closed the stream".into()),
            Some(Line::Event(event)) if event.event == "instances" => {
                let snapshot: WatchEvent = serde_json::from_str(&event.data)
                    .map_err(|e| format!("unreadable watch event: {e}"))?;
                if snapshot.namespace != balancer.namespace {
                    return Err(format!("event for namespace {:?}", snapshot.namespace));
                }
                balancer
                    .watch
                    .last_event_ms
                    .store(clock().max(1), Ordering::Relaxed);
                if updates.send(Update::Snapshot(snapshot)).await.is_err() {
                    return Ok(());
                }
            }
            Some(_) => {}
        }
    }
}

/// What the holder wakes up to.
enum Next {
    Update(Update),
    GraceOver,
    Closed,
}

/// The holder task: the one writer of the ring.
pub async fn hold(
    ctx: Arc<Context>,
    balancer: Arc<Balancer>,
    updates: async_channel::Receiver<Update>,
) {
    let mut latest: Option<WatchEvent> = None;
    let mut held: Vec<Arc<Upstream>> = Vec::new();
    let mut grace_until: Option<Instant> = None;
    loop {
        let grace_over = async {
            match grace_until {
                Some(at) => task::sleep(at.saturating_duration_since(Instant::now())).await,
                None => futures_lite::future::pending().await,
            }
            Next::GraceOver
        };
        let next = async {
            match updates.recv().await {
                Ok(update) => Next::Update(update),
                Err(_) => Next::Closed,
            }
        }
        .or(grace_over)
        .await;
        match next {
            Next::Update(Update::Opened { reconnect: true }) => {
                let ring = balancer.ring();
                if !ring.members.is_empty() {
                    held = ring.members.clone();
                    let grace = ctx.config.relearn_grace;
                    grace_until = Some(Instant::now() + grace);
                    balancer
                        .watch
                        .grace_until_ms
                        .store(clock() + grace.as_millis() as u64, Ordering::Relaxed);
                }
                continue;
            }
            Next::Update(Update::Opened { reconnect: false }) => continue,
            Next::Update(Update::Snapshot(snapshot)) => latest = Some(snapshot),
            Next::GraceOver => {
                grace_until = None;
                held.clear();
                log::info!(namespace = balancer.namespace.as_str(); "relearn grace over: the ring follows discovery again");
            }
            Next::Closed => return, // the watcher is gone: stopping
        }
        if let Some(snapshot) = &latest {
            let ring = build(&ctx, snapshot, &held).await;
            log::info!(namespace = balancer.namespace.as_str(), version = ring.version,
                members = ring.members.len(), held = ring.held; "ring updated");
            balancer.replace(ring);
        }
    }
}

/// The ring for `snapshot`, followed by the held members it lacks.
async fn build(ctx: &Context, snapshot: &WatchEvent, held: &[Arc<Upstream>]) -> Ring {
    let mut members: Vec<Arc<Upstream>> = Vec::with_capacity(snapshot.instances.len());
    for instance in &snapshot.instances {
        let key = instance.authority();
        match resolve(&instance.host, instance.port.0).await {
            Ok(addrs) if !addrs.is_empty() => members.push(ctx.upstreams.get(&key, addrs)),
            Ok(_) | Err(_) => {
                log::warn!(upstream = key.as_str(); "cannot resolve instance; left out of the ring")
            }
        }
    }
    let fresh = members.len();
    for h in held {
        if !members.iter().any(|m| Arc::ptr_eq(m, h)) {
            members.push(h.clone());
        }
    }
    Ring {
        held: members.len() - fresh,
        members,
        version: snapshot.version,
    }
}
