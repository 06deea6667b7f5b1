//! `dropless trial`, `dropless demo`, `dropless k8s manifest` and the
//! hidden `dropless demo-service`: arguments, progress and exit codes; the
//! work is in `dropless-trial`.

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Args, Subcommand};
use dropless_demo::Profile;
use dropless_load::Snapshot;
use dropless_trial::{
    Scenario,
    manifest::Manifest,
    report::{EventRecord, Outcome, TrialReport},
    run::{Env, Progress, TrialError},
    scenario::{ClientMode, Strategy},
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Arguments of `dropless trial`.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit codes: 0 pass, 3 fail (a request failed, an operation was lost, an event \
did not end as asked, the audit could not run, or the load ended before the --during command), \
2 bad scenario or flags, 1 the trial could not run."
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
    /// No progress bar (it is also hidden when stderr is not a terminal).
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
pub fn trial(args: TrialArgs) -> ExitCode {
    if let (Some(target), Some(command)) = (&args.target, &args.during) {
        return during(&args, target, command);
    }
    if args.matrix {
        return matrix(&args);
    }
    let Some(path) = args.scenario else {
        eprintln!(
            "dropless trial: give a scenario file, --target URL --during COMMAND, or --matrix"
        );
        return ExitCode::from(2);
    };
    let scenario = match Scenario::load(&path) {
        Ok(scenario) => scenario,
        Err(error) => {
            eprintln!("dropless trial: {error}");
            return ExitCode::from(2);
        }
    };
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from("target/dropless/trial").join(&scenario.name));
    let env = match env() {
        Ok(env) => env,
        Err(code) => return code,
    };
    let progress = Bar::new(args.quiet);
    let result = runtime().block_on(dropless_trial::run::run(&scenario, &out, &env, &progress));
    progress.finish();
    finish(result, &out)
}

/// `dropless trial --target URL --during COMMAND`.
fn during(args: &TrialArgs, target: &str, command: &str) -> ExitCode {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        eprintln!(
            "dropless trial: --rate {}: expected a positive number of requests per second",
            args.rate
        );
        return ExitCode::from(2);
    }
    let during = dropless_trial::during::During {
        url: target.to_owned(),
        command: command.to_owned(),
        rate: args.rate,
        duration: args.duration,
        lead_in: dropless_trial::during::DEFAULT_LEAD_IN,
        tail: dropless_trial::during::DEFAULT_TAIL,
        client: match args.client {
            Client::Keepalive => ClientMode::Keepalive,
            Client::NoKeepalive => ClientMode::NoKeepalive,
            Client::H2 => ClientMode::H2,
        },
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/dropless/trial/during"));
    let progress = Bar::new(args.quiet);
    let result = runtime().block_on(dropless_trial::during::run(&during, &out, &progress));
    progress.finish();
    if let Err(TrialError::Load(dropless_load::Error::Config(error))) = &result {
        eprintln!("dropless trial: {error}");
        return ExitCode::from(2);
    }
    finish(result, &out)
}

