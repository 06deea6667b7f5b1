//! Choice of a replica for a request: least requests in flight between two
//! ready members drawn at random ("power of two choices"), waiting up to the
//! queue deadline when none is ready.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::proxy::pool::Pool;
use crate::supervisor::Supervisor;
use crate::supervisor::replica::{InFlight, Replica};

/// How long a retry waits for another replica before trying again one that
/// already failed this request.
pub const RETRY_SAME_AFTER: Duration = Duration::from_millis(100);

/// A replica chosen for one attempt, its in-flight count taken.
#[derive(Debug)]
pub struct Pick {
    /// The replica.
    pub replica: Arc<Replica>,
    /// Its connection pool.
    pub pool: Pool,
    /// Counts the request on it until dropped.
    pub guard: InFlight,
    /// How long the request was held for a session handoff before it
    /// (zero without affinity, see [`crate::proxy::affinity`]).
    pub held: Duration,
}

impl Pick {
    /// Counts a request on `replica`, `held` after the request came; `None`
    /// when it is no longer `Ready`.
    pub fn begin(replica: Arc<Replica>, held: Duration) -> Option<Pick> {
        let (guard, pool) = replica.try_begin()?;
        Some(Pick {
            replica,
            pool,
            guard,
            held,
        })
    }
}

/// Why no replica was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPick {
    /// None was ready by the queue deadline.
    Deadline,
    /// None is ready and the service is scaled to zero: none will come.
    ScaledToZero,
}

/// What a pick reads of a service: the published routable set, its
/// changes, and whether it is scaled to zero. [`Supervisor`] is the one
/// the proxy uses; reading it takes no lock.
pub trait Routes {
    /// The ready members now.
    fn routable(&self) -> Arc<Vec<Arc<Replica>>>;
    /// Changes whenever the routable set (or the scale to zero) may have.
    fn watch_topology(&self) -> watch::Receiver<u64>;
    /// Scaled to zero on purpose: no replica will come.
    fn is_scaled_to_zero(&self) -> bool;
}

impl Routes for Supervisor {
    fn routable(&self) -> Arc<Vec<Arc<Replica>>> {
        Supervisor::routable(self)
    }

    fn watch_topology(&self) -> watch::Receiver<u64> {
        Supervisor::watch_topology(self)
    }

    fn is_scaled_to_zero(&self) -> bool {
        Supervisor::is_scaled_to_zero(self)
    }
}

/// Picks a ready member of `service` not in `tried` (or one in `tried` when
/// no other shows up soon), waiting until `deadline`; at once
/// [`NoPick::ScaledToZero`] when none is ready and the service is scaled to
/// zero.
pub async fn pick(
    service: &impl Routes,
    tried: &[Arc<Replica>],
    deadline: Instant,
) -> Result<Pick, NoPick> {
    // The common case, a ready replica at once, without subscribing to
    // topology changes; the loop below looks again after subscribing.
    if tried.is_empty()
        && let Some(pick) = choose(&service.routable()).and_then(|r| Pick::begin(r, Duration::ZERO))
    {
        return Ok(pick);
    }
    let mut topology = service.watch_topology();
    let allow_tried_at = Instant::now() + RETRY_SAME_AFTER;
    loop {
        topology.borrow_and_update();
        let ready = service.routable();
        if ready.is_empty() && service.is_scaled_to_zero() {
            return Err(NoPick::ScaledToZero);
        }
        let candidates = if tried.is_empty() {
            ready
        } else {
            let untried: Vec<_> = ready
                .iter()
                .filter(|r| !tried.iter().any(|t| Arc::ptr_eq(t, r)))
                .cloned()
                .collect();
            if untried.is_empty() && Instant::now() >= allow_tried_at {
                ready
            } else {
                Arc::new(untried)
            }
        };
        // A replica that left Ready between the snapshot and the count is
        // not taken. Its change publishes a new snapshot: the wait below
        // sees that (it may already be there) rather than spin on the old.
        if let Some(pick) = choose(&candidates).and_then(|r| Pick::begin(r, Duration::ZERO)) {
            return Ok(pick);
        }
        let wake = if tried.is_empty() {
            deadline
        } else {
            deadline.min(allow_tried_at.max(Instant::now()))
        };
        if Instant::now() >= deadline {
            return Err(NoPick::Deadline);
        }
        let _ = tokio::time::timeout_at(wake, topology.changed()).await;
    }
}

