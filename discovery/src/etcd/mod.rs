//! The etcd store: discovery replicas sharing one registry in etcd 3.4+.
//!
//! - `client`: etcd's JSON gateway over surf (no tokio), several members with failover (in `shared::etcd`);
//! - `keys`: the key layout under the prefix;
//! - `mirror`: this replica's copy of the prefix, fed by one watch (probed for
//!   progress), passed to the core;
//! - `records`: which records the mirror serves and which it sets aside;
//! - `presence`: this replica's key on its own lease;
//! - `owners`: which live replica checks which instance (rendezvous hashing);
//! - `cluster`: the replicas listed and each member asked, for the console;
//! - `store`: [`crate::store::Store`] on top of them.

// The client lives in shared (the gateway's idempotency store uses it too);
// re-exported so `discovery::etcd::client` keeps naming it.
pub use shared::etcd::client;
mod cluster;
mod keys;
mod mirror;
mod owners;
mod presence;
mod records;
mod store;

pub use presence::LEASE_TTL;
pub use store::{EtcdStore, Options};
