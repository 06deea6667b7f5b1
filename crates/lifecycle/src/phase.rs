//! The lifecycle's explicit state machine.

use std::fmt;

/// Where a service is in its life. Phases only move forward, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Started, not ready yet: the readiness probe answers 503.
    Starting,
    /// Ready: the readiness probe answers 200.
    Ready,
    /// Shutdown has begun: readiness is 503, requests are still served and
    /// new connections accepted for the pre-stop delay.
    PreStop,
    /// The listener is closed; open connections finish their requests.
    Draining,
    /// Connections are gone; tracked background tasks are awaited.
    Tasks,
    /// Shutdown hooks run, in reverse order of registration.
    Hooks,
    /// Everything finished (or the grace period ran out).
    Stopped,
}

impl Phase {
    /// Whether the readiness probe answers 200 in this phase.
    pub fn is_ready(self) -> bool {
        self == Phase::Ready
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(self) -> bool {
        self >= Phase::PreStop
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::PreStop => "pre-stop",
            Phase::Draining => "draining",
            Phase::Tasks => "tasks",
            Phase::Hooks => "hooks",
            Phase::Stopped => "stopped",
        })
    }
}
