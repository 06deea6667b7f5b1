//! Configuration: one plain struct per concept, every field defaulted from a
//! named `DEFAULT_*` constant, validated completely before any port is bound.
//!
//! Durations are written as humantime strings in TOML (`"1s"`, `"50ms"`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default health path probed with HTTP GET.
pub const DEFAULT_HEALTH_PATH: &str = "/healthz";
/// Default interval between probes of a ready replica.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Default interval between probes while a replica starts.
pub const DEFAULT_PROBE_FAST_INTERVAL: Duration = Duration::from_millis(50);
/// Default timeout of one probe.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Default time a new replica has to become ready.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default consecutive successes that make a starting replica ready.
pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 1;
/// Default consecutive failures that make a ready replica failed.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
/// Default time to wait for a draining replica's in-flight requests.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default delay between the end of draining and SIGTERM.
pub const DEFAULT_PRE_STOP: Duration = Duration::ZERO;
/// Default time between SIGTERM and SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Default time a request waits for a ready replica before a 503.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of replicas of a service.
pub const DEFAULT_REPLICAS: usize = 1;
/// Default largest replica count of a service (`replicas`, `dropless scale`).
pub const DEFAULT_MAX_REPLICAS: usize = 64;
/// Default number of replicas a rollout may start above the desired count.
pub const DEFAULT_MAX_SURGE: usize = 1;
/// Default number of replicas a rollout may take below the desired count.
pub const DEFAULT_MAX_UNAVAILABLE: usize = 0;
/// Default first delay before replacing a replica that died on its own.
pub const DEFAULT_RESTART_BACKOFF: Duration = Duration::from_millis(100);
/// Default longest delay between replacements of a crashing replica.
pub const DEFAULT_RESTART_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Default address the proxy listens on.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default time a client has to send a complete request head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default largest request head accepted from a client, in bytes.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Default largest number of concurrent client connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
/// Default largest request body buffered so that the request can be retried.
pub const DEFAULT_RETRY_BODY_LIMIT: usize = 64 * 1024;
/// Default most attempts (first try and retries) for one request.
pub const DEFAULT_MAX_ATTEMPTS: usize = 3;
/// Whether a written non-idempotent request carrying `Idempotency-Key` may
/// be sent again: off, the replica's key handling is not assumed.
pub const DEFAULT_RETRY_IDEMPOTENCY_KEY: bool = false;
/// Longest pause between two reads of a streamed request body (nginx's
/// `client_body_timeout`).
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a client may take to accept more of its response (nginx's
/// `send_timeout`).
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Most request bodies streamed to one replica at once; more wait for a
/// slot within the queue timeout.
pub const DEFAULT_MAX_STREAMED_UPLOADS: usize = 64;
/// Default time an idle pooled upstream connection is kept.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a replica has to start its response (nginx's
/// `proxy_read_timeout`).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default number of proxy threads: 0, one per CPU.
pub const DEFAULT_PROXY_THREADS: usize = 0;
/// Default time `serve` gives client connections to finish when it stops.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default most open connections on each control listener (the socket, the
/// TCP address); more are closed at once.
pub const DEFAULT_CONTROL_MAX_CONNECTIONS: usize = 64;
/// Default time a control connection has to send a request (head and body,
/// from the moment it opens or its previous answer ends).
pub const DEFAULT_CONTROL_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Default size at which a replica's log file is rotated, in bytes (10 MiB).
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Default number of rotated log files kept per replica, besides the
/// current one.
pub const DEFAULT_LOG_KEEP: usize = 3;
/// Default name of a service described by flags.
pub const DEFAULT_SERVICE_NAME: &str = "web";
/// Default most session keys an affinity table remembers (least recently
/// used keys are forgotten beyond it).
pub const DEFAULT_AFFINITY_MAX_KEYS: usize = 1_000_000;
/// Default longest time requests for a retiring owner's sessions are held
/// before their keys get a new owner.
pub const DEFAULT_HANDOFF_TIMEOUT: Duration = Duration::from_secs(10);

/// The whole runtime: one proxy, one control socket, one or more services.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The front proxy.
    pub proxy: ProxyConfig,
    /// Path of the control socket (default `dropless.sock` in the state dir).
    pub control: Option<PathBuf>,
    /// A TCP address for the control API as well (none by default); its
    /// requests must carry the token from `DROPLESS_CONTROL_TOKEN`.
    pub control_tcp: Option<SocketAddr>,
    /// Most open connections on each control listener; more are closed at
    /// once ([`DEFAULT_CONTROL_MAX_CONNECTIONS`]).
    pub control_max_connections: usize,
    /// Time a control connection has to send a request, head and body
    /// ([`DEFAULT_CONTROL_READ_TIMEOUT`]).
    #[serde(with = "duration")]
    pub control_read_timeout: Duration,
    /// Directory of the persisted state and the replica logs (default `.dropless`).
    pub state_dir: PathBuf,
    /// The replicas' log files.
    pub logs: LogsConfig,
    /// Access log: one JSON line per request to this file (appended), or
    /// to standard output for `-`; none by default (see docs/operations.md).
    pub access_log: Option<PathBuf>,
    /// The Prometheus metrics endpoint.
    pub metrics: MetricsConfig,
    /// The services; a request goes to the service whose `hosts` has its Host.
    #[serde(rename = "service")]
    pub services: Vec<ServiceConfig>,
}

