//! HTTP clients: hyper 1 connections on our own sockets, so that every error
//! is seen at its source (connect, TLS, write, read) and classified once.
//!
//! The scheduler only sees the [`Transport`] trait; [`HttpTransport`] is the
//! real one (HTTP/1.1 keep-alive pool, a connection per request, or HTTP/2
//! multiplexing) and tests plug in others.

mod connect;
mod tls;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, HeaderValue, USER_AGENT};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Model, Plan};
use crate::outcome::{Failure, FailureClass};

pub(crate) use connect::Connector;

/// What happened on the wire during one exchange, besides its result.
#[derive(Debug, Default)]
pub(crate) struct Marks {
    /// When the request was handed to a ready connection (last attempt).
    pub(crate) sent: Option<Instant>,
    /// When the response head arrived.
    pub(crate) head: Option<Instant>,
    /// Whether the request was retried on a fresh connection.
    pub(crate) retried: bool,
}

/// A complete response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    /// Whether the body contained the expected substring (true if none).
    pub(crate) body_ok: bool,
}

/// How the scheduler sends one request. A loop keeps a `Session` between its
/// requests (a sticky connection, for instance).
pub(crate) trait Transport: Send + Sync + 'static {
    type Session: Default + Send + 'static;

    /// Send one request and read the whole response.
    fn exchange<'a>(
        &'a self,
        session: &'a mut Self::Session,
        marks: &'a mut Marks,
    ) -> impl Future<Output = Result<Answer, Failure>> + Send + 'a;
}

/// The real HTTP transport of a run.
pub(crate) struct HttpTransport {
    connector: Connector,
    request: Template,
    expect_body: Option<Bytes>,
    retry_reused: bool,
    mode: Mode,
}

/// The connection an HTTP/1.1 loop holds between requests (sticky mode).
#[derive(Default)]
pub(crate) struct Session {
    lease: Option<Lease>,
}

enum Mode {
    Http1 {
        idle: Mutex<Vec<Conn1>>,
        /// One permit per connection in use: at most `connections` exist.
        permits: Arc<Semaphore>,
        keepalive: bool,
        /// Each loop keeps its connection (closed model, one per user).
        sticky: bool,
    },
    Http2 {
        slots: Vec<tokio::sync::Mutex<Option<http2::SendRequest<Full<Bytes>>>>>,
        next: AtomicUsize,
    },
}

struct Conn1 {
    sender: http1::SendRequest<Full<Bytes>>,
    used: bool,
}

struct Lease {
    conn: Conn1,
    _permit: OwnedSemaphorePermit,
}

/// The request, parsed once; each send clones cheap parts.
struct Template {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl HttpTransport {
    pub(crate) fn new(plan: &Plan, connector: Connector) -> Self {
        let concurrency = match plan.model {
            Model::Open { .. } => plan.max_in_flight,
            Model::Closed { vus } => vus,
        };
        let mode = if plan.http2 {
            let slots = plan.connections.unwrap_or(1);
            Mode::Http2 {
                slots: (0..slots).map(|_| tokio::sync::Mutex::new(None)).collect(),
                next: AtomicUsize::new(0),
            }
        } else {
            let connections = plan
                .connections
                .unwrap_or(concurrency)
                .min(Semaphore::MAX_PERMITS);
            Mode::Http1 {
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(Semaphore::new(connections)),
                keepalive: plan.keepalive,
                sticky: plan.keepalive
                    && matches!(plan.model, Model::Closed { vus } if vus <= connections),
            }
        };
        HttpTransport {
            connector,
            request: Template::new(plan),
            expect_body: plan.expect_body.clone(),
            retry_reused: plan.retry_reused,
            mode,
        }
    }

    async fn http1(&self, session: &mut Session, marks: &mut Marks) -> Result<Answer, Failure> {
        let Mode::Http1 {
            idle,
            permits,
            keepalive,
            sticky,
        } = &self.mode
        else {
            unreachable!("http1 exchange on an http2 transport")
        };
        let mut may_retry = self.retry_reused && *keepalive;
        loop {
            let mut lease = match session.lease.take() {
                Some(lease) => lease,
                None => {
                    let permit = permits.clone().acquire_owned().await.expect("never closed");
                    let conn = idle.lock().expect("pool lock").pop();
                    match conn {
                        Some(conn) => Lease {
                            conn,
                            _permit: permit,
                        },
                        None => Lease {
                            conn: self.connect1().await?,
                            _permit: permit,
                        },
                    }
                }
            };
            // A connection the server closed while idle is replaced before
            // anything is sent, as any pooling client does.
            if lease.conn.sender.ready().await.is_err() {
                lease.conn = self.connect1().await?;
                lease
                    .conn
                    .sender
                    .ready()
                    .await
                    .map_err(|e| Failure::classify(&e))?;
            }
            let reused = std::mem::replace(&mut lease.conn.used, true);
            marks.sent = Some(Instant::now());
            let result = lease
                .conn
                .sender
                .try_send_request(self.request.build())
                .await;
            let response = match result {
                Ok(response) => response,
                Err(e) => {
                    let failure = Failure::classify(e.error());
                    // A reused connection closed before any response byte:
                    // the request may be sent again on a fresh connection.
                    let closed = matches!(failure.class, FailureClass::Eof | FailureClass::Reset);
                    if may_retry && reused && closed {
                        may_retry = false;
                        marks.retried = true;
                        continue;
                    }
                    return Err(failure);
                }
            };
            let answer = self.read(response, marks).await?;
            if *keepalive {
                if *sticky {
                    session.lease = Some(lease);
                } else if !lease.conn.sender.is_closed() {
                    // Back to the pool before the permit is released, so the
                    // next holder of the permit finds it.
                    idle.lock().expect("pool lock").push(lease.conn);
                }
            }
            return Ok(answer);
        }
    }

