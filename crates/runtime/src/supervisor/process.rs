//! A replica's child process: its own process group, `PORT` and
//! `DROPLESS_REPLICA` in its environment, output through a pipe to its log
//! file ([`crate::supervisor::logs`]), and its exit status published on a watch channel.
//!
//! A replica must not outlive the runtime, even one killed with SIGKILL: it
//! asks the kernel for SIGTERM when its parent dies (`PR_SET_PDEATHSIG`).
//! The kernel means the parent *thread*, not process, so every replica is
//! forked by one thread that lives as long as the process ([`spawner`]),
//! never by a runtime worker that might end first.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::supervisor::logs::LogFile;

/// The descriptor a passed listening socket has in the replica (systemd's
/// `SD_LISTEN_FDS_START`).
const LISTEN_FD: i32 = 3;

/// A running (or finished) child process, leader of its own process group.
#[derive(Debug)]
pub struct Process {
    pid: u32,
    start_time: Option<u64>,
    exit: watch::Receiver<Option<ExitStatus>>,
    /// `true` once its log has all its output.
    logged: watch::Receiver<bool>,
    /// Another handle on its log pipe's read end, for an upgrade.
    log_pipe: Option<std::os::fd::OwnedFd>,
}

/// A child process that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The log file could not be created.
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
    /// The service's stash could not be opened or its socket bound.
    #[error("cannot start the stash at {path}: {message}")]
    Stash {
        /// The stash's socket.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The service is shutting down and starts no replica.
    #[error("not starting a replica: the service is shutting down")]
    ShuttingDown,
}

/// How a replica gets the address it serves on.
#[derive(Debug)]
pub enum Listen {
    /// It binds this port itself (`PORT`); the port was free when chosen.
    Port(SocketAddr),
    /// It is given this listening socket the systemd way: fd 3,
    /// `LISTEN_FDS=1`, `LISTEN_PID` its own pid (and `PORT` as well).
    Socket(std::net::TcpListener),
}

impl Listen {
    /// The address the replica serves on.
    pub fn addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Self::Port(addr) => Ok(*addr),
            Self::Socket(listener) => listener.local_addr(),
        }
    }
}

impl Process {
    /// Starts `command` with `env`, `PORT` set to the port it serves on (and
    /// its socket passed, with [`Listen::Socket`]) and `DROPLESS_REPLICA` to
    /// `replica`, in a new process group, its stdout and stderr copied to
    /// `log`.
    pub fn spawn(
        command: &[String],
        env: &std::collections::BTreeMap<String, String>,
        listen: Listen,
        replica: &str,
        log: &LogFile,
    ) -> Result<Self, SpawnError> {
        let log_err = |source| SpawnError::Log {
            path: log.path().to_path_buf(),
            source,
        };
        // The copier thread ends by itself when the replica's pipe closes.
        let (output, mut copier) = log.start().map_err(log_err)?;
        let log_pipe = copier.take_pipe();
        let logged = copier.done();
        let errors = output.try_clone().map_err(log_err)?;
        // For the spawner process, which needs the pipe's write end itself.
        let command_output = output.try_clone().map_err(log_err)?;
        let (program, args) = command.split_first().ok_or_else(|| SpawnError::Exec {
            program: String::new(),
            source: std::io::Error::other("empty command"),
        })?;
        let addr = listen.addr().map_err(|source| SpawnError::Exec {
            program: program.clone(),
            source,
        })?;
        let mut command = match &listen {
            Listen::Port(_) => {
                let mut command = tokio::process::Command::new(program);
                command.args(args);
                command
            }
            // `LISTEN_PID` must be the replica's own pid, known only after the
            // fork, when nothing may allocate: a shell sets it and execs the
            // command, which keeps the pid.
            Listen::Socket(_) => {
                let mut command = tokio::process::Command::new("/bin/sh");
                command
                    .arg("-c")
                    .arg("LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\"")
                    .arg(program)
                    .args(args)
                    .env("LISTEN_FDS", "1");
                command
            }
        };
        let listen_fd = match &listen {
            Listen::Socket(listener) => Some(std::os::fd::AsRawFd::as_raw_fd(listener)),
            Listen::Port(_) => None,
        };
        command
            .envs(env)
            .env("PORT", addr.port().to_string())
            .env("DROPLESS_REPLICA", replica)
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors)
            .process_group(0)
            .kill_on_drop(false);
        // The open-file limit `serve` found, not the one it raised for itself.
        let nofile = crate::fds::child_limit();
        let spawned = match crate::upgrade::spawner::client() {
            // Forked by the spawner process, which outlives an upgrade.
            Some(spawner) => {
                let output = std::os::fd::AsFd::as_fd(&command_output);
                let listen_fd = listen_fd.map(|fd| {
                    // SAFETY: `listen` owns the fd and outlives this call.
                    #[allow(unsafe_code)]
                    unsafe {
                        std::os::fd::BorrowedFd::borrow_raw(fd)
                    }
                });
                let spawned = spawner.spawn(command.as_std(), output, listen_fd, nofile);
                // The pipe's write ends are the replica's now.
                drop(command);
                spawned
            }
            None => {
                prepare_child(command.as_std_mut(), listen_fd, nofile);
                spawn_on_spawner(command).map(|mut child| {
                    let pid = child.id().unwrap_or_default();
                    // Read before the child is waited for: the pid is surely still its.
                    let start_time = crate::supervisor::leftovers::start_time(pid);
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
                    (pid, start_time, exit)
                })
            }
        };
        let (pid, start_time, exit) = spawned.map_err(|source| SpawnError::Exec {
            program: program.clone(),
            source,
        })?;
        // The replica has its own copy of the socket now.
        drop(listen);
        Ok(Self {
            pid,
            start_time,
            exit,
            logged,
            log_pipe,
        })
    }

    /// A process another `serve` started (an upgrade): its exit status
    /// comes from `exit`, its output from `log_pipe` copied to `log`.
    pub fn adopted(
        pid: u32,
        start_time: Option<u64>,
        exit: watch::Receiver<Option<ExitStatus>>,
        log_pipe: Option<std::io::PipeReader>,
        log: &LogFile,
    ) -> std::io::Result<Self> {
        let (logged, log_pipe) = match log_pipe {
            Some(reader) => {
                let mut copier = log.copy(reader)?;
                (copier.done(), copier.take_pipe())
            }
            None => (watch::Sender::new(true).subscribe(), None),
        };
        Ok(Self {
            pid,
            start_time,
            exit,
            logged,
            log_pipe,
        })
    }

    /// Its log pipe's read end, to hand over.
    pub fn log_pipe(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.log_pipe.as_ref().map(std::os::fd::AsFd::as_fd)
    }

    /// The process id, also the process group id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its start time in clock ticks after boot, which tells it from a later
    /// process given the same pid.
    pub fn start_time(&self) -> Option<u64> {
        self.start_time
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

    /// Waits, at most `timeout`, until its log holds all its output (its
    /// process group has closed the pipe); whether it does.
    pub async fn logged(&self, timeout: std::time::Duration) -> bool {
        let mut rx = self.logged.clone();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|done| *done)).await,
            Ok(Ok(_))
        )
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

