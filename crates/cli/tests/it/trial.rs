//! `dropless trial` and `dropless k8s manifest`, run as a user would.

use std::path::Path;

use serde_json::Value;

use std::{
    io::{Read, Write},
    process::Stdio,
    time::{Duration, Instant},
};

use crate::fixtures::{Serve, dropless, run, stderr};

fn report(out: &Path) -> Value {
    let text = std::fs::read_to_string(out.join("report.json")).expect("report.json written");
    serde_json::from_str(&text).expect("report.json is JSON")
}

/// `dropless trial --target SERVE/sum --during COMMAND ARGS`; asserts the
/// exit code, returns the report and stdout.
fn trial_during(serve: &Serve, command: &str, args: &[&str], code: i32) -> (Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let target = format!("http://127.0.0.1:{}/sum?a=1&b=2", serve.port);
    let mut all = vec!["--target", &target, "--during", command];
    all.extend_from_slice(args);
    trial(&all, &dir.path().join("out"), code)
}

/// `dropless trial` of the scenario `text`; asserts the exit code, returns
/// the report, stdout and the directory (the reports are in `DIR/out`).
fn trial_scenario(text: &str, code: i32) -> (Value, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("scenario.toml");
    std::fs::write(&scenario, text).unwrap();
    let (report, stdout) = trial(&[scenario.to_str().unwrap()], &dir.path().join("out"), code);
    (report, stdout, dir)
}