/// The front proxy (data plane).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Address to listen on ([`DEFAULT_LISTEN`]).
    pub listen: SocketAddr,
    /// Time a request waits for a ready replica ([`DEFAULT_QUEUE_TIMEOUT`]).
    #[serde(with = "duration")]
    pub queue_timeout: Duration,
    /// Time a client has to send a request head ([`DEFAULT_HEADER_READ_TIMEOUT`]).
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Largest request head in bytes ([`DEFAULT_MAX_HEADER_BYTES`]).
    pub max_header_bytes: usize,
    /// Most concurrent client connections ([`DEFAULT_MAX_CONNECTIONS`]).
    pub max_connections: usize,
    /// Largest body buffered for a retry ([`DEFAULT_RETRY_BODY_LIMIT`]).
    pub retry_body_limit: usize,
    /// Most attempts for one request ([`DEFAULT_MAX_ATTEMPTS`]).
    pub max_attempts: usize,
    /// Send a written non-idempotent request again when it carries
    /// `Idempotency-Key` ([`DEFAULT_RETRY_IDEMPOTENCY_KEY`]).
    pub retry_idempotency_key: bool,
    /// Longest pause between two reads of a streamed request body; then the
    /// client gets a 408 ([`DEFAULT_BODY_READ_TIMEOUT`]).
    #[serde(with = "duration")]
    pub body_read_timeout: Duration,
    /// Longest a client may take to accept more of its response; then its
    /// connection (HTTP/1.1) or stream (HTTP/2) is ended, and the
    /// replica's connection with it ([`DEFAULT_SEND_TIMEOUT`]).
    #[serde(with = "duration")]
    pub send_timeout: Duration,
    /// Most request bodies streamed to one replica at once
    /// ([`DEFAULT_MAX_STREAMED_UPLOADS`]).
    pub max_streamed_uploads: usize,
    /// Idle upstream connections kept this long ([`DEFAULT_POOL_IDLE_TIMEOUT`]).
    #[serde(with = "duration")]
    pub pool_idle_timeout: Duration,
    /// Time a replica has, once a request is sent, to start its response;
    /// then the client gets a 504 ([`DEFAULT_RESPONSE_TIMEOUT`]).
    #[serde(with = "duration")]
    pub response_timeout: Duration,
    /// Time client connections get to finish on shutdown ([`DEFAULT_SHUTDOWN_GRACE`]).
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Threads serving client connections, each with its own event loop;
    /// 0 = one per CPU ([`DEFAULT_PROXY_THREADS`]).
    pub threads: usize,
    /// PEM certificate chain; with `tls_key`, the proxy speaks HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key matching `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

/// The Prometheus metrics endpoint (see docs/operations.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address serving `GET /metrics` (off by default); never the proxy's.
    pub listen: Option<SocketAddr>,
}

