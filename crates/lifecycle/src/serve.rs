//! Serving HTTP/1.1 and h2c on one listener, and the ordered shutdown.

use std::{
    error::Error as StdError,
    future::{Future, IntoFuture},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Version, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    time::{Instant, sleep_until, timeout_at},
};
use tokio_util::task::TaskTracker;
use tower::util::Oneshot;
use tower_service::Service;

use crate::{
    Error, KeepAliveOnDrain, Lifecycle, Phase, Unfinished,
    health::{self, Probe},
    lifecycle::Inner,
    signal::Signal,
};

/// Pause after a failed `accept` (say, out of file descriptors) so the loop
/// does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Errors of services and bodies, as hyper takes them.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// A service [`Lifecycle::serve`] can run: an axum `Router`, or any tower
/// `Service<Request<Incoming>>` that answers with a [`HttpBody`].
pub trait HttpService<B>:
    Service<
        Request<Incoming>,
        Response = Response<B>,
        Future: Send + 'static,
        Error: Into<BoxError>,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> HttpService<B> for S where
    S: Service<
            Request<Incoming>,
            Response = Response<B>,
            Future: Send + 'static,
            Error: Into<BoxError>,
        > + Clone
        + Send
        + 'static
{
}

/// A response body [`Lifecycle::serve`] can send.
pub trait HttpBody: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

impl<B> HttpBody for B where B: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static
{}

/// How connections are asked to finish once the listener is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// Not draining yet.
    No,
    /// Idle HTTP/1.1 connections get a last chance to send a request.
    OneMoreMessage,
    /// Every connection is asked to close at once.
    HangUp,
    /// The grace period is over: connections are dropped.
    Force,
}

impl Lifecycle {
    /// Serves `app` on `listener` (HTTP/1.1 and h2c on the same port) until
    /// `shutdown` resolves, then shuts down in order: readiness off, pre-stop
    /// delay, stop accepting, drain, tracked tasks, hooks, then WebSockets
    /// are asked to close (code 1012, see [`Lifecycle::websocket`]); all of
    /// it within the grace period.
    ///
    /// `shutdown` is any future whose output converts into a [`Signal`]:
    /// [`crate::signal::Signals::recv`] in production, a oneshot or a
    /// `CancellationToken` in tests (a `()` output means
    /// [`Signal::Terminate`]).
    ///
    /// The readiness and liveness paths are answered before `app` sees the
    /// request. Call [`Lifecycle::set_ready`] when the service is ready.
    ///
    /// Returns [`Error::GraceExceeded`] when something was still running at
    /// the end of the grace period, so the process can exit non-zero.
    pub async fn serve<S, B, F>(
        &self,
        listener: TcpListener,
        app: S,
        shutdown: F,
    ) -> Result<(), Error>
    where
        S: HttpService<B>,
        B: HttpBody,
        F: IntoFuture,
        F::Output: Into<Signal>,
    {
        if !self.claim_serve() {
            return Err(Error::AlreadyServed);
        }
        let config = &self.inner.config;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new());
        builder.http2().timer(TokioTimer::new());
        let server = Arc::new(Server {
            builder,
            connections: TaskTracker::new(),
            drain: watch::Sender::new(Drain::No),
            drain_idle_wait: config.drain_idle_wait,
        });
        let local = listener.local_addr().ok();
        tracing::info!(addr = ?local, "serving HTTP/1.1 and h2c");

        let shutdown = shutdown.into_future();
        tokio::pin!(shutdown);
        let signal: Signal = loop {
            tokio::select! {
                signal = &mut shutdown => break signal.into(),
                accepted = listener.accept() => server.accept(accepted, self, &app).await,
            }
        };

        let started = Instant::now();
        let deadline = started + config.grace;
        tracing::info!(?signal, grace = ?config.grace, "shutdown begins");
        self.advance(Phase::PreStop);
        if signal == Signal::Terminate && !config.pre_stop.is_zero() {
            tracing::info!(pre_stop = ?config.pre_stop, "pre-stop delay: still serving");
            let pre_stop_end = sleep_until(started + config.pre_stop);
            tokio::pin!(pre_stop_end);
            loop {
                tokio::select! {
                    () = &mut pre_stop_end => break,
                    accepted = listener.accept() => server.accept(accepted, self, &app).await,
                }
            }
        }

