//! Keeps each ring in step with discovery's pushed sets, and keeps serving
//! when discovery is away.
//!
//! Two tasks per routed namespace. The *watcher* holds discovery's
//! `/api/watch` stream open, moving through the `discovery_url`s when one
//! fails and backing off (capped, with jitter) after a whole round failed,
//! and passes what it reads over an async-channel. The *holder*
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
//! error. A move to another `discovery_url` is such a reconnect: the replica
//! taking over may not have caught up, and the grace covers it the same way.
//!
//! Removals apply only from a live, warmed watch ([`rule`]): a set that
//! discovery marks `warming` (it started lately, the apps are still
//! re-registering) only adds members; so does a set whose stream has since
//! gone or fallen silent (an answer from a discovery that is unreachable now
//! says nothing about the present). When the grace ends on such a set the
//! ring stays as it is, and the next set from a live, warmed stream decides.
//! A discovery killed over and over thus never empties the ring, however
//! its restarts and the grace interleave.

use crate::balance::origin::Kind;
use crate::balance::pool::{resolve, Upstream};
use crate::balance::ring::{Balancer, Ring, WatchState};
use crate::context::Context;
use crate::discover::source::LOOKUP_RECHECK;
use crate::runtime::clock;
use async_std::task;
use async_std::task::JoinHandle;
use futures_lite::FutureExt;
use shared::backoff::Backoff;
use shared::panics::supervise;
use shared::sse::{self, Line};
use shared::wire::{WatchEvent, WatchMessage};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most bytes of one watch event the gateway holds; past it the stream is
/// dropped (and reopened) and the ring stays as it was. A snapshot of a
/// 10,000-instance namespace is about 600 KB with IP hosts and at most
/// 3.2 MB with 253-character host names (`{"id":"<16 hex>","host":"...",
/// "port":"65535"},` is at most ~320 bytes), so 8 MiB leaves room to spare
/// while a hostile stream costs at most this (and a line) per namespace.
const MAX_EVENT: usize = 8 * 1024 * 1024;
/// Longest watch stream line: discovery sends an event's whole `data:` on
/// one line, so a line may be as long as an event, plus its field name.
const MAX_LINE: usize = MAX_EVENT + 1024;
/// How long discovery has to answer the watch request.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the watcher tells the holder.
#[derive(Debug)]
pub(crate) enum Update {
    /// A stream opened; `reconnect` is false the first time.
    Opened { reconnect: bool },
    /// A set read on stream number `stream`.
    Snapshot {
        event: WatchEvent,
        warming: bool,
        stream: u64,
    },
}

/// Why a watch stream could not be opened or ended.
enum Failed {
    /// `/api/watch` answered 404: a discovery without a watch (the seed's).
    NoWatch,
    Other(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::NoWatch => f.write_str("discovery has no /api/watch (404)"),
            Failed::Other(why) => f.write_str(why),
        }
    }
}

