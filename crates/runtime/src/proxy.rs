//! The data plane: HTTP/1.1 and h2c on one port, each request routed to a
//! ready replica of its service, retried on another replica when that is safe,
//! queued while no replica is ready. Shutdown stops accepting, then lets the
//! connections finish (`Connection: close` on HTTP/1.1, GOAWAY on HTTP/2)
//! within a grace period.

pub mod balance;
mod error;
mod fast;
mod forward;
mod front;
mod headers;
pub mod pool;
pub mod route;
mod threads;
pub mod tls;
mod upload;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::Body as _;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use error::{ErrorSource, ProxyError, error_chain};
pub use forward::Sent;

use crate::config::ProxyConfig;
use crate::proxy::balance::Pick;
use crate::proxy::pool::{PoolError, PooledBody, UpstreamBody};
use crate::proxy::route::Router;
use crate::proxy::tls::TlsAcceptor;
use crate::signal::Shutdown;
use crate::supervisor::replica::InFlight;
use forward::AttemptError;
use front::{ActiveGuard, Activity, FrontStream};

/// The body of a response to a client.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The front proxy of the runtime.
#[derive(Debug, Clone)]
pub struct Proxy {
    router: Router,
    config: ProxyConfig,
    tls: Option<TlsAcceptor>,
}

/// The connection builders, configured once: HTTP/1.1 sessions on plain
/// TCP, and HTTP/1.1 or HTTP/2 for TLS and h2c connections.
struct Builders {
    auto: auto::Builder<TokioExecutor>,
    h1: http1::Builder,
}

/// What the proxy knows of a client connection, computed once for all its
/// requests.
#[derive(Debug)]
struct ClientInfo {
    peer: SocketAddr,
    ip: http::HeaderValue,
    proto: &'static str,
    /// Plain HTTP/1.1 connections: what their requests tell the stream.
    activity: Option<Arc<Activity>>,
}

impl Proxy {
    /// A proxy routing with `router`, speaking plain HTTP.
    pub fn new(router: Router, config: ProxyConfig) -> Self {
        Self {
            router,
            config,
            tls: None,
        }
    }

    /// Speaks HTTPS with `acceptor` instead (HTTP/2 or HTTP/1.1 by ALPN).
    pub fn with_tls(mut self, acceptor: TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }

