//! The fast path's side of a replica: one HTTP/1.1 exchange on a pooled
//! plain socket (the request's bytes written as they are, the response
//! head read and interpreted). The fast path relays the rest of the
//! response itself; the hyper path sends its requests whose body is
//! buffered the same way ([`BufferedRequest`]) and reads the response body
//! through [`ReplicaBody`]: no hyper client connection, no task or channel
//! between the client's stream and the replica's socket.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response};
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::MAX_RESPONSE_HEAD;
use super::body::Body;
use super::head::{Framing, Out, ResponseHead, Upstream, Want, parse_response};
use crate::proxy::balance::Pick;
use crate::proxy::buffer::{self, BUFFER};
use crate::proxy::error_chain;
use crate::proxy::forward::{self, AttemptError, Sent};
use crate::proxy::headers::{self, Rewrite};
use crate::proxy::pool::{BoxError, SocketPool};

/// The fast path's attempt: the request's bytes (head and body), written
/// as they are.
pub(super) struct Exchange<'a>(pub(super) &'a [u8]);

impl forward::Attempt for Exchange<'_> {
    type Output = (TcpStream, BytesMut, ResponseHead);

    fn send(
        &mut self,
        pick: &Pick,
    ) -> impl Future<Output = Result<Self::Output, AttemptError>> + Send {
        exchange(pick, self.0, Want::Bytes)
    }
}

/// Sends `request` to the picked replica on a pooled socket (or a new one)
/// and reads the response head: one attempt, whose failure says how far the
/// request got (see [`forward`] for what follows from it).
async fn exchange(
    pick: &Pick,
    request: &[u8],
    want: Want,
) -> Result<(TcpStream, BytesMut, ResponseHead), AttemptError> {
    let addr = pick.pool.addr();
    let (mut upstream, reused) = match pick.pool.sockets().take() {
        Some(s) => (s, true),
        None => match pick.pool.sockets().connect().await {
            Ok(s) => (s, false),
            Err(e) => return Err(failed(Sent::Nothing, error_chain(&e), false)),
        },
    };
    let mut written = 0;
    while written < request.len() {
        match upstream.write(&request[written..]).await {
            Ok(0) => break,
            Ok(n) => written += n,
            Err(e) => {
                let sent = if written == 0 {
                    Sent::Nothing
                } else {
                    Sent::Request
                };
                let message = format!("writing the request to {addr}: {e}");
                return Err(failed(sent, message, reused));
            }
        }
    }
    if written < request.len() {
        let message = format!("writing the request to {addr}: the connection closed");
        return Err(failed(Sent::Request, message, reused));
    }
    // With none of the thread's kept buffers left (hundreds of HTTP/2
    // streams waiting at once), the read buffer is taken once the response
    // has begun to come, not while the replica works: by then others have
    // been given back, where taking one now would allocate it.
    if !buffer::any_kept()
        && let Err(e) = upstream.readable().await
    {
        let message = format!("{addr}: reading the response: {e}");
        return Err(failed(Sent::Request, message, reused));
    }
    let mut buf = buffer::take();
    match read_response_head(&mut upstream, &mut buf, want).await {
        Ok(head) => Ok((upstream, buf, head)),
        Err((sent, message)) => Err(failed(sent, format!("{addr}: {message}"), reused)),
    }
}

/// A failed fast-path attempt (its body is buffered: never gone).
fn failed(sent: Sent, message: String, reused: bool) -> AttemptError {
    AttemptError {
        sent,
        message,
        reused,
        body_gone: false,
    }
}

