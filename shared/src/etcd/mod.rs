//! etcd v3 over its JSON gateway, shared by the crates that keep state in
//! etcd: discovery's registry (`discovery::etcd`) and the gateway's
//! idempotency records. One client, so both read etcd's quirks the same way.

pub mod client;
