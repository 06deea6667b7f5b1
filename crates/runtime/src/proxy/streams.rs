//! HTTP/2 streams served in their connection's task. hyper's HTTP/2 server
//! hands each stream to an executor; tokio's spawns a task per stream: an
//! allocation, a turn of the scheduler, and a wake-up of the connection's
//! task each time a response is ready, before it can be written. Here a
//! connection's streams are kept in a set that the connection's own task
//! polls, just before it polls the connection: the responses its streams
//! have ready are queued by the time the connection writes, in the same
//! turn.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};

tokio::task_local! {
    /// The streams of the connection this task serves.
    static STREAMS: RefCell<FuturesUnordered<BoxFuture<'static, ()>>>;
}

/// How many times one poll goes round the streams and the connection while
/// the connection keeps starting streams, before it lets other tasks run.
const ROUNDS: usize = 4;

/// hyper's executor for HTTP/2 streams: the stream joins its connection's
/// task (see [`serve`]); outside one, it gets a task of its own.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct InConnection;

impl<F> hyper::rt::Executor<F> for InConnection
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        let mut stream = Some(stream);
        let _ = STREAMS.try_with(|streams| {
            // Not while the set is being polled (a stream starting another).
            if let (Ok(streams), Some(s)) = (streams.try_borrow_mut(), stream.take()) {
                streams.push(Box::pin(s));
            }
        });
        if let Some(stream) = stream {
            drop(tokio::spawn(stream));
        }
    }
}

/// Drives `conn` together with the streams it starts (through
/// [`InConnection`]) in this task. Its output comes once the connection has
/// ended and so have its streams.
pub(super) async fn serve<C: Future>(conn: C) -> C::Output {
    STREAMS
        .scope(RefCell::default(), InTask { conn, output: None })
        .await
}

pin_project_lite::pin_project! {
    struct InTask<C: Future> {
        #[pin]
        conn: C,
        output: Option<C::Output>,
    }
}

impl<C: Future> Future for InTask<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        for _ in 0..ROUNDS {
            // The streams first: what they answer is written by the
            // connection's poll that follows.
            let left = STREAMS.with(|streams| {
                let mut streams = streams.borrow_mut();
                while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
                streams.len()
            });
            if this.output.is_none()
                && let Poll::Ready(output) = this.conn.as_mut().poll(cx)
            {
                *this.output = Some(output);
            }
            let now = STREAMS.with(|streams| streams.borrow().len());
            if now == 0
                && let Some(output) = this.output.take()
            {
                return Poll::Ready(output);
            }
            if now <= left {
                // No stream started: every stream and the connection wait
                // for a wake-up of this task.
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn streams_run_in_the_connection_task_and_outlive_the_connection() {
        let done = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let d = Arc::clone(&done);
        let conn = async move {
            let d1 = Arc::clone(&d);
            InConnection.execute(async move {
                d1.fetch_add(1, Ordering::SeqCst);
            });
            let d2 = Arc::clone(&d);
            InConnection.execute(async move {
                let _ = released.await;
                d2.fetch_add(1, Ordering::SeqCst);
            });
            tokio::task::yield_now().await;
            d.fetch_add(10, Ordering::SeqCst);
            "ended"
        };
        let served = tokio::spawn(serve(conn));
        // Once the connection's future and the first stream have ended, the
        // task still waits for the other stream.
        while done.load(Ordering::SeqCst) != 11 {
            tokio::task::yield_now().await;
        }
        tokio::task::yield_now().await;
        assert!(!served.is_finished());
        release.send(()).unwrap();
        assert_eq!(served.await.unwrap(), "ended");
        assert_eq!(done.load(Ordering::SeqCst), 12);
    }

    #[tokio::test]
    async fn outside_a_connection_a_stream_gets_a_task() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        InConnection.execute(async move {
            let _ = tx.send(());
        });
        rx.await.unwrap();
    }
}
