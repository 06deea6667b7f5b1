//! The trial report: the load report of DESIGN.md, the events with their
//! times and outcome, the audit, and the verdict.

use serde::{Deserialize, Serialize};

use crate::audit::AuditReport;

/// Everything a trial found; `report.json` is this, serialized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialReport {
    /// The scenario's name.
    pub name: String,
    /// The service: `demo v9 ×3` or the command.
    pub service: String,
    /// How replicas were retired: `dropless`, `kubernetes`,
    /// `kubernetes-prestop`, or `external` for `--target … --during …`.
    pub strategy: String,
    /// The load report (DESIGN.md's schema), fields at the top level.
    #[serde(flatten)]
    pub load: dropless_load::Report,
    /// The events, in the order they ran.
    pub events: Vec<EventRecord>,
    /// The audit of asynchronous work, when there was one.
    pub audit: Option<AuditReport>,
    /// `pass` or `fail`.
    pub verdict: Verdict,
    /// Why the verdict is `fail` (empty on `pass`).
    pub reasons: Vec<String>,
}

/// One event as it happened. Times are seconds from the start of the load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// What it was: `restart`, `deploy v2`, `scale 5`, `command`.
    pub action: String,
    /// When the scenario asked for it.
    pub at_s: f64,
    /// When it started.
    pub started_s: f64,
    /// When it ended.
    pub ended_s: f64,
    /// `ok` or `failed`.
    pub outcome: Outcome,
    /// Why it failed, or what it reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// How an event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It completed.
    Ok,
    /// It failed (a rollout aborted and rolled back, a command exited
    /// non-zero).
    Failed,
}

/// The verdict of a trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// No failed request, no dropped iteration, no lost operation.
    Pass,
    /// Something was dropped.
    Fail,
}

impl TrialReport {
    /// Builds the report and decides the verdict.
    pub fn new(
        name: String,
        service: String,
        strategy: String,
        load: dropless_load::Report,
        events: Vec<EventRecord>,
        audit: Option<AuditReport>,
    ) -> Self {
        let mut reasons = Vec::new();
        if load.requests.failed > 0 {
            let classes: Vec<String> = load
                .failures
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(class, n)| format!("{class} {n}"))
                .collect();
            reasons.push(format!(
                "{} failed request(s): {}",
                load.requests.failed,
                classes.join(", ")
            ));
        }
        if load.dropped_iterations > 0 {
            reasons.push(format!(
                "{} dropped iteration(s): the schedule could not be kept",
                load.dropped_iterations
            ));
        }
        if let Some(audit) = &audit {
            if audit.lost > 0 {
                reasons.push(format!(
                    "{} of {} acknowledged operation(s) lost",
                    audit.lost, audit.acknowledged
                ));
            }
            if audit.duplicated > 0 {
                reasons.push(format!("{} operation(s) stored twice", audit.duplicated));
            }
        }
        let verdict = if reasons.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail
        };
        Self {
            name,
            service,
            strategy,
            load,
            events,
            audit,
            verdict,
            reasons,
        }
    }

    /// Whether the verdict is pass.
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Pass
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a trial report always serializes")
    }
}