/// Prints the summary and maps the verdict to the exit code.
fn finish(result: Result<TrialReport, TrialError>, out: &Path) -> ExitCode {
    match result {
        Ok(report) => {
            print!("{}", dropless_trial::summary::render(&report));
            println!(
                "  reports    {}, {}",
                out.join("report.json").display(),
                out.join("report.html").display()
            );
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Err(error) => {
            eprintln!("dropless trial: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The programs a trial starts: this binary, as `serve` and as the demo.
fn env() -> Result<Env, ExitCode> {
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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("the async runtime starts")
}

/// A progress bar on stderr: seconds of load, ok and failed so far; events
/// printed above it as they end.
struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn new(quiet: bool) -> Bar {
        let target = if quiet || !std::io::stderr().is_terminal() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("a valid template"));
        bar.enable_steady_tick(Duration::from_millis(120));
        Bar { bar }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Bar {
    fn phase(&self, text: &str) {
        self.bar.set_message(text.to_owned());
    }

    fn load_started(&self, duration: Duration) {
        self.bar.set_length(duration.as_secs().max(1));
        self.bar.set_position(0);
        self.bar.set_style(
            ProgressStyle::with_template("[{bar:30}] {pos}/{len}s {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
    }

    fn second(&self, snapshot: &Snapshot) {
        self.bar.set_position(snapshot.elapsed_s as u64);
        self.bar.set_message(format!(
            "{} ok, {} failed, {} in flight",
            snapshot.requests.ok, snapshot.requests.failed, snapshot.in_flight
        ));
    }

    fn event(&self, record: &EventRecord) {
        let detail = match (record.outcome, &record.detail) {
            (Outcome::Aborted | Outcome::Failed, Some(detail)) => format!(": {detail}"),
            _ => String::new(),
        };
        self.bar.println(format!(
            "  {:>5.1}s {} {}{detail} ({:.1}s)",
            record.started_s,
            record.action,
            record.outcome_text(),
            record.ended_s - record.started_s
        ));
    }
}

/// `dropless k8s …`.
#[derive(Debug, Subcommand)]
pub enum K8sCommand {
    /// Print a Deployment and a Service with zero-downtime settings.
    Manifest(ManifestArgs),
}

/// Arguments of `dropless k8s manifest`.
#[derive(Debug, Args)]
pub struct ManifestArgs {
    /// Name of the Deployment, Service and container.
    #[arg(long)]
    name: String,
    /// Container image.
    #[arg(long)]
    image: String,
    /// Replicas.
    #[arg(long, default_value_t = dropless_trial::manifest::DEFAULT_REPLICAS)]
    replicas: u32,
    /// Container port (also passed as env PORT).
    #[arg(long, default_value_t = dropless_trial::manifest::DEFAULT_PORT)]
    port: u16,
}

/// Runs `dropless k8s`.
pub fn k8s(command: K8sCommand) -> ExitCode {
    match command {
        K8sCommand::Manifest(args) => {
            let mut manifest = Manifest::new(&args.name, &args.image);
            manifest.replicas = args.replicas;
            manifest.port = args.port;
            match manifest.render() {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("dropless k8s manifest: {error}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// Runs the built-in demo service (what `dropless demo` and trials with
/// `demo = "vN"` start as replicas).
pub fn demo_service(args: dropless_demo::Args) -> ExitCode {
    dropless_demo::main(args, "dropless demo-service")
}

/// `dropless trial --matrix`.
fn matrix(args: &TrialArgs) -> ExitCode {
    let mut profiles: Vec<Profile> = Vec::new();
    for name in &args.profiles {
        match name.parse() {
            Ok(profile) => profiles.push(profile),
            Err(_) => {
                eprintln!(
                    "dropless trial: --profiles {:?}: expected profiles v1..v9, e.g. --profiles v3,v4",
                    name.to_ascii_lowercase()
                );
                return ExitCode::from(2);
            }
        }
    }
    if profiles.is_empty() {
        profiles = Profile::ALL.to_vec();
    }
    let strategies: Vec<Strategy> = if args.strategies.is_empty() {
        Strategy::ALL.to_vec()
    } else {
        args.strategies.iter().map(|s| (*s).into()).collect()
    };
    let env = match env() {
        Ok(env) => env,
        Err(code) => return code,
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/dropless/matrix"));
    println!(
        "{} profile(s) × {} strateg(ies), {} at a time; each: demo ×2, scale-up and rolling restart under {} req/s for {} s",
        profiles.len(),
        strategies.len(),
        args.jobs.max(1),
        dropless_trial::matrix::CELL_RATE,
        dropless_trial::matrix::CELL_DURATION.as_secs()
    );
    let on_cell = |cell: &dropless_trial::matrix::Cell| {
        println!(
            "  {:<4} {:<20} {}",
            cell.profile,
            cell.strategy,
            cell.label()
        );
    };
    let result = runtime().block_on(dropless_trial::matrix::run(
        &profiles,
        &strategies,
        &out,
        &env,
        args.jobs,
        &on_cell,
    ));
    match result {
        Ok(cells) => {
            println!("\n{}", dropless_trial::matrix::table(&cells, &strategies));
            println!(
                "reports: {}, {}",
                out.join("matrix.json").display(),
                out.join("matrix.html").display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("dropless trial --matrix: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Arguments of `dropless demo`.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit codes: 0 the trial behind dropless passed, 3 it did not, \
1 a trial could not run."
)]
pub struct DemoArgs {
    /// Where the reports go.
    #[arg(long, default_value = "target/dropless/demo")]
    out: PathBuf,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    quiet: bool,
}

/// Runs `dropless demo`: the demo behind dropless, then under the
/// Kubernetes emulation, and the two side by side.
pub fn demo(args: DemoArgs) -> ExitCode {
    let env = match env() {
        Ok(env) => env,
        Err(code) => return code,
    };
    let runtime = runtime();
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
        let result = runtime.block_on(dropless_trial::run::run(&scenario, &out, &env, &progress));
        progress.finish();
        match result {
            Ok(report) => {
                print!("{}", dropless_trial::summary::render(&report));
                println!("  reports    {}\n", out.join("report.html").display());
                reports.push(report);
            }
            Err(error) => {
                eprintln!("dropless demo: {}: {error}", scenario.name);
                return ExitCode::FAILURE;
            }
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
