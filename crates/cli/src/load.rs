//! `dropless load`: arguments, wiring to `dropless-load`, progress, output
//! and exit codes.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use dropless_load::out::Output;
use dropless_load::{Config, Model, Report, Snapshot, Thresholds};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;

/// Exit codes, shown at the end of `dropless load --help`.
const EXIT_CODES: &str = "\
Exit codes:
  0  the run completed and every threshold held
  1  runtime error (the host does not resolve, the report cannot be written, ...)
  2  usage error: a bad URL, duration, header, status set, number or --json path (one line
     on stderr, nothing sent)
  3  a threshold (--max-failures, --max-p99) was breached, or no request succeeded and
     --max-failures was not given
  130  interrupted by Ctrl-C or SIGTERM (the partial report is still printed and written)

Failure classes: http_<code> (unexpected status), refused, reset, eof (closed before a complete
response), timeout, tls, other. Ctrl-C (or SIGTERM) stops scheduling and prints the partial
report (marked interrupted); a second one stops waiting for requests in flight.";

/// Send HTTP load at a constant rate and classify every outcome, second by second.
///
/// The open model (--rate) sends on schedule whatever the server does; the
/// closed model (--vus) runs concurrent loops for maximum throughput.
/// Latency is measured from each request's scheduled send instant (no
/// coordinated omission) and, separately, from the actual send (service time).
#[derive(Debug, Args)]
#[command(after_long_help = EXIT_CODES, after_help = EXIT_CODES)]
pub struct LoadArgs {
    /// Target URL, http:// or https://
    url: String,
    /// Open model: requests per second, sent on schedule whether or not
    /// earlier ones finished [default: 100 when --vus is not given]
    #[arg(long, value_name = "R", conflicts_with = "vus")]
    rate: Option<String>,
    /// Closed model: N concurrent loops sending back to back (maximum
    /// throughput)
    #[arg(long, value_name = "N")]
    vus: Option<String>,
    /// How long requests are started, e.g. 30s, 2m, 500ms
    #[arg(short, long, value_name = "D", default_value = "10s")]
    duration: String,
    /// Stop after N requests (sent or dropped), even before --duration
    #[arg(short = 'n', long, value_name = "N")]
    requests: Option<String>,
    /// Open model: most requests in flight; due requests beyond it are
    /// counted as dropped_iterations
    #[arg(long, value_name = "N", default_value = "10000")]
    max_in_flight: String,
    /// Open model: requests due within one window of D leave together, when
    /// the last of them is due, so up to D late (their latency from the
    /// schedule shows it); one wake-up per window costs less CPU than one
    /// per request. 0 sends every request at its own instant; at most 100ms
    #[arg(long, value_name = "D", default_value = "1ms")]
    batch: String,
    /// Most connections being opened at once (TCP and TLS handshakes); a
    /// request that needs a new one beyond it waits for a slot or for a
    /// connection given back. Raise it for a distant server that needs many
    /// handshakes in flight (--no-keepalive at a high rate)
    #[arg(long, value_name = "N", default_value = "256")]
    max_connecting: String,
    /// Most connections open at once [default: one per concurrent request;
    /// one with --http2]
    #[arg(short, long, value_name = "C")]
    connections: Option<String>,
    /// Open a new connection for every request (sends Connection: close)
    #[arg(long)]
    no_keepalive: bool,
    /// HTTP/2: h2c with prior knowledge for http://, ALPN h2 for https://
    #[arg(long, conflicts_with = "no_keepalive")]
    http2: bool,
    /// Accept any TLS certificate (self-signed, wrong host)
    #[arg(short = 'k', long)]
    insecure: bool,
    /// Request method
    #[arg(short = 'X', long, value_name = "METHOD", default_value = "GET")]
    method: String,
    /// Request header 'Name: value' (repeatable)
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    headers: Vec<String>,
    /// Request body
    #[arg(long, value_name = "TEXT", conflicts_with = "body_file")]
    body: Option<String>,
    /// Request body read from a file
    #[arg(long, value_name = "FILE")]
    body_file: Option<PathBuf>,
    /// Statuses that count as ok: codes and ranges, e.g. 200-399 or 200,204
    #[arg(long, value_name = "SET", default_value = dropless_load::DEFAULT_EXPECT_STATUS)]
    expect_status: String,
    /// A response body must contain SUBSTRING to count as ok (else: other)
    #[arg(long, value_name = "SUBSTRING")]
    expect_body: Option<String>,
    /// Per-request timeout, connect included
    #[arg(long, value_name = "D", default_value = "10s")]
    timeout: String,
    /// At the end, how long requests in flight are awaited before they count
    /// as timeouts
    #[arg(long, value_name = "D", default_value = "5s")]
    grace: String,
    /// Retry once a request whose reused keep-alive connection was closed
    /// before any response byte, as browsers do (counted in retries)
    #[arg(long)]
    retry_reused: bool,
    /// Sessions mode: N clients, each with its own key, play moves (POST
    /// URL/game/{id}/move, round robin at --rate) and check that every move
    /// number is the previous plus one: resets, lost updates, duplicates
    #[arg(long, value_name = "N")]
    sessions: Option<String>,
    /// With --sessions: each client also follows its session's WebSocket
    /// (URL/game/{id}/ws), reconnects when it is closed, and counts gaps
    #[arg(long, requires = "sessions")]
    websocket: bool,
    /// Write the JSON report to FILE ('-' for stdout; the summary then goes
    /// to stderr)
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Stream one point per second while the run goes on: to InfluxDB 1.x
    /// (influxdb=http://HOST:PORT[/DB], database default "dropless", created
    /// if missing) or to a CSV file (csv=FILE); repeatable
    #[arg(long, value_name = "KIND=WHERE")]
    out: Vec<String>,
    /// Threads that send requests, each with its own event loop [default:
    /// the number of CPUs]
    #[arg(long, value_name = "N")]
    threads: Option<String>,
    /// No live progress (it is also hidden when stdout is not a terminal)
    #[arg(short, long)]
    quiet: bool,
    /// Threshold: exit 3 when more than N requests failed
    #[arg(long, value_name = "N")]
    max_failures: Option<String>,
    /// Threshold: exit 3 when the p99 time to last byte exceeds D
    #[arg(long, value_name = "D")]
    max_p99: Option<String>,
}

