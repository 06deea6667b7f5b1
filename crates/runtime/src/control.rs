//! The control API: HTTP + JSON over a Unix socket created with mode 0600,
//! and, only when asked for ([`TcpControl`]), on a TCP address where every
//! request must carry the runtime's token (`Authorization: Bearer TOKEN`).
//!
//! | method | path | body | answer |
//! | --- | --- | --- | --- |
//! | GET | `/v1/status` | | `[ServiceStatus]` |
//! | POST | `/v1/rollout` | [`RolloutCall`] | [`RolloutReport`](crate::rollout::RolloutReport), or 409 with [`ErrorBody`] when aborted |
//! | GET | `/v1/events` | | newline-delimited JSON [`Event`]s, live; with `?last=N` or `?since=5m` the recent ones first (of the last [`HISTORY`](crate::event::HISTORY) kept) |
//! | POST | `/v1/reload` | | [`ReloadReport`](crate::reload::ReloadReport), or 422 with [`ErrorBody`] when the file is refused |
//! | POST | `/v1/upgrade` | [`UpgradeCall`] | [`Upgraded`](crate::upgrade::handover::Upgraded), or 409 with [`ErrorBody`] when it did not happen |
//! | GET | `/v1/runtime` | | [`RuntimeInfo`](crate::upgrade::state::RuntimeInfo) |
//! | POST | `/v1/hold` | [`HoldCommand`](crate::ops::hold::HoldCommand) | [`HoldStatus`](crate::ops::hold::HoldStatus): pause, resume, maintenance on and off |
//!
//! `deploy`, `restart`, `scale` and `rollback` are rollouts; the call returns
//! when the rollout completed or was aborted and rolled back.

mod client;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use client::{ControlClient, EventStream};

use crate::config::Config;
use crate::event::{Event, Events, Replay};
use crate::ops::Ops;
use crate::ops::hold::HoldCommand;
use crate::proxy::route::Router;
use crate::reload::{ReloadError, Reloader};
use crate::rollout::{self, RolloutError, RolloutRequest};
use crate::supervisor::ServiceStatus;
use crate::throttle::warn_throttled;
use crate::upgrade::handover::Upgrader;
use crate::upgrade::state::RuntimeInfo;

/// Environment variable naming the control socket for the CLI clients.
pub const CONTROL_ENV: &str = "DROPLESS_CONTROL";

/// Environment variable holding the token of the TCP control API, for
/// `serve` (which requires it with a TCP address) and for the clients.
pub const TOKEN_ENV: &str = "DROPLESS_CONTROL_TOKEN";

/// Shortest token accepted: a guessable token on a TCP port is no lock.
pub const MIN_TOKEN_LEN: usize = 16;

/// Time open control connections get to finish when the runtime stops.
pub const CONTROL_GRACE: Duration = Duration::from_secs(1);

/// How long an accept loop pauses when the process is out of file
/// descriptors (or memory): accepting again at once would fail again.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Largest request body the control API reads.
const MAX_BODY: usize = 1024 * 1024;

/// A bound control socket, mode 0600, that no other `serve` is using.
#[derive(Debug)]
pub struct ControlListener {
    listener: UnixListener,
    path: PathBuf,
}

/// The control API on a TCP address, every request checked against a token.
#[derive(Debug)]
pub struct TcpControl {
    listener: TcpListener,
    token: Arc<str>,
}

/// A rollout call: which service, what to do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RolloutCall {
    /// The service; may be omitted when there is only one.
    pub service: Option<String>,
    /// What to do.
    pub request: RolloutRequest,
}

/// An upgrade call: the binary to run, by default the one `serve` was
/// started from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpgradeCall {
    /// The new binary.
    pub binary: Option<PathBuf>,
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// One line saying what failed.
    pub error: String,
    /// Set when a rollout was aborted (and rolled back).
    pub rollout: Option<RolloutError>,
}

/// The control API failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another `serve` answers on the socket.
    #[error(
        "control socket {path} is in use by another `dropless serve`: stop it or pass a different --control PATH"
    )]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket could not be created.
    #[error("cannot create control socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The TCP control address could not be bound.
    #[error("cannot listen for the control API on {addr}: {source}")]
    TcpBind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The token of the TCP control API is missing or too short.
    #[error(
        "the TCP control API needs a token of at least {MIN_TOKEN_LEN} characters in {TOKEN_ENV}{}",
        if *.given { " (the one given is shorter)" } else { "" }
    )]
    Token {
        /// Whether a (too short) token was given.
        given: bool,
    },
    /// No `serve` answers at the control endpoint.
    #[error(
        "cannot reach `dropless serve` at {at} ({source}): is it running? pass --control PATH|http://HOST:PORT or set DROPLESS_CONTROL"
    )]
    Connect {
        /// The socket path or TCP address.
        at: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The exchange broke off.
    #[error("control API at {at}: {message}")]
    Protocol {
        /// The socket path or TCP address.
        at: String,
        /// What failed.
        message: String,
    },
    /// The runtime refused the request.
    #[error("{0}")]
    Rejected(String),
    /// The rollout was aborted and rolled back.
    #[error(transparent)]
    Aborted(RolloutError),
}

