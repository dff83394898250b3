//! Each worker's free list of connection buffers. A request takes its
//! buffers when its first bytes arrive and its connection gives them back
//! while it waits for the next one, so they go round this list instead of
//! through the allocator twice per request.

use std::cell::RefCell;

/// The size of a buffer on the list; larger ones (grown by a large request) go back to the allocator.
pub(crate) const SIZE: usize = 4096;
/// Buffers kept per worker (4 MiB): past this, idle memory goes back too.
const KEEP: usize = 1024;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for [`SIZE`] bytes.
pub(crate) fn take() -> Vec<u8> {
    FREE.with(|f| f.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(SIZE))
}

/// Gives `buf` back for the next request on this worker.
pub(crate) fn give(mut buf: Vec<u8>) {
    if buf.capacity() != SIZE {
        return;
    }
    buf.clear();
    FREE.with(|f| {
        let mut free = f.borrow_mut();
        if free.len() < KEEP {
            free.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_go_round_and_grown_ones_are_let_go() {
        let mut a = take();
        a.extend_from_slice(b"request");
        let at = a.as_ptr();
        give(a);
        let b = take();
        assert!(b.is_empty(), "given back empty");
        assert_eq!(b.as_ptr(), at, "the same allocation");
        let mut grown = b;
        grown.reserve(SIZE * 2);
        give(grown);
        assert_eq!(take().capacity(), SIZE, "a grown buffer is not kept");
    }
}
