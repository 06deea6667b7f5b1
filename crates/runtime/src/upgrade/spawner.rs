//! The spawner: a small process that forks every replica, so that replicas
//! outlive an upgrade of `serve` but never the runtime as a whole.
//!
//! `serve` starts it once (`dropless spawner`, the same binary) with one end
//! of a `SOCK_SEQPACKET` socket pair as fd 3: the *lifeline*. `serve` asks
//! it for each replica ([`SpawnerClient::spawn`]); it forks the replica
//! with `PR_SET_PDEATHSIG` (parent: the spawner's main thread), reaps it,
//! and sends its exit status back. It runs in a process group of its own
//! (a Ctrl-C in a terminal reaches `serve`, which retires the replicas in
//! order, not the spawner) and exits when every copy of `serve`'s end of
//! the lifeline is closed, which happens when `serve` exits (however it dies) unless it has
//! passed its end to a new `serve` first, as an upgrade does. When it
//! exits, the kernel sends every replica SIGTERM; a replica that ignores it
//! is retired by the next `serve` (`supervisor::leftovers`).
//!
//! The client reads the spawner's messages on a thread of its own, which an
//! upgrade pauses between two messages ([`SpawnerClient::pause`]): what
//! comes after, the new `serve` reads.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::wire::{self, Received};

/// Largest message between `serve` and the spawner (a request carries the
/// whole environment).
const MESSAGE_MAX: usize = 1024 * 1024;

/// Longest wait for the spawner to answer a spawn request.
pub const SPAWN_TIMEOUT: Duration = Duration::from_secs(30);

/// The name of the hidden subcommand that runs the spawner.
pub const SUBCOMMAND: &str = "spawner";

/// The descriptor the lifeline has in the spawner.
pub const LIFELINE_FD: RawFd = 3;

/// A request to the spawner.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// Fork and exec a replica; the message carries its output pipe and,
    /// with `listen`, its listening socket.
    Spawn {
        id: u64,
        program: String,
        args: Vec<String>,
        env: Vec<(String, String)>,
        listen: bool,
        nofile: Option<(u64, u64)>,
    },
}

/// What the spawner sends back.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Spawned {
        id: u64,
        pid: u32,
        start_time: Option<u64>,
    },
    Failed {
        id: u64,
        errno: Option<i32>,
        message: String,
    },
    Exited {
        pid: u32,
        /// The raw wait status.
        status: i32,
    },
}

/// `serve`'s side of the spawner: its lifeline and its reader thread.
#[derive(Debug)]
pub struct SpawnerClient {
    lifeline: OwnedFd,
    pid: u32,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<ClientState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct ClientState {
    next_id: u64,
    /// Spawn requests waiting for their answer.
    pending: HashMap<u64, std::sync::mpsc::SyncSender<std::io::Result<Spawned>>>,
    /// Exit status senders of the replicas, by pid.
    exits: HashMap<u32, watch::Sender<Option<ExitStatus>>>,
    /// No request is sent while set (an upgrade is under way).
    closing: bool,
    /// The reader reads nothing while set.
    paused: bool,
    /// The spawner is gone.
    lost: bool,
}

/// A replica the spawner started.
type Spawned = (u32, Option<u64>, watch::Receiver<Option<ExitStatus>>);

static CLIENT: OnceLock<SpawnerClient> = OnceLock::new();

/// The spawner of this process, once started ([`start`]) or adopted
/// ([`adopt`]); without one, replicas are forked by a thread of `serve`
/// (library use and tests), and `serve` cannot be upgraded.
pub fn client() -> Option<&'static SpawnerClient> {
    CLIENT.get()
}

