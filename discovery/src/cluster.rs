//! The console's cluster view: who watches this replica, which replicas
//! there are and whether each is up, and how etcd answers.
//!
//! - [`Watchers`]: every open `/api/watch` stream, by the address it came
//!   from and the `x-gateway-id` a gateway sends (its admin URL), removed
//!   when the stream ends;
//! - `GET /api/cluster/local`: this replica's id and watchers;
//! - `GET /api/cluster`: the store's replicas (etcd: the replica keys on
//!   their leases) with, for each that advertises a URL, its own
//!   `/api/cluster/local` asked within [`PEER_LIMIT`]; replicas this one saw
//!   that left the store are listed as down (a killed replica's lease ends
//!   within [`crate::etcd::LEASE_TTL`], and one that stops answering is down
//!   at once); and each etcd member asked on its own.
//!
//! The browser cannot ask other replicas itself (the console's
//! Content-Security-Policy allows its own origin only), so this replica asks.

use crate::store::now_unix_ms;
use crate::State;
use futures_lite::{AsyncBufRead, AsyncRead, AsyncReadExt};
use serde::Serialize;
use serde_json::{json, Value};
use shared::api::json_response;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tide::{Request, StatusCode};

/// How long another replica has to answer `/api/cluster/local`.
pub const PEER_LIMIT: Duration = Duration::from_millis(800);
/// Replicas remembered after they left the store, at most.
const REMEMBERED: usize = 32;
/// How long a replica that left is still listed as down.
const REMEMBERED_FOR_MS: u64 = 10 * 60 * 1000;
/// The longest `x-gateway-id` kept (it is whatever a client sends).
const MAX_ID: usize = 200;
/// The largest `/api/cluster/local` answer read from another replica.
const MAX_PEER_ANSWER: u64 = 256 * 1024;

/// One open watch stream.
#[derive(Clone, Debug, Serialize)]
pub struct Watcher {
    pub namespace: String,
    /// The address the stream came from.
    pub remote: Option<String>,
    /// What the client said it is (`x-gateway-id`: a gateway's admin URL).
    pub gateway_id: Option<String>,
    pub since_unix_ms: u64,
}

/// The open watch streams of this replica.
#[derive(Debug, Default)]
pub struct Watchers {
    open: Mutex<BTreeMap<u64, Watcher>>,
    next: AtomicU64,
}

/// Removes its watcher from [`Watchers`] when dropped (the stream ended).
#[derive(Debug)]
pub struct Registered {
    watchers: Arc<Watchers>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.watchers.lock().remove(&self.id);
    }
}

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Watcher>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a stream opened by `req` on `namespace` until the guard drops.
    pub fn register(self: &Arc<Self>, req: &Request<State>, namespace: &str) -> Registered {
        let gateway_id = req
            .header("x-gateway-id")
            .map(|v| v.last().as_str())
            .map(|v| v.chars().filter(|c| !c.is_control()).take(MAX_ID).collect());
        let watcher = Watcher {
            namespace: namespace.to_string(),
            remote: req.peer_addr().map(str::to_string),
            gateway_id,
            since_unix_ms: now_unix_ms(),
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, watcher);
        Registered {
            watchers: self.clone(),
            id,
        }
    }

    /// The open streams, oldest first.
    pub fn list(&self) -> Vec<Watcher> {
        self.lock().values().cloned().collect()
    }
}

/// A watch stream's body that keeps its watcher listed while it lives.
pub struct Tracked<R> {
    pub body: R,
    /// Held for the stream's life: dropping it unlists the watcher.
    pub _registered: Registered,
}

impl<R: AsyncBufRead + Unpin> AsyncBufRead for Tracked<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<&[u8]>> {
        Pin::new(&mut self.get_mut().body).poll_fill_buf(cx)
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        Pin::new(&mut self.get_mut().body).consume(amt)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Tracked<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().body).poll_read(cx, buf)
    }
}

