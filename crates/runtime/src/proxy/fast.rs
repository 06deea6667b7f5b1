//! The HTTP/1.1 fast path: plain keep-alive requests are proxied by the
//! client connection's own task, which parses the request head with
//! httparse, rewrites it into one buffer, writes it on a pooled plain socket
//! to the replica, and copies the response back, rewriting only its head.
//! No hyper dispatcher, no channel between tasks, no `HeaderMap`: a request
//! costs two reads and two writes and the parsing, as in nginx.
//!
//! Everything the fast path does not handle goes to hyper with the rest of
//! the connection ([`Exit::Handoff`], the bytes read so far in front): an
//! upgrade, a chunked or `Expect` or larger-than-buffered body, HTTP/1.0, a
//! request without `Host` or in absolute form, a head that does not parse or
//! is larger than the limit (hyper answers those with 400 and 431). The
//! rules the proxy follows (routing, safe retries, queueing, hop-by-hop
//! headers, `X-Forwarded-*`, in-flight counting until the last byte, drain)
//! are the same on both paths.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::{ClientInfo, Proxy, ProxyError, error_chain, headers};
use crate::balance::{self, Pick};
use crate::pool::PoolError;
use crate::replica::Replica;

/// Most headers parsed in a request or response head (hyper's default).
const MAX_HEADERS: usize = 100;
/// Largest response head accepted from a replica.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Initial size of a read buffer; it grows for larger heads.
const BUFFER: usize = 8 * 1024;
/// Most header names a `Connection` header may list on the fast path.
const MAX_CONNECTION_TOKENS: usize = 8;

/// How a client connection left the fast path.
#[derive(Debug)]
pub(super) enum Exit {
    /// The connection is finished: either side closed it, it asked to, it
    /// was idle too long, or the proxy stops.
    Closed,
    /// A request the fast path leaves to hyper: these bytes were read and
    /// not answered; hyper serves them and the rest of the connection.
    Handoff(Bytes),
}

/// What the fast path keeps of a request head once it decided to handle it.
struct Plan {
    /// Index of the service's host value in the head buffer, for routing.
    host: std::ops::Range<usize>,
    /// Length of the head in the client's buffer.
    head_len: usize,
    /// Length of the body that follows it.
    body_len: usize,
    /// A HEAD request: the response has no body whatever it says.
    head_method: bool,
    /// The client asked to close after this response.
    close: bool,
}

/// How the body of a response ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`, passed through as it is.
    Chunked,
    /// Until the replica closes; the client connection closes after it too.
    UntilClose,
}

/// A response head from a replica, interpreted.
struct ResponseHead {
    /// The head to send to the client.
    head: Vec<u8>,
    /// Its length in the replica's buffer.
    len: usize,
    status: u16,
    framing: Framing,
    /// Whether the replica keeps the connection open after the response.
    keep: bool,
}

/// The client connection cannot go on: writing to it failed, or a response
/// broke off after its head was sent.
struct Broken;

/// Why an exchange with a replica failed.
enum UpstreamFailure {
    /// Before any response byte: the request may go elsewhere.
    Before(PoolError),
    /// After some bytes of a response head that never completed or parsed.
    After(String),
}

/// A deadline that moves with every request and fires rarely: its timer is
/// re-armed only when it fires before the deadline, so a busy connection's
/// moving deadline costs no timer operation per request.
struct LazyDeadline {
    at: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl LazyDeadline {
    fn new(at: Instant) -> Self {
        Self {
            at,
            sleep: Box::pin(tokio::time::sleep_until(at)),
        }
    }

    fn set(&mut self, at: Instant) {
        self.at = at;
        if at < self.sleep.deadline() {
            self.sleep.as_mut().reset(at);
        }
    }

    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            std::task::ready!(self.sleep.as_mut().poll(cx));
            if Instant::now() >= self.at {
                return Poll::Ready(());
            }
            let at = self.at;
            self.sleep.as_mut().reset(at);
        }
    }
}

