//! Idle HTTP/1.1 connections, kept apart per sending thread.
//!
//! A socket is registered with the event loop of the thread that opened it:
//! used from another thread, every readiness event it gets wakes two threads
//! (the poller's and the request's), one of them through a cross-thread
//! wake-up. Each sending thread (a lane) therefore reuses its own
//! connections first. It takes another lane's idle one rather than open a
//! new connection, so no more connections exist than were ever in use at
//! once, and a connection goes back to the lane that opened it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Idle connections by lane (sending thread).
pub(crate) struct Pool<C> {
    lanes: Vec<Mutex<Vec<C>>>,
    /// Signalled once for each connection put back.
    returned: Notify,
    /// Connections put back so far.
    returns: AtomicU64,
    /// Requests waiting patiently for a connection to come back.
    patient: AtomicUsize,
}

/// Counts a patient waiter while it lives (see [`Pool::wait_patiently`]).
pub(crate) struct Patient<'a>(&'a AtomicUsize);

impl Drop for Patient<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<C> Pool<C> {
    /// A pool for `lanes` sending threads (at least one).
    pub(crate) fn new(lanes: usize) -> Self {
        Pool {
            lanes: (0..lanes.max(1)).map(|_| Mutex::new(Vec::new())).collect(),
            returned: Notify::new(),
            returns: AtomicU64::new(0),
            patient: AtomicUsize::new(0),
        }
    }

    /// The lane a loop on sending thread `n` uses.
    pub(crate) fn lane(&self, n: usize) -> usize {
        n % self.lanes.len()
    }

    /// An idle connection for `lane`, its own first, with the lane it
    /// belongs to.
    pub(crate) fn take(&self, lane: usize) -> Option<(C, usize)> {
        let lane = self.lane(lane);
        let count = self.lanes.len();
        (0..count).map(|i| (lane + i) % count).find_map(|home| {
            let conn = self.lanes[home].lock().expect("pool lock").pop();
            conn.map(|conn| (conn, home))
        })
    }

    /// Put an idle connection back into the lane it belongs to.
    pub(crate) fn put(&self, home: usize, conn: C) {
        self.lanes[self.lane(home)]
            .lock()
            .expect("pool lock")
            .push(conn);
        self.returns.fetch_add(1, Ordering::Relaxed);
        self.returned.notify_one();
    }

    /// Whether requests are waiting patiently for connections to come
    /// back (a catch-up burst is draining): a new request queues behind
    /// them rather than open a connection.
    pub(crate) fn draining(&self) -> bool {
        self.patient.load(Ordering::Relaxed) > 0
    }

    /// Counts a patient waiter until the guard is dropped.
    pub(crate) fn wait_patiently(&self) -> Patient<'_> {
        self.patient.fetch_add(1, Ordering::Relaxed);
        Patient(&self.patient)
    }

    /// How many connections were put back so far.
    pub(crate) fn returns(&self) -> u64 {
        self.returns.load(Ordering::Relaxed)
    }

    /// Ready once a connection was put back since the last call (or now).
    pub(crate) async fn returned(&self) {
        self.returned.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_reuses_its_own_connections_first_then_another_lanes() {
        let pool = Pool::new(2);
        pool.put(0, "a0");
        pool.put(1, "b1");
        pool.put(1, "b2");
        assert_eq!(pool.take(1), Some(("b2", 1)));
        assert_eq!(pool.take(0), Some(("a0", 0)));
        // Lane 0 has none left: it takes lane 1's rather than connect.
        assert_eq!(pool.take(0), Some(("b1", 1)));
        assert_eq!(pool.take(0), None);
        assert_eq!(pool.take(1), None);
    }
}