    /// Serves clients from `listener` until `shutdown` resolves, then stops
    /// accepting and gives the open connections `shutdown_grace` to finish
    /// (no time at all for [`Shutdown::Fast`]).
    ///
    /// Client connections are served by `proxy.threads` threads, each with
    /// its own single-threaded runtime (see [`threads`]).
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = Shutdown>) {
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.config.header_read_timeout)
            .max_buf_size(self.config.max_header_bytes.max(8192));
        auto.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.config.max_header_bytes).unwrap_or(u32::MAX));
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(self.config.header_read_timeout)
            .max_buf_size(self.config.max_header_bytes.max(8192));
        let threads = match self.config.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let grace = self.config.shutdown_grace;
        let running = threads::start(
            Arc::new(self),
            Arc::new(Builders { auto, h1 }),
            listener,
            threads,
        );
        let grace = match shutdown.await {
            Shutdown::Fast => std::time::Duration::ZERO,
            Shutdown::Graceful => grace,
        };
        running.stop(grace).await;
    }

    /// Serves one client connection: plain TCP (h2c or HTTP/1.1), or TLS.
    async fn serve_connection(
        self: &Arc<Self>,
        builders: &Builders,
        stream: TcpStream,
        stop: &CancellationToken,
        peer: SocketAddr,
    ) {
        let Some(tls) = self.tls.clone() else {
            return self.serve_plain(builders, stream, stop, peer).await;
        };
        // Boxed: the TLS and HTTP/2 state would otherwise size the task of
        // every plain connection too, idle ones included.
        Box::pin(async {
            // A client that never finishes its handshake holds a slot no
            // longer than one that never finishes its request head.
            let timeout = self.config.header_read_timeout;
            match tokio::time::timeout(timeout, tls.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let service = Proxy::service(Arc::clone(self), peer, "https", None);
                    let conn = builders
                        .auto
                        .serve_connection_with_upgrades(TokioIo::new(stream), service);
                    until_done(conn, stop, peer).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out after {timeout:?}"),
            }
        })
        .await;
    }

    /// The hyper service for the requests of one client connection.
    fn service(
        proxy: Arc<Self>,
        peer: SocketAddr,
        proto: &'static str,
        activity: Option<Arc<Activity>>,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<Tracked<ProxyBody>>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<Tracked<ProxyBody>>, Infallible>> + Send,
    > + Clone
    + Send
    + 'static {
        let client = Arc::new(ClientInfo {
            peer,
            ip: headers::client_ip(peer.ip()),
            proto,
            activity,
        });
        hyper::service::service_fn(move |req| {
            let (proxy, client) = (Arc::clone(&proxy), Arc::clone(&client));
            let active = client.activity.as_ref().map(Activity::begin);
            async move {
                let resp = proxy.handle(req, &client).await;
                Ok::<_, Infallible>(resp.map(|body| Tracked {
                    inner: body,
                    _active: active,
                }))
            }
        })
    }

    /// Serves one plain-TCP client connection: h2c for its whole life, or
    /// HTTP/1.1 on the fast path (see [`fast`]) until a request needs hyper,
    /// then in hyper sessions that free their buffers while the connection
    /// is idle (see [`front`]).
    async fn serve_plain(
        self: &Arc<Self>,
        builders: &Builders,
        mut stream: TcpStream,
        stop: &CancellationToken,
        peer: SocketAddr,
    ) {
        let timeout = self.config.header_read_timeout;
        let first = tokio::select! {
            first = tokio::time::timeout(timeout, front::read_preface(&mut stream)) => first,
            () = stop.cancelled() => return,
        };
        let (mut ahead, h2) = match first {
            Ok(Ok(Some(first))) => first,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => return tracing::debug!(%peer, "client connection: {e}"),
            Err(_) => return tracing::debug!(%peer, "no request within {timeout:?}"),
        };
        if !h2 {
            let client = ClientInfo {
                peer,
                ip: headers::client_ip(peer.ip()),
                proto: "http",
                activity: None,
            };
            match fast::serve(self, &client, &mut stream, ahead, stop).await {
                fast::Exit::Closed => return,
                fast::Exit::Handoff(rest) => ahead = rest,
            }
        }
        let activity = Arc::new(Activity::default());
        let service = Proxy::service(Arc::clone(self), peer, "http", Some(Arc::clone(&activity)));
        let mut stream = FrontStream::new(stream, ahead, Arc::clone(&activity));
        let mut linger = Box::pin(tokio::time::sleep(front::IDLE_LINGER));
        if h2 {
            let conn = builders
                .auto
                .serve_connection_with_upgrades(TokioIo::new(stream), service);
            return Box::pin(until_done(conn, stop, peer)).await;
        }
        loop {
            // Boxed, so that an idle connection's task holds a pointer, not a
            // whole hyper connection.
            let mut conn = Box::new(
                builders
                    .h1
                    .serve_connection(TokioIo::new(stream), service.clone())
                    .with_upgrades(),
            );
            let mut draining = false;
            let mut lingering = false;
            let cancelled = stop.cancelled();
            tokio::pin!(cancelled);
            let done = std::future::poll_fn(|cx| {
                if !draining && cancelled.as_mut().poll(cx).is_ready() {
                    Pin::new(&mut *conn).graceful_shutdown();
                    draining = true;
                }
                if let Poll::Ready(result) = Pin::new(&mut *conn).poll(cx) {
                    return Poll::Ready(Some(result));
                }
                if draining || !activity.is_idle() {
                    lingering = false;
                    return Poll::Pending;
                }
                if !lingering {
                    lingering = true;
                    linger.as_mut().reset(Instant::now() + front::IDLE_LINGER);
                }
                match linger.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            if let Some(result) = done {
                if let Err(e) = result {
                    tracing::debug!(%peer, "client connection: {e}");
                }
                return;
            }
            // Idle between requests: free the session, keep the socket.
            let Some(parts) = conn.into_parts() else {
                return;
            };
            stream = parts.io.into_inner();
            // An empty `read_buf` may still hold hyper's whole read buffer.
            let mut ahead = parts.read_buf;
            if ahead.is_empty() {
                ahead = Bytes::new();
                // An idle keep-alive connection is closed after the header
                // read timeout, as hyper closes one.
                tokio::select! {
                    ready = tokio::time::timeout(timeout, stream.readable()) => {
                        if !matches!(ready, Ok(Ok(()))) {
                            return;
                        }
                    }
                    () = stop.cancelled() => return,
                }
            }
            stream.restart(ahead);
        }
    }

    async fn handle(&self, req: Request<Incoming>, client: &ClientInfo) -> Response<ProxyBody> {
        match self.forward(req, client).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::warn!(peer = %client.peer, "{e}");
                e.response()
            }
        }
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        client: &ClientInfo,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if req.method() == http::Method::CONNECT {
            return Err(ProxyError::BadRequest("CONNECT is not proxied"));
        }
        let host = request_host(&req)?;
        let host_str = host.as_ref().and_then(|h| h.to_str().ok());
        let service = self
            .router
            .route(host_str)
            .ok_or_else(|| ProxyError::UnknownHost {
                host: host_str.unwrap_or_default().to_string(),
            })?
            .clone();
        let upgrade = headers::upgrade_of(req.headers());
        if let (Some(_), Some(activity)) = (&upgrade, &client.activity) {
            activity.upgrading();
        }
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, upgrade.as_ref());
        headers::set_forwarded(&mut parts.headers, &client.ip, client.proto, host.as_ref());
        if let Some(host) = &host {
            parts.headers.insert(http::header::HOST, host.clone());
        }
        // The framing the replica gets is hyper's, written from the body
        // this proxy read: never the client's header.
        parts.headers.remove(http::header::CONTENT_LENGTH);
        let replay = forward::Replay::of(
            parts.method.as_str().as_bytes(),
            parts.headers.contains_key(forward::IDEMPOTENCY_KEY),
            &self.config,
        );
        let failure = upload::ClientFailure::default();
        let upload = upload::Upload::new(body, self.config.body_read_timeout, Arc::clone(&failure));
        // A body small enough to buffer makes the request safe to resend.
        let limit = self.config.retry_body_limit as u64;
        let body = if upload.is_end_stream() {
            Body::Buffered(Bytes::new())
        } else if upload.size_hint().upper().is_some_and(|n| n <= limit) {
            match Limited::new(upload, self.config.retry_body_limit)
                .collect()
                .await
            {
                Ok(collected) => Body::Buffered(collected.to_bytes()),
                Err(e) => {
                    return Err(failure
                        .get()
                        .cloned()
                        .unwrap_or_else(|| ProxyError::ClientBody(e.to_string())));
                }
            }
        } else {
            Body::Streamed(Some(upload))
        };
        let mut attempt = HyperAttempt {
            parts,
            body,
            pending: None,
            upload_limit: self.config.max_streamed_uploads,
            queue_deadline: Instant::now() + self.config.queue_timeout,
        };
        let mut response_deadline = forward::LazyDeadline::new(Instant::now());
        let forwarded = forward::forward(
            &self.config,
            &service,
            replay,
            &mut response_deadline,
            &mut attempt,
        )
        .await;
        match forwarded {
            Ok((pick, resp)) => Ok(respond(resp, pick.guard, &pick.replica, client_upgrade)),
            // The client's body failed: the client hears of it, not of the
            // replica that was waiting for the rest.
            Err(e) => Err(failure.get().cloned().unwrap_or(e)),
        }
    }
}