/// One client connection on the fast path.
struct Session<'a, 'c> {
    proxy: &'a Proxy,
    client: &'a ClientInfo,
    stream: &'a mut TcpStream,
    stop: &'a CancellationToken,
    cancelled: Pin<&'a mut WaitForCancellationFuture<'c>>,
    /// When the request being read must have arrived.
    deadline: LazyDeadline,
    /// When the replica must have started its response.
    response_deadline: LazyDeadline,
    /// Bytes read from the client and not yet handled; empty (no memory)
    /// while the connection waits for a request.
    input: BytesMut,
}

/// Serves the requests of a plain HTTP/1.1 client connection, starting with
/// the bytes `ahead` already read from it, until it ends or sends a request
/// the fast path leaves to hyper.
pub(super) async fn serve(
    proxy: &Proxy,
    client: &ClientInfo,
    stream: &mut TcpStream,
    ahead: Bytes,
    stop: &CancellationToken,
) -> Exit {
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    let timeout = proxy.config.header_read_timeout;
    let mut session = Session {
        proxy,
        client,
        stream,
        stop,
        cancelled,
        deadline: LazyDeadline::new(Instant::now() + timeout),
        response_deadline: LazyDeadline::new(Instant::now() + proxy.config.response_timeout),
        input: BytesMut::from(&ahead[..]),
    };
    session.run().await
}

impl Session<'_, '_> {
    async fn run(&mut self) -> Exit {
        loop {
            let plan = match self.read_request().await {
                Next::Request(plan) => plan,
                Next::Closed => return Exit::Closed,
                Next::Hyper => return Exit::Handoff(std::mem::take(&mut self.input).freeze()),
            };
            let close = match self.proxy_request(&plan).await {
                Ok(close) => close || plan.close || self.stop.is_cancelled(),
                Err(Broken) => return Exit::Closed,
            };
            if close {
                let _ = self.stream.shutdown().await;
                return Exit::Closed;
            }
        }
    }

    /// Waits for a request and reads its head and body.
    async fn read_request(&mut self) -> Next {
        let timeout = self.proxy.config.header_read_timeout;
        self.deadline.set(Instant::now() + timeout);
        if self.input.is_empty() {
            // Idle: no buffer held, the task parked on the socket's readiness.
            self.input = BytesMut::new();
            let ready = poll_fn(|cx| {
                if let Poll::Ready(r) = self.stream.poll_read_ready(cx) {
                    return Poll::Ready(r.is_ok());
                }
                if self.cancelled.as_mut().poll(cx).is_ready()
                    || self.deadline.poll_expired(cx).is_ready()
                {
                    return Poll::Ready(false);
                }
                Poll::Pending
            })
            .await;
            if !ready {
                return Next::Closed;
            }
            self.input.reserve(BUFFER);
        }
        let max_head = self.proxy.config.max_header_bytes;
        loop {
            if !self.input.is_empty() {
                match parse_request(&self.input, self.proxy.config.retry_body_limit) {
                    Parsed::Complete(plan) => {
                        let total = plan.head_len + plan.body_len;
                        while self.input.len() < total {
                            if self.input.capacity() - self.input.len() < total - self.input.len() {
                                self.input.reserve(total - self.input.len());
                            }
                            if self.fill_within_deadline().await == 0 {
                                return Next::Closed;
                            }
                        }
                        return Next::Request(plan);
                    }
                    Parsed::Partial if self.input.len() <= max_head => {}
                    Parsed::Partial | Parsed::NotFast => return Next::Hyper,
                }
            }
            if self.input.capacity() == self.input.len() {
                self.input.reserve(self.input.len().max(BUFFER));
            }
            if self.fill_within_deadline().await == 0 {
                return Next::Closed;
            }
        }
    }

    /// Reads more of a request (head, or a body to buffer) before the header
    /// read deadline; 0 at its end, and when the deadline passes or the read
    /// fails (the connection is then closed, as hyper closes it).
    async fn fill_within_deadline(&mut self) -> usize {
        let read = self.stream.read_buf(&mut self.input);
        tokio::pin!(read);
        let deadline = &mut self.deadline;
        let result = poll_fn(|cx| {
            if let Poll::Ready(r) = read.as_mut().poll(cx) {
                return Poll::Ready(r.ok());
            }
            deadline.poll_expired(cx).map(|()| None)
        })
        .await;
        result.unwrap_or(0)
    }