/// The watcher task: runs until the gateway stops.
///
/// With several `discovery_url`s it follows one; when that one fails (cannot
/// connect, an HTTP error, the stream ends or stays silent past
/// `watch_idle_timeout`) it moves to the next at once, and backs off only
/// after a whole round failed. A round in which one URL answered 404 and none
/// opened a stream switches the namespace to lookups ([`crate::discover::source`]).
pub(crate) async fn follow(
    ctx: Arc<Context>,
    balancer: Arc<Balancer>,
    updates: async_channel::Sender<Update>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut opened_before = false;
    let urls = ctx.config.discovery_urls();
    let ns = balancer.namespace.as_str();
    balancer
        .watch
        .set_idle_timeout(ctx.config.watch_idle_timeout);
    // The URL tried now, and how many have failed in a row in this round.
    let (mut at, mut failed_in_round, mut no_watch_in_round) = (0usize, 0usize, None);
    let stopped = || async {
        ctx.stop.wait().await;
    };
    while !ctx.stop.is_fired() && !urls.is_empty() {
        let url = &urls[at % urls.len()];
        balancer.watch.set(WatchState::Connecting);
        let mut opened = false;
        let run = async {
            let reader = open(&ctx, url, ns).await?;
            opened = true;
            let stream = balancer.watch.opened();
            balancer.watch.set(WatchState::Connected);
            balancer.source.set_watching(Some(at % urls.len()));
            log::info!(namespace = ns, url = url.as_str(); "watch stream open");
            let reconnect = std::mem::replace(&mut opened_before, true);
            if reconnect {
                balancer.watch.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            let _ = updates.send(Update::Opened { reconnect }).await;
            read_events(&ctx, reader, &balancer, &updates, stream).await
        };
        let confirmed_before = balancer.watch.last_confirmed_ms.load(Ordering::Relaxed);
        let ended = run.or(async {
            stopped().await;
            Ok(())
        });
        let failure = ended.await.err();
        // The backoff starts again only after the stream said something valid
        // (an event or a keep-alive): a discovery that floods every stream
        // past its bounds is reconnected to ever more slowly.
        if balancer.watch.last_confirmed_ms.load(Ordering::Relaxed) != confirmed_before {
            backoff.reset();
        }
        balancer.source.set_watching(None);
        balancer.watch.set(WatchState::Disconnected);
        if ctx.stop.is_fired() {
            break;
        }
        match &failure {
            // Known already: said once when switching to lookups.
            Some(Failed::NoWatch) if balancer.source.kind() == Kind::Lookup => {
                log::debug!(namespace = ns, url = url.as_str(); "still no watch stream")
            }
            Some(why) => {
                log::warn!(namespace = ns, url = url.as_str(), attempt = backoff.attempts() + 1;
                    "watch stream unavailable, keeping the last ring: {why}")
            }
            None => {}
        }
        let tried = at % urls.len();
        at = (at + 1) % urls.len();
        if opened {
            // A stream that was open failed: the next URL after a pause
            // (short when the stream had said something valid), so a
            // discovery that closes every stream at once is not hammered.
            (failed_in_round, no_watch_in_round) = (0, None);
            task::sleep(backoff.next_delay()).or(stopped()).await;
            continue;
        }
        failed_in_round += 1;
        if matches!(failure, Some(Failed::NoWatch)) {
            no_watch_in_round.get_or_insert(tried);
        }
        if failed_in_round < urls.len() {
            // The next URL at once.
            continue;
        }
        // A whole round without a stream.
        failed_in_round = 0;
        let pause = match no_watch_in_round.take() {
            Some(answered) => {
                balancer.source.set_answered(answered);
                if balancer.source.set_kind(Kind::Lookup) {
                    log::warn!(namespace = ns, url = urls[answered].as_str();
                        "discovery has no watch stream: asking /api/lookup per request \
                         (the seed's flow); retrying the watch every {LOOKUP_RECHECK:?}");
                }
                LOOKUP_RECHECK
            }
            None => backoff.next_delay(),
        };
        task::sleep(pause).or(stopped()).await;
    }
}

type Reader = Box<dyn futures_lite::AsyncBufRead + Unpin + Send + Sync>;

async fn open(ctx: &Context, base: &str, namespace: &str) -> Result<Reader, Failed> {
    let mut url = surf::Url::parse(&format!("{base}/api/watch"))
        .map_err(|e| Failed::Other(format!("bad discovery_url {base:?}: {e}")))?;
    url.query_pairs_mut().append_pair("namespace", namespace);
    let answer = async_std::future::timeout(OPEN_TIMEOUT, ctx.discovery.get(url).send()).await;
    let mut res = match answer {
        Ok(Ok(res)) => res,
        Ok(Err(e)) => return Err(Failed::Other(format!("cannot reach discovery: {e}"))),
        Err(_) => {
            return Err(Failed::Other(format!(
                "discovery did not answer within {OPEN_TIMEOUT:?}"
            )))
        }
    };
    match u16::from(res.status()) {
        200 => Ok(Box::new(res.take_body().into_reader())),
        404 => Err(Failed::NoWatch),
        status => Err(Failed::Other(format!("discovery answered {status}"))),
    }
}

async fn read_events(
    ctx: &Context,
    mut reader: Reader,
    balancer: &Balancer,
    updates: &async_channel::Sender<Update>,
    stream: u64,
) -> Result<(), Failed> {
    let mut parser = sse::Parser::bounded(MAX_EVENT);
    let idle = ctx.config.watch_idle_timeout;
    let fail = |why: String| Failed::Other(why);
    loop {
        let line = async_std::future::timeout(idle, sse::next(&mut reader, &mut parser, MAX_LINE))
            .await
            .map_err(|_| fail(format!("no event or keep-alive for {idle:?}")))?
            .map_err(|e| fail(broke(&e)))?;
        match line {
            None => return Err(fail("discovery closed the stream".into())),
            Some(Line::Event(event)) if event.event == "instances" => {
                let message: WatchMessage = serde_json::from_str(&event.data)
                    .map_err(|e| fail(format!("unreadable watch event: {e}")))?;
                if message.event.namespace != balancer.namespace {
                    return Err(fail(format!(
                        "event for namespace {:?}",
                        message.event.namespace
                    )));
                }
                let now = clock().max(1);
                balancer.watch.last_event_ms.store(now, Ordering::Relaxed);
                balancer
                    .watch
                    .last_confirmed_ms
                    .store(now, Ordering::Relaxed);
                let update = Update::Snapshot {
                    event: message.event,
                    warming: message.warming,
                    stream,
                };
                if updates.send(update).await.is_err() {
                    return Ok(());
                }
            }
            // A keep-alive (or any other line) on the live stream confirms the
            // snapshot is still current.
            Some(_) => balancer
                .watch
                .last_confirmed_ms
                .store(clock().max(1), Ordering::Relaxed),
        }
    }
}

/// Why reading the stream failed, for the log.
fn broke(e: &std::io::Error) -> String {
    match e.kind() {
        // Past a bound (or not UTF-8): what follows cannot be trusted either.
        std::io::ErrorKind::InvalidData => {
            format!("dropping the stream to reconnect: {e}")
        }
        _ => format!("stream broke: {e}"),
    }
}

/// How the holder applies discovery's latest set to the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Apply {
    /// The ring becomes the set: members it lacks are removed.
    Exact,
    /// The set, then the members held since the reconnect (relearn grace).
    KeepHeld,
    /// The set, then every member of the ring now: additions only.
    AddOnly,
}

