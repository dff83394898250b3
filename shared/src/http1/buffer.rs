//! A read buffer for one connection: bytes received and not yet consumed.
//!
//! Pipelined requests leave the next request's bytes here after the current
//! one is consumed, which is what keeps them in order.

use futures_lite::{AsyncRead, AsyncReadExt};

#[derive(Debug)]
pub struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    initial: usize,
}

impl ReadBuf {
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(64);
        ReadBuf {
            buf: vec![0; capacity],
            start: 0,
            end: 0,
            initial: capacity,
        }
    }

    /// A buffer that allocates its `capacity` at the first read (an idle
    /// connection then holds no buffer).
    pub fn unallocated(capacity: usize) -> Self {
        ReadBuf {
            buf: Vec::new(),
            start: 0,
            end: 0,
            initial: capacity.max(64),
        }
    }

    /// Hands the memory over while nothing is buffered (to a free list; the
    /// next read allocates again unless [`ReadBuf::supply`] gives it some).
    pub fn release(&mut self) -> Option<Vec<u8>> {
        if self.is_empty() && !self.buf.is_empty() {
            self.start = 0;
            self.end = 0;
            Some(std::mem::take(&mut self.buf))
        } else {
            None
        }
    }

    /// Gives a released buffer its memory back: what `take` hands over,
    /// cleared and zero-filled to its capacity (at least the initial size).
    /// `take` is called only when the buffer has no memory.
    pub fn supply(&mut self, take: impl FnOnce() -> Vec<u8>) {
        if self.buf.is_empty() {
            let mut storage = take();
            storage.clear();
            let capacity = storage.capacity().max(self.initial);
            storage.resize(capacity, 0);
            self.buf = storage;
        }
    }

    /// The bytes received and not yet consumed.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Marks `n` bytes as used.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads once from `io` into free space, making room (compacting, then
    /// doubling) if needed; returns the bytes read, 0 at end of stream.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> std::io::Result<usize> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let grown = (self.buf.len() * 2).max(self.initial);
                self.buf.resize(grown, 0);
            }
        }
        let n = io.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// Moves up to `n` buffered bytes into `out`; returns how many.
    pub fn take_into(&mut self, n: usize, out: &mut Vec<u8>) -> usize {
        let take = n.min(self.len());
        out.extend_from_slice(&self.buf[self.start..self.start + take]);
        self.consume(take);
        take
    }

    /// Gives back memory a large message grew the buffer to, once it is idle.
    pub fn shrink(&mut self) {
        if self.is_empty() && self.buf.len() > self.initial {
            self.buf = vec![0; self.initial];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_consumes_and_grows() {
        futures_lite::future::block_on(async {
            let mut src: &[u8] =
                b"0123456789abcdefghij0123456789abcdefghij0123456789abcdefghij0123456789";
            let mut b = ReadBuf::with_capacity(64);
            while b.fill(&mut src).await.unwrap() > 0 {}
            assert_eq!(b.len(), 70);
            b.consume(10);
            assert_eq!(&b.data()[..3], b"abc");
            let mut out = Vec::new();
            assert_eq!(b.take_into(5, &mut out), 5);
            assert_eq!(out, b"abcde");
            b.consume(100);
            assert!(b.is_empty());
            b.shrink();
            assert_eq!(b.buf.len(), 64);
        });
    }
}