/// Starts the spawner process: `program` with `args` (the same binary and
/// its hidden [`SUBCOMMAND`]), and makes it this process's spawner.
pub fn start(program: &std::path::Path, args: &[&str]) -> std::io::Result<&'static SpawnerClient> {
    let (mine, theirs) = wire::pair()?;
    let mut command = std::process::Command::new(program);
    command.args(args).stdin(Stdio::null()).process_group(0);
    super::pass_fd(&mut command, theirs.as_raw_fd(), LIFELINE_FD);
    let child = command.spawn()?;
    drop(theirs);
    let pid = child.id();
    // The spawner is reaped by whichever `serve` is its parent's successor:
    // nobody waits for it while it runs, and its exit means the runtime is
    // gone.
    std::mem::forget(child);
    install(mine, pid, false)
}

/// Makes the handed-over `lifeline` this process's spawner, paused until
/// [`SpawnerClient::resume`] (the old `serve` may still read it).
pub fn adopt(lifeline: OwnedFd, pid: u32) -> std::io::Result<&'static SpawnerClient> {
    install(lifeline, pid, true)
}

fn install(lifeline: OwnedFd, pid: u32, paused: bool) -> std::io::Result<&'static SpawnerClient> {
    let shared = Arc::new(Shared::default());
    shared.state.lock().expect("spawner lock").paused = paused;
    let reader = lifeline.try_clone()?;
    let client = SpawnerClient {
        lifeline,
        pid,
        shared: Arc::clone(&shared),
    };
    if CLIENT.set(client).is_err() {
        return Err(std::io::Error::other("a spawner is already installed"));
    }
    std::thread::Builder::new()
        .name("dropless-spawner-reader".into())
        .spawn(move || read_replies(&reader, &shared))?;
    Ok(CLIENT.get().expect("just set"))
}

impl SpawnerClient {
    /// The spawner's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its lifeline, to hand over to a new `serve`.
    pub fn lifeline(&self) -> BorrowedFd<'_> {
        self.lifeline.as_fd()
    }

    /// Asks the spawner to start `command` with `output` as its stdout and
    /// stderr and `listen` as fd 3; waits (blocking, briefly) for its pid.
    pub fn spawn(
        &self,
        command: &std::process::Command,
        output: BorrowedFd<'_>,
        listen: Option<BorrowedFd<'_>>,
        nofile: Option<(nix::libc::rlim_t, nix::libc::rlim_t)>,
    ) -> std::io::Result<Spawned> {
        let lossy = |s: &std::ffi::OsStr| s.to_string_lossy().into_owned();
        // The replica gets this `serve`'s environment, as a child would.
        let mut env: HashMap<String, String> = std::env::vars_os()
            .map(|(k, v)| (lossy(&k), lossy(&v)))
            .collect();
        // systemd's notification socket is the runtime's, not a replica's.
        env.remove(super::notify::NOTIFY_ENV);
        for (k, v) in command.get_envs() {
            match v {
                Some(v) => env.insert(lossy(k), lossy(v)),
                None => env.remove(&lossy(k)),
            };
        }
        let (reply, answered) = std::sync::mpsc::sync_channel(1);
        {
            let mut state = self.shared.state.lock().expect("spawner lock");
            while state.closing && !state.lost {
                state = self.shared.changed.wait(state).expect("spawner lock");
            }
            if state.lost {
                return Err(std::io::Error::other("the spawner process is gone"));
            }
            state.next_id += 1;
            let id = state.next_id;
            let request = Request::Spawn {
                id,
                program: lossy(command.get_program()),
                args: command.get_args().map(lossy).collect(),
                env: env.into_iter().collect(),
                listen: listen.is_some(),
                nofile,
            };
            let mut fds = vec![output.as_raw_fd()];
            fds.extend(listen.map(|l| l.as_raw_fd()));
            wire::send(self.lifeline.as_fd(), &request, &fds)?;
            state.pending.insert(id, reply);
        }
        answered
            .recv_timeout(SPAWN_TIMEOUT)
            .map_err(|_| std::io::Error::other("the spawner process did not answer"))?
    }

    /// The exit status of an adopted replica `pid`, once it exits.
    pub fn watch_exit(&self, pid: u32) -> watch::Receiver<Option<ExitStatus>> {
        let mut state = self.shared.state.lock().expect("spawner lock");
        state
            .exits
            .entry(pid)
            .or_insert_with(|| watch::Sender::new(None))
            .subscribe()
    }

    /// Stops sending requests, waits for the answers to those sent, then
    /// stops reading: the next message is left for the process the
    /// lifeline is handed to.
    pub fn pause(&self) {
        let mut state = self.shared.state.lock().expect("spawner lock");
        state.closing = true;
        while !state.pending.is_empty() && !state.lost {
            state = self.shared.changed.wait(state).expect("spawner lock");
        }
        state.paused = true;
    }

    /// Reads and sends again (the upgrade failed, or this is the new `serve`
    /// and the old one is done).
    pub fn resume(&self) {
        let mut state = self.shared.state.lock().expect("spawner lock");
        state.closing = false;
        state.paused = false;
        self.shared.changed.notify_all();
    }
}

