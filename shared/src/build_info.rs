//! What was built: the workspace version and the git revision (from
//! `shared/build.rs`), for every service's `*_build_info` metric.

/// The workspace's version (all crates share it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `git rev-parse --short HEAD` at build time, or "unknown".
pub const REVISION: &str = env!("SHARED_GIT_REVISION");