/// `dropless trial ARGS --out OUT --quiet`; asserts the exit code, returns
/// the report and stdout.
fn trial(args: &[&str], out: &Path, code: i32) -> (Value, String) {
    let mut all = vec!["trial"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--out", out.to_str().unwrap(), "--quiet"]);
    let output = run(&all);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(
        output.status.code(),
        Some(code),
        "{stdout}\n{}",
        stderr(&output)
    );
    (report(out), stdout)
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
        (
            "at = \"2s\"\naction = \"restart\"\nexpect = \"finished\"",
            "`expect = \"finished\"`: expected \"completed\"",
        ),
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
    let (report, stdout, dir) = trial_scenario(
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
        0,
    );
    assert!(stdout.contains("PASS"), "{stdout}");
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

    let html = std::fs::read_to_string(dir.path().join("out/report.html")).unwrap();
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
    let command = format!(
        "{} restart --control {}",
        env!("CARGO_BIN_EXE_dropless"),
        serve.control
    );
    let (report, _) = trial_during(&serve, &command, &["--rate", "50"], 0);
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
    let command = format!("kill -TERM {}", serve.child.id());
    let (report, stdout) = trial_during(&serve, &command, &["--rate", "50"], 3);
    assert_eq!(report["verdict"], "fail");
    assert!(
        report["failures"]["refused"].as_u64().unwrap_or(0) > 0,
        "{}",
        report["failures"]
    );
    assert!(stdout.contains("FAIL"), "{stdout}");
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
        // Two at a time: four cells at once on a busy 2-core machine could
        // delay a restart past the end of its load, where it drops nothing.
        "--jobs",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", stderr(&output));
    // Each cell's events ran under its load (else the cell says so).
    let v3 = std::fs::read_to_string(out.join("v3-kubernetes/report.json")).unwrap();
    assert!(!v3.contains("the load ended before"), "{v3}");
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

/// The reasons of a report, joined for messages.
fn reasons(report: &Value) -> String {
    report["reasons"]
        .as_array()
        .expect("reasons is a list")
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn during_a_command_that_fails_the_verdict_fails() {
    let serve = Serve::start("v3");
    let (report, stdout) = trial_during(&serve, "nosuchcommand", &["--rate", "20"], 3);
    assert!(stdout.contains("FAIL"), "{stdout}");
    assert_eq!(report["verdict"], "fail");
    assert_eq!(report["requests"]["failed"], 0, "only the command failed");
    let reasons = reasons(&report);
    assert!(
        reasons.contains("command failed: `nosuchcommand` exited with") && reasons.contains("127"),
        "{reasons}"
    );
    assert_eq!(report["events"][0]["outcome"], "failed");
}

#[test]
fn a_fixed_load_that_ends_before_the_command_fails_the_verdict() {
    let serve = Serve::start("v3");
    let (report, stdout) = trial_during(&serve, "true", &["--duration", "1s", "--rate", "20"], 3);
    assert_eq!(report["verdict"], "fail");
    assert_eq!(
        report["events"][0]["outcome"], "ok",
        "the command itself succeeded"
    );
    let reasons = reasons(&report);
    assert!(
        reasons.contains("the load ended before the command"),
        "{reasons}"
    );
    assert!(
        stdout.contains("the load ended before the command"),
        "{stdout}"
    );
}

#[test]
fn an_aborted_deploy_fails_the_verdict_unless_the_scenario_expects_it() {
    let demo = env!("CARGO_BIN_EXE_dropless");
    let (report, stdout, _dir) = trial_scenario(
        &format!(
            r#"
name = "aborts"
[service]
command = ["{demo}", "demo-service", "--profile", "v3", "--work-ms", "10"]
replicas = 1
grace = "5s"
[load]
rate = 20
duration = "6s"
[[event]]
at = "1s"
action = "deploy"
version = "broken-expected"
command = ["sh", "-c", "exit 2"]
expect = "aborted"
[[event]]
at = "2s"
action = "deploy"
version = "broken"
command = ["sh", "-c", "exit 2"]
[[event]]
at = "3s"
action = "restart"
expect = "aborted"
"#
        ),
        3,
    );
    assert_eq!(report["verdict"], "fail");
    assert_eq!(
        report["requests"]["failed"], 0,
        "the old version kept serving"
    );
    let outcomes: Vec<(&str, &str)> = report["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["outcome"].as_str().unwrap(),
                e["expect"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("aborted", "aborted"),
            ("aborted", "completed"),
            ("ok", "aborted")
        ]
    );
    let reasons = reasons(&report);
    assert!(
        !reasons.contains("event[0]"),
        "an expected abort passes: {reasons}"
    );
    assert!(
        reasons.contains("event[1] deploy broken was aborted: rollout"),
        "{reasons}"
    );
    assert!(
        reasons.contains("event[2] restart completed, but the scenario expects it to be aborted"),
        "{reasons}"
    );
    assert!(stdout.contains("aborted as expected"), "{stdout}");
}

/// The pid of a child of `parent` named `name` (from /proc).
fn child_named(parent: u32, name: &str) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold spaces.
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1;
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent && comm == name).then_some(pid)
        })
}

/// `GET path` on `addr` answered 200.
fn answers_200(addr: &str, path: &str) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: trial\r\nConnection: close\r\n\r\n");
    let mut head = [0u8; 12];
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_exact(&mut head).is_ok()
        && &head[9..12] == b"200"
}

