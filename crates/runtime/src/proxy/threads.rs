//! The proxy's threads. Each is a single-threaded tokio runtime with its own
//! epoll, accepting from the shared listener, as nginx's worker processes
//! do: a connection, its requests and the upstream sockets they use stay on
//! one thread, with no work stealing and no cross-thread wake-ups.
//!
//! Whichever thread wakes first would take a whole burst of new connections
//! (a load test opening 50 at once), leaving the others idle; so a thread
//! that accepts a connection while another thread serves fewer hands it to
//! the least loaded one (a connection is registered with a thread's epoll
//! only once it must wait, see [`ClientSocket`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::front::ClientSocket;
use super::park::{Parked, ParkedStream};
use super::{Builders, Proxy};

/// Most connections accepted in one go before the thread serves others.
const ACCEPT_BATCH: usize = 32;

/// A thread's handle on the shared listening socket. Connections are
/// accepted non-blocking and not registered with the thread's event loop
/// (see [`ClientSocket`]): tokio's listener would register each at once.
struct Listener(AsyncFd<socket2::Socket>);

impl Listener {
    fn new(listener: std::net::TcpListener) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let socket = socket2::Socket::from(listener);
        // SAFETY: the socket owns its fd and the `AsyncFd` owns the socket:
        // the fd stays open, and the same, for as long as it is registered.
        #[allow(unsafe_code)]
        let registered = unsafe { AsyncFd::register(socket) };
        registered.map(Self).map_err(std::io::Error::from)
    }

    /// Accepts the connections waiting (up to [`ACCEPT_BATCH`]), each given
    /// to `accepted`; returns an accept error, after which the caller backs
    /// off.
    fn accept_ready(
        &self,
        ready: &mut AsyncFdReadyGuard<'_, socket2::Socket>,
        mut accepted: impl FnMut(std::net::TcpStream, SocketAddr),
    ) -> Option<std::io::Error> {
        use nix::sys::socket::SockFlag;
        let flags = (SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC).bits();
        for _ in 0..ACCEPT_BATCH {
            match ready.try_io(|l| l.get_ref().accept4(flags)) {
                Ok(Ok((socket, addr))) => {
                    if let Some(peer) = addr.as_socket() {
                        accepted(socket.into(), peer);
                    }
                }
                // Taken by another thread, or none left: readiness cleared.
                Err(_would_block) => return None,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionAborted => {}
                Ok(Err(e)) => return Some(e),
            }
        }
        None
    }
}

/// Sets `TCP_NODELAY` on the listening socket, which the sockets it accepts
/// inherit (Linux copies the option to each): one system call for all
/// connections rather than one each, of the seven or so a `Connection:
/// close` request costs. `false` when it could not be set (each accepted
/// socket is then set itself).
fn nodelay_on_accept(listener: &std::net::TcpListener) -> bool {
    let set = socket2::SockRef::from(listener).set_tcp_nodelay(true);
    if let Err(e) = &set {
        tracing::debug!("TCP_NODELAY on the listener: {e}");
    }
    set.is_ok()
}

/// How long the kernel holds a new connection whose client has sent
/// nothing yet before handing it over anyway (`TCP_DEFER_ACCEPT`, whole
/// seconds).
const DEFER_ACCEPT_SECS: i32 = 1;

/// Sets `TCP_DEFER_ACCEPT` on the listening socket, as nginx's `deferred`
/// and HAProxy's `defer-accept` do: the kernel queues a connection for
/// `accept` only once its first bytes have arrived (every protocol the proxy
/// serves has the client speak first), so the first read of an accepted
/// connection finds its request. Without it about half of the connections
/// of a load opening one per request were accepted before their request
/// came: a read that found nothing, the socket registered with the thread's
/// epoll and removed again, and one more sleep and wake-up per connection.
/// A client that connects and sends nothing is accepted after
/// [`DEFER_ACCEPT_SECS`] (when the kernel resends its SYN-ACK), and its
/// header read timeout runs from then. `false` when it could not be set.
fn defer_accept(listener: &std::net::TcpListener) -> bool {
    use nix::libc;
    use std::os::fd::AsRawFd;
    let secs: libc::c_int = DEFER_ACCEPT_SECS;
    // SAFETY: the fd is the listener's, open for the call; the option's
    // value is a `c_int` that outlives it, its size passed with it.
    #[allow(unsafe_code)]
    let set = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            std::ptr::from_ref(&secs).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        tracing::debug!(
            "TCP_DEFER_ACCEPT on the listener: {}",
            std::io::Error::last_os_error()
        );
    }
    set == 0
}

