//! The client side of the control API, used by `dropless deploy`, `status`
//! and the other client commands.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use super::{ControlError, ErrorBody, MIN_TOKEN_LEN, RolloutCall, TOKEN_ENV};
use crate::event::{Event, Replay};
use crate::reload::ReloadReport;
use crate::rollout::{RolloutReport, RolloutRequest};
use crate::supervisor::ServiceStatus;

/// A live stream of the runtime's events.
#[derive(Debug)]
pub struct EventStream {
    client: ControlClient,
    body: hyper::body::Incoming,
    pending: Vec<u8>,
}

impl EventStream {
    /// The next event; `None` when the runtime closed the stream.
    pub async fn next(&mut self) -> Result<Option<Event>, ControlError> {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return self.client.decode(&line).map(Some);
            }
            let Some(frame) = self.body.frame().await else {
                return Ok(None);
            };
            let frame = frame.map_err(|e| self.client.protocol(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                self.pending.extend_from_slice(&data);
            }
        }
    }
}

/// A client of one runtime's control API.
#[derive(Debug, Clone)]
pub struct ControlClient {
    endpoint: Endpoint,
}

/// Where a runtime's control API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Its Unix socket.
    Unix(PathBuf),
    /// Its TCP address (`HOST:PORT`), and the token requests carry there.
    Tcp {
        /// `HOST:PORT`.
        addr: String,
        /// The runtime's token.
        token: String,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "{}", path.display()),
            Self::Tcp { addr, .. } => write!(f, "http://{addr}"),
        }
    }
}

