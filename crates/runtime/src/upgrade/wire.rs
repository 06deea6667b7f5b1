//! Messages between dropless processes over a Unix `SOCK_SEQPACKET`
//! socket: one JSON value per packet, with file descriptors passed
//! alongside (`SCM_RIGHTS`), as Pingora's `upgrade_sock` passes its
//! listeners. A packet is read whole or not at all, so a reader can stop
//! between two messages and another process go on from the next one.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest message read (the handed-over state is the largest).
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// Most descriptors passed in one message (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;

/// A connected pair of `SOCK_SEQPACKET` sockets, close-on-exec.
pub fn pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(std::io::Error::from)
}

/// Sends `message` as JSON with `fds` in one packet (blocking).
pub fn send(
    socket: BorrowedFd<'_>,
    message: &impl Serialize,
    fds: &[RawFd],
) -> std::io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(std::io::Error::other(format!(
            "{} descriptors to pass, at most {MAX_FDS} fit in a message",
            fds.len()
        )));
    }
    let bytes = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// What [`recv`] read.
#[derive(Debug)]
pub enum Received<T> {
    /// A message and the descriptors that came with it.
    Message(T, Vec<OwnedFd>),
    /// The other end is closed.
    Closed,
    /// Nothing to read now (only with `wait == false`).
    Empty,
}

/// Reads one message of at most `max` bytes; with `wait == false` it does
/// not block.
pub fn recv<T: DeserializeOwned>(
    socket: BorrowedFd<'_>,
    wait: bool,
    max: usize,
) -> std::io::Result<Received<T>> {
    let mut buf = vec![0u8; max];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut flags = MsgFlags::MSG_CMSG_CLOEXEC;
    if !wait {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    let (len, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), flags) {
            Ok(msg) => msg,
            Err(nix::errno::Errno::EAGAIN) if !wait => return Ok(Received::Empty),
            Err(e) => return Err(e.into()),
        };
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                // SAFETY: the kernel just installed these descriptors in
                // this process for this message; nothing else owns them.
                #[allow(unsafe_code)]
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        if msg.flags.contains(MsgFlags::MSG_TRUNC) {
            return Err(std::io::Error::other("message larger than its limit"));
        }
        (msg.bytes, fds)
    };
    if len == 0 && fds.is_empty() {
        return Ok(Received::Closed);
    }
    let message = serde_json::from_slice(&buf[..len]).map_err(std::io::Error::other)?;
    Ok(Received::Message(message, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_message_and_its_descriptors_arrive_together_and_eof_is_closed() {
        let (a, b) = pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        send(a.as_fd(), &vec![1, 2, 3], &[file.as_raw_fd()]).unwrap();
        match recv::<Vec<u32>>(b.as_fd(), true, 64).unwrap() {
            Received::Message(v, fds) => {
                assert_eq!(v, [1, 2, 3]);
                assert_eq!(fds.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            recv::<u32>(b.as_fd(), false, 64).unwrap(),
            Received::Empty
        ));
        drop(a);
        assert!(matches!(
            recv::<u32>(b.as_fd(), true, 64).unwrap(),
            Received::Closed
        ));
    }
}