        // Connections the kernel already completed are in the backlog: take
        // them before closing, or they would be reset unanswered.
        server.accept_backlog(listener, self, &app);
        self.advance(Phase::Draining);
        let drain = match (signal, config.keep_alive_on_drain) {
            (Signal::Terminate, KeepAliveOnDrain::OneMoreMessage) => Drain::OneMoreMessage,
            _ => Drain::HangUp,
        };
        server.drain.send_replace(drain);
        server.connections.close();

        let mut unfinished = Unfinished::default();
        if timeout_at(deadline, server.connections.wait())
            .await
            .is_err()
        {
            unfinished.connections = server.connections.len();
            server.drain.send_replace(Drain::Force);
        }

        self.advance(Phase::Tasks);
        if timeout_at(deadline, self.inner.tasks.wait()).await.is_err() {
            unfinished.tasks = self.inner.tasks.running();
        }

        self.advance(Phase::Hooks);
        for (name, hook) in self.inner.hooks.take_reversed() {
            tracing::debug!(hook = %name, "running shutdown hook");
            if timeout_at(deadline, hook()).await.is_err() {
                unfinished.hooks.push(name);
            }
        }

        // After the hooks (state stashed): WebSockets close with 1012.
        let websockets = &self.inner.websockets;
        websockets.close.cancel();
        websockets.open.close();
        if !websockets.open.is_empty() {
            tracing::info!(
                open = websockets.open.len(),
                "closing WebSockets: service restart"
            );
        }
        if timeout_at(deadline, websockets.open.wait()).await.is_err() {
            unfinished.websockets = websockets.open.len();
        }

        self.advance(Phase::Stopped);
        let elapsed = started.elapsed();
        if unfinished.is_empty() {
            tracing::info!(?elapsed, "shutdown finished gracefully");
            Ok(())
        } else {
            tracing::error!(?elapsed, grace = ?config.grace, %unfinished, "shutdown forced: grace period exceeded");
            Err(Error::GraceExceeded {
                grace: config.grace,
                unfinished,
            })
        }
    }
}

/// What every connection of one `serve` call shares.
struct Server {
    builder: auto::Builder<TokioExecutor>,
    connections: TaskTracker,
    drain: watch::Sender<Drain>,
    drain_idle_wait: Duration,
}

