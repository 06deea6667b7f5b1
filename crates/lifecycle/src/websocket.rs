//! WebSockets at shutdown: open sockets stay open through the drain and the
//! shutdown hooks (which may stash their sessions' state), then are asked to
//! close with code 1012 (service restart) so their clients reconnect to the
//! successor.

use tokio_util::{
    sync::CancellationToken, task::TaskTracker, task::task_tracker::TaskTrackerToken,
};

use crate::Lifecycle;

/// The close code a WebSocket gets at shutdown: 1012, "service restart"
/// (the client should reconnect).
pub const CLOSE_SERVICE_RESTART: u16 = 1012;

/// The reason sent with [`CLOSE_SERVICE_RESTART`].
pub const CLOSE_REASON: &str = "service restart";

/// One open WebSocket's tie to the lifecycle: the shutdown waits (within the
/// grace period) until every guard is dropped, and [`WebSocketGuard::closing`]
/// tells the socket when to send its close frame.
#[derive(Debug)]
pub struct WebSocketGuard {
    close: CancellationToken,
    _open: TaskTrackerToken,
}

/// The WebSockets of one lifecycle.
#[derive(Debug, Clone, Default)]
pub(crate) struct WebSockets {
    pub(crate) close: CancellationToken,
    pub(crate) open: TaskTracker,
}

impl WebSocketGuard {
    /// Resolves when the socket must close with [`CLOSE_SERVICE_RESTART`]:
    /// after the shutdown hooks have run. At once if that moment has passed.
    pub async fn closing(&self) {
        self.close.cancelled().await;
    }

    /// Whether the socket must close now.
    pub fn is_closing(&self) -> bool {
        self.close.is_cancelled()
    }
}

impl Lifecycle {
    /// Registers an open WebSocket. Keep the guard for as long as the socket
    /// is open; `select!` on [`WebSocketGuard::closing`] in its loop and send
    /// a close frame with [`CLOSE_SERVICE_RESTART`] when it fires:
    ///
    /// ```no_run
    /// # async fn ws(lifecycle: dropless_lifecycle::Lifecycle) {
    /// let guard = lifecycle.websocket();
    /// loop {
    ///     tokio::select! {
    ///         () = guard.closing() => {
    ///             // socket.send(Close(CLOSE_SERVICE_RESTART, CLOSE_REASON))
    ///             break;
    ///         }
    ///         // message = socket.recv() => ...
    ///     }
    /// }
    /// # }
    /// ```
    pub fn websocket(&self) -> WebSocketGuard {
        WebSocketGuard {
            close: self.inner.websockets.close.clone(),
            _open: self.inner.websockets.open.token(),
        }
    }
}
