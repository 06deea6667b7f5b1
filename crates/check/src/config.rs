//! What `dropless check` runs and how hard it pushes: every setting with
//! its default, validated before the program starts.

use std::time::Duration;

/// Path the traffic requests ([`Config::path`]).
pub const DEFAULT_PATH: &str = "/";
/// Requests per second, all clients together ([`Config::rate`]).
pub const DEFAULT_RATE: f64 = 200.0;
/// Time from SIGTERM to SIGKILL ([`Config::grace`]), Kubernetes' default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Traffic before SIGTERM ([`Config::warmup`]).
pub const DEFAULT_WARMUP: Duration = Duration::from_secs(2);
/// Longest wait for the program to listen and be ready
/// ([`Config::startup_timeout`]).
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle keep-alive connections held open across SIGTERM
/// ([`Config::idle_connections`]).
pub const DEFAULT_IDLE_CONNECTIONS: usize = 4;
/// The endpoint lag assumed for a Kubernetes Service: how long a pod still
/// gets new requests after its SIGTERM.
pub const KUBERNETES_ENDPOINT_LAG: Duration = Duration::from_secs(1);
/// Highest accepted rate.
pub const MAX_RATE: f64 = 10_000.0;

/// One check: the program and the traffic.
#[derive(Clone, Debug)]
pub struct Config {
    /// The program and its arguments; it gets `PORT` and `DROPLESS_REPLICA`.
    pub command: Vec<String>,
    /// Path the traffic requests ([`DEFAULT_PATH`]).
    pub path: String,
    /// Readiness path, if the program has one (no default).
    pub health_path: Option<String>,
    /// Requests per second over all clients ([`DEFAULT_RATE`]).
    pub rate: f64,
    /// SIGTERM to SIGKILL ([`DEFAULT_GRACE`]).
    pub grace: Duration,
    /// Traffic before SIGTERM ([`DEFAULT_WARMUP`]).
    pub warmup: Duration,
    /// Longest wait to listen and be ready ([`DEFAULT_STARTUP_TIMEOUT`]).
    pub startup_timeout: Duration,
    /// Idle keep-alive connections held across SIGTERM
    /// ([`DEFAULT_IDLE_CONNECTIONS`]).
    pub idle_connections: usize,
}

/// A setting that cannot work, named with the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// No program was given.
    #[error("no program to check: give it after `--`, e.g. `dropless check -- python3 app.py`")]
    NoCommand,
    /// A path that does not start with `/`.
    #[error("{name} {value:?} must start with '/', e.g. /healthz")]
    Path {
        /// The option.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// A rate out of range.
    #[error("--rate {0}: expected a number of requests per second above 0 and at most 10000")]
    Rate(String),
    /// A duration that must not be zero.
    #[error("{0} must be more than 0")]
    Zero(&'static str),
    /// Too many idle connections.
    #[error("--idle-connections {0}: expected at most 1000")]
    Idle(usize),
}

impl Config {
    /// A check of `command` with every other setting at its default.
    pub fn new(command: Vec<String>) -> Self {
        Config {
            command,
            path: DEFAULT_PATH.to_owned(),
            health_path: None,
            rate: DEFAULT_RATE,
            grace: DEFAULT_GRACE,
            warmup: DEFAULT_WARMUP,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            idle_connections: DEFAULT_IDLE_CONNECTIONS,
        }
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.command.is_empty() || self.command[0].is_empty() {
            return Err(ConfigError::NoCommand);
        }
        let path = |name, value: &str| match value.starts_with('/') {
            true => Ok(()),
            false => Err(ConfigError::Path {
                name,
                value: value.to_owned(),
            }),
        };
        path("--path", &self.path)?;
        if let Some(health) = &self.health_path {
            path("--health-path", health)?;
        }
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= MAX_RATE) {
            return Err(ConfigError::Rate(self.rate.to_string()));
        }
        if self.grace.is_zero() {
            return Err(ConfigError::Zero("--grace"));
        }
        if self.warmup.is_zero() {
            return Err(ConfigError::Zero("--warmup"));
        }
        if self.startup_timeout.is_zero() {
            return Err(ConfigError::Zero("--startup-timeout"));
        }
        if self.idle_connections > 1000 {
            return Err(ConfigError::Idle(self.idle_connections));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_named() {
        let ok = Config::new(vec!["true".into()]);
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(Config::new(vec![]).validate(), Err(ConfigError::NoCommand));
        let mut c = ok.clone();
        c.health_path = Some("healthz".into());
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Path {
                name: "--health-path",
                ..
            })
        ));
        let mut c = ok.clone();
        c.rate = 0.0;
        assert!(matches!(c.validate(), Err(ConfigError::Rate(_))));
        let mut c = ok;
        c.grace = Duration::ZERO;
        assert_eq!(c.validate(), Err(ConfigError::Zero("--grace")));
    }
}
