//! The new `serve`'s side of an upgrade ([`Adoption`]): receive the
//! sockets and the state, take the replicas over (probe them, route to
//! them, never restart them), report ready, and take the old process's
//! stdout and stderr once it steps down.

use std::collections::HashMap;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use super::handover::{HANDOVER_ENV, HANDOVER_FD};
use super::state::{Handover, Message, RuntimeInfo, check_format};
use super::wire::{self, Received};
use crate::supervisor::Supervisor;
use crate::supervisor::replica::Replica;

/// Set once this process takes over from another `serve`.
static ADOPTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process was started to take over from another `serve`
/// (its parent, which still runs until this one serves).
pub fn is_adopting() -> bool {
    ADOPTING.load(std::sync::atomic::Ordering::SeqCst)
}

/// What a new `serve` received from the old one.
#[derive(Debug)]
pub struct Adoption {
    socket: OwnedFd,
    state: Handover,
    fds: Vec<Option<OwnedFd>>,
}

/// The sockets an old `serve` handed over.
#[derive(Debug)]
pub struct HandedSockets {
    /// The proxy's listener.
    pub proxy: std::net::TcpListener,
    /// The control socket and its path.
    pub control: Option<(std::os::unix::net::UnixListener, std::path::PathBuf)>,
    /// The TCP control API's listener.
    pub control_tcp: Option<std::net::TcpListener>,
}

/// A handover that could not be taken.
#[derive(Debug, thiserror::Error)]
#[error("cannot take over from the running serve: {0}")]
pub struct AdoptError(pub String);

impl Adoption {
    /// The handover this process was started for (it has [`HANDOVER_ENV`]
    /// set), or `None` for a `serve` started the usual way.
    pub fn receive() -> Option<Result<Self, AdoptError>> {
        let fd = std::env::var(HANDOVER_ENV).ok()?;
        ADOPTING.store(true, std::sync::atomic::Ordering::SeqCst);
        // SAFETY: not yet multi-threaded (called before the runtime
        // starts), so no other thread reads the environment.
        #[allow(unsafe_code)]
        unsafe {
            std::env::remove_var(HANDOVER_ENV);
        }
        if fd != HANDOVER_FD.to_string() {
            return Some(Err(AdoptError(format!(
                "{HANDOVER_ENV}={fd} is not {HANDOVER_FD}"
            ))));
        }
        // SAFETY: the old `serve` started this process with the handover
        // socket as this descriptor, owned by nothing else here.
        #[allow(unsafe_code)]
        let socket = unsafe { OwnedFd::from_raw_fd(HANDOVER_FD) };
        Some(Self::read(socket))
    }

    fn read(socket: OwnedFd) -> Result<Self, AdoptError> {
        let fail = |socket: &OwnedFd, error: String| {
            let _ = wire::send(
                socket.as_fd(),
                &Message::Failed {
                    error: error.clone(),
                },
                &[],
            );
            AdoptError(error)
        };
        let received = wire::recv::<serde_json::Value>(socket.as_fd(), true, wire::MAX_MESSAGE);
        let (value, fds) = match received {
            Ok(Received::Message(v, fds)) => (v, fds),
            Ok(_) => return Err(AdoptError("the old serve sent nothing".into())),
            Err(e) => return Err(fail(&socket, format!("handover socket: {e}"))),
        };
        check_format(&value).map_err(|e| fail(&socket, e))?;
        let state = match serde_json::from_value::<Message>(value) {
            Ok(Message::Hello(state)) => *state,
            Ok(other) => return Err(fail(&socket, format!("unexpected message {other:?}"))),
            Err(e) => return Err(fail(&socket, format!("unreadable state: {e}"))),
        };
        Ok(Self {
            socket,
            state,
            fds: fds.into_iter().map(Some).collect(),
        })
    }

    /// Refuses the handover with `error` (the old `serve` goes on).
    pub fn refuse(&self, error: &str) {
        let _ = wire::send(
            self.socket.as_fd(),
            &Message::Failed {
                error: error.to_string(),
            },
            &[],
        );
    }

    /// The old runtime's identity.
    pub fn previous(&self) -> &RuntimeInfo {
        &self.state.runtime
    }

