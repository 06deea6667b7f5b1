//! What an old `serve` hands to the new one, versioned: a new binary that
//! does not know [`FORMAT`] refuses the handover and the old one keeps
//! serving.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::desired::Desired;
use crate::event::{ReplicaState, RolloutPhase};

/// The version of [`Handover`]; a reader refuses any other.
pub const FORMAT: u32 = 1;

/// The runtime's identity, shown by `status` and `version`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// The dropless version of the running `serve`.
    pub version: String,
    /// The pid of the running `serve`.
    pub pid: u32,
    /// The pid of the spawner process (the replicas' parent), if any.
    pub spawner_pid: Option<u32>,
    /// When the runtime started (RFC 3339), before any upgrade.
    pub running_since: String,
    /// Upgrades since then.
    pub upgrades: u32,
    /// When the last upgrade completed (RFC 3339), if any.
    pub last_upgrade: Option<String>,
}

impl RuntimeInfo {
    /// This process, just started, not upgraded.
    pub fn started() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            spawner_pid: crate::upgrade::spawner::client().map(|s| s.pid()),
            running_since: now(),
            upgrades: 0,
            last_upgrade: None,
        }
    }

    /// This process, having taken over from `before`.
    pub fn upgraded_from(before: &RuntimeInfo) -> Self {
        Self {
            running_since: before.running_since.clone(),
            upgrades: before.upgrades + 1,
            last_upgrade: Some(now()),
            ..Self::started()
        }
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The state handed over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Handover {
    /// [`FORMAT`] of the writer.
    pub format: u32,
    /// The old runtime.
    pub runtime: RuntimeInfo,
    /// Every service.
    pub services: Vec<ServiceHandover>,
    /// Where each descriptor is in the message's list.
    pub fds: FdLayout,
}

/// The positions of the passed descriptors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FdLayout {
    /// The proxy's listening socket.
    pub proxy: usize,
    /// The spawner's lifeline.
    pub spawner: usize,
    /// The control socket, and its path.
    pub control: Option<(usize, std::path::PathBuf)>,
    /// The TCP control API's socket.
    pub control_tcp: Option<usize>,
}

/// One service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceHandover {
    /// Its name.
    pub name: String,
    /// Its desired state.
    pub desired: Desired,
    /// The number the next replica gets.
    pub next_replica: u64,
    /// The id the next rollout gets.
    pub next_rollout: u64,
    /// The last rollout and its phase.
    pub last_rollout: Option<(u64, RolloutPhase)>,
    /// Its replicas.
    pub replicas: Vec<ReplicaHandover>,
}

/// One replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaHandover {
    /// Its name.
    pub name: String,
    /// The generation it runs.
    pub generation: u64,
    /// The address it serves on.
    pub addr: SocketAddr,
    /// Its state in the old `serve`.
    pub state: ReplicaState,
    /// Its process (pid = process group id), unless an unmanaged target.
    pub process: Option<HandedProcess>,
}

/// A replica's process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandedProcess {
    /// Pid, also its process group id.
    pub pid: u32,
    /// Start time (clock ticks after boot).
    pub start_time: Option<u64>,
    /// The position of its log pipe's read end among the descriptors.
    pub log_pipe: Option<usize>,
}

/// The messages of a handover, on its socket.
#[derive(Debug, Serialize, Deserialize)]
pub enum Message {
    /// Old to new: the state, with the descriptors.
    Hello(Box<Handover>),
    /// New to old: it serves; the old one may stop.
    Ready {
        /// The new `serve`'s pid.
        pid: u32,
    },
    /// New to old: it cannot take over.
    Failed {
        /// Why.
        error: String,
    },
    /// Old to new: it stops accepting; with its stdout and stderr, which
    /// the new one takes as its own.
    Commit,
}

/// Reads the format of a handed-over state before the rest, so that an
/// unknown one is refused with its number, not a parse error.
pub fn check_format(value: &serde_json::Value) -> Result<(), String> {
    let format = value
        .get("Hello")
        .and_then(|h| h.get("format"))
        .and_then(serde_json::Value::as_u64);
    match format {
        Some(f) if f == u64::from(FORMAT) => Ok(()),
        Some(f) => Err(format!(
            "the running serve hands over state format {f}, this binary reads format {FORMAT}: upgrade in steps, or restart"
        )),
        None => Err("the handover message has no state format".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_of_another_format_is_refused_naming_both_formats() {
        let other = serde_json::json!({"Hello": {"format": FORMAT + 1}});
        let err = check_format(&other).unwrap_err();
        assert!(err.contains(&format!("format {}", FORMAT + 1)), "{err}");
        assert!(err.contains(&format!("reads format {FORMAT}")), "{err}");
        let ours = serde_json::json!({"Hello": {"format": FORMAT}});
        assert_eq!(check_format(&ours), Ok(()));
        assert!(check_format(&serde_json::json!({"Ready": {"pid": 1}})).is_err());
    }
}
