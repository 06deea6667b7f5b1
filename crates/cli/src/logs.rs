//! `dropless logs`: the replicas' output from their log files
//! (`STATE_DIR/logs`), interleaved by time, each line with its replica;
//! replicas that already exited in the run included.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Args;
use dropless_runtime::supervisor::logs::reader::{Filter, Logs};

/// How often `--follow` looks for new lines (as `tail -f` does).
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// `dropless logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// State directory of `dropless serve` [default: .dropless].
    #[arg(long, default_value = ".dropless")]
    state_dir: PathBuf,
    /// Only the replicas of this service.
    #[arg(long)]
    service: Option<String>,
    /// Only this replica, e.g. web-3.
    #[arg(long)]
    replica: Option<String>,
    /// Only lines of this recent past, e.g. 10m.
    #[arg(long, value_parser = crate::value::duration)]
    since: Option<Duration>,
    /// Keep printing new lines as the replicas write them (Ctrl-C ends).
    #[arg(long, short)]
    follow: bool,
}

/// Runs `dropless logs`: the latest run's lines; exit 2 when the state
/// directory has no replica log.
pub fn run(args: LogsArgs) -> ExitCode {
    let dir = args.state_dir.join("logs");
    let filter = Filter {
        service: args.service,
        replica: args.replica,
        since: args.since.map(|d| SystemTime::now() - d),
    };
    let mut logs = match Logs::open(&dir, None, filter) {
        Ok(Some(logs)) => logs,
        Ok(None) => {
            eprintln!(
                "dropless logs: no replica log in {}: pass the --state-dir of `dropless serve`",
                dir.display()
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("dropless logs: cannot read {}: {e}", dir.display());
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    loop {
        let lines = match logs.next_lines() {
            Ok(lines) => lines,
            Err(e) => {
                eprintln!("dropless logs: cannot read {}: {e}", dir.display());
                return ExitCode::from(1);
            }
        };
        for l in lines {
            let at = humantime::format_rfc3339_millis(l.at);
            // The reader went away (`| head`): done, quietly.
            if writeln!(out, "{at} {} | {}", l.replica, l.text).is_err() {
                return ExitCode::SUCCESS;
            }
        }
        if !args.follow || out.flush().is_err() {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}
