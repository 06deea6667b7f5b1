//! hyper HTTP/1.1 client connections to one replica, for the hyper path
//! (`hyper::client::conn::http1`) leased directly: a connection is leased
//! for one request and returns to the pool when its response body ends, so
//! a request costs a lock and a vector pop, not hyper-util's pool machinery.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::{PoolError, SendFailure, UpstreamBody};

/// Idle hyper connections to one replica, the most recently used last.
#[derive(Debug, Clone)]
pub struct ConnPool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(super) struct Inner {
    addr: SocketAddr,
    host: http::HeaderValue,
    idle_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
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

impl ConnPool {
    pub(super) fn new(addr: SocketAddr, idle_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                addr,
                host: http::HeaderValue::from_str(&addr.to_string())
                    .expect("an address is a header value"),
                idle_timeout,
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    pub(super) fn downgrade(&self) -> Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    /// Closes the idle connections.
    pub(super) fn clear_idle(&self) {
        self.inner.idle.lock().expect("pool lock").clear();
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

    async fn connect(&self) -> Result<SendRequest<UpstreamBody>, PoolError> {
        let addr = self.inner.addr;
        let stream = super::connect(addr).await?;
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

    pub(super) fn evict_expired(&self) {
        let mut idle = self.idle.lock().expect("pool lock");
        let timeout = self.idle_timeout;
        idle.retain(|i| i.since.elapsed() < timeout && !i.sender.is_closed());
    }
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
