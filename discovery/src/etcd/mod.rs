//! The etcd store: discovery replicas sharing one registry in etcd 3.4+.
//!
//! - `client`: etcd's JSON gateway over surf (no tokio), several members with failover;
//! - `keys`: the key layout under the prefix;
//! - `mirror`: this replica's copy of the prefix, fed by one watch (probed for
//!   progress), passed to the core;
//! - `records`: which records the mirror serves and which it sets aside;
//! - `presence`: this replica's key on its own lease;
//! - `owners`: which live replica checks which instance (rendezvous hashing);
//! - `cluster`: the replicas listed and each member asked, for the console;
//! - `store`: [`crate::store::Store`] on top of them.

pub mod client;
mod cluster;
mod keys;
mod mirror;
mod owners;
mod presence;
mod records;
mod store;

pub use presence::LEASE_TTL;
pub use store::{EtcdStore, Options};