/// The replicas' log files (`STATE_DIR/logs/<replica>.<run>.log`), rotated
/// at `max_bytes`: `FILE` → `FILE.1` → … → `FILE.<keep>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LogsConfig {
    /// Size at which a log file is rotated ([`DEFAULT_LOG_MAX_BYTES`]).
    pub max_bytes: u64,
    /// Rotated files kept besides the current one; 0 = the current file is
    /// emptied when full ([`DEFAULT_LOG_KEEP`]).
    pub keep: usize,
}

/// One service: what to run, how many, how to probe, retire and roll out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// Name used by `--service` and in replica names ([`DEFAULT_SERVICE_NAME`]).
    pub name: String,
    /// Host header values routed to this service; empty = the default service.
    pub hosts: Vec<String>,
    /// Desired replica count ([`DEFAULT_REPLICAS`]).
    pub replicas: usize,
    /// Largest replica count `replicas` and `dropless scale` may ask for
    /// ([`DEFAULT_MAX_REPLICAS`]).
    pub max_replicas: usize,
    /// What a replica runs (a command) or where it is (a target address).
    pub version: Version,
    /// Replicas from DNS instead of a version: the addresses a name resolves
    /// to (none by default; see docs/runtime.md, "Discovery").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discover: Option<crate::supervisor::discover::DiscoverConfig>,
    /// Health probes.
    pub probe: ProbeConfig,
    /// Retirement of a replica.
    pub retire: RetireConfig,
    /// Rollout strategy and limits.
    pub rollout: RolloutConfig,
    /// Replacement of replicas that die on their own.
    pub restart: RestartConfig,
    /// Session affinity (none by default): `affinity = "cookie:NAME"`, or
    /// a table with `key`, `max_keys` and `handoff_timeout`. A service with
    /// affinity also gets a stash (`DROPLESS_STASH`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<AffinityConfig>,
    /// A stash for the replicas (`DROPLESS_STASH`) even without affinity
    /// (default false).
    pub stash: bool,
}

/// Session affinity of a service: requests with the same key go to the same
/// ready replica, and are held while that replica hands its sessions off.
/// In TOML, a key spec string alone, or a table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(from = "AffinityToml")]
pub struct AffinityConfig {
    /// Where the key is: `cookie:NAME`, `header:NAME` or
    /// `path:/prefix/{id}`.
    pub key: String,
    /// Most keys remembered ([`DEFAULT_AFFINITY_MAX_KEYS`]).
    pub max_keys: usize,
    /// Longest hold of a retiring owner's requests
    /// ([`DEFAULT_HANDOFF_TIMEOUT`]).
    #[serde(with = "duration")]
    pub handoff_timeout: Duration,
}

/// The two TOML forms of [`AffinityConfig`].
#[derive(Deserialize)]
#[serde(untagged)]
enum AffinityToml {
    Key(String),
    Table {
        key: String,
        #[serde(default = "default_max_keys")]
        max_keys: usize,
        #[serde(default = "default_handoff", with = "duration")]
        handoff_timeout: Duration,
    },
}

fn default_max_keys() -> usize {
    DEFAULT_AFFINITY_MAX_KEYS
}

fn default_handoff() -> Duration {
    DEFAULT_HANDOFF_TIMEOUT
}

impl From<AffinityToml> for AffinityConfig {
    fn from(toml: AffinityToml) -> Self {
        match toml {
            AffinityToml::Key(key) => Self::new(key),
            AffinityToml::Table {
                key,
                max_keys,
                handoff_timeout,
            } => Self {
                key,
                max_keys,
                handoff_timeout,
            },
        }
    }
}

impl AffinityConfig {
    /// Affinity on `key` (a spec such as `cookie:sid`) with the defaults.
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            max_keys: DEFAULT_AFFINITY_MAX_KEYS,
            handoff_timeout: DEFAULT_HANDOFF_TIMEOUT,
        }
    }
}

/// A version of a service: a command with its environment, or an address
/// dropless does not own.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Version {
    /// Program and arguments; the replica gets `PORT` and `DROPLESS_REPLICA`.
    pub command: Vec<String>,
    /// Extra environment for the command.
    pub env: BTreeMap<String, String>,
    /// An address to route to instead of a command (probed, drained, not signalled).
    pub target: Option<SocketAddr>,
    /// The command takes its listening socket from dropless, the systemd
    /// way (fd 3, `LISTEN_FDS=1`, `LISTEN_PID`), instead of binding `PORT`
    /// itself (default false): no other process can take the port between
    /// its choice and the bind. `dropless-lifecycle`'s `listen::bind` and
    /// the demo service accept it.
    pub socket_activation: bool,
}

