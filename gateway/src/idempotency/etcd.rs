//! The shared store: records in etcd under `/PREFIX/`, so every gateway
//! using the same store URL (two on one port, say) dedupes together.
//!
//! A claim is one transaction: create the key if absent (its create
//! revision is 0), else read it. The in-flight record and the answer that
//! replaces it are written under a lease, which ends them at the ttl;
//! leases are shared by the records written within a minute (one grant a
//! minute per ttl, not one per request), so a record lives between its ttl
//! and a minute more.

use super::record::{Digest, Record, State};
use super::store::{Store, StoreError, StoreFuture};
use shared::etcd::client::{
    self, Client, Compare, DeleteRangeRequest, Op, PutRequest, RangeRequest, TxnRequest,
};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one lease takes new records.
const LEASE_SHARED_FOR: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(crate) struct EtcdStore {
    client: Client,
    /// `/PREFIX/`.
    prefix: String,
    /// Per ttl in seconds: the lease records take now, and when it was granted.
    leases: Mutex<HashMap<u64, (i64, Instant)>>,
}

impl EtcdStore {
    /// A store on `endpoints` under `prefix`; each call waits at most `timeout` per member.
    pub(crate) fn new(
        endpoints: &[String],
        prefix: &str,
        timeout: Duration,
    ) -> std::io::Result<Self> {
        Ok(EtcdStore {
            client: Client::new(endpoints, timeout)?,
            prefix: format!("/{}/", prefix.trim_matches('/')),
            leases: Mutex::default(),
        })
    }

    fn key(&self, id: &Digest) -> Vec<u8> {
        format!("{}{}", self.prefix, id.hex()).into_bytes()
    }

    /// The lease for a record of `ttl` written now.
    async fn lease(&self, ttl: Duration) -> client::Result<i64> {
        let secs = ttl.as_secs().max(1);
        {
            let leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((id, at)) = leases.get(&secs) {
                if at.elapsed() < LEASE_SHARED_FOR {
                    return Ok(*id);
                }
            }
        }
        let (id, _) = self
            .client
            .grant(Duration::from_secs(secs) + LEASE_SHARED_FOR)
            .await?;
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases.insert(secs, (id, Instant::now()));
        Ok(id)
    }

    /// Forgets the cached lease for `ttl` (etcd lost it: restored, or expired).
    fn drop_lease(&self, ttl: Duration) {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases.remove(&ttl.as_secs().max(1));
    }

    /// Runs `write` with the lease for `ttl`, once more with a fresh lease
    /// if etcd no longer knows the cached one.
    async fn with_lease<T, F, Fut>(&self, ttl: Duration, write: F) -> client::Result<T>
    where
        F: Fn(i64) -> Fut,
        Fut: std::future::Future<Output = client::Result<T>>,
    {
        let lease = self.lease(ttl).await?;
        match write(lease).await {
            Err(client::Error::Rejected(why)) if why.contains("lease not found") => {
                self.drop_lease(ttl);
                write(self.lease(ttl).await?).await
            }
            done => done,
        }
    }

    async fn claim_in(
        &self,
        id: &Digest,
        record: &Record,
        ttl: Duration,
    ) -> Result<Option<Record>, StoreError> {
        let key = self.key(id);
        let token = shared::logging::new_request_id();
        let mine = Record {
            token: token.clone(),
            ..record.clone()
        };
        let value = serde_json::to_vec(&mine).map_err(|e| StoreError(e.to_string()))?;
        // A record deleted between the compare and the read: try again.
        for _ in 0..3 {
            let txn = |lease| {
                let txn = TxnRequest {
                    compare: vec![Compare::absent(&key)],
                    success: vec![Op::Put(PutRequest {
                        key: key.clone(),
                        value: value.clone(),
                        lease,
                    })],
                    failure: vec![Op::Range(RangeRequest {
                        key: key.clone(),
                        ..RangeRequest::default()
                    })],
                };
                async move { self.client.txn(&txn).await }
            };
            let res = self.with_lease(ttl, txn).await.map_err(failed("claim"))?;
            if res.succeeded {
                return Ok(None);
            }
            let value = res.ranged().next().map(|kv| kv.value.clone());
            if let Some(value) = value {
                let found: Record = serde_json::from_slice(&value).map_err(|e| {
                    StoreError(format!("unreadable record under {}: {e}", self.prefix))
                })?;
                // Our own claim, applied by a member whose reply was lost
                // (the client then asked the next member): it is ours to run.
                let ours = found.state == State::InFlight && found.token == token;
                return Ok((!ours).then_some(found));
            }
        }
        Err(StoreError(
            "the record kept changing under the claim".into(),
        ))
    }

    async fn settle_in(
        &self,
        id: &Digest,
        record: Record,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let key = self.key(id);
        let value = serde_json::to_vec(&record).map_err(|e| StoreError(e.to_string()))?;
        let put = |lease| {
            let req = PutRequest {
                key: key.clone(),
                value: value.clone(),
                lease,
            };
            async move { self.client.put(&req).await }
        };
        self.with_lease(ttl, put).await.map_err(failed("settle"))?;
        Ok(())
    }

    async fn release_in(&self, id: &Digest) -> Result<(), StoreError> {
        let req = DeleteRangeRequest {
            key: self.key(id),
            ..DeleteRangeRequest::default()
        };
        self.client.delete(&req).await.map_err(failed("release"))?;
        Ok(())
    }
}

/// A client error, named for the call that failed.
fn failed(op: &'static str) -> impl Fn(client::Error) -> StoreError {
    move |e| StoreError(format!("idempotency store {op}: {e}"))
}

impl Store for EtcdStore {
    fn claim<'a>(
        &'a self,
        id: &'a Digest,
        record: &'a Record,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<Record>> {
        StoreFuture::pending(self.claim_in(id, record, ttl))
    }

    fn settle<'a>(&'a self, id: &'a Digest, record: Record, ttl: Duration) -> StoreFuture<'a, ()> {
        StoreFuture::pending(self.settle_in(id, record, ttl))
    }

    fn release<'a>(&'a self, id: &'a Digest) -> StoreFuture<'a, ()> {
        StoreFuture::pending(self.release_in(id))
    }
}