/// The client's reader thread: answers to spawn requests and exit statuses.
fn read_replies(socket: &OwnedFd, shared: &Shared) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    loop {
        let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
        if let Err(e) = poll(&mut fds, PollTimeout::NONE)
            && e != nix::errno::Errno::EINTR
        {
            tracing::error!("spawner lifeline: {e}");
            break;
        }
        let mut state = shared.state.lock().expect("spawner lock");
        while state.paused {
            state = shared.changed.wait(state).expect("spawner lock");
        }
        match wire::recv::<Reply>(socket.as_fd(), false, MESSAGE_MAX) {
            Ok(Received::Empty) => continue,
            Ok(Received::Message(reply, _)) => handle(&mut state, reply),
            Ok(Received::Closed) => {
                tracing::error!("the spawner process is gone: no replica can start");
                break;
            }
            Err(e) => {
                tracing::error!("spawner lifeline: {e}");
                break;
            }
        }
        shared.changed.notify_all();
    }
    let mut state = shared.state.lock().expect("spawner lock");
    state.lost = true;
    for (_, reply) in state.pending.drain() {
        let _ = reply.send(Err(std::io::Error::other("the spawner process is gone")));
    }
    shared.changed.notify_all();
}

fn handle(state: &mut ClientState, reply: Reply) {
    match reply {
        Reply::Spawned {
            id,
            pid,
            start_time,
        } => {
            let exit = state
                .exits
                .entry(pid)
                .or_insert_with(|| watch::Sender::new(None))
                .subscribe();
            if let Some(r) = state.pending.remove(&id) {
                let _ = r.send(Ok((pid, start_time, exit)));
            }
        }
        Reply::Failed { id, errno, message } => {
            if let Some(r) = state.pending.remove(&id) {
                let error = match errno {
                    Some(errno) => std::io::Error::from_raw_os_error(errno),
                    None => std::io::Error::other(message),
                };
                let _ = r.send(Err(error));
            }
        }
        Reply::Exited { pid, status } => {
            if let Some(tx) = state.exits.remove(&pid) {
                tx.send_replace(Some(ExitStatus::from_raw(status)));
            }
        }
    }
}

/// The spawner process itself (`dropless spawner`): serves requests on
/// the lifeline (fd 3) until it is closed, then returns, and the replicas
/// get SIGTERM from the kernel.
pub fn run() -> std::io::Result<()> {
    // SAFETY: `serve` started this process with the lifeline as fd 3,
    // owned by nothing else here.
    #[allow(unsafe_code)]
    let lifeline = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(LIFELINE_FD) };
    nix::fcntl::fcntl(
        &lifeline,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    serve_lifeline(&Arc::new(lifeline))
}

