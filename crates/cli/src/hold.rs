//! `dropless pause` / `resume` and `dropless maintenance on|off`: hold the
//! proxy's traffic through the control API (see docs/operations.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use dropless_runtime::control::ControlClient;
use dropless_runtime::ops::hold::{DEFAULT_MAINTENANCE_MESSAGE, HoldCommand, MaintenancePage};

use crate::control::{Control, block_on};

/// `dropless pause`.
#[derive(Debug, Args)]
pub struct PauseArgs {
    #[command(flatten)]
    control: Control,
    /// Longest a request waits; then it gets 503 with Retry-After, e.g. 30s
    /// (the runtime's DEFAULT_PAUSE_TIMEOUT).
    #[arg(long, value_parser = crate::value::duration, default_value = "30s")]
    timeout: Duration,
    /// On resume, the held requests are released over this long, e.g. 1s
    /// (0s releases them all at once).
    #[arg(long, value_parser = crate::value::duration, default_value = "1s")]
    spread: Duration,
}

/// `dropless resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    control: Control,
}

/// `dropless maintenance`.
#[derive(Debug, Subcommand)]
pub enum MaintenanceCommand {
    /// Answer every request with 503, a page and Retry-After; probes and
    /// rollouts go on.
    On(MaintenanceOnArgs),
    /// Let requests through again.
    Off(ResumeArgs),
}

/// `dropless maintenance on`.
#[derive(Debug, Args)]
pub struct MaintenanceOnArgs {
    #[command(flatten)]
    control: Control,
    /// The page's text (text/plain).
    #[arg(long, conflicts_with = "page")]
    message: Option<String>,
    /// An HTML file to serve as the page (text/html), read now.
    #[arg(long)]
    page: Option<PathBuf>,
}

/// Runs `dropless pause`.
pub fn pause(args: PauseArgs) -> ExitCode {
    let (timeout, spread) = (args.timeout, args.spread);
    send(
        args.control,
        HoldCommand::Pause { timeout, spread },
        move || {
            format!(
                "paused: new requests wait (up to {}, then 503); `dropless resume` releases them over {}",
                humantime::format_duration(timeout),
                humantime::format_duration(spread)
            )
        },
    )
}

/// Runs `dropless resume`.
pub fn resume(args: ResumeArgs) -> ExitCode {
    send(args.control, HoldCommand::Resume, || "resumed".into())
}

/// Runs `dropless maintenance on|off`.
pub fn maintenance(command: MaintenanceCommand) -> ExitCode {
    match command {
        MaintenanceCommand::On(args) => {
            let page = match (args.message, args.page) {
                (_, Some(path)) => match std::fs::read_to_string(&path) {
                    Ok(body) => MaintenancePage {
                        body,
                        content_type: "text/html; charset=utf-8".into(),
                    },
                    Err(e) => {
                        eprintln!("dropless: cannot read --page {}: {e}", path.display());
                        return ExitCode::from(2);
                    }
                },
                (message, None) => MaintenancePage {
                    body: message.map_or_else(|| DEFAULT_MAINTENANCE_MESSAGE.into(), |m| m + "\n"),
                    content_type: "text/plain; charset=utf-8".into(),
                },
            };
            send(args.control, HoldCommand::MaintenanceOn { page }, || {
                "maintenance on: every request gets 503 with the page; `dropless maintenance off` ends it".into()
            })
        }
        MaintenanceCommand::Off(args) => send(args.control, HoldCommand::MaintenanceOff, || {
            "maintenance off".into()
        }),
    }
}

/// Sends `command`; prints `done` once the runtime applied it.
fn send(control: Control, command: HoldCommand, done: impl FnOnce() -> String) -> ExitCode {
    block_on(async move {
        ControlClient::for_target(&control.control)?
            .hold(command)
            .await
            .map(|_| println!("{}", done()))
    })
}
