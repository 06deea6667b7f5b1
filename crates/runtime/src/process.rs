//! A replica's child process: its own process group, `PORT` and
//! `DROPLESS_REPLICA` in its environment, output appended to a log file, and
//! its exit status published on a watch channel.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;

/// A running (or finished) child process, leader of its own process group.
#[derive(Debug)]
pub struct Process {
    pid: u32,
    exit: watch::Receiver<Option<ExitStatus>>,
}

/// A child process that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The log file could not be opened.
    #[error("cannot open log file {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The program could not be executed.
    #[error("cannot start {program:?}: {source}")]
    Exec {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The service is shutting down and starts no replica.
    #[error("not starting a replica: the service is shutting down")]
    ShuttingDown,
}

impl Process {
    /// Starts `command` with `env`, `PORT` set to `addr`'s port and
    /// `DROPLESS_REPLICA` to `replica`, in a new process group, its stdout and
    /// stderr appended to `log`.
    pub fn spawn(
        command: &[String],
        env: &std::collections::BTreeMap<String, String>,
        addr: SocketAddr,
        replica: &str,
        log: &Path,
    ) -> Result<Self, SpawnError> {
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|source| SpawnError::Log {
                    path: log.to_path_buf(),
                    source,
                })
        };
        let (program, args) = command.split_first().ok_or_else(|| SpawnError::Exec {
            program: String::new(),
            source: std::io::Error::other("empty command"),
        })?;
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .envs(env)
            .env("PORT", addr.port().to_string())
            .env("DROPLESS_REPLICA", replica)
            .stdin(Stdio::null())
            .stdout(open()?)
            .stderr(open()?)
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|source| SpawnError::Exec {
                program: program.clone(),
                source,
            })?;
        let pid = child.id().unwrap_or_default();
        let (tx, exit) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await;
            // A wait error leaves the status unknown; report it as a failure.
            let status = status.unwrap_or_else(|_| {
                use std::os::unix::process::ExitStatusExt;
                ExitStatus::from_raw(1 << 8)
            });
            tx.send_replace(Some(status));
        });
        Ok(Self { pid, exit })
    }

    /// The process id, also the process group id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status, once the process has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Waits until the process has exited.
    pub async fn exited(&self) -> ExitStatus {
        let mut rx = self.exit.clone();
        let status = rx.wait_for(Option::is_some).await;
        match status {
            Ok(s) => s.expect("waited for Some"),
            Err(_) => self.exit_status().unwrap_or_default(),
        }
    }

    /// Sends `signal` to the whole process group; a group already gone is fine.
    pub fn signal_group(&self, signal: Signal) {
        if self.exit_status().is_some() && signal != Signal::SIGKILL {
            return;
        }
        let Ok(pid) = i32::try_from(self.pid) else {
            return;
        };
        if let Err(e) = killpg(Pid::from_raw(pid), signal) {
            tracing::debug!(pid, %signal, error = %e, "signal to process group");
        }
    }
}

/// Reserves a free loopback port for a replica by binding port 0 and
/// releasing it.
pub fn free_port() -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.local_addr()
}
