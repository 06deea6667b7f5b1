//! The control API: HTTP + JSON over a Unix socket created with mode 0600.
//!
//! | method | path | body | answer |
//! | --- | --- | --- | --- |
//! | GET | `/v1/status` | | `[ServiceStatus]` |
//! | POST | `/v1/rollout` | [`RolloutCall`] | [`RolloutReport`](crate::rollout::RolloutReport), or 409 with [`ErrorBody`] when aborted |
//! | GET | `/v1/events` | | newline-delimited JSON [`Event`]s, live |
//!
//! `deploy`, `restart`, `scale` and `rollback` are rollouts; the call returns
//! when the rollout completed or was aborted and rolled back.

mod client;

use std::convert::Infallible;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use client::{ControlClient, EventStream};

use crate::event::Event;
use crate::rollout::{self, RolloutError, RolloutRequest};
use crate::route::Router;

/// Environment variable naming the control socket for the CLI clients.
pub const CONTROL_ENV: &str = "DROPLESS_CONTROL";

/// Time open control connections get to finish when the runtime stops.
pub const CONTROL_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Largest request body the control API reads.
const MAX_BODY: usize = 1024 * 1024;

/// A bound control socket, mode 0600, that no other `serve` is using.
#[derive(Debug)]
pub struct ControlListener {
    listener: UnixListener,
    path: PathBuf,
}

/// A rollout call: which service, what to do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RolloutCall {
    /// The service; may be omitted when there is only one.
    pub service: Option<String>,
    /// What to do.
    pub request: RolloutRequest,
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
    /// No `serve` answers on the socket.
    #[error(
        "cannot reach `dropless serve` at {path} ({source}): is it running? pass --control PATH or set DROPLESS_CONTROL"
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The exchange broke off.
    #[error("control API at {path}: {message}")]
    Protocol {
        /// The socket path.
        path: PathBuf,
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
        std::fs::create_dir_all(dir).map_err(bind_err)?;
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
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves the control API on `listener` until `shutdown` is cancelled.
/// Rollouts run as their own tasks, so a client that goes away does not cut
/// one short. At shutdown, event streams send what is buffered and end; open
/// connections get [`CONTROL_GRACE`] to finish.
pub async fn serve(
    listener: ControlListener,
    router: Router,
    events: broadcast::Sender<Event>,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("control accept failed: {e}");
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let (router, events, shutdown) = (router.clone(), events.clone(), shutdown.clone());
        let service = hyper::service::service_fn(move |req| {
            let (router, events, shutdown) = (router.clone(), events.clone(), shutdown.clone());
            async move { Ok::<_, Infallible>(answer(req, router, events, shutdown).await) }
        });
        connections.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("control connection: {e}");
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(CONTROL_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::debug!("control connections cut after {CONTROL_GRACE:?}");
    }
}

async fn answer(
    req: Request<Incoming>,
    router: Router,
    events: broadcast::Sender<Event>,
    shutdown: CancellationToken,
) -> Response<ControlBody> {
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/v1/status") => {
            let status: Vec<_> = router.services().iter().map(|s| s.status()).collect();
            json(StatusCode::OK, &status)
        }
        (Method::GET, "/v1/events") => event_stream(events.subscribe(), shutdown),
        (Method::POST, "/v1/rollout") => {
            let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read request: {e}"),
                        None,
                    );
                }
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
            let Some(service) = router.service(call.service.as_deref()).cloned() else {
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

/// Events as JSON lines until the runtime stops: then the events already
/// broadcast are sent and the stream ends.
fn event_stream(
    rx: broadcast::Receiver<Event>,
    shutdown: CancellationToken,
) -> Response<ControlBody> {
    let stream = futures_util::stream::unfold((rx, shutdown), |(mut rx, shutdown)| async move {
        loop {
            let next = tokio::select! {
                biased;
                next = rx.recv() => next,
                () = shutdown.cancelled() => return None,
            };
            match next {
                Ok(event) => {
                    let mut line = serde_json::to_vec(&event).expect("events serialize");
                    line.push(b'\n');
                    return Some((
                        Ok::<_, Infallible>(Frame::data(Bytes::from(line))),
                        (rx, shutdown),
                    ));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("events subscriber lagged; {n} event(s) skipped");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/x-ndjson")
        .body(StreamBody::new(stream).boxed())
        .expect("static parts form a response")
}
