//! Rollouts: rolling (max surge, max unavailable), blue-green, scale,
//! restart and rollback. One rollout at a time per service; each moves through
//! explicit [`RolloutPhase`]s, broadcast as events. A new replica that crashes
//! or is not ready within its deadline aborts the rollout, and the old
//! release is restored so the old replicas keep serving.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::config::{Strategy, Version};
use crate::desired::{Desired, Release};
use crate::event::RolloutPhase;
use crate::supervisor::Supervisor;
use crate::supervisor::replica::Replica;
use crate::supervisor::retire::Retired;

/// What a rollout should do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum RolloutRequest {
    /// Roll out a new version.
    Deploy {
        /// The version to run.
        version: Version,
        /// The strategy and its limits.
        #[serde(default)]
        plan: Plan,
    },
    /// Replace every replica with a fresh one of the same version.
    Restart {
        /// The strategy and its limits.
        #[serde(default)]
        plan: Plan,
    },
    /// Change the replica count, at most the service's `max_replicas`.
    Scale {
        /// The new count.
        replicas: usize,
        /// Must be set for a count of 0: every replica stops and requests
        /// get a 503 at once until the service is scaled up again.
        #[serde(default)]
        allow_zero: bool,
    },
    /// Roll back to the previous release.
    Rollback {
        /// The strategy and its limits.
        #[serde(default)]
        plan: Plan,
    },
}

/// Strategy and limits for one rollout; unset fields come from the service
/// config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Plan {
    /// `rolling` or `blue-green`.
    pub strategy: Option<Strategy>,
    /// Replicas above the desired count during the rollout.
    pub max_surge: Option<usize>,
    /// Replicas below the desired count during the rollout.
    pub max_unavailable: Option<usize>,
}

/// A rollout that completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutReport {
    /// Rollout number within the service.
    pub id: u64,
    /// Service name.
    pub service: String,
    /// The desired state it reached.
    pub desired: Desired,
    /// Replicas it started.
    pub started: Vec<String>,
    /// Replicas it retired.
    pub retired: Vec<String>,
    /// Milliseconds it took.
    pub duration_ms: u64,
}

/// A rollout that did not complete.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutError {
    /// A new replica failed, or the new desired state could not be saved;
    /// the old release keeps serving.
    #[error("rollout {id} of {service} aborted: {reason}; the old version keeps serving")]
    Aborted {
        /// Rollout number.
        id: u64,
        /// Service name.
        service: String,
        /// The failing replica and probe.
        reason: String,
    },
    /// The request itself cannot be done.
    #[error("{0}")]
    Invalid(String),
    /// The runtime is stopping.
    #[error("service {0} is shutting down")]
    ShuttingDown(String),
}