    fn take(&mut self, at: usize) -> Result<OwnedFd, AdoptError> {
        self.fds
            .get_mut(at)
            .and_then(Option::take)
            .ok_or_else(|| AdoptError(format!("descriptor {at} missing from the handover")))
    }

    /// The handed-over sockets (taken once), and the spawner's lifeline
    /// made this process's spawner, paused until [`Adoption::committed`].
    pub fn sockets(&mut self) -> Result<HandedSockets, AdoptError> {
        let layout = self.state.fds.clone();
        let proxy = std::net::TcpListener::from(self.take(layout.proxy)?);
        let lifeline = self.take(layout.spawner)?;
        let spawner_pid = self.state.runtime.spawner_pid.unwrap_or_default();
        super::spawner::adopt(lifeline, spawner_pid)
            .map_err(|e| AdoptError(format!("spawner: {e}")))?;
        let control = match layout.control {
            Some((at, path)) => {
                Some((std::os::unix::net::UnixListener::from(self.take(at)?), path))
            }
            None => None,
        };
        let control_tcp = match layout.control_tcp {
            Some(at) => Some(std::net::TcpListener::from(self.take(at)?)),
            None => None,
        };
        Ok(HandedSockets {
            proxy,
            control,
            control_tcp,
        })
    }

    /// Takes over the replicas of the handed-over services that `services`
    /// has; the others' replicas are left alone (their `serve` config no
    /// longer has them: the old one would have retired them at a reload).
    pub fn adopt(
        &mut self,
        services: &[Supervisor],
    ) -> Result<Vec<(Supervisor, Arc<Replica>)>, AdoptError> {
        let spawner = super::spawner::client()
            .ok_or_else(|| AdoptError("no spawner was handed over".into()))?;
        let by_name: HashMap<&str, &Supervisor> = services.iter().map(|s| (s.name(), s)).collect();
        let handed = std::mem::take(&mut self.state.services);
        let mut adopted = Vec::new();
        for service in &handed {
            let Some(supervisor) = by_name.get(service.name.as_str()) else {
                tracing::warn!(
                    "upgrade: service {} is not in the config any more; its replicas are not adopted",
                    service.name
                );
                continue;
            };
            let mut replicas = Vec::new();
            for r in &service.replicas {
                let pipe = match r.process.as_ref().and_then(|p| p.log_pipe) {
                    Some(at) => Some(std::io::PipeReader::from(self.take(at)?)),
                    None => None,
                };
                replicas.push((r.clone(), pipe));
            }
            let replicas = supervisor
                .adopt(service, replicas, spawner)
                .map_err(|e| AdoptError(e.to_string()))?;
            adopted.extend(replicas.into_iter().map(|r| ((*supervisor).clone(), r)));
        }
        self.state.services = handed;
        Ok(adopted)
    }

    /// Tells the old `serve` this one serves, then waits (in the
    /// background) for it to step down: from then on this process writes
    /// to the old one's stdout and stderr and reads the spawner.
    pub fn committed(self) -> tokio::task::JoinHandle<()> {
        let sent = wire::send(
            self.socket.as_fd(),
            &Message::Ready {
                pid: std::process::id(),
            },
            &[],
        );
        if let Err(e) = sent {
            tracing::warn!("upgrade: cannot report ready ({e})");
        }
        let socket = self.socket;
        tokio::task::spawn_blocking(move || {
            match wire::recv::<Message>(socket.as_fd(), true, wire::MAX_MESSAGE) {
                Ok(Received::Message(Message::Commit, fds)) => {
                    if let [out, err] = &fds[..] {
                        let _ = nix::unistd::dup2_stdout(out);
                        let _ = nix::unistd::dup2_stderr(err);
                    }
                }
                // The old one is gone without a word: this one serves.
                other => tracing::warn!("upgrade: no commit from the old serve ({other:?})"),
            }
            if let Some(spawner) = super::spawner::client() {
                spawner.resume();
            }
            let pid = std::process::id();
            // systemd follows the runtime to this process.
            super::notify::notify(&format!("MAINPID={pid}\nREADY=1"));
            tracing::info!("upgrade: this serve (pid {pid}) took over");
        })
    }
}
