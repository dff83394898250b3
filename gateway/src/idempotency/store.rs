//! Where records live, behind one trait: [`crate::idempotency::memory`]
//! (this gateway, the default) or [`crate::idempotency::etcd`] (every
//! gateway sharing one etcd).

use super::record::Record;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A store call in progress.
pub(crate) type StoreFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A store that could not answer (etcd away, or refusing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoreError(pub(crate) String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Records by id (see `key::Keyed::id`), each kept for its `ttl`.
pub(crate) trait Store: Send + Sync + fmt::Debug {
    /// Writes `record` (in flight) under `id` if no record is there, in one
    /// step no other claimer can come between: `None` when this call made
    /// it, else the record found.
    fn claim<'a>(
        &'a self,
        id: &'a str,
        record: &'a Record,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<Record>>;

    /// Replaces the claimed record with how its request ended.
    fn settle<'a>(&'a self, id: &'a str, record: &'a Record, ttl: Duration) -> StoreFuture<'a, ()>;

    /// Forgets `id`: its request never reached an instance.
    fn release<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()>;
}