/// Runs `request` on `supervisor`'s service and waits until it completed or
/// was aborted and rolled back.
pub async fn run(
    supervisor: &Supervisor,
    request: RolloutRequest,
) -> Result<RolloutReport, RolloutError> {
    // Its replicas are the orchestrator's: a rollout here would fight it.
    if let Some(discover) = &supervisor.config().discover {
        let action = match request {
            RolloutRequest::Deploy { .. } => "deploy",
            RolloutRequest::Restart { .. } => "restart",
            RolloutRequest::Scale { .. } => "scale",
            RolloutRequest::Rollback { .. } => "rollback",
        };
        return Err(RolloutError::Invalid(format!(
            "service {} takes its replicas from {}: {action} it with the orchestrator that owns them (e.g. `docker service update`), not with dropless",
            supervisor.name(),
            discover.from
        )));
    }
    if let RolloutRequest::Scale {
        replicas,
        allow_zero,
    } = request
    {
        check_count(supervisor, replicas, allow_zero)?;
    }
    let id = supervisor.next_rollout();
    let service = supervisor.name().to_string();
    supervisor.set_phase(id, RolloutPhase::Pending, Some(describe(&request)));
    let _one_at_a_time = supervisor.rollout_lock().lock().await;
    if supervisor.is_shutting_down() {
        return Err(RolloutError::ShuttingDown(service));
    }
    let began = Instant::now();
    let old = supervisor.desired();
    let config = supervisor.config().rollout.clone();
    let next_generation = old
        .current
        .generation
        .max(old.previous.as_ref().map_or(0, |p| p.generation))
        + 1;
    let (target, plan) = match request {
        RolloutRequest::Deploy { version, plan } => {
            version.validate().map_err(RolloutError::Invalid)?;
            let desired = Desired {
                current: Release {
                    generation: next_generation,
                    version,
                },
                previous: Some(old.current.clone()),
                replicas: old.replicas,
            };
            (desired, plan)
        }
        RolloutRequest::Restart { plan } => {
            let desired = Desired {
                current: Release {
                    generation: next_generation,
                    version: old.current.version.clone(),
                },
                previous: old.previous.clone(),
                replicas: old.replicas,
            };
            (desired, plan)
        }
        RolloutRequest::Rollback { plan } => {
            let previous = old.previous.clone().ok_or_else(|| {
                RolloutError::Invalid(format!(
                    "service {service} has no previous version to roll back to"
                ))
            })?;
            let desired = Desired {
                current: previous,
                previous: Some(old.current.clone()),
                replicas: old.replicas,
            };
            (desired, plan)
        }
        RolloutRequest::Scale { replicas, .. } => {
            let desired = Desired {
                replicas,
                ..old.clone()
            };
            (desired, Plan::default())
        }
    };
    let mut rollout = Rollout {
        supervisor,
        id,
        started: Vec::new(),
        retiring: JoinSet::new(),
        retired: Vec::new(),
    };
    let strategy = plan.strategy.unwrap_or(config.strategy);
    let surge = plan.max_surge.unwrap_or(config.max_surge);
    let unavailable = plan.max_unavailable.unwrap_or(config.max_unavailable);
    if surge == 0 && unavailable == 0 {
        return Err(RolloutError::Invalid(
            "max_surge and max_unavailable are both 0: the rollout could never progress; set max_surge to 1".into(),
        ));
    }
    // Scaled to zero from now: once its replicas stop routing, requests get
    // a 503 at once instead of waiting for a replica that will not come.
    supervisor.set_scaled_to_zero(target.replicas == 0);
    let outcome = match strategy {
        Strategy::BlueGreen if target.current != old.current => rollout.blue_green(&target).await,
        _ => rollout.converge(&target, surge, unavailable).await,
    };
    // Completed only once saved: a state that cannot be written (a full
    // disk) aborts the rollout, so what runs stays what the file says and
    // what a restarted `serve` runs.
    let outcome = match outcome {
        Ok(()) => supervisor
            .commit_desired(target.clone())
            .await
            .map_err(|e| format!("cannot save the desired state: {e}")),
        Err(reason) => Err(reason),
    };
    match outcome {
        Ok(()) => {
            rollout.finish_retirements().await;
            supervisor.set_phase(id, RolloutPhase::Completed, None);
            Ok(RolloutReport {
                id,
                service,
                desired: target,
                started: rollout.started,
                retired: rollout.retired,
                duration_ms: began.elapsed().as_millis() as u64,
            })
        }
        Err(reason) => {
            supervisor.set_phase(id, RolloutPhase::Aborted, Some(reason.clone()));
            supervisor.set_scaled_to_zero(old.replicas == 0);
            // Back to the old release; its replicas that are still members stay.
            let restored = rollout.converge(&old, surge.max(1), 0).await;
            rollout.finish_retirements().await;
            match restored {
                Ok(()) => supervisor.set_phase(id, RolloutPhase::RolledBack, None),
                Err(e) => supervisor.set_phase(
                    id,
                    RolloutPhase::Aborted,
                    Some(format!("rollback failed too: {e}")),
                ),
            }
            Err(RolloutError::Aborted {
                id,
                service,
                reason,
            })
        }
    }
}

struct Rollout<'a> {
    supervisor: &'a Supervisor,
    id: u64,
    started: Vec<String>,
    retiring: JoinSet<(String, Retired)>,
    retired: Vec<String>,
}

