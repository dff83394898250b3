//! The gateway's acceptance tests: real discovery, real apps, real gateway
//! on port 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "acceptance/answers.rs"]
mod answers;
#[path = "acceptance/attack.rs"]
mod attack;
#[path = "acceptance/bounds.rs"]
mod bounds;
#[path = "acceptance/broken.rs"]
mod broken;
#[path = "acceptance/cluster_faults.rs"]
mod cluster_faults;
#[path = "acceptance/cluster_gateways.rs"]
mod cluster_gateways;
#[path = "acceptance/common.rs"]
mod common;
#[path = "acceptance/console.rs"]
mod console;
#[path = "acceptance/console_charts.rs"]
mod console_charts;
#[path = "acceptance/destinations.rs"]
mod destinations;
#[path = "acceptance/faults.rs"]
mod faults;
#[path = "acceptance/framing.rs"]
mod framing;
#[path = "acceptance/graceful.rs"]
mod graceful;
#[path = "acceptance/hostile.rs"]
mod hostile;
#[path = "acceptance/idempotency.rs"]
mod idempotency;
#[path = "acceptance/invariants.rs"]
mod invariants;
#[path = "acceptance/manners.rs"]
mod manners;
#[path = "acceptance/membership.rs"]
mod membership;
#[path = "acceptance/metrics.rs"]
mod metrics;
#[path = "acceptance/misbehaving.rs"]
mod misbehaving;
#[path = "acceptance/protocol.rs"]
mod protocol;
#[path = "acceptance/readiness.rs"]
mod readiness;
#[path = "acceptance/reload.rs"]
mod reload;
#[path = "acceptance/rotation.rs"]
mod rotation;
#[path = "acceptance/round_robin.rs"]
mod round_robin;
#[path = "acceptance/seed.rs"]
mod seed;
#[path = "acceptance/shutdown.rs"]
mod shutdown;
#[path = "acceptance/slow_clients.rs"]
mod slow_clients;
#[path = "acceptance/stability.rs"]
mod stability;
#[path = "acceptance/streaming.rs"]
mod streaming;
#[path = "acceptance/timeouts.rs"]
mod timeouts;
#[path = "acceptance/tls.rs"]
mod tls;
#[path = "acceptance/tls_reload.rs"]
mod tls_reload;
#[path = "acceptance/upstream_tls.rs"]
mod upstream_tls;
#[path = "acceptance/warming.rs"]
mod warming;
#[path = "acceptance/workers.rs"]
mod workers;
