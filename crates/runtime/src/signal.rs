//! Process signals mapped to one shutdown value: SIGTERM asks for a graceful
//! stop, SIGINT (Ctrl-C) for a fast one. Tests pass the value directly.
//! SIGHUP asks for a reload ([`hangups`], [`crate::reload`]).

/// How the runtime should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Stop accepting, finish in-flight requests, retire replicas in order.
    Graceful,
    /// The same order, without waiting for drains or grace periods.
    Fast,
}

/// Waits for SIGTERM (graceful) or SIGINT (fast).
pub async fn recv() -> Shutdown {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers there is nothing to wait for.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => Shutdown::Graceful,
        _ = int.recv() => Shutdown::Fast,
    }
}

/// SIGHUP from the moment this returns (it no longer ends the process):
/// each `recv` waits for the next one.
pub fn hangups() -> std::io::Result<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup())
}