impl ControlClient {
    /// A client of the socket at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            endpoint: Endpoint::Unix(path.into()),
        }
    }

    /// A client of the TCP control API at `addr` (`HOST:PORT`).
    pub fn tcp(addr: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            endpoint: Endpoint::Tcp {
                addr: addr.into(),
                token: token.into(),
            },
        }
    }

    /// A client of `target` as a user names it: `http://HOST:PORT` is the
    /// TCP control API, with the token from [`TOKEN_ENV`]; anything else is
    /// a socket path.
    pub fn for_target(target: &Path) -> Result<Self, ControlError> {
        let Some(url) = target.to_str().and_then(|t| t.strip_prefix("http://")) else {
            return Ok(Self::new(target));
        };
        let addr = url.trim_end_matches('/');
        if addr.is_empty() || addr.contains('/') {
            return Err(ControlError::Rejected(format!(
                "the control URL {} is not http://HOST:PORT",
                target.display()
            )));
        }
        let token = std::env::var(TOKEN_ENV).unwrap_or_default();
        if token.chars().count() < MIN_TOKEN_LEN {
            return Err(ControlError::Token {
                given: !token.is_empty(),
            });
        }
        Ok(Self::tcp(addr, token))
    }

    /// Where it connects.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Every service's status.
    pub async fn status(&self) -> Result<Vec<ServiceStatus>, ControlError> {
        let body = self.call(Method::GET, "/v1/status", Bytes::new()).await?;
        self.decode(&body)
    }

    /// Runs a rollout on `service` (or the only one) and waits for its end.
    pub async fn rollout(
        &self,
        service: Option<String>,
        request: RolloutRequest,
    ) -> Result<RolloutReport, ControlError> {
        let call = RolloutCall { service, request };
        let body = serde_json::to_vec(&call).expect("rollout calls serialize");
        let body = self
            .call(Method::POST, "/v1/rollout", Bytes::from(body))
            .await?;
        self.decode(&body)
    }

    /// Asks the runtime to read its config file again and apply it
    /// (`POST /v1/reload`); a refused file is [`ControlError::Rejected`].
    pub async fn reload(&self) -> Result<ReloadReport, ControlError> {
        let body = self.call(Method::POST, "/v1/reload", Bytes::new()).await?;
        self.decode(&body)
    }

    /// Asks the runtime to replace its own binary (`POST /v1/upgrade`): by
    /// default with the one it was started from; one that did not happen
    /// is [`ControlError::Rejected`] with the reason.
    pub async fn upgrade(
        &self,
        binary: Option<std::path::PathBuf>,
    ) -> Result<crate::upgrade::handover::Upgraded, ControlError> {
        let call = super::UpgradeCall { binary };
        let body = serde_json::to_vec(&call).expect("the call serializes");
        let body = self
            .call(Method::POST, "/v1/upgrade", Bytes::from(body))
            .await?;
        self.decode(&body)
    }

    /// The runtime's version, pid and last upgrade (`GET /v1/runtime`).
    pub async fn runtime(&self) -> Result<crate::upgrade::state::RuntimeInfo, ControlError> {
        let body = self.call(Method::GET, "/v1/runtime", Bytes::new()).await?;
        self.decode(&body)
    }

    /// Subscribes to the event stream; every event from the moment this
    /// returns is delivered.
    pub async fn subscribe(&self) -> Result<EventStream, ControlError> {
        self.subscribe_with(Replay::None).await
    }

    /// A stream of the recent events `replay` asks for, then the live ones.
    pub async fn subscribe_with(&self, replay: Replay) -> Result<EventStream, ControlError> {
        let path = match replay {
            Replay::None => "/v1/events".to_string(),
            Replay::Last(n) => format!("/v1/events?last={n}"),
            Replay::Since(d) => format!("/v1/events?since={}ms", d.as_millis()),
        };
        let resp = self.open(Method::GET, &path, Bytes::new()).await?;
        Ok(EventStream {
            client: self.clone(),
            body: resp.into_body(),
            pending: Vec::new(),
        })
    }

    /// Calls `on_event` with every event until the runtime stops or
    /// `on_event` returns false.
    pub async fn events(&self, on_event: impl FnMut(Event) -> bool) -> Result<(), ControlError> {
        self.events_with(Replay::None, on_event).await
    }

    /// The same, starting with the recent events `replay` asks for.
    pub async fn events_with(
        &self,
        replay: Replay,
        mut on_event: impl FnMut(Event) -> bool,
    ) -> Result<(), ControlError> {
        let mut stream = self.subscribe_with(replay).await?;
        while let Some(event) = stream.next().await? {
            if !on_event(event) {
                break;
            }
        }
        Ok(())
    }

    async fn call(&self, method: Method, path: &str, body: Bytes) -> Result<Bytes, ControlError> {
        let resp = self.open(method, path, body).await?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.protocol(e.to_string()))?
            .to_bytes();
        if status == StatusCode::OK {
            return Ok(body);
        }
        let err: ErrorBody = self.decode(&body)?;
        Err(match err.rollout {
            Some(r @ crate::rollout::RolloutError::Aborted { .. }) => ControlError::Aborted(r),
            _ => ControlError::Rejected(err.error),
        })
    }

    async fn open(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<http::Response<hyper::body::Incoming>, ControlError> {
        let connect_err = |source| ControlError::Connect {
            at: self.endpoint.to_string(),
            source,
        };
        let mut sender = match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = UnixStream::connect(path).await.map_err(connect_err)?;
                self.handshake(stream).await?
            }
            Endpoint::Tcp { addr, .. } => {
                let stream = TcpStream::connect(addr.as_str())
                    .await
                    .map_err(connect_err)?;
                self.handshake(stream).await?
            }
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "dropless")
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Endpoint::Tcp { token, .. } = &self.endpoint {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| self.protocol(format!("cannot form the request: {e}")))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| self.protocol(e.to_string()))
    }

    /// An HTTP/1.1 connection over `stream`, driven by its own task.
    async fn handshake<S>(&self, stream: S) -> Result<SendRequest<Full<Bytes>>, ControlError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.protocol(e.to_string()))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, body: &[u8]) -> Result<T, ControlError> {
        serde_json::from_slice(body).map_err(|e| self.protocol(format!("unexpected answer: {e}")))
    }

    fn protocol(&self, message: String) -> ControlError {
        ControlError::Protocol {
            at: self.endpoint.to_string(),
            message,
        }
    }
}
