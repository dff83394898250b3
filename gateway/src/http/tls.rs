//! TLS on the client port (`"tls"` in the config, docs/tls.md): the
//! handshake, and [`ClientStream`], the client's socket plain or encrypted,
//! which [`crate::http::session`] reads and writes.
//!
//! The certificates, their SNI choice and their reload are
//! [`shared::tls::ServerTls`]'s; the handshake runs through futures-rustls
//! over the worker's own sockets.

use crate::http::maybe_tls::MaybeTls;
use crate::http::ticket_hold::TicketHold;
use crate::runtime::net::Stream;
use futures_lite::AsyncWriteExt;
use futures_rustls::server::TlsStream;
use futures_rustls::TlsAcceptor;
use shared::config::TlsConfig;
use shared::tls::{Certificates, ServerTls};
use std::io;
use std::net::Shutdown;

/// Reads and checks every certificate the client port's `config` names:
/// each file must be readable PEM, each key must match its certificate, and
/// no certificate may have expired. The error names the file.
pub(crate) fn load_certificates(config: &TlsConfig) -> Result<Certificates, String> {
    Certificates::load(&config.pairs()).map_err(|e| format!("tls: {e}"))
}

/// The TLS side of the client port: the acceptor and its certificates.
pub(crate) struct Tls {
    acceptor: TlsAcceptor,
    server: ServerTls,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Tls").field(&self.server).finish()
    }
}

impl Tls {
    /// A TLS server with `certificates` (see [`load_certificates`]).
    pub(crate) fn new(certificates: Certificates) -> Result<Tls, String> {
        let server = ServerTls::new(certificates, None).map_err(|e| format!("tls: {e}"))?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(server.config()),
            server,
        })
    }

    /// New handshakes get `certificates`; connections already open keep theirs.
    pub(crate) fn replace(&self, certificates: Certificates) {
        self.server.replace(certificates);
    }

    /// The server side of the handshake on `stream`; unbounded here, the
    /// caller bounds it (`tls.handshake_timeout`).
    pub(crate) async fn accept(&self, stream: Stream) -> io::Result<ClientStream> {
        // The session ticket waits for the first answer (`ticket_hold`).
        let mut tls = self.acceptor.accept(TicketHold::new(stream)).await?;
        tls.get_mut().0.release();
        Ok(MaybeTls::Tls(Box::new(tls)))
    }
}

/// A client's connection: its socket as it is, or TLS over it.
pub(crate) type ClientStream = MaybeTls<TlsStream<TicketHold>>;

impl ClientStream {
    /// Whether this connection is TLS.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }

    /// Waits until a read may find something: input TLS already holds, or
    /// bytes (or the end) on the socket. Over TLS the bytes may be less than
    /// a record; the read that follows waits for the rest.
    pub(crate) async fn readable(&mut self) {
        if !self.decrypted() {
            self.socket().readable().await;
        }
    }

    /// Whether a read is worth trying now (no waiting, no system call).
    pub(crate) fn is_readable_now(&mut self) -> bool {
        self.decrypted() || self.socket().is_readable_now()
    }

    /// Waits until the client sent something (true) or closed (false),
    /// consuming nothing.
    pub(crate) async fn sent_something(&mut self) -> bool {
        if self.decrypted() {
            return true;
        }
        let mut byte = [0u8; 1];
        matches!(self.socket().peek(&mut byte).await, Ok(n) if n > 0)
    }

    pub(crate) fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.socket().set_nodelay(on)
    }

    /// Ends the sending side: over TLS a close_notify first.
    pub(crate) async fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            MaybeTls::Plain(s) => s.shutdown(Shutdown::Write),
            MaybeTls::Tls(t) => t.close().await,
        }
    }
}
