//! HTTP clients on our own sockets, so that every error is seen at its
//! source (connect, TLS, write, read) and classified once: a lean HTTP/1.1
//! connection owned by the loop that uses it, and hyper 1 for HTTP/2.
//!
//! The scheduler only sees the [`Transport`] trait; [`HttpTransport`] is the
//! real one (HTTP/1.1 keep-alive pool, a connection per request, or HTTP/2
//! multiplexing) and tests plug in others.

mod connect;
mod http1;
mod pool;
pub(crate) mod probe;
mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, HeaderValue, USER_AGENT};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::{Model, Plan};
use crate::outcome::{Failure, FailureClass};

pub(crate) use connect::Connector;
use connect::{Stream, peer_closed};
use pool::Pool;

/// What happened on the wire during one exchange, besides its result.
#[derive(Debug, Default)]
pub(crate) struct Marks {
    /// When the request was handed to a ready connection (last attempt).
    pub(crate) sent: Option<Instant>,
    /// When the first response byte arrived (HTTP/1.1) or the response head
    /// (HTTP/2).
    pub(crate) head: Option<Instant>,
    /// Whether the request was retried on a fresh connection.
    pub(crate) retried: bool,
    /// Set by the scheduler: the request starts late because the generator
    /// itself fell behind, one of a burst of overdue requests. It waits for
    /// a connection another request gives back, as long as one came back
    /// within the last [`OVERDUE_WAIT`] and for [`OVERDUE_MAX`] at most,
    /// before it opens one: the burst is
    /// the generator's doing, and thousands of connects at once would
    /// overflow the server's accept queue.
    pub(crate) overdue: bool,
}

/// How long an overdue request ([`Marks::overdue`]) waits while no
/// connection comes back before it may open one (a server that closed its
/// keep-alive connections meanwhile gives none back).
const OVERDUE_WAIT: Duration = Duration::from_millis(100);

/// The longest an overdue request waits for a connection to come back,
/// however often connections do: a pool no larger than the steady
/// concurrency (a slow server) serves the backlog of a pause no faster than
/// new arrivals come, and would keep it for the rest of the run.
const OVERDUE_MAX: Duration = Duration::from_millis(200);

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

    /// Called once scheduling has ended and the requests have finished,
    /// before the report (sessions mode: the streams catch up and stop).
    fn finish(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// A new session for a loop on sending thread `lane` (see
    /// [`Workers`](crate::Workers)).
    fn session(&self, lane: usize) -> Self::Session {
        let _ = lane;
        Self::Session::default()
    }

    /// What the sessions saw so far (sessions mode only).
    fn sessions(&self) -> Option<crate::report::Sessions> {
        None
    }
}

/// The real HTTP transport of a run.
pub(crate) struct HttpTransport {
    connector: Connector,
    request: Template,
    expect_body: Option<Bytes>,
    retry_reused: bool,
    mode: Mode,
    /// Connections being opened at once (TCP and TLS handshakes).
    connecting: Semaphore,
}

/// The connection an HTTP/1.1 loop holds between requests (sticky mode).
#[derive(Default)]
pub(crate) struct Session {
    lease: Option<Lease>,
    /// The sending thread the loop runs on: whose idle connections it uses.
    lane: usize,
}

