//! `dropless trial --target URL --during COMMAND`: any server, loaded
//! while a command of yours deploys it.

use std::{path::PathBuf, process::ExitCode};

use dropless_trial::{run::TrialError, scenario::ClientMode};

use super::{Bar, Client, TrialArgs, finish, runtime};

/// `dropless trial --target URL --during COMMAND`.
pub(super) fn run(args: &TrialArgs, target: &str, command: &str) -> ExitCode {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        eprintln!(
            "dropless trial: --rate {}: expected a positive number of requests per second",
            args.rate
        );
        return ExitCode::from(2);
    }
    let load_out = match super::load_out(&args.load_out) {
        Ok(outputs) => outputs,
        Err(code) => return code,
    };
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
        load_out,
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/dropless/trial/during"));
    let progress = Bar::new(args.quiet);
    let (runtime, stop) = runtime();
    let result = runtime.block_on(dropless_trial::during::run(&during, &out, &progress, &stop));
    progress.finish();
    if let Err(TrialError::Load(dropless_load::Error::Config(error))) = &result {
        eprintln!("dropless trial: {error}");
        return ExitCode::from(2);
    }
    finish(result, &out)
}
