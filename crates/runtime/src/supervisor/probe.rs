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
    let probe = Probe::new(replica.addr(), config);
    wait_ready_with(replica, config, &probe.to_string(), || probe.check()).await
}

/// [`wait_ready`] with the probe given as `check` (named `probe` in
/// errors): the counting and the timing, apart from the network.
async fn wait_ready_with<F, Fut>(
    replica: &Replica,
    config: &ProbeConfig,
    probe: &str,
    mut check: F,
) -> Result<(), NotReady>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), ProbeError>>,
{
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
        match check().await {
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
                replica.count_probe_failure(false);
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
    let addr = replica.addr();
    watch_ready_with(replica, config, |config| async move {
        Probe::new(addr, &config).check().await
    })
    .await
}

/// [`watch_ready`] with the probe given as `check` (called with the settings
/// of its moment): the counting and the timing, apart from the network.
async fn watch_ready_with<F, Fut>(
    replica: &Replica,
    config: impl Fn() -> ProbeConfig,
    mut check: F,
) -> Option<ProbeError>
where
    F: FnMut(ProbeConfig) -> Fut,
    Fut: std::future::Future<Output = Result<(), ProbeError>>,
{
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
        let threshold = config.failure_threshold;
        match check(config).await {
            Ok(()) => failures = 0,
            Err(e @ ProbeError::Local { .. }) => {
                warn_throttled!("replica {}: {e}", replica.name());
            }
            Err(e) => {
                replica.count_probe_failure(true);
                failures += 1;
                tracing::warn!(replica = replica.name(), "{e}");
                if failures >= threshold {
                    return Some(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use tokio::time::Instant;

    use super::*;
    use crate::supervisor::replica::testing;

    fn config() -> ProbeConfig {
        ProbeConfig {
            interval: Duration::from_secs(1),
            fast_interval: Duration::from_millis(100),
            ready_timeout: Duration::from_secs(10),
            success_threshold: 3,
            failure_threshold: 3,
            ..ProbeConfig::default()
        }
    }

    fn refused() -> ProbeError {
        ProbeError::Connect {
            probe: "GET /healthz on 127.0.0.1:9".into(),
            reason: "connection refused".into(),
        }
    }

    fn local() -> ProbeError {
        ProbeError::Local {
            probe: "GET /healthz on 127.0.0.1:9".into(),
            reason: "too many open files".into(),
        }
    }

    /// A probe that answers from `script` (then keeps answering its last
    /// answer) and records when it was asked, from `start`.
    #[derive(Clone)]
    struct Scripted {
        answers: Arc<Mutex<VecDeque<Result<(), ProbeError>>>>,
        asked: Arc<Mutex<Vec<Duration>>>,
        start: Instant,
    }

    impl Scripted {
        fn new(script: Vec<Result<(), ProbeError>>) -> Self {
            Self {
                answers: Arc::new(Mutex::new(script.into())),
                asked: Arc::default(),
                start: Instant::now(),
            }
        }

        fn answer(&self) -> Result<(), ProbeError> {
            self.asked.lock().unwrap().push(self.start.elapsed());
            let mut answers = self.answers.lock().unwrap();
            match answers.len() {
                0 => unreachable!("a script has at least one answer"),
                1 => answers[0].clone(),
                _ => answers.pop_front().unwrap(),
            }
        }

        fn asked(&self) -> Vec<Duration> {
            self.asked.lock().unwrap().clone()
        }
    }

    fn ms(list: &[u64]) -> Vec<Duration> {
        list.iter().map(|n| Duration::from_millis(*n)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_starting_replica_is_ready_after_the_success_threshold_in_a_row() {
        let (replica, _events) = testing::replica("web-1", "127.0.0.1:9", || {});
        // A failure resets the count; a probe that could not run here
        // counts neither way.
        let probe = Scripted::new(vec![
            Ok(()),
            Err(refused()),
            Ok(()),
            Err(local()),
            Ok(()),
            Ok(()),
        ]);
        let result = wait_ready_with(&replica, &config(), "probe", || {
            let probe = probe.clone();
            async move { probe.answer() }
        })
        .await;
        assert_eq!(result, Ok(()));
        assert_eq!(replica.state(), ReplicaState::Ready);
        // Every fast interval, until the third success after the failure.
        assert_eq!(probe.asked(), ms(&[0, 100, 200, 300, 400, 500]));
        // The failure is counted for the metrics; the one that could not
        // run is not.
        assert_eq!(replica.probe_failure_counts(), (1, 0));
        assert_eq!(probe.start.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_never_ready_fails_at_the_ready_timeout_with_the_last_error() {
        let (replica, _events) = testing::replica("web-1", "127.0.0.1:9", || {});
        let probe = Scripted::new(vec![Err(refused())]);
        let result = wait_ready_with(&replica, &config(), "probe", || {
            let probe = probe.clone();
            async move { probe.answer() }
        })
        .await;
        let Err(NotReady::Timeout { timeout, last, .. }) = result else {
            panic!("{result:?}");
        };
        assert_eq!(timeout, Duration::from_secs(10));
        assert_eq!(last, refused().to_string());
        assert_eq!(replica.state(), ReplicaState::Failed);
        assert_eq!(probe.start.elapsed(), Duration::from_secs(10));
        // Probes at 0, 100 ms, …, 9.9 s: one per fast interval.
        assert_eq!(probe.asked().len(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_exits_while_starting_stops_the_wait_at_once() {
        let (replica, _events) = testing::replica("web-1", "127.0.0.1:9", || {});
        let probe = Scripted::new(vec![Err(refused())]);
        let stopper = {
            let replica = Arc::clone(&replica);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(250)).await;
                replica.set_state(ReplicaState::Exited, Some("exit status: 2".into()));
            })
        };
        let result = wait_ready_with(&replica, &config(), "probe", || {
            let probe = probe.clone();
            async move { probe.answer() }
        })
        .await;
        stopper.await.unwrap();
        assert!(
            matches!(
                result,
                Err(NotReady::Exited {
                    state: ReplicaState::Exited,
                    ..
                })
            ),
            "{result:?}"
        );
        assert_eq!(probe.start.elapsed(), Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn a_ready_replica_is_given_up_after_the_failure_threshold_in_a_row() {
        let (replica, _events) = testing::replica("web-1", "127.0.0.1:9", || {});
        replica.set_state(ReplicaState::Ready, None);
        let probe = Scripted::new(vec![
            Ok(()),
            Err(refused()),
            Err(refused()),
            Ok(()),
            Err(refused()),
            Err(local()),
            Err(refused()),
            Err(refused()),
        ]);
        let failed = watch_ready_with(&replica, config, |_| {
            let probe = probe.clone();
            async move { probe.answer() }
        })
        .await;
        assert_eq!(failed, Some(refused()));
        // One probe per interval; the success at 4 s resets the count and
        // the one that could not run at 6 s does not count.
        let seconds: Vec<_> = (1..=8).map(Duration::from_secs).collect();
        assert_eq!(probe.asked(), seconds);
        assert_eq!(replica.probe_failure_counts(), (0, 5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_leaves_ready_ends_the_watch_without_an_error() {
        let (replica, _events) = testing::replica("web-1", "127.0.0.1:9", || {});
        replica.set_state(ReplicaState::Ready, None);
        let probe = Scripted::new(vec![Ok(())]);
        let drainer = {
            let replica = Arc::clone(&replica);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(2500)).await;
                replica.set_state(ReplicaState::Draining, None);
            })
        };
        let failed = watch_ready_with(&replica, config, |_| {
            let probe = probe.clone();
            async move { probe.answer() }
        })
        .await;
        drainer.await.unwrap();
        assert_eq!(failed, None);
        assert_eq!(probe.asked(), ms(&[1000, 2000]));
        assert_eq!(probe.start.elapsed(), Duration::from_millis(2500));
    }
}
