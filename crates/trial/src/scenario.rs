//! Scenario files: the service, the load, the events and the audit of one
//! trial, validated completely before anything starts.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use dropless_demo::Profile;
use dropless_runtime::config::{duration, optional_duration};
use serde::{Deserialize, Serialize};

/// Default replica count of the service under trial.
pub const DEFAULT_REPLICAS: usize = 3;
/// Default load rate, requests per second.
pub const DEFAULT_RATE: f64 = 200.0;
/// Default load duration.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(30);
/// Default path the load requests.
pub const DEFAULT_PATH: &str = "/sum?a=1&b=2";
/// Default time the demo's `/sum` works, in milliseconds.
pub const DEFAULT_WORK_MS: u64 = 100;
/// Default endpoint propagation lag of the Kubernetes emulation.
pub const DEFAULT_ENDPOINT_LAG: Duration = Duration::from_secs(1);
/// Default pre-stop delay of the `kubernetes-prestop` strategy: longer than
/// the endpoint lag, as a cluster's `preStop` sleep should be.
pub const DEFAULT_K8S_PRE_STOP: Duration = Duration::from_secs(2);
/// Default grace period between SIGTERM and SIGKILL of a replica.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Default database of the calculation log.
pub const DEFAULT_INFLUX_DB: &str = "calc";

/// One trial: what runs, the load on it, what happens during the load, and
/// what must be found afterwards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A name for the reports. Default: the file name.
    #[serde(default)]
    pub name: String,
    /// The service under trial.
    pub service: Service,
    /// The load.
    #[serde(default)]
    pub load: Load,
    /// Events, in any order; each at an offset from the start of the load.
    #[serde(default, rename = "event")]
    pub events: Vec<Event>,
    /// Where acknowledged operations are looked for afterwards.
    #[serde(default)]
    pub audit: Audit,
}

/// The service under trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The built-in demo service with this profile (`v1`..`v9`).
    #[serde(default)]
    pub demo: Option<String>,
    /// Or a command of yours; it gets `PORT` (and `VERSION`).
    #[serde(default)]
    pub command: Vec<String>,
    /// Extra environment of the command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Version label of the first release (`x-version` of the demo).
    #[serde(default = "default_version")]
    pub version: String,
    /// Replica count. Default [`DEFAULT_REPLICAS`].
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// How replicas are retired: see [`Strategy`]. Default `dropless`.
    #[serde(default)]
    pub strategy: Strategy,
    /// Readiness probe path. Default `/healthz`; for the demo's v1 (which
    /// has none) the probe is a TCP connect, or nothing under `kubernetes`.
    #[serde(default)]
    pub health_path: Option<String>,
    /// Kubernetes emulation: how long routing keeps sending to a replica
    /// after its SIGTERM. Default [`DEFAULT_ENDPOINT_LAG`].
    #[serde(default, with = "optional_duration")]
    pub endpoint_lag: Option<Duration>,
    /// Delay before SIGTERM. Default 0, or [`DEFAULT_K8S_PRE_STOP`] under
    /// `kubernetes-prestop`.
    #[serde(default, with = "optional_duration")]
    pub pre_stop: Option<Duration>,
    /// Time between SIGTERM and SIGKILL. Default [`DEFAULT_GRACE`].
    #[serde(default, with = "optional_duration")]
    pub grace: Option<Duration>,
    /// Demo only: how long `/sum` works. Default [`DEFAULT_WORK_MS`].
    #[serde(default = "default_work_ms")]
    pub work_ms: u64,
    /// Demo only: how long a replica takes to boot.
    #[serde(default, with = "optional_duration")]
    pub startup_delay: Option<Duration>,
    /// Demo only: more flags for the demo service, e.g.
    /// `["--log-delay", "1s"]` (see `dropless demo-service --help`).
    #[serde(default)]
    pub demo_args: Vec<String>,
    /// Session affinity of the service (`"path:/game/{id}"`,
    /// `"cookie:NAME"`, `"header:NAME"`), which also gives its replicas a
    /// stash (`DROPLESS_STASH`): what `[load] sessions` needs to survive a
    /// deploy, with `demo_args = ["--handoff"]`. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
}

