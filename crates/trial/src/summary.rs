//! The terminal summary of a trial.

use std::fmt::Write as _;

use dropless_load::failure_list;

use crate::report::{Outcome, TrialReport, Verdict};

/// A k6-style summary: verdict, load, latency, events, audit, and the
/// seconds in which requests failed.
pub fn render(report: &TrialReport) -> String {
    let load = &report.load;
    let mut s = String::new();
    let verdict = match report.verdict {
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
    };
    let _ = writeln!(s, "dropless trial: {} — {verdict}", report.name);
    for reason in &report.reasons {
        let _ = writeln!(s, "  ✗ {reason}");
    }
    let _ = writeln!(
        s,
        "  service    {}, strategy {}",
        report.service, report.strategy
    );
    let _ = writeln!(
        s,
        "  load       {}: {} req/s target, {:.1} achieved, {:.1} s",
        load.target,
        load.rate
            .target_per_s
            .map(|r| format!("{r:.1}"))
            .unwrap_or_else(|| "-".into()),
        load.rate.achieved_per_s,
        load.duration_s
    );
    let _ = writeln!(
        s,
        "  requests   {} total, {} ok, {} failed, {} dropped iterations",
        load.requests.total, load.requests.ok, load.requests.failed, load.dropped_iterations
    );
    let failures = failure_list(&load.failures, " ", ", ");
    if !failures.is_empty() {
        let _ = writeln!(s, "  failures   {failures}");
    }
    if let Some(ss) = &load.sessions {
        let _ = writeln!(
            s,
            "  sessions   {} total, {} ok, {} reset, {} lost update, {} duplicate, {} gap; {} disconnects, {} reconnects; longest hold {} ms",
            ss.total,
            ss.ok,
            ss.resets,
            ss.lost_updates,
            ss.duplicates,
            ss.gaps,
            ss.disconnects,
            ss.reconnects,
            ss.max_hold_ms
        );
    }
    let t = &load.latency_ms.ttlb;
    let _ = writeln!(
        s,
        "  latency    ttlb min {:.1} med {:.1} p80 {:.1} p99 {:.1} max {:.1} ms (from the scheduled send)",
        t.min, t.p50, t.p80, t.p99, t.max
    );
    if load.generator_lag_ms >= dropless_load::LAG_NOTE_MS {
        let _ = writeln!(
            s,
            "  generator  fell {:.1} ms behind its schedule at worst: latency from the schedule includes it (the machine paused the load generator)",
            load.generator_lag_ms
        );
    }
    for event in &report.events {
        let _ = writeln!(
            s,
            "  event      {:>5.1}s {:<12} {} ({:.1}s → {:.1}s){}",
            event.at_s,
            event.action,
            event.outcome_text(),
            event.started_s,
            event.ended_s,
            match (&event.outcome, &event.detail) {
                (Outcome::Aborted | Outcome::Failed, Some(detail)) => format!(": {detail}"),
                _ => String::new(),
            }
        );
    }
    if let Some(audit) = &report.audit {
        match (&audit.error, audit.stored, audit.lost, audit.duplicated) {
            (None, Some(stored), Some(lost), Some(duplicated)) => {
                let _ = writeln!(
                    s,
                    "  audit      {}: {} acknowledged, {stored} stored, {lost} lost, {duplicated} duplicated",
                    audit.source, audit.acknowledged
                );
            }
            (error, ..) => {
                let _ = writeln!(
                    s,
                    "  audit      {}: COULD NOT RUN ({}), {} acknowledged, none counted",
                    audit.source,
                    error.as_deref().unwrap_or("no counts"),
                    audit.acknowledged
                );
            }
        }
    }
    let bad: Vec<String> = load
        .timeline
        .iter()
        .filter(|second| second.failed > 0)
        .map(|second| {
            format!(
                "{}s: {}",
                second.t_s,
                failure_list(&second.failures, " ", " ")
            )
        })
        .collect();
    if !bad.is_empty() {
        let _ = writeln!(s, "  failed in  {}", bad.join("; "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pause of the load generator is pointed out from 10 ms, beside the
    /// latency it moved; below, nothing is said.
    #[test]
    fn a_lagging_generator_is_pointed_out() {
        let mut load =
            dropless_load::Report::not_started(&dropless_load::Config::new("http://127.0.0.1:1/"));
        let render_with = |load: &dropless_load::Report| {
            let report = TrialReport::new(
                "t".into(),
                "web".into(),
                "rolling".into(),
                load.clone(),
                Vec::new(),
                None,
            );
            render(&report)
        };
        load.generator_lag_ms = 9.9;
        assert!(!render_with(&load).contains("generator"));
        load.generator_lag_ms = 212.4;
        let text = render_with(&load);
        assert!(
            text.contains("  generator  fell 212.4 ms behind its schedule at worst"),
            "{text}"
        );
    }
}
