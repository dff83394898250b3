//! The load generator against real systems: discovery, apps and a gateway
//! in-process on port 0 (testkit), driven through `loadtest::run` as
//! `just loadtest` would. The runs are serialised (see `common::exclusive`)
//! so that one run's load does not skew another's rates and timings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "system/chaos.rs"]
mod chaos;
#[path = "system/common.rs"]
mod common;
#[path = "system/idempotency.rs"]
mod idempotency;
#[path = "system/load.rs"]
mod load;
#[path = "system/tls.rs"]
mod tls;