/// Reads a response head from a replica. Interim (1xx) responses are
/// skipped, as a client skips them: the fast path never sends `Expect`, and
/// a 103 is only a hint. A failure says whether any response byte came.
async fn read_response_head(
    upstream: &mut TcpStream,
    buf: &mut BytesMut,
    want: Want,
) -> Result<ResponseHead, (Sent, String)> {
    let mut responded = false;
    let sent = |responded: bool| {
        if responded {
            Sent::Response
        } else {
            Sent::Request
        }
    };
    loop {
        let n = match upstream.read_buf(buf).await {
            Ok(n) => n,
            Err(e) => return Err((sent(responded), format!("reading the response: {e}"))),
        };
        if n == 0 {
            let message = if responded {
                "the connection closed in the response head"
            } else {
                "the connection closed before a response"
            };
            return Err((sent(responded), message.into()));
        }
        responded = true;
        loop {
            match parse_response(buf, want) {
                Ok(Some(head)) if (100..200).contains(&head.status) && head.status != 101 => {
                    buf.advance(head.len);
                }
                Ok(Some(head)) if head.status == 101 => {
                    let message = "the replica switched protocols without being asked";
                    return Err((Sent::Response, message.into()));
                }
                Ok(Some(head)) => return Ok(head),
                Ok(None) if buf.len() > MAX_RESPONSE_HEAD => {
                    return Err((Sent::Response, "response head too large".into()));
                }
                Ok(None) => break,
                Err(e) => return Err((Sent::Response, e)),
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

/// The hyper path's attempt for a request whose body is buffered (most are:
/// no body at all): written as HTTP/1.1 bytes on the fast path's sockets.
pub(in crate::proxy) struct BufferedRequest<'a> {
    parts: &'a http::request::Parts,
    rewrite: &'a Rewrite<'a>,
    body: &'a Bytes,
}

impl<'a> BufferedRequest<'a> {
    /// The request of `parts` (the client's, as they came), its fields
    /// changed as `rewrite` says, with `body`.
    pub(in crate::proxy) fn new(
        parts: &'a http::request::Parts,
        rewrite: &'a Rewrite<'a>,
        body: &'a Bytes,
    ) -> Self {
        Self {
            parts,
            rewrite,
            body,
        }
    }

    /// The request as HTTP/1.1 bytes for the replica at `pick`: in origin
    /// form, the replica's address as `Host` when the client named none,
    /// its framing a `Content-Length` written from the buffered body. Every
    /// part was validated by hyper (`http`'s types hold no CR or LF).
    fn bytes(&self, pick: &Pick) -> Vec<u8> {
        let (parts, rewrite) = (self.parts, self.rewrite);
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let fields = || {
            parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_bytes()))
        };
        let size = fields().map(|(n, v)| n.len() + v.len() + 4).sum::<usize>();
        let addr;
        let host = match &rewrite.host {
            Some(host) => host.as_bytes(),
            None => {
                addr = pick.pool.addr().to_string();
                addr.as_bytes()
            }
        };
        // A method that means something with a body says it has none.
        let with_body = matches!(parts.method.as_str(), "POST" | "PUT" | "PATCH");
        let mut out = Upstream {
            method: parts.method.as_str(),
            target,
            host,
            forwarded_host: rewrite.host.as_ref().map(http::HeaderValue::as_bytes),
            length: (!self.body.is_empty() || with_body).then_some(self.body.len()),
            client_ip: rewrite.client_ip.as_bytes(),
            proto: rewrite.proto,
            request_id: &rewrite.id,
        }
        .head(
            fields,
            parts.method.as_str().len() + target.len() + size + self.body.len(),
        );
        out.extend_from_slice(self.body);
        out
    }
}

impl forward::Attempt for BufferedRequest<'_> {
    type Output = Response<ReplicaBody>;

    async fn send(&mut self, pick: &Pick) -> Result<Response<ReplicaBody>, AttemptError> {
        let request = self.bytes(pick);
        let (upstream, buf, head) = exchange(pick, &request, Want::Fields).await?;
        let head_method = self.parts.method == http::Method::HEAD;
        response(pick, upstream, buf, head, head_method).map_err(|message| {
            let message = format!("{}: {message}", pick.pool.addr());
            failed(Sent::Response, message, false)
        })
    }
}

/// The response whose head came from the replica, as hyper serves it: its
/// headers in a map (without the framing ones hyper writes itself), its
/// body read from `upstream` after the bytes in `buf`.
fn response(
    pick: &Pick,
    upstream: TcpStream,
    mut buf: BytesMut,
    head: ResponseHead,
    head_method: bool,
) -> Result<Response<ReplicaBody>, String> {
    let Out::Fields(fields) = head.out else {
        return Err("a response head read for HTTP/1.1".into());
    };
    let map = header_map(&mut buf, head.len, fields, head.length)?;
    let mut resp = Response::new(ReplicaBody::empty());
    *resp.status_mut() =
        http::StatusCode::from_u16(head.status).map_err(|e| format!("status: {e}"))?;
    *resp.headers_mut() = map;
    let framing = if head_method {
        Framing::Empty
    } else {
        head.framing
    };
    let mut body = ReplicaBody {
        buf,
        framing: Body::decoding(framing),
        upstream: Some(upstream),
        pool: head.keep.then(|| pick.pool.sockets().clone()),
        trailers_sent: framing != Framing::Chunked,
    };
    body.settle();
    *resp.body_mut() = body;
    Ok(resp)
}

