//! Events: every change of a replica's state or a rollout's phase, broadcast
//! to the log, `dropless events` and the trial timeline.

use std::fmt;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::replica::ReplicaState;
use crate::rollout::RolloutPhase;

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
}

impl Event {
    /// An event stamped now.
    pub fn now(service: &str, kind: EventKind) -> Self {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
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
        }
        Ok(())
    }
}
