//! The client port's socket under TLS, holding the TLS 1.3 session ticket
//! back until the first answer.
//!
//! rustls writes its session ticket (for resumption) the moment it takes the
//! client's Finished, and futures-rustls flushes it before the handshake's
//! future returns: a segment of its own, for which the client wakes and
//! reads, a few microseconds before the answer comes in another. Sent with
//! the answer, it costs the client nothing extra: the same client core made
//! about 2% more TLS connections a second (bench/results-tls.md).
//!
//! So, while the handshake runs, a write made only of whole encrypted
//! records (content type 23; after TLS 1.3's ServerHello that is all the
//! ticket is) is kept here and reported written; every other write goes out
//! at once, with whatever is kept in front of it. [`TicketHold::release`],
//! called when the handshake is over, ends the holding: what is kept goes
//! out ahead of the next write (the answer), a flush or the close. The
//! server's first flight always starts with a plaintext record (type 22),
//! so it is never kept, and neither is anything of TLS 1.2. Once a write
//! has gone out only in part, nothing more is kept: the next write may start
//! inside a record. Besides the ticket, only an encrypted alert ending a
//! failed handshake could be kept, and the close that follows sends it.
//!
//! A client that completes the handshake and sends nothing gets its ticket
//! when the gateway closes the connection.

use crate::runtime::net::Stream;
use futures_lite::{AsyncRead, AsyncWrite};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

/// TLS's content type of encrypted records (application_data).
const ENCRYPTED: u8 = 23;
/// A TLS record's header: type, version (2), length (2).
const HEADER: usize = 5;
/// The most kept: a ticket is a few hundred bytes.
const MOST_KEPT: usize = 4096;

/// The socket under the client port's TLS.
#[derive(Debug)]
pub(crate) struct TicketHold {
    inner: Stream,
    /// Still in the handshake, and every write so far went out whole.
    holding: bool,
    kept: Vec<u8>,
}

impl TicketHold {
    /// Keeps encrypted-only writes until [`TicketHold::release`].
    pub(crate) fn new(inner: Stream) -> TicketHold {
        TicketHold {
            inner,
            holding: true,
            kept: Vec::new(),
        }
    }

    /// The handshake is over: what is kept goes out ahead of the next write.
    pub(crate) fn release(&mut self) {
        self.holding = false;
    }

    pub(crate) fn socket(&self) -> &Stream {
        &self.inner
    }

    /// Whether a write of `bufs` is kept.
    fn keeps(&self, bufs: &[IoSlice<'_>]) -> bool {
        self.holding
            && self.kept.len() + total_len(bufs) <= MOST_KEPT
            && only_encrypted_records(bufs)
    }

    /// Writes what is kept; ready once none is left.
    fn poll_kept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.kept.is_empty() {
            match std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.kept)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => drop(self.kept.drain(..n)),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.kept = Vec::new();
        Poll::Ready(Ok(()))
    }

    /// Writes `bufs` after what is kept, in one system call as far as the
    /// socket takes them; the count is of `bufs`' bytes only.
    fn poll_after_kept(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut all = Vec::with_capacity(bufs.len() + 1);
        all.push(IoSlice::new(&self.kept));
        all.extend(bufs.iter().map(|b| IoSlice::new(b)));
        let n = std::task::ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &all))?;
        if n > self.kept.len() {
            let of_these = n - self.kept.len();
            self.kept = Vec::new();
            return Poll::Ready(Ok(of_these));
        }
        self.kept.drain(..n);
        std::task::ready!(self.poll_kept(cx))?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