#[test]
fn an_audit_that_cannot_reach_the_database_still_writes_the_reports_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("audit.toml");
    std::fs::write(
        &scenario,
        r#"
name = "audit-gone"
[service]
demo = "v9"
replicas = 1
work_ms = 10
grace = "2s"
demo_args = ["--pre-stop", "0s"]
[load]
rate = 20
duration = "4s"
[audit]
sink = "influx"
"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let mut trial = dropless()
        .args(["trial", scenario.to_str().unwrap(), "--quiet", "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the replica answers through the proxy it has created its
    // database: stop the trial's private influxd, as an outage would.
    let deadline = Instant::now() + Duration::from_secs(60);
    let influxd = loop {
        // serve listens on port 0 and prints the address it bound.
        let listen = std::fs::read_to_string(out.join("serve.log"))
            .ok()
            .and_then(|text| {
                let start = text.find("proxy on http://")? + "proxy on http://".len();
                let end = start + text[start..].find(',')?;
                Some(text[start..end].to_owned())
            });
        if let Some(listen) = listen
            && answers_200(&listen, "/healthz")
        {
            break child_named(trial.id(), "influxd").expect("the trial's influxd is its child");
        }
        assert!(
            Instant::now() < deadline,
            "the trial's service never answered"
        );
        assert!(trial.try_wait().unwrap().is_none(), "the trial ended early");
        std::thread::sleep(Duration::from_millis(50));
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(influxd),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let output = trial.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(3),
        "{stdout}\n{}",
        stderr(&output)
    );
    let report = report(&out);
    assert_eq!(report["verdict"], "fail");
    let reasons = reasons(&report);
    assert!(
        reasons.contains("audit could not run: cannot query"),
        "{reasons}"
    );
    let audit = &report["audit"];
    assert!(audit["error"].is_string(), "{audit}");
    assert!(audit["lost"].is_null(), "nothing could be counted: {audit}");
    assert_eq!(audit["acknowledged"], report["requests"]["ok"]);
    let html = std::fs::read_to_string(out.join("report.html")).expect("report.html written");
    assert!(html.contains("could not run"), "the page says so");
    assert!(stdout.contains("COULD NOT RUN"), "{stdout}");
}

/// Pids of every descendant of `root` (from /proc).
fn descendants(root: u32) -> Vec<i32> {
    let parents: Vec<(i32, u32)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, _) in parents.iter().filter(|(_, ppid)| *ppid == parent) {
            found.push(*pid);
            frontier.push(*pid as u32);
        }
    }
    found
}