type ControlBody = BoxBody<Bytes, Infallible>;

impl ControlListener {
    /// Creates the socket at `path` with mode 0600. A socket file left by a
    /// `serve` that is gone is replaced; one that answers is refused.
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        let bind_err = |source| ControlError::Bind {
            path: path.to_path_buf(),
            source,
        };
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_file(path).map_err(bind_err)?;
        }
        let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) => dir,
            None => Path::new("."),
        };
        // A directory it creates (the state dir, by default) is private.
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(crate::desired::DIR_MODE)
            .create(dir)
            .map_err(bind_err)?;
        // Nobody else may connect, not even for an instant: the socket is
        // bound inside a fresh private (0700) directory, made 0600, then
        // renamed into place (the listener follows the inode). A process-wide
        // umask would do it too, but would race with every other thread that
        // creates files or spawns processes at that moment.
        let private = tempfile::Builder::new()
            .prefix(".dropless-control-")
            .tempdir_in(dir)
            .map_err(bind_err)?;
        let staged = private.path().join("control.sock");
        let listener = UnixListener::bind(&staged).map_err(bind_err)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_err)?;
        std::fs::rename(&staged, path).map_err(bind_err)?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listening socket (for another server on a private socket, such
    /// as the stash; the socket file goes when this is dropped).
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// A control socket handed over by another `serve` (an upgrade).
    pub fn from_std(
        listener: std::os::unix::net::UnixListener,
        path: PathBuf,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener: UnixListener::from_std(listener)?,
            path,
        })
    }

    /// Its descriptor, to hand over.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.listener)
    }
}

