//! TCP sockets on a worker's reactor: std's sockets, non-blocking,
//! registered once with the worker that made them.
//!
//! A read or write is tried while the socket is marked ready; a short read
//! (fewer bytes than asked) or a short write means the kernel's buffer is
//! drained or full, so the readiness is cleared without paying for the
//! `WouldBlock` try nginx also skips.

use super::reactor::{Reactor, Source, READ, WRITE};
use super::{current, Shared};
use futures_lite::{AsyncRead, AsyncWrite};
use rustix::fd::AsFd;
use std::io::{self, IoSlice, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// `recv(2)` straight through rustix: std's goes through libc's wrapper,
/// which marks a cancellation point around every call (measurable at two
/// calls per request each way).
fn recv(io: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    Ok(rustix::net::recv(io, buf, rustix::net::RecvFlags::empty())?.0)
}

/// `send(2)` straight through rustix, without SIGPIPE (as std's).
fn send(io: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    Ok(rustix::net::send(
        io,
        buf,
        rustix::net::SendFlags::NOSIGNAL,
    )?)
}

/// A socket registered with the current worker's reactor.
#[derive(Debug)]
struct Registered<T: AsFd> {
    io: T,
    source: Arc<Source>,
    shared: Arc<Shared>,
}

impl<T: AsFd> Registered<T> {
    fn new(io: T, ready: usize, urgent: bool) -> io::Result<Self> {
        let shared = current()?;
        let source = shared.reactor.register(io.as_fd(), ready, urgent)?;
        Ok(Registered { io, source, shared })
    }

    fn reactor(&self) -> &Reactor {
        &self.shared.reactor
    }

    /// Waits until `bit` is ready, trying nothing.
    async fn ready(&self, bit: usize) {
        std::future::poll_fn(|cx| self.source.poll_ready(bit, cx).map(|_| ())).await;
    }

    /// Runs `op` while `bit` is ready; clears it on `WouldBlock` or when
    /// `short` says the result shows the buffer drained or full.
    fn poll_io<R>(
        &self,
        bit: usize,
        cx: &mut Context<'_>,
        mut op: impl FnMut(&T) -> io::Result<R>,
        short: impl Fn(&R) -> bool,
    ) -> Poll<io::Result<R>> {
        loop {
            let seen = std::task::ready!(self.source.poll_ready(bit, cx));
            match op(&self.io) {
                Ok(r) => {
                    if short(&r) {
                        self.source.clear_after_short(bit, seen);
                    }
                    return Poll::Ready(Ok(r));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.source.clear(bit, seen),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<T: AsFd> Drop for Registered<T> {
    fn drop(&mut self) {
        self.reactor().deregister(&self.source, self.io.as_fd());
    }
}

/// What [`Stream::unread`] found on a connection nobody was reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unread {
    Nothing,
    /// The end of the stream, or an error: the peer closed or reset it.
    Closed,
    /// Bytes nobody asked for.
    Bytes,
}

/// A connected TCP stream owned by one worker.
#[derive(Debug)]
pub(crate) struct Stream {
    inner: Registered<TcpStream>,
}

impl Stream {
    /// Takes a connected std stream (an accepted one) onto this worker.
    pub(crate) fn from_std(io: TcpStream) -> io::Result<Stream> {
        io.set_nonblocking(true)?;
        Ok(Stream {
            inner: Registered::new(io, READ | WRITE, false)?,
        })
    }

    /// Connects to `addr` without blocking the worker.
    pub(crate) async fn connect(addr: SocketAddr) -> io::Result<Stream> {
        let flags = rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK;
        let socket = super::listen::tcp_socket(addr, flags)?;
        match rustix::net::connect(&socket, &addr) {
            Ok(()) | Err(rustix::io::Errno::INPROGRESS) => {}
            Err(e) => return Err(e.into()),
        }
        let io = TcpStream::from(socket);
        let stream = Stream {
            // Upstream connections carry answers to requests already taken.
            inner: Registered::new(io, 0, true)?,
        };
        // Writable once the handshake is over, one way or the other.
        stream.inner.ready(WRITE).await;
        match stream.inner.io.take_error()? {
            Some(e) => Err(e),
            None => {
                stream.inner.io.peer_addr()?;
                Ok(stream)
            }
        }
    }

    /// Waits until a read would find bytes (or the end), without a buffer:
    /// an idle connection holds none.
    pub(crate) async fn readable(&self) {
        self.inner.ready(READ).await;
    }

    /// Whether a read is worth trying now (no waiting, no system call).
    pub(crate) fn is_readable_now(&self) -> bool {
        self.inner.source.is_ready(READ)
    }

    /// Reads without consuming, waiting for bytes (0: the peer closed).
    pub(crate) async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.inner.poll_io(READ, cx, |io| io.peek(buf), |_| false)).await
    }

    /// What arrived since the last read, found without waiting: one peek
    /// (`MSG_PEEK | MSG_DONTWAIT`), whatever the readiness says, since bytes
    /// can be in the kernel before the worker has seen their event. A pooled
    /// connection must have received nothing while it idled. Safe from any
    /// thread (the pool reaper looks at idle connections too).
    pub(crate) fn unread(&self) -> Unread {
        loop {
            let seen = self.inner.source.state();
            let mut byte = [0u8; 1];
            let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
            return match rustix::net::recv(&self.inner.io, &mut byte, flags) {
                Ok((0, _)) => Unread::Closed,
                Ok(_) => Unread::Bytes,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => {
                    // Readiness left over from a read that filled its buffer exactly.
                    self.inner.source.clear(READ, seen);
                    Unread::Nothing
                }
                Err(_) => Unread::Closed,
            };
        }
    }

    pub(crate) fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.inner.io.set_nodelay(on)
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.inner.io.shutdown(how)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let want = buf.len();
        self.inner
            .poll_io(READ, cx, |io| recv(io, buf), |&n| n > 0 && n < want)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let want = buf.len();
        self.inner
            .poll_io(WRITE, cx, |io| send(io, buf), |&n| n < want)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        self.inner
            .poll_io(WRITE, cx, |mut io| io.write_vectored(bufs), |&n| n < want)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.inner.io.shutdown(Shutdown::Write))
    }
}

/// A listening socket owned by one worker.
#[derive(Debug)]
pub(crate) struct Listener {
    inner: Registered<TcpListener>,
}

impl Listener {
    /// Takes a bound, listening std socket onto this worker.
    pub(crate) fn from_std(io: TcpListener) -> io::Result<Listener> {
        io.set_nonblocking(true)?;
        Ok(Listener {
            inner: Registered::new(io, READ, false)?,
        })
    }

    #[cfg(test)]
    pub(crate) fn bind(addr: SocketAddr) -> io::Result<Listener> {
        Listener::from_std(TcpListener::bind(addr)?)
    }

    #[cfg(test)]
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.io.local_addr()
    }

    /// The next connection from the queue, if there is one now (draining
    /// the queue at shutdown).
    /// The socket comes back as std's, for [`Stream::from_std`].
    pub(crate) fn try_accept(&self) -> io::Result<Option<(TcpStream, SocketAddr)>> {
        loop {
            match self.inner.io.accept() {
                Ok(accepted) => return Ok(Some(accepted)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// The next connection from the queue, waiting for one if it is empty.
    pub(crate) async fn accept(&self) -> io::Result<(Stream, SocketAddr)> {
        let (io, peer) =
            std::future::poll_fn(|cx| self.inner.poll_io(READ, cx, |io| io.accept(), |_| false))
                .await?;
        Ok((Stream::from_std(io)?, peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::deadline::Deadline;
    use crate::runtime::run;
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    use rustix::fd::AsRawFd;
    use std::io::Read;
    use std::time::Duration;

    /// Sleeps `ms` on the worker's timers.
    async fn nap(ms: u64) {
        let never = futures_lite::future::pending::<()>();
        let _ = Deadline::default()
            .within(Duration::from_millis(ms), never)
            .await;
    }

    /// Byte `i` of the test stream: no two nearby offsets alike, so a
    /// dropped, doubled or reordered piece shows.
    fn byte(i: usize) -> u8 {
        ((i as u32).wrapping_mul(2_654_435_761) >> 24) as u8 ^ (i >> 16) as u8
    }

    #[test]
    fn megabytes_written_to_a_slow_reader_arrive_whole_and_in_order() {
        const LEN: usize = 8 << 20;
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            rustix::net::sockopt::set_socket_recv_buffer_size(&s, 16 << 10).unwrap();
            // The writer fills every buffer before the first read.
            std::thread::sleep(Duration::from_millis(200));
            let mut all = Vec::with_capacity(LEN);
            let mut buf = [0u8; 4096];
            loop {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    return all;
                }
                all.extend_from_slice(&buf[..n]);
                if all.len() % (256 << 10) < n {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        run(async move {
            let mut c = Stream::connect(addr).await.unwrap();
            rustix::net::sockopt::set_socket_send_buffer_size(&c.inner.io, 16 << 10).unwrap();
            let data: Vec<u8> = (0..LEN).map(byte).collect();
            let (mut off, mut short, mut waited) = (0, 0, 0);
            let writing = async {
                while off < LEN {
                    let n = std::future::poll_fn(|cx| {
                        let r = Pin::new(&mut c).poll_write(cx, &data[off..]);
                        waited += usize::from(r.is_pending());
                        r
                    })
                    .await?;
                    assert!(n > 0);
                    short += usize::from(off + n < LEN);
                    off += n;
                }
                c.close().await
            };
            let wrote = Deadline::default()
                .within(Duration::from_secs(60), writing)
                .await;
            tx.send((wrote.map(|r| r.map_err(|e| e.to_string())), short, waited))
                .unwrap();
        })
        .unwrap();
        let (wrote, short, waited) = rx.recv().unwrap();
        assert_eq!(wrote, Ok(Ok(())));
        assert!(
            short > 0 && waited > 0,
            "no short write ({short}, {waited})"
        );
        let all = reader.join().unwrap();
        assert_eq!(all.len(), LEN);
        let first_wrong = all.iter().enumerate().position(|(i, b)| *b != byte(i));
        assert_eq!(first_wrong, None);
    }

    #[test]
    fn a_dropped_socket_leaves_no_event_to_the_next_on_its_descriptor() {
        let (tx, rx) = std::sync::mpsc::channel();
        run(async move {
            let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = server.local_addr().unwrap();
            let shared = super::super::current().unwrap();
            let reactor = &shared.reactor;
            let base = reactor.registered();
            let mut checked = None;
            // Other tests open descriptors too: retry until the number is reused.
            for _ in 0..50 {
                let a = Stream::connect(addr).await.unwrap();
                let (mut a_peer, _) = server.accept().unwrap();
                // An event for `a` is in epoll, not yet taken by the worker
                // (this task has not let it look since).
                a_peer.write_all(b"stale").unwrap();
                let (fd, key) = (a.inner.io.as_raw_fd(), a.inner.source.key());
                drop(a);
                let b = Stream::connect(addr).await.unwrap();
                let (mut b_peer, _) = server.accept().unwrap();
                if b.inner.io.as_raw_fd() != fd {
                    continue;
                }
                assert_eq!(b.inner.source.key(), key, "the freed key is reused");
                nap(50).await; // several turns of the worker's loop
                let stale = (b.is_readable_now(), b.unread());
                b_peer.write_all(b"fresh").unwrap();
                let mut buf = [0u8; 5];
                let mut b = b;
                let read = Deadline::default()
                    .within(Duration::from_secs(30), b.read_exact(&mut buf))
                    .await;
                checked = Some((stale, read.map(|r| r.is_ok()), buf));
                drop(a_peer);
                break;
            }
            for _ in 0..200 {
                let s = Stream::connect(addr).await.unwrap();
                let peer = server.accept().unwrap();
                drop((s, peer));
            }
            tx.send((checked, base, reactor.registered())).unwrap();
        })
        .unwrap();
        let (checked, base, after) = rx.recv().unwrap();
        let (stale, read, buf) = checked.expect("the descriptor was never reused");
        assert_eq!(
            stale,
            (false, Unread::Nothing),
            "no readiness of the old socket"
        );
        assert_eq!(read, Ok(true));
        assert_eq!(&buf, b"fresh");
        assert_eq!(after, base, "the reactor's map grew");
    }
}
