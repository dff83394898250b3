//! This replica's presence: `<prefix>/replicas/<replica_id>` on a lease of its
//! own (a lease per replica, not one shared by many keys: shared leases made
//! puts slower), kept alive every third of its TTL. When the replica dies the
//! lease expires within one TTL, its key goes, and every other replica's
//! mirror sees it leave: its health checks move (see `owners`).

use super::client::{Client, PutRequest};
use super::keys::Keys;
use super::mirror::Mirror;
use shared::backoff::Backoff;
use shared::shutdown::Trigger;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The replica lease's TTL: how long the checks of a dead replica stay unmade at most.
pub const LEASE_TTL: Duration = Duration::from_secs(3);

/// What the presence loop knows, for health and shutdown.
#[derive(Debug, Default)]
pub struct Presence {
    /// The last keep-alive (or grant) reached etcd.
    pub connected: AtomicBool,
    /// The lease held now (0: none).
    pub lease: AtomicI64,
}

/// What a replica key holds.
#[derive(serde::Serialize)]
struct ReplicaValue<'a> {
    replica_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise_url: Option<&'a str>,
}

/// Holds the replica key until `stop` fires.
pub async fn hold(
    client: Arc<Client>,
    mirror: Arc<Mirror>,
    keys: Keys,
    replica_id: String,
    advertise_url: Option<String>,
    presence: Arc<Presence>,
    stop: Trigger,
) {
    use futures_lite::FutureExt;
    let key = keys.replica(&replica_id);
    let value = serde_json::to_vec(&ReplicaValue {
        replica_id: &replica_id,
        advertise_url: advertise_url.as_deref(),
    })
    .unwrap_or_default();
    let mut backoff = Backoff::new(Duration::from_millis(100), LEASE_TTL / 3);
    while !stop.is_fired() {
        let held = async {
            let (lease, _) = client.grant(LEASE_TTL).await?;
            presence.lease.store(lease, Ordering::Relaxed);
            let put = PutRequest {
                key: key.clone(),
                value: value.clone(),
                lease,
            };
            client.put(&put).await?;
            presence.connected.store(true, Ordering::Relaxed);
            backoff.reset();
            log::info!(replica = replica_id.as_str(), lease = lease; "replica key held");
            let mut last_ok = Instant::now();
            loop {
                async_std::task::sleep(LEASE_TTL / 3).await;
                match client.keep_alive(lease).await {
                    Ok(Some(_)) => {
                        last_ok = Instant::now();
                        presence.connected.store(true, Ordering::Relaxed);
                        mirror.touch();
                        // Deleted by hand while the lease lives: put it back.
                        let listed = mirror.with_replicas(|r| r.contains(&replica_id));
                        if mirror.watching() && !listed {
                            client.put(&put).await?;
                        }
                    }
                    Ok(None) => {
                        return Err(super::client::Error::Unavailable(
                            "the replica lease expired: taking a new one".into(),
                        ));
                    }
                    Err(e) => {
                        presence.connected.store(false, Ordering::Relaxed);
                        if last_ok.elapsed() >= LEASE_TTL {
                            return Err(e);
                        }
                        log::warn!(replica = replica_id.as_str(); "replica keep-alive failed: {e}");
                    }
                }
            }
        };
        let ended = held
            .or(async {
                stop.wait().await;
                Ok(())
            })
            .await;
        if let Err(why) = ended {
            presence.connected.store(false, Ordering::Relaxed);
            if !stop.is_fired() {
                log::warn!(replica = replica_id.as_str(); "replica key lost: {why}");
            }
        }
        let pause = backoff.next_delay();
        async_std::task::sleep(pause).or(stop.wait()).await;
    }
}
