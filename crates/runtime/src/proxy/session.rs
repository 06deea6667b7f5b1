//! The requests the fast path does not serve itself: those of HTTP/1.1
//! sessions it handed over to hyper, and of HTTP/2 streams ([`super::h2`]).
//! Each request becomes an attempt for the forwarding core (host checks,
//! hop-by-hop headers, `X-Forwarded-*`, a body buffered or streamed through
//! [`upload`](super::upload)), and its response is relayed, counted on its
//! replica until its last byte (or as a WebSocket tunnel).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fast::upstream::{BufferedRequest, ReplicaBody};
use super::forward::{self, AttemptError, Sent};
use super::front::{ActiveGuard, Activity};
use super::headers::REQUEST_ID;
use super::{ClientInfo, Proxy, ProxyBody, ProxyError, error_chain, headers, upload, websocket};
use crate::ops::{Trace, TracedBody, request_id};
use crate::proxy::affinity;
use crate::proxy::balance::Pick;
use crate::proxy::pool::{BoxError, PoolError, PooledBody, UpstreamBody};
use crate::supervisor::replica::InFlight;

// The names looked up in every request and response, as names: a `&str`
// would be parsed (and checked) on every use.
const IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static(forward::IDEMPOTENCY_KEY);
const HELD: http::HeaderName = http::HeaderName::from_static(affinity::HELD_HEADER);

impl Proxy {
    /// The hyper service for the requests of one client connection.
    pub(super) fn service(
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
        let client = Arc::new(ClientInfo::new(peer, proto, activity));
        hyper::service::service_fn(move |req| {
            let (proxy, client) = (Arc::clone(&proxy), Arc::clone(&client));
            let active = client.activity.as_ref().map(Activity::begin);
            async move {
                // Boxed: hyper moves the future of each request a few times
                // (into its stream task, into the task's cell); a pointer is
                // cheaper to move than the whole forwarding state.
                let resp =
                    Box::pin(proxy.handle(req.map(upload::ClientBody::Hyper), &client)).await;
                Ok::<_, Infallible>(resp.map(|body| Tracked {
                    inner: body,
                    _active: active,
                }))
            }
        })
    }

    // Not an `async fn`, here and in `forward`: an `async fn` keeps each
    // argument twice in its future (as captured, then as a local), and
    // these futures are allocated and written for every request.
    #[allow(clippy::manual_async_fn)]
    pub(super) fn handle<'a>(
        &'a self,
        req: Request<upload::ClientBody>,
        client: &'a ClientInfo,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'a {
        async move {
            let given = req.headers().get(REQUEST_ID);
            let id = request_id::keep_or_generate(given.map(http::HeaderValue::as_bytes));
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let mut trace = self.ops.begin(req.method().as_str(), path, id);
            let mut resp = match self.forward(req, client, &mut trace).await {
                Ok(resp) => resp,
                Err(e) => {
                    tracing::warn!(peer = %client.peer, "{e}");
                    trace.failed(&e);
                    e.response()
                }
            };
            trace.status = resp.status().as_u16();
            // Never indexed by HTTP/2's header compression: an id is used once,
            // and indexing it costs a table insertion and eviction per response.
            let mut id = trace.id.clone();
            id.set_sensitive(true);
            resp.headers_mut().insert(REQUEST_ID, id);
            resp.map(|body| TracedBody::new(body, trace, Arc::clone(&self.ops)).boxed())
        }
    }

