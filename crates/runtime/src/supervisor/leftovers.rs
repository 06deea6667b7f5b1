//! Replicas a previous `serve` left behind. The kernel sends a replica
//! SIGTERM when `serve` dies (see [`crate::supervisor::process`]), but one that ignores
//! it survives a `serve` killed with SIGKILL. So each replica's process
//! group and start time are recorded in `STATE_DIR/replicas.json` (0600,
//! replaced atomically whenever a replica starts or exits), and a starting
//! `serve` retires what the file still lists: SIGTERM to the group, the
//! service's grace, SIGKILL. A process is signalled only while its start
//! time (`/proc/PID/stat`, field 22) is the recorded one, so a pid the
//! kernel gave to another process since is never signalled.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// How often a leftover is looked at while it is given time to exit.
const POLL: Duration = Duration::from_millis(20);

/// Longest wait for a leftover to be gone after SIGKILL.
pub const KILL_WAIT: Duration = Duration::from_secs(5);

/// One process as recorded: its pid and when it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    /// Process id; for a replica also its process group id.
    pub pid: u32,
    /// Start time in clock ticks after boot (`/proc/PID/stat`, field 22).
    pub start_time: u64,
}

/// A replica process as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedReplica {
    /// Service name.
    pub service: String,
    /// Replica name.
    pub replica: String,
    /// Its process (the leader of its process group).
    pub process: ProcessId,
}

/// The record of the replicas a running `serve` owns, kept in a file.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    record: Mutex<Record>,
}

/// Another `serve` still runs on the state dir.
#[derive(Debug, thiserror::Error)]
#[error(
    "state dir {} is in use by `dropless serve` pid {pid}: stop it, or give this one another --state-dir",
    dir.display()
)]
pub struct InUse {
    /// The state dir.
    pub dir: PathBuf,
    /// The other `serve`.
    pub pid: u32,
}

/// What `replicas.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Record {
    /// The `serve` that owns the replicas, while it runs.
    serve: Option<ProcessId>,
    /// Its replicas by pid.
    replicas: BTreeMap<u32, RecordedReplica>,
}

impl Registry {
    /// The registry of this `serve` at `path` (`STATE_DIR/replicas.json`);
    /// refused while another live `serve` is recorded there.
    pub fn new(path: PathBuf) -> Result<Self, InUse> {
        let previous = read(&path);
        let me = std::process::id();
        // The `serve` handing its runtime over to this one (an upgrade) is
        // its parent, and still runs until this one serves.
        let parent = match crate::upgrade::adopt::is_adopting() {
            true => nix::unistd::getppid().as_raw() as u32,
            false => me,
        };
        if let Some(other) = previous
            .serve
            .filter(|s| s.pid != me && s.pid != parent && is_alive(*s))
        {
            return Err(InUse {
                dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                pid: other.pid,
            });
        }
        let serve = start_time(me).map(|start_time| ProcessId {
            pid: me,
            start_time,
        });
        Ok(Self {
            path,
            record: Mutex::new(Record {
                serve,
                replicas: BTreeMap::new(),
            }),
        })
    }

    /// Retires the replicas the previous `serve` recorded and left running
    /// (see the module doc), `grace` giving each service's time between
    /// SIGTERM and SIGKILL; then records this `serve` with no replica.
    /// Returns the replicas it signalled.
    pub async fn retire_leftovers(&self, grace: impl Fn(&str) -> Duration) -> Vec<RecordedReplica> {
        let previous = read(&self.path);
        let leftovers: Vec<_> = previous
            .replicas
            .into_values()
            .filter(|r| {
                let alive = is_alive(r.process);
                if !alive {
                    tracing::debug!(
                        replica = r.replica,
                        pid = r.process.pid,
                        "recorded replica is gone"
                    );
                }
                alive
            })
            .collect();
        let retirements = leftovers.iter().map(|r| retire(r, grace(&r.service)));
        futures_util::future::join_all(retirements).await;
        let record = self.record.lock().expect("registry lock");
        self.write(&record);
        leftovers
    }

    /// Records a replica that started.
    pub fn add(&self, replica: RecordedReplica) {
        let mut record = self.record.lock().expect("registry lock");
        record.replicas.insert(replica.process.pid, replica);
        self.write(&record);
    }

    /// Forgets the replica whose process `pid` exited.
    pub fn remove(&self, pid: u32) {
        let mut record = self.record.lock().expect("registry lock");
        if record.replicas.remove(&pid).is_some() {
            self.write(&record);
        }
    }

    /// Records that this `serve` stopped, every replica retired.
    pub fn close(&self) {
        let mut record = self.record.lock().expect("registry lock");
        record.serve = None;
        self.write(&record);
    }

    /// Replaces the file. No fsync: the file matters after `serve` dies,
    /// not after the machine does (then every replica is gone too).
    fn write(&self, record: &Record) {
        let json = serde_json::to_vec_pretty(record).expect("the record serializes");
        if let Err(e) = crate::desired::write_private(&self.path, &json, false) {
            tracing::error!("cannot record the replicas in {}: {e}", self.path.display());
        }
    }
}

