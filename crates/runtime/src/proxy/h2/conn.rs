//! One HTTP/2 connection: its streams, their flow control both ways, and
//! the limits a hostile client meets, over the `h2` crate's frame codec.
//!
//! The connection's task reads frames, starts each request's handler
//! ([`Proxy::handle`]) in a set it polls itself, and writes the responses
//! as their handlers finish, in turns: read what came (while what it
//! writes has room), run the handlers, write what is ready, flush. Frames
//! go out through a [`Writer`] of its own, not the codec's. A frame that
//! needs an answer (PING, SETTINGS, a refused or reset stream) is answered
//! at once, and no frame is read while the answers and responses not yet
//! written fill the writer (256 KiB), so a client that never reads what it
//! asked for stops being read.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{AbortHandle, Abortable, abortable};
use futures_util::stream::{FuturesUnordered, Stream as _};
use h2::Codec;
use h2::frame::{self, Frame, Pseudo, Reason, StreamId};
use h2::proto;
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::body::{Feed, RecvBody, Released};
use super::sniff::Sniffed;
use super::write::Writer;
use crate::proxy::upload::ClientBody;
use crate::proxy::{ClientInfo, Proxy, ProxyBody};

/// Streams a client may have open at once.
pub(super) const MAX_STREAMS: usize = 200;
/// The window each stream's request body starts with.
const STREAM_WINDOW: u32 = 1024 * 1024;
/// The connection's window for request bodies.
const CONN_WINDOW: u32 = 1024 * 1024;
/// Every window's size until SETTINGS say otherwise (RFC 9113 §6.9.2).
const DEFAULT_WINDOW: i64 = 65_535;
/// The largest a window may grow.
const MAX_WINDOW: i64 = (1 << 31) - 1;
/// Window read but not given back yet, above which it is given back: a
/// small body gives back nothing (the windows are far larger).
const RELEASE_AT: u32 = STREAM_WINDOW / 4;
/// Streams a client may reset before their response began, beyond the
/// number of streams it let finish: opening and resetting streams at once
/// costs the client nothing and the proxy a request's work each (the
/// "rapid reset" of CVE-2023-44487).
const RESETS_ALLOWED: usize = 100;
/// Streams the proxy may reset for a client's errors before it ends the
/// connection: a client that provokes resets makes the proxy work for
/// nothing too.
const LOCAL_RESETS_ALLOWED: usize = 1024;
/// Frames read in one turn before the streams are served again.
const FRAMES_PER_TURN: usize = 64;
/// Turns in one poll before the task lets others run.
const TURNS: usize = 4;

type Handler = Pin<Box<dyn Future<Output = (u32, Response<ProxyBody>)> + Send>>;

/// Where a stream's response is.
enum Out {
    /// Its handler runs.
    Waiting,
    /// The head is ready to be written.
    Head(Response<ProxyBody>),
    /// The body is being written; `pending` is what its window did not let
    /// out yet.
    Body {
        body: ProxyBody,
        pending: Option<Bytes>,
    },
    /// All of it was written (or the stream was reset).
    Done,
}

/// A stream the client opened and has not seen the end of.
struct Stream {
    /// Where its request body goes, until the client ends it.
    feed: Option<Feed>,
    /// What the client may still send on it, and what was read of it and
    /// not given back yet.
    recv_window: i64,
    unreleased: u32,
    /// The `content-length` the client announced, and the bytes it sent.
    length: Option<u64>,
    received: u64,
    /// The handler, while it runs.
    abort: Option<AbortHandle>,
    send: Out,
    /// What the proxy may still send on it.
    send_window: i64,
    /// The client ended its side (END_STREAM, or trailers).
    client_done: bool,
    /// A HEAD request: its response has no content, whatever its body.
    head: bool,
    /// Since when its response has waited for the client's window.
    stalled: Option<Instant>,
}

/// How a turn of writing a stream's response ended.
enum Wrote {
    /// All of it.
    Done,
    /// The body has nothing more yet, or the windows are closed.
    Waiting,
    /// The writer has no room.
    Blocked,
}

