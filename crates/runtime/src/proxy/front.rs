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
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

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
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// Closes an idle connection (its deadline passed, or the proxy stops): a
/// TLS session first says so with a close_notify (RFC 8446 §6.1), so that
/// its client tells the end from a truncation, if the socket takes it at
/// once (an idle connection's send buffer is empty); a connection whose
/// client reads nothing is not waited for.
pub(super) fn close_idle<S: ClientIo>(stream: &mut S) {
    use futures_util::FutureExt as _;
    use tokio::io::AsyncWriteExt as _;
    if S::CLOSE_NOTIFY {
        let _ = stream.shutdown().now_or_never();
    }
}

/// Reads from a raw socket into memory not yet initialized, so that a
/// connection's read buffer is not zeroed before each read (8 KiB for the
/// first one).
fn recv(socket: &std::net::TcpStream, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    socket2::SockRef::from(socket).recv(buf)
}

/// A client's plain socket, registered with its thread's event loop only
/// once an operation on it would wait. A client whose request is there when
/// its connection is accepted, and whose answer fits the socket's buffer,
/// costs no `epoll_ctl` at all, neither to register nor to deregister: a
/// client opening a connection per request (`Connection: close`) saves two
/// of the dozen system calls its request costs, as in HAProxy.
#[derive(Debug)]
pub struct ClientSocket(Socket);

#[derive(Debug)]
enum Socket {
    /// Not registered: operations are tried on the socket directly.
    Raw(std::net::TcpStream),
    Registered(TcpStream),
    /// Registering failed; the socket is closed.
    Closed,
}

impl ClientSocket {
    /// A socket just accepted (non-blocking), not registered.
    pub fn raw(stream: std::net::TcpStream) -> Self {
        Self(Socket::Raw(stream))
    }

    /// A socket already registered.
    pub fn registered(stream: TcpStream) -> Self {
        Self(Socket::Registered(stream))
    }

    /// The socket, registered with the thread's event loop now if it was
    /// not yet.
    fn register(&mut self) -> io::Result<&mut TcpStream> {
        if let Socket::Raw(_) = self.0
            && let Socket::Raw(raw) = std::mem::replace(&mut self.0, Socket::Closed)
        {
            self.0 = Socket::Registered(TcpStream::from_std(raw)?);
        }
        match &mut self.0 {
            Socket::Registered(stream) => Ok(stream),
            _ => Err(io::Error::new(io::ErrorKind::NotConnected, "socket closed")),
        }
    }

    /// The socket as a tokio stream (registered now if it was not).
    pub fn into_registered(mut self) -> io::Result<TcpStream> {
        self.register()?;
        match self.0 {
            Socket::Registered(stream) => Ok(stream),
            _ => Err(io::Error::new(io::ErrorKind::NotConnected, "socket closed")),
        }
    }

    /// Waits until the socket has something to read.
    pub async fn readable(&mut self) -> io::Result<()> {
        self.register()?.readable().await
    }

    /// Reads into `buf` at once if the socket is not registered: `None`
    /// when it is, or when the read would wait (it is registered then).
    fn read_raw(&mut self, buf: &mut BytesMut) -> Option<io::Result<usize>> {
        let Socket::Raw(raw) = &self.0 else {
            return None;
        };
        if buf.capacity() == buf.len() {
            buf.reserve(PREFACE_BUFFER);
        }
        let read = recv(raw, buf.spare_capacity_mut());
        if let Ok(n) = read {
            // SAFETY: `recv` initialized the first `n` bytes of the spare
            // capacity.
            #[allow(unsafe_code)]
            unsafe {
                buf.set_len(buf.len() + n);
            }
        }
        match read {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => match self.register() {
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            },
            read => Some(read),
        }
    }

