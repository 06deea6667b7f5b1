//! The listening socket of a service: the one its supervisor passed (socket
//! activation, the systemd way: fd 3, `LISTEN_FDS=1`, `LISTEN_PID` the
//! service's pid; `dropless serve` does it for a version with
//! `socket_activation = true`), or else one bound on the given address.
//!
//! A passed socket cannot be taken by another process between the moment a
//! port is chosen and the moment it is bound, and a restart can keep
//! accepting on it.

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// The passed listening socket if there is one (taken once: the
/// environment variables are cleared), else a new one bound on `addr`.
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// let port = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8080);
/// let listener = dropless_lifecycle::listen::bind(([127, 0, 0, 1], port).into()).await?;
/// # Ok(()) }
/// ```
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if let Some(listener) = passed()? {
        return Ok(listener);
    }
    TcpListener::bind(addr).await
}

/// The listening socket passed by the supervisor, if any.
pub fn passed() -> std::io::Result<Option<TcpListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    match fds.take_tcp_listener(0)? {
        Some(listener) => {
            listener.set_nonblocking(true)?;
            Ok(Some(TcpListener::from_std(listener)?))
        }
        None => Ok(None),
    }
}