/// How many fewer connections another thread must serve for a connection to
/// be handed to it. A hand-over wakes the other thread (a system call for
/// each, and a context switch when it slept); an imbalance of one
/// connection is not worth it, and under a load opening a connection per
/// request it happens all the time.
const HANDOVER_MARGIN: usize = 2;

/// The running proxy threads.
pub(super) struct Running {
    shared: Shared,
    finished: Vec<oneshot::Receiver<()>>,
}

/// What every proxy thread shares.
#[derive(Clone)]
struct Shared {
    proxy: Arc<Proxy>,
    builders: Arc<Builders>,
    /// Connection slots, `max_connections` in all.
    slots: Arc<Semaphore>,
    /// Open connections per thread.
    loads: Arc<Loads>,
    /// Where each thread takes connections another thread accepted.
    inboxes: Arc<[mpsc::UnboundedSender<Handoff>]>,
    /// Cancelled when the proxy stops accepting.
    stop_accepting: CancellationToken,
    /// The time connections get to finish, set before `stop_accepting`.
    grace: Arc<std::sync::Mutex<Duration>>,
    /// The upgraded connections (tunnels), which also get that time.
    tunnels: TaskTracker,
    /// Whether accepted sockets have `TCP_NODELAY` from the listener.
    nodelay_inherited: bool,
}

/// A connection accepted by one thread for another.
struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
    load: LoadGuard,
}

/// Open connections per thread.
#[derive(Debug)]
struct Loads(Box<[AtomicUsize]>);

/// Counts a connection on a thread until dropped.
#[derive(Debug)]
struct LoadGuard {
    loads: Arc<Loads>,
    thread: usize,
}

/// Starts `threads` proxy threads serving `listener` (or, when none can
/// start, one accept loop on the caller's runtime).
pub(super) fn start(
    proxy: Arc<Proxy>,
    builders: Arc<Builders>,
    listener: TcpListener,
    threads: usize,
) -> Running {
    let threads = threads.max(1);
    let (inboxes, receivers): (Vec<_>, Vec<_>) =
        (0..threads).map(|_| mpsc::unbounded_channel()).unzip();
    let mut shared = Shared {
        slots: Arc::new(Semaphore::new(proxy.config.load().max_connections)),
        grace: Arc::new(std::sync::Mutex::new(proxy.config.load().shutdown_grace)),
        tunnels: TaskTracker::new(),
        proxy,
        builders,
        loads: Loads::new(threads),
        inboxes: inboxes.into(),
        stop_accepting: CancellationToken::new(),
        nodelay_inherited: false,
    };
    let mut finished = Vec::new();
    let listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("proxy listener unusable: {e}");
            return Running { shared, finished };
        }
    };
    shared.nodelay_inherited = nodelay_on_accept(&listener);
    defer_accept(&listener);
    for (i, inbox) in receivers.into_iter().enumerate() {
        let spawned = listener
            .try_clone()
            .and_then(|l| shared.clone().spawn_thread(i, l, inbox));
        match spawned {
            Ok(done) => finished.push(done),
            Err(e) => tracing::error!("proxy thread {i} did not start: {e}"),
        }
    }
    if finished.is_empty() {
        // No thread would start: serve on the caller's runtime instead
        // (hand-overs to the threads fail, so it serves everything).
        let (_, inbox) = mpsc::unbounded_channel();
        match Listener::new(listener) {
            Ok(l) => finished.push(shared.clone().spawn_here(0, l, inbox)),
            Err(e) => tracing::error!("proxy listener unusable: {e}"),
        }
    }
    Running { shared, finished }
}