/// What the holder knows about a set when it applies it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Facts {
    /// Discovery said the set is from its warm-up.
    pub(crate) warming: bool,
    /// The set came on the stream open now, which is connected and was heard
    /// from within `watch_idle_timeout`.
    pub(crate) live: bool,
    /// Within `relearn_grace` after a reconnect.
    pub(crate) in_grace: bool,
}

/// The holder's rule (static stability): removals apply only from a live,
/// warmed watch, and not during the relearn grace. A warming set, or one
/// whose stream has since gone or fallen silent, can add members but never
/// shrink the ring.
pub(crate) fn rule(facts: Facts) -> Apply {
    if facts.warming || !facts.live {
        Apply::AddOnly
    } else if facts.in_grace {
        Apply::KeepHeld
    } else {
        Apply::Exact
    }
}

/// What the holder wakes up to.
enum Next {
    Update(Update),
    GraceOver,
    Closed,
}

/// The newest set the holder has, and where it came from.
struct Latest {
    event: WatchEvent,
    warming: bool,
    stream: u64,
}

/// The holder's memory between wake-ups.
#[derive(Default)]
struct Holder {
    latest: Option<Latest>,
    /// The ring's members when the watch last reconnected (during the grace).
    held: Vec<Arc<Upstream>>,
    grace_until: Option<Instant>,
}

/// The holder task: the one writer of the ring.
pub(crate) async fn hold(
    ctx: Arc<Context>,
    balancer: Arc<Balancer>,
    updates: async_channel::Receiver<Update>,
) {
    let mut h = Holder::default();
    loop {
        let grace_until = h.grace_until;
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
            Next::Update(Update::Opened { reconnect }) => {
                // Whatever came on the stream before is from a discovery
                // that has since gone: only the new stream's sets count.
                h.latest = None;
                if reconnect {
                    start_grace(&ctx, &balancer, &mut h);
                }
                continue;
            }
            Next::Update(Update::Snapshot {
                event,
                warming,
                stream,
            }) => {
                h.latest = Some(Latest {
                    event,
                    warming,
                    stream,
                })
            }
            Next::GraceOver => {
                h.grace_until = None;
                h.held.clear();
                log::info!(namespace = balancer.namespace.as_str(); "relearn grace over");
            }
            Next::Closed => return, // the watcher is gone: stopping
        }
        apply(&ctx, &balancer, &h).await;
    }
}

/// Holds the ring's members for `relearn_grace` after a reconnect.
fn start_grace(ctx: &Context, balancer: &Balancer, h: &mut Holder) {
    let ring = balancer.ring();
    if ring.members.is_empty() {
        return;
    }
    h.held = ring.members.clone();
    let grace = ctx.config.relearn_grace;
    h.grace_until = Some(Instant::now() + grace);
    let until = clock().saturating_add(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX));
    balancer
        .watch
        .grace_until_ms
        .store(until, Ordering::Relaxed);
}