/// Health probes: HTTP GET `path`, or a TCP connect when `path` is empty.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    /// Path probed with GET; empty means TCP connect ([`DEFAULT_HEALTH_PATH`]).
    pub path: String,
    /// Interval while ready ([`DEFAULT_PROBE_INTERVAL`]).
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Interval while starting ([`DEFAULT_PROBE_FAST_INTERVAL`]).
    #[serde(with = "duration")]
    pub fast_interval: Duration,
    /// Timeout of one probe ([`DEFAULT_PROBE_TIMEOUT`]).
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Time a new replica has to become ready ([`DEFAULT_READY_TIMEOUT`]).
    #[serde(with = "duration")]
    pub ready_timeout: Duration,
    /// Successes in a row that make a replica ready ([`DEFAULT_SUCCESS_THRESHOLD`]).
    pub success_threshold: u32,
    /// Failures in a row that fail a ready replica ([`DEFAULT_FAILURE_THRESHOLD`]).
    pub failure_threshold: u32,
    /// Kubernetes emulation of a pod without a readiness probe (default
    /// false): the replica is ready as soon as its process has started,
    /// whether it listens yet or not, and is never probed.
    pub ready_on_start: bool,
}

/// Retirement: stop routing, drain, pre-stop, SIGTERM, grace, SIGKILL.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetireConfig {
    /// Longest wait for in-flight requests ([`DEFAULT_DRAIN_TIMEOUT`]).
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
    /// Delay between draining and SIGTERM ([`DEFAULT_PRE_STOP`]).
    #[serde(with = "duration")]
    pub pre_stop: Duration,
    /// Time between SIGTERM and SIGKILL ([`DEFAULT_GRACE`]).
    #[serde(with = "duration")]
    pub grace: Duration,
    /// Kubernetes emulation (default off): routing stops this long after
    /// the retirement starts, while pre-stop, SIGTERM and grace run from its
    /// start, unordered, as in a cluster (`grace` counts from the start).
    #[serde(with = "optional_duration", skip_serializing_if = "Option::is_none")]
    pub kubernetes_endpoint_delay: Option<Duration>,
}

/// How a new version replaces the old one.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Replace replicas a few at a time (`max_surge`, `max_unavailable`).
    #[default]
    Rolling,
    /// Start all new replicas, switch at once, then drain all old ones.
    BlueGreen,
}

/// Rollout strategy and limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutConfig {
    /// `rolling` (default) or `blue-green`.
    pub strategy: Strategy,
    /// Replicas above the desired count during a rollout ([`DEFAULT_MAX_SURGE`]).
    pub max_surge: usize,
    /// Replicas below the desired count during a rollout ([`DEFAULT_MAX_UNAVAILABLE`]).
    pub max_unavailable: usize,
}

/// Replacement of replicas that die on their own, with exponential backoff.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RestartConfig {
    /// First delay ([`DEFAULT_RESTART_BACKOFF`]).
    #[serde(with = "duration")]
    pub backoff: Duration,
    /// Longest delay ([`DEFAULT_RESTART_BACKOFF_MAX`]).
    #[serde(with = "duration")]
    pub backoff_max: Duration,
}

/// A configuration that cannot run, naming the field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML file is not a valid config.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Default for Config {
    fn default() -> Self {
        Self {
            proxy: ProxyConfig::default(),
            control: None,
            control_tcp: None,
            control_max_connections: DEFAULT_CONTROL_MAX_CONNECTIONS,
            control_read_timeout: DEFAULT_CONTROL_READ_TIMEOUT,
            state_dir: PathBuf::from(".dropless"),
            logs: LogsConfig::default(),
            access_log: None,
            metrics: MetricsConfig::default(),
            services: Vec::new(),
        }
    }
}

