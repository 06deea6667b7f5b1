//! `dropless trial --target URL --during COMMAND`: load against any URL
//! while a command of yours deploys (say, `kubectl rollout restart … &&
//! kubectl rollout status …`), with the command's start and end as events.

use std::{path::Path, process::Stdio, time::Duration};

use tokio::{process::Command, sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    report::{EventRecord, Outcome, TrialReport},
    run::{Progress, TrialError, write_reports},
    scenario::{ClientMode, Expect},
};

/// Default load before the command starts, so the report shows a baseline.
pub const DEFAULT_LEAD_IN: Duration = Duration::from_secs(2);
/// Default load after the command ends, so late failures are seen.
pub const DEFAULT_TAIL: Duration = Duration::from_secs(5);
/// Longest run when no duration is given.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);

/// A load against a URL during a command.
#[derive(Debug, Clone)]
pub struct During {
    /// The URL loaded.
    pub url: String,
    /// The command, run with `sh -c`.
    pub command: String,
    /// Requests per second.
    pub rate: f64,
    /// Fixed length of the load (a command that has not ended by then
    /// fails the verdict: the load did not cover it); default: until the
    /// command has ended and `tail` has passed.
    pub duration: Option<Duration>,
    /// Load before the command starts. Default [`DEFAULT_LEAD_IN`].
    pub lead_in: Duration,
    /// Load after the command ends. Default [`DEFAULT_TAIL`].
    pub tail: Duration,
    /// Client mode.
    pub client: ClientMode,
    /// Where the load's points also go, one per second (`--load-out`).
    pub load_out: Vec<dropless_load::out::Output>,
}

/// Time the command has to end after SIGTERM when the trial is stopped,
/// before SIGKILL.
pub const COMMAND_STOP_PATIENCE: Duration = Duration::from_secs(10);

/// Time the command's output still has to reach the log after it exited.
const RELAY_TAIL: Duration = Duration::from_secs(1);

