//! `dropless demo` (the demo deployed behind dropless, then under the
//! Kubernetes emulation, side by side) and the hidden `dropless
//! demo-service` (the demo service itself).

use std::{path::PathBuf, process::ExitCode};

use clap::Args;
use dropless_trial::report::TrialReport;

use crate::trial::{Bar, env, runtime};

/// Arguments of `dropless demo`.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit codes: 0 the trial behind dropless passed, 3 it did not, \
1 a trial could not run, 130 stopped by Ctrl-C or SIGTERM."
)]
pub struct DemoArgs {
    /// Where the reports go.
    #[arg(long, default_value = "target/dropless/demo")]
    out: PathBuf,
    /// No progress: neither the bar (at a terminal) nor the plain lines
    /// (without one).
    #[arg(long)]
    quiet: bool,
}

/// Runs `dropless demo`: the demo behind dropless, then under the
/// Kubernetes emulation, and the two side by side.
pub fn run(args: DemoArgs) -> ExitCode {
    let env = match env() {
        Ok(env) => env,
        Err(code) => return code,
    };
    let (runtime, stop) = runtime();
    let mut reports = Vec::new();
    for scenario in dropless_trial::demo::scenarios() {
        let out = args.out.join(&scenario.name);
        println!(
            "== {}: {}, {} req/s for {} s, {} events",
            scenario.name,
            scenario.service.strategy.name(),
            scenario.load.rate,
            scenario.load.duration.as_secs(),
            scenario.events.len()
        );
        let progress = Bar::new(args.quiet);
        let result = runtime.block_on(dropless_trial::run::run(
            &scenario, &out, &env, &progress, &stop,
        ));
        progress.finish();
        match result {
            Ok(report) => {
                print!("{}", dropless_trial::summary::render(&report));
                println!("  reports    {}\n", out.join("report.html").display());
                reports.push(report);
            }
            Err(error) => {
                eprintln!("dropless demo: {}: {error}", scenario.name);
                return crate::trial::exit_code(&error);
            }
        }
        if stop.is_cancelled() {
            println!(
                "== interrupted: the trials after {} did not run",
                scenario.name
            );
            return ExitCode::from(crate::interrupt::INTERRUPTED);
        }
    }
    println!(
        "== side by side\n{}",
        dropless_trial::demo::comparison(&reports)
    );
    if reports.first().is_some_and(TrialReport::passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

/// Runs the built-in demo service (what `dropless demo` and trials with
/// `demo = "vN"` start as replicas).
pub fn service(args: dropless_demo::Args) -> ExitCode {
    dropless_demo::main(args, "dropless demo-service")
}
