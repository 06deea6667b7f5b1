//! `dropless swarm`: a stack file with zero-downtime settings, and a linter
//! for the user's own.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use dropless_orchestrator::stack::{self, Stack};

use crate::lint::{self, LintArgs};

/// `dropless swarm …`.
#[derive(Debug, Subcommand)]
pub enum SwarmCommand {
    /// Print a stack file (compose v3.8): the app rolling start-first behind
    /// a health check, dropless in front finding its tasks in DNS.
    Stack(StackArgs),
    /// Check stack files for settings that drop requests during an update
    /// (exit 0 clean, 3 findings, 2 unreadable file).
    Lint(LintArgs),
}

/// Arguments of `dropless swarm stack`.
#[derive(Debug, Args)]
pub struct StackArgs {
    /// Name of the app service and its network (the front is NAME-front).
    #[arg(long)]
    name: String,
    /// The app's image.
    #[arg(long)]
    image: String,
    /// App replicas.
    #[arg(long, default_value_t = stack::DEFAULT_REPLICAS)]
    replicas: u32,
    /// The port the app listens on (also passed as env PORT).
    #[arg(long, default_value_t = stack::DEFAULT_PORT)]
    port: u16,
    /// The front's image: one holding the dropless binary.
    #[arg(long, default_value = stack::DEFAULT_FRONT_IMAGE)]
    front_image: String,
    /// The port the front publishes on every node.
    #[arg(long, default_value_t = stack::DEFAULT_PUBLISH)]
    publish: u16,
}

/// Runs `dropless swarm`.
pub fn run(command: SwarmCommand) -> ExitCode {
    match command {
        SwarmCommand::Stack(args) => {
            let stack = Stack {
                name: args.name,
                image: args.image,
                replicas: args.replicas,
                port: args.port,
                front_image: args.front_image,
                publish: args.publish,
            };
            match stack.render() {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("dropless swarm stack: {error}");
                    ExitCode::from(2)
                }
            }
        }
        SwarmCommand::Lint(args) => lint::run(lint::Kind::Swarm, args),
    }
}
