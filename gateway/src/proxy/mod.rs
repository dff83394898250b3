//! The request path: [`workers`] run the threads, [`accept`] takes client
//! connections, [`connection`] reads each request and routes it,
//! [`failover`] chooses instances try by try under the [`retry`] policy, and
//! [`forward`] makes one try over a pooled connection and relays the answer;
//! [`keyed`] serves routes that honour `Idempotency-Key` through their records.

pub(crate) mod accept;
pub(crate) mod connection;
pub(crate) mod failover;
pub(crate) mod forward;
pub(crate) mod keyed;
pub(crate) mod retry;
#[cfg(test)]
mod test_support;
pub(crate) mod workers;
