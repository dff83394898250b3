//! Discovery's acceptance tests: the real service on port 0, real HTTP peers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "acceptance/bad_input.rs"]
mod bad_input;
#[path = "acceptance/cluster.rs"]
mod cluster;
#[path = "acceptance/config.rs"]
mod config;
#[path = "acceptance/console.rs"]
mod console;
#[path = "acceptance/console_cluster.rs"]
mod console_cluster;
#[path = "acceptance/health.rs"]
mod health;
#[path = "acceptance/hostile.rs"]
mod hostile;
#[path = "acceptance/lookup.rs"]
mod lookup;
#[path = "acceptance/maintenance.rs"]
mod maintenance;
#[path = "acceptance/metrics.rs"]
mod metrics;
#[path = "acceptance/register.rs"]
mod register;
#[path = "acceptance/store_records.rs"]
mod store_records;
#[path = "acceptance/tls.rs"]
mod tls;
#[path = "acceptance/upstream_tls.rs"]
mod upstream_tls;
#[path = "acceptance/watch.rs"]
mod watch;
