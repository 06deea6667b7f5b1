//! Plain-TCP client connections without idle buffers. hyper keeps an 8 KB
//! read buffer and an 8 KB write buffer for the whole life of an HTTP/1.1
//! connection, which is most of the memory of an idle keep-alive client. So
//! HTTP/1.1 is served in *sessions*: a hyper connection over a
//! [`FrontStream`] that, once it has answered a request and waits for the
//! next one with nothing left to write, reports itself idle. The session is
//! then taken apart (`into_parts`: the socket and any bytes hyper read
//! ahead), its buffers freed, and the next session starts when the socket is
//! readable again (or at once, over the bytes read ahead). A session stays
//! whole for [`IDLE_LINGER`] first: a busy client's next request usually
//! comes sooner, and taking a session apart and building the next one costs
//! ~1 us of CPU.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A client connection's byte stream, as the fast path (see
/// [`super::fast`]) serves it: plain TCP or TLS.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {
    /// Whether an idle connection of this kind is parked (see
    /// [`super::park`]).
    const PARKS: bool;

    /// Whether the end of the connection is said before it is closed (TLS's
    /// close_notify); a plain socket just closes.
    const CLOSE_NOTIFY: bool;

    /// Ready when a read would not wait: bytes (or the end) have come.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ClientIo for TcpStream {
    const PARKS: bool = true;
    const CLOSE_NOTIFY: bool = false;

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<TcpStream> {
    // Parking would save ~0.5 KB of the several KB a TLS session holds.
    const PARKS: bool = false;
    const CLOSE_NOTIFY: bool = true;

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (tcp, tls) = self.get_ref();
        // Plaintext already decrypted (a pipelined request), or a state
        // that does not wait for the peer: a read does not wait either.
        if !tls.wants_read() {
            return Poll::Ready(Ok(()));
        }
        tcp.poll_read_ready(cx)
    }
}

/// How long a session waits idle before it is taken apart.
pub const IDLE_LINGER: std::time::Duration = std::time::Duration::from_millis(100);

/// The first read of a connection: a whole request head, usually.
const PREFACE_BUFFER: usize = 8 * 1024;

/// The first bytes of every HTTP/2 prior-knowledge (h2c) connection.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the requests of a connection tell its stream: whether a response is
/// still being produced, and whether the connection was upgraded.
#[derive(Debug, Default)]
pub struct Activity {
    /// Requests of the session whose response body is not yet dropped.
    active: AtomicUsize,
    /// Requests of the session whose response body was dropped.
    completed: AtomicUsize,
    /// An upgrade was asked for: the session is never taken apart.
    upgrade: AtomicBool,
    /// Set by the stream when hyper waits for a request that has not come.
    idle: AtomicBool,
}

/// Counts one request as active until dropped (with its response body).
#[derive(Debug)]
pub struct ActiveGuard(Arc<Activity>);