    /// A write on the raw socket, or on the registered one once the raw one
    /// would wait.
    fn poll_io<T>(
        &mut self,
        cx: &mut Context<'_>,
        raw: impl FnOnce(&std::net::TcpStream) -> io::Result<T>,
        registered: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if let Socket::Raw(stream) = &self.0 {
            match raw(stream) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
        registered(Pin::new(self.register()?), cx)
    }
}

impl AsyncRead for ClientSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Socket::Raw(stream) = &self.0 {
            // SAFETY: `recv` only writes initialized bytes into the unfilled
            // part, and it initialized the first `n` of them.
            #[allow(unsafe_code)]
            let read = recv(stream, unsafe { buf.unfilled_mut() });
            match read {
                Ok(n) => {
                    #[allow(unsafe_code)]
                    unsafe {
                        buf.assume_init(n);
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Pin::new(self.register()?).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(
            cx,
            |s| io::Write::write(&mut &*s, buf),
            |s, cx| s.poll_write(cx, buf),
        )
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(
            cx,
            |s| io::Write::write_vectored(&mut &*s, bufs),
            |s, cx| s.poll_write_vectored(cx, bufs),
        )
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_io(
            cx,
            |s| s.shutdown(std::net::Shutdown::Write),
            |s, cx| s.poll_shutdown(cx),
        )
    }
}

impl ClientIo for ClientSocket {
    const PARKS: bool = true;
    const CLOSE_NOTIFY: bool = false;

    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.register()?.poll_read_ready(cx)
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
    /// How long a write may wait for the client to read (`None`: as long
    /// as it takes; HTTP/2 keeps its own, per stream).
    send: Option<SendLimit>,
}

/// `proxy.send_timeout` on the writes hyper makes: a write (or flush) that
/// the client leaves waiting for longer fails with `TimedOut`, which ends
/// the connection, as on the fast path. Counted per write, so a client
/// that reads slowly but steadily is served; the timer is armed only once a
/// write waits.
#[derive(Debug)]
struct SendLimit {
    limit: Duration,
    /// A write has waited since the timer was armed, and none went through.
    waiting: bool,
    /// The timer, made at the first wait and kept between waits.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl SendLimit {
    /// What a write op returned, within the limit.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.waiting = false;
            return polled;
        }
        let limit = self.limit;
        if !self.waiting {
            self.waiting = true;
            let at = tokio::time::Instant::now() + limit;
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(at),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        let sleep = self.sleep.as_mut().expect("armed at the first wait");
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client read nothing of its response for {limit:?} (proxy.send_timeout)"
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S> FrontStream<S> {
    /// `stream`, to be read after `ahead`.
    pub fn new(stream: S, ahead: Bytes, activity: Arc<Activity>) -> Self {
        Self {
            stream,
            ahead,
            activity,
            unflushed: false,
            send: None,
        }
    }

    /// Fails a write that waits for the client longer than `limit`.
    pub fn with_send_timeout(mut self, limit: Duration) -> Self {
        self.send = Some(SendLimit {
            limit,
            waiting: false,
            sleep: None,
        });
        self
    }

    /// `polled`, a write op's result, within the send timeout.
    fn sent<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match &mut self.send {
            Some(send) => send.check(cx, polled),
            None => polled,
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
/// `None` when the client closed first. A client that connects and sends
/// nothing holds no buffer (that of a read that would wait is freed).
pub async fn read_preface(stream: &mut ClientSocket) -> io::Result<Option<(BytesMut, bool)>> {
    let mut buf = BytesMut::new();
    loop {
        // Read at once while the socket is not registered: the request
        // usually came with the connection.
        let read = match stream.read_raw(&mut buf) {
            Some(read) => read,
            None => {
                if buf.is_empty() {
                    buf = BytesMut::new();
                }
                stream.readable().await?;
                if buf.capacity() == buf.len() {
                    buf.reserve(PREFACE_BUFFER);
                }
                // `read_buf`, not `try_read_buf`: a short read clears the
                // socket's readiness, so the wait for the next request
                // waits (and parks) instead of finding the readiness of
                // this one.
                stream.read_buf(&mut buf).await
            }
        };
        if read? == 0 {
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
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.sent(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.unflushed = true;
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.sent(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_flush(cx);
        if let Poll::Ready(Ok(())) = polled {
            self.unflushed = false;
        }
        self.sent(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_shutdown(cx);
        self.sent(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_socket_registers_only_once_it_must_wait() {
        use std::io::Write;
        use tokio::io::AsyncWriteExt;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.write_all(b"GET").unwrap();
        let (server, _) = listener.accept().unwrap();
        // Blocks until the request is there (the first read then needs no wait).
        server.peek(&mut [0u8; 1]).unwrap();
        server.set_nonblocking(true).unwrap();
        let mut socket = ClientSocket::raw(server);
        let mut buf = BytesMut::new();
        assert!(matches!(socket.read_raw(&mut buf), Some(Ok(3))));
        socket.write_all(b"answer").await.unwrap();
        assert!(matches!(socket.0, Socket::Raw(_)), "nothing waited yet");
        // Nothing more to read: the socket is registered, and a wait works.
        assert!(socket.read_raw(&mut buf).is_none());
        assert!(matches!(socket.0, Socket::Registered(_)));
        client.write_all(b" /").unwrap();
        socket.readable().await.unwrap();
        socket.read_buf(&mut buf).await.unwrap();
        assert_eq!(&buf[..], b"GET /");
        let mut answer = [0u8; 6];
        std::io::Read::read_exact(&mut client, &mut answer).unwrap();
        assert_eq!(&answer, b"answer");
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
