//! The program under check: started the way dropless starts a replica
//! (its own process group, `PORT`, `DROPLESS_REPLICA`, output to a log
//! file), watched until it listens and is ready, then sent SIGTERM and
//! given its grace before SIGKILL.

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use dropless_runtime::config::LogsConfig;
use dropless_runtime::supervisor::logs::{self, LogFile};
use dropless_runtime::supervisor::process::{self, Listen, Process};
use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::time::Instant;

use crate::Error;

/// Lines of the program's output kept for an error or the report.
const LOG_TAIL_LINES: usize = 20;

/// A started program.
pub(crate) struct Program {
    process: Process,
    /// Where it serves (`PORT`).
    pub(crate) addr: SocketAddr,
    log: PathBuf,
    /// When it was started.
    pub(crate) started: Instant,
    _dir: tempfile::TempDir,
}

/// How the program ended, measured from SIGTERM.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Exit {
    /// Milliseconds from SIGTERM to the exit.
    pub after_ms: u64,
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Whether the check had to send SIGKILL after the grace period.
    pub killed: bool,
}

impl Program {
    /// Starts `command` on a free loopback port, as dropless does.
    pub(crate) fn start(command: &[String]) -> Result<Self, Error> {
        let dir = tempfile::tempdir().map_err(Error::Io)?;
        let log = LogFile::new(dir.path(), "check", &logs::run_id(), &LogsConfig::default());
        let addr = process::free_port().map_err(Error::Io)?;
        let env = std::collections::BTreeMap::new();
        let started = Instant::now();
        let process = Process::spawn(command, &env, Listen::Port(addr), "check-1", &log)
            .map_err(Error::Spawn)?;
        Ok(Program {
            process,
            addr,
            log: log.path().to_path_buf(),
            started,
            _dir: dir,
        })
    }

    /// Its exit status, if it has exited.
    pub(crate) fn exit_status(&self) -> Option<ExitStatus> {
        self.process.exit_status()
    }

    /// Sends SIGTERM to its process group, waits up to `grace` for it to
    /// exit, then sends SIGKILL. Returns when SIGTERM went out, how it
    /// ended and when.
    pub(crate) async fn terminate(&self, grace: Duration) -> (Instant, Exit, Instant) {
        let sigterm = Instant::now();
        self.process.signal_group(Signal::SIGTERM);
        let (status, killed) = match tokio::time::timeout(grace, self.process.exited()).await {
            Ok(status) => (status, false),
            Err(_) => {
                self.process.signal_group(Signal::SIGKILL);
                (self.process.exited().await, true)
            }
        };
        let exited = Instant::now();
        let exit = Exit {
            after_ms: millis(exited - sigterm),
            code: status.code(),
            signal: status.signal(),
            killed,
        };
        (sigterm, exit, exited)
    }

    /// The last lines of its output.
    pub(crate) async fn log_tail(&self) -> Vec<String> {
        self.process.logged(Duration::from_millis(500)).await;
        logs::tail(&self.log, LOG_TAIL_LINES, 64 * 1024).unwrap_or_default()
    }

    /// Waits until it accepts a TCP connection; `Err` when it exits first or
    /// `timeout` passes.
    pub(crate) async fn listening(&self, timeout: Duration) -> Result<Instant, Error> {
        let deadline = self.started + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Err(Error::Exited {
                    status: describe(status),
                    log: self.log_tail().await,
                });
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(Instant::now());
            }
            if Instant::now() >= deadline {
                return Err(Error::NotListening {
                    addr: self.addr,
                    timeout,
                    log: self.log_tail().await,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Kills what is left of its process group (children that outlived it).
    pub(crate) fn kill_group(&self) {
        self.process.signal_group(Signal::SIGKILL);
    }
}

/// How often startup is polled.
pub(crate) const POLL: Duration = Duration::from_millis(10);

/// "exit code 1" or "signal 9".
pub(crate) fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {}", signal_name(signal)),
        _ => "an unknown status".to_owned(),
    }
}

/// `SIGTERM` for 15.
pub(crate) fn signal_name(signal: i32) -> String {
    Signal::try_from(signal).map_or_else(|_| signal.to_string(), |s| s.as_str().to_owned())
}

/// Whole milliseconds.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