/// Runs the load and the command; writes the reports into `out`.
///
/// When `stop` is cancelled (Ctrl-C, SIGTERM) the load stops, the command
/// (its whole process group) gets SIGTERM and is waited for, and the
/// partial reports are written, marked `interrupted`.
pub async fn run(
    during: &During,
    out: &Path,
    progress: &dyn Progress,
    stop: &CancellationToken,
) -> Result<TrialReport, TrialError> {
    std::fs::create_dir_all(out)
        .map_err(crate::run::io(format!("cannot create {}", out.display())))?;
    let load = crate::run::load_config(
        during.url.clone(),
        during.rate,
        during.duration.unwrap_or(MAX_DURATION),
        during.client,
    );
    let log_path = out.join("command.log");
    let log = std::fs::File::create(&log_path).map_err(crate::run::io(format!(
        "cannot create {}",
        log_path.display()
    )))?;
    let log_err = log
        .try_clone()
        .map_err(crate::run::io("cannot share the command log"))?;
    let (said_tx, mut said) = mpsc::unbounded_channel();

    progress.phase("load");
    let run = dropless_load::start(&load).await?;
    let streaming = crate::run::stream_load(&during.load_out, &load.url, &run);
    progress.load_started(load.duration);
    let started = Instant::now();
    let stopper = run.stopper();
    let load_stopper = run.stopper();
    let mut snapshots = run.subscribe();
    let command = during.command.clone();
    let (lead_in, tail, fixed) = (during.lead_in, during.tail, during.duration.is_some());
    let script_stop = stop.clone();
    let script = tokio::spawn(async move {
        let stop = script_stop;
        let record = |began: Duration, outcome, detail| EventRecord {
            action: "command".into(),
            index: None,
            at_s: lead_in.as_secs_f64(),
            started_s: began.as_secs_f64(),
            ended_s: started.elapsed().as_secs_f64(),
            outcome,
            expect: Expect::Completed,
            detail: Some(detail),
        };
        tokio::select! {
            () = tokio::time::sleep(lead_in) => {}
            () = stop.cancelled() => {
                return record(
                    started.elapsed(),
                    Outcome::Failed,
                    format!("`{command}`: interrupted before it started"),
                );
            }
        }
        let began = started.elapsed();
        let _ = said_tx.send(Said::Started);
        // A process group of its own: stopping the trial stops what the
        // shell started too.
        let child = Command::new("sh")
            .arg("-c")
            .arg(&command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn();
        let status = match child {
            Ok(mut child) => {
                let relays = [
                    child
                        .stdout
                        .take()
                        .map(|out| tokio::spawn(relay(out, log, said_tx.clone()))),
                    child
                        .stderr
                        .take()
                        .map(|err| tokio::spawn(relay(err, log_err, said_tx))),
                ];
                let status = tokio::select! {
                status = child.wait() => status.map(Some),
                    () = stop.cancelled() => {
                        stop_group(&mut child).await;
                        Ok(None)
                    }
                };
                // Its last lines, unless what it left running keeps the
                // pipes open.
                let _ = tokio::time::timeout(RELAY_TAIL, async {
                    for relay in relays.into_iter().flatten() {
                        let _ = relay.await;
                    }
                })
                .await;
                status
            }
            Err(error) => Err(error),
        };
        let (outcome, detail) = match status {
            Ok(Some(status)) if status.success() => (Outcome::Ok, format!("`{command}`")),
            Ok(Some(status)) => (Outcome::Failed, format!("`{command}` exited with {status}")),
            Ok(None) => (Outcome::Failed, format!("`{command}`: interrupted")),
            Err(error) => (
                Outcome::Failed,
                format!("`{command}`: cannot run sh -c: {error}"),
            ),
        };
        let ended = record(began, outcome, detail);
        if !fixed {
            tokio::select! {
                () = tokio::time::sleep(tail) => stopper.finish(),
                () = stop.cancelled() => {}
            }
        }
        ended
    });
    let report = run.report();
    tokio::pin!(report);
    let mut interrupted = false;
    let report = loop {
        tokio::select! {
            report = &mut report => break report?,
            Ok(()) = snapshots.changed() => progress.second(&snapshots.borrow_and_update()),
            Some(said) = said.recv() => tell(said, progress),
            () = stop.cancelled(), if !interrupted => {
                interrupted = true;
                progress.phase("interrupted: stopping the load and the command");
                load_stopper.stop();
            }
        }
    };
    crate::run::end_stream(streaming).await;
    let load_ended = started.elapsed();
    if !script.is_finished() {
        progress.phase("the load ended: waiting for the command to end");
    }
    tokio::pin!(script);
    let ended = loop {
        tokio::select! {
            ended = &mut script => break ended,
            Some(said) = said.recv() => tell(said, progress),
        }
    };
    while let Ok(said) = said.try_recv() {
        tell(said, progress);
    }
    let record = match ended {
        Ok(record) => record,
        Err(error) => EventRecord {
            action: "command".into(),
            index: None,
            at_s: during.lead_in.as_secs_f64(),
            started_s: during.lead_in.as_secs_f64(),
            ended_s: started.elapsed().as_secs_f64(),
            outcome: Outcome::Failed,
            expect: Expect::Completed,
            detail: Some(format!("the command task failed: {error}")),
        },
    };
    progress.event(&record);
    let uncovered = record.ended_s > load_ended.as_secs_f64();
    let mut report = TrialReport::new(
        format!("{} during `{}`", during.url, during.command),
        during.url.clone(),
        "external".into(),
        report,
        vec![record],
        None,
    );
    if stop.is_cancelled() && !report.load.interrupted {
        report.load.interrupted = true;
        report.fail(crate::report::INTERRUPTED.into());
    }
    // A deploy the load did not cover to its end was not proven.
    if uncovered && !stop.is_cancelled() {
        report.fail(format!(
            "the load ended before the command: the load ran {:.1} s, the command ended at {:.1} s; give a longer --duration or leave it out (the load then lasts until {} s after the command)",
            load_ended.as_secs_f64(),
            report.events[0].ended_s,
            during.tail.as_secs()
        ));
    }
    write_reports(&report, out)?;
    Ok(report)
}

/// SIGTERM to the command's process group; SIGKILL to it after
/// [`COMMAND_STOP_PATIENCE`].
async fn stop_group(child: &mut tokio::process::Child) {
    use nix::{sys::signal::Signal, unistd::Pid};
    let Some(pid) = child.id() else { return };
    let group = Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::killpg(group, Signal::SIGTERM);
    if tokio::time::timeout(COMMAND_STOP_PATIENCE, child.wait())
        .await
        .is_err()
    {
        let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
        let _ = child.wait().await;
    }
}

/// What the command's task tells the trial.
enum Said {
    /// The command started.
    Started,
    /// A line of its output.
    Line(String),
}

/// Tells `progress` what the command's task said.
fn tell(said: Said, progress: &dyn Progress) {
    match said {
        Said::Started => progress.event_started("command"),
        Said::Line(line) => progress.command_output(&line),
    }
}

/// Copies the command's output into its log and, line by line, to the
/// trial's progress.
async fn relay(
    output: impl tokio::io::AsyncRead + Unpin,
    log: std::fs::File,
    said: mpsc::UnboundedSender<Said>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut log = tokio::fs::File::from_std(log);
    let mut output = tokio::io::BufReader::new(output);
    let mut line = Vec::new();
    // Bytes as they come into the log; lines, even invalid UTF-8, told.
    while output
        .read_until(b'\n', &mut line)
        .await
        .is_ok_and(|n| n > 0)
    {
        let _ = log.write_all(&line).await;
        let text = String::from_utf8_lossy(&line);
        let _ = said.send(Said::Line(text.trim_end_matches(['\n', '\r']).to_owned()));
        line.clear();
    }
    let _ = log.flush().await;
}
