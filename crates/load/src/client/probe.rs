//! Single connections driven one request at a time, for callers that must
//! see what happens on each connection rather than a run's totals
//! (`dropless check`): whether a response said `Connection: close`, whether a
//! lost request got any response byte, when and how an idle connection was
//! closed, and an HTTP/2 server's GOAWAY with its last stream id.
//!
//! The same clients as a run ([`super::http1`], hyper for HTTP/2) and the same
//! failure classes; only the scheduling is the caller's.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::connect::{Stream, peer_closed};
use super::http1;
use super::{Connector, Template};
use crate::config::Config;
use crate::outcome::{Failure, FailureClass};
use crate::run::Error;

/// One target URL, resolved once: opens [`ProbeConn`]s and [`ProbeH2`]s
/// that send its request (method, headers and body of the [`Config`]).
pub struct Probe {
    connector: Connector,
    keepalive: Template,
    close: Template,
}

/// An HTTP/1.1 connection owned by its caller.
pub struct ProbeConn {
    conn: http1::Conn<Stream>,
}

/// A complete HTTP/1.1 or HTTP/2 response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Whether the server said it closes the connection after this response
    /// (`Connection: close`, HTTP/1.0, or a body delimited by the close).
    pub close: bool,
}

/// A request that got no complete response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lost {
    /// How it failed.
    pub class: FailureClass,
    /// Whether any of the response had arrived (a response cut short).
    pub partial: bool,
}

/// How an idle connection ended, seen by [`ProbeConn::closed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The server closed it cleanly (FIN).
    Fin,
    /// The server reset it (RST).
    Reset,
    /// The server sent bytes nobody asked for (a `408`, for instance).
    Data,
}

/// An HTTP/2 connection (h2c with prior knowledge, or h2 over TLS) whose
/// GOAWAY frames are seen as they arrive.
#[derive(Clone)]
pub struct ProbeH2 {
    sender: http2::SendRequest<Full<Bytes>>,
    request: Arc<Template>,
    goaway: Arc<Mutex<Option<GoAway>>>,
}

/// The GOAWAY frames a server sent on a connection: when the first came,
/// and what the last said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoAway {
    /// When the first arrived.
    pub at: Instant,
    /// The last stream id the server will process (from the last GOAWAY).
    pub last_stream_id: u32,
    /// The last GOAWAY's error code (0 = NO_ERROR, a graceful shutdown).
    pub error_code: u32,
}

/// An HTTP/2 request that got no complete response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostH2 {
    /// The connection refused to send it (closed, or going away): the
    /// server never saw it.
    Unsent(FailureClass),
    /// It was sent and failed.
    Sent(FailureClass),
}

impl Probe {
    /// Resolves `config`'s URL; the request is `config`'s (method, headers,
    /// body); the model, rate and duration are ignored.
    pub async fn new(config: &Config) -> Result<Self, Error> {
        let mut plan = config.plan()?;
        let connector = crate::run::connector(&plan).await?;
        plan.keepalive = true;
        let keepalive = Template::new(&plan);
        plan.keepalive = false;
        let close = Template::new(&plan);
        Ok(Probe {
            connector,
            keepalive,
            close,
        })
    }

    /// Opens an HTTP/1.1 connection.
    pub async fn connect(&self) -> Result<ProbeConn, FailureClass> {
        let stream = self.connector.stream().await.map_err(|f| f.class)?;
        Ok(ProbeConn {
            conn: http1::Conn::new(stream),
        })
    }

    /// Sends the request with `Connection: close` on a new connection.
    pub async fn once(&self) -> Result<Answer, Lost> {
        let mut conn = self.connect().await.map_err(|class| Lost {
            class,
            partial: false,
        })?;
        conn.send_on(&self.close).await
    }

    /// Opens an HTTP/2 connection (prior knowledge on plain TCP).
    pub async fn http2(&self) -> Result<ProbeH2, FailureClass> {
        let stream = self.connector.stream().await.map_err(|f| f.class)?;
        let goaway = Arc::new(Mutex::new(None));
        let tap = GoAwayTap {
            inner: stream,
            seen: goaway.clone(),
            frames: FrameReader::default(),
        };
        let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(tap))
            .await
            .map_err(|e| Failure::classify(&e).class)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(ProbeH2 {
            sender,
            request: Arc::new(self.keepalive.clone()),
            goaway,
        })
    }
}

impl ProbeConn {
    /// Sends the request (keep-alive) on this connection and reads the whole
    /// response.
    pub async fn send(&mut self, probe: &Probe) -> Result<Answer, Lost> {
        self.send_on(&probe.keepalive).await
    }

    async fn send_on(&mut self, request: &Template) -> Result<Answer, Lost> {
        let mut first_byte = None;
        match self
            .conn
            .exchange(&request.wire, request.head, &mut first_byte, |_| {})
            .await
        {
            Ok(status) => Ok(Answer {
                status,
                close: self.conn.closing,
            }),
            Err(failure) => Err(Lost {
                class: failure.class,
                partial: first_byte.is_some(),
            }),
        }
    }