impl TcpControl {
    /// Listens on `addr` for control requests that carry `token`.
    pub async fn bind(addr: std::net::SocketAddr, token: &str) -> Result<Self, ControlError> {
        if token.chars().count() < MIN_TOKEN_LEN {
            return Err(ControlError::Token {
                given: !token.is_empty(),
            });
        }
        // The proxy's accept queue, not tokio's 128: a deploy script's burst
        // of calls is not left to SYN retransmits.
        let listener = dropless_lifecycle::listen::bind_addr(addr)
            .await
            .map_err(|source| ControlError::TcpBind { addr, source })?;
        Ok(Self {
            listener,
            token: Arc::from(token),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// A TCP control listener handed over by another `serve`, for `token`.
    pub fn from_std(listener: std::net::TcpListener, token: &str) -> Result<Self, ControlError> {
        if token.chars().count() < MIN_TOKEN_LEN {
            return Err(ControlError::Token {
                given: !token.is_empty(),
            });
        }
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(listener))
            .map_err(|source| ControlError::TcpBind { addr, source })?;
        Ok(Self {
            listener,
            token: Arc::from(token),
        })
    }

    /// Its descriptor, to hand over.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.listener)
    }
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        // A handed-over socket is the new `serve`'s now.
        if crate::upgrade::handover::has_handed_over() {
            return;
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Limits of the control API's connections, so that a flood of them (the
/// TCP address takes connections before any token is checked) cannot hold
/// the runtime's file descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlLimits {
    /// Most open connections per listener (the socket, the TCP address); a
    /// connection above it is closed at once, so a flood of the TCP address
    /// leaves the socket usable.
    pub max_connections: usize,
    /// Time a connection has to send a request, head and body, counted from
    /// its opening or the end of its previous answer; then it is closed.
    pub read_timeout: Duration,
}

impl ControlLimits {
    /// The limits `config` sets.
    pub fn of(config: &Config) -> Self {
        Self {
            max_connections: config.control_max_connections,
            read_timeout: config.control_read_timeout,
        }
    }
}

impl Default for ControlLimits {
    fn default() -> Self {
        Self::of(&Config::default())
    }
}

/// Serves the control API on the Unix socket `listener` and on `tcp`, each
/// when given, within `limits`, until `shutdown` is cancelled. Rollouts run
/// as their own tasks, so a client that goes away does not cut one short.
/// At shutdown, event streams send what is buffered and end; open
/// connections get [`CONTROL_GRACE`] to finish. With `upgrader`, it also
/// answers `/v1/upgrade` and `/v1/runtime`; `ops` takes the hold commands
/// (pause, maintenance).
// Each argument is a part the API serves; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: Option<ControlListener>,
    tcp: Option<TcpControl>,
    router: Router,
    reloader: Reloader,
    events: Events,
    limits: ControlLimits,
    shutdown: CancellationToken,
    upgrader: Option<Upgrader>,
    ops: Arc<Ops>,
) {
    let api = Api {
        upgrader,
        router,
        reloader,
        ops,
        events,
        shutdown,
        limits,
        connections: TaskTracker::new(),
    };
    let on_socket = async {
        if let Some(l) = &listener {
            api.accept(Listening::Unix(l)).await;
        }
    };
    let on_tcp = async {
        if let Some(t) = &tcp {
            api.accept(Listening::Tcp(t)).await;
        }
    };
    tokio::join!(on_socket, on_tcp);
    drop(listener);
    drop(tcp);
    api.connections.close();
    if tokio::time::timeout(CONTROL_GRACE, api.connections.wait())
        .await
        .is_err()
    {
        tracing::debug!("control connections cut after {CONTROL_GRACE:?}");
    }
}

/// One listener of the control API.
#[derive(Clone, Copy)]
enum Listening<'a> {
    Unix(&'a ControlListener),
    Tcp(&'a TcpControl),
}

/// A connection one of them accepted.
enum Accepted {
    Unix(tokio::net::UnixStream),
    /// With the token its requests must carry.
    Tcp(tokio::net::TcpStream, Arc<str>),
}

impl Listening<'_> {
    async fn accept(self) -> std::io::Result<Accepted> {
        match self {
            Self::Unix(l) => Ok(Accepted::Unix(l.listener.accept().await?.0)),
            Self::Tcp(t) => {
                let (stream, _) = t.listener.accept().await?;
                Ok(Accepted::Tcp(stream, Arc::clone(&t.token)))
            }
        }
    }
}

impl std::fmt::Display for Listening<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(l) => write!(f, "socket {}", l.path.display()),
            Self::Tcp(t) => match t.listener.local_addr() {
                Ok(addr) => write!(f, "http://{addr}"),
                Err(_) => f.write_str("the TCP address"),
            },
        }
    }
}

/// What every control connection shares.
struct Api {
    upgrader: Option<Upgrader>,
    router: Router,
    reloader: Reloader,
    ops: Arc<Ops>,
    events: Events,
    shutdown: CancellationToken,
    limits: ControlLimits,
    connections: TaskTracker,
}

impl Api {
    /// Accepts from `listening` until shutdown, at most
    /// `limits.max_connections` open at once; pauses [`ACCEPT_BACKOFF`] when
    /// out of descriptors. Errors and refusals are logged once a second.
    async fn accept(&self, listening: Listening<'_>) {
        let slots = Arc::new(Semaphore::new(self.limits.max_connections));
        let at = listening.to_string();
        loop {
            let accepted = tokio::select! {
                accepted = listening.accept() => accepted,
                () = self.shutdown.cancelled() => return,
            };
            let accepted = match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn_throttled!("control API on {at}: accept failed: {e}");
                    if crate::fds::is_exhausted(&e) {
                        tokio::select! {
                            () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                            () = self.shutdown.cancelled() => return,
                        }
                    }
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                warn_throttled!(
                    "control API on {at}: {} connections open, the limit (control_max_connections); closing new ones",
                    self.limits.max_connections
                );
                continue;
            };
            match accepted {
                Accepted::Unix(stream) => self.spawn(stream, None, slot),
                Accepted::Tcp(stream, token) => self.spawn(stream, Some(token), slot),
            }
        }
    }

    /// Serves one connection, holding `slot` until it ends; with `token`,
    /// every request must carry it.
    fn spawn<S>(&self, stream: S, token: Option<Arc<str>>, slot: OwnedSemaphorePermit)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (router, events, shutdown) = (
            self.router.clone(),
            self.events.clone(),
            self.shutdown.clone(),
        );
        let reloader = self.reloader.clone();
        let upgrader = self.upgrader.clone();
        let ops = Arc::clone(&self.ops);
        let read_timeout = self.limits.read_timeout;
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let (router, events, shutdown) = (router.clone(), events.clone(), shutdown.clone());
            let reloader = reloader.clone();
            let upgrader = upgrader.clone();
            let ops = Arc::clone(&ops);
            let authorized = token.as_deref().is_none_or(|t| carries_token(&req, t));
            async move {
                if !authorized {
                    return Ok::<_, Infallible>(error(
                        StatusCode::UNAUTHORIZED,
                        format!(
                            "missing or wrong token: set {TOKEN_ENV} to the token `dropless serve` was started with"
                        ),
                        None,
                    ));
                }
                if (req.method(), req.uri().path()) == (&Method::POST, "/v1/reload") {
                    return Ok(reload(&reloader).await);
                }
                if (req.method(), req.uri().path()) == (&Method::POST, "/v1/hold") {
                    return Ok(hold(req, &ops, read_timeout).await);
                }
                if req.uri().path() == "/v1/upgrade" || req.uri().path() == "/v1/runtime" {
                    return Ok(upgrade(req, upgrader.as_ref(), read_timeout).await);
                }
                let runtime = upgrader.as_ref().map(Upgrader::info);
                Ok(answer(req, router, events, read_timeout, shutdown, runtime).await)
            }
        });
        self.connections.spawn(async move {
            // The header read timeout runs from the connection's opening and
            // from the end of each answer: idle and half-sent heads are cut.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("control connection: {e}");
            }
            drop(slot);
        });
    }
}