impl Default for LogsConfig {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_LOG_MAX_BYTES,
            keep: DEFAULT_LOG_KEEP,
        }
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .expect("DEFAULT_LISTEN is an address"),
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            retry_body_limit: DEFAULT_RETRY_BODY_LIMIT,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_idempotency_key: DEFAULT_RETRY_IDEMPOTENCY_KEY,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            max_streamed_uploads: DEFAULT_MAX_STREAMED_UPLOADS,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            threads: DEFAULT_PROXY_THREADS,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            name: DEFAULT_SERVICE_NAME.to_string(),
            hosts: Vec::new(),
            replicas: DEFAULT_REPLICAS,
            max_replicas: DEFAULT_MAX_REPLICAS,
            version: Version::default(),
            discover: None,
            probe: ProbeConfig::default(),
            retire: RetireConfig::default(),
            rollout: RolloutConfig::default(),
            restart: RestartConfig::default(),
            affinity: None,
            stash: false,
        }
    }
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            path: DEFAULT_HEALTH_PATH.to_string(),
            interval: DEFAULT_PROBE_INTERVAL,
            fast_interval: DEFAULT_PROBE_FAST_INTERVAL,
            timeout: DEFAULT_PROBE_TIMEOUT,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            success_threshold: DEFAULT_SUCCESS_THRESHOLD,
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            ready_on_start: false,
        }
    }
}

impl Default for RetireConfig {
    fn default() -> Self {
        Self {
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            pre_stop: DEFAULT_PRE_STOP,
            grace: DEFAULT_GRACE,
            kubernetes_endpoint_delay: None,
        }
    }
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::Rolling,
            max_surge: DEFAULT_MAX_SURGE,
            max_unavailable: DEFAULT_MAX_UNAVAILABLE,
        }
    }
}

impl Default for RestartConfig {
    fn default() -> Self {
        Self {
            backoff: DEFAULT_RESTART_BACKOFF,
            backoff_max: DEFAULT_RESTART_BACKOFF_MAX,
        }
    }
}

impl Config {
    /// Reads and validates a TOML config file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let config = Self::parse_file(path)?;
        config.validate()?;
        Ok(config)
    }

    /// The file at `path`, parsed but not validated: for a caller that
    /// completes it first (`serve`'s flags may give the service a file
    /// without `[[service]]` lacks), then calls [`Config::validate`].
    pub fn parse_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })
    }

    /// The control socket path: `control`, or `dropless.sock` in `state_dir`.
    pub fn control_path(&self) -> PathBuf {
        self.control
            .clone()
            .unwrap_or_else(|| self.state_dir.join("dropless.sock"))
    }

    /// Checks every value; the error names the field and how to fix it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.services.is_empty() {
            return bad("no service: give a command after `--`, `--target ADDR`, or a [[service]] in the config".into());
        }
        if self.proxy.tls_cert.is_some() != self.proxy.tls_key.is_some() {
            return bad("tls_cert and tls_key go together: give both or neither".into());
        }
        if self.proxy.response_timeout.is_zero() || self.proxy.body_read_timeout.is_zero() {
            return bad(
                "proxy.response_timeout and proxy.body_read_timeout must be more than 0".into(),
            );
        }
        if self.proxy.send_timeout < Duration::from_millis(1) {
            return bad("proxy.send_timeout must be at least 1ms (60s is the default)".into());
        }
        if self.proxy.header_read_timeout < Duration::from_millis(1) {
            // Also how long a keep-alive connection may be idle: 0 would
            // close every connection as it opens.
            return bad(
                "proxy.header_read_timeout must be at least 1ms (10s is the default)".into(),
            );
        }
        if self.proxy.max_streamed_uploads == 0 {
            return bad("proxy.max_streamed_uploads must be at least 1".into());
        }
        if self.logs.max_bytes == 0 {
            return bad(
                "logs.max_bytes must be at least 1 (10485760 = 10 MiB is the default)".into(),
            );
        }
        if self.proxy.max_connections == 0 || self.proxy.max_attempts == 0 {
            return bad("proxy.max_connections and proxy.max_attempts must be at least 1".into());
        }
        if let Some(addr) = self.metrics.listen
            && addr == self.proxy.listen
            && addr.port() != 0
        {
            return bad(format!(
                "metrics.listen {addr} is the proxy's address: metrics need an address of their own (e.g. 127.0.0.1:9090)"
            ));
        }
        if self.control_max_connections == 0 || self.control_read_timeout.is_zero() {
            return bad("control_max_connections and control_read_timeout must be above 0".into());
        }
        let mut names = std::collections::BTreeSet::new();
        let mut hosts = std::collections::BTreeSet::new();
        let mut defaults = 0;
        for s in &self.services {
            if !names.insert(s.name.as_str()) {
                return bad(format!(
                    "service name {:?} is used twice: give each service its own name",
                    s.name
                ));
            }
            if s.hosts.is_empty() {
                defaults += 1;
            }
            for h in &s.hosts {
                if !hosts.insert(h.to_ascii_lowercase()) {
                    return bad(format!(
                        "host {h:?} is routed to two services: keep it in one"
                    ));
                }
            }
            s.validate()?;
        }
        if defaults > 1 {
            return bad(
                "more than one service without hosts: give every service but one a `hosts` list"
                    .into(),
            );
        }
        Ok(())
    }
}

