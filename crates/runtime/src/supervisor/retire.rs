//! Retirement of a replica, always in this order: stop routing to it, wait for
//! its in-flight requests (drain timeout), pre-stop delay, close its tunnels
//! (WebSockets: a 1012 close), SIGTERM to its process group, grace period,
//! SIGKILL. An unmanaged target is drained but
//! never signalled.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::config::RetireConfig;
use crate::event::ReplicaState;
use crate::supervisor::replica::Replica;

/// How long a retirement waits for the tunnels it closed to end (the
/// proxy gives a frame in progress 1 s) before SIGTERM.
pub const TUNNELS_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How a retirement went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    /// All in-flight requests finished before the drain timeout.
    pub drained: bool,
    /// The process had to be killed with SIGKILL after the grace period.
    pub killed: bool,
}

/// Retires `replica` as configured by `config`: in order, or as Kubernetes
/// would when `kubernetes_endpoint_delay` is set.
pub async fn retire(replica: &Replica, config: &RetireConfig) -> Retired {
    match config.kubernetes_endpoint_delay {
        Some(delay) => retire_like_kubernetes(replica, config, delay).await,
        None => retire_in_order(replica, config).await,
    }
}

/// Kubernetes emulation: the endpoint removal (after `endpoint_delay`) and
/// pre-stop → SIGTERM → SIGKILL (grace counted from the start) race, with no
/// drain; only a pre-stop longer than the endpoint delay protects requests.
async fn retire_like_kubernetes(
    replica: &Replica,
    config: &RetireConfig,
    endpoint_delay: std::time::Duration,
) -> Retired {
    // Propagation to every node and load balancer is never exact: ±20 %.
    let endpoint_delay = endpoint_delay.mul_f64(rand::random_range(0.8..=1.2));
    let routing_off = async {
        tokio::time::sleep(endpoint_delay).await;
        replica.set_member(false);
        let detail = format!(
            "endpoint removed {endpoint_delay:?} after the deletion (kubernetes emulation)"
        );
        replica.set_state(ReplicaState::Draining, Some(detail));
    };
    let signals = async {
        tokio::time::sleep(config.pre_stop).await;
        let process = replica.process()?;
        process.signal_group(Signal::SIGTERM);
        let rest = config.grace.saturating_sub(config.pre_stop);
        let killed = tokio::time::timeout(rest, process.exited()).await.is_err();
        if killed {
            process.signal_group(Signal::SIGKILL);
        }
        Some((process.exited().await, killed))
    };
    let ((), signalled) = tokio::join!(routing_off, signals);
    replica.set_state(ReplicaState::Stopping, None);
    let (detail, killed) = match signalled {
        Some((status, true)) => (killed_detail(config.grace, &status), true),
        Some((status, false)) => (status.to_string(), false),
        None => ("unmanaged target, not signalled".to_string(), false),
    };
    replica.set_state(ReplicaState::Exited, Some(detail));
    Retired {
        drained: replica.in_flight() == 0,
        killed,
    }
}

async fn retire_in_order(replica: &Replica, config: &RetireConfig) -> Retired {
    // Stop routing first: from here no new request is counted on it.
    replica.set_state(ReplicaState::Draining, None);
    let drained = replica.wait_idle(config.drain_timeout).await;
    if !drained {
        tracing::warn!(
            replica = replica.name(),
            in_flight = replica.in_flight(),
            "drain timeout {:?} passed; stopping anyway",
            config.drain_timeout
        );
    }
    if !config.pre_stop.is_zero() {
        tokio::time::sleep(config.pre_stop).await;
    }
    // Tunnels (WebSockets) got the drain and the pre-stop; they are closed
    // now (a 1012 close to each side after the frame in progress), before
    // the process is told to stop.
    replica.end_drain();
    if !replica.wait_tunnels_closed(TUNNELS_CLOSE_WAIT).await {
        tracing::warn!(
            replica = replica.name(),
            "tunnels still open {TUNNELS_CLOSE_WAIT:?} after the drain; stopping anyway"
        );
    }
    let Some(process) = replica.process() else {
        replica.set_state(ReplicaState::Stopping, None);
        replica.set_state(
            ReplicaState::Exited,
            Some("unmanaged target, not signalled".into()),
        );
        return Retired {
            drained,
            killed: false,
        };
    };
    replica.set_state(ReplicaState::Stopping, Some("SIGTERM".into()));
    process.signal_group(Signal::SIGTERM);
    let killed = tokio::time::timeout(config.grace, process.exited())
        .await
        .is_err();
    if killed {
        // No grace at all is a fast stop's plan (a failed start, a second
        // signal), not news: the operator was told why already (a warning
        // here was a second line under `serve`'s one-line error).
        if config.grace.is_zero() {
            tracing::debug!(replica = replica.name(), "fast stop: sending SIGKILL");
        } else {
            tracing::warn!(
                replica = replica.name(),
                "grace {:?} passed after SIGTERM; sending SIGKILL",
                config.grace
            );
        }
        process.signal_group(Signal::SIGKILL);
    }
    let status = process.exited().await;
    // The leader is gone; make sure nothing else of its group lingers.
    process.signal_group(Signal::SIGKILL);
    let detail = if killed {
        killed_detail(config.grace, &status)
    } else {
        status.to_string()
    };
    replica.set_state(ReplicaState::Exited, Some(detail));
    Retired { drained, killed }
}

