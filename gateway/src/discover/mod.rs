//! Following discovery: the [`watch`] streams that keep each ring in step
//! with the pushed sets, and the [`source`] a request's next instance comes
//! from (the ring, or a lookup after a timeout).

pub(crate) mod source;
pub(crate) mod watch;