/// A connection error: the GOAWAY's reason.
type ConnError = Reason;

pub(super) struct Connection<T> {
    codec: Codec<Sniffed<T>, Bytes>,
    proxy: Arc<Proxy>,
    client: Arc<ClientInfo>,
    streams: HashMap<u32, Stream, BuildHasherDefault<IdHasher>>,
    handlers: FuturesUnordered<Abortable<Handler>>,
    /// Streams with a response to write, in turn.
    sending: VecDeque<u32>,
    /// The frames to write.
    out: Writer,
    released: Arc<Released>,
    /// The highest stream the client opened.
    last_id: u32,
    conn_send: i64,
    conn_recv: i64,
    conn_unreleased: u32,
    /// The client's SETTINGS_INITIAL_WINDOW_SIZE.
    peer_window: i64,
    /// When the client last sent a frame or a response was written whole.
    last_active: Instant,
    /// Since when frames have waited for the client to take any byte.
    write_stalled: Option<Instant>,
    /// The proxy stops: the first GOAWAY (the largest stream id) and a PING
    /// were sent; streams the client opens until the PING's answer are
    /// still served (RFC 9113 §6.8).
    draining: bool,
    /// The last GOAWAY was sent, or one received: no new streams.
    going_away: bool,
    /// A connection error was sent: the connection ends once it is written.
    closing: bool,
    resets_before_response: usize,
    finished: usize,
    local_resets: usize,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Connection<T> {
    /// A connection on `io`, whose preface was read; it sends its
    /// SETTINGS at once.
    pub(super) fn new(
        io: T,
        proxy: Arc<Proxy>,
        client: Arc<ClientInfo>,
        max_header_bytes: usize,
    ) -> Self {
        let mut out = Writer::new(io.is_write_vectored());
        let mut codec = Codec::new(Sniffed::new(io));
        codec.set_max_recv_header_list_size(max_header_bytes);
        let mut settings = frame::Settings::default();
        settings.set_max_concurrent_streams(Some(MAX_STREAMS as u32));
        settings.set_initial_window_size(Some(STREAM_WINDOW));
        settings
            .set_max_header_list_size(Some(u32::try_from(max_header_bytes).unwrap_or(u32::MAX)));
        out.settings(&settings);
        out.window_update(0, CONN_WINDOW - DEFAULT_WINDOW as u32);
        Self {
            codec,
            proxy,
            client,
            streams: HashMap::default(),
            handlers: FuturesUnordered::new(),
            sending: VecDeque::new(),
            out,
            released: Arc::default(),
            last_id: 0,
            conn_send: DEFAULT_WINDOW,
            conn_recv: i64::from(CONN_WINDOW),
            conn_unreleased: 0,
            peer_window: DEFAULT_WINDOW,
            last_active: Instant::now(),
            write_stalled: None,
            draining: false,
            going_away: false,
            closing: false,
            resets_before_response: 0,
            finished: 0,
            local_resets: 0,
        }
    }

    /// Serves the connection until it ends: the client closes it, an error
    /// ends it, `stop` fires and its streams have finished (GOAWAY), it is
    /// idle for `idle` (no stream open, no frame read, no response written:
    /// GOAWAY, and the connection is dropped if that GOAWAY is still not
    /// written after as long again), or the client takes no byte of what
    /// waits to be written for `send` (dropped). A stream whose response
    /// waits for the client's window for `send` is reset (CANCEL). The
    /// timer is set once per period, not at every frame.
    pub(super) async fn serve(mut self, stop: &CancellationToken, idle: Duration, send: Duration) {
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        // A deadline within the timer's 1 ms resolution would fire at
        // once, again and again.
        let idle = idle.max(Duration::from_millis(1));
        let send = send.max(Duration::from_millis(1));
        let period = idle.min(send);
        let timer = tokio::time::sleep(period);
        tokio::pin!(timer);
        std::future::poll_fn(|cx| {
            if !self.draining && !self.going_away && stopped.as_mut().poll(cx).is_ready() {
                self.drain();
            }
            loop {
                if self.poll(cx).is_ready() {
                    return Poll::Ready(());
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let now = Instant::now();
                if self
                    .write_stalled
                    .is_some_and(|since| now.duration_since(since) >= send)
                {
                    tracing::debug!(peer = %self.client.peer, "the client took nothing for {send:?}; HTTP/2 connection dropped");
                    return Poll::Ready(());
                }
                self.reset_stalled(now, send);
                let idle_now =
                    self.streams.is_empty() && now.duration_since(self.last_active) >= idle;
                if !idle_now {
                    let next = if self.streams.is_empty() {
                        (self.last_active + idle).min(now + period)
                    } else {
                        now + period
                    };
                    timer.as_mut().reset(next);
                } else if self.going_away || self.closing {
                    // Its GOAWAY is still not written after as long again:
                    // the client does not read.
                    return Poll::Ready(());
                } else {
                    tracing::debug!(peer = %self.client.peer, "idle HTTP/2 connection closed");
                    self.go_away(Reason::NO_ERROR);
                    timer.as_mut().reset(now + idle);
                }
            }
        })
        .await;
    }

    /// Resets the streams whose response has waited for the client's
    /// window for `send`: their replica connections are let go.
    fn reset_stalled(&mut self, now: Instant, send: Duration) {
        let stalled: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| {
                s.stalled
                    .is_some_and(|since| now.duration_since(since) >= send)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stalled {
            tracing::debug!(peer = %self.client.peer, stream = id, "the client's window stayed closed for {send:?}; stream reset");
            self.out.reset(id, Reason::CANCEL);
            if let Some(s) = self.streams.remove(&id) {
                drop_stream(s, "the client's window stayed closed");
            }
            self.finished += 1;
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        for _ in 0..TURNS {
            let written = self.out.written();
            let mut progress = self.give_back(cx);
            if !self.closing {
                match self.read(cx) {
                    Ok(Some(read)) => progress |= read,
                    Ok(None) => return Poll::Ready(()),
                    Err(reason) => {
                        self.fail(reason);
                        progress = true;
                    }
                }
            }
            while let Poll::Ready(Some(done)) = Pin::new(&mut self.handlers).poll_next(cx) {
                progress = true;
                // An aborted handler's stream is gone already.
                if let Ok((id, resp)) = done
                    && let Some(s) = self.streams.get_mut(&id)
                {
                    s.abort = None;
                    s.send = Out::Head(resp);
                    self.sending.push_back(id);
                }
            }
            if self.write_responses(cx) {
                progress = true;
                self.last_active = Instant::now();
            }
            let full = !self.out.can_read();
            match self.out.poll_flush(cx, self.codec.get_mut()) {
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => self.write_stalled = None,
                Poll::Pending => {
                    if self.write_stalled.is_none() || self.out.written() > written {
                        self.write_stalled = Some(Instant::now());
                    }
                }
            }
            // Room again: the client's frames may be read.
            progress |= full && self.out.can_read();
            if (self.going_away || self.closing) && self.streams.is_empty() && self.out.is_empty() {
                return match Pin::new(self.codec.get_mut()).poll_shutdown(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(_) => Poll::Ready(()),
                };
            }
            if !progress {
                return Poll::Pending;
            }
        }
        // Busy: let the thread's other tasks run, and come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Gives back the window the handlers read: WINDOW_UPDATEs for what is
    /// above [`RELEASE_AT`].
    fn give_back(&mut self, cx: &Context<'_>) -> bool {
        let taken = self.released.take(cx);
        if taken.is_empty() {
            return false;
        }
        for (id, n) in taken {
            self.conn_unreleased = self.conn_unreleased.saturating_add(n);
            if let Some(s) = self.streams.get_mut(&id)
                && !s.client_done
            {
                s.unreleased = s.unreleased.saturating_add(n);
                if s.unreleased >= RELEASE_AT {
                    s.recv_window += i64::from(s.unreleased);
                    self.out.window_update(id, s.unreleased);
                    s.unreleased = 0;
                }
            }
        }
        self.release_conn(0);
        true
    }

    /// `n` more bytes of the connection's window were read (or dropped);
    /// gives them back with a WINDOW_UPDATE once enough are.
    fn release_conn(&mut self, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.conn_unreleased = self.conn_unreleased.saturating_add(n);
        if self.conn_unreleased >= RELEASE_AT {
            self.conn_recv += i64::from(self.conn_unreleased);
            self.out.window_update(0, self.conn_unreleased);
            self.conn_unreleased = 0;
        }
    }

    /// Reads frames while the writer has room: `Some(true)` when any came,
    /// `None` when the client closed the connection (or it failed).
    fn read(&mut self, cx: &mut Context<'_>) -> Result<Option<bool>, ConnError> {
        let mut read = false;
        for _ in 0..FRAMES_PER_TURN {
            if self.closing {
                break;
            }
            match self
                .out
                .poll_room(cx, self.codec.get_mut(), Writer::can_read)
            {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Ok(None),
                Poll::Pending => break,
            }
            match Pin::new(&mut self.codec).poll_next(cx) {
                Poll::Ready(Some(Ok(f))) => {
                    read = true;
                    self.recv(f)?;
                }
                Poll::Ready(Some(Err(proto::Error::Reset(id, reason, _)))) => {
                    read = true;
                    let id = u32::from(id);
                    self.last_id = self.last_id.max(id);
                    self.reset(id, reason)?;
                }
                Poll::Ready(Some(Err(proto::Error::GoAway(_, reason, _)))) => return Err(reason),
                Poll::Ready(Some(Err(proto::Error::Io(..))) | None) => return Ok(None),
                Poll::Pending => break,
            }
        }
        if read {
            self.last_active = Instant::now();
        }
        Ok(Some(read))
    }

    fn recv(&mut self, f: Frame<Bytes>) -> Result<(), ConnError> {
        match f {
            Frame::Headers(h) => self.recv_headers(h),
            Frame::Data(d) => self.recv_data(d),
            Frame::WindowUpdate(w) => self.recv_window_update(w),
            Frame::Settings(s) => self.recv_settings(&s),
            Frame::Ping(p) => {
                if !p.is_ack() {
                    self.out.ping(&frame::Ping::pong(p.into_payload()));
                } else if self.draining && *p.payload() == frame::Ping::SHUTDOWN {
                    // The client has seen the first GOAWAY: what it opened
                    // before is known, and is served; nothing after.
                    self.draining = false;
                    self.go_away(Reason::NO_ERROR);
                }
                Ok(())
            }
            Frame::Reset(r) => self.recv_reset(u32::from(r.stream_id())),
            Frame::GoAway(_) => {
                self.going_away = true;
                Ok(())
            }
            Frame::Priority(_) => Ok(()),
            // A client may not push.
            Frame::PushPromise(_) => Err(Reason::PROTOCOL_ERROR),
        }
    }

    fn recv_headers(&mut self, h: frame::Headers) -> Result<(), ConnError> {
        let id = u32::from(h.stream_id());
        if id % 2 == 0 {
            return Err(Reason::PROTOCOL_ERROR);
        }
        if let Some(s) = self.streams.get_mut(&id) {
            // Trailers: they end the request.
            if s.client_done {
                return self.reset(id, Reason::STREAM_CLOSED);
            }
            let whole = s.length.is_none_or(|n| n == s.received);
            if !h.is_end_stream() || !whole {
                return self.reset(id, Reason::PROTOCOL_ERROR);
            }
            let (pseudo, fields) = h.into_parts();
            if has_pseudo(&pseudo) {
                return self.reset(id, Reason::PROTOCOL_ERROR);
            }
            s.client_done = true;
            if let Some(feed) = s.feed.take() {
                feed.trailers(fields);
            }
            self.end_if_done(id);
            return Ok(());
        }
        if id <= self.last_id {
            return Err(Reason::STREAM_CLOSED);
        }
        self.last_id = id;
        if self.going_away {
            // Not served; the client may send it again elsewhere.
            return Ok(());
        }
        if self.streams.len() >= MAX_STREAMS {
            self.out.reset(id, Reason::REFUSED_STREAM);
            return Ok(());
        }
        let end = h.is_end_stream();
        if h.is_over_size() {
            let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
            self.out.headers(id, Some(status), &HeaderMap::new(), true);
            if !end {
                self.out.reset(id, Reason::NO_ERROR);
            }
            return Ok(());
        }
        let (pseudo, fields) = h.into_parts();
        let Some(req) = request(pseudo, fields) else {
            return self.reset(id, Reason::PROTOCOL_ERROR);
        };
        let Some(length) = content_length(req.headers()) else {
            return self.reset(id, Reason::PROTOCOL_ERROR);
        };
        if end && length.is_some_and(|n| n > 0) {
            return self.reset(id, Reason::PROTOCOL_ERROR);
        }
        let (body, feed) = if end {
            (ClientBody::Empty, None)
        } else {
            let (body, feed) = RecvBody::new(id, Arc::clone(&self.released), length);
            (ClientBody::H2(body), Some(feed))
        };
        let head = req.method() == http::Method::HEAD;
        let req = req.map(|()| body);
        let (proxy, client) = (Arc::clone(&self.proxy), Arc::clone(&self.client));
        let handler: Handler = Box::pin(async move {
            let resp = proxy.handle(req, &client).await;
            (id, resp)
        });
        let (handler, abort) = abortable(handler);
        self.handlers.push(handler);
        self.streams.insert(
            id,
            Stream {
                feed,
                recv_window: i64::from(STREAM_WINDOW),
                unreleased: 0,
                length,
                received: 0,
                abort: Some(abort),
                send: Out::Waiting,
                send_window: self.peer_window,
                client_done: end,
                head,
                stalled: None,
            },
        );
        Ok(())
    }

    fn recv_data(&mut self, d: frame::Data<Bytes>) -> Result<(), ConnError> {
        let id = u32::from(d.stream_id());
        let payload_len = d.payload().len();
        let window = self.codec.get_mut().take_data_len().unwrap_or(payload_len);
        self.conn_recv -= window as i64;
        if self.conn_recv < 0 {
            return Err(Reason::FLOW_CONTROL_ERROR);
        }
        let Some(s) = self.streams.get_mut(&id) else {
            if id > self.last_id {
                return Err(Reason::PROTOCOL_ERROR);
            }
            // A stream that ended or was reset: its window goes back.
            self.release_conn(window);
            return Ok(());
        };
        if s.client_done {
            self.release_conn(window);
            return self.reset(id, Reason::STREAM_CLOSED);
        }
        s.recv_window -= window as i64;
        s.received += payload_len as u64;
        let end = d.is_end_stream();
        let too_long = s
            .length
            .is_some_and(|n| s.received > n || (end && s.received != n));
        if s.recv_window < 0 || too_long {
            let reason = if too_long {
                Reason::PROTOCOL_ERROR
            } else {
                Reason::FLOW_CONTROL_ERROR
            };
            self.release_conn(window);
            return self.reset(id, reason);
        }
        match &s.feed {
            Some(feed) if !feed.is_dropped() => feed.data(d.into_payload(), window, end),
            _ => self.release_conn(window),
        }
        if end && let Some(s) = self.streams.get_mut(&id) {
            s.client_done = true;
            s.feed = None;
            self.end_if_done(id);
        }
        Ok(())
    }

    fn recv_window_update(&mut self, w: frame::WindowUpdate) -> Result<(), ConnError> {
        let id = u32::from(w.stream_id());
        let more = i64::from(w.size_increment());
        if id == 0 {
            self.conn_send += more;
            if self.conn_send > MAX_WINDOW {
                return Err(Reason::FLOW_CONTROL_ERROR);
            }
            return Ok(());
        }
        match self.streams.get_mut(&id) {
            Some(s) => {
                s.send_window += more;
                if s.send_window > MAX_WINDOW {
                    return self.reset(id, Reason::FLOW_CONTROL_ERROR);
                }
                Ok(())
            }
            None if id > self.last_id => Err(Reason::PROTOCOL_ERROR),
            None => Ok(()),
        }
    }

    fn recv_settings(&mut self, s: &frame::Settings) -> Result<(), ConnError> {
        if s.is_ack() {
            return Ok(());
        }
        if let Some(w) = s.initial_window_size() {
            let w = i64::from(w);
            let delta = w - self.peer_window;
            self.peer_window = w;
            for stream in self.streams.values_mut() {
                stream.send_window += delta;
                if stream.send_window > MAX_WINDOW {
                    return Err(Reason::FLOW_CONTROL_ERROR);
                }
            }
        }
        if let Some(n) = s.max_frame_size() {
            self.out.set_max_frame(n as usize);
        }
        // A SETTINGS_HEADER_TABLE_SIZE changes nothing: the proxy's header
        // blocks use no dynamic table (see `hpack`).
        self.out.settings(&frame::Settings::ack());
        Ok(())
    }

    fn recv_reset(&mut self, id: u32) -> Result<(), ConnError> {
        let Some(s) = self.streams.remove(&id) else {
            return if id > self.last_id {
                Err(Reason::PROTOCOL_ERROR)
            } else {
                Ok(())
            };
        };
        let responded = !matches!(s.send, Out::Waiting | Out::Head(_));
        drop_stream(s, "the client reset the stream");
        if !responded {
            self.resets_before_response += 1;
            if self.resets_before_response > RESETS_ALLOWED + self.finished {
                return Err(Reason::ENHANCE_YOUR_CALM);
            }
        }
        Ok(())
    }

    /// Resets stream `id` for an error of the client's; too many such
    /// resets end the connection.
    fn reset(&mut self, id: u32, reason: Reason) -> Result<(), ConnError> {
        if let Some(s) = self.streams.remove(&id) {
            drop_stream(s, "the stream was reset");
        }
        self.local_resets += 1;
        if self.local_resets > LOCAL_RESETS_ALLOWED {
            // GOAWAY instead of this stream's reset.
            return Err(Reason::ENHANCE_YOUR_CALM);
        }
        self.out.reset(id, reason);
        Ok(())
    }

    /// Starts a graceful stop (RFC 9113 §6.8): GOAWAY with the largest
    /// stream id, so that the client opens no more streams, and a PING; its
    /// answer, which comes after every stream the client opened before it
    /// saw the GOAWAY, brings the last GOAWAY. A single GOAWAY with the last
    /// stream seen would refuse the streams already on their way.
    fn drain(&mut self) {
        self.draining = true;
        self.out.go_away(StreamId::MAX, Reason::NO_ERROR);
        self.out.ping(&frame::Ping::new(frame::Ping::SHUTDOWN));
    }

    /// Sends GOAWAY: no new streams; the connection ends once the open ones
    /// have.
    fn go_away(&mut self, reason: Reason) {
        self.going_away = true;
        self.out.go_away(self.last_id.into(), reason);
    }

    /// A connection error: GOAWAY with `reason`, every stream dropped, and
    /// the connection ends once that is written.
    fn fail(&mut self, reason: Reason) {
        self.go_away(reason);
        self.closing = true;
        for (_, s) in self.streams.drain() {
            drop_stream(s, "the connection failed");
        }
        self.handlers = FuturesUnordered::new();
        self.sending.clear();
    }

    /// Removes stream `id` once both sides have ended.
    fn end_if_done(&mut self, id: u32) {
        if let Some(s) = self.streams.get(&id)
            && s.client_done
            && matches!(s.send, Out::Done)
        {
            self.streams.remove(&id);
            self.finished += 1;
        }
    }

    /// Writes what the streams have ready, in turn; `true` if anything was.
    fn write_responses(&mut self, cx: &mut Context<'_>) -> bool {
        let mut wrote = false;
        for _ in 0..self.sending.len() {
            let Some(id) = self.sending.pop_front() else {
                break;
            };
            if !self.streams.contains_key(&id) {
                continue;
            }
            match self.write_stream(cx, id) {
                Wrote::Done => {
                    wrote = true;
                    self.response_done(id);
                }
                Wrote::Waiting => self.sending.push_back(id),
                // Its turn comes again after the others': one stream with
                // much to send does not hold the rest back.
                Wrote::Blocked => {
                    self.sending.push_back(id);
                    break;
                }
            }
        }
        wrote
    }

    /// The response on `id` was written whole.
    fn response_done(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.send = Out::Done;
        if !s.client_done && s.feed.as_ref().is_none_or(Feed::is_dropped) {
            // Nobody reads the rest of the request: the client may stop.
            self.out.reset(id, Reason::NO_ERROR);
            if let Some(s) = self.streams.remove(&id) {
                drop_stream(s, "the response ended first");
            }
            self.finished += 1;
            return;
        }
        self.end_if_done(id);
    }

    /// Writes what stream `id` has ready of its response.
    fn write_stream(&mut self, cx: &mut Context<'_>, id: u32) -> Wrote {
        loop {
            match self
                .out
                .poll_room(cx, self.codec.get_mut(), Writer::has_room)
            {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) | Poll::Pending => return Wrote::Blocked,
            }
            let Some(s) = self.streams.get_mut(&id) else {
                return Wrote::Done;
            };
            match std::mem::replace(&mut s.send, Out::Done) {
                Out::Head(resp) => {
                    let (mut parts, body) = resp.into_parts();
                    strip_connection_fields(&mut parts.headers);
                    let end = body.is_end_stream() || s.head;
                    self.out
                        .headers(id, Some(parts.status), &parts.headers, end);
                    if end {
                        return Wrote::Done;
                    }
                    s.send = Out::Body {
                        body,
                        pending: None,
                    };
                }
                Out::Body { mut body, pending } => {
                    let chunk = match pending {
                        Some(chunk) => chunk,
                        None => match Pin::new(&mut body).poll_frame(cx) {
                            Poll::Pending => {
                                s.send = Out::Body {
                                    body,
                                    pending: None,
                                };
                                return Wrote::Waiting;
                            }
                            Poll::Ready(None) => {
                                self.out.data(id, Bytes::new(), true);
                                return Wrote::Done;
                            }
                            Poll::Ready(Some(Err(e))) => {
                                tracing::debug!(stream = id, "response body: {e}");
                                self.out.reset(id, Reason::INTERNAL_ERROR);
                                return Wrote::Done;
                            }
                            Poll::Ready(Some(Ok(f))) => match f.into_data() {
                                Ok(data) => data,
                                Err(f) => {
                                    let fields = f.into_trailers().unwrap_or_default();
                                    self.out.headers(id, None, &fields, true);
                                    return Wrote::Done;
                                }
                            },
                        },
                    };
                    let room = s
                        .send_window
                        .min(self.conn_send)
                        .min(self.out.max_frame() as i64);
                    if chunk.is_empty() || room <= 0 {
                        let pending = (!chunk.is_empty()).then_some(chunk);
                        let waiting = pending.is_some();
                        s.send = Out::Body { body, pending };
                        if waiting {
                            s.stalled.get_or_insert_with(Instant::now);
                            return Wrote::Waiting;
                        }
                        continue;
                    }
                    let mut now = chunk;
                    let rest = (now.len() as i64 > room).then(|| now.split_off(room as usize));
                    let n = now.len() as i64;
                    s.send_window -= n;
                    self.conn_send -= n;
                    s.stalled = None;
                    let end = rest.is_none() && body.is_end_stream();
                    self.out.data(id, now, end);
                    if end {
                        return Wrote::Done;
                    }
                    s.send = Out::Body {
                        body,
                        pending: rest,
                    };
                }
                Out::Waiting => {
                    s.send = Out::Waiting;
                    return Wrote::Waiting;
                }
                Out::Done => return Wrote::Done,
            }
        }
    }
}

/// Hashes a stream id with one multiplication: a connection's streams are
/// looked up a few times per request, and SipHash cost ~1 000 instructions
/// of each. The client picks the ids, but at most [`MAX_STREAMS`] are in
/// the table, which bounds what colliding ids could cost.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        // Fibonacci hashing, its high half brought down to the bits the
        // table indexes by.
        self.0 = u64::from(id)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(32);
    }
}

/// Ends what a stream still runs: its handler, and its request body's feed.
fn drop_stream(s: Stream, why: &str) {
    if let Some(abort) = s.abort {
        abort.abort();
    }
    if let Some(feed) = s.feed {
        feed.fail(why);
    }
}

fn has_pseudo(p: &Pseudo) -> bool {
    p.method.is_some()
        || p.scheme.is_some()
        || p.authority.is_some()
        || p.path.is_some()
        || p.protocol.is_some()
        || p.status.is_some()
}

/// The request a stream's head describes; `None` when it is malformed
/// (RFC 9113 §8.3.1): no method, a `:status` or `:protocol`, no scheme or
/// an empty path (but for CONNECT, which has neither), an authority or
/// path that does not parse.
fn request(pseudo: Pseudo, fields: HeaderMap) -> Option<Request<()>> {
    let method = pseudo.method?;
    if pseudo.status.is_some() || pseudo.protocol.is_some() {
        return None;
    }
    let connect = method == http::Method::CONNECT;
    let mut parts = http::uri::Parts::default();
    if let Some(authority) = pseudo.authority {
        let authority: &[u8] = authority.as_ref();
        parts.authority = Some(http::uri::Authority::try_from(authority).ok()?);
    }
    match (pseudo.scheme, connect) {
        (Some(_), true) | (None, false) => return None,
        (Some(scheme), false) => {
            let scheme: http::uri::Scheme = scheme.parse().ok()?;
            if parts.authority.is_some() {
                parts.scheme = Some(scheme);
            }
        }
        (None, true) => {}
    }
    match (pseudo.path, connect) {
        (Some(_), true) | (None, false) => return None,
        (Some(path), false) => {
            if path.is_empty() {
                return None;
            }
            parts.path_and_query =
                Some(http::uri::PathAndQuery::try_from(AsRef::<[u8]>::as_ref(&path)).ok()?);
        }
        (None, true) => {}
    }
    let mut req = Request::builder()
        .version(http::Version::HTTP_2)
        .method(method)
        .uri(http::Uri::from_parts(parts).ok()?)
        .body(())
        .ok()?;
    *req.headers_mut() = fields;
    Some(req)
}

/// The request's `content-length`: `Some(None)` without one, `None` when
/// one does not parse or two disagree.
fn content_length(fields: &HeaderMap) -> Option<Option<u64>> {
    let mut length = None;
    for value in fields.get_all(http::header::CONTENT_LENGTH) {
        let v = value.to_str().ok()?;
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u64 = v.parse().ok()?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    Some(length)
}

/// Removes the fields HTTP/2 forbids in a response (RFC 9113 §8.2.2);
/// what a replica sent is already without them, so the map is only
/// searched, not changed, unless it has one.
fn strip_connection_fields(fields: &mut HeaderMap) {
    use http::header::{CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};
    const KEEP_ALIVE: http::HeaderName = http::HeaderName::from_static("keep-alive");
    const PROXY_CONNECTION: http::HeaderName = http::HeaderName::from_static("proxy-connection");
    let forbidden = |n: &http::HeaderName| {
        *n == CONNECTION
            || *n == TRANSFER_ENCODING
            || *n == UPGRADE
            || *n == KEEP_ALIVE
            || *n == PROXY_CONNECTION
            || *n == TE
    };
    if !fields.keys().any(forbidden) {
        return;
    }
    for name in [
        CONNECTION,
        TRANSFER_ENCODING,
        UPGRADE,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        TE,
    ] {
        fields.remove(name);
    }
}
