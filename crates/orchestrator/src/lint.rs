//! Linters for orchestrator files: the settings of a Kubernetes Deployment
//! or a Swarm stack that let a rolling update drop requests.
//!
//! Each rule returns a [`Finding`]: the field path, what is wrong and the
//! fix. A file that is not YAML is a [`LintError`]; a file with nothing to
//! check (no Deployment, no `services`) gives a [`Lint`] with `checked: 0`.

mod kubernetes;
mod swarm;
mod yaml;

use std::{fmt, time::Duration};

pub use kubernetes::kubernetes;
pub use swarm::swarm;

/// Default endpoint propagation a `preStop` sleep must cover: kube-proxy,
/// DNS caches and load balancers typically catch up within 1–3 s.
pub const DEFAULT_PROPAGATION: Duration = Duration::from_secs(5);
/// Default time the application drains after SIGTERM (dropless-lifecycle's
/// default grace).
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(30);

/// What the rules assume about the cluster and the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LintOptions {
    /// How long the removal of an endpoint takes to reach every proxy and
    /// load balancer; a `preStop` sleep must be at least this long. Default
    /// [`DEFAULT_PROPAGATION`].
    pub propagation: Duration,
    /// How long the application drains after SIGTERM; the grace period must
    /// be longer than the `preStop` plus this. Default [`DEFAULT_DRAIN`].
    pub drain: Duration,
}

impl Default for LintOptions {
    fn default() -> Self {
        Self {
            propagation: DEFAULT_PROPAGATION,
            drain: DEFAULT_DRAIN,
        }
    }
}

/// One setting that lets a rolling update drop requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Where: the object and the field path, e.g.
    /// `Deployment/calc spec.template.spec.containers[0].readinessProbe`.
    pub path: String,
    /// What is wrong, and what it does to a rollout.
    pub problem: String,
    /// What to write instead.
    pub fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; fix: {}", self.path, self.problem, self.fix)
    }
}

/// The result of linting one file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lint {
    /// Workloads checked (Deployments, or stack services).
    pub checked: usize,
    /// What the rules found, in file order.
    pub findings: Vec<Finding>,
}

/// A file the linter cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LintError {
    /// Not YAML.
    #[error("not valid YAML: {0}")]
    Yaml(String),
}

/// Seconds, as a user writes them in YAML and reads them in a finding.
fn secs(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}
