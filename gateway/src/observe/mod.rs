//! What the request path counts: the gateway-wide [`counters`] and client
//! [`traffic`], each instance's [`stats`] and their 15-minute [`history`],
//! and the [`causes`] they name. Read by the admin port; nothing here
//! decides anything, and nothing here imports more than the runtime.

pub(crate) mod causes;
pub(crate) mod counters;
pub(crate) mod history;
pub(crate) mod idempotency;
pub(crate) mod stats;
pub(crate) mod traffic;
