//! TLS settings every service builds from its files (docs/tls.md): the
//! certificates a server presents, chosen by SNI and swapped on reload
//! ([`server`]), and the trust and client certificate a client uses
//! ([`client`]), read and checked by [`files`] so that a missing, garbled,
//! mismatched or expired file is an error that names it.
//!
//! rustls with the ring provider (aws-lc-rs needs cmake), TLS 1.2 and 1.3,
//! ALPN `http/1.1`. The sockets are each service's own: futures-rustls
//! runs the handshake over any futures-io stream.

pub mod client;
pub mod files;
pub mod server;

pub use client::{client_config, Upstream};
pub use files::{load_pair, load_roots};
pub use server::{Certificates, ServerTls};

/// The protocols offered by ALPN, in order of preference (`h2` would go first).
pub const ALPN: [&[u8]; 1] = [b"http/1.1"];

/// The crypto every TLS setting here uses.
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The versions offered and accepted.
pub(crate) const VERSIONS: [&rustls::SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

#[cfg(test)]
mod tests;