impl ServiceConfig {
    /// Checks the values of one service.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name = &self.name;
        let bad = |m: String| Err(ConfigError::Invalid(format!("service {name:?}: {m}")));
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad("name must be letters, digits, '-' or '_'".into());
        }
        match &self.discover {
            Some(d) if self.version != Version::default() => {
                return bad(format!(
                    "discover.from {} and a version.command or version.target given: give one",
                    d.from
                ));
            }
            Some(d) if d.interval.is_zero() => {
                return bad("discover.interval must be above 0 (500ms is the default)".into());
            }
            Some(_) => {}
            None => self.version.validate().or_else(bad)?,
        }
        if self.max_replicas == 0 {
            return bad("max_replicas must be at least 1".into());
        }
        if self.replicas > self.max_replicas {
            return bad(format!(
                "replicas {} is above max_replicas {}: lower replicas or raise max_replicas",
                self.replicas, self.max_replicas
            ));
        }
        if self.rollout.max_surge == 0 && self.rollout.max_unavailable == 0 {
            return bad("max_surge and max_unavailable are both 0: the rollout could never progress; set max_surge to 1".into());
        }
        if !self.probe.path.is_empty() && !self.probe.path.starts_with('/') {
            return bad(format!(
                "probe.path {:?} must start with '/' (or be empty for a TCP probe)",
                self.probe.path
            ));
        }
        if self.probe.success_threshold == 0 || self.probe.failure_threshold == 0 {
            return bad("probe thresholds must be at least 1".into());
        }
        if self.probe.fast_interval.is_zero()
            || self.probe.interval.is_zero()
            || self.probe.timeout.is_zero()
        {
            return bad("probe intervals and timeout must be above 0".into());
        }
        if let Some(affinity) = &self.affinity {
            if let Err(e) = crate::proxy::affinity::KeySpec::parse(&affinity.key) {
                return bad(e);
            }
            if affinity.max_keys == 0 {
                return bad("affinity.max_keys must be at least 1 (default 1000000)".into());
            }
        }
        Ok(())
    }
}

impl Version {
    /// A version that runs `command`.
    pub fn command(command: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            command: command.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// A version that routes to `target`, a process dropless does not own.
    pub fn target(target: SocketAddr) -> Self {
        Self {
            target: Some(target),
            ..Self::default()
        }
    }

    /// The same version, given its listening socket by dropless (see
    /// [`Version::socket_activation`]).
    pub fn with_socket_activation(mut self) -> Self {
        self.socket_activation = true;
        self
    }

    /// Adds one environment variable.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Checks that exactly one of `command` and `target` is given.
    pub fn validate(&self) -> Result<(), String> {
        match (self.command.is_empty(), self.target) {
            (true, None) => Err("no version: give a command or a target address".into()),
            (false, Some(t)) => Err(format!("both a command and target {t} given: give one")),
            _ => Ok(()),
        }
    }
}

/// Serde for optional durations as humantime strings.
pub mod optional_duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    /// Writes `d` as a humantime string, or nothing.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    /// Reads a humantime string such as `"500ms"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
    }
}