/// The temporary directories (`/tmp/dropless-trial-…`,
/// `/tmp/dropless-influxd-…`) named in `text`.
fn temp_dirs_in(text: &str) -> Vec<std::path::PathBuf> {
    let tmp = std::env::temp_dir().display().to_string();
    let mut dirs = Vec::new();
    for prefix in ["dropless-trial-", "dropless-influxd-"] {
        let needle = format!("{tmp}/{prefix}");
        let mut rest = text;
        while let Some(at) = rest.find(&needle) {
            let tail = &rest[at + needle.len()..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            dirs.push(format!("{needle}{}", &tail[..end]).into());
            rest = tail;
        }
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Starts `dropless ARGS` with its stdout piped (no terminal); returns the
/// child and its stdout lines as they come.
fn spawn_plain(args: &[&str]) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = dropless()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits for a line containing `needle`; returns the lines so far.
fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no line with {needle:?} within 60 s: {seen:#?}");
}

/// Sends `signal` to a running `dropless trial|demo ARGS` (its reports in
/// `out`) once its load started; asserts exit 130, every process it
/// started gone and its temporary directories removed. Returns its stdout
/// lines and stderr.
fn interrupt(args: &[&str], out: &Path, signal: nix::sys::signal::Signal) -> (Vec<String>, String) {
    let (mut child, lines) = spawn_plain(args);
    let mut seen = wait_for_line(&lines, "load started");
    // The temporary directories the trial's processes name.
    let mut named = String::new();
    for pid in descendants(child.id()) {
        for file in ["cmdline", "environ"] {
            if let Ok(bytes) = std::fs::read(format!("/proc/{pid}/{file}")) {
                named.push_str(&String::from_utf8_lossy(&bytes).replace('\0', " "));
                named.push('\n');
            }
        }
    }
    let serve_toml = walk(out).into_iter().find(|p| p.ends_with("serve.toml"));
    named.push_str(&std::fs::read_to_string(serve_toml.expect("serve.toml written")).unwrap());
    let dirs = temp_dirs_in(&named);
    for prefix in ["dropless-trial-", "dropless-influxd-"] {
        assert!(
            dirs.iter()
                .any(|d| d.display().to_string().contains(prefix)),
            "a {prefix}… directory is named: {named}"
        );
    }
    let stderr = stop_and_wait(&mut child, signal);
    seen.extend(lines.iter());
    for dir in dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    (seen, stderr)
}

/// Sends `signal` to `child`; asserts it exits 130 within 60 s and every
/// process it had started is gone. Returns its stderr.
fn stop_and_wait(child: &mut std::process::Child, signal: nix::sys::signal::Signal) -> String {
    let pids = descendants(child.id());
    assert!(!pids.is_empty(), "it runs processes");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 60 s after {signal}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    for pid in pids {
        assert!(
            crate::fixtures::is_gone(pid),
            "process {pid} still runs after {signal}"
        );
    }
    stderr
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A trial long enough to be interrupted: demo v9 ×2 (its calculation log
/// in a private influxd) under 20 req/s for 30 s.
const LONG_TRIAL: &str = r#"
name = "interrupted"
[service]
demo = "v9"
replicas = 2
work_ms = 10
grace = "2s"
demo_args = ["--pre-stop", "0s"]
[load]
rate = 20
duration = "30s"
[[event]]
at = "25s"
action = "restart"
[audit]
sink = "influx"
"#;

fn interrupted_trial_stops_everything_and_writes_the_partial_report(
    signal: nix::sys::signal::Signal,
) {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("long.toml");
    std::fs::write(&scenario, LONG_TRIAL).unwrap();
    let out = dir.path().join("out");
    let (lines, _) = interrupt(
        &[
            "trial",
            scenario.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &out,
        signal,
    );
    let report = report(&out);
    assert_eq!(report["interrupted"], true, "{report}");
    assert_eq!(report["verdict"], "fail");
    assert!(reasons(&report).contains("interrupted"), "{report}");
    assert!(out.join("report.html").exists());
    assert!(
        lines.iter().any(|l| l.contains("stopping dropless serve")),
        "{lines:#?}"
    );
}

#[test]
fn sigint_stops_a_trial_and_writes_the_partial_report() {
    interrupted_trial_stops_everything_and_writes_the_partial_report(
        nix::sys::signal::Signal::SIGINT,
    );
}

#[test]
fn sigterm_stops_a_trial_and_writes_the_partial_report() {
    interrupted_trial_stops_everything_and_writes_the_partial_report(
        nix::sys::signal::Signal::SIGTERM,
    );
}

#[test]
fn sigint_stops_the_demo_after_its_first_partial_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (lines, _) = interrupt(
        &["demo", "--out", out.to_str().unwrap()],
        &out,
        nix::sys::signal::Signal::SIGINT,
    );
    let report = report(&out.join("dropless"));
    assert_eq!(report["interrupted"], true, "{report}");
    assert!(
        !out.join("kubernetes").exists(),
        "the second trial did not start: {lines:#?}"
    );
}

#[test]
fn sigint_stops_the_during_command_and_the_load() {
    let serve = Serve::start("v9");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let target = format!("http://127.0.0.1:{}/sum?a=1&b=2", serve.port);
    // The command's pid, written by the shell before it sleeps.
    let pid_file = dir.path().join("pid");
    let command = format!("echo $$ > {}; sleep 60", pid_file.display());
    let (mut child, lines) = spawn_plain(&[
        "trial",
        "--target",
        &target,
        "--during",
        &command,
        "--rate",
        "20",
        "--out",
        out.to_str().unwrap(),
    ]);
    wait_for_line(&lines, "load started");
    let deadline = Instant::now() + Duration::from_secs(30);
    let shell: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    stop_and_wait(&mut child, nix::sys::signal::Signal::SIGINT);
    assert!(crate::fixtures::is_gone(shell), "the command still runs");
    let report = report(&out);
    assert_eq!(report["interrupted"], true, "{report}");
    let event = &report["events"][0];
    assert_eq!(event["outcome"], "failed", "{event}");
    assert!(
        event["detail"].as_str().unwrap().contains("interrupted"),
        "{event}"
    );
    serve.stop();
}

#[test]
fn sigint_stops_the_matrix_and_writes_the_cells_under_way() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (mut child, lines) = spawn_plain(&[
        "trial",
        "--matrix",
        "--profiles",
        "v9",
        "--strategies",
        "dropless",
        "--out",
        out.to_str().unwrap(),
    ]);
    wait_for_line(&lines, "v9-dropless: load started");
    stop_and_wait(&mut child, nix::sys::signal::Signal::SIGINT);
    let cells: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("matrix.json")).unwrap()).unwrap();
    assert_eq!(cells[0]["interrupted"], true, "{cells}");
    assert!(out.join("matrix.html").exists());
}

/// The seconds of a plain progress line `[  2.1s] …`.
fn seconds_of(line: &str) -> f64 {
    let inside = line
        .strip_prefix('[')
        .and_then(|l| l.split_once("s]"))
        .unwrap_or_else(|| panic!("not a progress line: {line:?}"))
        .0;
    inside.trim().parse().unwrap()
}

/// Runs `dropless ARGS` with stdout piped to its end; asserts `code`;
/// returns the stdout lines.
fn plain_lines(args: &[&str], code: i32) -> Vec<String> {
    let output = dropless()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    assert_eq!(
        output.status.code(),
        Some(code),
        "{stdout}\n{}",
        stderr(&output)
    );
    assert!(
        !stdout.contains('\x1b') && !stdout.contains('\r'),
        "no bar, no escape codes: {stdout:?}"
    );
    stdout.lines().map(str::to_owned).collect()
}

/// The index of the first line containing `needle`.
fn line_with(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?}: {lines:#?}"))
}

#[test]
fn without_a_terminal_a_trial_prints_a_line_per_event_and_every_5_s() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("plain.toml");
    std::fs::write(
        &scenario,
        r#"
name = "plain"
[service]
demo = "v3"
replicas = 2
work_ms = 10
[load]
rate = 20
duration = "6s"
[[event]]
at = "1s"
action = "restart"
"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let lines = plain_lines(
        &[
            "trial",
            scenario.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        0,
    );
    let started = line_with(&lines, "event[0] restart started");
    let ended = line_with(&lines, "event[0] restart completed in");
    let progress = line_with(&lines, "load 5 s: ");
    assert!(lines[progress].contains(" ok, 0 failed"), "{lines:#?}");
    // As they happen: in time order, before the summary.
    assert!(started < ended && ended < progress, "{lines:#?}");
    assert!(seconds_of(&lines[started]) <= seconds_of(&lines[ended]));
    assert!(progress < line_with(&lines, "PASS"), "{lines:#?}");
}

#[test]
fn without_a_terminal_the_during_command_output_is_streamed_with_a_prefix() {
    let serve = Serve::start("v3");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let target = format!("http://127.0.0.1:{}/sum?a=1&b=2", serve.port);
    let lines = plain_lines(
        &[
            "trial",
            "--target",
            &target,
            "--during",
            "echo first; sleep 3; echo second >&2",
            "--rate",
            "20",
            "--out",
            out.to_str().unwrap(),
        ],
        0,
    );
    let first = line_with(&lines, "[cmd] first");
    let second = line_with(&lines, "[cmd] second");
    let ended = line_with(&lines, "command completed in");
    assert!(line_with(&lines, "command started") < first, "{lines:#?}");
    assert!(first < second && second < ended, "{lines:#?}");
    // The first line was shown as it came, not when the command ended.
    assert!(
        seconds_of(&lines[first]) + 2.0 <= seconds_of(&lines[ended]),
        "{lines:#?}"
    );
    let log = std::fs::read_to_string(out.join("command.log")).unwrap();
    assert_eq!(log, "first\nsecond\n");
    serve.stop();
}

#[test]
fn the_report_has_the_replicas_over_time_and_no_empty_event_details() {
    let (report, _, dir) = trial_scenario(
        r#"
name = "replicas"
[service]
demo = "v3"
replicas = 2
work_ms = 10
[load]
rate = 20
duration = "4s"
[[event]]
at = "1s"
action = "deploy"
version = "v2"
[[event]]
at = "2500ms"
action = "scale"
replicas = 1
"#,
        0,
    );
    let points = report["replicas"].as_array().expect("a replicas timeline");
    let point = |i: usize| {
        let p: &Value = &points[i];
        (
            p["ready"].as_u64().unwrap(),
            p["version"].as_str().unwrap().to_owned(),
        )
    };
    assert_eq!(point(0), (2, "v1".to_owned()), "{points:?}");
    assert_eq!(point(points.len() - 1), (1, "v2".to_owned()), "{points:?}");
    assert!(
        points
            .iter()
            .any(|p| p["version"] == "v2" && p["ready"] == 2),
        "{points:?}"
    );
    let times: Vec<f64> = points.iter().map(|p| p["t_s"].as_f64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    for event in report["events"].as_array().unwrap() {
        let detail = event["detail"].as_str().unwrap_or("");
        assert!(
            !detail.contains(", ,")
                && !detail.contains("started ,")
                && !detail.trim_end().ends_with("retired")
                && !detail.trim_end().ends_with(','),
            "{event}"
        );
    }
    let scaled = report["events"][1]["detail"].as_str().unwrap();
    assert!(scaled.starts_with("retired trial-"), "{scaled}");
    let html = std::fs::read_to_string(dir.path().join("out/report.html")).unwrap();
    assert!(
        html.contains("<polyline class=\"replicas\""),
        "the step line"
    );
    assert!(html.contains(">v1 + v2</text>") || html.contains(">v2</text>"));
}

#[test]
fn an_event_that_outlives_the_load_fails_the_verdict() {
    // The restart takes the 2 s pre-stop of the only replica, started at
    // 1 s of a 2 s load: it ends after the load, so the load did not prove it.
    let (report, _stdout, _dir) = trial_scenario(
        r#"
name = "outlives"
[service]
demo = "v9"
replicas = 1
pre_stop = "2s"
work_ms = 10
[audit]
sink = "none"
[load]
rate = 20
duration = "2s"
[[event]]
at = "1s"
action = "restart"
"#,
        3,
    );
    assert_eq!(report["verdict"], "fail");
    assert_eq!(report["events"][0]["outcome"], "ok");
    assert_eq!(report["requests"]["failed"], 0);
    let reasons = reasons(&report);
    assert!(
        reasons.contains("the load ended before event[0] restart"),
        "{reasons}"
    );
}

#[test]
fn a_serve_that_never_gets_ready_still_writes_a_failing_report() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("scenario.toml");
    std::fs::write(
        &scenario,
        r#"
name = "never-ready"
[service]
command = ["sh", "-c", "echo cannot start >&2; exit 2"]
replicas = 1
[audit]
sink = "none"
[load]
rate = 20
duration = "2s"
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
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("dropless serve"), "{err}");
    let report = report(&out);
    assert_eq!(report["verdict"], "fail");
    assert_eq!(report["requests"]["total"], 0);
    let reasons = reasons(&report);
    assert!(
        reasons.contains("dropless serve did not become ready"),
        "{reasons}"
    );
    assert!(out.join("report.html").exists());
}

#[test]
fn a_trial_with_upgrade_events_passes_with_no_failed_request() {
    let (report, stdout, _dir) = trial_scenario(
        r#"
name = "upgrades"
[service]
demo = "v9"
replicas = 2
work_ms = 10
[load]
rate = 50
duration = "4s"
[[event]]
at = "1s"
action = "upgrade"
[[event]]
at = "2500ms"
action = "upgrade"
"#,
        0,
    );
    assert!(stdout.contains("PASS"), "{stdout}");
    assert_eq!(report["requests"]["failed"], 0);
    assert_eq!(report["dropped_iterations"], 0);
    let events = report["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    for event in events {
        assert_eq!(event["action"], "upgrade");
        assert_eq!(event["outcome"], "ok", "{event}");
        let detail = event["detail"].as_str().unwrap();
        assert!(detail.starts_with("serve pid "), "{detail}");
    }
}
