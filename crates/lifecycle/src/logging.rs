//! A stderr log subscriber for binaries (feature `logging`).
//!
//! Libraries only emit `tracing` events; a binary chooses where they go. This
//! is the choice dropless's own binaries make: stderr, `RUST_LOG` for the
//! level (info by default), and colours only when stderr is a terminal and
//! `NO_COLOR` is unset, so a log file, a pipe or a CI log never fills with
//! escape codes.

use std::io::IsTerminal;

/// Whether log output on stderr may carry ANSI colours: stderr is a
/// terminal and `NO_COLOR` is unset or empty (<https://no-color.org>).
pub fn colours_on_stderr() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    std::io::stderr().is_terminal() && !no_color
}

/// Installs the stderr subscriber described in the module docs. Does nothing
/// when a global subscriber is already set (tests, embedding binaries).
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colours_on_stderr())
        .try_init();
}