impl Service {
    /// The demo's profile; `None` for a command (or a profile that
    /// [`Scenario::validate`] refuses).
    pub fn profile(&self) -> Option<Profile> {
        self.demo.as_deref().and_then(|p| p.parse().ok())
    }

    /// Whether the service has no readiness endpoint: `health_path = ""`,
    /// or no `health_path` and a demo profile without health endpoints
    /// (v1).
    pub fn without_readiness(&self) -> bool {
        match self.health_path.as_deref() {
            Some(path) => path.is_empty(),
            None => self.profile().is_some_and(|p| !p.health_endpoints()),
        }
    }
}

/// How the runtime retires replicas during the trial.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// dropless: stop routing, drain, then SIGTERM; safe retries.
    #[default]
    Dropless,
    /// Kubernetes emulation without a pre-stop delay: SIGTERM at once while
    /// routing lags by the endpoint lag; no retries.
    Kubernetes,
    /// Kubernetes emulation with a pre-stop delay longer than the lag.
    KubernetesPrestop,
}

impl Strategy {
    /// Every strategy, in the matrix's order.
    pub const ALL: [Strategy; 3] = [
        Strategy::Kubernetes,
        Strategy::KubernetesPrestop,
        Strategy::Dropless,
    ];

    /// The name used in files and tables.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Dropless => "dropless",
            Strategy::Kubernetes => "kubernetes",
            Strategy::KubernetesPrestop => "kubernetes-prestop",
        }
    }

    /// Whether this is the Kubernetes emulation.
    pub fn is_kubernetes(self) -> bool {
        self != Strategy::Dropless
    }
}

/// How clients talk to the service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientMode {
    /// HTTP/1.1 with a keep-alive pool.
    #[default]
    Keepalive,
    /// A new connection for every request.
    NoKeepalive,
    /// HTTP/2 (h2c), streams multiplexed.
    H2,
}

/// The load of a trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// Path and query requested. Default [`DEFAULT_PATH`].
    #[serde(default = "default_path")]
    pub path: String,
    /// Requests per second. Default [`DEFAULT_RATE`].
    #[serde(default = "default_rate")]
    pub rate: f64,
    /// How long. Default [`DEFAULT_DURATION`].
    #[serde(default = "default_duration", with = "duration")]
    pub duration: Duration,
    /// Client mode. Default keep-alive.
    #[serde(default)]
    pub client: ClientMode,
    /// Sessions mode: this many stateful sessions play moves
    /// (`POST {path}/game/{id}/move`, `path` a prefix, `/` when left at its
    /// default) instead of requesting `path`; the verdict fails on any
    /// reset, lost update, duplicate or gap. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<usize>,
    /// With `sessions`: each session also follows its WebSocket stream.
    /// Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub websocket: bool,
    /// How late a request may leave to go with the others of its window
    /// (`"1ms"`; `"0s"` sends each at its own instant), as `dropless load
    /// --batch`. Default [`dropless_load::DEFAULT_BATCH`], at most
    /// [`dropless_load::MAX_BATCH`].
    #[serde(
        default,
        with = "optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub batch: Option<Duration>,
    /// Most connections being opened at once, as `dropless load
    /// --max-connecting`. Default [`dropless_load::DEFAULT_MAX_CONNECTING`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connecting: Option<usize>,
}

impl Load {
    /// The path the load requests: `path`, or with sessions the prefix of
    /// the sessions' paths (`/` when `path` was left at its default).
    pub fn url_path(&self) -> &str {
        match self.sessions {
            Some(_) if self.path == DEFAULT_PATH => "/",
            _ => &self.path,
        }
    }
}

impl Default for Load {
    fn default() -> Self {
        Self {
            path: default_path(),
            rate: DEFAULT_RATE,
            duration: DEFAULT_DURATION,
            client: ClientMode::default(),
            sessions: None,
            websocket: false,
            batch: None,
            max_connecting: None,
        }
    }
}

/// One scripted event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawEvent", into = "RawEvent")]
pub struct Event {
    /// Offset from the start of the load (`"10s"`).
    pub at: Duration,
    /// What happens.
    pub action: Action,
    /// How it must end for the trial to pass. Default
    /// [`Expect::Completed`].
    pub expect: Expect,
}

