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
//! request without `Host` or in absolute form. A head that does not parse or
//! is larger than the limit is refused here (400, 431), the connection closed. The
//! rules the proxy follows (routing, safe retries, queueing, hop-by-hop
//! headers, `X-Forwarded-*`, in-flight counting until the last byte, drain)
//! are the same on both paths.

mod body;
mod head;
pub(super) mod upstream;

use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::buffer::{self, BUFFER};
use super::forward::{self, LazyDeadline, Sent};
use super::front::{self, ClientIo};
use super::park::StopLinger;
use super::{ClientInfo, Proxy, ProxyError};
use crate::ops::{ErrorKind, Trace, request_id};
use crate::proxy::affinity::HELD_HEADER;
use crate::proxy::balance::Pick;
use body::Body;
use head::{Framing, Out, Parsed, RequestPlan, ResponseHead, parse_request};

/// Largest response head accepted from a replica.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// How long a connection waits for its next request in its task before it
/// is parked: its task ends and a much smaller one waits for the socket to
/// be readable (see [`Exit::Park`]). A busy client's next request usually
/// comes sooner; parking and resuming costs two task spawns.
pub const PARK_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// How a client connection left the fast path.
#[derive(Debug)]
pub(super) enum Exit {
    /// Idle for [`PARK_AFTER`] with nothing read: the connection is to be
    /// parked until it is readable, or until this header read deadline.
    Park(Instant),
    /// The connection is finished: either side closed it, it asked to, it
    /// was idle too long, or the proxy stops.
    Closed,
    /// A request the fast path leaves to hyper: these bytes were read and
    /// not answered; hyper serves them and the rest of the connection.
    Handoff(Bytes),
}

/// The client connection cannot go on: writing to it failed, or a response
/// broke off after its head was sent.
struct Broken;

/// One client connection on the fast path.
struct Session<'a, 'c, S> {
    proxy: &'a Proxy,
    client: &'a ClientInfo,
    stream: &'a mut S,
    stop: &'a CancellationToken,
    cancelled: Pin<&'a mut WaitForCancellationFuture<'c>>,
    /// When the request being read must have arrived.
    deadline: LazyDeadline,
    /// When the replica must have started its response.
    response_deadline: LazyDeadline,
    /// When a connection waiting for a request is parked (see [`Exit::Park`]);
    /// made at its first wait.
    park_after: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes read from the client and not yet handled; empty (no memory)
    /// while the connection waits for a request.
    input: BytesMut,
    /// How long a write to the client may wait (`proxy.send_timeout`).
    send_timeout: std::time::Duration,
}

/// Serves the requests of a plain HTTP/1.1 client connection, starting with
/// the bytes `ahead` already read from it, until it ends or sends a request
/// the fast path leaves to hyper.
pub(super) async fn serve<S: ClientIo>(
    proxy: &Proxy,
    client: &ClientInfo,
    stream: &mut S,
    ahead: BytesMut,
    stop: &CancellationToken,
) -> Exit {
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    let (timeout, response_timeout, send_timeout) = {
        let config = proxy.config.load();
        (
            config.header_read_timeout,
            config.response_timeout,
            config.send_timeout,
        )
    };
    let mut session = Session {
        proxy,
        client,
        stream,
        stop,
        cancelled,
        deadline: LazyDeadline::new(Instant::now() + timeout),
        response_deadline: LazyDeadline::new(Instant::now() + response_timeout),
        park_after: None,
        input: ahead,
        send_timeout,
    };
    session.run().await
}

impl<S: ClientIo> Session<'_, '_, S> {
    async fn run(&mut self) -> Exit {
        loop {
            // The settings once per request: a reload affects the next one.
            let timeout = {
                let config = self.proxy.config.load();
                self.send_timeout = config.send_timeout;
                config.header_read_timeout
            };
            let deadline = Instant::now() + timeout;
            self.deadline.set(deadline);
            if self.input.is_empty() {
                match self.wait_for_request().await {
                    Wait::Readable => {}
                    Wait::Close => {
                        front::close_idle(self.stream);
                        return Exit::Closed;
                    }
                    Wait::Park => return Exit::Park(deadline),
                }
            }
            let mut plan = match self.read_request().await {
                Next::Request(plan) => plan,
                Next::Closed => return Exit::Closed,
                Next::Hyper => return Exit::Handoff(std::mem::take(&mut self.input).freeze()),
                Next::Refused(err) => {
                    tracing::debug!(peer = %self.client.peer, "{err}");
                    // What follows the head cannot be told from a request.
                    let _ = self.send(&err.to_http1(true, false)).await;
                    let _ = self.within_send_timeout(|s| s.shutdown()).await;
                    return Exit::Closed;
                }
            };
            let close = match self.proxy_request(&mut plan).await {
                Ok(close) => close || plan.close || self.stop.is_cancelled(),
                Err(Broken) => return Exit::Closed,
            };
            // A TLS stream may hold the end of the response.
            if self.within_send_timeout(|s| s.flush()).await.is_err() {
                return Exit::Closed;
            }
            if close {
                // TLS says so (close_notify); a socket just closes, when
                // the connection is dropped.
                if S::CLOSE_NOTIFY {
                    let _ = self.within_send_timeout(|s| s.shutdown()).await;
                }
                return Exit::Closed;
            }
        }
    }

