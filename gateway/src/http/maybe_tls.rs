//! A socket as it is, or TLS over it: the shape the client port's
//! connections ([`crate::http::tls::ClientStream`]) and the connections to
//! instances ([`crate::http::upstream_tls::UpstreamStream`]) share, reads
//! and writes passed to whichever it is.

use crate::runtime::net::Stream;
use futures_lite::{AsyncRead, AsyncWrite};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

/// `T` is the TLS stream over the socket, boxed: rustls' state is large,
/// and a plain connection should not carry its size.
#[derive(Debug)]
pub(crate) enum MaybeTls<T> {
    Plain(Stream),
    Tls(Box<T>),
}

/// What [`MaybeTls`] asks of the TLS stream of either side.
pub(crate) trait TlsSide {
    /// The socket under it.
    fn socket(&self) -> &Stream;
    /// rustls' state after taking what it has read.
    fn io_state(&mut self) -> Result<rustls::IoState, rustls::Error>;
}

impl TlsSide for futures_rustls::server::TlsStream<crate::http::ticket_hold::TicketHold> {
    fn socket(&self) -> &Stream {
        self.get_ref().0.socket()
    }

    fn io_state(&mut self) -> Result<rustls::IoState, rustls::Error> {
        self.get_mut().1.process_new_packets()
    }
}

impl TlsSide for futures_rustls::client::TlsStream<Stream> {
    fn socket(&self) -> &Stream {
        self.get_ref().0
    }

    fn io_state(&mut self) -> Result<rustls::IoState, rustls::Error> {
        self.get_mut().1.process_new_packets()
    }
}

impl<T: TlsSide> MaybeTls<T> {
    pub(crate) fn socket(&self) -> &Stream {
        match self {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls(t) => t.socket(),
        }
    }

    /// Whether TLS holds input already decrypted (or the peer's
    /// close_notify, or an error a read will report): a read returns at
    /// once, whatever the socket says.
    pub(crate) fn decrypted(&mut self) -> bool {
        match self {
            MaybeTls::Plain(_) => false,
            MaybeTls::Tls(t) => match t.io_state() {
                Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed(),
                Err(_) => true,
            },
        }
    }
}

impl<T> From<Stream> for MaybeTls<T> {
    fn from(stream: Stream) -> Self {
        MaybeTls::Plain(stream)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for MaybeTls<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MaybeTls<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    /// Over TLS, sends what rustls still holds: a write may leave records
    /// there when the socket's buffer was full.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_close(cx),
            MaybeTls::Tls(t) => Pin::new(t.as_mut()).poll_close(cx),
        }
    }
}