fn total_len(bufs: &[IoSlice<'_>]) -> usize {
    bufs.iter().map(|b| b.len()).sum()
}

/// Whether `bufs` are whole TLS records, every one encrypted.
fn only_encrypted_records(bufs: &[IoSlice<'_>]) -> bool {
    let bytes: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        if rest.len() < HEADER || rest[0] != ENCRYPTED {
            return false;
        }
        let length = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        match rest.get(HEADER + length..) {
            Some(after) => rest = after,
            None => return false,
        }
    }
    !bytes.is_empty()
}

impl AsyncRead for TicketHold {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TicketHold {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.keeps(bufs) {
            let before = this.kept.len();
            bufs.iter().for_each(|b| this.kept.extend_from_slice(b));
            return Poll::Ready(Ok(this.kept.len() - before));
        }
        let written = if this.kept.is_empty() {
            Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
        } else {
            this.poll_after_kept(cx, bufs)
        };
        // Only the handshake's writes are counted: after it, writes pass
        // through as they are.
        if this.holding && matches!(written, Poll::Ready(Ok(n)) if n < total_len(bufs)) {
            // The rest comes in the next write, which starts inside a record.
            this.holding = false;
        }
        written
    }

    /// Sends what is kept, unless still holding: futures-rustls flushes at
    /// the end of the handshake, which is just when the ticket should wait.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.holding {
            std::task::ready!(this.poll_kept(cx))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_kept(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::test_support::{on_worker, read_to_end, socket_pair};
    use futures_lite::AsyncWriteExt;
    use std::io::Read;

    fn record(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut r = vec![kind, 3, 3];
        r.extend((body.len() as u16).to_be_bytes());
        r.extend(body);
        r
    }

    #[test]
    fn only_whole_encrypted_records_are_kept() {
        let tickets = [record(23, b"ticket one"), record(23, b"ticket two")].concat();
        assert!(only_encrypted_records(&[IoSlice::new(&tickets)]));
        let (a, b) = tickets.split_at(7);
        assert!(only_encrypted_records(&[IoSlice::new(a), IoSlice::new(b)]));
        let flight = [record(22, b"server hello"), record(23, b"the rest")].concat();
        assert!(!only_encrypted_records(&[IoSlice::new(&flight)]));
        assert!(!only_encrypted_records(&[IoSlice::new(&tickets[..12])]));
        assert!(!only_encrypted_records(&[IoSlice::new(&record(21, b"al"))]));
        assert!(!only_encrypted_records(&[]));
    }

    /// The client's end: reads `n` bytes (waiting up to the peer's patience).
    fn read_n(peer: &mut std::net::TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0u8; n];
        peer.read_exact(&mut got).unwrap();
        got
    }

    /// Whether the client has bytes waiting (loopback writes arrive within
    /// the write's own system call, so this is exact once the write returned).
    fn waiting(peer: &mut std::net::TcpStream) -> bool {
        peer.set_nonblocking(true).unwrap();
        let got = peer.read(&mut [0u8; 1]);
        peer.set_nonblocking(false).unwrap();
        !matches!(got, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    #[test]
    fn the_ticket_goes_out_with_the_first_write_after_the_handshake() {
        let (ours, mut peer) = socket_pair();
        let flight = [record(22, b"hello"), record(23, b"finished")].concat();
        let (ticket, answer) = (record(23, b"ticket"), record(23, b"answer"));
        let (step_tx, step_rx) = async_channel::bounded::<()>(1);
        let (seen_tx, seen_rx) = async_channel::bounded::<()>(1);
        let (f, t, a) = (flight.clone(), ticket.clone(), answer.clone());
        let server = std::thread::spawn(move || {
            on_worker(async move {
                let mut hold = TicketHold::new(Stream::from_std(ours).unwrap());
                hold.write_all(&f).await.unwrap();
                hold.write_all(&t).await.unwrap();
                hold.flush().await.unwrap(); // the handshake's own flush
                step_tx.send(()).await.unwrap();
                seen_rx.recv().await.unwrap();
                hold.release();
                hold.write_all(&a).await.unwrap();
                hold.close().await.unwrap();
            })
        });
        async_io::block_on(step_rx.recv()).unwrap();
        assert_eq!(
            read_n(&mut peer, flight.len()),
            flight,
            "the flight at once"
        );
        assert!(!waiting(&mut peer), "the ticket is kept");
        async_io::block_on(seen_tx.send(())).unwrap();
        server.join().unwrap();
        let got = read_n(&mut peer, ticket.len() + answer.len());
        assert_eq!(
            got,
            [ticket, answer].concat(),
            "the ticket, then the answer"
        );
    }

    #[test]
    fn a_kept_ticket_goes_out_at_the_close_and_a_big_write_is_never_kept() {
        let (ours, mut peer) = socket_pair();
        let big = record(23, &vec![7u8; MOST_KEPT]);
        let ticket = record(23, b"ticket");
        let (b, t) = (big.clone(), ticket.clone());
        on_worker(async move {
            let mut hold = TicketHold::new(Stream::from_std(ours).unwrap());
            hold.write_all(&b).await.unwrap();
            hold.write_all(&t).await.unwrap();
            hold.release();
            hold.close().await.unwrap();
        });
        assert_eq!(read_n(&mut peer, big.len()), big, "too big to keep");
        assert_eq!(read_n(&mut peer, ticket.len()), ticket, "sent at the close");
        assert!(read_to_end(&mut peer).is_empty());
    }
}