/// Serves spawn requests on `lifeline` until `serve`'s end is closed.
fn serve_lifeline(lifeline: &Arc<OwnedFd>) -> std::io::Result<()> {
    loop {
        match wire::recv::<Request>(lifeline.as_fd(), true, MESSAGE_MAX) {
            Ok(Received::Message(request, fds)) => spawn(request, fds, lifeline),
            Ok(Received::Empty) => {}
            Ok(Received::Closed) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // `serve` exited before reading all the spawner said (a
            // replica's exit, say): closed all the same, nothing to report
            // on the terminal `serve` has just written its last line to.
            Err(e) if serve_is_gone(&e) => return Ok(()),
            Err(e) => {
                eprintln!("dropless spawner: {e}");
                return Err(e);
            }
        }
    }
}

/// Whether an error on the lifeline means `serve`'s end of it is closed:
/// a socket closed with messages it had not read resets its peer.
fn serve_is_gone(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
    )
}

/// Starts one replica and a thread that reaps it and reports its exit.
fn spawn(request: Request, fds: Vec<OwnedFd>, lifeline: &Arc<OwnedFd>) {
    let Request::Spawn {
        id,
        program,
        args,
        env,
        listen,
        nofile,
    } = request;
    let mut fds = fds.into_iter();
    let answer = |reply: Reply| {
        if let Err(e) = wire::send(lifeline.as_fd(), &reply, &[])
            && !serve_is_gone(&e)
        {
            eprintln!("dropless spawner: cannot answer: {e}");
        }
    };
    let (Some(output), listen) = (fds.next(), if listen { fds.next() } else { None }) else {
        answer(Reply::Failed {
            id,
            errno: None,
            message: "no output pipe came with the request".into(),
        });
        return;
    };
    let errors = match output.try_clone() {
        Ok(e) => e,
        Err(e) => {
            answer(Reply::Failed {
                id,
                errno: e.raw_os_error(),
                message: e.to_string(),
            });
            return;
        }
    };
    let mut command = std::process::Command::new(&program);
    command
        .args(&args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(output))
        .stderr(Stdio::from(errors))
        .process_group(0);
    crate::supervisor::process::prepare_child(
        &mut command,
        listen.as_ref().map(|l| l.as_raw_fd()),
        nofile,
    );
    match command.spawn() {
        Ok(mut child) => {
            let pid = child.id();
            let start_time = crate::supervisor::leftovers::start_time(pid);
            // The pipe and the socket are the replica's now.
            drop(command);
            drop(listen);
            answer(Reply::Spawned {
                id,
                pid,
                start_time,
            });
            let lifeline = Arc::clone(lifeline);
            let _ = std::thread::Builder::new()
                .name(format!("wait {pid}"))
                .spawn(move || {
                    let status = child.wait().map(|s| s.into_raw()).unwrap_or(1 << 8);
                    let _ = wire::send(lifeline.as_fd(), &Reply::Exited { pid, status }, &[]);
                });
        }
        Err(e) => answer(Reply::Failed {
            id,
            errno: e.raw_os_error(),
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `serve` leaving with a message of the spawner unread (a replica's
    /// exit, as `serve` fails its start) ends the spawner quietly, as a
    /// plain close does: no second line after `serve`'s one-line error.
    #[test]
    fn a_lifeline_closed_with_replies_unread_ends_the_spawner_without_an_error() {
        let (ours, theirs) = wire::pair().unwrap();
        let spawner = std::thread::spawn(move || serve_lifeline(&Arc::new(theirs)));
        let (_read, output) = nix::unistd::pipe().unwrap();
        let request = Request::Spawn {
            id: 1,
            program: "true".into(),
            args: vec![],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            listen: false,
            nofile: None,
        };
        wire::send(ours.as_fd(), &request, &[output.as_raw_fd()]).unwrap();
        drop(output);
        // Its answer is there, unread, when our end closes.
        let mut ready = [nix::poll::PollFd::new(
            ours.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        nix::poll::poll(&mut ready, nix::poll::PollTimeout::from(10_000u16)).unwrap();
        assert!(
            ready[0]
                .revents()
                .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLIN)),
            "the spawner answered"
        );
        drop(ours);
        let ended = spawner.join().unwrap();
        assert!(ended.is_ok(), "{ended:?}");
    }
}
