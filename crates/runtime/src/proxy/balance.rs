//! Choice of a replica for a request: least requests in flight between two
//! ready members drawn at random ("power of two choices"), waiting up to the
//! queue deadline when none is ready.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
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

/// Why no replica was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPick {
    /// None was ready by the queue deadline.
    Deadline,
    /// None is ready and the service is scaled to zero: none will come.
    ScaledToZero,
}

/// Picks a ready member of `service` not in `tried` (or one in `tried` when
/// no other shows up soon), waiting until `deadline`; at once
/// [`NoPick::ScaledToZero`] when none is ready and the service is scaled to
/// zero.
pub async fn pick(
    service: &Supervisor,
    tried: &[Arc<Replica>],
    deadline: Instant,
) -> Result<Pick, NoPick> {
    // The common case, a ready replica at once, without subscribing to
    // topology changes; the loop below looks again after subscribing.
    if tried.is_empty()
        && let Some(replica) = choose(&service.routable())
        && let Some((guard, pool)) = replica.try_begin()
    {
        return Ok(Pick {
            replica,
            pool,
            guard,
            held: Duration::ZERO,
        });
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
        if let Some(replica) = choose(&candidates) {
            if let Some((guard, pool)) = replica.try_begin() {
                return Ok(Pick {
                    replica,
                    pool,
                    guard,
                    held: Duration::ZERO,
                });
            }
            // It left Ready between the snapshot and the count: look again.
            continue;
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
