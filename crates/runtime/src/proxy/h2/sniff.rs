//! The window each DATA frame takes. Flow control counts a DATA frame's
//! whole payload, its padding included, but the `h2` crate's codec hands
//! over the data without its padding and keeps the length to itself; so
//! the bytes the codec reads pass through here first, and the length of
//! every DATA frame is noted in order, for the connection to take as the
//! codec yields the frame.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// HTTP/2's DATA frame type.
const DATA: u8 = 0x0;
/// A frame header's length.
const HEAD: usize = 9;

/// An HTTP/2 connection's byte stream (after the preface), with the
/// payload length of each DATA frame read noted.
#[derive(Debug)]
pub(super) struct Sniffed<T> {
    io: T,
    /// The frame header being read, and how much of it is.
    head: [u8; HEAD],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    skip: usize,
    data: VecDeque<usize>,
}

impl<T> Sniffed<T> {
    pub(super) fn new(io: T) -> Self {
        Self {
            io,
            head: [0; HEAD],
            have: 0,
            skip: 0,
            data: VecDeque::new(),
        }
    }

    /// The payload length of the oldest DATA frame not yet taken.
    pub(super) fn take_data_len(&mut self) -> Option<usize> {
        self.data.pop_front()
    }

    /// Follows the frame boundaries through `bytes`.
    fn note(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (HEAD - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == HEAD {
                self.have = 0;
                let h = self.head;
                let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                if h[3] == DATA {
                    self.data.push_back(len);
                }
                self.skip = len;
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Sniffed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        this.note(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Sniffed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, len: usize) -> Vec<u8> {
        let l = u32::try_from(len).unwrap().to_be_bytes();
        let mut f = vec![l[1], l[2], l[3], kind, 0, 0, 0, 0, 1];
        f.resize(HEAD + len, 0xAB);
        f
    }

    #[test]
    fn data_frame_lengths_are_noted_in_order_whatever_the_reads() {
        let bytes = [
            frame(0x1, 30),
            frame(DATA, 17),
            frame(0x6, 8),
            frame(DATA, 0),
            frame(DATA, 70_000),
        ]
        .concat();
        for step in [1, 2, 9, 10, 4096, bytes.len()] {
            let mut s = Sniffed::new(());
            for chunk in bytes.chunks(step) {
                s.note(chunk);
            }
            let seen: Vec<_> = std::iter::from_fn(|| s.take_data_len()).collect();
            assert_eq!(seen, vec![17, 0, 70_000], "reads of {step} bytes");
            assert_eq!((s.have, s.skip), (0, 0), "at a frame boundary");
        }
    }
}
