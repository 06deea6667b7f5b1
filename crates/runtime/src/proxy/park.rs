//! Parked connections. An HTTP/1.1 client connection (plain or TLS) that
//! waits for its next request longer than
//! [`PARK_AFTER`](super::fast::PARK_AFTER) leaves its task (sized for
//! serving a request: the parse, the forwarding, the relay, about 1 KB; a
//! TLS connection's several KB, with its handshake's and hyper's states)
//! for a task that only waits for the socket to be readable, a few hundred
//! bytes: what 10 000 idle keep-alive clients cost is mostly these (and a
//! TLS connection's session, kept on the heap). When the client sends its
//! next request, the connection is resumed in a serving task again.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// An idle client connection between two requests.
#[derive(Debug)]
pub(super) struct Parked {
    /// The client's connection, nothing read from it.
    pub(super) stream: ParkedStream,
    /// When it is closed if no request has come (the header read timeout).
    pub(super) deadline: Instant,
}

/// What a parked connection keeps.
#[derive(Debug)]
pub(super) enum ParkedStream {
    /// A plain socket.
    Plain(TcpStream),
    /// A TLS session with no plaintext waiting in it (boxed: the session is
    /// a kilobyte, a plain parked connection a few hundred bytes).
    Tls(Box<super::tls::TlsStream>),
}

impl ParkedStream {
    /// The client's socket.
    pub(super) fn socket(&self) -> &TcpStream {
        match self {
            Self::Plain(stream) => stream,
            Self::Tls(stream) => stream.get_ref(),
        }
    }

    /// Closes it: its deadline passed, or the proxy stops (see
    /// [`close_idle`](super::front::close_idle)).
    pub(super) fn close(self) {
        if let Self::Tls(mut stream) = self {
            super::front::close_idle(&mut *stream);
        }
    }
}

impl Parked {
    /// Waits until the client sends something (or closes); `false` when
    /// the connection is to be closed instead: its deadline passed, the
    /// socket failed, or the proxy stops and nothing came within
    /// [`STOP_LINGER`].
    ///
    /// [`STOP_LINGER`]: super::STOP_LINGER
    pub(super) async fn wait(&self, stop: &CancellationToken) -> bool {
        let deadline = tokio::time::sleep_until(self.deadline);
        tokio::pin!(deadline);
        let cancelled = stop.cancelled();
        tokio::pin!(cancelled);
        let mut linger = StopLinger::default();
        poll_fn(|cx| {
            if let Poll::Ready(r) = self.stream.socket().poll_read_ready(cx) {
                return Poll::Ready(r.is_ok());
            }
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            linger.poll(cancelled.as_mut(), cx).map(|()| false)
        })
        .await
    }
}

/// The time an idle connection gets to send a request once the proxy stops
/// (a shutdown, an upgrade): one its client is sending then is served (with
/// `Connection: close`), not cut.
#[derive(Debug, Default)]
pub(super) struct StopLinger(Option<Pin<Box<Sleep>>>);

impl StopLinger {
    /// Ready once the proxy has stopped and [`STOP_LINGER`] has passed
    /// since this connection saw it.
    ///
    /// [`STOP_LINGER`]: super::STOP_LINGER
    pub(super) fn poll(
        &mut self,
        cancelled: Pin<&mut WaitForCancellationFuture<'_>>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        if cancelled.poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(super::STOP_LINGER)))
            .as_mut()
            .poll(cx)
    }

    /// Whether the proxy was seen stopping.
    pub(super) fn stopping(&self) -> bool {
        self.0.is_some()
    }
}