use crate::interrupt::INTERRUPTED;

/// A usage error: one line on stderr, exit code 2.
struct Usage(String);

/// Run `dropless load`.
pub fn run(args: LoadArgs) -> ExitCode {
    let (config, thresholds, threads) = match args.config() {
        Ok(parsed) => parsed,
        Err(Usage(message)) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    // The requests run on dedicated threads; this one schedules and reports.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let workers = dropless_load::Workers::dedicated(threads);
    let (runtime, workers) = match (runtime, workers) {
        (Ok(runtime), Ok(workers)) => (runtime, workers),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: cannot start the runtime threads: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(&args, &config, &workers)) {
        Ok(report) if report.interrupted => ExitCode::from(INTERRUPTED),
        Ok(report) => match thresholds.breaches(&report).as_slice() {
            [] => ExitCode::SUCCESS,
            breaches => {
                for breach in breaches {
                    eprintln!("threshold breached: {breach}");
                }
                ExitCode::from(3)
            }
        },
        Err(Failed::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failed::Runtime(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum Failed {
    Usage(String),
    Runtime(anyhow::Error),
}

async fn execute(
    args: &LoadArgs,
    config: &Config,
    workers: &dropless_load::Workers,
) -> Result<Report, Failed> {
    let outputs = args
        .out
        .iter()
        .map(|o| o.parse::<Output>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failed::Usage(e.to_string()))?;
    let run = dropless_load::start_on(config, workers)
        .await
        .map_err(|e| match e {
            dropless_load::Error::Config(e) => Failed::Usage(e.to_string()),
            e => Failed::Runtime(e.into()),
        })?;
    let streaming = (!outputs.is_empty()).then(|| {
        let target = config.url.clone();
        tokio::spawn(dropless_load::out::stream(outputs, target, run.subscribe()))
    });
    tokio::spawn(stop_on_signals(run.stopper()));
    let show = !args.quiet && std::io::stdout().is_terminal();
    let progress = tokio::spawn(progress(run.subscribe(), config.duration, show));
    let report = run.report().await.map_err(|e| Failed::Runtime(e.into()))?;
    let _ = progress.await;
    if let Some(streaming) = streaming {
        match streaming.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("dropless load: {e}"),
            Err(e) => eprintln!("dropless load: the --out task failed: {e}"),
        }
    }
    let to_stdout = args.json.as_deref() == Some("-".as_ref());
    if to_stdout {
        eprint!("{}", report.summary());
        println!("{}", report.to_json());
    } else {
        print!("{}", report.summary());
    }
    if let Some(path) = args.json.as_ref().filter(|_| !to_stdout) {
        std::fs::write(path, report.to_json() + "\n")
            .with_context(|| format!("cannot write the JSON report to {}", path.display()))
            .map_err(Failed::Runtime)?;
    }
    Ok(report)
}

/// First Ctrl-C or SIGTERM: stop scheduling, keep the grace; second: give up
/// on the requests in flight.
async fn stop_on_signals(stopper: dropless_load::Stopper) {
    let Some(mut interrupts) = crate::interrupt::Interrupts::catch() else {
        return;
    };
    interrupts.next().await;
    stopper.stop();
    interrupts.next().await;
    stopper.abandon();
}

/// Live progress from the run's snapshots: elapsed/total, rate, ok, failed.
async fn progress(mut snapshots: watch::Receiver<Snapshot>, duration: Duration, show: bool) {
    let bar = ProgressBar::with_draw_target(
        Some(duration.as_secs().max(1)),
        if show {
            ProgressDrawTarget::stdout()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    let style = ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len}s  {msg}")
        .expect("a valid template")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    while snapshots.changed().await.is_ok() {
        let s = snapshots.borrow_and_update().clone();
        if s.done {
            break;
        }
        let rate = s.requests.total as f64 / s.elapsed_s.max(0.001);
        bar.set_position(s.elapsed_s as u64);
        let mut message = format!(
            "{rate:.0} req/s  ok {}  failed {}  in flight {}",
            s.requests.ok, s.requests.failed, s.in_flight
        );
        if let Some(sessions) = &s.sessions {
            message.push_str(&format!(
                "  sessions: resets {} lost {} dup {} gaps {} reconnects {}",
                sessions.resets,
                sessions.lost_updates,
                sessions.duplicates,
                sessions.gaps,
                sessions.reconnects
            ));
        }
        bar.set_message(message);
    }
    bar.finish_and_clear();
}

impl LoadArgs {
    /// Every argument checked and converted; the first bad one is reported.
    fn config(&self) -> Result<(Config, Thresholds, usize), Usage> {
        let mut config = Config::new(self.url.clone());
        config.model = match (&self.rate, &self.vus) {
            (_, Some(vus)) => Model::Closed {
                vus: number("--vus", vus)?,
            },
            (Some(rate), None) => Model::Open {
                rate: number("--rate", rate)?,
            },
            (None, None) => Model::Open {
                rate: dropless_load::DEFAULT_RATE,
            },
        };
        config.duration = duration("--duration", &self.duration)?;
        config.requests = self
            .requests
            .as_deref()
            .map(|n| number("--requests", n))
            .transpose()?;
        config.max_in_flight = number("--max-in-flight", &self.max_in_flight)?;
        config.batch = duration("--batch", &self.batch)?;
        config.max_connecting = number("--max-connecting", &self.max_connecting)?;
        config.connections = self
            .connections
            .as_deref()
            .map(|n| number("--connections", n))
            .transpose()?;
        config.keepalive = !self.no_keepalive;
        config.http2 = self.http2;
        config.insecure = self.insecure;
        config.method = self.method.clone();
        config.headers = self
            .headers
            .iter()
            .map(|h| match h.split_once(':') {
                Some((name, value)) => Ok((name.trim().to_owned(), value.trim().to_owned())),
                None => Err(Usage(format!(
                    "invalid header '{h}': expected 'Name: value'"
                ))),
            })
            .collect::<Result<_, _>>()?;
        if let Some(body) = &self.body {
            config.body = body.clone().into();
        }
        if let Some(path) = &self.body_file {
            let body = std::fs::read(path)
                .map_err(|e| Usage(format!("cannot read --body-file {}: {e}", path.display())))?;
            config.body = body.into();
        }
        config.expect_status = self.expect_status.clone();
        config.expect_body = self.expect_body.clone();
        config.timeout = duration("--timeout", &self.timeout)?;
        config.grace = duration("--grace", &self.grace)?;
        config.retry_reused = self.retry_reused;
        config.sessions = self
            .sessions
            .as_deref()
            .map(|n| number("--sessions", n))
            .transpose()?;
        config.websocket = self.websocket;
        let thresholds = Thresholds {
            max_failures: self
                .max_failures
                .as_deref()
                .map(|n| number("--max-failures", n))
                .transpose()?,
            max_p99: self
                .max_p99
                .as_deref()
                .map(|d| duration("--max-p99", d))
                .transpose()?,
        };
        if let Some(path) = &self.json {
            writable(path)?;
        }
        let threads = match &self.threads {
            Some(n) => number("--threads", n)?,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if threads == 0 {
            return Err(Usage("invalid --threads '0': expected at least 1".into()));
        }
        Ok((config, thresholds, threads))
    }
}

/// Whether the report can be written to `path` ('-' is stdout), checked
/// before anything is sent so that a long run does not end in a lost report.
/// An existing file is left as it is; a new one is created and removed.
fn writable(path: &Path) -> Result<(), Usage> {
    if path == Path::new("-") {
        return Ok(());
    }
    let shown = path.display();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(Usage(format!(
            "cannot write --json {shown}: the directory {} does not exist; create it or pick another path",
            dir.display()
        )));
    }
    if path.is_dir() {
        return Err(Usage(format!(
            "cannot write --json {shown}: it is a directory; give a file name"
        )));
    }
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| {
            Usage(format!(
                "cannot write --json {shown}: {e}; pick a writable path"
            ))
        })?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

fn duration(flag: &str, value: &str) -> Result<Duration, Usage> {
    crate::value::duration(value).map_err(|e| Usage(format!("invalid {flag} '{value}': {e}")))
}

fn number<N: std::str::FromStr>(flag: &str, value: &str) -> Result<N, Usage> {
    value
        .trim()
        .parse()
        .map_err(|_| Usage(format!("invalid {flag} '{value}': expected a number")))
}
