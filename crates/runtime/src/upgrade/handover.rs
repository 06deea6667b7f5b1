//! The old `serve`'s side of an upgrade ([`Upgrader`]): start the new
//! binary, hand it the sockets and the state, wait until it serves, then
//! step down; or, when it fails, kill it and go on as if nothing happened.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::BufRead;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::state::{
    FdLayout, HandedProcess, Handover, Message, ReplicaHandover, RuntimeInfo, ServiceHandover,
};
use super::wire::{self, Received};
use crate::event::ReplicaState;
use crate::proxy::route::Router;

/// Environment variable that tells a starting `serve` which descriptor
/// its handover socket is.
pub const HANDOVER_ENV: &str = "DROPLESS_UPGRADE_FD";

/// The descriptor the handover socket has in the new `serve`.
pub const HANDOVER_FD: RawFd = 3;

/// How long the new binary has to take over and report ready, on top of
/// the longest `ready_timeout` of the services (its probes of the adopted
/// replicas).
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// Lines of the new process's output quoted when it fails.
pub const TAIL_LINES: usize = 10;

/// Set once this process has handed its runtime over.
static HANDED_OVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process has handed its runtime over: its sockets and
/// files are the new `serve`'s (it must not remove them).
pub fn has_handed_over() -> bool {
    HANDED_OVER.load(std::sync::atomic::Ordering::SeqCst)
}

/// An upgrade that completed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Upgraded {
    /// The `serve` that stepped down.
    pub old_pid: u32,
    /// The `serve` that runs now.
    pub new_pid: u32,
    /// The binary it runs.
    pub binary: PathBuf,
}

/// An upgrade that did not happen; the old `serve` keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// Another upgrade is under way.
    #[error("an upgrade is already under way")]
    InProgress,
    /// A rollout is under way.
    #[error(
        "a rollout of service {0} is under way: upgrade once it has ended (dropless events shows it)"
    )]
    Rollout(String),
    /// This `serve` forks its replicas itself (library use).
    #[error("this serve has no spawner process, so its replicas cannot outlive it")]
    NoSpawner,
    /// The new binary could not be started or did not take over.
    #[error("{error}{}", tail(.lines))]
    Failed {
        /// What went wrong.
        error: String,
        /// The new process's last lines of output.
        lines: Vec<String>,
    },
}

fn tail(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let quoted: String = lines.iter().map(|l| format!("\n    {l}")).collect();
    format!("; its last lines:{quoted}")
}

/// The old side of upgrades: what it hands over and how to step down.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Upgrader {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    router: Router,
    proxy: OwnedFd,
    control: Option<(OwnedFd, PathBuf)>,
    control_tcp: Option<OwnedFd>,
    binary: PathBuf,
    args: Vec<OsString>,
    info: Mutex<RuntimeInfo>,
    one_at_a_time: tokio::sync::Mutex<()>,
    handed_over: CancellationToken,
}

/// The sockets an [`Upgrader`] hands over.
#[derive(Debug)]
pub struct Sockets<'a> {
    /// The proxy's listener.
    pub proxy: std::os::fd::BorrowedFd<'a>,
    /// The control socket and its path.
    pub control: Option<(std::os::fd::BorrowedFd<'a>, PathBuf)>,
    /// The TCP control API.
    pub control_tcp: Option<std::os::fd::BorrowedFd<'a>>,
}

