//! Idle plain sockets to one replica, for the HTTP/1.1 fast path, kept per
//! proxy thread: a socket is registered with the event loop of the thread
//! that opened it, so each thread takes back its own.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::PoolError;

/// Slots of idle plain sockets in a pool; threads beyond this many share
/// slots.
const SLOTS: usize = 16;

thread_local! {
    static SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Makes the calling thread keep its idle plain sockets in slot `i` of every
/// pool (each proxy thread calls it once, with its index).
pub fn use_slot(i: usize) {
    SLOT.with(|s| s.set(i % SLOTS));
}

fn slot() -> usize {
    SLOT.with(std::cell::Cell::get)
}

/// Idle plain sockets to one replica, the most recently used last, in one
/// slot per proxy thread ([`use_slot`]).
#[derive(Debug, Clone)]
pub struct SocketPool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(super) struct Inner {
    addr: SocketAddr,
    idle_timeout: Duration,
    idle: [Mutex<Vec<(TcpStream, Instant)>>; SLOTS],
}

impl SocketPool {
    pub(super) fn new(addr: SocketAddr, idle_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                addr,
                idle_timeout,
                idle: std::array::from_fn(|_| Mutex::new(Vec::new())),
            }),
        }
    }

    pub(super) fn downgrade(&self) -> Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    /// The replica's address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The most recently used idle socket that is still open, for a caller
    /// that speaks HTTP/1.1 on it and gives it back with
    /// [`SocketPool::put`] once a response has ended cleanly.
    pub fn take(&self) -> Option<TcpStream> {
        let mut idle = self.inner.idle[slot()].lock().expect("pool lock");
        while let Some((stream, since)) = idle.pop() {
            if since.elapsed() < self.inner.idle_timeout && is_open(&stream) {
                return Some(stream);
            }
        }
        None
    }

    /// Gives back a socket whose last response ended cleanly.
    pub fn put(&self, stream: TcpStream) {
        let mut idle = self.inner.idle[slot()].lock().expect("pool lock");
        idle.push((stream, Instant::now()));
    }

    /// A new socket to the replica.
    pub async fn connect(&self) -> Result<TcpStream, PoolError> {
        super::connect(self.inner.addr).await
    }

    /// Closes this thread's idle sockets.
    pub(super) fn clear_idle(&self) {
        self.inner.idle[slot()].lock().expect("pool lock").clear();
    }
}

impl Inner {
    pub(super) fn evict_expired(&self) {
        for slot in &self.idle {
            let mut idle = slot.lock().expect("pool lock");
            idle.retain(|(stream, since)| since.elapsed() < self.idle_timeout && is_open(stream));
        }
    }
}

/// Whether an idle socket is still open: the peer neither closed it nor sent
/// anything unasked. Costs no system call unless the reactor saw the socket
/// become readable since the last read drained it.
fn is_open(stream: &TcpStream) -> bool {
    matches!(stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}
