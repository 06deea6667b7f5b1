//! Read buffers kept between requests by each proxy thread. A request's
//! buffer is given back once the request has been read whole, a
//! response's once it has been sent, a TLS connection's once what it read
//! is processed, and the thread's next read takes one: a thread serving
//! request after request allocates no buffer for each, and a connection
//! waiting for its next request still holds none.

use std::cell::RefCell;

use bytes::BytesMut;

/// Initial size of a read buffer; it grows for larger heads.
pub(super) const BUFFER: usize = 8 * 1024;

/// Most buffers a thread keeps (256 to 512 KiB): each request waiting for its
/// response holds one, and with dozens of connections on a thread they
/// come back and are taken again in bursts (with 4 kept, a third of the
/// takes under `h2load -c50` still allocated).
const KEPT: usize = 32;

thread_local! {
    static KEPT_BUFFERS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least [`BUFFER`] bytes.
pub(super) fn take() -> BytesMut {
    KEPT_BUFFERS
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| BytesMut::with_capacity(BUFFER))
}

/// Whether a [`take`] now would get a kept buffer rather than allocate one.
pub(super) fn any_kept() -> bool {
    KEPT_BUFFERS.with_borrow(|kept| !kept.is_empty())
}

/// Keeps `buf` for a later [`take`] when nothing else refers to its memory
/// (a response head frozen into `Bytes`, say) and it did not grow past
/// twice [`BUFFER`]; drops it otherwise.
pub(super) fn give_back(mut buf: BytesMut) {
    buf.clear();
    if !buf.try_reclaim(BUFFER) || buf.capacity() > 2 * BUFFER {
        return;
    }
    KEPT_BUFFERS.with_borrow_mut(|kept| {
        if kept.len() < KEPT {
            kept.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_taken_again_whole_and_empty() {
        let mut buf = take();
        let at = buf.as_ptr();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        bytes::Buf::advance(&mut buf, 18);
        give_back(buf);
        let again = take();
        assert_eq!(again.as_ptr(), at, "the same memory, from its start");
        assert!(again.is_empty());
        assert!(again.capacity() >= BUFFER);
    }

    #[test]
    fn a_buffer_still_shared_or_grown_is_not_kept() {
        while KEPT_BUFFERS.with_borrow(Vec::len) > 0 {
            drop(take());
        }
        let mut shared = take();
        shared.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        let head = shared.split_to(19).freeze();
        give_back(shared);
        let mut grown = BytesMut::with_capacity(4 * BUFFER);
        grown.extend_from_slice(b"x");
        give_back(grown);
        assert_eq!(KEPT_BUFFERS.with_borrow(Vec::len), 0);
        drop(head);
    }

    #[test]
    fn a_thread_keeps_a_few_buffers_at_most() {
        let taken: Vec<_> = (0..KEPT + 3).map(|_| take()).collect();
        assert!(!any_kept(), "all taken");
        taken.into_iter().for_each(give_back);
        assert!(any_kept());
        assert_eq!(KEPT_BUFFERS.with_borrow(Vec::len), KEPT);
    }
}
