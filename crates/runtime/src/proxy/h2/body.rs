//! The body of a request on an HTTP/2 stream: the connection puts the
//! stream's DATA frames (and trailers) in its inbox, the request's handler
//! takes them out, and each byte taken is given back to the client as
//! flow-control window (see [`Released`]).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};

use crate::proxy::pool::BoxError;

/// Window to give back, which bodies note as their handlers read them and
/// the connection turns into WINDOW_UPDATE frames.
#[derive(Debug, Default)]
pub(super) struct Released {
    /// (stream, bytes); stream 0 for the connection's window alone (bytes
    /// of a stream that is gone).
    taken: Mutex<Vec<(u32, u32)>>,
    /// The connection's task.
    waker: AtomicWaker,
}

impl Released {
    /// `n` bytes of `stream` were read (0: of no stream any more).
    pub(super) fn note(&self, stream: u32, n: usize) {
        if n == 0 {
            return;
        }
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.lock().push((stream, n));
        self.waker.wake();
    }

    /// What was noted since the last call; the caller's task is woken at
    /// the next note.
    pub(super) fn take(&self, cx: &Context<'_>) -> Vec<(u32, u32)> {
        self.waker.register(cx.waker());
        let mut taken = self.lock();
        if taken.is_empty() {
            Vec::new()
        } else {
            std::mem::take(&mut *taken)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u32, u32)>> {
        self.taken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What a stream's client sent of the request body and its handler has not
/// read yet.
#[derive(Debug, Default)]
struct Inbox {
    chunks: VecDeque<Bytes>,
    /// Window the bytes in `chunks` took (with their DATA frames' padding).
    held: usize,
    trailers: Option<HeaderMap>,
    /// The client ended the body (END_STREAM).
    ended: bool,
    /// The stream failed (reset, or the connection ended) before its end.
    failed: Option<String>,
    /// The handler waiting for more.
    waker: Option<Waker>,
}

/// The connection's side of a stream's body.
#[derive(Debug)]
pub(super) struct Feed(Arc<Mutex<Inbox>>);

impl Feed {
    fn with<T>(&self, f: impl FnOnce(&mut Inbox) -> T) -> T {
        let mut inbox = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let out = f(&mut inbox);
        if let Some(w) = inbox.waker.take() {
            w.wake();
        }
        out
    }

    /// Whether the handler dropped the body (nobody will read it).
    pub(super) fn is_dropped(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }

    /// A DATA frame's payload, which took `window` bytes of window (its
    /// padding included); `end` when it ends the body.
    pub(super) fn data(&self, bytes: Bytes, window: usize, end: bool) {
        self.with(|inbox| {
            inbox.held += window;
            // An empty chunk would end a chunked body on its way to an
            // HTTP/1.1 replica: its window goes back with the next one.
            if !bytes.is_empty() {
                inbox.chunks.push_back(bytes);
            }
            inbox.ended |= end;
        });
    }

    /// The trailer fields, which end the body.
    pub(super) fn trailers(&self, fields: HeaderMap) {
        self.with(|inbox| {
            inbox.trailers = Some(fields);
            inbox.ended = true;
        });
    }

    /// The stream failed before the body's end.
    pub(super) fn fail(&self, why: &str) {
        self.with(|inbox| {
            if !inbox.ended {
                inbox.failed = Some(why.to_string());
            }
        });
    }
}

/// The handler's side of a stream's body.
#[derive(Debug)]
pub(in crate::proxy) struct RecvBody {
    inbox: Arc<Mutex<Inbox>>,
    stream: u32,
    released: Arc<Released>,
    /// The `content-length` the client announced.
    length: Option<u64>,
}

impl RecvBody {
    /// A body for `stream`, and the connection's side of it.
    pub(super) fn new(stream: u32, released: Arc<Released>, length: Option<u64>) -> (Self, Feed) {
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let body = Self {
            inbox: Arc::clone(&inbox),
            stream,
            released,
            length,
        };
        (body, Feed(inbox))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut inbox = self.lock();
        if let Some(chunk) = inbox.chunks.pop_front() {
            // The window of every chunk read so far goes back: all of it
            // once the last chunk is read, padding included.
            let give = if inbox.chunks.is_empty() {
                std::mem::take(&mut inbox.held)
            } else {
                let n = chunk.len().min(inbox.held);
                inbox.held -= n;
                n
            };
            drop(inbox);
            self.released.note(self.stream, give);
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(why) = inbox.failed.take() {
            return Poll::Ready(Some(Err(why.into())));
        }
        if let Some(trailers) = inbox.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if inbox.ended {
            return Poll::Ready(None);
        }
        inbox.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let inbox = self.lock();
        inbox.ended && inbox.chunks.is_empty() && inbox.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        // What was sent and never read still holds the connection's window.
        let unread = std::mem::take(&mut self.lock().held);
        self.released.note(0, unread);
    }
}