/// Power of two choices: the less loaded of two distinct random candidates.
pub fn choose(candidates: &[Arc<Replica>]) -> Option<Arc<Replica>> {
    match candidates.len() {
        0 => None,
        1 => Some(Arc::clone(&candidates[0])),
        n => {
            let mut rng = rand::rng();
            let a = rng.random_range(0..n);
            let b = (a + rng.random_range(1..n)) % n;
            let (ra, rb) = (&candidates[a], &candidates[b]);
            Some(Arc::clone(if rb.in_flight() < ra.in_flight() {
                rb
            } else {
                ra
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::event::ReplicaState;
    use crate::supervisor::replica::testing;

    /// A routable set the test publishes by hand.
    #[derive(Default)]
    struct Published {
        routable: Mutex<Arc<Vec<Arc<Replica>>>>,
        topology: watch::Sender<u64>,
        zero: bool,
    }

    impl Published {
        fn set(&self, replicas: &[&Arc<Replica>]) {
            *self.routable.lock().unwrap() =
                Arc::new(replicas.iter().map(|r| Arc::clone(r)).collect());
            self.topology.send_modify(|n| *n += 1);
        }
    }

    impl Routes for Published {
        fn routable(&self) -> Arc<Vec<Arc<Replica>>> {
            Arc::clone(&self.routable.lock().unwrap())
        }
        fn watch_topology(&self) -> watch::Receiver<u64> {
            self.topology.subscribe()
        }
        fn is_scaled_to_zero(&self) -> bool {
            self.zero
        }
    }

    fn ready(name: &str) -> Arc<Replica> {
        let (replica, _events) = testing::replica(name, "127.0.0.1:9", || {});
        replica.set_member(true);
        replica.set_state(ReplicaState::Ready, None);
        replica
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_for_a_ready_replica_and_takes_it_when_published() {
        let routes = Arc::new(Published::default());
        let start = Instant::now();
        let waiting = tokio::spawn({
            let routes = Arc::clone(&routes);
            async move {
                let pick = pick(routes.as_ref(), &[], start + Duration::from_secs(5)).await;
                (pick.map(|p| p.replica.name().to_owned()), start.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        let web1 = ready("web-1");
        routes.set(&[&web1]);
        let (picked, after) = waiting.await.unwrap();
        assert_eq!(picked, Ok("web-1".to_owned()));
        assert_eq!(after, Duration::from_secs(2), "at once, not at a poll");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_gives_up_at_its_queue_deadline() {
        let routes = Published::default();
        let start = Instant::now();
        let result = pick(&routes, &[], start + Duration::from_secs(5)).await;
        assert_eq!(
            result.map(|p| p.replica.name().to_owned()),
            Err(NoPick::Deadline)
        );
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_scaled_to_zero_answers_at_once() {
        let routes = Published {
            zero: true,
            ..Published::default()
        };
        let start = Instant::now();
        let result = pick(&routes, &[], start + Duration::from_secs(5)).await;
        assert_eq!(
            result.map(|p| p.replica.name().to_owned()),
            Err(NoPick::ScaledToZero)
        );
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_prefers_another_replica_and_falls_back_to_the_tried_one() {
        let web1 = ready("web-1");
        let routes = Arc::new(Published::default());
        routes.set(&[&web1]);
        let start = Instant::now();
        // Only the tried replica: it is taken again after RETRY_SAME_AFTER.
        let again = pick(
            routes.as_ref(),
            &[Arc::clone(&web1)],
            start + Duration::from_secs(5),
        )
        .await;
        assert_eq!(
            again.map(|p| p.replica.name().to_owned()),
            Ok("web-1".to_owned())
        );
        assert_eq!(start.elapsed(), RETRY_SAME_AFTER);

        // Another one that becomes ready before then is taken instead.
        let start = Instant::now();
        let waiting = tokio::spawn({
            let (routes, web1) = (Arc::clone(&routes), Arc::clone(&web1));
            async move {
                let pick = pick(routes.as_ref(), &[web1], start + Duration::from_secs(5)).await;
                (pick.map(|p| p.replica.name().to_owned()), start.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_millis(40)).await;
        let web2 = ready("web-2");
        routes.set(&[&web1, &web2]);
        let (picked, after) = waiting.await.unwrap();
        assert_eq!(picked, Ok("web-2".to_owned()));
        assert_eq!(after, Duration::from_millis(40));
    }

    #[test]
    fn a_replica_that_left_ready_after_the_snapshot_is_not_taken() {
        // On its own thread: a pick that spins on the stale snapshot never
        // yields, so only a wall-clock bound outside its runtime can see it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap();
            let _ = tx.send(runtime.block_on(async {
                let (web1, web2) = (ready("web-1"), ready("web-2"));
                let routes = Published::default();
                routes.set(&[&web1]);
                // The snapshot still lists it, but it is draining: try_begin
                // refuses it and the pick waits for the next publication.
                web1.set_state(ReplicaState::Draining, None);
                let start = Instant::now();
                let result =
                    tokio::join!(pick(&routes, &[], start + Duration::from_secs(5)), async {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        routes.set(&[&web2]);
                    })
                    .0;
                (result.map(|p| p.replica.name().to_owned()), start.elapsed())
            }));
        });
        let (picked, after) = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the pick spins on a stale snapshot");
        assert_eq!(picked, Ok("web-2".to_owned()));
        assert_eq!(after, Duration::from_millis(300));
    }
}