impl Upgrader {
    /// An upgrader of the runtime serving `router` on `sockets`; by
    /// default the new `serve` is `binary` started with `args` (this
    /// process's own arguments); `info` is this runtime's identity.
    pub fn new(
        router: Router,
        sockets: Sockets<'_>,
        binary: PathBuf,
        args: Vec<OsString>,
        info: RuntimeInfo,
    ) -> std::io::Result<Self> {
        let control = match sockets.control {
            Some((fd, path)) => Some((fd.try_clone_to_owned()?, path)),
            None => None,
        };
        let control_tcp = match sockets.control_tcp {
            Some(fd) => Some(fd.try_clone_to_owned()?),
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                router,
                proxy: sockets.proxy.try_clone_to_owned()?,
                control,
                control_tcp,
                binary,
                args,
                info: Mutex::new(info),
                one_at_a_time: tokio::sync::Mutex::new(()),
                handed_over: CancellationToken::new(),
            }),
        })
    }

    /// This runtime's identity.
    pub fn info(&self) -> RuntimeInfo {
        self.inner.info.lock().expect("info lock").clone()
    }

    /// Cancelled once a new `serve` has taken over: this one stops
    /// accepting, lets its connections finish and exits without signalling
    /// any replica.
    pub fn handed_over(&self) -> CancellationToken {
        self.inner.handed_over.clone()
    }

    /// Upgrades on every SIGUSR2 (to the binary `serve` was started from).
    pub async fn on_signals(self) {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut usr2) = signal(SignalKind::user_defined2()) else {
            return;
        };
        while usr2.recv().await.is_some() {
            tracing::info!("SIGUSR2: upgrade");
            // The outcome is logged by `upgrade`.
            if self.upgrade(None).await.is_ok() {
                return;
            }
        }
    }

    /// Starts `binary` (by default the one this `serve` was started from,
    /// read again from disk) and hands it the runtime; returns once it
    /// serves and this one has stopped accepting, or with why it did not
    /// (this one then serves on as before).
    pub async fn upgrade(&self, binary: Option<PathBuf>) -> Result<Upgraded, UpgradeError> {
        let _one = self
            .inner
            .one_at_a_time
            .try_lock()
            .map_err(|_| UpgradeError::InProgress)?;
        if self.inner.handed_over.is_cancelled() {
            return Err(UpgradeError::InProgress);
        }
        let spawner = super::spawner::client().ok_or(UpgradeError::NoSpawner)?;
        let services = self.inner.router.services();
        // No rollout may start or run meanwhile: the replicas handed over
        // are the ones that stay.
        let mut locks = Vec::new();
        for s in &services {
            let lock = s
                .rollout_lock()
                .try_lock()
                .map_err(|_| UpgradeError::Rollout(s.name().to_string()))?;
            if let Some(r) = s
                .replicas()
                .iter()
                .find(|r| !r.is_member() || r.is_retiring())
            {
                return Err(UpgradeError::Rollout(format!(
                    "{} (replica {} is leaving)",
                    s.name(),
                    r.name()
                )));
            }
            locks.push(lock);
        }
        let binary = binary.unwrap_or_else(|| self.inner.binary.clone());
        let timeout = UPGRADE_TIMEOUT
            + services
                .iter()
                .map(|s| s.config().probe.ready_timeout)
                .max()
                .unwrap_or_default();
        tracing::info!("upgrade: starting {}", binary.display());
        // From here the spawner's messages wait for whichever `serve` goes on.
        let pause = tokio::task::spawn_blocking(|| spawner.pause());
        pause.await.expect("pausing does not panic");
        let this = self.clone();
        let attempt =
            tokio::task::spawn_blocking(move || this.hand_over(&binary, spawner, timeout)).await;
        let outcome = attempt.unwrap_or_else(|e| {
            Err(UpgradeError::Failed {
                error: format!("the upgrade panicked: {e}"),
                lines: Vec::new(),
            })
        });
        match &outcome {
            Ok(done) => {
                for s in &services {
                    s.stop_supervising();
                }
                tracing::info!(
                    "upgrade: pid {} serves now; this serve (pid {}) stops accepting and exits without signalling any replica",
                    done.new_pid,
                    done.old_pid
                );
                HANDED_OVER.store(true, std::sync::atomic::Ordering::SeqCst);
                self.inner.handed_over.cancel();
            }
            Err(e) => {
                spawner.resume();
                tracing::error!("upgrade failed, this serve goes on: {e}");
            }
        }
        drop(locks);
        outcome
    }

    /// The blocking part: start the new process, send it everything, wait
    /// for its answer.
    fn hand_over(
        &self,
        binary: &std::path::Path,
        spawner: &super::spawner::SpawnerClient,
        timeout: Duration,
    ) -> Result<Upgraded, UpgradeError> {
        let failed = |error: String| UpgradeError::Failed {
            error,
            lines: Vec::new(),
        };
        let (state, fds) = self.snapshot(spawner);
        let (mine, theirs) = wire::pair().map_err(|e| failed(format!("socket pair: {e}")))?;
        let (output, output_writer) =
            std::io::pipe().map_err(|e| failed(format!("output pipe: {e}")))?;
        let mut command = std::process::Command::new(binary);
        command
            .args(&self.inner.args)
            .env(HANDOVER_ENV, HANDOVER_FD.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(
                output_writer
                    .try_clone()
                    .map_err(|e| failed(format!("output pipe: {e}")))?,
            )
            .stderr(output_writer);
        super::pass_fd(&mut command, theirs.as_raw_fd(), HANDOVER_FD);
        let mut child = command
            .spawn()
            .map_err(|e| failed(format!("cannot start {}: {e}", binary.display())))?;
        drop(command);
        drop(theirs);
        let new_pid = child.id();
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        let forwarder = forward_output(output, Arc::clone(&lines));
        let answer = send_and_wait(&mine, &state, &fds, &mut child, timeout);
        match answer {
            Ok(()) => {
                // Our stdout and stderr become its own; it is reparented
                // when we exit, and nobody waits for it here.
                let sent = wire::send(mine.as_fd(), &Message::Commit, &[1, 2]);
                if let Err(e) = sent {
                    tracing::warn!("upgrade: commit not delivered ({e}); pid {new_pid} goes on");
                }
                std::mem::forget(child);
                Ok(Upgraded {
                    old_pid: std::process::id(),
                    new_pid,
                    binary: binary.to_path_buf(),
                })
            }
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                // Its output ends with it (a child of its may hold the pipe:
                // wait a little, not forever).
                let deadline = Instant::now() + Duration::from_secs(1);
                while !forwarder.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let lines = lines.lock().expect("lines lock").iter().cloned().collect();
                Err(UpgradeError::Failed { error, lines })
            }
        }
    }

    /// The state and descriptors to hand over.
    fn snapshot(&self, spawner: &super::spawner::SpawnerClient) -> (Handover, Vec<RawFd>) {
        let inner = &self.inner;
        let mut fds = vec![inner.proxy.as_raw_fd(), spawner.lifeline().as_raw_fd()];
        let control = inner.control.as_ref().map(|(fd, path)| {
            fds.push(fd.as_raw_fd());
            (fds.len() - 1, path.clone())
        });
        let control_tcp = inner.control_tcp.as_ref().map(|fd| {
            fds.push(fd.as_raw_fd());
            fds.len() - 1
        });
        let mut services = Vec::new();
        for s in inner.router.services() {
            let (next_replica, next_rollout, last_rollout) = s.counters();
            let mut replicas = Vec::new();
            for r in s.replicas() {
                let process = r.process().map(|p| {
                    let log_pipe = p.log_pipe().map(|fd| {
                        fds.push(fd.as_raw_fd());
                        fds.len() - 1
                    });
                    HandedProcess {
                        pid: p.pid(),
                        start_time: p.start_time(),
                        log_pipe,
                    }
                });
                replicas.push(ReplicaHandover {
                    name: r.name().to_string(),
                    generation: r.generation(),
                    addr: r.addr(),
                    state: r.state(),
                    process,
                });
            }
            services.push(ServiceHandover {
                name: s.name().to_string(),
                desired: s.desired(),
                next_replica,
                next_rollout,
                last_rollout,
                replicas: replicas
                    .into_iter()
                    .filter(|r| !r.state.is_terminal() && r.state != ReplicaState::Draining)
                    .collect(),
            });
        }
        let state = Handover {
            format: super::state::FORMAT,
            runtime: self.info(),
            services,
            fds: FdLayout {
                proxy: 0,
                spawner: 1,
                control,
                control_tcp,
            },
        };
        (state, fds)
    }
}