/// The host a request is for: its absolute-form authority (HTTP/2's
/// `:authority`), else its `Host`. An HTTP/1.1 request without `Host`, or
/// with two, is refused (RFC 9112 §3.2).
fn request_host<B>(req: &Request<B>) -> Result<Option<http::HeaderValue>, ProxyError> {
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("two Host headers"));
    }
    if req.version() == Version::HTTP_11 && header.is_none() {
        return Err(ProxyError::BadRequest("an HTTP/1.1 request without Host"));
    }
    let authority = req
        .uri()
        .authority()
        .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok());
    Ok(authority.or_else(|| header.cloned()))
}

/// A request body the hyper path sends.
enum Body {
    /// Read whole: it can be sent any number of times.
    Buffered(Bytes),
    /// Streamed from the client: sent once (`None` once taken).
    Streamed(Option<upload::Upload>),
}

/// The hyper path's attempt: a request built from the client's parts and
/// body, sent through the replica's pool of hyper connections.
struct HyperAttempt {
    parts: http::request::Parts,
    body: Body,
    /// A request a failed attempt handed back unwritten.
    pending: Option<Request<UpstreamBody>>,
    upload_limit: usize,
    /// How long a streamed body waits for an upload slot on a replica.
    queue_deadline: Instant,
}

