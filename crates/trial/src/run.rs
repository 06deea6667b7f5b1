//! Running one scenario: a private `dropless serve`, the load in process,
//! the events over the control socket, then the audit and the reports.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use dropless_load::{Model, Snapshot};
use dropless_runtime::{
    config::{Config as RuntimeConfig, ServiceConfig, Strategy as RolloutStrategy, Version},
    control::{ControlClient, ControlError},
    event::ReplicaState,
    rollout::{Plan, RolloutRequest},
};
use tokio::{
    process::{Child, Command},
    sync::mpsc,
    time::Instant,
};

use crate::{
    audit::{AuditReport, AuditSource},
    html,
    influxd::Influxd,
    report::{EventRecord, Outcome, TrialReport},
    scenario::{Action, AuditSink, ClientMode, Expect, Scenario},
};

/// Time the replicas have to be ready before the load starts.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Time the events may still run after the load ended before they count as
/// failed.
pub const EVENTS_TAIL: Duration = Duration::from_secs(60);
/// Time `dropless serve` has to stop after SIGTERM on top of its replicas'
/// grace period.
pub const SERVE_STOP_MARGIN: Duration = Duration::from_secs(15);

/// What the trial needs from its host: the programs it starts.
#[derive(Debug, Clone)]
pub struct Env {
    /// The `dropless` binary (`serve` is started from it).
    pub dropless: PathBuf,
    /// The command that starts the built-in demo service, e.g.
    /// `[dropless, "demo-service"]`; its flags are appended.
    pub demo: Vec<String>,
}

/// Told what happens while a trial runs (a progress bar, a log).
pub trait Progress: Send + Sync {
    /// A phase starts: `"starting 3 replicas"`, `"load"`, `"audit"`.
    fn phase(&self, _text: &str) {}
    /// The load started and runs this long.
    fn load_started(&self, _duration: Duration) {}
    /// One more second of load.
    fn second(&self, _snapshot: &Snapshot) {}
    /// An event ended.
    fn event(&self, _record: &EventRecord) {}
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
}

/// Maps an I/O error to [`TrialError::Io`] saying what was being done.
pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TrialError {
    let what = what.into();
    move |source| TrialError::Io { what, source }
}

/// The calculation log of a trial: where the demo writes, where the audit
/// reads.
struct Sink {
    source: AuditSource,
    /// Flags for the demo service.
    demo_flags: Vec<String>,
    _influxd: Option<Influxd>,
}

impl Sink {
    fn prepare(scenario: &Scenario, out: &Path) -> Result<Option<Sink>, TrialError> {
        let logs_calculations =
            scenario.service.demo.as_deref().is_some_and(|p| {
                matches!(p.to_ascii_lowercase().as_str(), "v6" | "v7" | "v8" | "v9")
            });
        let audit = &scenario.audit;
        let wanted = match audit.sink {
            AuditSink::None => return Ok(None),
            AuditSink::Auto if !logs_calculations => return Ok(None),
            AuditSink::Auto if audit.influx_url.is_some() => AuditSink::Influx,
            AuditSink::Auto if audit.log_file.is_some() => AuditSink::LogFile,
            AuditSink::Auto if Influxd::installed() => AuditSink::Influx,
            AuditSink::Auto => AuditSink::LogFile,
            other => other,
        };
        Ok(Some(match wanted {
            AuditSink::Influx => {
                let (url, influxd) = match &audit.influx_url {
                    Some(url) => (url.trim_end_matches('/').to_owned(), None),
                    None => {
                        let influxd = Influxd::start()?;
                        (influxd.url().to_owned(), Some(influxd))
                    }
                };
                // A database of its own, so earlier data is not counted.
                let db = audit
                    .influx_db
                    .clone()
                    .unwrap_or_else(|| format!("trial_{:08x}", rand::random::<u32>()));
                Sink {
                    demo_flags: vec![
                        "--influx-url".into(),
                        url.clone(),
                        "--influx-db".into(),
                        db.clone(),
                    ],
                    source: AuditSource::Influx { url, db },
                    _influxd: influxd,
                }
            }
            _ => {
                let path = audit
                    .log_file
                    .clone()
                    .unwrap_or_else(|| out.join("calc-log.jsonl"));
                if audit.log_file.is_none() {
                    let _ = std::fs::remove_file(&path);
                }
                Sink {
                    demo_flags: vec!["--log-file".into(), path.display().to_string()],
                    source: AuditSource::LogFile(path),
                    _influxd: None,
                }
            }
        }))
    }
}