impl Running {
    /// Stops accepting, gives the open connections `grace` to finish, and
    /// waits for every thread to end.
    pub(super) async fn stop(self, grace: Duration) {
        *self.shared.grace.lock().expect("grace lock") = grace;
        self.shared.stop_accepting.cancel();
        for done in self.finished {
            let _ = done.await;
        }
    }
}

impl Shared {
    /// Starts proxy thread `index` accepting from `listener`; the receiver
    /// resolves when the thread has finished its connections.
    fn spawn_thread(
        self,
        index: usize,
        listener: std::net::TcpListener,
        inbox: mpsc::UnboundedReceiver<Handoff>,
    ) -> std::io::Result<oneshot::Receiver<()>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (done, finished) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("dropless-proxy-{index}"))
            .spawn(move || {
                crate::proxy::pool::use_slot(index);
                runtime.block_on(async move {
                    match Listener::new(listener) {
                        Ok(listener) => self.accept(index, listener, inbox).await,
                        Err(e) => tracing::error!("proxy thread {index}: {e}"),
                    }
                });
                // Tasks still running on it (WebSocket tunnels) end here.
                drop(runtime);
                let _ = done.send(());
            })?;
        Ok(finished)
    }

    /// Accepts from `listener` on the caller's runtime instead.
    fn spawn_here(
        self,
        index: usize,
        listener: Listener,
        inbox: mpsc::UnboundedReceiver<Handoff>,
    ) -> oneshot::Receiver<()> {
        let (done, finished) = oneshot::channel();
        tokio::spawn(async move {
            self.accept(index, listener, inbox).await;
            let _ = done.send(());
        });
        finished
    }

    /// Accepts (and takes handed-over) connections until the proxy stops
    /// accepting, then gives the open ones the grace period to finish.
    async fn accept(
        self,
        index: usize,
        listener: Listener,
        mut inbox: mpsc::UnboundedReceiver<Handoff>,
    ) {
        let served = Arc::new(Served {
            proxy: Arc::clone(&self.proxy),
            builders: Arc::clone(&self.builders),
            stop: CancellationToken::new(),
            connections: TaskTracker::new(),
            tunnels: self.tunnels.clone(),
        });
        let (stop, connections) = (&served.stop, &served.connections);
        loop {
            tokio::select! {
                ready = listener.0.readable() => {
                    let failed = match ready {
                        Ok(mut ready) => listener.accept_ready(&mut ready, |stream, peer| {
                            self.accepted(index, stream, peer, &served);
                        }),
                        Err(e) => Some(e),
                    };
                    if let Some(e) = failed {
                        // Out of file descriptors and the like: back off, keep serving.
                        crate::throttle::warn_throttled!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                Some(handoff) = inbox.recv() => self.adopt(index, handoff, &served),
                () = self.stop_accepting.cancelled() => break,
            }
        }
        drop(listener);
        // Connections handed over and not yet taken are served too; from
        // now on a thread that hands one here serves it itself.
        inbox.close();
        while let Ok(handoff) = inbox.try_recv() {
            self.adopt(index, handoff, &served);
        }
        connections.close();
        // Tunnels live on after their connection's task: wait for them too.
        let tunnels = self.tunnels.clone();
        tunnels.close();
        let open = connections.len() + tunnels.len();
        if open > 0 {
            tracing::info!("proxy stopped accepting; {open} connection(s) finishing");
        }
        stop.cancel();
        let grace = *self.grace.lock().expect("grace lock");
        tokio::select! {
            _ = futures_util::future::join(connections.wait(), tunnels.wait()) => {}
            () = tokio::time::sleep(grace) => tracing::warn!(
                "proxy connections forced closed after {grace:?}"
            ),
        }
    }

    /// A connection thread `index` accepted: served here, or handed to a
    /// thread that serves fewer.
    fn accepted(
        &self,
        index: usize,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        served: &Arc<Served>,
    ) {
        let max = self.proxy.config.load().max_connections;
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit {max} reached; closing");
            return;
        };
        if !self.nodelay_inherited {
            let _ = stream.set_nodelay(true);
        }
        let load = self.loads.place(index);
        if load.thread == index {
            return served.serve(stream, peer, slot, load);
        }
        let target = load.thread;
        let handoff = Handoff {
            stream,
            peer,
            slot,
            load,
        };
        if let Err(mpsc::error::SendError(handoff)) = self.inboxes[target].send(handoff) {
            // That thread has stopped (or never started): serve it here.
            self.adopt(index, handoff, served);
        }
    }

    /// Serves on thread `index` a connection accepted by another thread.
    fn adopt(&self, index: usize, mut handoff: Handoff, served: &Arc<Served>) {
        if handoff.load.thread != index {
            handoff.load = self.loads.count(index);
        }
        served.serve(handoff.stream, handoff.peer, handoff.slot, handoff.load);
    }
}

