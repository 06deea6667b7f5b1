//! The frames a connection sends, encoded in the order they are sent into
//! one buffer and written with as few writes as the stream takes: large
//! DATA payloads are written from where they are (vectored writes), the
//! rest is copied in. Control frames are encoded by the `h2` crate's frame
//! types; response heads by [`hpack`](super::hpack), without the crate's
//! encoder.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::frame::{self, Reason, StreamId};
use http::{HeaderMap, StatusCode};
use tokio::io::AsyncWrite;

use super::hpack;

/// Bytes waiting to be written above which no more response frames are
/// encoded until some are written.
const ROOM: usize = 64 * 1024;
/// The same, above which the client's frames are not read: answers to
/// them (PING, SETTINGS, resets) may fill what responses leave, but not
/// without end. Responses alone rarely reach it, so a client whose
/// responses wait to be read may still send its request bodies.
const READ_ROOM: usize = 4 * ROOM;
/// DATA payloads at least this long are written from their own buffer
/// when the stream takes vectored writes; shorter ones are copied.
const COPY_BELOW: usize = 1024;
/// Buffers written in one vectored write at most.
const SLICES: usize = 64;
/// A buffer grown past this by a burst is not kept once written.
const KEEP: usize = 64 * 1024;

/// Frame types (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
/// Frame flags.
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// A frame header's length.
const HEAD: usize = 9;

/// The frames of one connection not yet written.
#[derive(Debug)]
pub(super) struct Writer {
    /// Earlier bytes, in order: buffers frozen when a payload was queued
    /// after them, and the payloads.
    queue: VecDeque<Bytes>,
    queued: usize,
    /// The latest bytes, after the queue's.
    buf: BytesMut,
    vectored: bool,
    /// The client's SETTINGS_MAX_FRAME_SIZE.
    max_frame: usize,
    /// The next header block starts with a table size update to 0 (the
    /// first one).
    set_table_size: bool,
    /// The buffer grew past [`KEEP`]: it is let go once written.
    grown: bool,
    /// Bytes written so far.
    written: u64,
}

impl Writer {
    /// A writer for a stream that takes vectored writes or not.
    pub(super) fn new(vectored: bool) -> Self {
        Self {
            queue: VecDeque::new(),
            queued: 0,
            buf: BytesMut::new(),
            vectored,
            max_frame: frame::DEFAULT_MAX_FRAME_SIZE as usize,
            set_table_size: true,
            grown: false,
            written: 0,
        }
    }

    /// Bytes not written yet.
    pub(super) fn len(&self) -> usize {
        self.queued + self.buf.len()
    }

    /// Bytes written so far.
    pub(super) fn written(&self) -> u64 {
        self.written
    }

    /// Whether every frame was written.
    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether more response frames may be encoded before some are
    /// written.
    pub(super) fn has_room(&self) -> bool {
        self.len() < ROOM
    }

    /// Whether the client's frames may be read, and answered.
    pub(super) fn can_read(&self) -> bool {
        self.len() < READ_ROOM
    }

    /// The largest frame payload the client takes.
    pub(super) fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// The client's SETTINGS_MAX_FRAME_SIZE changed.
    pub(super) fn set_max_frame(&mut self, n: usize) {
        self.max_frame = n;
    }

    /// A SETTINGS frame (or its acknowledgement).
    pub(super) fn settings(&mut self, s: &frame::Settings) {
        s.encode(&mut self.buf);
    }

    /// A WINDOW_UPDATE of `n` bytes on stream `id` (0: the connection).
    pub(super) fn window_update(&mut self, id: u32, n: u32) {
        frame::WindowUpdate::new(StreamId::from(id), n).encode(&mut self.buf);
    }

    /// A PING, or the answer to one.
    pub(super) fn ping(&mut self, p: &frame::Ping) {
        p.encode(&mut self.buf);
    }

    /// A GOAWAY naming `last_id`, the last stream served.
    pub(super) fn go_away(&mut self, last_id: StreamId, reason: Reason) {
        frame::GoAway::new(last_id, reason).encode(&mut self.buf);
    }

    /// A RST_STREAM on stream `id`.
    pub(super) fn reset(&mut self, id: u32, reason: Reason) {
        frame::Reset::new(StreamId::from(id), reason).encode(&mut self.buf);
    }