enum Mode {
    Http1 {
        idle: Pool<Conn1>,
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

type Conn1 = http1::Conn<Stream>;

struct Lease {
    conn: Conn1,
    /// The lane whose thread opened the connection.
    home: usize,
    _permit: OwnedSemaphorePermit,
}

/// The request, parsed once; each send clones cheap parts.
#[derive(Clone)]
pub(crate) struct Template {
    method: Method,
    /// Absolute URI (HTTP/2 takes scheme and authority from it).
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    /// The whole HTTP/1.1 request, serialized once.
    wire: Bytes,
    /// A HEAD request: its response has no body.
    head: bool,
}

impl HttpTransport {
    /// The transport of `plan`, whose requests run on `lanes` sending threads.
    pub(crate) fn new(plan: &Plan, connector: Connector, lanes: usize) -> Self {
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
                idle: Pool::new(lanes),
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
            connecting: Semaphore::new(plan.max_connecting.min(Semaphore::MAX_PERMITS)),
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
                    let patient = marks.overdue && *keepalive;
                    let (conn, home) = self.idle_or_new(idle, session.lane, patient).await?;
                    Lease {
                        conn,
                        home,
                        _permit: permit,
                    }
                }
            };
            // A connection the server closed while idle is replaced before
            // anything is sent, as any pooling client does.
            if lease.conn.used && peer_closed(lease.conn.stream()) {
                lease.conn = self.connect1().await?;
                lease.home = session.lane;
            }
            let reused = lease.conn.used;
            marks.sent = Some(Instant::now());
            let mut matcher = self.expect_body.as_deref().map(BodyMatcher::new);
            let result = lease
                .conn
                .exchange(
                    &self.request.wire,
                    self.request.head,
                    &mut marks.head,
                    |chunk| {
                        if let Some(m) = matcher.as_mut() {
                            m.feed(chunk);
                        }
                    },
                )
                .await;
            let status = match result {
                Ok(status) => status,
                // A reused connection closed before any response byte: the
                // request may be sent again on a fresh connection.
                Err(failure)
                    if may_retry
                        && reused
                        && marks.head.is_none()
                        && matches!(failure.class, FailureClass::Eof | FailureClass::Reset) =>
                {
                    may_retry = false;
                    marks.retried = true;
                    continue;
                }
                Err(failure) => return Err(failure),
            };
            if *keepalive && lease.conn.reusable {
                if *sticky {
                    session.lease = Some(lease);
                } else {
                    // Back to the pool before the permit is released, so the
                    // next holder of the permit finds it.
                    idle.put(lease.home, lease.conn);
                }
            }
            return Ok(Answer {
                status,
                body_ok: matcher.is_none_or(|m| m.found),
            });
        }
    }

    async fn http2(&self, marks: &mut Marks) -> Result<Answer, Failure> {
        let Mode::Http2 { slots, next } = &self.mode else {
            unreachable!("http2 exchange on an http1 transport")
        };
        let slot = &slots[next.fetch_add(1, Ordering::Relaxed) % slots.len()];
        // A connection going away (after a GOAWAY) may refuse a request
        // before sending it: nothing was lost, and like any HTTP/2 client we
        // send it on a new connection. Once sent, a failure is the outcome.
        let mut fresh = false;
        loop {
            let mut sender = {
                let mut slot = slot.lock().await;
                match &*slot {
                    Some(sender) if !sender.is_closed() => sender.clone(),
                    _ => {
                        fresh = true;
                        slot.insert(self.connector.http2().await?).clone()
                    }
                }
            };
            let unsent = match sender.ready().await {
                Ok(()) => {
                    marks.sent = Some(Instant::now());
                    match sender.try_send_request(self.request.build()).await {
                        Ok(response) => return self.read(response, marks).await,
                        Err(e) if e.message().is_some() => Failure::classify(e.error()),
                        Err(e) => return Err(Failure::classify(e.error())),
                    }
                }
                Err(e) => Failure::classify(&e),
            };
            if fresh {
                return Err(unsent);
            }
            *slot.lock().await = None;
        }
    }

    /// An idle connection for `lane`, or a new one once a connect slot is
    /// free, whichever comes first; a `patient` request (overdue) asks for
    /// a slot only once no connection came back for [`OVERDUE_WAIT`], or
    /// after [`OVERDUE_MAX`]. A burst of requests (the catch-up after the
    /// generator was paused) so reuses the connections its first requests
    /// give back, instead of opening one each at once: thousands of
    /// connections the server has not accepted yet would overflow its
    /// accept queue (a SYN dropped is sent again after 1 s, and the server
    /// is blamed for it).
    async fn idle_or_new(
        &self,
        idle: &Pool<Conn1>,
        lane: usize,
        patient: bool,
    ) -> Result<(Conn1, usize), Failure> {
        // One place in the slots' queue for the whole wait (a new one at
        // each wake-up would go to the back of it).
        let slot = self.connecting.acquire();
        tokio::pin!(slot);
        // A patient request waits while connections keep coming back (to
        // any waiter): it may connect once none came back for a while. So
        // does any request while patient ones wait: it is behind them.
        let patient = patient || idle.draining();
        let mut patience = patient.then(|| {
            (
                Box::pin(tokio::time::sleep(OVERDUE_WAIT)),
                idle.wait_patiently(),
                Instant::now() + OVERDUE_MAX,
            )
        });
        let mut returns = idle.returns();
        loop {
            if let Some(found) = idle.take(lane) {
                return Ok(found);
            }
            tokio::select! {
                biased;
                () = idle.returned() => {}
                () = async { patience.as_mut().expect("checked").0.as_mut().await }, if patience.is_some() => {
                    let (now, seen) = (Instant::now(), idle.returns());
                    match patience.as_mut() {
                        Some((timer, _, give_up)) if seen != returns && now < *give_up => {
                            returns = seen;
                            timer.as_mut().reset((now + OVERDUE_WAIT).min(*give_up));
                        }
                        _ => patience = None,
                    }
                }
                slot = &mut slot, if patience.is_none() => {
                    let _slot = slot.expect("never closed");
                    return Ok((self.open1().await?, lane));
                }
            }
        }
    }

    /// A new connection, once a connect slot is free.
    async fn connect1(&self) -> Result<Conn1, Failure> {
        let _slot = self.connecting.acquire().await.expect("never closed");
        self.open1().await
    }

    /// Opens a connection. The connect future (a TLS handshake's state
    /// included) is boxed: inline, it would make every request's future as
    /// large, and be copied with it, though keep-alive rarely connects.
    async fn open1(&self) -> Result<Conn1, Failure> {
        Ok(http1::Conn::new(Box::pin(self.connector.stream()).await?))
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

    fn session(&self, lane: usize) -> Session {
        Session { lease: None, lane }
    }

    async fn exchange(&self, session: &mut Session, marks: &mut Marks) -> Result<Answer, Failure> {
        match self.mode {
            Mode::Http1 { .. } => self.http1(session, marks).await,
            // Boxed, so that HTTP/1.1 requests do not carry the size of
            // hyper's HTTP/2 futures.
            Mode::Http2 { .. } => Box::pin(self.http2(marks)).await,
        }
    }
}