/// The start time of process `pid` (`/proc/PID/stat`, field 22), while it
/// exists (a zombie too).
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|(_, start)| start)
}

/// True when `process` still runs (not a zombie) and is the one recorded:
/// its pid has the recorded start time.
pub fn is_alive(process: ProcessId) -> bool {
    matches!(stat(process.pid), Some((state, start)) if state != 'Z' && start == process.start_time)
}

/// SIGTERM to the leftover's group, up to `grace` for it to exit, SIGKILL;
/// each signal only while it is the recorded process.
async fn retire(leftover: &RecordedReplica, grace: Duration) {
    let (name, process) = (&leftover.replica, leftover.process);
    tracing::warn!(
        "replica {name} (pid {}) of a previous serve still runs: SIGTERM to its process group, SIGKILL after {grace:?}",
        process.pid
    );
    if !signal(process, Signal::SIGTERM) || exited_within(process, grace).await {
        tracing::info!("leftover replica {name} (pid {}) exited", process.pid);
        return;
    }
    tracing::warn!(
        "leftover replica {name} (pid {}) still runs {grace:?} after SIGTERM: SIGKILL",
        process.pid
    );
    if signal(process, Signal::SIGKILL) && !exited_within(process, KILL_WAIT).await {
        tracing::error!(
            "leftover replica {name} (pid {}) survived SIGKILL for {KILL_WAIT:?}",
            process.pid
        );
    }
}

/// Sends `signal` to the process group led by `process` if it is still the
/// recorded process; returns whether it was sent.
fn signal(process: ProcessId, signal: Signal) -> bool {
    if !is_alive(process) {
        return false;
    }
    let Ok(pid) = i32::try_from(process.pid) else {
        return false;
    };
    match killpg(Pid::from_raw(pid), signal) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(pid, %signal, error = %e, "signal to a leftover's process group");
            false
        }
    }
}

/// Waits up to `timeout` for `process` to be gone; returns whether it is.
async fn exited_within(process: ProcessId, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while is_alive(process) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
    true
}

/// The state (`R`, `S`, `Z`, …) and start time of `pid`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name (field 2) is in parentheses and may hold anything.
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); starttime is field 22.
    let state = fields.first()?.chars().next()?;
    let start = fields.get(22 - 3)?.parse().ok()?;
    Some((state, start))
}

/// The record at `path`; an empty one when it is missing or unreadable.
fn read(path: &Path) -> Record {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!("ignoring {} ({e})", path.display());
            Record::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Record::default(),
        Err(e) => {
            tracing::warn!("cannot read {} ({e})", path.display());
            Record::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sleep 30` in its own process group, recorded in a registry file.
    fn sleeper(dir: &Path, start_time_offset: u64) -> (std::process::Child, Registry) {
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let path = dir.join("replicas.json");
        let previous = Registry::new(path.clone()).unwrap();
        previous.add(RecordedReplica {
            service: "web".into(),
            replica: "web-1".into(),
            process: ProcessId {
                pid: child.id(),
                start_time: start_time(child.id()).unwrap() + start_time_offset,
            },
        });
        (child, Registry::new(path).unwrap())
    }

    /// A recorded `sleeper` and what the next registry signalled of it.
    async fn retire_sleeper(offset: u64) -> (std::process::Child, Vec<RecordedReplica>, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (child, registry) = sleeper(dir.path(), offset);
        let signalled = registry
            .retire_leftovers(|_| Duration::from_millis(100))
            .await;
        (child, signalled, dir.keep())
    }

    #[tokio::test]
    async fn a_recorded_replica_whose_start_time_differs_is_not_signalled() {
        // The pid now belongs to a process that started later: pid reuse.
        let (mut child, signalled, dir) = retire_sleeper(1).await;
        std::fs::remove_dir_all(dir).unwrap();
        assert!(signalled.is_empty(), "{signalled:?}");
        assert_eq!(child.try_wait().unwrap(), None, "still running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[tokio::test]
    async fn a_recorded_replica_still_running_is_retired() {
        let (mut child, signalled, dir) = retire_sleeper(0).await;
        assert_eq!(signalled.len(), 1);
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
        // The file now records this serve and no replica.
        let record = read(&dir.join("replicas.json"));
        assert!(record.replicas.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_live_serve_recorded_on_the_state_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replicas.json");
        // A live process that is not this one: our parent (cargo's runner).
        let other = nix::unistd::getppid().as_raw() as u32;
        let recorded = |start_time| {
            let record = Record {
                serve: Some(ProcessId {
                    pid: other,
                    start_time,
                }),
                replicas: BTreeMap::new(),
            };
            std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();
            Registry::new(path.clone())
        };
        let started = start_time(other).unwrap();
        let err = recorded(started).unwrap_err().to_string();
        assert!(err.contains(&other.to_string()), "{err}");
        // A pid whose start time differs is another process: not in use.
        assert!(recorded(started + 1).is_ok());
    }
}
