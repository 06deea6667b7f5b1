//! systemd's readiness protocol (`sd_notify`), for a unit with
//! `Type=notify` and `NotifyAccess=all`: `READY=1` once `serve` serves,
//! and `MAINPID=` the new `serve` after an upgrade, so that systemd
//! follows the runtime from process to process. Without `NOTIFY_SOCKET` in
//! the environment (not under systemd) it does nothing.

/// The variable systemd sets to its notification socket.
pub const NOTIFY_ENV: &str = "NOTIFY_SOCKET";

/// Sends `state` (`READY=1`, `MAINPID=123`, lines joined by `\n`) to
/// systemd; errors are logged, never fatal.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os(NOTIFY_ENV) else {
        return;
    };
    if let Err(e) = send(&path, state) {
        tracing::warn!("cannot notify systemd at {}: {e}", path.to_string_lossy());
    }
}

fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    // `@name` is an abstract socket.
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(path)?,
    };
    socket.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_reaches_the_notification_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "MAINPID=42\nREADY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"MAINPID=42\nREADY=1");
    }
}
