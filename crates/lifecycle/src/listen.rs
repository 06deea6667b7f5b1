//! The listening socket of a service: the one its supervisor passed (socket
//! activation, the systemd way: fd 3, `LISTEN_FDS=1`, `LISTEN_PID` the
//! service's pid; `dropless serve` does it for a version with
//! `socket_activation = true`), or else one bound on the given address.
//!
//! A passed socket cannot be taken by another process between the moment a
//! port is chosen and the moment it is bound, and a restart can keep
//! accepting on it.
//!
//! A socket bound here has an accept queue of [`BACKLOG`], not the 128 of
//! `std::net::TcpListener::bind` and `tokio::net::TcpListener::bind`: a
//! burst of new connections larger than the queue has its SYNs dropped,
//! and each such client waits for its retransmission, one second later.

use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;

/// The accept queue asked for by [`bind_addr`] and [`bind_std`]. Linux caps
/// it at `net.core.somaxconn` (4096 by default since 5.4): a few hundred
/// ms of connections at several thousand per second, where 128 overflowed
/// during a deploy at 10 000 requests per second (docs/benchmarks.md,
/// `deploy_under_load.sh`).
pub const BACKLOG: i32 = 4096;

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
    bind_addr(addr).await
}

/// A new listening socket on `addr` with an accept queue of [`BACKLOG`]
/// (and `SO_REUSEADDR`, as tokio's `bind` sets it).
pub async fn bind_addr(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = bind_std(addr)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// [`bind_addr`] outside a runtime: a blocking std listener, for a socket
/// handed to another process (socket activation).
pub fn bind_std(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
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
