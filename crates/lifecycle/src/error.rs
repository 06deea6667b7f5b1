//! Errors of the lifecycle.

use std::{fmt, time::Duration};

/// An error and its sources on one line, `outer: inner: root`: what the
/// workspace's logs and failure messages print for a chained error.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Why [`crate::Lifecycle::serve`] failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shutdown did not finish within the grace period.
    #[error("shutdown did not finish within the grace period of {grace:?}: {unfinished}")]
    GraceExceeded {
        /// The grace period that ran out.
        grace: Duration,
        /// What was still running when it ran out.
        unfinished: Unfinished,
    },
    /// `serve` was called a second time on the same lifecycle.
    #[error("serve was already called on this lifecycle")]
    AlreadyServed,
}

/// What was still running when the grace period ran out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unfinished {
    /// Client connections still open.
    pub connections: usize,
    /// Tracked tasks still running: (name, count).
    pub tasks: Vec<(String, usize)>,
    /// Shutdown hooks that did not finish or never ran, by name.
    pub hooks: Vec<String>,
    /// WebSockets still open (their [`crate::WebSocketGuard`] not dropped).
    pub websockets: usize,
}

impl Unfinished {
    /// Whether nothing was left running.
    pub fn is_empty(&self) -> bool {
        self.connections == 0
            && self.tasks.is_empty()
            && self.hooks.is_empty()
            && self.websockets == 0
    }
}

impl fmt::Display for Unfinished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.connections > 0 {
            parts.push(format!("{} connection(s)", self.connections));
        }
        for (name, count) in &self.tasks {
            parts.push(format!("task {name:?} ×{count}"));
        }
        for name in &self.hooks {
            parts.push(format!("hook {name:?}"));
        }
        if self.websockets > 0 {
            parts.push(format!("{} WebSocket(s)", self.websockets));
        }
        if parts.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot query")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn error_chain_joins_every_source() {
        let inner = std::io::Error::other("connection refused");
        assert_eq!(
            error_chain(&Outer(inner)),
            "cannot query: connection refused"
        );
        assert_eq!(error_chain(&std::io::Error::other("alone")), "alone");
    }
}
