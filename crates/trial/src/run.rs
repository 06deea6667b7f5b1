//! Running one scenario: a private `dropless serve`, the load in process,
//! the events over the control socket, then the audit and the reports.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use dropless_load::out::{OutError, Output};
use dropless_load::{Model, Snapshot};
use dropless_runtime::control::ControlClient;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

pub use crate::serve_child::{READY_TIMEOUT, SERVE_STOP_MARGIN};
use crate::{
    audit::AuditReport,
    html,
    report::{EventRecord, TrialReport},
    runtime_config::{Release, runtime_config},
    scenario::{ClientMode, Load, Scenario},
    script::{Step, failed_record, run_events},
    serve_child::{start_serve, stop_current_serve, stop_serve, wait_ready},
    sink::Sink,
};

/// Time the events may still run after the load ended before they count as
/// failed.
pub const EVENTS_TAIL: Duration = Duration::from_secs(60);

/// What the trial needs from its host: the programs it starts.
#[derive(Debug, Clone)]
pub struct Env {
    /// The `dropless` binary (`serve` is started from it).
    pub dropless: PathBuf,
    /// The command that starts the built-in demo service, e.g.
    /// `[dropless, "demo-service"]`; its flags are appended.
    pub demo: Vec<String>,
    /// Where the load's points also go, one per second (`--load-out`).
    pub load_out: Vec<Output>,
}

/// Told what happens while a trial runs (a progress bar, a log).
pub trait Progress: Send + Sync {
    /// A phase starts: `"starting 3 replicas"`, `"load"`, `"audit"`.
    fn phase(&self, _text: &str) {}
    /// The load started and runs this long.
    fn load_started(&self, _duration: Duration) {}
    /// One more second of load.
    fn second(&self, _snapshot: &Snapshot) {}
    /// An event started: its name (`event[0] restart`, `command`).
    fn event_started(&self, _name: &str) {}
    /// An event ended.
    fn event(&self, _record: &EventRecord) {}
    /// A line the `--during` command wrote (stdout or stderr).
    fn command_output(&self, _line: &str) {}
}

/// Progress that nobody watches.
#[derive(Debug, Default)]
pub struct Quiet;

impl Progress for Quiet {}