/// The header map of a response head read for hyper: the head's `len`
/// bytes are taken off the front of `buf`, and `fields` are the positions of
/// its fields in them. The head is copied out of the read buffer (a few
/// hundred bytes, every value a slice of the copy): values sliced out of the
/// buffer itself would keep its 8 KiB from going back to the thread's kept
/// buffers (see [`ReplicaBody`]'s drop), so each response would allocate one.
fn header_map(
    buf: &mut BytesMut,
    len: usize,
    fields: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
    length: Option<u64>,
) -> Result<HeaderMap, String> {
    let bytes = Bytes::copy_from_slice(&buf[..len]);
    buf.advance(len);
    let mut map = HeaderMap::with_capacity(fields.len() + 1);
    for (name, value) in fields {
        let name = HeaderName::from_bytes(&bytes[name]).map_err(|e| e.to_string())?;
        let value =
            HeaderValue::from_maybe_shared(bytes.slice(value)).map_err(|e| e.to_string())?;
        map.append(name, value);
    }
    // hyper frames the body itself; a length is kept (a HEAD's or a 304's
    // announces a body it does not carry).
    if let Some(n) = length {
        map.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(map)
}

/// A response body read from a replica's socket (see [`BufferedRequest`]).
/// The socket goes back to its pool when the body has ended cleanly with
/// nothing after it, and is closed otherwise (the body failed or was
/// dropped before its end).
#[derive(Debug)]
pub(in crate::proxy) struct ReplicaBody {
    /// Bytes read from the replica and not yet given.
    buf: BytesMut,
    framing: Body,
    /// `None` once the body ended.
    upstream: Option<TcpStream>,
    /// Where the socket goes back (`None`: the replica closes it).
    pool: Option<SocketPool>,
    trailers_sent: bool,
}

/// Largest body chunk copied out of a [`ReplicaBody`]'s read buffer rather
/// than sliced from it: a copy of a small body is cheaper than the 8 KiB
/// buffer a slice keeps from being used again.
const COPIED_DATA: usize = 1024;

impl Drop for ReplicaBody {
    fn drop(&mut self) {
        buffer::give_back(std::mem::take(&mut self.buf));
    }
}

impl ReplicaBody {
    fn empty() -> Self {
        Self {
            buf: BytesMut::new(),
            framing: Body::new(Framing::Empty),
            upstream: None,
            pool: None,
            trailers_sent: true,
        }
    }

    /// Gives the socket back (or closes it) as soon as the whole body is in
    /// the buffer: the common case of a small body read with its head.
    fn settle(&mut self) {
        let whole = match self.framing.remaining() {
            Some(n) => n <= self.buf.len() as u64,
            None => false,
        };
        if !whole {
            return;
        }
        let extra = self.buf.len() as u64 > self.framing.remaining().unwrap_or_default();
        self.finish(!extra);
    }

    /// The body is all read: the socket goes back to its pool when `clean`.
    fn finish(&mut self, clean: bool) {
        let upstream = self.upstream.take();
        if let (true, Some(upstream), Some(pool)) = (clean, upstream, self.pool.take()) {
            pool.put(upstream);
        }
    }

    /// The next frame from the bytes already read, if they hold one.
    fn buffered_frame(&mut self) -> Result<Option<Frame<Bytes>>, String> {
        while !self.buf.is_empty() && !self.framing.done() {
            let (taken, data) = self.framing.take_data(&self.buf)?;
            // A small chunk is copied, so that the buffer stays whole and
            // goes back to the kept ones when the body ends; a large one is
            // given as a slice of it.
            let chunk = if data.len() <= COPIED_DATA {
                let chunk = Bytes::copy_from_slice(&self.buf[data]);
                self.buf.advance(taken);
                chunk
            } else {
                self.buf.split_to(taken).freeze().slice(data)
            };
            if !chunk.is_empty() {
                // hyper may drop a body without polling it again once it
                // says it has ended: the socket is given back now.
                self.end_if_done();
                return Ok(Some(Frame::data(chunk)));
            }
        }
        if !self.framing.done() {
            return Ok(None);
        }
        self.end_if_done();
        if !self.trailers_sent {
            self.trailers_sent = true;
            if let Some(trailers) = trailers(&self.framing.take_trailers())? {
                return Ok(Some(Frame::trailers(trailers)));
            }
        }
        Ok(None)
    }

    /// Once the whole body is read, gives the socket back (when nothing
    /// follows the body in the buffer) or closes it.
    fn end_if_done(&mut self) {
        if self.framing.done() && self.upstream.is_some() {
            let clean = self.buf.is_empty() && self.framing.framing() != Framing::UntilClose;
            self.finish(clean);
        }
    }
}

/// The trailer fields of a chunked body, from its trailer section (without
/// the final CRLF), `None` when there are none.
fn trailers(section: &[u8]) -> Result<Option<HeaderMap>, String> {
    if section.len() <= 2 {
        return Ok(None);
    }
    let mut fields = [httparse::EMPTY_HEADER; super::head::MAX_HEADERS];
    let parsed = httparse::parse_headers(section, &mut fields)
        .map_err(|e| format!("invalid trailers: {e}"))?;
    let httparse::Status::Complete((_, fields)) = parsed else {
        return Err("invalid trailers".into());
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|e| e.to_string())?;
        let value = HeaderValue::from_bytes(f.value).map_err(|e| e.to_string())?;
        map.append(name, value);
    }
    // A connection's own fields do not cross the proxy (and HTTP/2 refuses
    // them: the stream would be reset).
    headers::strip_hop_by_hop(&mut map, None);
    Ok((!map.is_empty()).then_some(map))
}

