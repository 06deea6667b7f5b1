//! `dropless trial` and `dropless k8s manifest`, run as a user would.

use std::path::Path;

use serde_json::Value;

use crate::fixtures::{Serve, run, stderr};

fn report(out: &Path) -> Value {
    let text = std::fs::read_to_string(out.join("report.json")).expect("report.json written");
    serde_json::from_str(&text).expect("report.json is JSON")
}

#[test]
fn scenario_errors_are_one_line_naming_the_field_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[service]\ndemo = \"v9\"\n[load]\nduration = \"10s\"\n";
    for (event, expected) in [
        (
            "at = \"2s\"\naction = \"reboot\"",
            "unknown action \"reboot\"",
        ),
        ("at = \"12s\"\naction = \"restart\"", "event[0].at"),
        (
            "at = \"soon\"\naction = \"restart\"",
            "bad duration \"soon\"",
        ),
        ("at = \"2s\"\naction = \"scale\"", "needs `replicas = N`"),
    ] {
        let path = dir.path().join("scenario.toml");
        std::fs::write(&path, format!("{base}[[event]]\n{event}\n")).unwrap();
        let output = run(&["trial", path.to_str().unwrap(), "--quiet"]);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{event}: {text}");
        assert_eq!(text.trim().lines().count(), 1, "one line: {text}");
        assert!(
            text.contains(expected),
            "{event}: expected {expected:?} in {text}"
        );
    }
    let output = run(&["trial", dir.path().join("missing.toml").to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("missing.toml"));
}

#[test]
fn a_short_trial_writes_a_passing_report_with_chart_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("short.toml");
    std::fs::write(
        &scenario,
        r#"
name = "short"
[service]
demo = "v9"
replicas = 2
work_ms = 20
[load]
rate = 50
duration = "7s"
[[event]]
at = "1s"
action = "restart"
[[event]]
at = "3s"
action = "deploy"
version = "v2"
[[event]]
at = "5s"
action = "scale"
replicas = 3
"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let output = run(&[
        "trial",
        scenario.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        stderr(&output)
    );
    assert!(stdout.contains("PASS"), "{stdout}");

    let report = report(&out);
    assert_eq!(report["verdict"], "pass");
    assert_eq!(report["strategy"], "dropless");
    let total = report["requests"]["total"].as_u64().unwrap();
    assert!((330..=370).contains(&total), "50 req/s for 7 s: {total}");
    assert_eq!(report["requests"]["failed"], 0);
    assert_eq!(report["dropped_iterations"], 0);
    assert!(report["timeline"].as_array().unwrap().len() >= 7);
    let events = report["events"].as_array().unwrap();
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["restart", "deploy v2", "scale 3"]);
    for event in events {
        assert_eq!(event["outcome"], "ok", "{event}");
        assert!(event["started_s"].as_f64().unwrap() >= event["at_s"].as_f64().unwrap());
        assert!(event["ended_s"].as_f64().unwrap() >= event["started_s"].as_f64().unwrap());
    }
    let audit = &report["audit"];
    assert_eq!(audit["acknowledged"], report["requests"]["ok"]);
    assert_eq!(audit["stored"], audit["acknowledged"], "{audit}");
    assert_eq!(audit["lost"], 0);
    assert_eq!(audit["duplicated"], 0);

    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("<svg") && html.contains("class=\"bar\"") && html.contains("class=\"p99\"")
    );
    for label in ["restart", "deploy v2", "scale 3"] {
        assert!(
            html.contains(&format!(">{label}</text>")),
            "event {label} on the chart"
        );
    }
    assert!(
        !html.contains("<script") && !html.contains("http://cdn"),
        "self-contained"
    );
}

#[test]
fn during_a_command_that_restarts_the_local_server_nothing_drops() {
    let serve = Serve::start("v3");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let command = format!(
        "{} restart --control {}",
        env!("CARGO_BIN_EXE_dropless"),
        serve.control
    );
    let output = run(&[
        "trial",
        "--target",
        &format!("http://127.0.0.1:{}/sum?a=1&b=2", serve.port),
        "--during",
        &command,
        "--rate",
        "50",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        stderr(&output)
    );
    let report = report(&out);
    assert_eq!(report["verdict"], "pass");
    assert_eq!(report["interrupted"], false);
    let event = &report["events"][0];
    assert_eq!(event["action"], "command");
    assert_eq!(event["outcome"], "ok", "{event}");
    // The load ran before the command (lead-in) and after it (tail).
    let (started, ended) = (
        event["started_s"].as_f64().unwrap(),
        event["ended_s"].as_f64().unwrap(),
    );
    assert!(started >= 1.5, "{started}");
    assert!(report["duration_s"].as_f64().unwrap() >= ended + 4.0);
    assert!(report["requests"]["ok"].as_u64().unwrap() > 0);
}

#[test]
fn during_a_command_that_kills_the_server_the_drops_are_caught() {
    let serve = Serve::start("v4");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let pid = serve.child.id();
    let output = run(&[
        "trial",
        "--target",
        &format!("http://127.0.0.1:{}/sum?a=1&b=2", serve.port),
        "--during",
        &format!("kill -TERM {pid}"),
        "--rate",
        "50",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let report = report(&out);
    assert_eq!(report["verdict"], "fail");
    assert!(
        report["failures"]["refused"].as_u64().unwrap_or(0) > 0,
        "{}",
        report["failures"]
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("FAIL"));
}

#[test]
fn k8s_manifest_has_the_zero_downtime_settings() {
    let output = run(&[
        "k8s",
        "manifest",
        "--name",
        "calc",
        "--image",
        "registry.example/calc:1.2",
        "--replicas",
        "4",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let yaml = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "kind: Deployment",
        "kind: Service",
        "replicas: 4",
        "maxUnavailable: 0",
        "preStop:",
        "readinessProbe:",
    ] {
        assert!(yaml.contains(expected), "{expected} in\n{yaml}");
    }
    let bad = run(&["k8s", "manifest", "--name", "Calc!", "--image", "x"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("--name"), "{}", stderr(&bad));
}

#[test]
fn matrix_subset_the_emulation_fails_without_pre_stop_and_not_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("matrix");
    let output = run(&[
        "trial",
        "--matrix",
        "--profiles",
        "v1,v3",
        "--strategies",
        "kubernetes,kubernetes-prestop",
        "--jobs",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", stderr(&output));
    let text = std::fs::read_to_string(out.join("matrix.json")).unwrap();
    let cells: Vec<Value> = serde_json::from_str(&text).unwrap();
    let failed = |profile: &str, strategy: &str| {
        let cell = cells
            .iter()
            .find(|c| c["profile"] == profile && c["strategy"] == strategy)
            .unwrap_or_else(|| panic!("no cell {profile} {strategy} in {text}"));
        assert!(cell["requests_total"].as_u64().unwrap() > 0);
        cell["requests_failed"].as_u64().unwrap()
    };
    // SIGTERM while routing still lags: v3 stops accepting, requests fail.
    assert!(failed("v3", "kubernetes") > 0, "{stdout}");
    // A pre-stop longer than the lag protects them.
    assert_eq!(failed("v3", "kubernetes-prestop"), 0, "{stdout}");
    // Without a readiness probe, a booting replica gets traffic: both fail.
    assert!(failed("v1", "kubernetes") > 0, "{stdout}");
    assert!(failed("v1", "kubernetes-prestop") > 0, "{stdout}");
    let html = std::fs::read_to_string(out.join("matrix.html")).unwrap();
    assert!(html.contains("v3-kubernetes/report.html"));
    assert!(out.join("v3-kubernetes-prestop/report.json").exists());
}