/// Whether `req` carries `Authorization: Bearer TOKEN`, compared in constant
/// time.
fn carries_token<B>(req: &Request<B>, token: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    let expected = token.as_bytes();
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

async fn answer(
    req: Request<Incoming>,
    router: Router,
    events: Events,
    read_timeout: Duration,
    shutdown: CancellationToken,
    runtime: Option<RuntimeInfo>,
) -> Response<ControlBody> {
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/v1/status") => {
            let status: Vec<_> = router
                .services()
                .iter()
                .map(|s| ServiceStatus {
                    runtime: runtime.clone(),
                    ..s.status()
                })
                .collect();
            json(StatusCode::OK, &status)
        }
        (Method::GET, "/v1/events") => match replay(req.uri().query()) {
            Ok(replay) => {
                let (past, live) = events.replay(replay);
                event_stream(past, live, shutdown)
            }
            Err(message) => error(StatusCode::BAD_REQUEST, message, None),
        },
        (Method::POST, "/v1/rollout") => {
            let body = match read_body(req, read_timeout).await {
                Ok(b) => b,
                Err(refused) => return refused,
            };
            let call: RolloutCall = match serde_json::from_slice(&body) {
                Ok(c) => c,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("invalid rollout request: {e}"),
                        None,
                    );
                }
            };
            let Some(service) = router.service(call.service.as_deref()) else {
                let names: Vec<_> = router
                    .services()
                    .iter()
                    .map(|s| s.name().to_string())
                    .collect();
                let message = match &call.service {
                    Some(n) => format!("no service {n:?}: the services are {}", names.join(", ")),
                    None => format!(
                        "several services ({}): name one with --service",
                        names.join(", ")
                    ),
                };
                return error(StatusCode::NOT_FOUND, message, None);
            };
            let task = tokio::spawn(async move { rollout::run(&service, call.request).await });
            match task.await {
                Ok(Ok(report)) => json(StatusCode::OK, &report),
                Ok(Err(e @ RolloutError::Aborted { .. })) => {
                    error(StatusCode::CONFLICT, e.to_string(), Some(e))
                }
                Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string(), Some(e)),
                Err(e) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("rollout task failed: {e}"),
                    None,
                ),
            }
        }
        (_, path) => error(
            StatusCode::NOT_FOUND,
            format!("no control endpoint {path}"),
            None,
        ),
    }
}

/// Applies a hold command (pause, resume, maintenance); the answer is the
/// hold's status after it.
async fn hold(req: Request<Incoming>, ops: &Ops, read_timeout: Duration) -> Response<ControlBody> {
    let body = match read_body(req, read_timeout).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    match serde_json::from_slice::<HoldCommand>(&body) {
        Ok(command) => {
            tracing::info!("hold: {command:?}");
            json(StatusCode::OK, &ops.hold().apply(command))
        }
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            format!("invalid hold command: {e}"),
            None,
        ),
    }
}

/// The body of `req`, read within `read_timeout` and [`MAX_BODY`], or the
/// answer refusing it.
async fn read_body(
    req: Request<Incoming>,
    read_timeout: Duration,
) -> Result<Bytes, Response<ControlBody>> {
    let body = http_body_util::Limited::new(req.into_body(), MAX_BODY).collect();
    match tokio::time::timeout(read_timeout, body).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("cannot read request: {e}"),
            None,
        )),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            format!("request body not received within {read_timeout:?}"),
            None,
        )),
    }
}