impl Rollout<'_> {
    /// Moves the members to `target.replicas` replicas of `target.current`,
    /// never more than `surge` above nor `unavailable` below the count.
    async fn converge(
        &mut self,
        target: &Desired,
        surge: usize,
        unavailable: usize,
    ) -> Result<(), String> {
        let n = target.replicas;
        let generation = target.current.generation;
        loop {
            let (new, old): (Vec<_>, Vec<_>) = self
                .supervisor
                .members()
                .into_iter()
                .partition(|r| r.generation() == generation);
            if new.len() >= n && old.is_empty() {
                // Scale down: the newest go first.
                let excess = new.len() - n;
                if excess > 0 {
                    self.supervisor.set_phase(
                        self.id,
                        RolloutPhase::Draining,
                        Some(format!("{excess} replica(s)")),
                    );
                    for r in new.into_iter().rev().take(excess) {
                        self.retire(r);
                    }
                }
                return Ok(());
            }
            let available = old.len() + new.len();
            let floor = n.saturating_sub(unavailable);
            let retire_now = if new.len() >= n {
                old.len()
            } else {
                old.len().min(available.saturating_sub(floor))
            };
            if retire_now > 0 {
                self.supervisor.set_phase(
                    self.id,
                    RolloutPhase::Draining,
                    Some(format!(
                        "{retire_now} old replica(s); {}/{n} new ready",
                        new.len()
                    )),
                );
                for r in old.iter().take(retire_now) {
                    self.retire(Arc::clone(r));
                }
            }
            let room = (n + surge).saturating_sub(old.len() - retire_now + new.len());
            let start_now = room.min(n.saturating_sub(new.len()));
            if start_now == 0 {
                if retire_now == 0 {
                    return Err(format!(
                        "rollout {} cannot progress with the given surge and unavailability",
                        self.id
                    ));
                }
                continue;
            }
            self.supervisor.set_phase(
                self.id,
                RolloutPhase::Starting,
                Some(format!(
                    "{start_now} new replica(s) of generation {generation}"
                )),
            );
            let fresh = self.start(&target.current, start_now).await?;
            for r in &fresh {
                self.supervisor.promote(r);
            }
        }
    }

    /// Starts all new replicas, switches traffic at once, drains all old ones.
    async fn blue_green(&mut self, target: &Desired) -> Result<(), String> {
        let old = self.supervisor.members();
        self.supervisor.set_phase(
            self.id,
            RolloutPhase::Starting,
            Some(format!("{} new replica(s) (blue-green)", target.replicas)),
        );
        let fresh = self.start(&target.current, target.replicas).await?;
        self.supervisor
            .set_phase(self.id, RolloutPhase::Switching, None);
        for r in &fresh {
            self.supervisor.promote(r);
        }
        self.supervisor.set_phase(
            self.id,
            RolloutPhase::Draining,
            Some(format!("{} old replica(s)", old.len())),
        );
        for r in old {
            self.retire(r);
        }
        Ok(())
    }

    /// Starts `count` replicas of `release` and waits until all are ready;
    /// when one fails, all of them are retired and the reason returned.
    async fn start(
        &mut self,
        release: &Release,
        count: usize,
    ) -> Result<Vec<Arc<Replica>>, String> {
        let mut fresh = Vec::with_capacity(count);
        let mut failure = None;
        for _ in 0..count {
            match self.supervisor.start_replica(release) {
                Ok(r) => {
                    self.started.push(r.name().to_string());
                    fresh.push(r);
                }
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        let mut port_retries = PORT_TAKEN_RETRIES;
        while failure.is_none() {
            let waits = fresh.iter().map(|r| self.supervisor.await_ready(r));
            let results = futures_util::future::join_all(waits).await;
            // A command given a port that another process took between our
            // check and its bind: the same replica again on a new port.
            let mut taken = Vec::new();
            for (i, result) in results.into_iter().enumerate() {
                match result {
                    Err(reason) if port_taken(&reason) && port_retries > 0 => {
                        taken.push((i, reason))
                    }
                    Err(reason) => {
                        failure.get_or_insert(reason);
                    }
                    Ok(()) => {}
                }
            }
            if failure.is_some() || taken.is_empty() {
                break;
            }
            port_retries -= 1;
            for (i, reason) in taken {
                tracing::warn!("starting it again on another port: {reason}");
                match self.supervisor.start_replica(release) {
                    Ok(r) => {
                        self.started.push(r.name().to_string());
                        let old = std::mem::replace(&mut fresh[i], r);
                        self.retire(old);
                    }
                    Err(e) => {
                        failure = Some(e.to_string());
                        break;
                    }
                }
            }
        }
        match failure {
            None => Ok(fresh),
            Some(reason) => {
                for r in fresh {
                    self.retire(r);
                }
                Err(reason)
            }
        }
    }

    fn retire(&mut self, replica: Arc<Replica>) {
        let name = replica.name().to_string();
        let retirement = self.supervisor.retire(replica);
        self.retiring.spawn(async move { (name, retirement.await) });
    }

    async fn finish_retirements(&mut self) {
        while let Some(done) = self.retiring.join_next().await {
            if let Ok((name, _)) = done {
                self.retired.push(name);
            }
        }
    }
}

/// How many times a rollout starts a replica again whose port was taken
/// before it could bind it (commands without socket activation are given a
/// port that is free when checked; see docs/runtime.md).
const PORT_TAKEN_RETRIES: usize = 3;

/// Whether a replica's failure (its detail and the last lines of its log)
/// says it could not bind its port because another process had it.
fn port_taken(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    ["address already in use", "eaddrinuse", "os error 98"]
        .iter()
        .any(|s| reason.contains(s))
}

/// Refuses a count above the service's `max_replicas`, and 0 unless
/// `allow_zero`.
fn check_count(
    supervisor: &Supervisor,
    replicas: usize,
    allow_zero: bool,
) -> Result<(), RolloutError> {
    let (service, max) = (supervisor.name(), supervisor.config().max_replicas);
    if replicas > max {
        return Err(RolloutError::Invalid(format!(
            "cannot scale {service} to {replicas}: max_replicas is {max}; scale to at most {max}, or raise max_replicas in the service's config and restart serve"
        )));
    }
    if replicas == 0 && !allow_zero {
        return Err(RolloutError::Invalid(format!(
            "scaling {service} to 0 stops every replica and answers its requests with 503 until it is scaled up again: pass --allow-zero (allow_zero in the API) to do it"
        )));
    }
    Ok(())
}

fn describe(request: &RolloutRequest) -> String {
    match request {
        RolloutRequest::Deploy { version, .. } => match version.target {
            Some(t) => format!("deploy target {t}"),
            None => format!("deploy {}", version.command.join(" ")),
        },
        RolloutRequest::Restart { .. } => "restart".into(),
        RolloutRequest::Scale { replicas, .. } => format!("scale to {replicas}"),
        RolloutRequest::Rollback { .. } => "rollback".into(),
    }
}
