//! dropless-check: does a program shut down gracefully? [`run`] starts any
//! program the way dropless starts a replica (`PORT`, its own process
//! group), waits until it listens and is ready, drives it with new,
//! keep-alive and (if it speaks it) HTTP/2 connections at a fixed rate
//! while holding idle keep-alive connections, sends SIGTERM with requests
//! in flight, and reports eight [`Check`]s from what it saw on the wire,
//! each [`Verdict::Pass`], `Fail`, `NotApplicable` or `Unexpected`, with
//! its evidence, then what that [`Meaning`] is behind dropless and behind
//! Kubernetes, and the smallest fix.
//!
//! The clients are dropless-load's ([`dropless_load::Probe`]), with its
//! failure classes; the process handling is the runtime's.
//!
//! Main types: [`Config`], [`Report`] (text, JSON, [`html::render`]),
//! [`Error`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod checks;
mod config;
pub mod html;
mod meaning;
mod program;
mod report;
mod traffic;

use std::net::SocketAddr;
use std::time::Duration;

use dropless_load::Probe;
use tokio::time::Instant;

pub use checks::{Check, Timeline, Verdict};
pub use config::{
    Config, ConfigError, DEFAULT_GRACE, DEFAULT_IDLE_CONNECTIONS, DEFAULT_PATH, DEFAULT_RATE,
    DEFAULT_STARTUP_TIMEOUT, DEFAULT_WARMUP, KUBERNETES_ENDPOINT_LAG,
};
pub use meaning::Meaning;
pub use program::Exit;
pub use report::{EXIT_FAIL, EXIT_NOT_STARTED, EXIT_PASS, EXIT_USAGE, Report, word};

use program::{POLL, Program, describe};
use traffic::Traffic;

/// Traffic kept up after the exit, to see connections refused.
const AFTER_EXIT: Duration = Duration::from_millis(300);
/// How long requests still in flight at the end may take to finish.
const FINISH: Duration = Duration::from_secs(2);

/// Why a check could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting cannot work (exit code 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The program could not be started.
    #[error(transparent)]
    Spawn(dropless_runtime::supervisor::process::SpawnError),
    /// The program exited before it was ready.
    #[error("the program exited before it was ready ({status}); its last output is below")]
    Exited {
        /// Its exit status.
        status: String,
        /// Its last output lines.
        log: Vec<String>,
    },
    /// The program never listened on `PORT`.
    #[error(
        "the program did not listen on {addr} (its PORT) within {timeout:?}: does it read PORT? (--startup-timeout for a slow start)"
    )]
    NotListening {
        /// The address it was given.
        addr: SocketAddr,
        /// How long it was given.
        timeout: Duration,
        /// Its last output lines.
        log: Vec<String>,
    },
    /// The program listened but never answered its readiness (or main)
    /// path with a 2xx.
    #[error(
        "{path} never answered 2xx within {timeout:?} (last: {last}); check --path/--health-path"
    )]
    NotReady {
        /// The path asked.
        path: String,
        /// How long it was given.
        timeout: Duration,
        /// The last answer or failure.
        last: String,
        /// Its last output lines.
        log: Vec<String>,
    },
    /// The clients could not be set up.
    #[error(transparent)]
    Load(#[from] dropless_load::Error),
    /// A local resource (temporary directory, port) failed.
    #[error("{0}")]
    Io(std::io::Error),
}

impl Error {
    /// 2 for a bad setting, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => EXIT_USAGE,
            _ => EXIT_NOT_STARTED,
        }
    }

    /// The program's last output, when it explains the error.
    pub fn program_log(&self) -> &[String] {
        match self {
            Error::Exited { log, .. }
            | Error::NotListening { log, .. }
            | Error::NotReady { log, .. } => log,
            _ => &[],
        }
    }
}

/// Checks `config.command`: start, load, SIGTERM, observe, judge.
pub async fn run(config: &Config) -> Result<Report, Error> {
    config.validate()?;
    let program = Program::start(&config.command)?;
    let result = observe(config, &program).await;
    // Children the program left behind in its group.
    program.kill_group();
    result
}

