//! The replicas over time: while a trial's load runs, the runtime's event
//! stream is followed and, at each event, the ready replicas and their
//! version are read from its status; every change is a point of the
//! report's `replicas` timeline.

use dropless_runtime::{
    control::ControlClient, desired::Release, event::ReplicaState, supervisor::ServiceStatus,
};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The ready replicas from a time on, until the next point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaPoint {
    /// Seconds from the start of the load.
    pub t_s: f64,
    /// Replicas ready (getting traffic).
    pub ready: usize,
    /// Their version (`v1`; `v1 + v2` during a rollout), from the
    /// `VERSION` the trial gives each release.
    pub version: String,
}

/// Follows the runtime's events from `started` until `done` is cancelled
/// or the runtime stops; returns the points, a first one at once.
pub(crate) async fn follow(
    control: ControlClient,
    started: Instant,
    done: CancellationToken,
) -> Vec<ReplicaPoint> {
    // A release's label is known once it is the current or previous one:
    // the generations are kept, and named at the end.
    let mut seen: Vec<(f64, usize, Vec<u64>)> = Vec::new();
    let mut labels = BTreeMap::new();
    if let Ok(mut stream) = control.subscribe().await {
        loop {
            // Read after subscribing, so that no change is missed.
            if let Ok(services) = control.status().await {
                let (ready, generations) = ready_replicas(&services, &mut labels);
                if seen
                    .last()
                    .is_none_or(|(_, r, g)| (*r, g) != (ready, &generations))
                {
                    seen.push((started.elapsed().as_secs_f64(), ready, generations));
                }
            }
            tokio::select! {
                next = stream.next() => if !matches!(next, Ok(Some(_))) {
                    break;
                },
                () = done.cancelled() => break,
            }
        }
    }
    let mut points: Vec<ReplicaPoint> = Vec::new();
    for (t_s, ready, generations) in seen {
        let mut names: Vec<String> = Vec::new();
        for generation in generations {
            let name = labels
                .get(&generation)
                .cloned()
                .unwrap_or_else(|| format!("generation {generation}"));
            if !names.contains(&name) {
                names.push(name);
            }
        }
        let version = names.join(" + ");
        if points
            .last()
            .is_none_or(|p| p.ready != ready || p.version != version)
        {
            points.push(ReplicaPoint {
                t_s,
                ready,
                version,
            });
        }
    }
    points
}

/// The ready replicas of every service and their generations, oldest
/// first; learns the labels of the releases in `services`.
fn ready_replicas(
    services: &[ServiceStatus],
    labels: &mut BTreeMap<u64, String>,
) -> (usize, Vec<u64>) {
    let mut ready = 0;
    let mut generations = Vec::new();
    for service in services {
        for release in std::iter::once(&service.desired.current).chain(&service.desired.previous) {
            labels.insert(release.generation, label_of(release));
        }
        for replica in &service.replicas {
            if replica.state == ReplicaState::Ready {
                ready += 1;
                generations.push(replica.generation);
            }
        }
    }
    generations.sort_unstable();
    generations.dedup();
    (ready, generations)
}

/// The `VERSION` of a release, else its generation.
fn label_of(release: &Release) -> String {
    release
        .version
        .env
        .get("VERSION")
        .cloned()
        .unwrap_or_else(|| format!("generation {}", release.generation))
}
