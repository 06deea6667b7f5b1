//! Health probes: HTTP GET of a path (2xx is healthy) or, with no path, a TCP
//! connect. Fast polling while a replica starts, so a ready replica is used
//! within milliseconds; the normal interval afterwards.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::ProbeConfig;
use crate::event::ReplicaState;
use crate::supervisor::replica::Replica;
use crate::throttle::warn_throttled;

/// One probe of one address, named in errors (`GET /healthz on 127.0.0.1:4100`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    addr: SocketAddr,
    path: String,
    timeout: Duration,
}

/// Why a probe failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProbeError {
    /// The probe could not run: this process is out of file descriptors,
    /// memory or ports. It says nothing about the replica, so it counts
    /// neither as a success nor as a failure.
    #[error("probe {probe} could not run here: {reason}; not counted against the replica")]
    Local {
        /// The probe.
        probe: String,
        /// What the OS said.
        reason: String,
    },
    /// No connection could be made.
    #[error("probe {probe}: connect failed: {reason}")]
    Connect {
        /// The probe.
        probe: String,
        /// What the OS said.
        reason: String,
    },
    /// The probe took longer than its timeout.
    #[error("probe {probe}: no answer within {timeout:?}")]
    Timeout {
        /// The probe.
        probe: String,
        /// Its timeout.
        timeout: Duration,
    },
    /// The answer was not 2xx.
    #[error("probe {probe}: status {status}")]
    Status {
        /// The probe.
        probe: String,
        /// The status code received.
        status: u16,
    },
    /// The HTTP exchange failed.
    #[error("probe {probe}: {reason}")]
    Http {
        /// The probe.
        probe: String,
        /// What failed.
        reason: String,
    },
}

/// Why a starting replica did not become ready.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NotReady {
    /// The deadline passed; the last probe result is kept.
    #[error("replica {replica} not ready after {timeout:?} ({last})")]
    Timeout {
        /// The replica.
        replica: String,
        /// The ready timeout.
        timeout: Duration,
        /// The last probe failure.
        last: String,
    },
    /// The process exited (or was stopped) before its probe succeeded.
    #[error("replica {replica} {state} before {probe} succeeded{}", detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Exited {
        /// The replica.
        replica: String,
        /// Its state.
        state: ReplicaState,
        /// The probe it never passed.
        probe: String,
        /// Exit status or other detail.
        detail: Option<String>,
    },
}

impl Probe {
    /// The probe configured by `config` for `addr`.
    pub fn new(addr: SocketAddr, config: &ProbeConfig) -> Self {
        Self {
            addr,
            path: config.path.clone(),
            timeout: config.timeout,
        }
    }

    /// Probes once.
    pub async fn check(&self) -> Result<(), ProbeError> {
        match tokio::time::timeout(self.timeout, self.exchange()).await {
            Ok(result) => result,
            Err(_) => Err(ProbeError::Timeout {
                probe: self.to_string(),
                timeout: self.timeout,
            }),
        }
    }

    async fn exchange(&self) -> Result<(), ProbeError> {
        let stream = TcpStream::connect(self.addr).await.map_err(|e| {
            let (probe, reason) = (self.to_string(), e.to_string());
            if crate::fds::is_exhausted(&e) {
                ProbeError::Local { probe, reason }
            } else {
                ProbeError::Connect { probe, reason }
            }
        })?;
        if self.path.is_empty() {
            return Ok(());
        }
        let http = |e: hyper::Error| ProbeError::Http {
            probe: self.to_string(),
            reason: e.to_string(),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        tokio::spawn(conn);
        let req = http::Request::get(self.path.as_str())
            .header(http::header::HOST, self.addr.to_string())
            .header(http::header::CONNECTION, "close")
            .header(http::header::USER_AGENT, "dropless-probe")
            .body(Empty::<Bytes>::new())
            .expect("a path forms a request");
        let resp = sender.send_request(req).await.map_err(http)?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(ProbeError::Status {
                probe: self.to_string(),
                status: resp.status().as_u16(),
            })
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "TCP connect to {}", self.addr)
        } else {
            write!(f, "GET {} on {}", self.path, self.addr)
        }
    }
}