async fn observe(config: &Config, program: &Program) -> Result<Report, Error> {
    let listening = program.listening(config.startup_timeout).await?;
    let url = |path: &str| format!("http://{}{path}", program.addr);
    let probe = Probe::new(&dropless_load::Config::new(url(&config.path))).await?;
    let health = match &config.health_path {
        Some(path) => Some(Probe::new(&dropless_load::Config::new(url(path))).await?),
        None => None,
    };
    let deadline = program.started + config.startup_timeout;
    let (ready, not_ready_answers) =
        ready(config, program, health.as_ref().unwrap_or(&probe), deadline).await?;
    // One request on the main path: it works, and how long it takes bounds
    // the waits below.
    let begun = Instant::now();
    match tokio::time::timeout_at(deadline.max(begun + Duration::from_secs(10)), probe.once()).await
    {
        Ok(Ok(answer)) if (200..300).contains(&answer.status) => {}
        other => {
            return Err(Error::NotReady {
                path: config.path.clone(),
                timeout: config.startup_timeout,
                last: last_answer(&other),
                log: program.log_tail().await,
            });
        }
    }
    let took = begun.elapsed();
    let h2 = speaks_h2(&probe, took * 2 + Duration::from_secs(1)).await;
    let speaks = h2.is_some();
    let traffic = Traffic::start(probe, health, h2.clone(), config.rate);
    traffic
        .hold_idle(config.idle_connections, took * 2 + Duration::from_secs(2))
        .await;
    tokio::time::sleep(config.warmup).await;
    let (sigterm, exit, exited) = program.terminate(config.grace).await;
    tokio::time::sleep(AFTER_EXIT).await;
    let seen = traffic.finish(FINISH).await;
    let facts = checks::Facts {
        sigterm,
        started: program.started,
        listening,
        ready,
        not_ready_answers,
        health: config.health_path.is_some(),
        exit,
        exited,
        grace_ms: program::millis(config.grace),
        h2: speaks.then(|| h2.as_ref().and_then(|c| c.goaway())),
        seen,
    };
    let checks = checks::all(&facts);
    let meaning = meaning::derive(&facts, &checks, config.rate);
    let passed = checks
        .iter()
        .all(|c| matches!(c.verdict, Verdict::Pass | Verdict::NotApplicable));
    Ok(Report {
        command: config.command.clone(),
        path: config.path.clone(),
        health_path: config.health_path.clone(),
        rate: config.rate,
        grace_ms: facts.grace_ms,
        passed,
        checks,
        meaning,
        exit,
        timeline: checks::timeline(&facts),
        requests: facts.traffic().count(),
        program_log_tail: program.log_tail().await,
    })
}

/// Waits until `probe` answers 2xx; counts the answers that were not.
async fn ready(
    config: &Config,
    program: &Program,
    probe: &Probe,
    deadline: Instant,
) -> Result<(Instant, usize), Error> {
    let mut not_ready = 0;
    loop {
        if let Some(status) = program.exit_status() {
            return Err(Error::Exited {
                status: describe(status),
                log: program.log_tail().await,
            });
        }
        let result = tokio::time::timeout_at(deadline, probe.once()).await;
        match &result {
            Ok(Ok(answer)) if (200..300).contains(&answer.status) => {
                return Ok((Instant::now(), not_ready));
            }
            Ok(Ok(_)) => not_ready += 1,
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(Error::NotReady {
                path: config
                    .health_path
                    .clone()
                    .unwrap_or_else(|| config.path.clone()),
                timeout: config.startup_timeout,
                last: last_answer(&result),
                log: program.log_tail().await,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

fn last_answer(
    result: &Result<
        Result<dropless_load::Answer, dropless_load::Lost>,
        tokio::time::error::Elapsed,
    >,
) -> String {
    match result {
        Ok(Ok(answer)) => format!("status {}", answer.status),
        Ok(Err(lost)) => lost.class.to_string(),
        Err(_) => "no answer".to_owned(),
    }
}

/// An HTTP/2 connection with prior knowledge, if the program answers a
/// request on one within `timeout`.
async fn speaks_h2(probe: &Probe, timeout: Duration) -> Option<dropless_load::ProbeH2> {
    let attempt = async {
        let h2 = probe.http2().await.ok()?;
        let answer = h2.send().await.ok()?;
        (200..300).contains(&answer.status).then_some(h2)
    };
    tokio::time::timeout(timeout, attempt).await.ok().flatten()
}