    /// Proxies the request at the front of the input and removes it;
    /// returns whether the connection must close after it. `Err` when the
    /// client connection failed.
    async fn proxy_request(&mut self, plan: &Plan) -> Result<bool, Broken> {
        let total = plan.head_len + plan.body_len;
        let host = std::str::from_utf8(&self.input[plan.host.clone()]).ok();
        let Some(service) = self.proxy.router.route(host).cloned() else {
            let err = ProxyError::UnknownHost {
                host: host.unwrap_or_default().to_string(),
            };
            self.input.advance(total);
            return self.send_error(&err, plan).await;
        };
        let out = upstream_request(&self.input[..total], plan, self.client);
        self.input.advance(total);
        if self.input.is_empty() {
            self.input = BytesMut::new();
        }
        let proxy = self.proxy;
        let config = &proxy.config;
        let deadline = Instant::now() + config.queue_timeout;
        let mut tried: Vec<Arc<Replica>> = Vec::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(pick) = balance::pick(&service, &tried, deadline).await else {
                let err = ProxyError::NoReplica {
                    service: service.name().to_string(),
                    waited: config.queue_timeout,
                };
                return self.send_error(&err, plan).await;
            };
            self.response_deadline
                .set(Instant::now() + config.response_timeout);
            let exchanged = {
                let exchange = exchange(&pick, &out);
                tokio::pin!(exchange);
                let deadline = &mut self.response_deadline;
                poll_fn(|cx| {
                    if let Poll::Ready(result) = exchange.as_mut().poll(cx) {
                        return Poll::Ready(Some(result));
                    }
                    deadline.poll_expired(cx).map(|()| None)
                })
                .await
            };
            let Some(exchanged) = exchanged else {
                let err = ProxyError::Timeout {
                    replica: pick.replica.name().to_string(),
                    waited: config.response_timeout,
                };
                drop(pick);
                return self.send_error(&err, plan).await;
            };
            match exchanged {
                Ok((upstream, buf, head)) => {
                    return self.relay(pick, upstream, buf, head, plan).await;
                }
                Err(failure) => {
                    let (message, retry_safe) = match failure {
                        UpstreamFailure::Before(e) => (error_chain(&e), true),
                        UpstreamFailure::After(m) => (m, false),
                    };
                    let err = ProxyError::Upstream {
                        replica: pick.replica.name().to_string(),
                        message,
                        retry_safe,
                    };
                    if !err.retry_safe() || attempt >= config.max_attempts {
                        drop(pick);
                        return self.send_error(&err, plan).await;
                    }
                    tracing::info!("{err}; retrying on another replica");
                    tried.push(Arc::clone(&pick.replica));
                }
            }
        }
    }

    /// Sends the response whose head came from the replica, then its body;
    /// the request stays counted on the replica until the last byte is
    /// written. Returns whether the client connection must close.
    async fn relay(
        &mut self,
        pick: Pick,
        mut upstream: TcpStream,
        mut buf: BytesMut,
        head: ResponseHead,
        plan: &Plan,
    ) -> Result<bool, Broken> {
        let framing = match head.framing {
            _ if plan.head_method || head.status == 204 || head.status == 304 => Framing::Empty,
            f => f,
        };
        let close = plan.close || self.stop.is_cancelled() || framing == Framing::UntilClose;
        let mut first = head.head;
        if close {
            first.truncate(first.len() - 2);
            first.extend_from_slice(b"connection: close\r\n\r\n");
        }
        buf.advance(head.len);
        let mut body = Body::new(framing);
        let taken = body.take(&buf).map_err(|e| self.body_failed(&pick, &e))?;
        first.extend_from_slice(&buf[..taken]);
        let mut extra = buf.len() > taken;
        if self.stream.write_all(&first).await.is_err() {
            return Err(Broken);
        }
        drop(first);
        while !body.done() {
            buf.clear();
            if buf.capacity() < BUFFER {
                buf.reserve(BUFFER);
            }
            let n = match upstream.read_buf(&mut buf).await {
                Ok(0) if framing == Framing::UntilClose => break,
                Ok(0) => return Err(self.body_failed(&pick, "the replica closed mid-body")),
                Ok(n) => n,
                Err(e) => return Err(self.body_failed(&pick, &e.to_string())),
            };
            let taken = body
                .take(&buf[..n])
                .map_err(|e| self.body_failed(&pick, &e))?;
            extra = n > taken;
            if self.stream.write_all(&buf[..taken]).await.is_err() {
                return Err(Broken);
            }
        }
        // Bytes beyond the response: the connection is out of step.
        if head.keep && !extra && framing != Framing::UntilClose {
            pick.pool.put_raw(upstream);
        }
        Ok(close)
    }

    /// Logs a response body the replica broke off; the client connection
    /// is closed, which is all a client can be told once the head is sent.
    fn body_failed(&self, pick: &Pick, why: &str) -> Broken {
        tracing::warn!(
            peer = %self.client.peer,
            "replica {} broke off a response: {why}",
            pick.replica.name()
        );
        Broken
    }

    /// Answers with the proxy's own error response.
    async fn send_error(&mut self, err: &ProxyError, plan: &Plan) -> Result<bool, Broken> {
        tracing::warn!(peer = %self.client.peer, "{err}");
        let close = plan.close || self.stop.is_cancelled();
        let bytes = err.to_http1(close, plan.head_method);
        match self.stream.write_all(&bytes).await {
            Ok(()) => Ok(close),
            Err(_) => Err(Broken),
        }
    }
}

