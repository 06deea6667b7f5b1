//! The event script: restart, deploy and scale at their offsets over the
//! control socket, each ending in an [`EventRecord`].

use dropless_runtime::{
    config::Strategy as RolloutStrategy,
    control::{ControlClient, ControlError},
    rollout::{Plan, RolloutRequest},
};
use tokio::{sync::mpsc, time::Instant};

use crate::{
    report::{EventRecord, Outcome},
    runtime_config::Release,
    scenario::{Action, Expect},
};

/// What the script tells as it goes.
pub(crate) enum Step {
    /// An event started: its name (`event[0] restart`).
    Started(String),
    /// An event ended.
    Ended(EventRecord),
}

/// Runs the events at their offsets, one after the other; tells when each
/// starts and sends its record as it ends.
pub(crate) async fn run_events(
    release: Release,
    control: ControlClient,
    started: Instant,
    steps: mpsc::UnboundedSender<Step>,
) {
    let scenario = &release.scenario;
    for (index, event) in scenario.timeline() {
        tokio::time::sleep_until(started + event.at).await;
        let began = started.elapsed();
        let name = format!("event[{index}] {}", event.action.label());
        if steps.send(Step::Started(name)).is_err() {
            return;
        }
        if event.action == Action::Upgrade {
            let (outcome, detail) = match control.upgrade(None).await {
                Ok(done) => (
                    Outcome::Ok,
                    Some(format!("serve pid {} → {}", done.old_pid, done.new_pid)),
                ),
                Err(error) => (Outcome::Failed, Some(error.to_string())),
            };
            let ended = record(&event, index, began, started, outcome, detail);
            if steps.send(Step::Ended(ended)).is_err() {
                return;
            }
            continue;
        }
        let request = match &event.action {
            Action::Upgrade => unreachable!("handled above"),
            Action::Restart => RolloutRequest::Restart {
                plan: Plan::default(),
            },
            Action::Scale { replicas } => RolloutRequest::Scale {
                replicas: *replicas,
                allow_zero: false,
            },
            Action::Deploy {
                version: label,
                profile,
                command,
                rollout,
            } => {
                let profile = profile.as_deref().or(scenario.service.demo.as_deref());
                let command = if command.is_empty() {
                    &scenario.service.command
                } else {
                    command
                };
                RolloutRequest::Deploy {
                    version: release.version(label, profile, command),
                    plan: Plan {
                        strategy: match rollout.as_deref() {
                            Some("blue-green") => Some(RolloutStrategy::BlueGreen),
                            Some(_) => Some(RolloutStrategy::Rolling),
                            None => None,
                        },
                        ..Plan::default()
                    },
                }
            }
        };
        let result = control.rollout(None, request).await;
        let (outcome, detail) = match result {
            Ok(report) => (
                Outcome::Ok,
                replicas_changed(&report.started, &report.retired),
            ),
            Err(error @ ControlError::Aborted(_)) => (Outcome::Aborted, Some(error.to_string())),
            Err(error) => (Outcome::Failed, Some(error.to_string())),
        };
        let ended = record(&event, index, began, started, outcome, detail);
        if steps.send(Step::Ended(ended)).is_err() {
            return;
        }
    }
}

/// The record of event `index`, begun at `began` and ending now.
fn record(
    event: &crate::scenario::Event,
    index: usize,
    began: std::time::Duration,
    started: Instant,
    outcome: Outcome,
    detail: Option<String>,
) -> EventRecord {
    EventRecord {
        action: event.action.label(),
        index: Some(index),
        at_s: event.at.as_secs_f64(),
        started_s: began.as_secs_f64(),
        ended_s: started.elapsed().as_secs_f64(),
        outcome,
        expect: event.expect,
        detail,
    }
}

/// `started web-3 web-4, retired web-1`, without the empty half; `None`
/// when no replica started or retired.
fn replicas_changed(started: &[String], retired: &[String]) -> Option<String> {
    let parts: Vec<String> = [("started", started), ("retired", retired)]
        .into_iter()
        .filter(|(_, names)| !names.is_empty())
        .map(|(what, names)| format!("{what} {}", names.join(" ")))
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// A failed record of something that is not one event (`"events"`: the
/// script ran too long).
pub(crate) fn failed_record(action: &str, started: Instant, detail: String) -> EventRecord {
    let now = started.elapsed().as_secs_f64();
    EventRecord {
        action: action.to_owned(),
        index: None,
        at_s: now,
        started_s: now,
        ended_s: now,
        outcome: Outcome::Failed,
        expect: Expect::Completed,
        detail: Some(detail),
    }
}
