//! `dropless k8s manifest`: a Deployment and a Service with zero-downtime
//! settings; `dropless k8s lint`: the same rules checked on a user's files.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use dropless_trial::manifest::Manifest;

use crate::lint::{self, LintArgs};

/// `dropless k8s …`.
#[derive(Debug, Subcommand)]
pub enum K8sCommand {
    /// Print a Deployment and a Service with zero-downtime settings.
    Manifest(ManifestArgs),
    /// Check Deployment files for settings that drop requests during a
    /// rollout (exit 0 clean, 3 findings, 2 unreadable file).
    Lint(LintArgs),
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
pub fn run(command: K8sCommand) -> ExitCode {
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
        K8sCommand::Lint(args) => lint::run(lint::Kind::Kubernetes, args),
    }
}