/// Probes a `Starting` replica every `fast_interval` until it passes
/// `success_threshold` probes in a row (then marks it `Ready`), exits, or the
/// ready timeout passes (then marks it `Failed`).
pub async fn wait_ready(replica: &Replica, config: &ProbeConfig) -> Result<(), NotReady> {
    if config.ready_on_start {
        // Kubernetes without a readiness probe: started is ready.
        if replica.state() == ReplicaState::Starting {
            replica.set_state(
                ReplicaState::Ready,
                Some("ready on start (no readiness probe)".into()),
            );
        }
        return match replica.state() {
            ReplicaState::Ready => Ok(()),
            state => Err(NotReady::Exited {
                replica: replica.name().to_string(),
                state,
                probe: "none (ready on start)".into(),
                detail: replica.detail(),
            }),
        };
    }
    let probe = Probe::new(replica.addr(), config);
    let deadline = tokio::time::Instant::now() + config.ready_timeout;
    let mut state = replica.watch_state();
    let mut successes = 0;
    let mut last = String::from("no probe answered yet");
    loop {
        let current = *state.borrow_and_update();
        if current != ReplicaState::Starting {
            return if current == ReplicaState::Ready {
                Ok(())
            } else {
                Err(NotReady::Exited {
                    replica: replica.name().to_string(),
                    state: current,
                    probe: probe.to_string(),
                    detail: replica.detail(),
                })
            };
        }
        if tokio::time::Instant::now() >= deadline {
            let err = NotReady::Timeout {
                replica: replica.name().to_string(),
                timeout: config.ready_timeout,
                last,
            };
            replica.set_state(ReplicaState::Failed, Some(err.to_string()));
            return Err(err);
        }
        match probe.check().await {
            Ok(()) => {
                successes += 1;
                if successes >= config.success_threshold {
                    replica.set_state(ReplicaState::Ready, None);
                    continue;
                }
            }
            // A probe that could not run leaves the count as it was; the
            // ready timeout still bounds the wait.
            Err(e @ ProbeError::Local { .. }) => {
                warn_throttled!("replica {}: {e}", replica.name());
                last = e.to_string();
            }
            Err(e) => {
                successes = 0;
                last = e.to_string();
            }
        }
        let next = (tokio::time::Instant::now() + config.fast_interval).min(deadline);
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = state.changed() => {}
        }
    }
}

/// Probes a `Ready` replica every `interval` while it stays `Ready`; returns
/// the last error after `failure_threshold` failures in a row, or `None` once
/// the replica left `Ready` for another reason. `config` gives the settings
/// of each probe's moment, so a reload applies to the next probe.
pub async fn watch_ready(
    replica: &Replica,
    config: impl Fn() -> ProbeConfig,
) -> Option<ProbeError> {
    let mut state = replica.watch_state();
    if config().ready_on_start {
        // Never probed: it stays ready until it leaves on its own.
        let _ = state.wait_for(|s| *s != ReplicaState::Ready).await;
        return None;
    }
    let mut failures = 0;
    loop {
        let config = config();
        tokio::select! {
            _ = tokio::time::sleep(config.interval) => {}
            _ = state.wait_for(|s| *s != ReplicaState::Ready) => return None,
        }
        if replica.state() != ReplicaState::Ready {
            return None;
        }
        match Probe::new(replica.addr(), &config).check().await {
            Ok(()) => failures = 0,
            Err(e @ ProbeError::Local { .. }) => {
                warn_throttled!("replica {}: {e}", replica.name());
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(replica = replica.name(), "{e}");
                if failures >= config.failure_threshold {
                    return Some(e);
                }
            }
        }
    }
}
