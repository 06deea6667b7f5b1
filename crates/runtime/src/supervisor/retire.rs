//! Retirement of a replica, always in this order: stop routing to it, wait for
//! its in-flight requests (drain timeout), pre-stop delay, SIGTERM to its
//! process group, grace period, SIGKILL. An unmanaged target is drained but
//! never signalled.

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::config::RetireConfig;
use crate::event::ReplicaState;
use crate::supervisor::replica::Replica;

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
        Some((status, true)) => (
            format!("killed after grace {:?} ({status})", config.grace),
            true,
        ),
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
    replica.end_drain();
    if !config.pre_stop.is_zero() {
        tokio::time::sleep(config.pre_stop).await;
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
        tracing::warn!(
            replica = replica.name(),
            "grace {:?} passed after SIGTERM; sending SIGKILL",
            config.grace
        );
        process.signal_group(Signal::SIGKILL);
    }
    let status = process.exited().await;
    // The leader is gone; make sure nothing else of its group lingers.
    process.signal_group(Signal::SIGKILL);
    let detail = if killed {
        format!("killed after grace {:?} ({status})", config.grace)
    } else {
        status.to_string()
    };
    replica.set_state(ReplicaState::Exited, Some(detail));
    Retired { drained, killed }
}