/// What the connections a thread serves share (one `Arc` in each
/// connection's task, not five).
struct Served {
    proxy: Arc<Proxy>,
    builders: Arc<Builders>,
    /// Cancelled when the thread stops accepting.
    stop: CancellationToken,
    /// The thread's connection tasks, which a stopping thread waits for.
    connections: TaskTracker,
    tunnels: TaskTracker,
}

impl Served {
    /// Serves a connection on this thread, counted until it ends.
    fn serve(
        self: &Arc<Self>,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        slot: OwnedSemaphorePermit,
        load: LoadGuard,
    ) {
        let conn = Conn {
            served: Arc::clone(self),
            _counted: (slot, load),
        };
        conn.start(Start::Accepted(ClientSocket::raw(stream), peer));
    }
}

/// A client connection served on this thread, with what its tasks need: it
/// is served by a task, parked in a smaller one while idle (see
/// [`super::park`]), and served again. It holds its slot and its count on the
/// thread until the last of them ends. Kept small: 10 000 idle connections
/// are 10 000 parked tasks holding one each (its client's address is asked
/// of the socket again when it resumes, rather than kept).
struct Conn {
    served: Arc<Served>,
    _counted: (OwnedSemaphorePermit, LoadGuard),
}

/// How a connection's serving task begins.
enum Start {
    /// Just accepted, from this client.
    Accepted(ClientSocket, SocketAddr),
    /// Parked, and now readable: the client's next request follows.
    Resumed(ParkedStream),
}

impl Conn {
    /// Serves a connection in a task; parks it when it idles.
    fn start(self, start: Start) {
        let served = Arc::clone(&self.served);
        // Boxed: the serving future is ~3 KB, and a task's future is moved
        // several times as it is spawned and once more as it ends; a pointer
        // is cheap to move, 3 KB of fresh memory is not (a connection per
        // request spent ~2 % of its CPU in those copies).
        served.connections.spawn(super::session::TUNNELS.scope(
            served.tunnels.clone(),
            Box::pin(async move {
                let served = &*self.served;
                let (proxy, builders, stop) = (&served.proxy, &*served.builders, &served.stop);
                let parked = match start {
                    Start::Accepted(stream, peer) => {
                        proxy.serve_connection(builders, stream, stop, peer).await
                    }
                    Start::Resumed(stream) => proxy.resume(builders, stream, stop).await,
                };
                if let Some(parked) = parked {
                    self.park(parked);
                }
            }),
        ));
    }

    /// Waits in a task of its own until the client of a parked connection
    /// sends something, then serves it again.
    fn park(self, parked: Parked) {
        let served = Arc::clone(&self.served);
        served.connections.spawn(async move {
            let metrics = self.served.proxy.ops.metrics();
            metrics.parked(true);
            let readable = parked.wait(&self.served.stop).await;
            metrics.parked(false);
            if readable {
                self.start(Start::Resumed(parked.stream));
            } else {
                parked.stream.close();
            }
        });
    }
}

impl Loads {
    fn new(threads: usize) -> Arc<Self> {
        Arc::new(Self((0..threads).map(|_| AtomicUsize::new(0)).collect()))
    }

