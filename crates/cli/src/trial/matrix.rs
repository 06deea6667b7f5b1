//! `dropless trial --matrix`: demo profiles v1..v9 × strategies, each a
//! short trial.

use std::{path::PathBuf, process::ExitCode};

use dropless_demo::Profile;
use dropless_trial::scenario::Strategy;

use super::{TrialArgs, env, runtime};

/// `dropless trial --matrix`.
pub(super) fn run(args: &TrialArgs) -> ExitCode {
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
    let (runtime, stop) = runtime();
    let result = runtime.block_on(dropless_trial::matrix::run(
        &profiles,
        &strategies,
        &out,
        &env,
        args.jobs,
        &Lines,
        &stop,
    ));
    match result {
        Ok(cells) => {
            println!("\n{}", dropless_trial::matrix::table(&cells, &strategies));
            println!(
                "reports: {}, {}",
                out.join("matrix.json").display(),
                out.join("matrix.html").display()
            );
            if stop.is_cancelled() {
                println!("interrupted: the cells done so far");
                ExitCode::from(crate::interrupt::INTERRUPTED)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => {
            eprintln!("dropless trial --matrix: {error}");
            super::exit_code(&error)
        }
    }
}

/// A line per cell when its load starts and when it ends.
struct Lines;

impl dropless_trial::matrix::Watch for Lines {
    fn load_started(&self, name: &str) {
        println!("  {name}: load started");
    }

    fn cell(&self, cell: &dropless_trial::matrix::Cell) {
        println!(
            "  {:<4} {:<20} {}",
            cell.profile,
            cell.strategy,
            cell.label()
        );
    }
}
