//! `dropless upgrade`: the running `serve` replaces its own binary without
//! dropping a request or restarting a replica (docs/runtime.md, "Upgrading
//! the runtime").

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use dropless_runtime::control::{ControlClient, ControlError};

/// Replace the running `serve` with a new binary (also SIGUSR2 to serve):
/// the new process takes the sockets and adopts the replicas, the old one
/// finishes its requests and exits. Exit 1 when the new binary fails
/// (the old one keeps serving).
#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// The new binary [default: the path `serve` was started from, read
    /// again from disk].
    #[arg(long)]
    binary: Option<PathBuf>,
    #[command(flatten)]
    control: crate::control::Control,
}

/// Runs `dropless upgrade`.
pub fn run(args: UpgradeArgs) -> ExitCode {
    if let Some(binary) = &args.binary
        && !binary.is_file()
    {
        eprintln!(
            "dropless upgrade: --binary {} is not a file: give the path of the new dropless binary",
            binary.display()
        );
        return ExitCode::from(2);
    }
    let binary = args.binary.map(|b| std::path::absolute(&b).unwrap_or(b));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let upgraded = runtime.block_on(async move {
        ControlClient::for_target(&args.control.control)?
            .upgrade(binary)
            .await
    });
    match upgraded {
        Ok(done) => {
            println!(
                "upgraded: pid {} ({}) serves, pid {} finishes its requests and exits",
                done.new_pid,
                done.binary.display(),
                done.old_pid
            );
            ExitCode::SUCCESS
        }
        // No runtime at the socket given: the flags are wrong.
        Err(e @ (ControlError::Connect { .. } | ControlError::Token { .. })) => {
            eprintln!("dropless upgrade: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("dropless upgrade: {e}; the running serve goes on");
            ExitCode::from(1)
        }
    }
}