impl Server {
    /// Handles one result of `accept`: spawns the connection, or backs off
    /// after an error.
    async fn accept<S, B>(
        self: &Arc<Self>,
        accepted: std::io::Result<(TcpStream, std::net::SocketAddr)>,
        lifecycle: &Lifecycle,
        app: &S,
    ) where
        S: HttpService<B>,
        B: HttpBody,
    {
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                return;
            }
        };
        self.spawn_connection(stream, lifecycle, app);
    }

    /// Serves one accepted connection in its own task.
    fn spawn_connection<S, B>(self: &Arc<Self>, stream: TcpStream, lifecycle: &Lifecycle, app: &S)
    where
        S: HttpService<B>,
        B: HttpBody,
    {
        // Small responses should leave at once; Nagle only adds latency here.
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(ConnState {
            http2: AtomicBool::new(false),
            lifecycle: Arc::clone(&lifecycle.inner),
        });
        let service = ConnService {
            app: app.clone(),
            conn: Arc::clone(&conn),
        };
        // Subscribed here, not in the task: a drain sent before the task
        // first runs must still be seen as a change.
        let drain = self.drain.subscribe();
        let server = Arc::clone(self);
        self.connections
            .spawn(async move { server.serve_connection(stream, service, conn, drain).await });
    }

    /// Takes every connection waiting in the listener's backlog, then closes
    /// the listener: from here on new connections are refused.
    fn accept_backlog<S, B>(self: &Arc<Self>, listener: TcpListener, lifecycle: &Lifecycle, app: &S)
    where
        S: HttpService<B>,
        B: HttpBody,
    {
        // A plain non-blocking accept asks the kernel directly, whatever the
        // reactor has seen so far.
        let Ok(listener) = listener.into_std() else {
            return;
        };
        let mut taken = 0;
        while let Ok((stream, _peer)) = listener.accept() {
            match stream
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(stream))
            {
                Ok(stream) => {
                    self.spawn_connection(stream, lifecycle, app);
                    taken += 1;
                }
                Err(error) => tracing::warn!(%error, "backlog connection dropped"),
            }
        }
        if taken > 0 {
            tracing::debug!(taken, "took connections from the backlog before closing");
        }
        drop(listener);
    }

    /// Runs one connection to its end, applying the drain when it comes.
    async fn serve_connection<S, B>(
        &self,
        stream: TcpStream,
        service: ConnService<S>,
        conn: Arc<ConnState>,
        mut drain: watch::Receiver<Drain>,
    ) where
        S: HttpService<B>,
        B: HttpBody,
    {
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let idle_close = sleep_until(Instant::now());
        tokio::pin!(idle_close);
        let mut idle_close_armed = false;
        // One watch for every shutdown step keeps the per-wake cost of a
        // connection at one extra poll.
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    return;
                }
                changed = drain.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    match *drain.borrow_and_update() {
                        Drain::No => {}
                        Drain::Force => return,
                        Drain::OneMoreMessage if !conn.http2.load(Ordering::Relaxed) => {
                            idle_close.as_mut().reset(Instant::now() + self.drain_idle_wait);
                            idle_close_armed = true;
                        }
                        // HTTP/1.1: idle closes now, busy after its response
                        // (with `Connection: close`). HTTP/2: GOAWAY.
                        Drain::OneMoreMessage | Drain::HangUp => connection.as_mut().graceful_shutdown(),
                    }
                }
                () = &mut idle_close, if idle_close_armed => {
                    idle_close_armed = false;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// What the connection task, its service and its responses share. Per
/// connection, so the reference counts requests touch stay on one core.
#[derive(Debug)]
struct ConnState {
    /// Set by the first HTTP/2 request: the connection gets GOAWAY at once
    /// when the drain starts.
    http2: AtomicBool,
    lifecycle: Arc<Inner>,
}

/// The service of one connection: probes first, then the app; HTTP/1.x
/// responses carry `Connection: close` once shutdown has begun.
#[derive(Clone)]
struct ConnService<S> {
    app: S,
    conn: Arc<ConnState>,
}

impl<S> ConnService<S> {
    fn probe(&self, path: &str) -> Option<Probe> {
        let config = &self.conn.lifecycle.config;
        if config.health_path.as_deref() == Some(path) {
            Some(Probe::Readiness)
        } else if config.liveness_path.as_deref() == Some(path) {
            Some(Probe::Liveness)
        } else {
            None
        }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    // Naming `Response = Response<B>` ties `B` to `S`.
    S: Service<Request<Incoming>, Response = Response<B>> + HttpService<B>,
    B: HttpBody,
{
    type Response = Response<Either<Full<Bytes>, B>>;
    type Error = BoxError;
    type Future = ResponseFuture<Oneshot<S, Request<Incoming>>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let http1 = request.version() < Version::HTTP_2;
        if !http1 {
            self.conn.http2.store(true, Ordering::Relaxed);
        }
        let conn = Arc::clone(&self.conn);
        if let Some(probe) = self.probe(request.uri().path()) {
            let phase = *conn.lifecycle.phase.borrow();
            return ResponseFuture::Probe {
                response: Some(health::respond(probe, phase)),
                http1,
                conn,
            };
        }
        ResponseFuture::App {
            future: Oneshot::new(self.app.clone(), request),
            http1,
            conn,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of a [`ConnService`]: a probe answer or the app's.
    #[project = ResponseFutureProj]
    enum ResponseFuture<F> {
        Probe { response: Option<Response<Full<Bytes>>>, http1: bool, conn: Arc<ConnState> },
        App { #[pin] future: F, http1: bool, conn: Arc<ConnState> },
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Either<Full<Bytes>, B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (mut response, http1, conn) = match self.project() {
            ResponseFutureProj::Probe {
                response,
                http1,
                conn,
            } => {
                let response = response
                    .take()
                    .expect("probe response polled after completion");
                (response.map(Either::Left), *http1, conn)
            }
            ResponseFutureProj::App {
                future,
                http1,
                conn,
            } => {
                let response = ready!(future.poll(cx)).map_err(Into::into)?;
                (response.map(Either::Right), *http1, conn)
            }
        };
        // "One more message": a keep-alive client learns from this very
        // response that the connection closes, instead of racing the close.
        if http1 && conn.lifecycle.closing.load(Ordering::Relaxed) {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(response))
    }
}
