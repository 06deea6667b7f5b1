//! The data plane: HTTP/1.1 and h2c on one port, each request routed to a
//! ready replica of its service, retried on another replica when that is safe,
//! queued while no replica is ready. Shutdown stops accepting, then lets the
//! connections finish (`Connection: close` on HTTP/1.1, GOAWAY on HTTP/2)
//! within a grace period.

pub mod affinity;
pub mod balance;
mod buffer;
mod error;
mod fast;
mod forward;
mod front;
mod h2;
mod headers;
mod park;
pub mod pool;
pub mod route;
mod session;
mod threads;
pub mod tls;
mod upload;
mod websocket;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use http_body_util::combinators::BoxBody;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use error::{ErrorSource, ProxyError, error_chain};
pub use fast::PARK_AFTER;
pub use forward::Sent;
pub use front::IDLE_LINGER;

use crate::config::ProxyConfig;
use crate::ops::Ops;
use crate::ops::metrics::Protocol;
use crate::proxy::route::Router;
use crate::proxy::tls::TlsAcceptor;
use crate::signal::Shutdown;
use front::{Activity, ClientSocket, FrontStream};
use park::{Parked, ParkedStream};
use session::until_done;

/// How long a client connection that is idle (or accepted but not read
/// yet) when the proxy stops has to send a request; it is then served
/// (with `Connection: close`) rather than closed under a request its client
/// is sending: a stop (a shutdown, an upgrade) does not race keep-alive
/// clients. Quiet connections are closed after it.
pub const STOP_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// The proxy's settings, shared with the reload that replaces them: each
/// request reads the snapshot of its moment without a lock. Settings fixed
/// at start (the listener, threads, TLS, connection limits, hyper's header
/// limits) are read once when the proxy starts.
pub type LiveConfig = Arc<arc_swap::ArcSwap<ProxyConfig>>;

/// The body of a response to a client.
pub type ProxyBody = BoxBody<Bytes, pool::BoxError>;

/// The front proxy of the runtime.
#[derive(Debug, Clone)]
pub struct Proxy {
    router: Router,
    /// Read per request; a reload swaps in new values of the settings that
    /// may change while running ([`LiveConfig`]).
    config: LiveConfig,
    tls: Option<TlsAcceptor>,
    /// Request ids, the access log: see [`crate::ops`].
    ops: Arc<Ops>,
}

/// The connection builders, configured once, for the HTTP/1.1 sessions the
/// fast path hands over: `h1` on plain TCP, `auto` on TLS (which would
/// also serve a client that sends HTTP/2's preface without having chosen
/// `h2` by ALPN; HTTP/2 is otherwise `h2`'s, not hyper's).
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

impl ClientInfo {
    /// A client at `peer`, speaking `proto` ("http" or "https").
    fn new(peer: SocketAddr, proto: &'static str, activity: Option<Arc<Activity>>) -> Self {
        Self {
            peer,
            ip: headers::client_ip(peer.ip()),
            proto,
            activity,
        }
    }
}

impl Proxy {
    /// A proxy routing with `router`, speaking plain HTTP.
    pub fn new(router: Router, config: ProxyConfig) -> Self {
        Self::with_live_config(router, Arc::new(arc_swap::ArcSwap::from_pointee(config)))
    }

    /// A proxy reading its settings from `config`, which may be replaced
    /// while it runs.
    pub fn with_live_config(router: Router, config: LiveConfig) -> Self {
        Self {
            router,
            config,
            tls: None,
            ops: Arc::default(),
        }
    }

