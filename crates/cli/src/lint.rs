//! `dropless k8s lint` and `dropless swarm lint`: the files, the rules'
//! assumptions, one line per finding, and the exit code.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Args;
use dropless_orchestrator::lint::{self, Lint, LintError, LintOptions};

/// Arguments shared by both linters.
#[derive(Debug, Args)]
pub struct LintArgs {
    /// YAML files to check (several documents per file are fine).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// How long the removal of an endpoint takes to reach every proxy and
    /// load balancer; a preStop sleep must cover it.
    #[arg(long, value_parser = crate::value::duration, default_value = "5s")]
    propagation: Duration,
    /// How long the app drains after SIGTERM; the grace period must be
    /// longer than the preStop plus this.
    #[arg(long, value_parser = crate::value::duration, default_value = "30s")]
    drain: Duration,
}

/// Which files a linter reads.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Kubernetes Deployments.
    Kubernetes,
    /// Swarm stack (compose) files.
    Swarm,
}

/// Lints every file: exit 0 clean, 3 with findings, 2 when a file cannot be
/// read or none holds anything to check.
pub fn run(kind: Kind, args: LintArgs) -> ExitCode {
    let options = LintOptions {
        propagation: args.propagation,
        drain: args.drain,
    };
    let (command, what) = match kind {
        Kind::Kubernetes => ("dropless k8s lint", "a Deployment"),
        Kind::Swarm => ("dropless swarm lint", "a stack with services"),
    };
    let (mut checked, mut findings, mut unreadable) = (0, 0, false);
    for file in &args.files {
        let result = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read it ({e})"))
            .and_then(|source| {
                match kind {
                    Kind::Kubernetes => lint::kubernetes(&source, &options),
                    Kind::Swarm => lint::swarm(&source, &options),
                }
                .map_err(|LintError::Yaml(e)| format!("not valid YAML ({e}); pass a YAML file"))
            });
        match result {
            Ok(Lint {
                checked: n,
                findings: found,
            }) => {
                checked += n;
                findings += found.len();
                for finding in found {
                    println!("{}: {finding}", file.display());
                }
            }
            Err(problem) => {
                eprintln!("{command}: {}: {problem}", file.display());
                unreadable = true;
            }
        }
    }
    if unreadable {
        return ExitCode::from(2);
    }
    if checked == 0 {
        eprintln!("{command}: nothing to check: no file holds {what}; pass the file that does");
        return ExitCode::from(2);
    }
    if findings > 0 {
        eprintln!("{command}: {findings} finding(s) in {checked} workload(s)");
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}
