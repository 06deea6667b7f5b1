//! The lifecycle's configuration and its defaults.

use std::time::Duration;

/// Default readiness probe path.
pub const DEFAULT_HEALTH_PATH: &str = "/healthz";
/// Default liveness probe path.
pub const DEFAULT_LIVENESS_PATH: &str = "/livez";
/// Default pre-stop delay: none.
pub const DEFAULT_PRE_STOP: Duration = Duration::ZERO;
/// Default grace period for the whole shutdown (as Kubernetes'
/// `terminationGracePeriodSeconds`).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Default time an idle HTTP/1.1 keep-alive connection is given during the
/// drain to send one more request (answered with `Connection: close`) before
/// it is closed.
pub const DEFAULT_DRAIN_IDLE_WAIT: Duration = Duration::from_secs(1);

/// What happens to idle HTTP/1.1 keep-alive connections during the drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeepAliveOnDrain {
    /// "One more message": an idle connection may send one more request,
    /// whose response carries `Connection: close`; one that sends nothing
    /// within [`Config::drain_idle_wait`] is closed. A client never races a
    /// close it could not see coming, except at that deadline.
    #[default]
    OneMoreMessage,
    /// Immediate hang-up: idle connections are closed as soon as the drain
    /// starts. A client that sends a request at that moment sees an EOF.
    HangUp,
}

/// Configuration of a [`crate::Lifecycle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Readiness probe path: 503 while starting, 200 when ready, 503 from the
    /// moment shutdown begins. `None` disables it (requests go to the app).
    /// Default [`DEFAULT_HEALTH_PATH`].
    pub health_path: Option<String>,
    /// Liveness probe path: 200 while the process serves. `None` disables
    /// it. Default [`DEFAULT_LIVENESS_PATH`].
    pub liveness_path: Option<String>,
    /// Delay after readiness turns 503 and before the listener closes, while
    /// requests are still served normally, so that load balancers notice.
    /// Default [`DEFAULT_PRE_STOP`].
    pub pre_stop: Duration,
    /// Budget for the whole shutdown, from the signal to the last hook.
    /// Default [`DEFAULT_GRACE`].
    pub grace: Duration,
    /// Idle keep-alive connections during the drain. Default
    /// [`KeepAliveOnDrain::OneMoreMessage`].
    pub keep_alive_on_drain: KeepAliveOnDrain,
    /// With [`KeepAliveOnDrain::OneMoreMessage`], how long an idle
    /// connection may stay open during the drain. Default
    /// [`DEFAULT_DRAIN_IDLE_WAIT`].
    pub drain_idle_wait: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            health_path: Some(DEFAULT_HEALTH_PATH.to_owned()),
            liveness_path: Some(DEFAULT_LIVENESS_PATH.to_owned()),
            pre_stop: DEFAULT_PRE_STOP,
            grace: DEFAULT_GRACE,
            keep_alive_on_drain: KeepAliveOnDrain::default(),
            drain_idle_wait: DEFAULT_DRAIN_IDLE_WAIT,
        }
    }
}
