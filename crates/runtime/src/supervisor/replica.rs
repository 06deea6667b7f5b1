//! A replica: one instance of a service version, its state machine
//! (`Starting → Ready → Draining → Stopping → Exited | Failed`), its in-flight
//! request count and its connection pool.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::event::{Event, EventKind, Events, ReplicaState};
use crate::proxy::pool::Pool;
use crate::supervisor::process::Process;

/// One instance of a service.
#[derive(Debug)]
pub struct Replica {
    name: String,
    service: String,
    generation: u64,
    addr: SocketAddr,
    process: Option<Process>,
    log: Option<PathBuf>,
    state: watch::Sender<ReplicaState>,
    events: Events,
    changed: OnChange,
    in_flight: AtomicUsize,
    idle: Notify,
    /// Open tunnels (WebSockets): not requests, so the drain does not wait
    /// for them; the retirement closes them and waits for that.
    tunnels: watch::Sender<usize>,
    /// Its pools while it takes requests; read without a lock by every
    /// request, emptied when it stops being `Ready`.
    pool: ArcSwapOption<Pool>,
    member: AtomicBool,
    retiring: AtomicBool,
    drain_deadline: CancellationToken,
    detail: Mutex<Option<String>>,
    /// Slots for request bodies streamed to it, sized by the proxy on first
    /// use (`proxy.max_streamed_uploads`).
    uploads: std::sync::OnceLock<Arc<tokio::sync::Semaphore>>,
    /// Its service's count of failed probes (metrics).
    probe_failures: Arc<ProbeFailures>,
}

/// A service's failed probes (not counting those that could not run here):
/// of starting replicas, and of ready ones.
#[derive(Debug, Default)]
pub struct ProbeFailures {
    /// Probes of a starting replica that failed.
    pub starting: AtomicU64,
    /// Probes of a ready replica that failed.
    pub ready: AtomicU64,
}

impl ProbeFailures {
    /// The counts now: (starting, ready).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.starting.load(Ordering::Relaxed),
            self.ready.load(Ordering::Relaxed),
        )
    }
}

/// Counts one request in flight on a replica until dropped.
#[derive(Debug)]
pub struct InFlight {
    replica: Arc<Replica>,
}

/// Counts an open tunnel on its replica until dropped.
#[derive(Debug)]
pub struct Tunnel {
    replica: Arc<Replica>,
}

impl InFlight {
    /// The request became a tunnel (a WebSocket after its upgrade): it no
    /// longer counts as in flight, but as an open tunnel.
    pub fn into_tunnel(self) -> Tunnel {
        let replica = Arc::clone(&self.replica);
        replica.tunnels.send_modify(|n| *n += 1);
        drop(self);
        Tunnel { replica }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.replica.tunnels.send_modify(|n| *n -= 1);
    }
}

/// What a replica calls after each change of its state or membership.
#[derive(Clone)]
pub struct OnChange(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for OnChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnChange")
    }
}

/// What a new replica is made of.
#[derive(Debug)]
pub struct ReplicaParts {
    /// Replica name, e.g. `web-3`.
    pub name: String,
    /// Service name.
    pub service: String,
    /// Release generation it runs.
    pub generation: u64,
    /// Address it serves on.
    pub addr: SocketAddr,
    /// Its process, unless it is an unmanaged target.
    pub process: Option<Process>,
    /// Its log file, when it has a process.
    pub log: Option<PathBuf>,
    /// Where its events go.
    pub events: Events,
    /// Called after every change of its state or membership, so that its
    /// service publishes what is routable and waiting requests look again.
    pub on_change: OnChange,
    /// Idle timeout of its connection pool.
    pub pool_idle_timeout: Duration,
    /// Where its failed probes are counted (its service's counter).
    pub probe_failures: Arc<ProbeFailures>,
}

impl Replica {
    /// A replica in state `Starting`.
    pub fn new(parts: ReplicaParts) -> Arc<Self> {
        let replica = Arc::new(Self {
            pool: ArcSwapOption::from_pointee(Pool::new(parts.addr, parts.pool_idle_timeout)),
            name: parts.name,
            service: parts.service,
            generation: parts.generation,
            addr: parts.addr,
            process: parts.process,
            log: parts.log,
            state: watch::Sender::new(ReplicaState::Starting),
            events: parts.events,
            changed: parts.on_change,
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            tunnels: watch::Sender::new(0),
            member: AtomicBool::new(false),
            retiring: AtomicBool::new(false),
            drain_deadline: CancellationToken::new(),
            detail: Mutex::new(None),
            uploads: std::sync::OnceLock::new(),
            probe_failures: parts.probe_failures,
        });
        replica.emit(ReplicaState::Starting, None);
        replica
    }

    /// Its slots for streamed request bodies: `limit` of them, the limit
    /// given on first use.
    pub fn uploads(&self, limit: usize) -> Arc<tokio::sync::Semaphore> {
        Arc::clone(
            self.uploads
                .get_or_init(|| Arc::new(tokio::sync::Semaphore::new(limit))),
        )
    }

    /// Replica name, e.g. `web-3`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Release generation it runs.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process, unless it is an unmanaged target.
    pub fn process(&self) -> Option<&Process> {
        self.process.as_ref()
    }

