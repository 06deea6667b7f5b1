//! A keep-alive connection pool to one replica. Dropping the pool (when the
//! replica starts draining) closes its idle connections; requests in flight
//! keep theirs until they finish.
//!
//! The pool hands out hyper HTTP/1.1 client connections
//! (`hyper::client::conn::http1`) directly: a connection is leased for one
//! request and returns to the pool when its response body ends, so a
//! request costs a lock and a vector pop, not hyper-util's pool machinery.
//! Beside those it keeps plain sockets for the proxy's HTTP/1.1 fast path,
//! which speaks HTTP on them itself ([`Pool::take_raw`], [`Pool::put_raw`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The body of a request sent upstream: buffered (retryable) or streamed.
pub type UpstreamBody = BoxBody<Bytes, BoxError>;

/// The error of a streamed request body (the client's, or the proxy's own
/// read timeout).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request that got no response from the replica.
#[derive(Debug)]
pub struct SendFailure {
    /// What failed.
    pub error: PoolError,
    /// The request, when no byte of it was written: it may go elsewhere.
    pub request: Option<http::Request<UpstreamBody>>,
    /// It failed on a pooled connection that was reused.
    pub reused: bool,
}

/// Timeout of a TCP connect to a replica.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A request that got no response from the replica (not a single byte of
/// one, so it may be sent elsewhere when that is otherwise safe).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The TCP connect failed.
    #[error("connect to {addr} failed")]
    Connect {
        /// The replica's address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The TCP connect did not finish in time.
    #[error("connect to {addr} timed out after {CONNECT_TIMEOUT:?}")]
    ConnectTimeout {
        /// The replica's address.
        addr: SocketAddr,
    },
    /// The request failed on the connection before a response head came.
    #[error("request to {addr} failed")]
    Request {
        /// The replica's address.
        addr: SocketAddr,
        /// The cause.
        source: hyper::Error,
    },
    /// The request failed on a plain socket before a response byte came.
    #[error("request to {addr} failed")]
    Io {
        /// The replica's address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// A pool of HTTP/1.1 keep-alive connections to one replica.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addr: SocketAddr,
    host: http::HeaderValue,
    idle_timeout: Duration,
    /// Idle connections, the most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// Idle plain sockets of the fast path, the most recently used last, in
    /// one slot per proxy thread ([`use_slot`]).
    idle_raw: [Mutex<Vec<(TcpStream, Instant)>>; RAW_SLOTS],
}

/// Slots of idle plain sockets in a pool: a socket is registered with the
/// event loop of the proxy thread that opened it, so each thread takes back
/// its own; threads beyond this many share slots.
const RAW_SLOTS: usize = 16;

thread_local! {
    static SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Makes the calling thread keep its idle plain sockets in slot `i` of every
/// pool (each proxy thread calls it once, with its index).
pub fn use_slot(i: usize) {
    SLOT.with(|s| s.set(i % RAW_SLOTS));
}

fn raw_slot() -> usize {
    SLOT.with(std::cell::Cell::get)
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

/// A response body from a pooled connection; the connection goes back to the
/// pool when the body has ended, and is closed if the body is dropped before.
#[derive(Debug)]
pub struct PooledBody {
    inner: Incoming,
    lease: Lease,
}

#[derive(Debug)]
struct Lease {
    sender: Option<SendRequest<UpstreamBody>>,
    pool: Weak<Inner>,
    ended: bool,
}

impl Pool {
    /// A pool to `addr` whose idle connections close after `idle_timeout`.
    pub fn new(addr: SocketAddr, idle_timeout: Duration) -> Self {
        let inner = Arc::new(Inner {
            addr,
            host: http::HeaderValue::from_str(&addr.to_string())
                .expect("an address is a header value"),
            idle_timeout,
            idle: Mutex::new(Vec::new()),
            idle_raw: std::array::from_fn(|_| Mutex::new(Vec::new())),
        });
        // Closes connections idle longer than the timeout, even when no
        // request comes to look at them; ends with the pool.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&inner);
            runtime.spawn(async move {
                let period = idle_timeout.max(Duration::from_millis(100));
                loop {
                    tokio::time::sleep(period).await;
                    let Some(inner) = weak.upgrade() else { return };
                    inner.evict_expired();
                }
            });
        }
        Self { inner }
    }

    /// The replica's address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Sends `req` (its URI becomes origin-form; a missing Host header
    /// becomes the replica's address) on an idle connection or a new one, and
    /// resolves with the response head. A failure hands the request back
    /// when none of it was written (the connect failed, or the pooled
    /// connection closed before it was used).
    pub async fn send(
        &self,
        mut req: http::Request<UpstreamBody>,
    ) -> Result<http::Response<PooledBody>, SendFailure> {
        let addr = self.inner.addr;
        if req.uri().scheme().is_some() || req.uri().authority().is_some() {
            let path = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
            *req.uri_mut() = http::Uri::from(path);
        }
        if !req.headers().contains_key(http::header::HOST) {
            req.headers_mut()
                .insert(http::header::HOST, self.inner.host.clone());
        }
        loop {
            let (mut sender, fresh) = match self.inner.checkout().await {
                Some(sender) => (sender, false),
                None => match self.connect().await {
                    Ok(sender) => (sender, true),
                    Err(error) => {
                        return Err(SendFailure {
                            error,
                            request: Some(req),
                            reused: false,
                        });
                    }
                },
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let upgraded = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                    let (parts, body) = resp.into_parts();
                    let lease = Lease {
                        // An upgraded connection is the tunnel now: never reused.
                        sender: (!upgraded).then_some(sender),
                        pool: Arc::downgrade(&self.inner),
                        ended: body.is_end_stream(),
                    };
                    let body = PooledBody { inner: body, lease };
                    return Ok(http::Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    // Not written: the idle connection was closed under us.
                    // Another (or a new) connection gets it, as hyper-util's
                    // pool retries such requests.
                    Some(back) if !fresh => req = back,
                    back => {
                        return Err(SendFailure {
                            error: PoolError::Request {
                                addr,
                                source: e.into_error(),
                            },
                            request: back,
                            reused: !fresh,
                        });
                    }
                },
            }
        }
    }

    /// The most recently used idle plain socket that is still open, for a
    /// caller that speaks HTTP/1.1 on it and gives it back with
    /// [`Pool::put_raw`] once a response has ended cleanly.
    pub fn take_raw(&self) -> Option<TcpStream> {
        let mut idle = self.inner.idle_raw[raw_slot()].lock().expect("pool lock");
        while let Some((stream, since)) = idle.pop() {
            if since.elapsed() < self.inner.idle_timeout && is_open(&stream) {
                return Some(stream);
            }
        }
        None
    }

    /// Closes the idle connections this thread could reuse: one of them
    /// failed as if the replica had closed it, so the others likely are
    /// closed too, and the next request should connect afresh.
    pub fn clear_idle(&self) {
        self.inner.idle.lock().expect("pool lock").clear();
        self.inner.idle_raw[raw_slot()]
            .lock()
            .expect("pool lock")
            .clear();
    }

    /// Gives back a plain socket whose last response ended cleanly.
    pub fn put_raw(&self, stream: TcpStream) {
        let mut idle = self.inner.idle_raw[raw_slot()].lock().expect("pool lock");
        idle.push((stream, Instant::now()));
    }

    /// A new plain socket to the replica.
    pub async fn connect_raw(&self) -> Result<TcpStream, PoolError> {
        let addr = self.inner.addr;
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(PoolError::Connect { addr, source }),
            Err(_) => return Err(PoolError::ConnectTimeout { addr }),
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn connect(&self) -> Result<SendRequest<UpstreamBody>, PoolError> {
        let addr = self.inner.addr;
        let stream = self.connect_raw().await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| PoolError::Request { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, "upstream connection: {e}");
            }
        });
        Ok(sender)
    }
}