/// What comes next on a client connection.
enum Next {
    /// A request for the fast path, head and body read.
    Request(Plan),
    /// Nothing: the connection ends.
    Closed,
    /// A request for hyper.
    Hyper,
}

/// What parsing the front of a client's input found.
enum Parsed {
    /// A request the fast path handles (its body may not be read yet).
    Complete(Plan),
    /// More bytes are needed.
    Partial,
    /// A request for hyper (or not a valid request: hyper answers it).
    NotFast,
}

/// Parses the request head at the front of `input` and decides whether the
/// fast path handles it.
fn parse_request(input: &[u8], body_limit: usize) -> Parsed {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(input, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::NotFast,
    };
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Parsed::NotFast;
    };
    if req.version != Some(1) || method == "CONNECT" || !path.starts_with('/') {
        return Parsed::NotFast;
    }
    let mut host = None;
    let mut body_len: Option<usize> = None;
    let mut close = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Parsed::NotFast;
            }
            let start = h.value.as_ptr() as usize - input.as_ptr() as usize;
            host = Some(start..start + h.value.len());
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok());
            match (n, body_len) {
                (Some(n), None) => body_len = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return Parsed::NotFast,
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in tokens(h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::NotFast;
                }
            }
            if tokens(h.value).count() > MAX_CONNECTION_TOKENS {
                return Parsed::NotFast;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return Parsed::NotFast;
        }
    }
    let (Some(host), body_len) = (host, body_len.unwrap_or(0)) else {
        return Parsed::NotFast;
    };
    if body_len > body_limit {
        return Parsed::NotFast;
    }
    Parsed::Complete(Plan {
        host,
        head_len,
        body_len,
        head_method: method == "HEAD",
        close,
    })
}

/// The comma-separated tokens of a header value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether `name` is hop-by-hop: a standard one or named in `Connection`.
fn is_hop_by_hop(name: &str, named: &[&[u8]]) -> bool {
    headers::HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_str()))
        || named
            .iter()
            .any(|n| name.as_bytes().eq_ignore_ascii_case(n))
}

/// The header names a `Connection` header lists, among `headers`.
fn connection_named<'h>(headers: &[httparse::Header<'h>]) -> Vec<&'h [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| tokens(h.value))
        .collect()
}