    /// A HEADERS frame on stream `id` (and CONTINUATION frames, when the
    /// block is larger than a frame): a response's head with `status`, or
    /// trailers without.
    pub(super) fn headers(
        &mut self,
        id: u32,
        status: Option<StatusCode>,
        fields: &HeaderMap,
        end_stream: bool,
    ) {
        let start = self.buf.len();
        self.buf.put_bytes(0, HEAD);
        let set_table_size = std::mem::take(&mut self.set_table_size);
        hpack::encode(status, fields, set_table_size, &mut self.buf);
        let end = if end_stream { END_STREAM } else { 0 };
        let len = self.buf.len() - start - HEAD;
        if len <= self.max_frame {
            let mut head = &mut self.buf[start..start + HEAD];
            put_head(&mut head, len, HEADERS, end | END_HEADERS, id);
            return;
        }
        // Rare: the block is split into frames, from a copy.
        let block = self.buf.split_off(start + HEAD).freeze();
        self.buf.truncate(start);
        let mut chunks = block.chunks(self.max_frame).peekable();
        let mut kind = HEADERS;
        let mut flags = end;
        while let Some(chunk) = chunks.next() {
            if chunks.peek().is_none() {
                flags |= END_HEADERS;
            }
            put_head(&mut self.buf, chunk.len(), kind, flags, id);
            self.buf.put_slice(chunk);
            kind = CONTINUATION;
            flags = 0;
        }
    }

    /// A DATA frame on stream `id`; `payload` fits the client's windows
    /// and frame size.
    pub(super) fn data(&mut self, id: u32, payload: Bytes, end_stream: bool) {
        let flags = if end_stream { END_STREAM } else { 0 };
        put_head(&mut self.buf, payload.len(), DATA, flags, id);
        if payload.len() < COPY_BELOW || !self.vectored {
            self.buf.put_slice(&payload);
            return;
        }
        if !self.buf.is_empty() {
            let before = self.buf.split().freeze();
            self.queued += before.len();
            self.queue.push_back(before);
        }
        self.queued += payload.len();
        self.queue.push_back(payload);
    }

    /// Writes what fits in `io`, until all is written (then flushes `io`)
    /// or `io` takes no more.
    pub(super) fn poll_flush<T: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut T,
    ) -> Poll<io::Result<()>> {
        // Written bytes shrink the buffer's capacity as seen from here, so
        // its size is judged before.
        self.grown |= self.buf.len() > KEEP;
        while !self.is_empty() {
            let n = if self.queue.is_empty() {
                ready!(Pin::new(&mut *io).poll_write(cx, &self.buf))?
            } else {
                let mut slices = [IoSlice::new(&[]); SLICES];
                let mut k = 0;
                for b in self.queue.iter().take(SLICES) {
                    slices[k] = IoSlice::new(b);
                    k += 1;
                }
                if k < SLICES && !self.buf.is_empty() {
                    slices[k] = IoSlice::new(&self.buf);
                    k += 1;
                }
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..k]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.consume(n);
        }
        if std::mem::take(&mut self.grown) {
            self.buf = BytesMut::new();
        }
        Pin::new(io).poll_flush(cx)
    }

    /// Ready once `room` says there is room, writing to `io` for it.
    pub(super) fn poll_room<T: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut T,
        room: fn(&Self) -> bool,
    ) -> Poll<io::Result<()>> {
        if room(self) {
            return Poll::Ready(Ok(()));
        }
        match self.poll_flush(cx, io) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ if room(self) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    }

    /// Drops the first `n` bytes, written.
    fn consume(&mut self, mut n: usize) {
        self.written += n as u64;
        while let Some(front) = self.queue.front_mut() {
            if n < front.len() {
                front.advance(n);
                self.queued -= n;
                return;
            }
            n -= front.len();
            self.queued -= front.len();
            self.queue.pop_front();
        }
        self.buf.advance(n);
    }
}