    #[allow(clippy::manual_async_fn)]
    fn forward<'a>(
        &'a self,
        mut req: Request<upload::ClientBody>,
        client: &'a ClientInfo,
        trace: &'a mut Trace,
    ) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send + 'a {
        async move {
            if req.method() == http::Method::CONNECT {
                return Err(ProxyError::BadRequest("CONNECT is not proxied"));
            }
            // The settings of this request's moment: a reload affects the next.
            let config = self.config.load_full();
            let host = request_host(&req)?;
            let host_str = host.as_ref().and_then(|h| h.to_str().ok());
            let service = self
                .router
                .route(host_str)
                .ok_or_else(|| ProxyError::UnknownHost {
                    host: host_str.unwrap_or_default().to_string(),
                })?;
            let upgrade = headers::upgrade_of(req.headers());
            if let (Some(_), Some(activity)) = (&upgrade, &client.activity) {
                activity.upgrading();
            }
            let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
            let (parts, body) = req.into_parts();
            // The client's fields stay as they came: the attempt writes the
            // replica's from them (as bytes, or into a copy for hyper), and
            // the idempotency key and the affinity key are read from them,
            // as on the fast path.
            let rewrite = headers::Rewrite {
                id: trace.id.clone(),
                host,
                client_ip: &client.ip,
                proto: client.proto,
                upgrade,
            };
            let replay = forward::Replay::of(
                parts.method.as_str().as_bytes(),
                parts.headers.contains_key(IDEMPOTENCY_KEY),
                &config,
            );
            let failure = upload::ClientFailure::default();
            let held = upload::Held::default();
            // A body small enough to buffer makes the request safe to resend.
            let limit = config.retry_body_limit as u64;
            let body = if body.is_end_stream() {
                // No upload to follow: the common case costs no allocation.
                Body::Buffered(Bytes::new())
            } else {
                let upload = upload::Upload::new(
                    body,
                    config.body_read_timeout,
                    Arc::clone(&failure),
                    held.clone(),
                );
                if upload.size_hint().upper().is_some_and(|n| n <= limit) {
                    match Box::pin(Limited::new(upload, config.retry_body_limit).collect()).await {
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
                }
            };
            // Only a service with affinity looks for a session key.
            let key = service.affinity().and_then(|a| {
                let headers = parts.headers.iter();
                a.key_of(
                    parts.uri.path(),
                    headers.map(|(n, v)| (n.as_str(), v.as_bytes())),
                )
            });
            let mut attempt = HyperAttempt {
                parts,
                rewrite,
                body,
                upgrade: client_upgrade.is_some(),
                pending: None,
                held,
                upload_limit: config.max_streamed_uploads,
                queue_deadline: Instant::now() + config.queue_timeout,
            };
            // Its timer armed at a deadline ahead, not now: one that expires at
            // once is armed twice, and a timer earlier than the thread's next
            // one wakes the thread's event loop with a system call.
            let mut response_deadline =
                forward::LazyDeadline::new(Instant::now() + config.response_timeout);
            let forwarded = forward::forward(
                &config,
                &service,
                key,
                replay,
                &mut response_deadline,
                &mut attempt,
                trace,
                &self.ops,
            )
            .await;
            match forwarded {
                Ok((pick, resp)) => {
                    let held = pick.held;
                    let mut resp = respond(resp, pick.guard, &pick.replica, client_upgrade);
                    if !held.is_zero() {
                        resp.headers_mut()
                            .insert(HELD, http::HeaderValue::from(held.as_millis() as u64));
                    }
                    Ok(resp)
                }
                // The client's body failed: the client hears of it, not of the
                // replica that was waiting for the rest.
                Err(e) => Err(failure.get().cloned().unwrap_or(e)),
            }
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
struct HyperAttempt<'a> {
    /// The client's request head, as it came.
    parts: http::request::Parts,
    /// How its fields change for the replica.
    rewrite: headers::Rewrite<'a>,
    body: Body,
    /// The client asks for an upgrade: only a hyper connection carries it.
    upgrade: bool,
    /// A request a failed attempt handed back unwritten (boxed: rare, and
    /// the attempt is part of every request's future).
    pending: Option<Box<Request<UpstreamBody>>>,
    /// The upload slot its streamed body holds, moved to each replica it is
    /// sent to.
    held: upload::Held,
    upload_limit: usize,
    /// How long a streamed body waits for an upload slot on a replica.
    queue_deadline: Instant,
}

impl HyperAttempt<'_> {
    /// The request for the next attempt, with the replica's upload slot
    /// when it streams a body, or why there cannot be one.
    async fn request(
        &mut self,
        pick: &Pick,
    ) -> Result<(Request<UpstreamBody>, Option<upload::Slot>), AttemptError> {
        let streamed = matches!(self.body, Body::Streamed(_));
        if matches!(self.body, Body::Streamed(None)) && self.pending.is_none() {
            return Err(AttemptError {
                sent: Sent::Request,
                message: "its streamed body was sent once already".into(),
                reused: false,
                body_gone: true,
            });
        }
        // A streamed body holds a slot on the replica it goes to, this one
        // (a request handed back unwritten gives up the slot it held).
        let slot = if streamed {
            let held = self
                .held
                .move_to(&pick.replica, self.upload_limit, self.queue_deadline);
            let Some(slot) = held.await else {
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
            Some(slot)
        } else {
            None
        };
        if let Some(req) = self.pending.take() {
            return Ok((*req, slot));
        }
        let body: UpstreamBody = match &mut self.body {
            // An empty body boxes a zero-sized value: no allocation.
            Body::Buffered(b) if b.is_empty() => {
                Empty::new().map_err(|never| match never {}).boxed()
            }
            Body::Buffered(b) => Full::new(b.clone()).map_err(|never| match never {}).boxed(),
            Body::Streamed(upload) => upload
                .take()
                .expect("a body sent once already was refused above")
                .boxed(),
        };
        let mut headers = self.parts.headers.clone();
        self.rewrite.apply(&mut headers);
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
        Ok((req, slot))
    }
}

impl HyperAttempt<'_> {
    /// Sends the request on a hyper client connection (a streamed body, an
    /// upgrade); `Err` when there is no request to send.
    async fn send_on_hyper(
        &mut self,
        pick: &Pick,
    ) -> Result<Result<Response<PooledBody>, crate::proxy::pool::SendFailure>, AttemptError> {
        let (req, slot) = self.request(pick).await?;
        let sent = pick.pool.conns().send(req).await;
        // The replica answered (or the attempt failed): the upload slot is
        // free once the body has ended too.
        drop(slot);
        Ok(sent)
    }
}