/// The request to send to the replica: the client's request line and
/// headers without the hop-by-hop ones, `X-Forwarded-For` extended,
/// `X-Forwarded-Proto` and `-Host` set, then the body.
fn upstream_request(request: &[u8], plan: &Plan, client: &ClientInfo) -> Vec<u8> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    // Parsed before: cannot fail.
    let _ = req.parse_with_uninit_headers(request, &mut headers);
    let mut out = Vec::with_capacity(request.len() + 128);
    out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let named = connection_named(req.headers);
    let mut prior_for = None;
    for h in req.headers.iter() {
        if is_hop_by_hop(h.name, &named) {
            continue;
        }
        if h.name
            .eq_ignore_ascii_case(headers::X_FORWARDED_FOR.as_str())
        {
            prior_for.get_or_insert(h.value);
            continue;
        }
        if h.name
            .eq_ignore_ascii_case(headers::X_FORWARDED_PROTO.as_str())
            || h.name
                .eq_ignore_ascii_case(headers::X_FORWARDED_HOST.as_str())
        {
            continue;
        }
        push_header(&mut out, h.name.as_bytes(), h.value);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prior) = prior_for {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client.ip.as_bytes());
    out.extend_from_slice(b"\r\nx-forwarded-proto: ");
    out.extend_from_slice(client.proto.as_bytes());
    out.extend_from_slice(b"\r\n");
    push_header(&mut out, b"x-forwarded-host", &request[plan.host.clone()]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&request[plan.head_len..]);
    out
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Sends `request` to the picked replica on a pooled socket (or a new one)
/// and reads the response head. A pooled socket the replica closed while it
/// was idle fails before any response byte: the next one (or a new one)
/// gets the request, without counting an attempt.
async fn exchange(
    pick: &Pick,
    request: &[u8],
) -> Result<(TcpStream, BytesMut, ResponseHead), UpstreamFailure> {
    let addr = pick.pool.addr();
    loop {
        let (mut upstream, pooled) = match pick.pool.take_raw() {
            Some(s) => (s, true),
            None => (
                pick.pool
                    .connect_raw()
                    .await
                    .map_err(UpstreamFailure::Before)?,
                false,
            ),
        };
        let mut buf = BytesMut::with_capacity(BUFFER);
        let result = match upstream.write_all(request).await {
            Ok(()) => read_response_head(&mut upstream, addr, &mut buf).await,
            Err(source) => Err(UpstreamFailure::Before(PoolError::Io { addr, source })),
        };
        match result {
            Ok(head) => return Ok((upstream, buf, head)),
            Err(UpstreamFailure::Before(_)) if pooled => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Reads a response head from the replica at `addr`. Interim (1xx)
/// responses are skipped, as a client skips them: the fast path never sends
/// `Expect`, and a 103 is only a hint.
async fn read_response_head(
    upstream: &mut TcpStream,
    addr: std::net::SocketAddr,
    buf: &mut BytesMut,
) -> Result<ResponseHead, UpstreamFailure> {
    loop {
        let n = match upstream.read_buf(buf).await {
            Ok(n) => n,
            Err(source) if buf.is_empty() => {
                return Err(UpstreamFailure::Before(PoolError::Io { addr, source }));
            }
            Err(e) => {
                return Err(UpstreamFailure::After(format!(
                    "reading the response head: {e}"
                )));
            }
        };
        if n == 0 {
            if buf.is_empty() {
                let source = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a response",
                );
                return Err(UpstreamFailure::Before(PoolError::Io { addr, source }));
            }
            return Err(UpstreamFailure::After(
                "connection closed in the response head".into(),
            ));
        }
        loop {
            match parse_response(buf) {
                Ok(Some(head)) if (100..200).contains(&head.status) && head.status != 101 => {
                    buf.advance(head.len);
                }
                Ok(Some(head)) if head.status == 101 => {
                    return Err(UpstreamFailure::After(
                        "the replica switched protocols without being asked".into(),
                    ));
                }
                Ok(Some(head)) => return Ok(head),
                Ok(None) if buf.len() > MAX_RESPONSE_HEAD => {
                    return Err(UpstreamFailure::After("response head too large".into()));
                }
                Ok(None) => break,
                Err(e) => return Err(UpstreamFailure::After(e)),
            }
            if buf.is_empty() {
                break;
            }
        }
        if buf.capacity() == buf.len() {
            buf.reserve(BUFFER);
        }
    }
}

/// Parses a response head at the front of `buf` and writes the head the
/// client gets: `HTTP/1.1`, the status and reason, the headers without the
/// hop-by-hop ones (`Transfer-Encoding` stays: a chunked body passes
/// through as it is).
fn parse_response(buf: &[u8]) -> Result<Option<ResponseHead>, String> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("invalid response head: {e}")),
    };
    let status = resp.code.unwrap_or_default();
    let mut keep = resp.version == Some(1);
    let mut framing = Framing::UntilClose;
    let mut length = None;
    let named = connection_named(resp.headers);
    let mut head = Vec::with_capacity(len + 32);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(itoa3(status).as_slice());
    head.push(b' ');
    head.extend_from_slice(resp.reason.unwrap_or_default().as_bytes());
    head.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            match (n, length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => continue,
                _ => return Err("invalid content-length in the response".into()),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if !tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"chunked")) {
                return Err("a transfer-encoding other than chunked".into());
            }
            framing = Framing::Chunked;
            push_header(&mut head, name.as_bytes(), h.value);
            continue;
        } else if name.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    keep = false;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    keep = true;
                }
            }
        }
        if is_hop_by_hop(name, &named) {
            continue;
        }
        push_header(&mut head, name.as_bytes(), h.value);
    }
    match (framing, length) {
        (Framing::Chunked, Some(_)) => {
            return Err("both content-length and chunked in the response".into());
        }
        (_, Some(n)) => framing = Framing::Length(n),
        _ => {}
    }
    if (100..200).contains(&status) || status == 204 || status == 304 {
        framing = Framing::Empty;
    }
    head.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead {
        head,
        len,
        status,
        framing,
        keep,
    }))
}

