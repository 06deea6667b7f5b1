//! `dropless check`: its exit codes, and the same result as text, JSON and
//! a self-contained HTML page.

use crate::fixtures::{dropless, run, stderr};

#[test]
fn bad_usage_exits_2_with_one_line_and_a_program_that_cannot_start_exits_1() {
    let none = run(&["check"]);
    assert_eq!(none.status.code(), Some(2), "{}", stderr(&none));
    let rate = run(&["check", "--rate", "0", "--", "true"]);
    assert_eq!(rate.status.code(), Some(2), "{}", stderr(&rate));
    assert_eq!(stderr(&rate).trim().lines().count(), 1, "{}", stderr(&rate));
    assert!(stderr(&rate).contains("--rate"), "{}", stderr(&rate));
    let path = run(&["check", "--health-path", "healthz", "--", "true"]);
    assert_eq!(path.status.code(), Some(2), "{}", stderr(&path));
    let missing = run(&["check", "--", "/nonexistent/program"]);
    assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
    // A program that exits at once: its status, not a hang.
    let exits = run(&["check", "--", "false"]);
    assert_eq!(exits.status.code(), Some(1), "{}", stderr(&exits));
    assert!(
        stderr(&exits).contains("exited before it was ready"),
        "{}",
        stderr(&exits)
    );
}

#[test]
fn a_graceful_demo_passes_and_the_json_and_html_say_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (json, html) = (dir.path().join("check.json"), dir.path().join("check.html"));
    let exe = env!("CARGO_BIN_EXE_dropless");
    let output = dropless()
        .args([
            "check", "--rate", "40", "--grace", "3s", "--warmup", "700ms",
        ])
        .args(["--health-path", "/healthz", "--json"])
        .arg(&json)
        .arg("--html")
        .arg(&html)
        .args(["--", exe, "demo-service", "--profile", "v5"])
        .args([
            "--hello-delay",
            "0.3",
            "--pre-stop",
            "500ms",
            "--grace",
            "2s",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{text}{}", stderr(&output));
    for line in [
        "1 readiness",
        "4 idle keep-alive",
        "8 startup",
        "behind dropless: safe",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    assert!(
        text.contains("behind Kubernetes without a preStop hook"),
        "{text}"
    );
    assert!(text.contains("smallest fix"), "{text}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["passed"], true);
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 8);
    assert!(checks.iter().all(|c| c["verdict"] == "pass"), "{report}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    for evidence in checks.iter().map(|c| c["evidence"].as_str().unwrap()) {
        let first_words: String = evidence.split(';').next().unwrap().to_owned();
        assert!(
            page.contains(&first_words.replace('\'', "&#39;")),
            "{first_words}"
        );
    }
    // Self-contained: nothing fetched, no script.
    for outside in ["src=", "href=", "<script", "@import"] {
        assert!(!page.contains(outside), "{outside}");
    }
}