    /// Waits, holding no buffer, until an idle connection has something to
    /// read. It is parked after [`PARK_AFTER`] without a request; it is
    /// closed when the header read deadline passes, or when the proxy stops
    /// and no request comes within [`STOP_LINGER`](super::STOP_LINGER).
    async fn wait_for_request(&mut self) -> Wait {
        buffer::give_back(std::mem::take(&mut self.input));
        // Moved later at each wait: a cheap change of a registered timer.
        let park_after = Instant::now() + PARK_AFTER;
        match &mut self.park_after {
            Some(sleep) => sleep.as_mut().reset(park_after),
            None => self.park_after = Some(Box::pin(tokio::time::sleep_until(park_after))),
        }
        let mut linger = StopLinger::default();
        poll_fn(|cx| {
            if let Poll::Ready(r) = self.stream.poll_readable(cx) {
                return Poll::Ready(if r.is_ok() {
                    Wait::Readable
                } else {
                    Wait::Close
                });
            }
            if self.deadline.poll_expired(cx).is_ready() {
                return Poll::Ready(Wait::Close);
            }
            if linger.poll(self.cancelled.as_mut(), cx).is_ready() {
                return Poll::Ready(Wait::Close);
            }
            // A stopping proxy closes its idle connections: none is parked.
            if S::PARKS
                && !linger.stopping()
                && let Some(park) = &mut self.park_after
                && park.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Wait::Park);
            }
            Poll::Pending
        })
        .await
    }

    /// Reads the head and body of a request (the connection has bytes to
    /// read, or some already read).
    async fn read_request(&mut self) -> Next {
        let config = self.proxy.config.load_full();
        let max_head = config.max_header_bytes;
        loop {
            if !self.input.is_empty() {
                let parsed = parse_request(&self.input, &config, self.client);
                match parsed {
                    // A head above the limit, whether it came whole or not.
                    Parsed::Complete(plan) if plan.head_len > max_head => {
                        return Next::Refused(ProxyError::HeadTooLarge(max_head));
                    }
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
                    Parsed::Partial => return Next::Refused(ProxyError::HeadTooLarge(max_head)),
                    Parsed::NotFast => return Next::Hyper,
                    Parsed::Invalid(reason) => {
                        return Next::Refused(ProxyError::BadRequest(reason));
                    }
                }
            }
            if self.input.capacity() == 0 {
                self.input = buffer::take();
            } else if self.input.capacity() == self.input.len() {
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
    async fn proxy_request(&mut self, plan: &mut RequestPlan) -> Result<bool, Broken> {
        let text = |r: &std::ops::Range<usize>| std::str::from_utf8(&self.input[r.clone()]);
        let mut trace = self.proxy.ops.begin(
            text(&plan.method).unwrap_or_default(),
            text(&plan.path).unwrap_or_default(),
            plan.request_id.clone(),
        );
        let answered = self.answer(plan, &mut trace).await;
        self.proxy.ops.finish(trace);
        answered
    }

    /// [`Session::proxy_request`], its outcome told to `trace`.
    async fn answer(&mut self, plan: &mut RequestPlan, trace: &mut Trace) -> Result<bool, Broken> {
        let total = plan.head_len + plan.body_len;
        let host = std::str::from_utf8(&self.input[plan.host.clone()]).ok();
        let Some(service) = self.proxy.router.route(host) else {
            let err = ProxyError::UnknownHost {
                host: host.unwrap_or_default().to_string(),
            };
            self.input.advance(total);
            return self.send_error(&err, plan, trace).await;
        };
        // Only a service with affinity looks for a session key.
        let key = service
            .affinity()
            .and_then(|a| a.key_of_head(&self.input[..plan.head_len]));
        let mut out = std::mem::take(&mut plan.upstream);
        out.extend_from_slice(&self.input[plan.head_len..total]);
        self.input.advance(total);
        if self.input.is_empty() {
            buffer::give_back(std::mem::take(&mut self.input));
        }
        // The settings of this request's moment: a reload affects the next.
        let config = self.proxy.config.load_full();
        let forwarded = forward::forward(
            &config,
            &service,
            key,
            plan.replay,
            &mut self.response_deadline,
            &mut upstream::Exchange(&out),
            trace,
            &self.proxy.ops,
        )
        .await;
        match forwarded {
            Ok((pick, (upstream, buf, head))) => {
                self.relay(pick, upstream, buf, head, plan, trace).await
            }
            Err(err) => self.send_error(&err, plan, trace).await,
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
        plan: &RequestPlan,
        trace: &mut Trace,
    ) -> Result<bool, Broken> {
        let framing = match head.framing {
            _ if plan.head_method || head.status == 204 || head.status == 304 => Framing::Empty,
            f => f,
        };
        let close = plan.close || self.stop.is_cancelled() || framing == Framing::UntilClose;
        let Out::Bytes(mut first) = head.out else {
            unreachable!("the fast path reads response heads as bytes");
        };
        if !pick.held.is_zero() {
            first.truncate(first.len() - 2);
            let held = format!("{}: {}\r\n\r\n", HELD_HEADER, pick.held.as_millis());
            first.extend_from_slice(held.as_bytes());
        }
        first.truncate(first.len() - 2);
        first.extend_from_slice(b"x-request-id: ");
        first.extend_from_slice(trace.id.as_bytes());
        first.extend_from_slice(b"\r\n\r\n");
        if close {
            first.truncate(first.len() - 2);
            first.extend_from_slice(b"connection: close\r\n\r\n");
        }
        buf.advance(head.len);
        let mut body = Body::new(framing);
        let taken = match body.take(&buf) {
            Ok(taken) => taken,
            // Nothing sent to the client yet: it can still get a 502.
            Err(message) => {
                let err = ProxyError::Upstream {
                    replica: pick.replica.name().to_string(),
                    message,
                    sent: Sent::Response,
                };
                drop(pick);
                return self.send_error(&err, plan, trace).await;
            }
        };
        first.extend_from_slice(&buf[..taken]);
        let mut extra = buf.len() > taken;
        trace.status = head.status;
        if self.send(&first).await.is_err() {
            return Err(Broken);
        }
        trace.bytes += taken as u64;
        drop(first);
        while !body.done() {
            buf.clear();
            if buf.capacity() < BUFFER {
                buf.reserve(BUFFER);
            }
            let n = match upstream.read_buf(&mut buf).await {
                Ok(0) if framing == Framing::UntilClose => break,
                Ok(0) => {
                    return Err(self.body_failed(&pick, "the replica closed mid-body", trace));
                }
                Ok(n) => n,
                Err(e) => return Err(self.body_failed(&pick, &e.to_string(), trace)),
            };
            let taken = body
                .take(&buf[..n])
                .map_err(|e| self.body_failed(&pick, &e, trace))?;
            extra = n > taken;
            if self.send(&buf[..taken]).await.is_err() {
                return Err(Broken);
            }
            trace.bytes += taken as u64;
        }
        // Bytes beyond the response: the connection is out of step.
        if head.keep && !extra && framing != Framing::UntilClose {
            pick.pool.sockets().put(upstream);
        }
        buffer::give_back(buf);
        Ok(close)
    }

    /// Logs a response body the replica broke off; the client connection
    /// is closed, which is all a client can be told once the head is sent.
    fn body_failed(&self, pick: &Pick, why: &str, trace: &mut Trace) -> Broken {
        trace.error = Some(ErrorKind::Upstream);
        tracing::warn!(
            peer = %self.client.peer,
            "replica {} broke off a response: {why}",
            pick.replica.name()
        );
        Broken
    }

    /// Answers with the proxy's own error response.
    async fn send_error(
        &mut self,
        err: &ProxyError,
        plan: &RequestPlan,
        trace: &mut Trace,
    ) -> Result<bool, Broken> {
        tracing::warn!(peer = %self.client.peer, "{err}");
        let close = plan.close || self.stop.is_cancelled();
        let mut bytes = err.to_http1(close, plan.head_method);
        trace.failed(err);
        let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n");
        trace.bytes = head_end.map_or(0, |at| bytes.len() - at - 4) as u64;
        request_id::insert_after_start_line(&mut bytes, request_id::HEADER, trace.id.as_bytes());
        match self.send(&bytes).await {
            Ok(()) => Ok(close),
            Err(_) => Err(Broken),
        }
    }

    /// Writes `bytes` to the client, giving up when it takes none of them
    /// for `send_timeout` (the connection then ends, and the caller's
    /// replica socket with it; nginx's `send_timeout` is counted the same
    /// way, between two writes). A write the socket takes at once, as
    /// nearly all do, sets no timer.
    async fn send(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let n = self.within_send_timeout(|s| s.write(bytes)).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Runs `op` on the client stream, within `send_timeout` once it waits.
    async fn within_send_timeout<'s, T, F>(
        &'s mut self,
        op: impl FnOnce(&'s mut S) -> F,
    ) -> std::io::Result<T>
    where
        F: std::future::Future<Output = std::io::Result<T>> + 's,
    {
        let limit = self.send_timeout;
        let peer = self.client.peer;
        let mut op = std::pin::pin!(op(self.stream));
        if let Poll::Ready(done) = futures_util::poll!(op.as_mut()) {
            return done;
        }
        match tokio::time::timeout(limit, op).await {
            Ok(done) => done,
            Err(_) => {
                tracing::debug!(%peer, "the client took none of its response for {limit:?}; closing");
                Err(std::io::ErrorKind::TimedOut.into())
            }
        }
    }
}

/// How an idle connection's wait for a request ended.
enum Wait {
    /// It has bytes to read (or its client closed it).
    Readable,
    /// It is to be closed.
    Close,
    /// It is to be parked.
    Park,
}

/// What comes next on a client connection.
enum Next {
    /// A request for the fast path, head and body read.
    Request(RequestPlan),
    /// Nothing: the connection ends.
    Closed,
    /// A request for hyper.
    Hyper,
    /// A request refused (400, 431); the connection closes after it.
    Refused(ProxyError),
}