/// Applies a reload; the answer is its report, or why nothing changed.
async fn reload(reloader: &Reloader) -> Response<ControlBody> {
    match reloader.reload().await {
        Ok(report) => json(StatusCode::OK, &report),
        Err(e @ ReloadError::Invalid(_)) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string(), None)
        }
        Err(e @ ReloadError::Stopping) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None)
        }
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<ControlBody> {
    let body = serde_json::to_vec(value).expect("control answers serialize");
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("static parts form a response")
}

fn error(
    status: StatusCode,
    message: String,
    rollout: Option<RolloutError>,
) -> Response<ControlBody> {
    json(
        status,
        &ErrorBody {
            error: message,
            rollout,
        },
    )
}

/// What `GET /v1/events?QUERY` asks to replay: `last=N` or `since=5m`.
fn replay(query: Option<&str>) -> Result<Replay, String> {
    let mut replay = Replay::None;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        replay = match key {
            "last" => Replay::Last(value.parse().map_err(|_| {
                format!("invalid last={value:?}: expected a count of events, e.g. last=20")
            })?),
            "since" => Replay::Since(humantime::parse_duration(value).map_err(|_| {
                format!("invalid since={value:?}: expected a duration, e.g. since=5m")
            })?),
            _ => return Err(format!("unknown parameter {key:?}: use last=N or since=5m")),
        };
    }
    Ok(replay)
}

/// The events `past`, then those of `rx` as JSON lines until the runtime
/// stops: then the events already broadcast are sent and the stream ends.
fn event_stream(
    past: Vec<Event>,
    rx: broadcast::Receiver<Event>,
    shutdown: CancellationToken,
) -> Response<ControlBody> {
    let past = futures_util::stream::iter(past.iter().map(json_line).collect::<Vec<_>>());
    let live = futures_util::stream::unfold((rx, shutdown), |(mut rx, shutdown)| async move {
        loop {
            let next = tokio::select! {
                biased;
                next = rx.recv() => next,
                () = shutdown.cancelled() => return None,
            };
            match next {
                Ok(event) => return Some((json_line(&event), (rx, shutdown))),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("events subscriber lagged; {n} event(s) skipped");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/x-ndjson")
        .body(StreamBody::new(futures_util::StreamExt::chain(past, live)).boxed())
        .expect("static parts form a response")
}

/// `event` as one line of JSON, a frame of an event stream.
fn json_line(event: &Event) -> Result<Frame<Bytes>, Infallible> {
    let mut line = serde_json::to_vec(event).expect("events serialize");
    line.push(b'\n');
    Ok(Frame::data(Bytes::from(line)))
}

/// `POST /v1/upgrade` and `GET /v1/runtime`.
async fn upgrade(
    req: Request<Incoming>,
    upgrader: Option<&Upgrader>,
    read_timeout: Duration,
) -> Response<ControlBody> {
    let Some(upgrader) = upgrader else {
        return error(
            StatusCode::NOT_FOUND,
            "this runtime cannot be upgraded (it runs without a spawner process)".into(),
            None,
        );
    };
    if req.method() == Method::GET {
        return json(StatusCode::OK, &upgrader.info());
    }
    let body = http_body_util::Limited::new(req.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(read_timeout, body).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        _ => Err(()),
    };
    let call: UpgradeCall = match body {
        Ok(b) if b.is_empty() => UpgradeCall::default(),
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(c) => c,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid upgrade request: {e}"),
                    None,
                );
            }
        },
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "upgrade request body not received".into(),
                None,
            );
        }
    };
    match upgrader.upgrade(call.binary).await {
        Ok(done) => json(StatusCode::OK, &done),
        Err(e) => error(StatusCode::CONFLICT, e.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_query_asks_for_the_last_n_or_a_recent_past() {
        assert_eq!(replay(None), Ok(Replay::None));
        assert_eq!(replay(Some("last=20")), Ok(Replay::Last(20)));
        assert_eq!(
            replay(Some("since=5m")),
            Ok(Replay::Since(Duration::from_secs(300)))
        );
        assert!(replay(Some("last=x")).unwrap_err().contains("last=20"));
        assert!(replay(Some("since=abc")).unwrap_err().contains("since=5m"));
        assert!(replay(Some("from=1")).unwrap_err().contains("\"from\""));
    }
}
