//! The cluster as etcd holds it, for the console's cluster view: the replica
//! keys read fresh (with the `advertise_url` each replica put in its value),
//! and every member asked on its own whether it answers.

use super::client::{Client, RangeRequest};
use super::keys::{Key, Keys};
use crate::store::{ListedReplica, MemberHealth, StoreCluster};
use std::time::{Duration, Instant};

/// How long each member has to answer the console's question.
const MEMBER_LIMIT: Duration = Duration::from_millis(800);

/// What a replica key holds (written by `presence`).
#[derive(serde::Deserialize)]
struct ReplicaValue {
    #[serde(default)]
    advertise_url: Option<String>,
}

/// Reads the replica keys and asks each member, all at once.
pub async fn view(client: &Client, keys: &Keys, replica_id: &str) -> StoreCluster {
    let members = client.endpoints().iter().map(|endpoint| async move {
        let started = Instant::now();
        let req = RangeRequest {
            key: keys.root().to_vec(),
            limit: 1,
            keys_only: true,
            ..Default::default()
        };
        match client.range_on(endpoint, &req, MEMBER_LIMIT).await {
            Ok(_) => MemberHealth {
                endpoint: endpoint.clone(),
                answers: true,
                latency_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
                error: None,
            },
            Err(e) => MemberHealth {
                endpoint: endpoint.clone(),
                answers: false,
                latency_ms: None,
                error: Some(e.to_string()),
            },
        }
    });
    let members = futures_lite::future::zip(
        join_all(members.collect()),
        async_std::future::timeout(Duration::from_secs(2), client.range_prefix(keys.replicas())),
    );
    let (members, listed) = members.await;
    let (replicas, replicas_error) = match listed {
        Ok(Ok((_, kvs))) => {
            let replicas = kvs
                .iter()
                .filter(|kv| kv.lease != 0)
                .filter_map(|kv| match keys.parse(&kv.key) {
                    Some(Key::Replica(id)) => Some(ListedReplica {
                        replica_id: id,
                        advertise_url: serde_json::from_slice::<ReplicaValue>(&kv.value)
                            .ok()
                            .and_then(|v| v.advertise_url),
                    }),
                    _ => None,
                })
                .collect();
            (Some(replicas), None)
        }
        Ok(Err(e)) => (None, Some(e.to_string())),
        Err(_) => (
            None,
            Some("etcd did not list the replicas within 2 s".into()),
        ),
    };
    StoreCluster {
        replica_id: Some(replica_id.to_string()),
        replicas,
        replicas_error,
        members,
    }
}

/// Runs every future at once; their outputs in order.
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::with_capacity(futures.len());
    let mut pending: Vec<_> = futures.into_iter().map(Box::pin).collect();
    // Few members (3 or 5): polling them in turn, each started before any is awaited.
    let mut done: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    futures_lite::future::poll_fn(|cx| {
        let mut all = true;
        for (f, slot) in pending.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.extend(done.into_iter().flatten());
    out
}