/// Replicas seen in the store, remembered after they leave it.
#[derive(Debug, Default)]
pub struct Seen {
    replicas: Mutex<BTreeMap<String, SeenReplica>>,
}

#[derive(Clone, Debug)]
struct SeenReplica {
    advertise_url: Option<String>,
    last_seen_unix_ms: u64,
}

impl Seen {
    /// Notes the replicas listed now; answers those that left, with when
    /// they were last listed.
    fn update(
        &self,
        listed: &[crate::store::ListedReplica],
        now: u64,
    ) -> Vec<(String, SeenReplica)> {
        let mut seen = self.replicas.lock().unwrap_or_else(|p| p.into_inner());
        for r in listed {
            seen.insert(
                r.replica_id.clone(),
                SeenReplica {
                    advertise_url: r.advertise_url.clone(),
                    last_seen_unix_ms: now,
                },
            );
        }
        seen.retain(|_, r| now.saturating_sub(r.last_seen_unix_ms) < REMEMBERED_FOR_MS);
        while seen.len() > REMEMBERED {
            let oldest = seen
                .iter()
                .min_by_key(|(_, r)| r.last_seen_unix_ms)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => seen.remove(&id),
                None => break,
            };
        }
        seen.iter()
            .filter(|(id, _)| !listed.iter().any(|r| &r.replica_id == *id))
            .map(|(id, r)| (id.clone(), r.clone()))
            .collect()
    }
}

/// `GET /api/cluster/local`.
pub async fn local(req: Request<State>) -> tide::Result {
    let state = req.state();
    let me = match state.config.replica_id.clone() {
        Some(id) => Some(id),
        None => state.registry.store_cluster().await.replica_id,
    };
    Ok(json_response(StatusCode::Ok, &local_view(state, me)))
}

/// This replica's id, backend and watchers.
fn local_view(state: &State, me: Option<String>) -> Value {
    json!({
        "replica_id": me,
        "backend": state.registry.store_health().backend,
        "advertise_url": state.config.advertise_url,
        "watchers": state.watchers.list(),
        "now_unix_ms": now_unix_ms(),
    })
}

/// Asks another replica for its `/api/cluster/local`.
async fn ask(client: &surf::Client, url: &str) -> Result<Value, String> {
    let base = url.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(format!("advertise_url {base:?} is not http(s)"));
    }
    let target = surf::Url::parse(&format!("{base}/api/cluster/local"))
        .map_err(|e| format!("advertise_url {base:?}: {e}"))?;
    let exchange = async {
        let mut res = client
            .get(target)
            .send()
            .await
            .map_err(|e| format!("cannot reach it: {e}"))?;
        let status = u16::from(res.status());
        if status != 200 {
            return Err(format!("it answered {status}"));
        }
        let mut bytes = Vec::new();
        res.take_body()
            .into_reader()
            .take(MAX_PEER_ANSWER)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| format!("its answer broke: {e}"))?;
        serde_json::from_slice::<Value>(&bytes).map_err(|e| format!("unreadable answer: {e}"))
    };
    async_std::future::timeout(PEER_LIMIT, exchange)
        .await
        .map_err(|_| format!("no answer within {PEER_LIMIT:?}"))?
}