/// A status code as its three digits.
fn itoa3(n: u16) -> [u8; 3] {
    let n = n.min(999);
    [
        b'0' + (n / 100) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]
}

/// Follows a response body as it passes through, to find where it ends.
#[derive(Debug)]
struct Body {
    framing: Framing,
    /// Bytes left of a `Content-Length` body or of the current chunk.
    remaining: u64,
    chunk: ChunkState,
}

/// Where a chunked body is, between the bytes seen so far and the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// In the hex size of a chunk (`digits` read so far).
    Size { digits: u8 },
    /// In a chunk extension, up to the CR.
    Extension,
    /// Expecting the LF of the size line.
    SizeLf,
    /// In chunk data.
    Data,
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// In a trailer line, up to the CR.
    Trailer,
    /// Expecting the LF of a trailer line.
    TrailerLf,
    /// Expecting the LF of the final empty line.
    EndLf,
    /// The body ended.
    Done,
}

impl Body {
    fn new(framing: Framing) -> Self {
        Self {
            framing,
            remaining: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunk: ChunkState::Size { digits: 0 },
        }
    }

    /// Whether the whole body went by.
    fn done(&self) -> bool {
        match self.framing {
            Framing::Empty => true,
            Framing::Length(_) => self.remaining == 0,
            Framing::Chunked => self.chunk == ChunkState::Done,
            Framing::UntilClose => false,
        }
    }

    /// Takes the body's bytes from the front of `bytes`; returns how many
    /// belong to it (fewer than given only when the body ended).
    fn take(&mut self, bytes: &[u8]) -> Result<usize, String> {
        match self.framing {
            Framing::Empty => Ok(0),
            Framing::UntilClose => Ok(bytes.len()),
            Framing::Length(_) => {
                let n = bytes
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= n as u64;
                Ok(n)
            }
            Framing::Chunked => self.take_chunked(bytes),
        }
    }

