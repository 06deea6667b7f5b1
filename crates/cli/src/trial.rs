//! `dropless trial`: arguments, exit codes and what its forms share; each
//! form is a module (a scenario file, `--target … --during …`,
//! `--matrix`), the work is in `dropless-trial`.

mod during;
mod matrix;
mod progress;
mod scenario;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::Args;
use dropless_trial::{
    report::TrialReport,
    run::{Env, TrialError},
    scenario::Strategy,
};
use tokio_util::sync::CancellationToken;

pub(crate) use progress::Bar;

use crate::interrupt::INTERRUPTED;

/// Arguments of `dropless trial`.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit codes: 0 pass, 3 fail (a request failed, an operation was lost, an event \
did not end as asked, the audit could not run, or the load ended before the --during command), \
2 bad scenario or flags, 1 the trial could not run, 130 stopped by Ctrl-C or SIGTERM (the \
partial reports are written, marked interrupted)."
)]
pub struct TrialArgs {
    /// Scenario file (TOML): the service, the load, the events, the audit.
    /// See docs/trial.md.
    #[arg(required_unless_present_any = ["target", "matrix"])]
    scenario: Option<PathBuf>,
    /// Directory for report.json, report.html and the logs
    /// [default: target/dropless/trial/NAME].
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress: neither the bar (at a terminal) nor the plain lines
    /// (without one).
    #[arg(long)]
    quiet: bool,
    /// Load this URL (any server) instead of a scenario; needs --during.
    #[arg(long, requires = "during", conflicts_with_all = ["scenario", "matrix"])]
    target: Option<String>,
    /// With --target: a shell command that deploys (run with `sh -c`); its
    /// start and end are the events.
    #[arg(long, requires = "target")]
    during: Option<String>,
    /// With --target: requests per second.
    #[arg(long, default_value_t = 100.0, requires = "target")]
    rate: f64,
    /// With --target: a fixed load length (e.g. `2m`); the verdict fails if
    /// the command has not ended by then. Default: until the command ended
    /// and 5 s more.
    #[arg(long, value_parser = crate::value::duration, requires = "target")]
    duration: Option<Duration>,
    /// With --target: the client mode, keepalive, no-keepalive or h2.
    #[arg(long, value_enum, default_value = "keepalive", requires = "target")]
    client: Client,
    /// The v1..v9 table of the Elixir graceful-shutdown talk, reproduced
    /// locally: demo profiles v1..v9 × strategies kubernetes,
    /// kubernetes-prestop and dropless, each a short trial.
    #[arg(long, conflicts_with = "scenario")]
    matrix: bool,
    /// With --matrix: only these profiles (comma-separated, e.g. v3,v4).
    #[arg(long, value_delimiter = ',', requires = "matrix")]
    profiles: Vec<String>,
    /// With --matrix: only these strategies (kubernetes, kubernetes-prestop,
    /// dropless).
    #[arg(long, value_delimiter = ',', value_enum, requires = "matrix")]
    strategies: Vec<StrategyArg>,
    /// With --matrix: trials run at once (at least 1).
    #[arg(
        long,
        default_value_t = dropless_trial::matrix::DEFAULT_JOBS,
        requires = "matrix",
        value_parser = crate::value::at_least_one
    )]
    jobs: usize,
}

/// Strategies on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StrategyArg {
    Kubernetes,
    KubernetesPrestop,
    Dropless,
}

impl From<StrategyArg> for Strategy {
    fn from(arg: StrategyArg) -> Strategy {
        match arg {
            StrategyArg::Kubernetes => Strategy::Kubernetes,
            StrategyArg::KubernetesPrestop => Strategy::KubernetesPrestop,
            StrategyArg::Dropless => Strategy::Dropless,
        }
    }
}

/// Client modes on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Client {
    Keepalive,
    NoKeepalive,
    H2,
}

/// Runs `dropless trial`.
pub fn run(args: TrialArgs) -> ExitCode {
    if let (Some(target), Some(command)) = (&args.target, &args.during) {
        return during::run(&args, target, command);
    }
    if args.matrix {
        return matrix::run(&args);
    }
    scenario::run(args)
}

/// Prints the summary and maps the verdict to the exit code (130 when
/// interrupted).
fn finish(result: Result<TrialReport, TrialError>, out: &Path) -> ExitCode {
    match result {
        Ok(report) => {
            print!("{}", dropless_trial::summary::render(&report));
            println!(
                "  reports    {}, {}",
                out.join("report.json").display(),
                out.join("report.html").display()
            );
            if report.load.interrupted {
                ExitCode::from(INTERRUPTED)
            } else if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Err(error) => {
            eprintln!("dropless trial: {error}");
            let json = out.join("report.json");
            if json.exists() {
                eprintln!(
                    "  what it has: {}, {}",
                    json.display(),
                    out.join("report.html").display()
                );
            }
            exit_code(&error)
        }
    }
}

/// 130 for a trial interrupted before its load started, 1 otherwise.
pub(crate) fn exit_code(error: &TrialError) -> ExitCode {
    match error {
        TrialError::Interrupted => ExitCode::from(INTERRUPTED),
        _ => ExitCode::FAILURE,
    }
}

/// The programs a trial starts: this binary, as `serve` and as the demo.
pub(crate) fn env() -> Result<Env, ExitCode> {
    match std::env::current_exe() {
        Ok(exe) => Ok(Env {
            demo: vec![exe.display().to_string(), "demo-service".into()],
            dropless: exe,
        }),
        Err(error) => {
            eprintln!("dropless: cannot find its own binary: {error}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// The async runtime of a trial, and the stop it is given: cancelled at
/// the first Ctrl-C or SIGTERM.
pub(crate) fn runtime() -> (tokio::runtime::Runtime, CancellationToken) {
    let runtime = tokio::runtime::Runtime::new().expect("the async runtime starts");
    let stop = {
        let _inside = runtime.enter();
        crate::interrupt::stop_token()
    };
    (runtime, stop)
}
