//! What the request path counts: the gateway-wide [`counters`], each
//! instance's [`stats`], and the [`causes`] both name. Read by the admin
//! port; nothing here decides anything.

pub(crate) mod causes;
pub(crate) mod counters;
pub(crate) mod idempotency;
pub(crate) mod stats;