impl HyperAttempt {
    /// The request for the next attempt, or why there cannot be one.
    async fn request(&mut self, pick: &Pick) -> Result<Request<UpstreamBody>, AttemptError> {
        if let Some(req) = self.pending.take() {
            return Ok(req);
        }
        let body: UpstreamBody = match &mut self.body {
            // An empty body boxes a zero-sized value: no allocation.
            Body::Buffered(b) if b.is_empty() => {
                Empty::new().map_err(|never| match never {}).boxed()
            }
            Body::Buffered(b) => Full::new(b.clone()).map_err(|never| match never {}).boxed(),
            Body::Streamed(upload) => {
                let slots = pick.replica.uploads(self.upload_limit);
                let Ok(Ok(permit)) =
                    tokio::time::timeout_at(self.queue_deadline, slots.acquire_owned()).await
                else {
                    return Err(AttemptError {
                        sent: Sent::Nothing,
                        message: format!(
                            "{} request bodies are already streaming to it",
                            self.upload_limit
                        ),
                        reused: false,
                        body_gone: false,
                    });
                };
                let Some(upload) = upload.take() else {
                    return Err(AttemptError {
                        sent: Sent::Request,
                        message: "its streamed body was sent once already".into(),
                        reused: false,
                        body_gone: true,
                    });
                };
                upload.with_permit(permit).boxed()
            }
        };
        let mut headers = self.parts.headers.clone();
        // A body of unknown length goes chunked, whatever the method (hyper
        // would send a GET's as empty).
        if body.size_hint().exact().is_none() {
            headers.insert(
                http::header::TRANSFER_ENCODING,
                http::HeaderValue::from_static("chunked"),
            );
        }
        let mut req = Request::new(body);
        *req.method_mut() = self.parts.method.clone();
        *req.uri_mut() = self.parts.uri.clone();
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;
        Ok(req)
    }
}

impl forward::Attempt for HyperAttempt {
    type Output = Response<PooledBody>;

    async fn send(&mut self, pick: &Pick) -> Result<Response<PooledBody>, AttemptError> {
        let req = self.request(pick).await?;
        let failure = match pick.pool.conns().send(req).await {
            Ok(resp) => return Ok(resp),
            Err(failure) => failure,
        };
        let message = error_chain(&failure.error);
        let gone = matches!(self.body, Body::Streamed(_));
        if let Some(req) = failure.request {
            self.pending = Some(req);
            return Err(AttemptError {
                sent: Sent::Nothing,
                message,
                reused: failure.reused,
                body_gone: false,
            });
        }
        let sent = match &failure.error {
            PoolError::Request { source, .. } if source.is_parse() => Sent::Response,
            _ => Sent::Request,
        };
        Err(AttemptError {
            sent,
            message,
            reused: failure.reused,
            body_gone: gone,
        })
    }
}

/// Drives an HTTP/1.1-or-HTTP/2 connection to its end; on shutdown, asks it
/// to finish gracefully (`Connection: close`, GOAWAY) and keeps driving it.
async fn until_done<I, S>(
    conn: auto::UpgradeableConnection<'_, I, S, TokioExecutor>,
    stop: &CancellationToken,
    peer: SocketAddr,
) where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<Tracked<ProxyBody>>,
            Error = Infallible,
        >,
    S::Future: Send + 'static,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, "client connection: {e}");
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its request as active on the client
    /// connection until it is dropped.
    struct Tracked<B> {
        #[pin]
        inner: B,
        _active: Option<ActiveGuard>,
    }
}

impl<B: hyper::body::Body> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

fn respond(
    mut resp: Response<PooledBody>,
    guard: InFlight,
    replica: &crate::supervisor::replica::Replica,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ProxyBody> {
    let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(client)) = (switching, client_upgrade) {
        let upstream = hyper::upgrade::on(&mut resp);
        let upgrade = resp.headers().get(http::header::UPGRADE).cloned();
        let deadline = replica.drain_deadline();
        tokio::spawn(async move {
            let _guard = guard;
            let (Ok(client), Ok(upstream)) = tokio::join!(client, upstream) else {
                return;
            };
            let (mut a, mut b) = (TokioIo::new(client), TokioIo::new(upstream));
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                () = deadline.cancelled() => tracing::info!("upgraded connection closed at the drain deadline"),
            }
        });
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, upgrade.as_ref());
        return Response::from_parts(parts, body.boxed());
    }
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, None);
    Response::from_parts(parts, Guarded::new(body, guard).boxed())
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted on the replica until
    /// the last byte is sent (or the client goes away).
    struct Guarded<B> {
        #[pin]
        inner: B,
        guard: Option<InFlight>,
    }
}

impl<B> Guarded<B> {
    fn new(inner: B, guard: InFlight) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B: hyper::body::Body> hyper::body::Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let std::task::Poll::Ready(None | Some(Err(_))) = &polled {
            this.guard.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