/// Sends the state to the new process and waits up to `timeout` for it to
/// report ready; the error says why it did not.
fn send_and_wait(
    socket: &OwnedFd,
    state: &Handover,
    fds: &[RawFd],
    child: &mut std::process::Child,
    timeout: Duration,
) -> Result<(), String> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    wire::send(
        socket.as_fd(),
        &Message::Hello(Box::new(state.clone())),
        fds,
    )
    .map_err(|e| match e.kind() {
        // It is gone already.
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
            gone(child, "closed the handover socket")
        }
        _ => format!("cannot hand the state over: {e}"),
    })?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("the new serve was not ready within {timeout:?}"));
        }
        // Woken by its answer or its exit (the socket closes with it).
        let wait =
            PollTimeout::try_from(left.min(Duration::from_millis(200))).unwrap_or(PollTimeout::MAX);
        let mut polled = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut polled, wait);
        match wire::recv::<Message>(socket.as_fd(), false, wire::MAX_MESSAGE) {
            Ok(Received::Message(Message::Ready { .. }, _)) => return Ok(()),
            Ok(Received::Message(Message::Failed { error }, _)) => return Err(error),
            Ok(Received::Message(other, _)) => {
                return Err(format!("unexpected message from the new serve: {other:?}"));
            }
            Ok(Received::Closed) => return Err(gone(child, "closed the handover socket")),
            Ok(Received::Empty) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(gone(child, "reset the handover socket"));
            }
            Err(e) => return Err(format!("handover socket: {e}")),
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the new serve exited ({status}) before it was ready"
            ));
        }
    }
}

/// Why the new process left the handover: its exit status when it exited
/// (it closes the socket as it exits), else `what` it did.
fn gone(child: &mut std::process::Child, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return format!("the new serve exited ({status}) before it was ready");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    format!("the new serve {what} before it was ready")
}

/// Copies the new process's output to ours, keeping its last
/// [`TAIL_LINES`] lines.
fn forward_output(
    output: std::io::PipeReader,
    lines: Arc<Mutex<VecDeque<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::Write;
        for line in std::io::BufReader::new(output)
            .lines()
            .map_while(Result::ok)
        {
            let _ = writeln!(std::io::stderr(), "{line}");
            let mut kept = lines.lock().expect("lines lock");
            if kept.len() == TAIL_LINES {
                kept.pop_front();
            }
            kept.push_back(line);
        }
    })
}