impl Activity {
    /// Counts a request until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.idle.store(false, Ordering::Relaxed);
        ActiveGuard(Arc::clone(self))
    }

    /// The connection asks for an upgrade: keep its session for good.
    pub fn upgrading(&self) {
        self.upgrade.store(true, Ordering::Relaxed);
    }

    /// A session may be taken apart once it answered a request, has none in
    /// progress, and has flushed what it wrote.
    fn releasable(&self, unflushed: bool) -> bool {
        !unflushed
            && self.active.load(Ordering::Relaxed) == 0
            && self.completed.load(Ordering::Relaxed) > 0
            && !self.upgrade.load(Ordering::Relaxed)
    }

    /// Whether the session reported itself idle (and still is).
    pub fn is_idle(&self) -> bool {
        self.idle.load(Ordering::Relaxed) && self.active.load(Ordering::Relaxed) == 0
    }

    /// A new session begins: it must answer a request before it is idle.
    fn new_session(&self) {
        self.completed.store(0, Ordering::Relaxed);
        self.idle.store(false, Ordering::Relaxed);
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.completed.fetch_add(1, Ordering::Relaxed);
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client socket with bytes read ahead in front of it, which reports an
/// idle session to its [`Activity`].
#[derive(Debug)]
pub struct FrontStream<S = TcpStream> {
    stream: S,
    ahead: Bytes,
    activity: Arc<Activity>,
    /// Written since the last completed flush.
    unflushed: bool,
}

impl<S> FrontStream<S> {
    /// `stream`, to be read after `ahead`.
    pub fn new(stream: S, ahead: Bytes, activity: Arc<Activity>) -> Self {
        Self {
            stream,
            ahead,
            activity,
            unflushed: false,
        }
    }

    /// Starts a new session over this stream, reading `ahead` first.
    pub fn restart(&mut self, ahead: Bytes) {
        self.ahead = ahead;
        self.unflushed = false;
        self.activity.new_session();
    }
}

impl FrontStream<TcpStream> {
    /// Waits until the socket has something to read.
    pub async fn readable(&self) -> io::Result<()> {
        self.stream.readable().await
    }
}

/// Reads the first bytes of a connection, enough to tell h2c (prior
/// knowledge) from HTTP/1.1, in one read when they come together (the
/// whole first request, usually); returns them and whether it is h2c.
/// `None` when the client closed first. The buffer is allocated only once
/// the socket is readable: a client that connects and sends nothing holds
/// none.
pub async fn read_preface(stream: &mut TcpStream) -> io::Result<Option<(BytesMut, bool)>> {
    let mut buf = BytesMut::new();
    loop {
        stream.readable().await?;
        if buf.capacity() == buf.len() {
            buf.reserve(PREFACE_BUFFER);
        }
        // `read_buf`, not `try_read_buf`: a short read clears the socket's
        // readiness, so the wait for the next request waits (and parks)
        // instead of finding the readiness of this one.
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok((!buf.is_empty()).then_some((buf, false)));
        }
        let n = buf.len().min(H2_PREFACE.len());
        if n == H2_PREFACE.len() || buf[..n] != H2_PREFACE[..n] {
            let h2 = buf.starts_with(H2_PREFACE);
            return Ok(Some((buf, h2)));
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrontStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.ahead.is_empty() {
            let n = this.ahead.len().min(buf.remaining());
            buf.put_slice(&this.ahead[..n]);
            this.ahead.advance(n);
            if this.ahead.is_empty() {
                this.ahead = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        let idle = polled.is_pending() && this.activity.releasable(this.unflushed);
        this.activity.idle.store(idle, Ordering::Relaxed);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrontStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.unflushed = true;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.unflushed = true;
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_flush(cx);
        if let Poll::Ready(Ok(())) = polled {
            self.unflushed = false;
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// An HTTP/2 connection's stream, whose writes wait for one turn of the
/// thread's scheduler: the responses of the connection's other streams that
/// become ready in the same turn go out in the same write. Without it, the
/// connection writes each time one of its streams answers (a system call per
/// response or two); HAProxy and nginx write once per turn of their event
/// loops.
#[derive(Debug)]
pub struct Batched<S> {
    inner: S,
    /// This write already waited for its turn.
    waited: bool,
}

impl<S> Batched<S> {
    /// `inner`, its writes batched.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            waited: false,
        }
    }

    /// Pending once per write: the task is woken at once, and polled again
    /// after the tasks already woken (a self-wake during a poll is deferred
    /// until the scheduler has run the others).
    fn wait_turn(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.waited {
            return Poll::Ready(());
        }
        self.waited = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Batched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Batched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.wait_turn(cx));
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.waited = polled.is_pending();
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.wait_turn(cx));
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.waited = polled.is_pending();
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batched_write_waits_one_turn_then_writes() {
        use tokio::io::AsyncWriteExt;
        let (a, mut b) = tokio::io::duplex(64);
        let mut batched = Batched::new(a);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let first = Pin::new(&mut batched).poll_write(&mut cx, b"one");
        assert!(first.is_pending(), "the first poll waits for its turn");
        let second = Pin::new(&mut batched).poll_write(&mut cx, b"one");
        assert!(matches!(second, Poll::Ready(Ok(3))));
        assert!(
            Pin::new(&mut batched)
                .poll_write(&mut cx, b"two")
                .is_pending()
        );
        batched.write_all(b"two").await.unwrap();
        drop(batched);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"onetwo");
    }

    #[test]
    fn a_session_is_idle_only_after_a_completed_request() {
        let a = Arc::new(Activity::default());
        assert!(!a.releasable(false), "nothing answered yet");
        let guard = a.begin();
        assert!(!a.releasable(false), "a request in progress");
        drop(guard);
        assert!(a.releasable(false));
        assert!(!a.releasable(true), "bytes not flushed");
        a.new_session();
        assert!(!a.releasable(false));
        let _g = a.begin();
        a.upgrading();
        drop(_g);
        assert!(
            !a.releasable(false),
            "upgraded connections keep their session"
        );
    }
}
