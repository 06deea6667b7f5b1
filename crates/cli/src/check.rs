//! `dropless check`: arguments and output; the work is in `dropless-check`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use dropless_check::{
    Config, DEFAULT_IDLE_CONNECTIONS, DEFAULT_PATH, DEFAULT_RATE, EXIT_NOT_STARTED,
};

/// Arguments of `dropless check`.
#[derive(Debug, Args)]
#[command(
    after_help = "Checks: 1 readiness turns 503 before the listener closes (pre-stop), 2 new \
connections accepted until / refused after, 3 requests in flight at SIGTERM completed or cut, \
4 idle keep-alive connections closed cleanly and a request sent on one after SIGTERM, 5 \
Connection: close on busy keep-alive connections, 6 h2 GOAWAY and open streams, 7 exit (time, \
code, killed after the grace), 8 startup (time to listen, to ready). Times are in ms from \
SIGTERM. See docs/check.md.\n\nExit codes: 0 every applicable check passes, 3 one fails or saw \
something unexpected, 2 bad usage, 1 the program could not be started or never became ready.",
    override_usage = "dropless check [OPTIONS] -- CMD [ARGS]..."
)]
pub struct CheckArgs {
    /// Path the traffic requests.
    #[arg(long, default_value = DEFAULT_PATH)]
    path: String,
    /// The program's readiness path (e.g. /healthz): waited for at start,
    /// and watched for its 503 after SIGTERM.
    #[arg(long)]
    health_path: Option<String>,
    /// Requests per second, shared by the new-connection, keep-alive and
    /// h2c clients.
    #[arg(long, default_value_t = DEFAULT_RATE)]
    rate: f64,
    /// Time from SIGTERM to SIGKILL (e.g. 30s, 5s; Kubernetes' default is
    /// 30s).
    #[arg(long, value_parser = crate::value::duration, default_value = "30s")]
    grace: Duration,
    /// Traffic before SIGTERM.
    #[arg(long, value_parser = crate::value::duration, default_value = "2s")]
    warmup: Duration,
    /// Longest wait for the program to listen on PORT and be ready.
    #[arg(long, value_parser = crate::value::duration, default_value = "60s")]
    startup_timeout: Duration,
    /// Idle keep-alive connections held open across SIGTERM.
    #[arg(long, default_value_t = DEFAULT_IDLE_CONNECTIONS)]
    idle_connections: usize,
    /// Write the result as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the result as a self-contained HTML page to this file.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// The program and its arguments; it gets PORT (and DROPLESS_REPLICA)
    /// and must listen on 127.0.0.1:$PORT. For the port in its arguments:
    /// sh -c 'exec server --port $PORT'.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Runs the check and prints its lines.
pub fn run(args: CheckArgs) -> ExitCode {
    let config = Config {
        command: args.command,
        path: args.path,
        health_path: args.health_path,
        rate: args.rate,
        grace: args.grace,
        warmup: args.warmup,
        startup_timeout: args.startup_timeout,
        idle_connections: args.idle_connections,
    };
    let runtime = tokio::runtime::Runtime::new().expect("the async runtime starts");
    let report = match runtime.block_on(dropless_check::run(&config)) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("dropless check: {error}");
            for line in error.program_log() {
                eprintln!("  | {line}");
            }
            return ExitCode::from(error.exit_code());
        }
    };
    print!("{}", report.text());
    let mut code = report.exit_code();
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).expect("the report serializes");
        if let Err(e) = std::fs::write(path, json + "\n") {
            eprintln!("dropless check: cannot write {}: {e}", path.display());
            code = EXIT_NOT_STARTED;
        }
    }
    if let Some(path) = &args.html
        && let Err(e) = std::fs::write(path, dropless_check::html::render(&report))
    {
        eprintln!("dropless check: cannot write {}: {e}", path.display());
        code = EXIT_NOT_STARTED;
    }
    ExitCode::from(code)
}