impl Inner {
    /// The most recently used idle connection that is still open.
    async fn checkout(&self) -> Option<SendRequest<UpstreamBody>> {
        loop {
            let Idle { mut sender, since } = self.idle.lock().expect("pool lock").pop()?;
            if since.elapsed() >= self.idle_timeout {
                continue;
            }
            // Usually ready at once; right after its last response ended the
            // connection may still be finishing it.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    fn checkin(&self, sender: SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("pool lock");
        idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    fn evict_expired(&self) {
        let mut idle = self.idle.lock().expect("pool lock");
        let timeout = self.idle_timeout;
        idle.retain(|i| i.since.elapsed() < timeout && !i.sender.is_closed());
        drop(idle);
        for slot in &self.idle_raw {
            let mut raw = slot.lock().expect("pool lock");
            raw.retain(|(stream, since)| since.elapsed() < timeout && is_open(stream));
        }
    }
}

/// Whether an idle socket is still open: the peer neither closed it nor sent
/// anything unasked. Costs no system call unless the reactor saw the socket
/// become readable since the last read drained it.
fn is_open(stream: &TcpStream) -> bool {
    matches!(stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let (true, Some(sender), Some(pool)) =
            (self.ended, self.sender.take(), self.pool.upgrade())
        {
            pool.checkin(sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.lease.ended = true,
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.lease.ended = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
