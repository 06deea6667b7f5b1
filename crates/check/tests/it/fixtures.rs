//! The programs the tests check, and the check settings they share: short
//! enough for a few seconds per run, at a low bounded rate.

use std::time::Duration;

use dropless_check::{Check, Config, Report, Verdict};

/// Requests per second of every check here.
pub const RATE: f64 = 60.0;
/// Grace of every check here: v1 and v2 are killed after it.
pub const GRACE: Duration = Duration::from_secs(2);
/// How long `/` takes in the fixtures.
pub const HELLO_DELAY: Duration = Duration::from_millis(300);

const FIXTURE: &str = "DROPLESS_CHECK_FIXTURE";
const ARGS: &str = "DROPLESS_CHECK_FIXTURE_ARGS";

/// Checks the fixture program `name` with `args`.
pub async fn check(name: &str, args: &[&str], health: bool) -> Report {
    let exe = std::env::current_exe().expect("the test binary");
    let command = vec![
        "/usr/bin/env".to_owned(),
        format!("{FIXTURE}={name}"),
        format!("{ARGS}={}", args.join(" ")),
        exe.display().to_string(),
        "fixture_program".to_owned(),
        "--exact".to_owned(),
        "--nocapture".to_owned(),
    ];
    let mut config = Config::new(command);
    config.rate = RATE;
    config.grace = GRACE;
    config.warmup = Duration::from_millis(700);
    config.startup_timeout = Duration::from_secs(20);
    config.health_path = health.then(|| "/healthz".to_owned());
    dropless_check::run(&config).await.expect("the check runs")
}

/// Check number `n`.
pub fn nth(report: &Report, n: u8) -> &Check {
    &report.checks[usize::from(n - 1)]
}

/// Asserts check `n`'s verdict, showing the whole report when it differs.
#[track_caller]
pub fn expect(report: &Report, n: u8, verdict: Verdict) {
    assert_eq!(
        nth(report, n).verdict,
        verdict,
        "check {n}:\n{}",
        report.text()
    );
}

/// Runs the fixture program named in the environment, and exits; returns
/// at once when none is named (the normal test run).
pub fn run_if_asked() {
    let Ok(name) = std::env::var(FIXTURE) else {
        return;
    };
    let args: Vec<String> = std::env::var(ARGS)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let code = match name.as_str() {
        "demo" => {
            use clap::Parser;
            let args = dropless_demo::Args::parse_from(
                std::iter::once("dropless-demo".to_owned()).chain(args),
            );
            match runtime.block_on(dropless_demo::run(args)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("demo: {e}");
                    i32::from(e.exit_code())
                }
            }
        }
        "hangup" => runtime.block_on(crate::backends::hangup()),
        "racy" => runtime.block_on(crate::backends::racy()),
        other => panic!("no fixture program {other:?}"),
    };
    std::process::exit(code);
}

/// The port the check gave the program.
pub fn port() -> u16 {
    std::env::var("PORT")
        .expect("PORT from the check")
        .parse()
        .expect("a port number")
}