impl Template {
    pub(crate) fn new(plan: &Plan) -> Self {
        let mut headers = plan.headers.clone();
        if !headers.contains_key(USER_AGENT) {
            let agent = concat!("dropless-load/", env!("CARGO_PKG_VERSION"));
            headers.insert(USER_AGENT, HeaderValue::from_static(agent));
        }
        Template {
            method: plan.method.clone(),
            uri: plan.uri.clone(),
            wire: serialize_http1(plan, &headers),
            headers,
            body: plan.body.clone(),
            head: plan.method == Method::HEAD,
        }
    }

    pub(crate) fn build(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// The HTTP/1.1 request: origin-form target, Host, the headers, a
/// Content-Length when there is a body (or the method expects one), and
/// `Connection: close` without keep-alive.
fn serialize_http1(plan: &Plan, headers: &HeaderMap) -> Bytes {
    let mut wire = BytesMut::with_capacity(256 + plan.body.len());
    let path = plan.uri.path_and_query().map_or("/", |p| p.as_str());
    wire.put_slice(format!("{} {path} HTTP/1.1\r\n", plan.method).as_bytes());
    let mut header = |name: &[u8], value: &[u8]| {
        wire.put_slice(name);
        wire.put_slice(b": ");
        wire.put_slice(value);
        wire.put_slice(b"\r\n");
    };
    if !headers.contains_key(HOST) {
        let authority = plan.uri.authority().expect("checked by the plan").as_str();
        header(b"host", authority.as_bytes());
    }
    for (name, value) in headers {
        if name != CONNECTION && name != CONTENT_LENGTH {
            header(name.as_str().as_bytes(), value.as_bytes());
        }
    }
    let expects_body = matches!(plan.method, Method::POST | Method::PUT | Method::PATCH);
    if !plan.body.is_empty() || expects_body {
        header(b"content-length", plan.body.len().to_string().as_bytes());
    }
    if !plan.keepalive {
        header(b"connection", b"close");
    } else if let Some(value) = headers.get(CONNECTION) {
        header(b"connection", value.as_bytes());
    }
    wire.put_slice(b"\r\n");
    wire.put_slice(&plan.body);
    wire.freeze()
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
