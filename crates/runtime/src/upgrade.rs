//! `dropless upgrade`: the runtime replaces its own binary without dropping
//! a request or restarting a replica (see docs/runtime.md, "Upgrading the
//! runtime").
//!
//! - [`spawner`]: the process that forks and reaps every replica, so that
//!   replicas outlive the `serve` that started them but not the runtime.
//! - [`handover`]: the old `serve`'s side ([`handover::Upgrader`]).
//! - [`adopt`]: the new `serve`'s side ([`adopt::Adoption`]).
//! - [`notify`]: systemd's `READY=1` and `MAINPID=` (`Type=notify`).
//! - [`state`]: what is handed over, versioned ([`state::FORMAT`]).
//! - [`wire`]: JSON messages with file descriptors over a Unix socket.

pub mod adopt;
pub mod handover;
pub mod notify;
pub mod spawner;
pub mod state;
pub mod wire;

use std::os::fd::RawFd;

/// Makes `fd` the descriptor `target` of the process `command` starts
/// (open across exec; every other descriptor of ours is close-on-exec).
pub(crate) fn pass_fd(command: &mut std::process::Command, fd: RawFd, target: RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure makes one async-signal-safe
    // system call (dup2 or fcntl) and allocates nothing; the caller keeps
    // `fd` open until the spawn returns.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            let moved = if fd == target {
                nix::libc::fcntl(target, nix::libc::F_SETFD, 0)
            } else {
                nix::libc::dup2(fd, target)
            };
            if moved == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
