//! What the request path's unit tests share: a worker runtime to run a test
//! on, a connection whose far end a test plays with a std socket, sessions,
//! and readers of what a client gets.

use crate::http::session::Session;
use crate::runtime::deadline::Deadline;
use crate::runtime::{self, net::Stream};
use std::future::Future;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// How long a test's peer waits for a byte before it fails the test.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// Runs `test` on a worker runtime on this thread; what it returns.
pub(crate) fn on_worker<T: Send + 'static>(test: impl Future<Output = T> + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    runtime::run(async move {
        let _ = tx.send(test.await);
    })
    .expect("a worker runtime");
    rx.recv().expect("the test ran to its end")
}

/// A connected pair on 127.0.0.1: the gateway's end (made a [`Stream`] on
/// the worker) and the peer's, which a test plays from a thread; the peer
/// gives up reading after [`PATIENCE`].
pub(crate) fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (ours, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(PATIENCE)).unwrap();
    (ours, peer)
}

/// A deadline of no gateway: its waits end at their limit.
pub(crate) fn deadline() -> Arc<Deadline> {
    Arc::new(Deadline::default())
}

/// A session on the gateway's end of [`socket_pair`]; on the worker.
pub(crate) fn session(ours: TcpStream) -> Session {
    Session::new(Stream::from_std(ours).unwrap(), deadline(), 4096)
}

/// What the peer reads until the connection ends (or [`PATIENCE`] passes).
pub(crate) fn read_to_end(peer: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let _ = peer.read_to_end(&mut all);
    all
}

/// One answer with a `content-length` body (or none), read whole: its head
/// as text, and its body.
pub(crate) fn read_answer(peer: &mut TcpStream) -> (String, Vec<u8>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match peer.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            got => panic!("the answer's head ended early ({got:?}): {head:?}"),
        }
    }
    let head = String::from_utf8(head).unwrap();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .map_or(0, |n| n.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    peer.read_exact(&mut body).unwrap();
    (head, body)
}
