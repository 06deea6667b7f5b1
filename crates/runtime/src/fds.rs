//! File descriptors. Every client connection, control connection, probe,
//! upstream socket and replica start takes some; a flood of connections must
//! not leave none for what keeps healthy replicas alive.
//!
//! - [`raise_limit`] lifts the soft `RLIMIT_NOFILE` to the hard limit when
//!   `serve` starts, as Go's runtime does; replicas get the original soft
//!   limit back ([`child_limit`]), so a program that uses `select(2)` keeps
//!   working.
//! - [`connection_budget`] is how many client connections the proxy may hold
//!   and still leave [`RESERVE`] descriptors for probes, replica starts,
//!   log files and state saves.
//! - [`is_exhausted`] tells a local shortage (no descriptor, no memory, no
//!   port) apart from a peer's failure: a probe that cannot even open its
//!   socket says nothing about the replica.

use std::sync::OnceLock;

use nix::sys::resource::{Resource, getrlimit, rlim_t, setrlimit};

/// Descriptors kept back from client and control connections: probes,
/// replica starts (log files, pipes), the epoll and event descriptors of the
/// proxy threads, state saves.
pub const RESERVE: u64 = 256;

/// Highest soft limit set when the hard limit is unlimited (Linux's default
/// `fs.nr_open`).
const UNLIMITED_CAP: rlim_t = 1 << 20;

/// The limits found before [`raise_limit`] changed them.
static ORIGINAL: OnceLock<(rlim_t, rlim_t)> = OnceLock::new();

/// Raises the soft open-file limit to the hard one and returns the soft
/// limit now in force. When it cannot be read, `None`; when it cannot be
/// raised, the unchanged soft limit.
pub fn raise_limit() -> Option<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    ORIGINAL.get_or_init(|| (soft, hard));
    let target = hard.min(UNLIMITED_CAP).max(soft);
    if target == soft {
        return Some(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        Ok(()) => {
            tracing::debug!("open-file limit raised from {soft} to {target}");
            Some(target)
        }
        Err(e) => {
            tracing::debug!("open-file limit stays {soft}: raising it to {target} failed: {e}");
            Some(soft)
        }
    }
}

/// The open-file limits a replica starts with: the ones `serve` found, when
/// [`raise_limit`] changed them.
pub fn child_limit() -> Option<(rlim_t, rlim_t)> {
    let (soft, hard) = *ORIGINAL.get()?;
    let now = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    (now != (soft, hard)).then_some((soft, hard))
}

/// Sets the open-file limits `limits` (from [`child_limit`]); for the
/// `pre_exec` hook of a replica, so it makes one system call and allocates
/// nothing.
pub fn restore_limit(limits: Option<(rlim_t, rlim_t)>) -> std::io::Result<()> {
    if let Some((soft, hard)) = limits {
        setrlimit(Resource::RLIMIT_NOFILE, soft, hard)?;
    }
    Ok(())
}

/// Most client connections under an open-file `limit` when `control`
/// control connections may be open too: each client connection may hold an
/// upstream socket as well, so half of what [`RESERVE`] and the control
/// connections leave; at least 1.
pub fn connection_budget(limit: u64, control: usize) -> usize {
    let left = limit.saturating_sub(RESERVE.saturating_add(control as u64));
    usize::try_from(left / 2).unwrap_or(usize::MAX).max(1)
}

/// Whether `e` is a local shortage (descriptors, memory, ports) rather than
/// something the peer did.
pub fn is_exhausted(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM | Errno::EADDRNOTAVAIL)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_the_reserve_and_an_upstream_per_client() {
        assert_eq!(connection_budget(1024, 128), (1024 - 256 - 128) / 2);
        assert_eq!(connection_budget(100, 128), 1, "never 0");
        assert!(connection_budget(u64::MAX, usize::MAX) >= 1, "no overflow");
    }

    #[test]
    fn only_local_shortages_count_as_exhaustion() {
        let e = |errno: nix::errno::Errno| std::io::Error::from_raw_os_error(errno as i32);
        assert!(is_exhausted(&e(nix::errno::Errno::EMFILE)));
        assert!(is_exhausted(&e(nix::errno::Errno::ENFILE)));
        assert!(!is_exhausted(&e(nix::errno::Errno::ECONNREFUSED)));
        assert!(!is_exhausted(&std::io::Error::other("x")));
    }
}
