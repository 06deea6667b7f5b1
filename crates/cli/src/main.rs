//! `dropless`: the command line. Parsing and wiring only; every subcommand
//! calls into a library crate.

mod load;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Deploy a service without dropping a request, and prove it.
///
/// Exit codes: 0 success, 1 runtime error, 2 usage or configuration error,
/// 3 a threshold or verdict failed.
#[derive(Debug, Parser)]
#[command(name = "dropless", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version and the parts this build contains.
    Version,
    Load(Box<load::LoadArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("dropless {}", env!("CARGO_PKG_VERSION"));
            println!("parts: lifecycle (crate dropless-lifecycle), demo service (dropless-demo)");
            ExitCode::SUCCESS
        }
        Command::Load(args) => load::run(*args),
    }
}