    /// Its log file.
    pub fn log(&self) -> Option<&PathBuf> {
        self.log.as_ref()
    }

    /// Its current state.
    pub fn state(&self) -> ReplicaState {
        *self.state.borrow()
    }

    /// A receiver of its state changes.
    pub fn watch_state(&self) -> watch::Receiver<ReplicaState> {
        self.state.subscribe()
    }

    /// The last reason given for a state change (exit status, probe failure).
    pub fn detail(&self) -> Option<String> {
        self.detail.lock().expect("detail lock").clone()
    }

    /// Requests in flight on it.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// True when it counts toward the service's desired replicas.
    pub fn is_member(&self) -> bool {
        self.member.load(Ordering::SeqCst)
    }

    /// Makes it count (or not) toward the desired replicas.
    pub fn set_member(&self, member: bool) {
        if self.member.swap(member, Ordering::SeqCst) != member {
            (self.changed.0)();
        }
    }

    /// True once its retirement began: it no longer counts, and its exit
    /// is expected (not a crash to replace).
    pub fn is_retiring(&self) -> bool {
        self.retiring.load(Ordering::SeqCst)
    }

    /// Marks the start of its retirement.
    pub fn set_retiring(&self) {
        self.retiring.store(true, Ordering::SeqCst);
    }

    /// Moves to `next` when that is forward in the life cycle; returns whether
    /// it moved. The change is broadcast as an event.
    pub fn set_state(&self, next: ReplicaState, detail: Option<String>) -> bool {
        let moved = self.state.send_if_modified(|s| {
            if next.rank() > s.rank() {
                // The reason is in place before any watcher sees the state.
                if detail.is_some() {
                    *self.detail.lock().expect("detail lock") = detail.clone();
                }
                *s = next;
                true
            } else {
                false
            }
        });
        if moved {
            if next != ReplicaState::Ready {
                // Draining closes the idle keep-alive connections at once.
                self.pool.store(None);
            }
            if next.is_terminal() {
                self.drain_deadline.cancel();
            }
            self.emit(next, detail);
            (self.changed.0)();
        }
        moved
    }

    /// Counts a new request on it, if it is `Ready`; the count is taken before
    /// the state is checked so that a drain never misses it.
    pub fn try_begin(self: &Arc<Self>) -> Option<(InFlight, Pool)> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight {
            replica: Arc::clone(self),
        };
        if self.state() != ReplicaState::Ready {
            return None;
        }
        let pool = Pool::clone(self.pool.load().as_deref()?);
        Some((guard, pool))
    }

    /// Waits until no request is in flight, at most `timeout`; returns whether
    /// it drained.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight() == 0;
            }
        }
    }

    /// Cancelled when its drain deadline passes or it is gone: long-lived
    /// tunnels (WebSocket) close then.
    pub fn drain_deadline(&self) -> CancellationToken {
        self.drain_deadline.clone()
    }

    /// Counts a failed probe of this replica, `while_ready` or while it
    /// starts.
    pub fn count_probe_failure(&self, while_ready: bool) {
        let counter = match while_ready {
            true => &self.probe_failures.ready,
            false => &self.probe_failures.starting,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Its service's failed probes so far: (starting, ready).
    pub fn probe_failure_counts(&self) -> (u64, u64) {
        self.probe_failures.counts()
    }

    /// Ends the drain: tunnels still open are closed.
    pub fn end_drain(&self) {
        self.drain_deadline.cancel();
    }

    /// Waits until no tunnel is open, at most `timeout`; returns whether
    /// they all closed.
    pub async fn wait_tunnels_closed(&self, timeout: Duration) -> bool {
        let mut open = self.tunnels.subscribe();
        tokio::time::timeout(timeout, open.wait_for(|n| *n == 0))
            .await
            .is_ok()
    }

    fn emit(&self, state: ReplicaState, detail: Option<String>) {
        let event = Event::now(
            &self.service,
            EventKind::Replica {
                replica: self.name.clone(),
                state,
                addr: self.addr,
                detail,
            },
        );
        tracing::info!("{event}");
        self.events.send(event);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.replica.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.replica.idle.notify_waiters();
        }
    }
}

/// Replicas for unit tests: no process, an address dropless does not own.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{OnChange, Replica, ReplicaParts};
    use crate::event::{Event, Events};

    /// A `Starting` replica `name` of service `web` at `addr`, and a
    /// receiver of its events; `on_change` runs after each change.
    pub(crate) fn replica(
        name: &str,
        addr: &str,
        on_change: impl Fn() + Send + Sync + 'static,
    ) -> (Arc<Replica>, tokio::sync::broadcast::Receiver<Event>) {
        let events = Events::new(64);
        let receiver = events.subscribe();
        let replica = Replica::new(ReplicaParts {
            name: name.into(),
            service: "web".into(),
            generation: 1,
            addr: addr.parse().unwrap(),
            process: None,
            log: None,
            events,
            on_change: OnChange(Arc::new(on_change)),
            pool_idle_timeout: Duration::from_secs(30),
            probe_failures: Arc::default(),
        });
        (replica, receiver)
    }
}