/// Serde for durations as humantime strings (`"1s"`, `"250ms"`).
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `d` as a humantime string.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    /// Reads a humantime string such as `"1s"` or `"50ms"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "bad duration {text:?} ({e}): write e.g. \"10s\", \"500ms\", \"2m\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_fields_default_and_parse() {
        let config: Config = toml::from_str(
            r#"
            [proxy]
            listen = "127.0.0.1:0"
            [[service]]
            name = "api"
            hosts = ["api.local"]
            version.command = ["./api"]
            probe.fast_interval = "20ms"
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        let s = &config.services[0];
        assert_eq!(s.probe.fast_interval, Duration::from_millis(20));
        assert_eq!(s.probe.interval, DEFAULT_PROBE_INTERVAL);
        assert_eq!(s.retire.grace, DEFAULT_GRACE);
        assert_eq!(config.proxy.queue_timeout, DEFAULT_QUEUE_TIMEOUT);
    }

    /// docs/config.md documents every field the TOML accepts.
    #[test]
    fn every_field_is_documented() {
        let docs = include_str!("../../../docs/config.md");
        let mut config = Config::default();
        config.services.push(ServiceConfig::default());
        config.proxy.tls_cert = Some("c.pem".into());
        config.proxy.tls_key = Some("k.pem".into());
        config.control = Some("c.sock".into());
        config.services[0].version.target = Some("127.0.0.1:1".parse().unwrap());
        config.services[0].retire.kubernetes_endpoint_delay = Some(Duration::from_secs(1));
        let mut discover =
            crate::supervisor::discover::DiscoverConfig::new("dns:a:1".parse().unwrap());
        discover.nameserver = Some("127.0.0.1:53".parse().unwrap());
        config.services[0].discover = Some(discover);
        config.services[0].affinity = Some(AffinityConfig::new("cookie:sid"));
        let value = toml::Value::try_from(&config).unwrap();
        let mut missing = Vec::new();
        fn walk(v: &toml::Value, docs: &str, missing: &mut Vec<String>) {
            let table = match v {
                toml::Value::Table(t) => t,
                toml::Value::Array(a) => return a.iter().for_each(|v| walk(v, docs, missing)),
                _ => return,
            };
            for (k, v) in table {
                let named = docs.contains(&format!("`{k}`")) || docs.contains(&format!("[{k}]"));
                if !named {
                    missing.push(k.clone());
                }
                walk(v, docs, missing);
            }
        }
        walk(&value, docs, &mut missing);
        assert!(missing.is_empty(), "not in docs/config.md: {missing:?}");
    }

    #[test]
    fn affinity_is_a_key_or_a_table() {
        let config: Config = toml::from_str(
            r#"
            [[service]]
            name = "a"
            version.command = ["x"]
            affinity = "cookie:sid"
            [[service]]
            name = "b"
            hosts = ["b"]
            version.command = ["x"]
            affinity = { key = "path:/game/{id}", handoff_timeout = "3s" }
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.services[0].affinity,
            Some(AffinityConfig::new("cookie:sid"))
        );
        let b = config.services[1].affinity.as_ref().unwrap();
        assert_eq!(b.handoff_timeout, Duration::from_secs(3));
        assert_eq!(b.max_keys, DEFAULT_AFFINITY_MAX_KEYS);
        let mut bad = config.clone();
        bad.services[0].affinity = Some(AffinityConfig::new("query:sid"));
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("query:sid"), "{err}");
    }

    #[test]
    fn invalid_values_are_named() {
        let mut config = Config::default();
        let mut s = ServiceConfig {
            version: Version::command(["x"]),
            ..ServiceConfig::default()
        };
        s.rollout.max_surge = 0;
        config.services.push(s);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("max_surge"), "{err}");
        let mut config = Config::default();
        config.services.push(ServiceConfig {
            version: Version::command(["x"]),
            replicas: DEFAULT_MAX_REPLICAS + 1,
            ..ServiceConfig::default()
        });
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("replicas 65 is above max_replicas 64"),
            "{err}"
        );
        let mut config = Config::default();
        config.services.push(ServiceConfig {
            version: Version::command(["x"]),
            ..ServiceConfig::default()
        });
        config.proxy.header_read_timeout = Duration::ZERO;
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("header_read_timeout must be at least 1ms"),
            "{err}"
        );
        let err = toml::from_str::<Config>("[proxy]\nqueue_timeout = \"soon\"").unwrap_err();
        assert!(err.to_string().contains("soon"), "{err}");
    }
}