/// How an event must end for the trial to pass (`expect = "aborted"` in
/// the file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// The rollout (or command) completes.
    #[default]
    Completed,
    /// The rollout is aborted and rolled back: a scenario that proves a
    /// broken version is refused without a failed request.
    Aborted,
}

impl Expect {
    /// The value as written in a scenario file.
    pub fn name(self) -> &'static str {
        match self {
            Expect::Completed => "completed",
            Expect::Aborted => "aborted",
        }
    }
}

/// What an event does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Replace every replica with a fresh one of the same version.
    Restart,
    /// Roll out a new version.
    Deploy {
        /// The new version label.
        version: String,
        /// Demo only: the new version's profile. Default: unchanged.
        profile: Option<String>,
        /// Command only: the new version's command. Default: unchanged.
        command: Vec<String>,
        /// Strategy of this rollout: `rolling` (default) or `blue-green`.
        rollout: Option<String>,
    },
    /// Change the replica count.
    Scale {
        /// The new count.
        replicas: usize,
    },
    /// `dropless upgrade`: the runtime replaces its own binary (the same
    /// one, started again), adopting the replicas.
    Upgrade,
}

/// An event as written in the file: one flat table, so that a misspelt
/// field is an error (serde's `flatten` would let it pass).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    #[serde(with = "duration")]
    at: Duration,
    action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    profile: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rollout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replicas: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expect: Option<String>,
}

impl TryFrom<RawEvent> for Event {
    type Error = String;

    fn try_from(raw: RawEvent) -> Result<Self, Self::Error> {
        let stray = |allowed: &[&str]| -> Result<(), String> {
            let given = [
                ("version", raw.version.is_some()),
                ("profile", raw.profile.is_some()),
                ("command", !raw.command.is_empty()),
                ("rollout", raw.rollout.is_some()),
                ("replicas", raw.replicas.is_some()),
            ];
            match given
                .iter()
                .find(|(name, set)| *set && !allowed.contains(name))
            {
                Some((name, _)) => Err(format!(
                    "`{name}` does not apply to action {:?}",
                    raw.action
                )),
                None => Ok(()),
            }
        };
        let action = match raw.action.as_str() {
            "restart" => {
                stray(&[])?;
                Action::Restart
            }
            "deploy" => {
                stray(&["version", "profile", "command", "rollout"])?;
                Action::Deploy {
                    version: raw
                        .version
                        .clone()
                        .ok_or("action \"deploy\" needs `version = \"v2\"`")?,
                    profile: raw.profile.clone(),
                    command: raw.command.clone(),
                    rollout: raw.rollout.clone(),
                }
            }
            "upgrade" => {
                stray(&[])?;
                Action::Upgrade
            }
            "scale" => {
                stray(&["replicas"])?;
                Action::Scale {
                    replicas: raw
                        .replicas
                        .ok_or("action \"scale\" needs `replicas = N`")?,
                }
            }
            other => {
                return Err(format!(
                    "unknown action {other:?}: expected \"restart\", \"deploy\", \"scale\" or \"upgrade\""
                ));
            }
        };
        let expect = match raw.expect.as_deref() {
            None | Some("completed") => Expect::Completed,
            Some("aborted") => Expect::Aborted,
            Some(other) => {
                return Err(format!(
                    "`expect = {other:?}`: expected \"completed\" (the default) or \"aborted\""
                ));
            }
        };
        Ok(Event {
            at: raw.at,
            action,
            expect,
        })
    }
}

impl From<Event> for RawEvent {
    fn from(event: Event) -> Self {
        let mut raw = RawEvent {
            at: event.at,
            expect: (event.expect != Expect::Completed).then(|| event.expect.name().to_owned()),
            ..RawEvent::default()
        };
        match event.action {
            Action::Restart => raw.action = "restart".into(),
            Action::Upgrade => raw.action = "upgrade".into(),
            Action::Deploy {
                version,
                profile,
                command,
                rollout,
            } => {
                raw.action = "deploy".into();
                raw.version = Some(version);
                raw.profile = profile;
                raw.command = command;
                raw.rollout = rollout;
            }
            Action::Scale { replicas } => {
                raw.action = "scale".into();
                raw.replicas = Some(replicas);
            }
        }
        raw
    }
}