    async fn http2(&self, marks: &mut Marks) -> Result<Answer, Failure> {
        let Mode::Http2 { slots, next } = &self.mode else {
            unreachable!("http2 exchange on an http1 transport")
        };
        let slot = &slots[next.fetch_add(1, Ordering::Relaxed) % slots.len()];
        let mut fresh = false;
        let mut sender = loop {
            let mut sender = {
                let mut slot = slot.lock().await;
                match &*slot {
                    Some(sender) if !sender.is_closed() => sender.clone(),
                    // Gone (GOAWAY, closed): one new connection, shared again.
                    _ => {
                        fresh = true;
                        slot.insert(self.connector.http2().await?).clone()
                    }
                }
            };
            match sender.ready().await {
                Ok(()) => break sender,
                // Closing before this request was sent (after a GOAWAY):
                // nothing was lost, use a new connection.
                Err(_) if !fresh => *slot.lock().await = None,
                Err(e) => return Err(Failure::classify(&e)),
            }
        };
        marks.sent = Some(Instant::now());
        let response = sender
            .send_request(self.request.build())
            .await
            .map_err(|e| Failure::classify(&e))?;
        self.read(response, marks).await
    }

    async fn connect1(&self) -> Result<Conn1, Failure> {
        Ok(Conn1 {
            sender: self.connector.http1().await?,
            used: false,
        })
    }

    /// Read the whole response; the head's arrival is the first byte.
    async fn read(
        &self,
        response: http::Response<Incoming>,
        marks: &mut Marks,
    ) -> Result<Answer, Failure> {
        marks.head = Some(Instant::now());
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut matcher = self
            .expect_body
            .as_ref()
            .map(|needle| BodyMatcher::new(needle));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Failure::classify(&e))?;
            if let (Some(matcher), Some(data)) = (&mut matcher, frame.data_ref()) {
                matcher.feed(data);
            }
        }
        Ok(Answer {
            status,
            body_ok: matcher.is_none_or(|m| m.found),
        })
    }
}

impl Transport for HttpTransport {
    type Session = Session;

    async fn exchange(&self, session: &mut Session, marks: &mut Marks) -> Result<Answer, Failure> {
        match self.mode {
            Mode::Http1 { .. } => self.http1(session, marks).await,
            Mode::Http2 { .. } => self.http2(marks).await,
        }
    }
}

impl Template {
    fn new(plan: &Plan) -> Self {
        let mut headers = plan.headers.clone();
        let uri = if plan.http2 {
            plan.uri.clone()
        } else {
            // HTTP/1.1 sends the origin form and a Host header.
            if !headers.contains_key(HOST) {
                let authority = plan.uri.authority().expect("checked by the plan").as_str();
                let host = HeaderValue::from_str(authority).expect("an authority is a valid value");
                headers.insert(HOST, host);
            }
            if !plan.keepalive {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            let path = plan.uri.path_and_query().map_or("/", |p| p.as_str());
            path.parse()
                .expect("the path of a valid URI is a valid URI")
        };
        if !headers.contains_key(USER_AGENT) {
            let agent = concat!("dropless-load/", env!("CARGO_PKG_VERSION"));
            headers.insert(USER_AGENT, HeaderValue::from_static(agent));
        }
        Template {
            method: plan.method.clone(),
            uri,
            headers,
            body: plan.body.clone(),
        }
    }

    fn build(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// Finds a substring across body chunks, keeping only a needle's length of
/// the previous chunk.
struct BodyMatcher<'a> {
    needle: &'a [u8],
    tail: Vec<u8>,
    found: bool,
}

impl<'a> BodyMatcher<'a> {
    fn new(needle: &'a [u8]) -> Self {
        BodyMatcher {
            needle,
            tail: Vec::new(),
            found: false,
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        if self.found {
            return;
        }
        self.tail.extend_from_slice(chunk);
        self.found = self
            .tail
            .windows(self.needle.len())
            .any(|w| w == self.needle);
        let keep = self.needle.len().saturating_sub(1).min(self.tail.len());
        self.tail.drain(..self.tail.len() - keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_matcher_finds_needles_across_chunks() {
        let mut m = BodyMatcher::new(b"hello");
        for chunk in [&b"xxhe"[..], b"l", b"lo world"] {
            m.feed(chunk);
        }
        assert!(m.found);
        let mut m = BodyMatcher::new(b"hello");
        m.feed(b"help");
        m.feed(b"lo");
        assert!(!m.found);
    }
}