    /// Traces its requests with `ops` (access log, metrics, holding).
    pub fn with_ops(mut self, ops: Arc<Ops>) -> Self {
        self.ops = ops;
        self
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
        let config = self.config.load_full();
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_buf_size(config.max_header_bytes.max(8192));
        auto.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_buf_size(config.max_header_bytes.max(8192));
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let grace = config.shutdown_grace;
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

    /// Serves one client connection: plain TCP (h2c or HTTP/1.1), or TLS;
    /// returns it when it is to be parked (see [`park`]).
    async fn serve_connection(
        self: &Arc<Self>,
        builders: &Builders,
        stream: ClientSocket,
        stop: &CancellationToken,
        peer: SocketAddr,
    ) -> Option<Parked> {
        let Some(tls) = self.tls.clone() else {
            return self.serve_plain(builders, stream, stop, peer).await;
        };
        self.ops.metrics().connection(Protocol::Https);
        // The handshake waits for the client at least once anyway.
        let stream = match stream.into_registered() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(%peer, "client connection: {e}");
                return None;
            }
        };
        // Boxed: the TLS and HTTP/2 state would otherwise size the task of
        // every plain connection too, idle ones included.
        Box::pin(async {
            // A client that never finishes its handshake holds a slot no
            // longer than one that never finishes its request head.
            let timeout = self.config.load().header_read_timeout;
            match tokio::time::timeout(timeout, tls.accept(stream)).await {
                Ok(Ok(stream)) => self.serve_tls(builders, stream, stop, peer).await,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out after {timeout:?}");
                    None
                }
            }
        })
        .await
    }

    /// Serves again a connection that was parked: nothing was read from it
    /// since, the client's next request follows.
    async fn resume(
        self: &Arc<Self>,
        builders: &Builders,
        stream: ParkedStream,
        stop: &CancellationToken,
    ) -> Option<Parked> {
        // Asked of the socket rather than kept by every parked connection.
        let peer = match stream.socket().peer_addr() {
            Ok(peer) => peer,
            Err(e) => {
                tracing::debug!("resumed connection: {e}");
                return None;
            }
        };
        match stream {
            ParkedStream::Plain(stream) => {
                let stream = ClientSocket::registered(stream);
                self.serve_http1(builders, stream, BytesMut::new(), stop, peer)
                    .await
            }
            // Boxed: a TLS session would size every resumed task.
            ParkedStream::Tls(stream) => {
                Box::pin(self.serve_tls(builders, *stream, stop, peer)).await
            }
        }
    }

    /// Serves a TLS connection after its handshake (or parked after a
    /// request): HTTP/2 (by ALPN) with hyper, HTTP/1.1 on the fast path (see
    /// [`fast`]) until it is to be parked, or a request needs hyper.
    async fn serve_tls(
        self: &Arc<Self>,
        builders: &Builders,
        mut stream: tls::TlsStream,
        stop: &CancellationToken,
        peer: SocketAddr,
    ) -> Option<Parked> {
        let mut rest = Bytes::new();
        if stream.alpn_protocol() != Some(b"h2") {
            let client = ClientInfo::new(peer, "https", None);
            match fast::serve(self, &client, &mut stream, BytesMut::new(), stop).await {
                fast::Exit::Closed => return None,
                fast::Exit::Park(deadline) => {
                    stream.release_buffers();
                    let stream = ParkedStream::Tls(Box::new(stream));
                    return Some(Parked { stream, deadline });
                }
                fast::Exit::Handoff(ahead) => rest = ahead,
            }
        }
        // Boxed: the task of a connection on the fast path holds no hyper
        // state.
        Box::pin(self.serve_tls_hyper(builders, stream, rest, stop, peer)).await;
        None
    }

    /// Serves the rest of a TLS connection with hyper: HTTP/2, or HTTP/1.1
    /// after `rest`, the bytes the fast path read.
    async fn serve_tls_hyper(
        self: &Arc<Self>,
        builders: &Builders,
        stream: tls::TlsStream,
        rest: Bytes,
        stop: &CancellationToken,
        peer: SocketAddr,
    ) {
        if rest.is_empty() {
            // HTTP/2.
            let client = Arc::new(ClientInfo::new(peer, "https", None));
            return h2::serve(Arc::clone(self), stream, client, stop).await;
        }
        let service = Proxy::service(Arc::clone(self), peer, "https", None);
        // The bytes of the request the fast path left to hyper first.
        let send_timeout = self.config.load().send_timeout;
        let stream = FrontStream::new(stream, rest, Arc::default()).with_send_timeout(send_timeout);
        let conn = builders
            .auto
            .serve_connection_with_upgrades(TokioIo::new(stream), service);
        until_done(conn, stop, peer).await;
    }

    /// Serves one plain-TCP client connection: h2c for its whole life, or
    /// HTTP/1.1 on the fast path (see [`fast`]) until a request needs hyper,
    /// then in hyper sessions that free their buffers while the connection
    /// is idle (see [`front`]).
    async fn serve_plain(
        self: &Arc<Self>,
        builders: &Builders,
        mut stream: ClientSocket,
        stop: &CancellationToken,
        peer: SocketAddr,
    ) -> Option<Parked> {
        let timeout = self.config.load().header_read_timeout;
        // A connection accepted just before the proxy stopped accepting (a
        // shutdown, an upgrade) gets its first request served: its client
        // sent it, or is about to; closing it now would reset it.
        // Boxed: its timers are not held by the task for the connection's
        // whole life.
        let first = Box::pin(async {
            let linger = async {
                stop.cancelled().await;
                tokio::time::sleep(STOP_LINGER).await;
            };
            tokio::select! {
                first = tokio::time::timeout(timeout, front::read_preface(&mut stream)) => Some(first),
                () = linger => None,
            }
        })
        .await;
        let (ahead, h2) = match first? {
            Ok(Ok(Some(first))) => first,
            Ok(Ok(None)) => return None,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "client connection: {e}");
                return None;
            }
            Err(_) => {
                tracing::debug!(%peer, "no request within {timeout:?}");
                return None;
            }
        };
        let protocol = if h2 { Protocol::H2c } else { Protocol::Http1 };
        self.ops.metrics().connection(protocol);
        if h2 {
            Box::pin(self.serve_hyper(builders, stream, ahead.freeze(), true, stop, peer)).await;
            return None;
        }
        self.serve_http1(builders, stream, ahead, stop, peer).await
    }

    /// Serves a plain HTTP/1.1 connection, starting with the bytes `ahead`
    /// read from it: on the fast path until it is to be parked, or a
    /// request needs hyper.
    async fn serve_http1(
        self: &Arc<Self>,
        builders: &Builders,
        mut stream: ClientSocket,
        ahead: BytesMut,
        stop: &CancellationToken,
        peer: SocketAddr,
    ) -> Option<Parked> {
        let client = ClientInfo::new(peer, "http", None);
        let rest = match fast::serve(self, &client, &mut stream, ahead, stop).await {
            fast::Exit::Closed => return None,
            // It waited for a request: registered already.
            fast::Exit::Park(deadline) => {
                let stream = ParkedStream::Plain(stream.into_registered().ok()?);
                return Some(Parked { stream, deadline });
            }
            fast::Exit::Handoff(rest) => rest,
        };
        // Boxed: the task of a connection on the fast path holds no hyper
        // state.
        Box::pin(self.serve_hyper(builders, stream, rest, false, stop, peer)).await;
        None
    }

    /// Serves the rest of a plain-TCP connection with hyper: h2c, or
    /// HTTP/1.1 sessions after `ahead`, the bytes the fast path read.
    async fn serve_hyper(
        self: &Arc<Self>,
        builders: &Builders,
        stream: ClientSocket,
        ahead: Bytes,
        h2: bool,
        stop: &CancellationToken,
        peer: SocketAddr,
    ) {
        let timeout = self.config.load().header_read_timeout;
        let stream = match stream.into_registered() {
            Ok(stream) => stream,
            Err(e) => return tracing::debug!(%peer, "client connection: {e}"),
        };
        let activity = Arc::new(Activity::default());
        let service = Proxy::service(Arc::clone(self), peer, "http", Some(Arc::clone(&activity)));
        let stream = FrontStream::new(stream, ahead, Arc::clone(&activity));
        if h2 {
            // HTTP/2 keeps its own send timeout, per stream.
            let client = Arc::new(ClientInfo::new(peer, "http", None));
            return h2::serve(Arc::clone(self), stream, client, stop).await;
        }
        let mut stream = stream.with_send_timeout(self.config.load().send_timeout);
        let mut linger = Box::pin(tokio::time::sleep(front::IDLE_LINGER));
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
}