/// Appends a frame header (RFC 9113 §4.1).
fn put_head(dst: &mut impl BufMut, len: usize, kind: u8, flags: u8, id: u32) {
    debug_assert!(len < 1 << 24);
    dst.put_uint(len as u64, 3);
    dst.put_u8(kind);
    dst.put_u8(flags);
    dst.put_u32(id & 0x7fff_ffff);
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use futures_util::StreamExt;
    use h2::Codec;
    use h2::frame::Frame;

    use super::*;

    /// A stream that takes at most `step` bytes per write.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
        vectored: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = data.len().min(this.step);
            this.out.extend_from_slice(&data[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(this.step - n);
                this.out.extend_from_slice(&b[..take]);
                n += take;
                if n == this.step {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Writes a response of every kind through `w`, in writes of `step`.
    fn write_all(vectored: bool, step: usize) -> Vec<u8> {
        let mut w = Writer::new(vectored);
        let mut fields = HeaderMap::new();
        fields.insert("content-type", "text/plain".parse().unwrap());
        fields.insert("x-long", "v".repeat(40_000).parse().unwrap());
        w.settings(&frame::Settings::default());
        w.headers(1, Some(StatusCode::OK), &fields, false);
        w.data(1, Bytes::from_static(b"ok"), false);
        w.data(1, Bytes::from(vec![7; 5000]), false);
        w.headers(1, None, &HeaderMap::new(), true);
        w.headers(
            3,
            Some(StatusCode::from_u16(299).unwrap()),
            &HeaderMap::new(),
            true,
        );
        w.data(5, Bytes::from(vec![9; 3000]), true);
        w.reset(7, Reason::REFUSED_STREAM);
        w.window_update(0, 100);
        w.ping(&frame::Ping::pong([1; 8]));
        w.go_away(StreamId::from(7), Reason::NO_ERROR);
        let mut io = Trickle {
            out: Vec::new(),
            step,
            vectored,
        };
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(w.poll_flush(&mut cx, &mut io).is_ready());
        assert!(w.is_empty());
        io.out
    }

    #[tokio::test]
    async fn frames_read_back_as_written_whatever_the_writes() {
        let whole = write_all(false, usize::MAX);
        for (vectored, step) in [(true, usize::MAX), (true, 7), (false, 5), (true, 1000)] {
            assert_eq!(
                write_all(vectored, step),
                whole,
                "vectored {vectored}, step {step}"
            );
        }
        let mut codec: Codec<_, Bytes> = Codec::new(Cursor::new(whole));
        codec.set_max_recv_header_list_size(1 << 20);
        let mut frames = Vec::new();
        while let Some(f) = codec.next().await {
            frames.push(f.expect("a valid frame"));
        }
        let mut frames = frames.into_iter();
        assert!(matches!(frames.next(), Some(Frame::Settings(_))));
        let Some(Frame::Headers(head)) = frames.next() else {
            panic!("no head")
        };
        assert!(!head.is_end_stream());
        let (pseudo, fields) = head.into_parts();
        assert_eq!(pseudo.status, Some(StatusCode::OK));
        assert_eq!(fields["content-type"], "text/plain");
        assert_eq!(fields["x-long"].len(), 40_000, "across CONTINUATION frames");
        let mut body = Vec::new();
        for _ in 0..2 {
            let Some(Frame::Data(d)) = frames.next() else {
                panic!("no data")
            };
            body.extend_from_slice(d.payload());
        }
        assert_eq!(body.len(), 5002);
        assert_eq!(&body[..2], b"ok");
        let Some(Frame::Headers(trailers)) = frames.next() else {
            panic!("no trailers")
        };
        assert!(trailers.is_end_stream());
        let Some(Frame::Headers(other)) = frames.next() else {
            panic!("no second head")
        };
        assert_eq!(u32::from(other.stream_id()), 3);
        assert_eq!(other.into_parts().0.status.map(|s| s.as_u16()), Some(299));
        let Some(Frame::Data(d)) = frames.next() else {
            panic!("no data on 5")
        };
        assert!(d.is_end_stream() && d.payload().len() == 3000);
        assert!(
            matches!(frames.next(), Some(Frame::Reset(r)) if r.reason() == Reason::REFUSED_STREAM)
        );
        assert!(matches!(frames.next(), Some(Frame::WindowUpdate(u)) if u.size_increment() == 100));
        assert!(matches!(frames.next(), Some(Frame::Ping(p)) if p.is_ack()));
        assert!(
            matches!(frames.next(), Some(Frame::GoAway(g)) if u32::from(g.last_stream_id()) == 7)
        );
        assert!(frames.next().is_none());
    }

    #[test]
    fn a_burst_s_buffer_is_let_go_once_written_a_small_one_kept() {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut io = Trickle {
            out: Vec::new(),
            step: 4096,
            vectored: false,
        };
        let mut w = Writer::new(false);
        w.data(1, Bytes::from(vec![1; 100]), false);
        assert!(w.poll_flush(&mut cx, &mut io).is_ready());
        w.data(1, Bytes::from(vec![1; 100]), false);
        assert!(w.buf.capacity() > 100, "the small buffer is used again");
        for _ in 0..15 {
            w.data(1, Bytes::from(vec![2; 16_000]), false);
        }
        // Once written, what is left of this buffer's capacity is below
        // `KEEP`, though it holds 240 KB.
        assert!(w.buf.capacity() - w.buf.len() < KEEP);
        assert!(w.poll_flush(&mut cx, &mut io).is_ready());
        assert_eq!(w.buf.capacity(), 0, "240 KB let go");
        assert_eq!(io.out.len(), 2 * (HEAD + 100) + 15 * (HEAD + 16_000));
    }

    #[test]
    fn a_block_larger_than_a_frame_is_split_at_the_frame_size() {
        let mut w = Writer::new(false);
        w.set_max_frame(16_384);
        let mut fields = HeaderMap::new();
        fields.insert("x-long", "v".repeat(40_000).parse().unwrap());
        w.headers(1, Some(StatusCode::OK), &fields, true);
        let bytes = w.buf.clone();
        let mut at = 0;
        let mut kinds = Vec::new();
        while at < bytes.len() {
            let len = (usize::from(bytes[at]) << 16)
                | (usize::from(bytes[at + 1]) << 8)
                | usize::from(bytes[at + 2]);
            assert!(len <= 16_384);
            kinds.push((bytes[at + 3], bytes[at + 4]));
            at += HEAD + len;
        }
        assert_eq!(
            kinds,
            vec![
                (HEADERS, END_STREAM),
                (CONTINUATION, 0),
                (CONTINUATION, END_HEADERS)
            ]
        );
    }
}