    fn take_chunked(&mut self, bytes: &[u8]) -> Result<usize, String> {
        use ChunkState::*;
        let mut i = 0;
        while i < bytes.len() && self.chunk != Done {
            if self.chunk == Data {
                let n =
                    (bytes.len() - i).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= n as u64;
                i += n;
                if self.remaining == 0 {
                    self.chunk = DataCr;
                }
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.chunk = match (self.chunk, b) {
                (Size { digits }, b) if b.is_ascii_hexdigit() => {
                    if digits >= 15 {
                        return Err("chunk size too large".into());
                    }
                    let d = (b as char).to_digit(16).unwrap_or_default();
                    self.remaining = self.remaining * 16 + u64::from(d);
                    Size { digits: digits + 1 }
                }
                (Size { digits }, b';' | b' ' | b'\t') if digits > 0 => Extension,
                (Size { digits }, b'\r') if digits > 0 => SizeLf,
                (Extension, b'\r') => SizeLf,
                (Extension, _) => Extension,
                (SizeLf, b'\n') if self.remaining == 0 => TrailerStart,
                (SizeLf, b'\n') => Data,
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Size { digits: 0 },
                (TrailerStart, b'\r') => EndLf,
                (Trailer, b'\r') => TrailerLf,
                (TrailerStart | Trailer, _) => Trailer,
                (TrailerLf, b'\n') => TrailerStart,
                (EndLf, b'\n') => Done,
                (state, b) => return Err(format!("invalid chunked body at {state:?} ({b:#04x})")),
            };
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ClientInfo {
        ClientInfo {
            peer: "127.0.0.1:5000".parse().unwrap(),
            ip: headers::client_ip("127.0.0.1".parse().unwrap()),
            proto: "http",
            activity: None,
        }
    }

    fn plan(input: &[u8]) -> Plan {
        match parse_request(input, 1024) {
            Parsed::Complete(plan) => plan,
            Parsed::Partial => panic!("partial"),
            Parsed::NotFast => panic!("not fast"),
        }
    }

    #[test]
    fn plain_requests_are_fast_and_the_rest_is_hyper_s() {
        let p = plan(b"GET /a HTTP/1.1\r\nHost: x:1\r\n\r\n");
        assert_eq!((p.head_len, p.body_len, p.close), (30, 0, false));
        let p = plan(
            b"POST / HTTP/1.1\r\nhost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        );
        assert_eq!((p.body_len, p.close), (3, true));
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n", 1024),
            Parsed::Partial
        ));
        for not_fast in [
            &b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3000\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n",
            b"CONNECT x:1 HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(
                matches!(parse_request(not_fast, 1024), Parsed::NotFast),
                "{}",
                String::from_utf8_lossy(not_fast)
            );
        }
    }

    #[test]
    fn the_upstream_request_drops_hop_by_hop_headers_and_adds_forwarded_ones() {
        let input = b"POST /p?q=1 HTTP/1.1\r\nHost: example.test\r\nConnection: keep-alive, x-secret\r\n\
            x-secret: 1\r\nTE: trailers\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n\
            Accept: */*\r\nContent-Length: 2\r\n\r\nhi";
        let out = upstream_request(input, &plan(input), &info());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\nContent-Length: 2\r\n\
             x-forwarded-for: 10.0.0.1, 127.0.0.1\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: example.test\r\n\r\nhi"
        );
    }

    #[test]
    fn response_heads_are_rewritten_and_framed() {
        let input = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\nKeep-Alive: timeout=5\r\nx-version: v2\r\n\r\nhello";
        let head = parse_response(input).unwrap().unwrap();
        assert_eq!(
            String::from_utf8(head.head).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nx-version: v2\r\n\r\n"
        );
        assert_eq!(
            (head.framing, head.keep, head.len),
            (Framing::Length(5), true, input.len() - 5)
        );
        let chunked = parse_response(
            b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (chunked.framing, chunked.keep, chunked.status),
            (Framing::Chunked, false, 503)
        );
        let until_close = parse_response(b"HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!(until_close.framing, Framing::UntilClose);
        let empty = parse_response(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(empty.framing, Framing::Empty);
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n")
                .unwrap()
                .is_none()
        );
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n")
                .is_err()
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n").is_err());
        assert!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            .is_err()
        );
    }

    #[test]
    fn a_chunked_body_ends_where_its_last_chunk_and_trailers_end() {
        let body = b"3;x=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: 1\r\n\r\nNEXT";
        // Whole, and a byte at a time: the end is found at the same place.
        let mut whole = Body::new(Framing::Chunked);
        assert_eq!(whole.take(body).unwrap(), body.len() - 4);
        assert!(whole.done());
        let mut bytewise = Body::new(Framing::Chunked);
        let mut taken = 0;
        for b in body.chunks(1) {
            if bytewise.done() {
                break;
            }
            taken += bytewise.take(b).unwrap();
        }
        assert_eq!(taken, body.len() - 4);
        let mut bad = Body::new(Framing::Chunked);
        assert!(bad.take(b"zz\r\n").is_err());
        let mut bad_end = Body::new(Framing::Chunked);
        assert!(bad_end.take(b"1\r\naXY").is_err());
    }

    #[test]
    fn a_length_body_takes_what_it_is_owed() {
        let mut body = Body::new(Framing::Length(5));
        assert_eq!(body.take(b"abc").unwrap(), 3);
        assert!(!body.done());
        assert_eq!(body.take(b"deEXTRA").unwrap(), 2);
        assert!(body.done());
    }
}
