//! The reports: `report.json` (the load report's fields at the top level,
//! the events, the audit, the verdict and its reasons) and a self-contained
//! `report.html`.

use dropless_trial::{
    audit::AuditReport,
    report::{EventRecord, Outcome, TrialReport, Verdict},
    run::write_reports,
    scenario::Expect,
};

use crate::fixtures::load_report;

fn restart(outcome: Outcome) -> EventRecord {
    EventRecord {
        action: "restart".into(),
        index: Some(0),
        at_s: 2.0,
        started_s: 2.0,
        ended_s: 3.5,
        outcome,
        expect: Expect::Completed,
        detail: None,
    }
}

fn audit(lost: u64) -> AuditReport {
    AuditReport {
        source: "log file calc-log.jsonl".into(),
        acknowledged: 98,
        stored: Some(98 - lost),
        lost: Some(lost),
        duplicated: Some(0),
        error: None,
    }
}

fn report(failures: &[(&str, u64)], event: Outcome, lost: u64) -> TrialReport {
    TrialReport::new(
        "rolling restart".into(),
        "demo v9 ×3".into(),
        "dropless".into(),
        load_report(failures),
        vec![restart(event)],
        Some(audit(lost)),
    )
}

#[test]
fn nothing_dropped_passes() {
    let report = report(&[], Outcome::Ok, 0);
    assert_eq!(report.verdict, Verdict::Pass);
    assert!(report.reasons.is_empty(), "{:?}", report.reasons);
}

#[test]
fn each_failure_is_a_reason_with_its_classes() {
    let report = report(
        &[("http_502", 2), ("eof", 1), ("reset", 0)],
        Outcome::Failed,
        3,
    );
    assert_eq!(report.verdict, Verdict::Fail);
    let reasons = report.reasons.join("\n");
    assert!(
        reasons.contains("3 failed request(s): eof 1, http_502 2"),
        "{reasons}"
    );
    assert!(!reasons.contains("reset"), "no zero classes: {reasons}");
    assert!(reasons.contains("restart"), "{reasons}");
    assert!(
        reasons.contains("3 of 98 acknowledged operation(s) lost"),
        "{reasons}"
    );
}

#[test]
fn report_json_and_html_are_written_with_their_fields() {
    let dir = tempfile::tempdir().unwrap();
    let report = report(&[("http_502", 2)], Outcome::Ok, 0);
    write_reports(&report, dir.path()).unwrap();

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(json["name"], "rolling restart");
    assert_eq!(json["service"], "demo v9 ×3");
    assert_eq!(json["strategy"], "dropless");
    assert_eq!(json["verdict"], "fail");
    // The load report's fields sit at the top level.
    assert_eq!(json["requests"]["total"], 100);
    assert_eq!(json["requests"]["failed"], 2);
    assert_eq!(json["failures"]["http_502"], 2);
    assert_eq!(json["timeline"].as_array().unwrap().len(), 10);
    assert_eq!(json["events"][0]["action"], "restart");
    assert_eq!(json["events"][0]["outcome"], "ok");
    assert_eq!(json["audit"]["lost"], 0);
    assert_eq!(json["reasons"][0], "2 failed request(s): http_502 2");
    let back: TrialReport = serde_json::from_value(json).unwrap();
    assert_eq!(back, report);

    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"), "{}", &html[..40]);
    assert!(html.contains("dropless trial: rolling restart"));
    assert!(html.contains("FAIL"));
    assert!(
        html.contains("<td>http_502</td><td>2</td>"),
        "failures by class"
    );
    assert!(html.contains("<svg"), "the chart");
    assert!(!html.contains("<script src"), "self-contained");
}

#[test]
fn an_unwritable_directory_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no").join("such");
    let error = write_reports(&report(&[], Outcome::Ok, 0), &missing)
        .unwrap_err()
        .to_string();
    assert!(error.contains("report.json"), "{error}");
}