impl hyper::body::Body for ReplicaBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match this.buffered_frame() {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) if this.framing.done() => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => {
                    this.upstream = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            let Some(upstream) = this.upstream.as_mut() else {
                return Poll::Ready(None);
            };
            if this.buf.capacity() - this.buf.len() < BUFFER / 2 {
                this.buf.reserve(BUFFER);
            }
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(upstream),
                cx,
                &mut this.buf
            ));
            match read {
                Ok(0) if this.framing.framing() == Framing::UntilClose => {
                    this.upstream = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.upstream = None;
                    return Poll::Ready(Some(Err("the replica closed mid-body".into())));
                }
                Ok(_) => {}
                Err(e) => {
                    this.upstream = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing.done() && self.trailers_sent
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    /// A small response as hyper gets it: its head, then its body.
    async fn read(replica_sent: &[u8]) -> (HeaderMap, Bytes, *const u8) {
        let mut buf = buffer::take();
        buf.extend_from_slice(replica_sent);
        let at = buf.as_ptr();
        let head = parse_response(&buf, Want::Fields).unwrap().unwrap();
        let Out::Fields(fields) = head.out else {
            panic!("bytes, not fields")
        };
        let map = header_map(&mut buf, head.len, fields, head.length).unwrap();
        let body = ReplicaBody {
            buf,
            framing: Body::decoding(head.framing),
            upstream: None,
            pool: None,
            trailers_sent: head.framing != Framing::Chunked,
        };
        let data = body.collect().await.unwrap().to_bytes();
        (map, data, at)
    }

    #[tokio::test]
    async fn a_small_response_gives_its_read_buffer_back_for_the_next_one() {
        let (map, data, at) =
            read(b"HTTP/1.1 200 OK\r\nServer: r\r\nContent-Length: 2\r\n\r\nok").await;
        assert_eq!(&data[..], b"ok");
        assert_eq!(map["server"], "r");
        assert_eq!(map["content-length"], "2");
        // The head's values and the body are still held, and the buffer
        // they came from is the one the next response takes.
        assert_eq!(buffer::take().as_ptr(), at);
        assert_eq!(map["server"], "r");
    }

    #[tokio::test]
    async fn a_large_body_given_as_a_slice_of_the_buffer_stays_whole() {
        let body: Vec<u8> = (0..3 * COPIED_DATA).map(|i| (i % 251) as u8).collect();
        let mut sent =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        sent.extend_from_slice(&body);
        let (_, data, _) = read(&sent).await;
        // The buffer was not reused under the slice: a response taking it
        // now must not change the body.
        let mut next = buffer::take();
        next.extend_from_slice(&vec![0xAA; next.capacity()]);
        assert_eq!(&data[..], &body[..]);
    }
}
