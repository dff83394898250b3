//! Where records live, behind one trait: [`crate::idempotency::memory`]
//! (this gateway, the default) or [`crate::idempotency::etcd`] (every
//! gateway sharing one etcd).

use super::record::{Digest, Record};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// A store call: answered at once (the memory store, with no allocation on
/// the request path) or in progress (etcd).
pub(crate) enum StoreFuture<'a, T> {
    Ready(Option<Result<T, StoreError>>),
    Pending(Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>),
}

impl<'a, T> StoreFuture<'a, T> {
    pub(crate) fn ready(done: Result<T, StoreError>) -> Self {
        StoreFuture::Ready(Some(done))
    }

    pub(crate) fn pending(call: impl Future<Output = Result<T, StoreError>> + Send + 'a) -> Self {
        StoreFuture::Pending(Box::pin(call))
    }
}

impl<T: Unpin> Future for StoreFuture<'_, T> {
    type Output = Result<T, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            StoreFuture::Ready(done) => Poll::Ready(
                done.take()
                    .unwrap_or_else(|| Err(StoreError("store call polled after it ended".into()))),
            ),
            StoreFuture::Pending(call) => call.as_mut().poll(cx),
        }
    }
}

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
        id: &'a Digest,
        record: &'a Record,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<Record>>;

    /// Replaces the claimed record with how its request ended (taken, not
    /// copied: a stored answer can be large).
    fn settle<'a>(&'a self, id: &'a Digest, record: Record, ttl: Duration) -> StoreFuture<'a, ()>;

    /// Forgets `id`: its request never reached an instance.
    fn release<'a>(&'a self, id: &'a Digest) -> StoreFuture<'a, ()>;
}
