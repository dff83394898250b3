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
use std::sync::{Arc, Mutex};
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
    /// Why etcd takes no writes now: its raised alarms (`NOSPACE`), asked at
    /// every keep-alive, so it shows before any write fails.
    alarm: Mutex<Option<String>>,
    /// The last write's error, until a write succeeds again (the store's
    /// own writes, or the presence loop's test write while it is set).
    write_error: Mutex<Option<String>>,
}

impl Presence {
    /// Why writes cannot be made now, if they cannot.
    pub fn write_trouble(&self) -> Option<String> {
        let alarm = self.alarm.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let error = self
            .write_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match (alarm, error) {
            (Some(a), Some(e)) => Some(format!("etcd alarm: {a}; last write failed: {e}")),
            (Some(a), None) => Some(format!("etcd alarm: {a}")),
            (None, Some(e)) => Some(format!("last write failed: {e}")),
            (None, None) => None,
        }
    }

    /// Records how a write went.
    pub fn wrote<T>(&self, result: &super::client::Result<T>) {
        let mut error = self.write_error.lock().unwrap_or_else(|p| p.into_inner());
        *error = result.as_ref().err().map(ToString::to_string);
    }

    fn set_alarm(&self, alarm: Option<String>) {
        *self.alarm.lock().unwrap_or_else(|p| p.into_inner()) = alarm;
    }

    fn write_failed(&self) -> bool {
        self.write_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
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
                        // Deleted by hand while the lease lives: put it back.
                        let listed = mirror.with_replicas(|r| r.contains(&replica_id));
                        if mirror.watching() && !listed {
                            client.put(&put).await?;
                        }
                        check_writes(&client, &presence, &put).await;
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

/// Asks etcd for its alarms and, while the last write failed, tries a write
/// of this replica's own key (same value, same lease: harmless) so that
/// `writable` comes back once etcd takes writes again, without waiting for
/// the next registration.
async fn check_writes(client: &Client, presence: &Presence, put: &PutRequest) {
    match client.alarms().await {
        Ok(alarms) if alarms.is_empty() => presence.set_alarm(None),
        Ok(alarms) => presence.set_alarm(Some(alarms.join(", "))),
        // etcd away: `connected` says so; the alarm stays as last known.
        Err(_) => {}
    }
    if presence.write_failed() {
        let result = client.put(put).await;
        presence.wrote(&result);
    }
}