    /// Where a connection accepted by thread `here` is served: `here`,
    /// unless another thread serves [`HANDOVER_MARGIN`] fewer; counted there
    /// from now on.
    fn place(self: &Arc<Self>, here: usize) -> LoadGuard {
        let mut target = here;
        let mut least = self.0[here].load(Ordering::Relaxed);
        let mut threshold = least.saturating_sub(HANDOVER_MARGIN - 1);
        for (i, load) in self.0.iter().enumerate() {
            let n = load.load(Ordering::Relaxed);
            if n < threshold && n < least {
                (target, least) = (i, n);
                threshold = least;
            }
        }
        self.count(target)
    }

    /// Counts a connection on `thread`.
    fn count(self: &Arc<Self>, thread: usize) -> LoadGuard {
        self.0[thread].fetch_add(1, Ordering::Relaxed);
        LoadGuard {
            loads: Arc::clone(self),
            thread,
        }
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.loads.0[self.thread].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(loads: &Loads) -> Vec<usize> {
        loads.0.iter().map(|l| l.load(Ordering::Relaxed)).collect()
    }

    #[test]
    fn a_burst_accepted_by_one_thread_is_spread_over_all() {
        let loads = Loads::new(3);
        let guards: Vec<_> = (0..30).map(|_| loads.place(0)).collect();
        let c = counts(&loads);
        assert_eq!(c.iter().sum::<usize>(), 30);
        let (most, least) = (c.iter().max().unwrap(), c.iter().min().unwrap());
        assert!(most - least <= HANDOVER_MARGIN, "{c:?}");
        // Within the margin, connections stay where they were accepted.
        assert!(guards[..2].iter().all(|g| g.thread == 0));
        drop(guards);
        assert_eq!(counts(&loads), [0, 0, 0]);
        let here = loads.place(2);
        assert_eq!(here.thread, 2, "all equal: served where accepted");
    }

    #[tokio::test]
    async fn accepted_sockets_get_tcp_nodelay_from_the_listener() {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(nodelay_on_accept(&std_listener));
        let addr = std_listener.local_addr().unwrap();
        let listener = Listener::new(std_listener).unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut accepted = Vec::new();
        while accepted.is_empty() {
            let mut ready = listener.0.readable().await.unwrap();
            assert!(
                listener
                    .accept_ready(&mut ready, |s, _| accepted.push(s))
                    .is_none()
            );
        }
        assert!(
            accepted[0].nodelay().unwrap(),
            "inherited from the listener"
        );
    }

    #[test]
    fn a_connection_is_accepted_once_its_client_has_sent_something() {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(defer_accept(&listener));
        let mut secs: nix::libc::c_int = 0;
        let mut len = std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t;
        // SAFETY: the listener's fd, a `c_int` and its size, as the kernel
        // reads them back.
        #[allow(unsafe_code)]
        let got = unsafe {
            nix::libc::getsockopt(
                listener.as_raw_fd(),
                nix::libc::IPPROTO_TCP,
                nix::libc::TCP_DEFER_ACCEPT,
                std::ptr::from_mut(&mut secs).cast(),
                &mut len,
            )
        };
        assert_eq!((got, secs), (0, DEFER_ACCEPT_SECS));

        listener.set_nonblocking(true).unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        // The handshake is done on the client's side; the proxy gets
        // nothing to accept until the client speaks.
        assert_eq!(
            listener.accept().unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        listener.set_nonblocking(false).unwrap();
        let (mut accepted, _) = listener.accept().unwrap();
        // Its request is already there: a read that does not wait finds it.
        accepted.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        let n = accepted.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn a_connection_that_ends_frees_its_thread() {
        let loads = Loads::new(2);
        let a = loads.place(0);
        let b = loads.place(0);
        assert_eq!((a.thread, b.thread), (0, 0), "one apart: no hand-over");
        let c = loads.place(0);
        assert_eq!(c.thread, 1, "two apart: handed over");
        drop(c);
        assert_eq!(loads.place(0).thread, 1);
    }
}