/// Prepares `command` for a replica: SIGTERM when its parent (thread)
/// dies, refused if that parent is already gone, `listen_fd` as fd 3 and
/// the open-file limits `nofile` restored.
pub(crate) fn prepare_child(
    command: &mut std::process::Command,
    listen_fd: Option<std::os::fd::RawFd>,
    nofile: Option<(nix::libc::rlim_t, nix::libc::rlim_t)>,
) {
    use std::os::unix::process::CommandExt;
    let parent = nix::unistd::getpid();
    // SAFETY: between fork and exec the closure makes at most four
    // system calls (prctl, getppid, dup2 or fcntl, setrlimit), all
    // async-signal-safe, and allocates nothing (its errors are raw
    // errnos). The caller keeps the socket's fd open until the spawn
    // returns.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
            // The parent died between the fork and the prctl. (An error
            // from a raw errno: no allocation after the fork.)
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(
                    nix::errno::Errno::ESRCH as i32,
                ));
            }
            // The listening socket becomes fd 3, open across exec.
            if let Some(fd) = listen_fd {
                let moved = if fd == LISTEN_FD {
                    nix::libc::fcntl(LISTEN_FD, nix::libc::F_SETFD, 0)
                } else {
                    nix::libc::dup2(fd, LISTEN_FD)
                };
                if moved == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            crate::fds::restore_limit(nofile)
        });
    }
}

/// A fork to run on the spawner thread.
type Job = Box<dyn FnOnce() + Send>;

/// The thread that forks every replica: it lives as long as the process, so
/// that a replica's parent-death signal comes when the process dies.
fn spawner() -> &'static std::sync::mpsc::Sender<Job> {
    static SPAWNER: std::sync::OnceLock<std::sync::mpsc::Sender<Job>> = std::sync::OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (jobs, incoming) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("dropless-spawner".into())
            .spawn(move || {
                for job in incoming {
                    job();
                }
            })
            .expect("the replica spawner thread starts");
        jobs
    })
}

/// Spawns `command` on the spawner thread, registered with the caller's
/// runtime (which reaps it).
fn spawn_on_spawner(
    mut command: tokio::process::Command,
) -> std::io::Result<tokio::process::Child> {
    let runtime = tokio::runtime::Handle::current();
    let (reply, spawned) = std::sync::mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _entered = runtime.enter();
        let _ = reply.send(command.spawn());
    });
    spawner()
        .send(job)
        .map_err(|_| std::io::Error::other("the replica spawner thread is gone"))?;
    spawned
        .recv()
        .map_err(|_| std::io::Error::other("the replica spawner thread is gone"))?
}

/// Reserves a free loopback port for a replica by binding port 0 and
/// releasing it.
pub fn free_port() -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.local_addr()
}
