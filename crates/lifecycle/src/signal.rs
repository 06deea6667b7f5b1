//! Process signals mapped to what they mean for shutdown.
//!
//! SIGTERM asks for a graceful shutdown, SIGINT (Ctrl-C) for a fast one. The
//! rest of the crate only sees [`Signal`], so tests inject the value instead
//! of sending signals to themselves.

use std::io;

use tokio::signal::unix::{self, SignalKind};

/// A request to shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Graceful (SIGTERM): readiness off, pre-stop delay, drain with "one
    /// more message", tasks, hooks.
    Terminate,
    /// Fast (SIGINT): no pre-stop delay, idle connections hung up at once;
    /// in-flight requests, tasks and hooks are still awaited within the
    /// grace period.
    Interrupt,
}

impl From<()> for Signal {
    /// A plain trigger (a oneshot, a future of `()`) means a graceful stop.
    fn from((): ()) -> Self {
        Signal::Terminate
    }
}

/// SIGTERM and SIGINT handlers, installed when this value is made.
///
/// Make it early (before binding), so that a signal that arrives during
/// startup is not lost and does not kill the process with the default
/// action.
#[derive(Debug)]
pub struct Signals {
    term: unix::Signal,
    int: unix::Signal,
}

impl Signals {
    /// Installs the handlers. Must be called within a tokio runtime.
    pub fn listen() -> io::Result<Self> {
        Ok(Self {
            term: unix::signal(SignalKind::terminate())?,
            int: unix::signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT.
    pub async fn recv(mut self) -> Signal {
        self.next().await
    }

    /// Waits for the next SIGTERM or SIGINT, keeping the handlers installed.
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Terminate,
            _ = self.int.recv() => Signal::Interrupt,
        }
    }
}
