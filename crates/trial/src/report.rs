//! The trial report: the load report of DESIGN.md, the events with their
//! times and outcome, the audit, and the verdict.

use serde::{Deserialize, Serialize};

use crate::{audit::AuditReport, replicas::ReplicaPoint, scenario::Expect};

/// The reason of a trial stopped by Ctrl-C or SIGTERM.
pub const INTERRUPTED: &str = "interrupted (Ctrl-C or SIGTERM): partial results";

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
    /// The ready replicas and their version over the load, a point at
    /// each change (none for `--target … --during …`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaPoint>,
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
    /// Its position in the scenario file (`event[N]`); absent for the
    /// command of `--during` and for what the trial itself records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// When the scenario asked for it.
    pub at_s: f64,
    /// When it started.
    pub started_s: f64,
    /// When it ended.
    pub ended_s: f64,
    /// `ok`, `aborted` or `failed`.
    pub outcome: Outcome,
    /// How the scenario asked it to end: `completed` or `aborted`.
    #[serde(default)]
    pub expect: Expect,
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
    /// The rollout was aborted and rolled back: the old version serves.
    Aborted,
    /// It failed otherwise (a command exited non-zero, the runtime refused
    /// the request or could not be reached, it never ended).
    Failed,
}

impl EventRecord {
    /// `event[2] deploy v2`, or the action alone when the event is not
    /// from a scenario file.
    pub fn name(&self) -> String {
        match self.index {
            Some(index) => format!("event[{index}] {}", self.action),
            None => self.action.clone(),
        }
    }

    /// Whether it ended as the scenario asked.
    pub fn as_expected(&self) -> bool {
        matches!(
            (self.expect, self.outcome),
            (Expect::Completed, Outcome::Ok) | (Expect::Aborted, Outcome::Aborted)
        )
    }

    /// How it ended, in words: `ok`, `aborted as expected`, or in capitals
    /// when it fails the trial (`ABORTED`, `FAILED`, `COMPLETED, an abort
    /// was expected`).
    pub fn outcome_text(&self) -> &'static str {
        match (self.expect, self.outcome) {
            (Expect::Completed, Outcome::Ok) => "ok",
            (Expect::Aborted, Outcome::Aborted) => "aborted as expected",
            (Expect::Completed, Outcome::Aborted) => "ABORTED",
            (Expect::Aborted, Outcome::Ok) => "COMPLETED, an abort was expected",
            (_, Outcome::Failed) => "FAILED",
        }
    }

    /// Why this event fails the trial, or `None` when it ended as asked.
    pub fn failure(&self) -> Option<String> {
        if self.as_expected() {
            return None;
        }
        let name = self.name();
        let detail = match &self.detail {
            Some(detail) if self.outcome != Outcome::Ok => format!(": {detail}"),
            _ => String::new(),
        };
        Some(match self.outcome {
            Outcome::Ok => format!("{name} completed, but the scenario expects it to be aborted"),
            Outcome::Aborted => format!("{name} was aborted{detail}"),
            Outcome::Failed => format!("{name} failed{detail}"),
        })
    }
}

/// The verdict of a trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// No failed request, no dropped iteration, no lost operation, no
    /// broken session, every event ended as asked, the audit ran.
    Pass,
    /// Something was dropped, an event did not do what it was asked, or
    /// the audit could not run.
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
            reasons.push(format!(
                "{} failed request(s): {}",
                load.requests.failed,
                dropless_load::failure_list(&load.failures, " ", ", ")
            ));
        }
        if load.dropped_iterations > 0 {
            reasons.push(format!(
                "{} dropped iteration(s): the schedule could not be kept",
                load.dropped_iterations
            ));
        }
        if let Some(sessions) = load.sessions.as_ref().filter(|s| s.broken() > 0) {
            reasons.push(format!(
                "{} of {} session(s) broken: {} reset, {} lost update, {} duplicate, {} with a gap",
                sessions.total - sessions.ok,
                sessions.total,
                sessions.resets,
                sessions.lost_updates,
                sessions.duplicates,
                sessions.gaps
            ));
        }
        if load.interrupted {
            reasons.push(INTERRUPTED.into());
        }
        reasons.extend(events.iter().filter_map(EventRecord::failure));
        if let Some(audit) = &audit {
            if let Some(error) = &audit.error {
                reasons.push(format!("audit could not run: {error}"));
            }
            if let Some(lost) = audit.lost.filter(|n| *n > 0) {
                reasons.push(format!(
                    "{lost} of {} acknowledged operation(s) lost",
                    audit.acknowledged
                ));
            }
            if let Some(duplicated) = audit.duplicated.filter(|n| *n > 0) {
                reasons.push(format!("{duplicated} operation(s) stored twice"));
            }
        }
        let mut report = Self {
            name,
            service,
            strategy,
            load,
            events,
            replicas: Vec::new(),
            audit,
            verdict: Verdict::Pass,
            reasons: Vec::new(),
        };
        for reason in reasons {
            report.fail(reason);
        }
        report
    }

    /// Adds a reason why the trial failed; the verdict becomes `fail`.
    pub fn fail(&mut self, reason: String) {
        self.reasons.push(reason);
        self.verdict = Verdict::Fail;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(outcome: Outcome, expect: Expect) -> EventRecord {
        EventRecord {
            action: "deploy v2".into(),
            index: Some(2),
            at_s: 1.0,
            started_s: 1.0,
            ended_s: 2.0,
            outcome,
            expect,
            detail: Some("rollout 3 of trial aborted: r7 exited".into()),
        }
    }

    #[test]
    fn an_event_fails_the_trial_unless_it_ended_as_asked() {
        for (outcome, expect, failure) in [
            (Outcome::Ok, Expect::Completed, None),
            (Outcome::Aborted, Expect::Aborted, None),
            (
                Outcome::Aborted,
                Expect::Completed,
                Some("event[2] deploy v2 was aborted: rollout 3 of trial aborted: r7 exited"),
            ),
            (
                Outcome::Ok,
                Expect::Aborted,
                Some("event[2] deploy v2 completed, but the scenario expects it to be aborted"),
            ),
            (
                Outcome::Failed,
                Expect::Aborted,
                Some("event[2] deploy v2 failed: rollout 3 of trial aborted: r7 exited"),
            ),
        ] {
            let event = record(outcome, expect);
            assert_eq!(
                event.failure().as_deref(),
                failure,
                "{outcome:?} {expect:?}"
            );
            assert_eq!(event.as_expected(), failure.is_none());
        }
    }
}