/// Applies the latest set to the ring as [`rule`] says.
async fn apply(ctx: &Context, balancer: &Balancer, h: &Holder) {
    let Some(latest) = &h.latest else {
        return;
    };
    let how = rule(Facts {
        warming: latest.warming,
        live: balancer.watch.live_on(latest.stream),
        in_grace: h.grace_until.is_some(),
    });
    let current = balancer.ring();
    let keep: &[Arc<Upstream>] = match how {
        Apply::Exact => &[],
        Apply::KeepHeld => &h.held,
        Apply::AddOnly => &current.members,
    };
    let ring = build(ctx, &latest.event, keep, &current).await;
    let ns = balancer.namespace.as_str();
    log::info!(namespace = ns, version = ring.version, members = ring.members.len(),
        held = ring.held, warming = latest.warming, apply:? = how; "ring updated");
    balancer.replace(ring);
    if balancer.source.set_kind(Kind::Watch) {
        log::info!(namespace = ns;
            "discovery's watch stream is back: requests pick from the ring again");
    }
}

/// The ring for `snapshot`, followed by the `held` members it lacks (by
/// `host:port`: the pool may have made a listed instance anew meanwhile).
async fn build(
    ctx: &Context,
    snapshot: &WatchEvent,
    held: &[Arc<Upstream>],
    current: &Ring,
) -> Ring {
    let mut members: Vec<Arc<Upstream>> = Vec::with_capacity(snapshot.instances.len());
    let mut weights: Vec<u32> = Vec::with_capacity(snapshot.instances.len());
    for instance in &snapshot.instances {
        let key = instance.authority();
        match resolve(&instance.host, instance.port.0).await {
            Ok(addrs) if !addrs.is_empty() => {
                members.push(ctx.upstreams.get(&key, addrs, &snapshot.namespace));
                weights.push(instance.weight);
            }
            Ok(_) | Err(_) => {
                log::warn!(upstream = key.as_str(); "cannot resolve instance; left out of the ring")
            }
        }
    }
    let fresh = members.len();
    for h in held {
        if !members.iter().any(|m| m.key == h.key) {
            members.push(h.clone());
            weights.push(weight_in(current, &h.key));
        }
    }
    let held = members.len() - fresh;
    Ring::new(members, weights, snapshot.version, held)
}

/// The weight `key` has in `ring` (1 if it is not there).
fn weight_in(ring: &Ring, key: &str) -> u32 {
    ring.members
        .iter()
        .position(|m| m.key == key)
        .and_then(|i| ring.weights.get(i).copied())
        .unwrap_or(1)
}

/// Starts what keeps `balancer`'s ring in step with discovery: the watch
/// tasks , each restarting if it panics. Used at start and by
/// a reload that routes a new namespace.
pub(crate) fn spawn_watch(ctx: &Arc<Context>, balancer: &Arc<Balancer>) -> Vec<JoinHandle<()>> {
    let (tx, rx) = async_channel::bounded(16);
    let (c, b) = (ctx.clone(), balancer.clone());
    let follow = task::spawn(supervise(ctx.panics.clone(), "watch follow", move || {
        follow(c.clone(), b.clone(), tx.clone())
    }));
    let (c, b) = (ctx.clone(), balancer.clone());
    let hold = task::spawn(supervise(ctx.panics.clone(), "watch hold", move || {
        hold(c.clone(), b.clone(), rx.clone())
    }));
    vec![follow, hold]
}

#[cfg(test)]
mod tests {
    use super::{rule, Apply, Facts};

    /// Every combination: removals only from a live, warmed watch outside the grace.
    #[test]
    fn removals_apply_only_from_a_live_warmed_watch() {
        use Apply::{AddOnly, Exact, KeepHeld};
        // (warming, live, in_grace) => how the set is applied
        let table = [
            ((false, true, false), Exact),
            ((false, true, true), KeepHeld),
            // Discovery restarted and still warming: additions only, grace or not.
            ((true, true, false), AddOnly),
            ((true, true, true), AddOnly),
            // The stream that brought the set is gone or silent (the grace
            // ran out while discovery was down again).
            ((false, false, false), AddOnly),
            ((false, false, true), AddOnly),
            ((true, false, false), AddOnly),
            ((true, false, true), AddOnly),
        ];
        for ((warming, live, in_grace), want) in table {
            let facts = Facts {
                warming,
                live,
                in_grace,
            };
            assert_eq!(rule(facts), want, "{facts:?}");
        }
    }
}