/// What a killed replica's exit says: killed after its grace, or at once
/// by a fast stop (no grace), which is the plan rather than a replica that
/// would not stop.
fn killed_detail(grace: Duration, status: &impl std::fmt::Display) -> String {
    if grace.is_zero() {
        format!("killed at once by a fast stop ({status})")
    } else {
        format!("killed after grace {grace:?} ({status})")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::event::{Event, EventKind};

    /// A `Ready` replica that routes to an address dropless does not own
    /// (no process: retirement drains it and does not signal).
    fn ready_target() -> (Arc<Replica>, tokio::sync::broadcast::Receiver<Event>) {
        let (replica, events) =
            crate::supervisor::replica::testing::replica("web-1", "127.0.0.1:9", || {});
        replica.set_member(true);
        replica.set_state(ReplicaState::Ready, None);
        (replica, events)
    }

    fn config(drain_timeout: u64, pre_stop: u64) -> RetireConfig {
        RetireConfig {
            drain_timeout: Duration::from_secs(drain_timeout),
            pre_stop: Duration::from_secs(pre_stop),
            grace: Duration::from_secs(30),
            kubernetes_endpoint_delay: None,
        }
    }

    /// Each state the replica entered (its events), and when, from the
    /// start of the retirement, until it is gone.
    async fn timeline(
        mut events: tokio::sync::broadcast::Receiver<Event>,
        start: Instant,
    ) -> Vec<(ReplicaState, Duration)> {
        let mut seen = Vec::new();
        loop {
            let event = events.recv().await.unwrap();
            if let EventKind::Replica { state, .. } = event.kind {
                seen.push((state, start.elapsed()));
                if state.is_terminal() {
                    return seen;
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn routing_stops_first_then_in_flight_requests_end_then_pre_stop_then_the_stop() {
        let (replica, events) = ready_target();
        let (request, _pool) = replica.try_begin().expect("ready");
        let start = Instant::now();
        // From now: the events of the retirement, not of the start.
        let watch = tokio::spawn(timeline(events.resubscribe(), start));
        let retire = tokio::spawn({
            let replica = Arc::clone(&replica);
            async move { retire(&replica, &config(30, 5)).await }
        });
        // The request in flight ends 2 s into the drain.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(replica.state(), ReplicaState::Draining);
        assert!(
            replica.try_begin().is_none(),
            "no new request once draining"
        );
        drop(request);
        let retired = retire.await.unwrap();
        assert_eq!(
            retired,
            Retired {
                drained: true,
                killed: false
            }
        );
        let seen = watch.await.unwrap();
        let states: Vec<_> = seen.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            states,
            [
                ReplicaState::Draining,
                ReplicaState::Stopping,
                ReplicaState::Exited
            ]
        );
        // Draining at once; stopping after the request (2 s) and the
        // pre-stop delay (5 s).
        assert_eq!(seen[0].1, Duration::ZERO);
        assert_eq!(seen[1].1, Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_never_ends_is_given_up_on_at_the_drain_timeout() {
        let (replica, _events) = ready_target();
        let (_request, _pool) = replica.try_begin().expect("ready");
        let start = Instant::now();
        let retired = retire(&replica, &config(10, 1)).await;
        assert_eq!(
            retired,
            Retired {
                drained: false,
                killed: false
            }
        );
        assert_eq!(start.elapsed(), Duration::from_secs(11));
        assert_eq!(replica.state(), ReplicaState::Exited);
    }

    #[tokio::test(start_paused = true)]
    async fn kubernetes_routes_to_a_replica_until_its_endpoint_delay_whatever_the_pre_stop() {
        let (replica, events) = ready_target();
        let start = Instant::now();
        let watch = tokio::spawn(timeline(events.resubscribe(), start));
        let mut k8s = config(30, 0);
        k8s.kubernetes_endpoint_delay = Some(Duration::from_secs(10));
        let retired = retire(&replica, &k8s).await;
        assert!(!retired.killed);
        let seen = watch.await.unwrap();
        // Still routable (Ready) until the endpoint delay, jittered ±20 %.
        let (draining, at) = seen[0];
        assert_eq!(draining, ReplicaState::Draining);
        assert!(
            (Duration::from_secs(8)..=Duration::from_secs(12)).contains(&at),
            "{at:?}"
        );
    }
}