/// `GET /api/cluster`: see the module's documentation.
pub async fn cluster(req: Request<State>) -> tide::Result {
    let state = req.state();
    let store = state.registry.store_cluster().await;
    let health = state.registry.store_health();
    let now = now_unix_ms();
    let me = state.config.replica_id.clone().or(store.replica_id.clone());
    let local = local_view(state, me.clone());
    let client = state.peers.clone();
    let mut replicas: Vec<Value> = Vec::new();
    let listed = store.replicas.clone().unwrap_or_default();
    // This replica first, as it knows itself (in the store or not yet).
    let in_store = me
        .as_ref()
        .is_some_and(|id| listed.iter().any(|r| &r.replica_id == id));
    replicas.push(json!({
        "replica_id": me,
        "advertise_url": state.config.advertise_url,
        "this": true,
        "in_store": in_store || health.backend == "memory",
        "state": "up",
        "watchers_known": true,
        "watchers": local["watchers"],
    }));
    let others: Vec<_> = listed
        .iter()
        .filter(|r| Some(&r.replica_id) != me.as_ref())
        .cloned()
        .collect();
    let asked: Vec<_> = others
        .iter()
        .map(|r| {
            let (client, url) = (client.clone(), r.advertise_url.clone());
            async_std::task::spawn(async move {
                match url {
                    Some(url) => Some(ask(&client, &url).await),
                    None => None,
                }
            })
        })
        .collect();
    for (r, answer) in others.iter().zip(asked) {
        let entry = match answer.await {
            Some(Ok(view)) => json!({
                "replica_id": r.replica_id, "advertise_url": r.advertise_url, "this": false,
                "in_store": true, "state": "up", "watchers_known": true,
                "watchers": view.get("watchers").cloned().unwrap_or(Value::Null),
            }),
            Some(Err(why)) => json!({
                "replica_id": r.replica_id, "advertise_url": r.advertise_url, "this": false,
                "in_store": true, "state": "down", "watchers_known": false,
                "detail": format!("listed in the store, but not answering: {why}"),
            }),
            None => json!({
                "replica_id": r.replica_id, "advertise_url": null, "this": false,
                "in_store": true, "state": "up", "watchers_known": false,
                "detail": "listed in the store (its lease is alive); its watchers are unknown: it advertises no URL to ask (advertise_url)",
            }),
        };
        replicas.push(entry);
    }
    if store.replicas.is_some() {
        for (id, gone) in state.seen.update(&listed, now) {
            if Some(&id) == me.as_ref() {
                continue;
            }
            replicas.push(json!({
                "replica_id": id, "advertise_url": gone.advertise_url, "this": false,
                "in_store": false, "state": "down", "watchers_known": false,
                "last_listed_unix_ms": gone.last_seen_unix_ms,
                "detail": "left the store: its lease ended (stopped or killed) or it let go",
            }));
        }
    }
    let etcd = (health.backend == "etcd").then(|| {
        json!({
            "connected": health.reachable,
            "writable": health.writable,
            "watch_endpoint": health.watch_endpoint,
            "write_error": health.write_error,
            "members": store.members,
            "replicas_error": store.replicas_error,
        })
    });
    Ok(json_response(
        StatusCode::Ok,
        &json!({
            "backend": health.backend,
            "replica_id": me,
            "now_unix_ms": now,
            "replicas": replicas,
            "etcd": etcd,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ListedReplica;

    fn listed(ids: &[&str]) -> Vec<ListedReplica> {
        ids.iter()
            .map(|id| ListedReplica {
                replica_id: id.to_string(),
                advertise_url: None,
            })
            .collect()
    }

    #[test]
    fn a_replica_that_leaves_the_store_is_remembered_as_gone() {
        let seen = Seen::default();
        assert!(seen.update(&listed(&["a", "b"]), 1000).is_empty());
        let gone = seen.update(&listed(&["a"]), 2000);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, "b");
        assert_eq!(gone[0].1.last_seen_unix_ms, 1000);
        // Back in the store: no longer gone.
        assert!(seen.update(&listed(&["a", "b"]), 3000).is_empty());
        // Forgotten after a while.
        seen.update(&listed(&["a"]), 4000);
        assert!(seen
            .update(&listed(&["a"]), 4000 + REMEMBERED_FOR_MS)
            .is_empty());
    }

    #[test]
    fn at_most_so_many_replicas_are_remembered() {
        let seen = Seen::default();
        for i in 0..(REMEMBERED as u64 + 10) {
            seen.update(&listed(&[&format!("r{i}")]), i);
        }
        let gone = seen.update(&[], 1000);
        assert_eq!(gone.len(), REMEMBERED);
        assert!(
            gone.iter().all(|(id, _)| id != "r0"),
            "the oldest went first"
        );
    }
}
