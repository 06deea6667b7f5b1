//! The keep-alive pools to one replica, two of them because the two paths
//! speak HTTP differently: [`SocketPool`] keeps plain sockets for the
//! HTTP/1.1 fast path, which speaks HTTP on them itself; [`ConnPool`] keeps
//! hyper HTTP/1.1 client connections for the hyper path. Dropping the pool
//! (when the replica starts draining) closes the idle ones of both; requests
//! in flight keep theirs until they finish.

mod conns;
mod sockets;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use tokio::net::TcpStream;

pub use conns::{ConnPool, PooledBody};
pub use sockets::{SocketPool, use_slot};

/// The body of a request sent upstream: buffered (retryable) or streamed.
pub type UpstreamBody = BoxBody<Bytes, BoxError>;

/// The error of a streamed request body (the client's, or the proxy's own
/// read timeout).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request that got no response from the replica.
#[derive(Debug)]
pub struct SendFailure {
    /// What failed.
    pub error: PoolError,
    /// The request, when no byte of it was written: it may go elsewhere.
    pub request: Option<http::Request<UpstreamBody>>,
    /// It failed on a pooled connection that was reused.
    pub reused: bool,
}

/// Timeout of a TCP connect to a replica.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A request that got no response from the replica (not a single byte of
/// one, so it may be sent elsewhere when that is otherwise safe).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The TCP connect failed.
    #[error("connect to {addr} failed")]
    Connect {
        /// The replica's address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The TCP connect did not finish in time.
    #[error("connect to {addr} timed out after {CONNECT_TIMEOUT:?}")]
    ConnectTimeout {
        /// The replica's address.
        addr: SocketAddr,
    },
    /// The request failed on the connection before a response head came.
    #[error("request to {addr} failed")]
    Request {
        /// The replica's address.
        addr: SocketAddr,
        /// The cause.
        source: hyper::Error,
    },
    /// The request failed on a plain socket before a response byte came.
    #[error("request to {addr} failed")]
    Io {
        /// The replica's address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// The pools to one replica.
#[derive(Debug, Clone)]
pub struct Pool {
    sockets: SocketPool,
    conns: ConnPool,
}

impl Pool {
    /// Pools to `addr` whose idle connections close after `idle_timeout`.
    pub fn new(addr: SocketAddr, idle_timeout: Duration) -> Self {
        let pool = Self {
            sockets: SocketPool::new(addr, idle_timeout),
            conns: ConnPool::new(addr, idle_timeout),
        };
        // Closes connections idle longer than the timeout, even when no
        // request comes to look at them; ends with the pools.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (sockets, conns) = (pool.sockets.downgrade(), pool.conns.downgrade());
            runtime.spawn(async move {
                let period = idle_timeout.max(Duration::from_millis(100));
                loop {
                    tokio::time::sleep(period).await;
                    let (Some(sockets), Some(conns)) = (sockets.upgrade(), conns.upgrade()) else {
                        return;
                    };
                    sockets.evict_expired();
                    conns.evict_expired();
                }
            });
        }
        pool
    }

    /// The replica's address.
    pub fn addr(&self) -> SocketAddr {
        self.sockets.addr()
    }

    /// Plain sockets, for the fast path.
    pub fn sockets(&self) -> &SocketPool {
        &self.sockets
    }

    /// hyper connections, for the hyper path.
    pub fn conns(&self) -> &ConnPool {
        &self.conns
    }

    /// Closes the idle connections this thread could reuse, of both kinds:
    /// one of them failed as if the replica had closed it, so the others
    /// likely are closed too, and the next request should connect afresh.
    pub fn clear_idle(&self) {
        self.sockets.clear_idle();
        self.conns.clear_idle();
    }
}

/// A new plain socket to `addr`, with `TCP_NODELAY`.
async fn connect(addr: SocketAddr) -> Result<TcpStream, PoolError> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(PoolError::Connect { addr, source }),
        Err(_) => return Err(PoolError::ConnectTimeout { addr }),
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
