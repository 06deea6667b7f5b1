//! A client's request body on its way to a replica (hyper path): a pause
//! longer than `proxy.body_read_timeout` between two reads ends it, a
//! failure of the client's side is remembered so that the client, not the
//! replica, is blamed for it, and the replica's upload slot is held until
//! the body has ended (and, by the request's attempt, until the replica
//! answers).

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use super::ProxyError;
use crate::proxy::pool::BoxError;

/// A replica's upload slot, shared by the body that streams to it and the
/// attempt that waits for the replica's answer: free once both are done, so
/// that a replica still working on a body it has read whole (it has not
/// answered yet) is not sent another one beyond its limit.
pub(super) type Slot = Arc<OwnedSemaphorePermit>;

/// Why a client's body failed, once it did; shared with the request's
/// handler, which answers with it instead of blaming the replica.
pub(super) type ClientFailure = Arc<OnceLock<ProxyError>>;

pin_project_lite::pin_project! {
    /// The body of a client's request, read with a timeout between frames.
    pub(super) struct Upload {
        #[pin]
        inner: Incoming,
        #[pin]
        sleep: Sleep,
        timeout: Duration,
        // The timer starts at the first read: until a replica takes the
        // body, hyper does not read it, and the client is not late.
        reading: bool,
        failure: ClientFailure,
        permit: Option<Slot>,
    }
}

impl Upload {
    /// Reads `inner`, allowing `timeout` between two frames; a failure is
    /// recorded in `failure`.
    pub(super) fn new(inner: Incoming, timeout: Duration, failure: ClientFailure) -> Self {
        Self {
            inner,
            sleep: tokio::time::sleep(timeout),
            timeout,
            reading: false,
            failure,
            permit: None,
        }
    }

    /// Holds `permit` (an upload slot on the replica) until the body ends.
    pub(super) fn with_permit(mut self, permit: Slot) -> Self {
        self.permit = Some(permit);
        self
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if !*this.reading {
            *this.reading = true;
            let first = Instant::now() + *this.timeout;
            this.sleep.as_mut().reset(first);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = Instant::now() + *this.timeout;
                this.sleep.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.permit.take();
                let err = ProxyError::ClientBody(e.to_string());
                let message = err.to_string();
                let _ = this.failure.set(err);
                Poll::Ready(Some(Err(message.into())))
            }
            Poll::Ready(None) => {
                this.permit.take();
                Poll::Ready(None)
            }
            Poll::Pending => {
                std::task::ready!(this.sleep.poll(cx));
                this.permit.take();
                let err = ProxyError::BodyTimeout(*this.timeout);
                let message = err.to_string();
                let _ = this.failure.set(err);
                Poll::Ready(Some(Err(message.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
