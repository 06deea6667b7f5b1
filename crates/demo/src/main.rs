//! `dropless-demo`: parses the flags and runs the service.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    dropless_demo::main(dropless_demo::Args::parse(), "dropless-demo")
}
