//! HTTP/1.1 on the client side: the parser and writer ([`codec`]), the
//! normalized request target ([`target`]), a client connection's socket,
//! input and deadline ([`session`]: the one writer of bytes to the client),
//! the bound on request bytes held across connections ([`budget`]), and TLS:
//! on the client port ([`tls`]), to instances ([`upstream_tls`]), and the
//! socket plain or under TLS that both read and write ([`maybe_tls`]).

pub(crate) mod budget;
pub(crate) mod codec;
pub(crate) mod maybe_tls;
pub(crate) mod session;
pub(crate) mod target;
#[cfg(test)]
pub(crate) mod test_support;
pub(crate) mod ticket_hold;
pub(crate) mod tls;
pub(crate) mod upstream_tls;
