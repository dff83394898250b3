//! The admin port and what runs beside the request path: `/status` and
//! `/health_check` ([`status`]), `/metrics` ([`metrics`]), the [`console`],
//! readiness and `/ready` ([`ready`]), and configuration [`reload`]s.

pub(crate) mod console;
pub(crate) mod metrics;
pub(crate) mod ready;
pub mod reload;
pub(crate) mod status;