impl Action {
    /// A short label for tables and charts.
    pub fn label(&self) -> String {
        match self {
            Action::Restart => "restart".into(),
            Action::Upgrade => "upgrade".into(),
            Action::Deploy { version, .. } => format!("deploy {version}"),
            Action::Scale { replicas } => format!("scale {replicas}"),
        }
    }
}

/// Where acknowledged operations are looked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    /// `auto` (default): the demo's calculation log when its profile has
    /// one, in a private InfluxDB when `influxd` is installed, else a log
    /// file; `influx`; `log-file`; `none`.
    #[serde(default)]
    pub sink: AuditSink,
    /// An InfluxDB of yours (else a private one is started).
    #[serde(default)]
    pub influx_url: Option<String>,
    /// Its database. Default [`DEFAULT_INFLUX_DB`].
    #[serde(default)]
    pub influx_db: Option<String>,
    /// A JSON-lines calculation log of yours (else one in the output
    /// directory).
    #[serde(default)]
    pub log_file: Option<PathBuf>,
}

/// Which audit sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditSink {
    /// Chosen from the service and what is installed.
    #[default]
    Auto,
    /// InfluxDB.
    Influx,
    /// A JSON-lines file.
    LogFile,
    /// No audit.
    None,
}

/// A scenario that cannot run: the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// TOML syntax, an unknown field or a wrong type.
    #[error("scenario {path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said (it names the field and line).
        reason: String,
    },
    /// A value that parses but cannot run.
    #[error("scenario field `{field}`: {fix}")]
    Invalid {
        /// The field, as written in the file (`event[2].at`).
        field: String,
        /// What is wrong and what to write instead.
        fix: String,
    },
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &std::path::Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut scenario = Self::parse(&text).map_err(|e| match e {
            ScenarioError::Parse { reason, .. } => ScenarioError::Parse {
                path: path.display().to_string(),
                reason,
            },
            other => other,
        })?;
        if scenario.name.is_empty() {
            scenario.name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        Ok(scenario)
    }

    /// Parses and validates scenario text.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: "<text>".into(),
            reason: e.message().to_owned() + &span_hint(text, e.span()),
        })?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Checks every value; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let invalid = |field: &str, fix: String| {
            Err(ScenarioError::Invalid {
                field: field.to_owned(),
                fix,
            })
        };
        let service = &self.service;
        match (&service.demo, service.command.is_empty()) {
            (Some(_), false) => {
                return invalid(
                    "service",
                    "set either `demo = \"v9\"` or `command = [...]`, not both".into(),
                );
            }
            (None, true) => {
                return invalid(
                    "service",
                    "set `demo = \"v9\"` (the built-in demo) or `command = [\"prog\", \"arg\"]`"
                        .into(),
                );
            }
            (Some(profile), true) => check_profile("service.demo", profile)?,
            (None, false) => {}
        }
        if !service.demo_args.is_empty() && service.demo.is_none() {
            return invalid(
                "service.demo_args",
                "only the demo service takes demo_args; put your flags in `command`".into(),
            );
        }
        if service.replicas == 0 {
            return invalid("service.replicas", "expected at least 1".into());
        }
        if let Some(path) = &service.health_path
            && !path.is_empty()
            && !path.starts_with('/')
        {
            return invalid(
                "service.health_path",
                format!("{path:?} must start with '/' (or be \"\" for a TCP probe)"),
            );
        }
        if let Some(key) = &service.affinity
            && let Err(why) = dropless_runtime::proxy::affinity::KeySpec::parse(key)
        {
            return invalid("service.affinity", why);
        }
        if !self.load.path.starts_with('/') {
            return invalid(
                "load.path",
                format!(
                    "{:?} must start with '/', e.g. \"/sum?a=1&b=2\"",
                    self.load.path
                ),
            );
        }
        if !(self.load.rate.is_finite() && self.load.rate > 0.0) {
            return invalid(
                "load.rate",
                format!(
                    "{} must be a positive number of requests per second",
                    self.load.rate
                ),
            );
        }
        if let Some(batch) = self.load.batch.filter(|b| *b > dropless_load::MAX_BATCH) {
            return invalid(
                "load.batch",
                format!(
                    "{batch:?} is more than {:?}; the default is \"1ms\", \"0s\" sends every request at its own instant",
                    dropless_load::MAX_BATCH
                ),
            );
        }
        if self.load.max_connecting == Some(0) {
            return invalid("load.max_connecting", "must be at least 1, e.g. 256".into());
        }
        if self.load.sessions == Some(0) {
            return invalid("load.sessions", "must be at least 1, e.g. 200".into());
        }
        if self.load.websocket && self.load.sessions.is_none() {
            return invalid(
                "load.websocket",
                "needs load.sessions, e.g. sessions = 200".into(),
            );
        }
        if self.load.sessions.is_some() && self.load.client == ClientMode::H2 {
            return invalid(
                "load.sessions",
                "sessions speak HTTP/1.1: use client = \"keepalive\"".into(),
            );
        }
        if self.load.duration.is_zero() {
            return invalid(
                "load.duration",
                "must be longer than 0s, e.g. \"30s\"".into(),
            );
        }
        for (i, event) in self.events.iter().enumerate() {
            let field = |name: &str| format!("event[{i}].{name}");
            if event.at >= self.load.duration {
                return invalid(
                    &field("at"),
                    format!(
                        "{} is not before the end of the load ({}): move it earlier or make load.duration longer",
                        humantime::format_duration(event.at),
                        humantime::format_duration(self.load.duration)
                    ),
                );
            }
            match &event.action {
                Action::Scale { replicas: 0 } => {
                    return invalid(&field("replicas"), "expected at least 1".into());
                }
                Action::Deploy {
                    profile,
                    command,
                    rollout,
                    version,
                } => {
                    if version.is_empty() {
                        return invalid(
                            &field("version"),
                            "expected a version label, e.g. \"v2\"".into(),
                        );
                    }
                    if let Some(profile) = profile {
                        if service.demo.is_none() {
                            return invalid(
                                &field("profile"),
                                "only the demo service has profiles; use `command`".into(),
                            );
                        }
                        check_profile(&field("profile"), profile)?;
                    }
                    if !command.is_empty() && service.demo.is_some() {
                        return invalid(
                            &field("command"),
                            "the demo service takes `profile`, not `command`".into(),
                        );
                    }
                    if let Some(rollout) = rollout
                        && rollout != "rolling"
                        && rollout != "blue-green"
                    {
                        return invalid(
                            &field("rollout"),
                            format!("{rollout:?}: expected \"rolling\" or \"blue-green\""),
                        );
                    }
                }
                _ => {}
            }
        }
        if self.audit.sink == AuditSink::Influx
            && let Some(url) = &self.audit.influx_url
            && !url.starts_with("http://")
        {
            return invalid(
                "audit.influx_url",
                format!("{url:?}: expected http://HOST:PORT"),
            );
        }
        Ok(())
    }

    /// The events sorted by their offset, each with its position in the
    /// file (`event[N]`).
    pub fn timeline(&self) -> Vec<(usize, Event)> {
        let mut events: Vec<(usize, Event)> = self.events.iter().cloned().enumerate().collect();
        events.sort_by_key(|(_, event)| event.at);
        events
    }
}