/// Why a trial could not run to a verdict.
#[derive(Debug, thiserror::Error)]
pub enum TrialError {
    /// Preparing or writing files failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `dropless serve` did not come up.
    #[error("dropless serve: {0}")]
    Serve(String),
    /// The load could not run.
    #[error("load: {0}")]
    Load(#[from] dropless_load::Error),
    /// The private InfluxDB could not start.
    #[error(transparent)]
    Influxd(#[from] crate::influxd::InfluxdError),
    /// Stopped (Ctrl-C, SIGTERM) before the load started: there is no
    /// report.
    #[error("interrupted before the load started")]
    Interrupted,
}

/// Maps an I/O error to [`TrialError::Io`] saying what was being done.
pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TrialError {
    let what = what.into();
    move |source| TrialError::Io { what, source }
}

/// Runs `scenario`, writes `report.json` and `report.html` into `out`, and
/// returns the report.
///
/// When `stop` is cancelled (the CLI does so on Ctrl-C or SIGTERM) the load
/// stops, the events are abandoned, `dropless serve` is stopped (it retires
/// its replicas), the audit is skipped, and the partial reports are written,
/// marked `interrupted`; before the load started the trial ends with
/// [`TrialError::Interrupted`]. Temporary directories are removed either
/// way.
pub async fn run(
    scenario: &Scenario,
    out: &Path,
    env: &Env,
    progress: &dyn Progress,
    stop: &CancellationToken,
) -> Result<TrialReport, TrialError> {
    std::fs::create_dir_all(out).map_err(io(format!("cannot create {}", out.display())))?;
    let sink = Sink::prepare(scenario, out)?;
    // Unix socket paths are short (108 bytes): keep the runtime's own files
    // in a short temporary directory, its log in `out`.
    let state = tempfile::Builder::new()
        .prefix("dropless-trial-")
        .tempdir()
        .map_err(io("cannot create a temporary directory"))?;
    let release = Release {
        scenario: scenario.clone(),
        env: env.clone(),
        sink_flags: sink
            .as_ref()
            .map(|s| s.demo_flags.clone())
            .unwrap_or_default(),
    };
    let config = runtime_config(scenario, &release, state.path());
    let config_path = out.join("serve.toml");
    let text =
        toml::to_string_pretty(&config).map_err(|e| TrialError::Serve(format!("config: {e}")))?;
    std::fs::write(&config_path, text)
        .map_err(io(format!("cannot write {}", config_path.display())))?;

    progress.phase(&format!(
        "starting {} replica(s)",
        scenario.service.replicas
    ));
    let mut serve = start_serve(env, &config_path, out)?;
    let control = ControlClient::new(config.control_path());
    let ready = tokio::select! {
        ready = wait_ready(&control, &mut serve, scenario.service.replicas) => ready,
        () = stop.cancelled() => {
            progress.phase("interrupted: stopping dropless serve");
            stop_serve(&mut serve, serve_patience(scenario)).await;
            write_reports(&unfinished(scenario, crate::report::INTERRUPTED.into(), true), out)?;
            return Err(TrialError::Interrupted);
        }
    };
    let address = match ready {
        Ok(address) => address,
        Err(why) => {
            stop_serve(&mut serve, Duration::from_secs(5)).await;
            let why = format!("{why} (see {})", out.join("serve.log").display());
            // What it has: a report that says the load never started.
            let reason = format!("dropless serve did not become ready: {why}");
            write_reports(&unfinished(scenario, reason, false), out)?;
            return Err(TrialError::Serve(why));
        }
    };

    progress.phase("load");
    let load = scenario_load(
        &scenario.load,
        format!("http://{address}{}", scenario.load.url_path()),
    );
    let run = dropless_load::start(&load).await?;
    let streaming = stream_load(&env.load_out, &load.url, &run);
    progress.load_started(scenario.load.duration);
    let started = Instant::now();
    let stopper = run.stopper();
    let mut snapshots = run.subscribe();
    let (steps_tx, mut steps) = mpsc::unbounded_channel();
    let script = tokio::spawn(run_events(release, control.clone(), started, steps_tx));
    let follow_done = CancellationToken::new();
    let follower = tokio::spawn(crate::replicas::follow(
        control.clone(),
        started,
        follow_done.clone(),
    ));
    let mut records = Vec::new();
    let report = run.report();
    tokio::pin!(report);
    let mut interrupted = false;
    let report = loop {
        tokio::select! {
            report = &mut report => break report?,
            Ok(()) = snapshots.changed() => progress.second(&snapshots.borrow_and_update()),
            Some(step) = steps.recv() => take(step, progress, &mut records),
            () = stop.cancelled(), if !interrupted => {
                interrupted = true;
                progress.phase("interrupted: stopping the load");
                stopper.stop();
                script.abort();
            }
        }
    };
    end_stream(streaming).await;
    if !interrupted {
        progress.phase("waiting for the events to end");
        let tail = async {
            while let Some(step) = steps.recv().await {
                take(step, progress, &mut records);
            }
        };
        tokio::select! {
            result = tokio::time::timeout(EVENTS_TAIL, tail) => if result.is_err() {
                records.push(failed_record(
                    "events",
                    started,
                    format!("still running {EVENTS_TAIL:?} after the load ended"),
                ));
            },
            () = stop.cancelled() => interrupted = true,
        }
        script.abort();
    }
    // Events that ended before the stop are kept; one under way is not.
    while let Ok(step) = steps.try_recv() {
        take(step, progress, &mut records);
    }

    // The replicas until the end of the events, not their retirement.
    follow_done.cancel();
    let replicas = follower.await.unwrap_or_default();
    progress.phase("stopping dropless serve");
    stop_current_serve(&control, &mut serve, serve_patience(scenario)).await;

    // An audit that cannot run still gets its reports written: the error
    // is recorded and the verdict fails. An interrupted trial skips it.
    let audit: Option<AuditReport> = match &sink {
        Some(_) if interrupted => None,
        Some(sink) => {
            progress.phase("audit");
            let acknowledged = report.requests.ok;
            Some(
                sink.source
                    .audit(acknowledged)
                    .await
                    .unwrap_or_else(|error| {
                        AuditReport::failed(&sink.source, acknowledged, &error)
                    }),
            )
        }
        None => None,
    };
    let mut report = TrialReport::new(
        scenario.name.clone(),
        describe_service(scenario),
        scenario.service.strategy.name().to_owned(),
        report,
        records,
        audit,
    );
    report.replicas = replicas;
    // An event still running when the load ended was not proven.
    if !interrupted {
        for reason in uncovered(&report.events, report.load.duration_s) {
            report.fail(reason);
        }
    }
    // Stopped in the events' tail, after the load had ended as planned.
    if interrupted && !report.load.interrupted {
        report.load.interrupted = true;
        report.fail(crate::report::INTERRUPTED.into());
    }
    write_reports(&report, out)?;
    Ok(report)
}

/// The report of a trial whose load never started: no request, the reason.
fn unfinished(scenario: &Scenario, reason: String, interrupted: bool) -> TrialReport {
    let load = load_config(
        format!("http://127.0.0.1{}", scenario.load.path),
        scenario.load.rate,
        scenario.load.duration,
        scenario.load.client,
    );
    let mut load = dropless_load::Report::not_started(&load);
    load.interrupted = interrupted;
    let mut report = TrialReport::new(
        scenario.name.clone(),
        describe_service(scenario),
        scenario.service.strategy.name().to_owned(),
        load,
        Vec::new(),
        None,
    );
    if !interrupted {
        report.fail(reason);
    }
    report
}

/// Why each event that ended after the load (at `load_s` seconds) fails the
/// trial: the requests that would have shown its effect were never sent.
fn uncovered(events: &[EventRecord], load_s: f64) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.ended_s > load_s && e.as_expected())
        .map(|e| {
            format!(
                "the load ended before {}: the load ran {load_s:.1} s, it ended at {:.1} s; give the load a longer duration",
                e.name(),
                e.ended_s
            )
        })
        .collect()
}

