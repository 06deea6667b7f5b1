//! Events: every change of a replica's state or a rollout's phase, broadcast
//! to the log, `dropless events` and the trial timeline; and the two state
//! machines they report ([`ReplicaState`], [`RolloutPhase`]). A leaf: every
//! other module may use it, it uses none of them.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Recent events kept for a subscriber that asks for history ([`Replay`]).
pub const HISTORY: usize = 1000;

/// Where events go: a broadcast to the live subscribers, and the last
/// [`HISTORY`] events kept, so that a subscriber can start with the recent
/// past. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Events {
    live: broadcast::Sender<Event>,
    /// Appended under this lock together with the broadcast, so that a
    /// replay and the subscription after it neither miss nor repeat one.
    recent: Arc<Mutex<VecDeque<Event>>>,
}

/// The recent events a subscriber gets before the live ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Replay {
    /// None: live events only.
    #[default]
    None,
    /// The last N kept.
    Last(usize),
    /// Those kept that happened within this long before now.
    Since(Duration),
}

impl Events {
    /// Events with room for `buffer` unread ones per live subscriber.
    pub fn new(buffer: usize) -> Self {
        Self {
            live: broadcast::channel(buffer).0,
            recent: Arc::new(Mutex::new(VecDeque::with_capacity(HISTORY))),
        }
    }

    /// Keeps `event` and broadcasts it.
    pub fn send(&self, event: Event) {
        let mut recent = self.recent.lock().expect("events lock");
        if recent.len() == HISTORY {
            recent.pop_front();
        }
        recent.push_back(event.clone());
        let _ = self.live.send(event);
    }

    /// A subscription to every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }

    /// The recent events `replay` asks for, oldest first, and a
    /// subscription to every event after them.
    pub fn replay(&self, replay: Replay) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let recent = self.recent.lock().expect("events lock");
        let past = match replay {
            Replay::None => Vec::new(),
            Replay::Last(n) => recent
                .iter()
                .skip(recent.len().saturating_sub(n))
                .cloned()
                .collect(),
            Replay::Since(within) => {
                let from = now_ms().saturating_sub(within.as_millis() as u64);
                recent.iter().filter(|e| e.at_ms >= from).cloned().collect()
            }
        };
        (past, self.live.subscribe())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// One event, stamped with the wall-clock time in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The service the event belongs to.
    pub service: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What an [`Event`] reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// A replica changed state.
    Replica {
        /// Replica name, e.g. `web-3`.
        replica: String,
        /// Its new state.
        state: ReplicaState,
        /// The address it serves on.
        addr: SocketAddr,
        /// Why, when there is more to say (exit status, probe failure).
        detail: Option<String>,
    },
    /// A rollout changed phase.
    Rollout {
        /// Rollout number within the service.
        id: u64,
        /// Its new phase.
        phase: RolloutPhase,
        /// Why, when there is more to say.
        detail: Option<String>,
    },
    /// The discovery of a service's replicas (DNS) started or retired
    /// replicas, or its health changed (failing, resolving again).
    Discovery {
        /// `dns:NAME:PORT`.
        source: String,
        /// `replicas` (some added or retired), `failing` or `resolving`.
        state: String,
        /// The addresses added and removed, or the resolution error.
        detail: String,
    },
}

impl Event {
    /// An event stamped now.
    pub fn now(service: &str, kind: EventKind) -> Self {
        let at_ms = now_ms();
        Self {
            at_ms,
            service: service.to_string(),
            kind,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            EventKind::Replica {
                replica,
                state,
                addr,
                detail,
            } => {
                write!(f, "{}: replica {replica} ({addr}) {state}", self.service)?;
                if let Some(d) = detail {
                    write!(f, ": {d}")?;
                }
            }
            EventKind::Rollout { id, phase, detail } => {
                write!(f, "{}: rollout {id} {phase}", self.service)?;
                if let Some(d) = detail {
                    write!(f, ": {d}")?;
                }
            }
            EventKind::Discovery {
                source,
                state,
                detail,
            } => write!(f, "{}: discovery {source} {state}: {detail}", self.service)?,
        }
        Ok(())
    }
}

/// Where a replica is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// Started, not yet passing its probe; gets no traffic.
    Starting,
    /// Passing its probe; gets traffic.
    Ready,
    /// Gets no new traffic; its in-flight requests finish.
    Draining,
    /// Signalled (SIGTERM, then SIGKILL after the grace period).
    Stopping,
    /// Gone after being stopped.
    Exited,
    /// Crashed, failed its probe, or never became ready.
    Failed,
}

impl ReplicaState {
    /// True once the replica is gone for good.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Exited | Self::Failed)
    }

    /// The state's name as written in events and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Draining => "draining",
            Self::Stopping => "stopping",
            Self::Exited => "exited",
            Self::Failed => "failed",
        }
    }

    pub(crate) fn rank(self) -> u8 {
        match self {
            Self::Starting => 0,
            Self::Ready => 1,
            Self::Draining => 2,
            Self::Stopping => 3,
            Self::Exited | Self::Failed => 4,
        }
    }
}

impl fmt::Display for ReplicaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutPhase {
    /// Accepted, waiting for a previous rollout of the service to end.
    Pending,
    /// New replicas are starting and being probed.
    Starting,
    /// Traffic moves to the new replicas (blue-green).
    Switching,
    /// Old replicas are being retired.
    Draining,
    /// Done: the desired state is the new one.
    Completed,
    /// A new replica failed, or the new desired state could not be saved;
    /// the old release is being restored.
    Aborted,
    /// The old release serves again after an abort.
    RolledBack,
}

impl fmt::Display for RolloutPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pending => "pending",
            Self::Starting => "starting",
            Self::Switching => "switching",
            Self::Draining => "draining",
            Self::Completed => "completed",
            Self::Aborted => "aborted",
            Self::RolledBack => "rolled_back",
        })
    }
}
