//! What every crate of the gateway workspace shares: the JSON wire types,
//! configuration loading, logging, the tide serving and shutdown plumbing,
//! and the HTTP/1.1 codec of the gateway and the load generator.

pub mod allowed;
pub mod api;
pub mod backoff;
pub mod build_info;
pub mod cli;
pub mod config;
pub mod console;
pub mod etcd;
pub mod http1;
pub mod https;
pub mod local_trouble;
pub mod logging;
pub mod panics;
pub mod process_metrics;
pub mod runstate;
pub mod serve;
pub mod shutdown;
pub mod sse;
pub mod tls;
pub mod wire;