/// Tells `progress` of a step of the script; keeps the records.
fn take(step: Step, progress: &dyn Progress, records: &mut Vec<EventRecord>) {
    match step {
        Step::Started(name) => progress.event_started(&name),
        Step::Ended(record) => {
            progress.event(&record);
            records.push(record);
        }
    }
}

/// How long `dropless serve` has to stop: the replicas' grace period and a
/// margin.
fn serve_patience(scenario: &Scenario) -> Duration {
    let grace = scenario
        .service
        .grace
        .unwrap_or(crate::scenario::DEFAULT_GRACE);
    grace + SERVE_STOP_MARGIN
}

/// Streams `run`'s points to `outputs` (`--load-out`), if there are any.
pub(crate) fn stream_load(
    outputs: &[Output],
    target: &str,
    run: &dropless_load::Run,
) -> Option<tokio::task::JoinHandle<Result<(), OutError>>> {
    (!outputs.is_empty()).then(|| {
        tokio::spawn(dropless_load::out::stream(
            outputs.to_vec(),
            target.to_string(),
            run.subscribe(),
        ))
    })
}

/// Waits for the stream's last point; a failed output is logged, the trial
/// goes on.
pub(crate) async fn end_stream(streaming: Option<tokio::task::JoinHandle<Result<(), OutError>>>) {
    if let Some(streaming) = streaming {
        match streaming.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("{e}"),
            Err(e) => tracing::warn!("the --load-out task failed: {e}"),
        }
    }
}

/// Writes `report.json` and `report.html` into `out`.
pub fn write_reports(report: &TrialReport, out: &Path) -> Result<(), TrialError> {
    let json = out.join("report.json");
    std::fs::write(&json, report.to_json())
        .map_err(io(format!("cannot write {}", json.display())))?;
    let page = out.join("report.html");
    std::fs::write(&page, html::render(report))
        .map_err(io(format!("cannot write {}", page.display())))?;
    Ok(())
}

/// `demo v9 ×3` or the command line.
fn describe_service(scenario: &Scenario) -> String {
    let service = &scenario.service;
    match &service.demo {
        Some(profile) => format!("demo {profile} ×{}", service.replicas),
        None => format!("{} ×{}", service.command.join(" "), service.replicas),
    }
}

/// The load a scenario's `[load]` asks for, at `url`.
fn scenario_load(load: &Load, url: String) -> dropless_load::Config {
    let mut config = load_config(url, load.rate, load.duration, load.client);
    config.sessions = load.sessions;
    config.websocket = load.websocket;
    if let Some(batch) = load.batch {
        config.batch = batch;
    }
    if let Some(n) = load.max_connecting {
        config.max_connecting = n;
    }
    config
}

/// The load of a trial: open model at `rate` for `duration`, in `client`
/// mode.
pub(crate) fn load_config(
    url: String,
    rate: f64,
    duration: Duration,
    client: ClientMode,
) -> dropless_load::Config {
    let mut load = dropless_load::Config::new(url);
    load.model = Model::Open { rate };
    load.duration = duration;
    match client {
        ClientMode::Keepalive => {}
        ClientMode::NoKeepalive => load.keepalive = false,
        ClientMode::H2 => load.http2 = true,
    }
    load
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_section_reaches_the_load_generator() {
        let load = Load {
            batch: Some(Duration::ZERO),
            max_connecting: Some(8),
            sessions: Some(20),
            ..Load::default()
        };
        let config = scenario_load(&load, "http://127.0.0.1:1/".into());
        assert_eq!(
            (config.batch, config.max_connecting, config.sessions),
            (Duration::ZERO, 8, Some(20))
        );
        assert!(matches!(config.model, Model::Open { rate } if rate == load.rate));
        // Left out, the generator's own defaults.
        let config = scenario_load(&Load::default(), "http://127.0.0.1:1/".into());
        assert_eq!(
            (config.batch, config.max_connecting),
            (
                dropless_load::DEFAULT_BATCH,
                dropless_load::DEFAULT_MAX_CONNECTING
            )
        );
    }
}