    /// Whether it can carry another request: the last response did not
    /// close it and nothing was left unread.
    pub fn reusable(&self) -> bool {
        self.conn.reusable
    }

    /// Whether the server already closed it (or sent something unasked),
    /// checked without waiting, as a pooling client does before reuse.
    pub fn peer_closed(&self) -> bool {
        peer_closed(self.conn.stream())
    }

    /// Waits until the server closes this idle connection (or sends
    /// something on it).
    pub async fn closed(&mut self) -> Closed {
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        match self.conn.stream_mut().read(&mut byte).await {
            Ok(0) => Closed::Fin,
            Ok(_) => Closed::Data,
            Err(_) => Closed::Reset,
        }
    }
}

impl ProbeH2 {
    /// Sends the request as a new stream and reads the whole response.
    pub async fn send(&self) -> Result<Answer, LostH2> {
        let mut sender = self.sender.clone();
        let unsent = |e: &hyper::Error| LostH2::Unsent(Failure::classify(e).class);
        sender.ready().await.map_err(|e| unsent(&e))?;
        let response = match sender.try_send_request(self.request.build()).await {
            Ok(response) => response,
            Err(e) if e.message().is_some() => return Err(unsent(e.error())),
            Err(e) => return Err(LostH2::Sent(Failure::classify(e.error()).class)),
        };
        let status = response.status().as_u16();
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            frame.map_err(|e| LostH2::Sent(Failure::classify(&e).class))?;
        }
        Ok(Answer {
            status,
            close: false,
        })
    }

    /// The server's GOAWAY, if it sent one.
    pub fn goaway(&self) -> Option<GoAway> {
        *self.goaway.lock().expect("goaway lock")
    }

    /// Whether the connection can no longer send requests.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// A byte stream whose incoming HTTP/2 frames are parsed just enough to see
/// GOAWAY (type 7): everything else passes through untouched.
struct GoAwayTap {
    inner: Stream,
    seen: Arc<Mutex<Option<GoAway>>>,
    frames: FrameReader,
}

/// Walks frame headers across reads: 9 bytes of header (24-bit length,
/// type, flags, stream id), then the payload, of which only a GOAWAY's
/// first 8 bytes are kept.
#[derive(Default)]
struct FrameReader {
    header: Vec<u8>,
    /// Payload bytes of the current frame still to skip or read.
    remaining: usize,
    goaway: Option<Vec<u8>>,
}

const FRAME_HEADER: usize = 9;
const GOAWAY: u8 = 7;

impl FrameReader {
    /// Feeds bytes read from the server; returns a GOAWAY's last stream id
    /// and error code when one is complete.
    fn feed(&mut self, mut data: &[u8]) -> Option<(u32, u32)> {
        let mut found = None;
        while !data.is_empty() {
            if self.remaining == 0 && self.goaway.is_none() {
                let take = (FRAME_HEADER - self.header.len()).min(data.len());
                self.header.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.header.len() < FRAME_HEADER {
                    break;
                }
                let h = std::mem::take(&mut self.header);
                self.remaining =
                    usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                if h[3] == GOAWAY {
                    self.goaway = Some(Vec::with_capacity(8));
                }
            }
            let take = self.remaining.min(data.len());
            if let Some(payload) = &mut self.goaway {
                let keep = (8 - payload.len().min(8)).min(take);
                payload.extend_from_slice(&data[..keep]);
            }
            self.remaining -= take;
            data = &data[take..];
            if self.remaining == 0
                && let Some(payload) = self.goaway.take()
                && payload.len() == 8
            {
                let word = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                found.get_or_insert((word(&payload[..4]) & 0x7fff_ffff, word(&payload[4..])));
            }
        }
        found
    }
}

impl AsyncRead for GoAwayTap {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &poll
            && let Some((last_stream_id, error_code)) = this.frames.feed(&buf.filled()[before..])
        {
            // A graceful server sends two: the first (last stream id
            // 2^31-1) announces, the second names the real last stream.
            let mut seen = this.seen.lock().expect("goaway lock");
            let first = seen.map_or_else(Instant::now, |g| g.at);
            *seen = Some(GoAway {
                at: first,
                last_stream_id,
                error_code,
            });
        }
        poll
    }
}

impl AsyncWrite for GoAwayTap {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goaway_is_found_across_reads() {
        // SETTINGS (empty), then GOAWAY last stream 5, NO_ERROR, debug "x".
        let mut wire = vec![0, 0, 0, 4, 0, 0, 0, 0, 0];
        wire.extend([0, 0, 9, GOAWAY, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, b'x']);
        for split in 0..wire.len() {
            let mut reader = FrameReader::default();
            let first = reader.feed(&wire[..split]);
            let second = reader.feed(&wire[split..]);
            assert_eq!(first.or(second), Some((5, 0)), "split at {split}");
        }
        let mut reader = FrameReader::default();
        assert_eq!(reader.feed(&[0, 0, 4, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4]), None);
    }
}