fn check_profile(field: &str, profile: &str) -> Result<(), ScenarioError> {
    profile
        .parse::<Profile>()
        .map(drop)
        .map_err(|fix| ScenarioError::Invalid {
            field: field.to_owned(),
            fix,
        })
}

/// " (line N)" for a parse error's position.
fn span_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    span.map(|span| {
        let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
        format!(" (line {line})")
    })
    .unwrap_or_default()
}

fn default_version() -> String {
    "v1".into()
}
fn default_replicas() -> usize {
    DEFAULT_REPLICAS
}
fn default_work_ms() -> u64 {
    DEFAULT_WORK_MS
}
fn default_path() -> String {
    DEFAULT_PATH.into()
}
fn default_rate() -> f64 {
    DEFAULT_RATE
}
fn default_duration() -> Duration {
    DEFAULT_DURATION
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        name = "rolling restart"
        [service]
        demo = "v9"
        replicas = 3
        [load]
        rate = 300
        duration = "30s"
        client = "h2"
        [[event]]
        at = "10s"
        action = "restart"
        [[event]]
        at = "15s"
        action = "deploy"
        version = "v2"
        [[event]]
        at = "20s"
        action = "scale"
        replicas = 5
    "#;

    #[test]
    fn parses_a_full_scenario() {
        let scenario = Scenario::parse(GOOD).unwrap();
        assert_eq!(scenario.service.demo.as_deref(), Some("v9"));
        assert_eq!(scenario.load.client, ClientMode::H2);
        assert_eq!(scenario.load.duration, Duration::from_secs(30));
        assert_eq!(scenario.events.len(), 3);
        assert_eq!(scenario.events[2].action, Action::Scale { replicas: 5 });
        assert_eq!(scenario.events[1].action.label(), "deploy v2");
    }

    fn error(text: &str) -> String {
        Scenario::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn an_unknown_action_names_the_choices() {
        let text = GOOD.replace("action = \"restart\"", "action = \"reboot\"");
        let message = error(&text);
        assert!(
            message.contains("reboot") && message.contains("restart"),
            "{message}"
        );
        assert!(message.contains("line"), "{message}");
    }

    #[test]
    fn an_event_after_the_end_is_refused() {
        let text = GOOD.replace("at = \"20s\"", "at = \"45s\"");
        let message = error(&text);
        assert!(
            message.contains("event[2].at") && message.contains("45s"),
            "{message}"
        );
    }

    #[test]
    fn a_bad_duration_says_how_to_write_one() {
        let text = GOOD.replace("duration = \"30s\"", "duration = \"thirty\"");
        let message = error(&text);
        assert!(
            message.contains("thirty") && message.contains("\"10s\""),
            "{message}"
        );
    }

    #[test]
    fn other_mistakes_name_the_field() {
        for (from, to, field) in [
            ("demo = \"v9\"", "demo = \"v10\"", "service.demo"),
            ("replicas = 3", "replicas = 0", "service.replicas"),
            ("rate = 300", "rate = -1", "load.rate"),
            ("rate = 300", "rate = 300\nbatch = \"101ms\"", "load.batch"),
            (
                "rate = 300",
                "rate = 300\nmax_connecting = 0",
                "load.max_connecting",
            ),
            ("replicas = 5", "replicas = 0", "event[2].replicas"),
            ("demo = \"v9\"", "", "service"),
        ] {
            let message = error(&GOOD.replace(from, to));
            assert!(message.contains(field), "{from} → {to}: {message}");
        }
        let message = error(&GOOD.replace("replicas = 3", "replicas = 3\ncolour = \"red\""));
        assert!(message.contains("colour"), "{message}");
        let message = error(&GOOD.replace("version = \"v2\"", "version = \"v2\"\nflavour = 1"));
        assert!(message.contains("flavour"), "{message}");
        let message =
            error(&GOOD.replace("action = \"restart\"", "action = \"restart\"\nflavour = 1"));
        assert!(message.contains("flavour"), "{message}");
    }

    #[test]
    fn expect_is_completed_by_default_aborted_on_request_and_checked() {
        let scenario = Scenario::parse(
            &GOOD.replace("version = \"v2\"", "version = \"v2\"\nexpect = \"aborted\""),
        )
        .unwrap();
        let expects: Vec<Expect> = scenario.events.iter().map(|e| e.expect).collect();
        assert_eq!(
            expects,
            [Expect::Completed, Expect::Aborted, Expect::Completed]
        );
        let text = toml::to_string(&scenario).unwrap();
        assert_eq!(Scenario::parse(&text).unwrap(), scenario, "{text}");
        let message = error(&GOOD.replace(
            "version = \"v2\"",
            "version = \"v2\"\nexpect = \"rolled-back\"",
        ));
        assert!(
            message.contains("expect")
                && message.contains("rolled-back")
                && message.contains("\"aborted\""),
            "{message}"
        );
    }
}