impl forward::Attempt for HyperAttempt<'_> {
    type Output = Response<FromReplica>;

    async fn send(&mut self, pick: &Pick) -> Result<Response<FromReplica>, AttemptError> {
        // A buffered body, no upgrade: bytes on a plain socket, as the fast
        // path sends (no hyper client connection, its task and channels).
        if let (Body::Buffered(body), false) = (&self.body, self.upgrade) {
            let mut request = BufferedRequest::new(&self.parts, &self.rewrite, body);
            let resp = forward::Attempt::send(&mut request, pick).await?;
            return Ok(resp.map(FromReplica::Socket));
        }
        // Boxed: the hyper client's futures would otherwise size the future
        // of every request.
        let failure = match Box::pin(self.send_on_hyper(pick)).await? {
            Ok(resp) => return Ok(resp.map(FromReplica::Hyper)),
            Err(failure) => failure,
        };
        let message = error_chain(&failure.error);
        let gone = matches!(self.body, Body::Streamed(_));
        if let Some(req) = failure.request {
            self.pending = Some(Box::new(req));
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

/// Drives a hyper connection (HTTP/1.1 handed over on TLS) to its end; on
/// shutdown, asks it to finish gracefully (`Connection: close`) and keeps
/// driving it.
pub(super) async fn until_done<I, S>(
    conn: auto::UpgradeableConnection<'_, I, S, hyper_util::rt::TokioExecutor>,
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
    pub(super) struct Tracked<B> {
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

tokio::task_local! {
    /// The proxy's tracker of upgraded connections (WebSocket tunnels),
    /// set around each client connection's task: a stopping proxy gives
    /// them its grace period (a tunnel outlives its HTTP connection).
    pub(super) static TUNNELS: tokio_util::task::TaskTracker;
}

/// Spawns a tunnel, tracked by the proxy serving its connection.
fn spawn_tunnel(tunnel: impl Future<Output = ()> + Send + 'static) {
    match TUNNELS.try_with(Clone::clone) {
        Ok(tunnels) => drop(tunnels.spawn(tunnel)),
        Err(_) => drop(tokio::spawn(tunnel)),
    }
}

/// A response body from a replica: read by a hyper client connection (a
/// streamed request's response, an upgrade's), or from a plain socket.
#[derive(Debug)]
pub(super) enum FromReplica {
    Hyper(PooledBody),
    Socket(ReplicaBody),
}

impl hyper::body::Body for FromReplica {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Socket(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(b) => b.is_end_stream(),
            Self::Socket(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Self::Hyper(b) => b.size_hint(),
            Self::Socket(b) => b.size_hint(),
        }
    }
}

fn respond(
    mut resp: Response<FromReplica>,
    guard: InFlight,
    replica: &crate::supervisor::replica::Replica,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ProxyBody> {
    let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(client)) = (switching, client_upgrade) {
        let upstream = hyper::upgrade::on(&mut resp);
        let upgrade = resp.headers().get(http::header::UPGRADE).cloned();
        let websocket = upgrade
            .as_ref()
            .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let deadline = replica.drain_deadline();
        // Tracked, so that a stopping proxy thread gives it its grace.
        spawn_tunnel(async move {
            let (Ok(client), Ok(upstream)) = tokio::join!(client, upstream) else {
                return;
            };
            // The upgrade was a request; the tunnel is not: the replica's
            // drain does not wait for it (its SIGTERM would come only at the
            // drain timeout, past a session's handoff). The retirement
            // closes it at the end of the drain, before SIGTERM.
            let _tunnel = guard.into_tunnel();
            let (mut a, mut b) = (TokioIo::new(client), TokioIo::new(upstream));
            if websocket {
                return websocket::tunnel(a, b, deadline).await;
            }
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
    // A head read from a plain socket was rewritten without them already
    // (`fast::head::parse_response`).
    if let FromReplica::Hyper(_) = body {
        headers::strip_hop_by_hop(&mut parts.headers, None);
    }
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
