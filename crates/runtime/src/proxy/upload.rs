//! A client's request body on its way to a replica (hyper path): a pause
//! longer than `proxy.body_read_timeout` between two reads ends it, a
//! failure of the client's side is remembered so that the client, not the
//! replica, is blamed for it, and the replica's upload slot is held until
//! the body has ended (and, by the request's attempt, until the replica
//! answers).

use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use super::ProxyError;
use super::h2::RecvBody;
use crate::proxy::pool::BoxError;
use crate::supervisor::replica::Replica;

/// A replica's upload slot, shared by the body that streams to it and the
/// attempt that waits for the replica's answer: free once both are done, so
/// that a replica still working on a body it has read whole (it has not
/// answered yet) is not sent another one beyond its limit.
pub(super) type Slot = Arc<OwnedSemaphorePermit>;

/// Where a streamed body keeps the upload slot of the replica it is sent
/// to, until it ends. An attempt that comes back with the request unwritten
/// (its connect failed) leaves the slot there; the next attempt, on another
/// replica or the same, moves it ([`Held::move_to`]), so that a body counts
/// on the replica that reads it and on no other.
#[derive(Clone, Debug, Default)]
pub(super) struct Held(Arc<Mutex<Option<Slot>>>);

impl Held {
    /// Gives back the slot held, if any, then waits until `deadline` for
    /// one of `limit` upload slots on `replica`, held until the body ends or
    /// the next move. Returns it for the attempt to hold until the replica
    /// answers; `None` at the deadline (no slot is held then).
    pub(super) async fn move_to(
        &self,
        replica: &Replica,
        limit: usize,
        deadline: Instant,
    ) -> Option<Slot> {
        // First: with a limit of 1, a move to the same replica would wait
        // for the slot it holds.
        self.release();
        let slots = replica.uploads(limit);
        let permit = tokio::time::timeout_at(deadline, slots.acquire_owned())
            .await
            .ok()?
            .ok()?;
        let slot = Arc::new(permit);
        *self.lock() = Some(Arc::clone(&slot));
        Some(slot)
    }

    /// Gives back the slot held (the body has ended), if any.
    pub(super) fn release(&self) {
        let slot = self.lock().take();
        drop(slot);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Slot>> {
        // Nothing panics while holding it; a poisoned lock still holds a slot.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A client's request body, as the front that read it gives it.
#[derive(Debug)]
pub(super) enum ClientBody {
    /// Read by hyper (HTTP/1.1).
    Hyper(Incoming),
    /// Read from an HTTP/2 stream (see [`super::h2`]).
    H2(RecvBody),
    /// None: the request ended with its head.
    Empty,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::H2(b) => Pin::new(b).poll_frame(cx),
            Self::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(b) => b.is_end_stream(),
            Self::H2(b) => b.is_end_stream(),
            Self::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Hyper(b) => b.size_hint(),
            Self::H2(b) => b.size_hint(),
            Self::Empty => SizeHint::with_exact(0),
        }
    }
}

/// Why a client's body failed, once it did; shared with the request's
/// handler, which answers with it instead of blaming the replica.
pub(super) type ClientFailure = Arc<OnceLock<ProxyError>>;

pin_project_lite::pin_project! {
    /// The body of a client's request, read with a timeout between frames.
    pub(super) struct Upload {
        #[pin]
        inner: ClientBody,
        #[pin]
        sleep: Sleep,
        timeout: Duration,
        // The timer starts at the first read: until a replica takes the
        // body, hyper does not read it, and the client is not late.
        reading: bool,
        failure: ClientFailure,
        held: Held,
    }
}

impl Upload {
    /// Reads `inner`, allowing `timeout` between two frames; a failure is
    /// recorded in `failure`, and the upload slot in `held` is given back
    /// when the body ends.
    pub(super) fn new(
        inner: ClientBody,
        timeout: Duration,
        failure: ClientFailure,
        held: Held,
    ) -> Self {
        Self {
            inner,
            sleep: tokio::time::sleep(timeout),
            timeout,
            reading: false,
            failure,
            held,
        }
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
                this.held.release();
                let err = ProxyError::ClientBody(e.to_string());
                let message = err.to_string();
                let _ = this.failure.set(err);
                Poll::Ready(Some(Err(message.into())))
            }
            Poll::Ready(None) => {
                this.held.release();
                Poll::Ready(None)
            }
            Poll::Pending => {
                std::task::ready!(this.sleep.poll(cx));
                this.held.release();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::replica::testing;

    const LIMIT: usize = 2;

    fn free(replica: &Replica) -> usize {
        replica.uploads(LIMIT).available_permits()
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_sent_again_elsewhere_counts_on_the_new_replica_only() {
        let (a, _) = testing::replica("web-1", "127.0.0.1:9", || {});
        let (b, _) = testing::replica("web-2", "127.0.0.1:9", || {});
        let deadline = Instant::now() + Duration::from_secs(5);
        let held = Held::default();
        let first = held.move_to(&a, LIMIT, deadline).await.unwrap();
        // The attempt on `a` came back unwritten: its slot goes with it.
        drop(first);
        assert_eq!((free(&a), free(&b)), (LIMIT - 1, LIMIT));
        let second = held.move_to(&b, LIMIT, deadline).await.unwrap();
        assert_eq!((free(&a), free(&b)), (LIMIT, LIMIT - 1));
        // `b` answered before the body ended: the body still holds it.
        drop(second);
        assert_eq!(free(&b), LIMIT - 1);
        held.release();
        assert_eq!(free(&b), LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_sent_again_to_its_replica_does_not_wait_for_its_own_slot() {
        let (a, _) = testing::replica("web-1", "127.0.0.1:9", || {});
        let start = Instant::now();
        let deadline = start + Duration::from_secs(5);
        let held = Held::default();
        let first = held.move_to(&a, 1, deadline).await.unwrap();
        drop(first);
        let again = held.move_to(&a, 1, deadline).await;
        assert!(again.is_some(), "the slot it held is its own");
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(a.uploads(1).available_permits(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_replica_gives_no_slot_at_the_deadline_and_none_is_held() {
        let (a, _) = testing::replica("web-1", "127.0.0.1:9", || {});
        let (b, _) = testing::replica("web-2", "127.0.0.1:9", || {});
        let start = Instant::now();
        let deadline = start + Duration::from_secs(5);
        let other = Held::default();
        let _full = other.move_to(&b, 1, deadline).await.unwrap();
        let held = Held::default();
        drop(held.move_to(&a, 1, deadline).await.unwrap());
        assert!(held.move_to(&b, 1, deadline).await.is_none());
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        // The slot on `a` was given back when the body moved on.
        assert_eq!(a.uploads(1).available_permits(), 1);
    }
}