/// Runs `scenario`, writes `report.json` and `report.html` into `out`, and
/// returns the report.
pub async fn run(
    scenario: &Scenario,
    out: &Path,
    env: &Env,
    progress: &dyn Progress,
) -> Result<TrialReport, TrialError> {
    std::fs::create_dir_all(out).map_err(io(format!("cannot create {}", out.display())))?;
    let sink = Sink::prepare(scenario, out)?;
    // Unix socket paths are short (108 bytes): keep the runtime's own files
    // in a short temporary directory, its log in `out`.
    let state = tempfile::Builder::new()
        .prefix("dropless-trial-")
        .tempdir()
        .map_err(io("cannot create a temporary directory"))?;
    let port = free_port().map_err(io("cannot find a free port"))?;
    let config = runtime_config(scenario, env, sink.as_ref(), state.path(), port);
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
    let ready = wait_ready(&control, &mut serve, scenario.service.replicas).await;
    if let Err(why) = ready {
        stop_serve(&mut serve, Duration::from_secs(5)).await;
        return Err(TrialError::Serve(format!(
            "{why} (see {})",
            out.join("serve.log").display()
        )));
    }

    progress.phase("load");
    let load = load_config(
        format!("http://127.0.0.1:{port}{}", scenario.load.path),
        scenario.load.rate,
        scenario.load.duration,
        scenario.load.client,
    );
    let run = dropless_load::start(&load).await?;
    progress.load_started(scenario.load.duration);
    let started = Instant::now();
    let mut snapshots = run.subscribe();
    let (records_tx, mut records_rx) = mpsc::unbounded_channel();
    let release = Release {
        scenario: scenario.clone(),
        env: env.clone(),
        sink_flags: sink
            .as_ref()
            .map(|s| s.demo_flags.clone())
            .unwrap_or_default(),
    };
    let script = tokio::spawn(run_events(release, control.clone(), started, records_tx));
    let mut records = Vec::new();
    let report = run.report();
    tokio::pin!(report);
    let report = loop {
        tokio::select! {
            report = &mut report => break report?,
            Ok(()) = snapshots.changed() => progress.second(&snapshots.borrow_and_update()),
            Some(record) = records_rx.recv() => {
                progress.event(&record);
                records.push(record);
            }
        }
    };
    progress.phase("waiting for the events to end");
    let tail = async {
        while let Some(record) = records_rx.recv().await {
            progress.event(&record);
            records.push(record);
        }
    };
    if tokio::time::timeout(EVENTS_TAIL, tail).await.is_err() {
        script.abort();
        records.push(failed_record(
            "events",
            started,
            format!("still running {EVENTS_TAIL:?} after the load ended"),
        ));
    }

    progress.phase("stopping dropless serve");
    let grace = scenario
        .service
        .grace
        .unwrap_or(crate::scenario::DEFAULT_GRACE);
    stop_serve(&mut serve, grace + SERVE_STOP_MARGIN).await;

    // An audit that cannot run still gets its reports written: the error
    // is recorded and the verdict fails.
    let audit: Option<AuditReport> = match &sink {
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
    let report = TrialReport::new(
        scenario.name.clone(),
        describe_service(scenario),
        scenario.service.strategy.name().to_owned(),
        report,
        records,
        audit,
    );
    write_reports(&report, out)?;
    Ok(report)
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

/// The runtime configuration of a trial: one service on `port`.
fn runtime_config(
    scenario: &Scenario,
    env: &Env,
    sink: Option<&Sink>,
    state: &Path,
    port: u16,
) -> RuntimeConfig {
    let mut config = RuntimeConfig::default();
    config.proxy.listen = ([127, 0, 0, 1], port).into();
    config.state_dir = state.to_path_buf();
    config.control = Some(state.join("control.sock"));
    let service = &scenario.service;
    let mut runtime_service = ServiceConfig {
        name: "trial".into(),
        replicas: service.replicas,
        version: Release {
            scenario: scenario.clone(),
            env: env.clone(),
            sink_flags: sink.map(|s| s.demo_flags.clone()).unwrap_or_default(),
        }
        .version(&service.version, service.demo.as_deref(), &service.command),
        ..ServiceConfig::default()
    };
    let no_health = service
        .demo
        .as_deref()
        .is_some_and(|p| p.eq_ignore_ascii_case("v1"));
    runtime_service.probe.path = match &service.health_path {
        Some(path) => path.clone(),
        None if no_health => String::new(),
        None => runtime_service.probe.path.clone(),
    };
    if let Some(grace) = service.grace {
        runtime_service.retire.grace = grace;
    }
    if let Some(pre_stop) = service.pre_stop {
        runtime_service.retire.pre_stop = pre_stop;
    }
    config.services = vec![runtime_service];
    crate::strategy::apply(&mut config, service);
    config
}

/// What a new release of the service is made of.
#[derive(Debug, Clone)]
struct Release {
    scenario: Scenario,
    env: Env,
    /// The demo's calculation-log flags.
    sink_flags: Vec<String>,
}

impl Release {
    /// The runtime version of a release: the demo with its flags, or the
    /// command; `VERSION` in the environment either way.
    fn version(&self, label: &str, profile: Option<&str>, command: &[String]) -> Version {
        let service = &self.scenario.service;
        let version = match profile {
            Some(profile) => {
                let mut argv = self.env.demo.clone();
                // The demo's shutdown budget is the time the runtime gives
                // it between SIGTERM and SIGKILL: it gives up on its last
                // writes (and says so) before it would be killed.
                let grace = service.grace.unwrap_or(crate::scenario::DEFAULT_GRACE);
                argv.extend([
                    "--profile".into(),
                    profile.to_ascii_lowercase(),
                    "--version-label".into(),
                    label.to_owned(),
                    "--work-ms".into(),
                    service.work_ms.to_string(),
                    "--grace".into(),
                    humantime::format_duration(grace).to_string(),
                ]);
                if let Some(delay) = service.startup_delay {
                    argv.extend([
                        "--startup-delay".into(),
                        humantime::format_duration(delay).to_string(),
                    ]);
                }
                argv.extend(service.demo_args.iter().cloned());
                argv.extend(self.sink_flags.iter().cloned());
                Version::command(argv)
            }
            None => {
                let mut version = Version::command(command.iter().cloned());
                version.env = service.env.clone();
                version
            }
        };
        version.with_env("VERSION", label)
    }
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

fn start_serve(env: &Env, config: &Path, out: &Path) -> Result<Child, TrialError> {
    let log_path = out.join("serve.log");
    let log = std::fs::File::create(&log_path)
        .map_err(io(format!("cannot create {}", log_path.display())))?;
    let err = log.try_clone().map_err(io("cannot share the serve log"))?;
    Command::new(&env.dropless)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env_remove("DROPLESS_CONTROL")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(io(format!("cannot start {} serve", env.dropless.display())))
}

/// Waits until `replicas` replicas are ready, or says why not.
async fn wait_ready(
    control: &ControlClient,
    serve: &mut Child,
    replicas: usize,
) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("the control socket never answered");
    while Instant::now() < deadline {
        if let Ok(Some(status)) = serve.try_wait() {
            return Err(format!(
                "exited with {status} before its replicas were ready"
            ));
        }
        match control.status().await {
            Ok(services) => {
                let ready: Vec<_> = services
                    .iter()
                    .flat_map(|s| &s.replicas)
                    .filter(|r| r.state == ReplicaState::Ready)
                    .collect();
                // Ready is not always listening (the Kubernetes emulation of
                // a replica without a readiness probe): the first release
                // must really serve before the load starts, so that only
                // the events are measured.
                let mut listening = 0;
                for replica in &ready {
                    if tokio::net::TcpStream::connect(replica.addr).await.is_ok() {
                        listening += 1;
                    }
                }
                if listening >= replicas {
                    return Ok(());
                }
                last = format!(
                    "{} of {replicas} replica(s) ready, {listening} listening",
                    ready.len()
                );
            }
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("not ready after {READY_TIMEOUT:?}: {last}"))
}

/// SIGTERM, then SIGKILL if it has not exited within `patience`.
async fn stop_serve(serve: &mut Child, patience: Duration) {
    if let Some(pid) = serve.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(patience, serve.wait()).await.is_err() {
        tracing::warn!("dropless serve did not stop within {patience:?}: killing it");
        let _ = serve.kill().await;
    }
}

/// Runs the events at their offsets, one after the other; sends a record
/// for each as it ends.
async fn run_events(
    release: Release,
    control: ControlClient,
    started: Instant,
    records: mpsc::UnboundedSender<EventRecord>,
) {
    let scenario = &release.scenario;
    for (index, event) in scenario.timeline() {
        tokio::time::sleep_until(started + event.at).await;
        let began = started.elapsed();
        let request = match &event.action {
            Action::Restart => RolloutRequest::Restart {
                plan: Plan::default(),
            },
            Action::Scale { replicas } => RolloutRequest::Scale {
                replicas: *replicas,
                allow_zero: false,
            },
            Action::Deploy {
                version: label,
                profile,
                command,
                rollout,
            } => {
                let profile = profile.as_deref().or(scenario.service.demo.as_deref());
                let command = if command.is_empty() {
                    &scenario.service.command
                } else {
                    command
                };
                RolloutRequest::Deploy {
                    version: release.version(label, profile, command),
                    plan: Plan {
                        strategy: match rollout.as_deref() {
                            Some("blue-green") => Some(RolloutStrategy::BlueGreen),
                            Some(_) => Some(RolloutStrategy::Rolling),
                            None => None,
                        },
                        ..Plan::default()
                    },
                }
            }
        };
        let result = control.rollout(None, request).await;
        let ended = started.elapsed();
        let (outcome, detail) = match result {
            Ok(report) => (
                Outcome::Ok,
                Some(format!(
                    "started {}, retired {}",
                    report.started.join(" "),
                    report.retired.join(" ")
                )),
            ),
            Err(error @ ControlError::Aborted(_)) => (Outcome::Aborted, Some(error.to_string())),
            Err(error) => (Outcome::Failed, Some(error.to_string())),
        };
        let record = EventRecord {
            action: event.action.label(),
            index: Some(index),
            at_s: event.at.as_secs_f64(),
            started_s: began.as_secs_f64(),
            ended_s: ended.as_secs_f64(),
            outcome,
            expect: event.expect,
            detail,
        };
        if records.send(record).is_err() {
            return;
        }
    }
}

fn failed_record(action: &str, started: Instant, detail: String) -> EventRecord {
    let now = started.elapsed().as_secs_f64();
    EventRecord {
        action: action.to_owned(),
        index: None,
        at_s: now,
        started_s: now,
        ended_s: now,
        outcome: Outcome::Failed,
        expect: Expect::Completed,
        detail: Some(detail),
    }
}

/// A free loopback port for the proxy (bound, then released).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
