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

fn with_sessions(resets: u64, gaps: u64) -> TrialReport {
    let mut load = load_report(&[]);
    load.sessions = Some(dropless_load::Sessions {
        total: 200,
        ok: 200 - resets - gaps,
        resets,
        gaps,
        disconnects: 200,
        reconnects: 200,
        restart_closes: 200,
        max_hold_ms: 840,
        timeline: vec![dropless_load::SessionSecond {
            t_s: 4,
            moves: 90,
            resets,
            gaps,
            disconnects: 200,
            reconnects: 200,
            ..Default::default()
        }],
        ..Default::default()
    });
    TrialReport::new(
        "sessions".into(),
        "demo v9 ×2".into(),
        "dropless".into(),
        load,
        vec![restart(Outcome::Ok)],
        None,
    )
}

#[test]
fn any_broken_session_fails_the_verdict_and_shows_in_the_reports() {
    let whole = with_sessions(0, 0);
    assert_eq!(whole.verdict, Verdict::Pass, "{:?}", whole.reasons);

    let broken = with_sessions(3, 1);
    assert_eq!(broken.verdict, Verdict::Fail);
    assert_eq!(
        broken.reasons,
        ["4 of 200 session(s) broken: 3 reset, 0 lost update, 0 duplicate, 1 with a gap"]
    );
    let dir = tempfile::tempdir().unwrap();
    write_reports(&broken, dir.path()).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(json["sessions"]["resets"], 3);
    assert_eq!(json["sessions"]["max_hold_ms"], 840);
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.contains("<h2>Sessions</h2>"), "sessions section");
    assert!(html.contains("<td>reset</td><td>3</td>"));
    assert!(
        html.contains("<tr><td>4</td><td>90</td><td>3</td><td>0</td><td>0</td><td>1</td><td>200</td><td>200</td></tr>"),
        "per second"
    );
}
