//! Ctrl-C and SIGTERM for the commands that stop cleanly on them (`load`,
//! `trial`, `demo`): exit code 130 when they did.

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Exit code of a command stopped by Ctrl-C or SIGTERM (128 + SIGINT, as a
/// shell reports it).
pub(crate) const INTERRUPTED: u8 = 130;

/// Ctrl-C (SIGINT) and SIGTERM, caught from now on instead of ending the
/// process.
pub(crate) struct Interrupts {
    int: Signal,
    term: Signal,
}

impl Interrupts {
    /// Catches both; `None` when a handler cannot be installed. Needs the
    /// async runtime.
    pub(crate) fn catch() -> Option<Interrupts> {
        Some(Interrupts {
            int: signal(SignalKind::interrupt()).ok()?,
            term: signal(SignalKind::terminate()).ok()?,
        })
    }

    /// The next Ctrl-C or SIGTERM.
    pub(crate) async fn next(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// A token cancelled at the first Ctrl-C or SIGTERM; needs the async
/// runtime (call it inside `Runtime::enter` or `block_on`).
pub(crate) fn stop_token() -> CancellationToken {
    let stop = CancellationToken::new();
    if let Some(mut interrupts) = Interrupts::catch() {
        let token = stop.clone();
        tokio::spawn(async move {
            interrupts.next().await;
            eprintln!(
                "dropless: stopping (the runtime retires its replicas, partial reports are written)"
            );
            token.cancel();
        });
    }
    stop
}
