//! `dropless trial --target URL --during COMMAND`: load against any URL
//! while a command of yours deploys (say, `kubectl rollout restart … &&
//! kubectl rollout status …`), with the command's start and end as events.

use std::{path::Path, process::Stdio, time::Duration};

use tokio::{process::Command, time::Instant};
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
}

/// Time the command has to end after SIGTERM when the trial is stopped,
/// before SIGKILL.
pub const COMMAND_STOP_PATIENCE: Duration = Duration::from_secs(10);

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

    progress.phase("load");
    let run = dropless_load::start(&load).await?;
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
        // A process group of its own: stopping the trial stops what the
        // shell started too.
        let child = Command::new("sh")
            .arg("-c")
            .arg(&command)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(true)
            .spawn();
        let status = match child {
            Ok(mut child) => tokio::select! {
                status = child.wait() => status.map(Some),
                () = stop.cancelled() => {
                    stop_group(&mut child).await;
                    Ok(None)
                }
            },
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
            () = stop.cancelled(), if !interrupted => {
                interrupted = true;
                progress.phase("interrupted: stopping the load and the command");
                load_stopper.stop();
            }
        }
    };
    let load_ended = started.elapsed();
    if !script.is_finished() {
        progress.phase("the load ended: waiting for the command to end");
    }
    let record = match script.await {
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
