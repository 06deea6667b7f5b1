//! Bad input: one clear line and exit code 2.

use std::process::Command;

use crate::fixtures::closed_port;

fn demo(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_dropless-demo"))
        .args(["--port", "0"])
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), stderr)
}

#[test]
fn unknown_profile_is_a_usage_error() {
    let (code, stderr) = demo(&["--profile", "v10"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("v10") && stderr.contains("--profile"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn malformed_influx_url_is_a_usage_error() {
    for url in ["not a url", "127.0.0.1:8086", "https://127.0.0.1:8086"] {
        let (code, stderr) = demo(&["--influx-url", url]);
        assert_eq!(code, 2, "{url}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains("--influx-url"), "{stderr}");
    }
}

#[test]
fn unreachable_influx_at_start_is_exit_2() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let (code, stderr) = demo(&["--influx-url", &url]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(&url) && stderr.contains("refused"),
        "{stderr}"
    );
}

#[test]
fn bad_values_name_the_flag() {
    for (args, flag) in [
        (vec!["--hello-delay=-1"], "--hello-delay"),
        (vec!["--startup-delay", "soon"], "--startup-delay"),
        (vec!["--batch-size", "0"], "--batch-size"),
    ] {
        let (code, stderr) = demo(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

#[test]
fn help_explains_every_flag() {
    let output = Command::new(env!("CARGO_BIN_EXE_dropless-demo"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--port",
        "--host",
        "--profile",
        "--version-label",
        "--work-ms",
        "--hello-delay",
        "--startup-delay",
        "--pre-stop",
        "--grace",
        "--influx-url",
        "--influx-db",
        "--log-file",
        "--log-delay",
        "--batch-size",
        "--batch-interval",
        "v4",
        "v9",
        "HELLO_REST_REQUEST_DELAY",
        "Exit codes",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}
