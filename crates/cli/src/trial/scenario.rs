//! `dropless trial SCENARIO`: a scenario file against a private
//! `dropless serve`.

use std::{path::PathBuf, process::ExitCode};

use dropless_trial::Scenario;

use super::{Bar, TrialArgs, env, finish, runtime};

/// Runs the scenario file of `args`.
pub(super) fn run(args: TrialArgs) -> ExitCode {
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
    let load_out = match super::load_out(&args.load_out) {
        Ok(outputs) => outputs,
        Err(code) => return code,
    };
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from("target/dropless/trial").join(&scenario.name));
    let mut env = match env() {
        Ok(env) => env,
        Err(code) => return code,
    };
    env.load_out = load_out;
    let progress = Bar::new(args.quiet);
    let (runtime, stop) = runtime();
    let result = runtime.block_on(dropless_trial::run::run(
        &scenario, &out, &env, &progress, &stop,
    ));
    progress.finish();
    finish(result, &out)
}
