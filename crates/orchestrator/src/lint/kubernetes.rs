//! `dropless k8s lint`: the Deployments of a YAML stream, checked against
//! what a rolling update needs to drop nothing.

use std::time::Duration;

use saphyr::YamlOwned;

use super::{
    Finding, Lint, LintError, LintOptions, secs,
    yaml::{documents, get, integer, items, string, text},
};

/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Kubernetes' default `replicas`.
const DEFAULT_REPLICAS: i64 = 1;
/// Kubernetes' default probe `periodSeconds`.
const DEFAULT_PERIOD: i64 = 10;
/// Kubernetes' default probe `failureThreshold`.
const DEFAULT_FAILURES: i64 = 3;
/// Kubernetes' default `maxUnavailable`.
const DEFAULT_MAX_UNAVAILABLE: &str = "25%";
/// The probe handlers whose equality makes two probes the same check.
const HANDLERS: [&str; 4] = ["httpGet", "tcpSocket", "exec", "grpc"];

/// Lints every Deployment in `source` (other kinds are skipped).
pub fn kubernetes(source: &str, options: &LintOptions) -> Result<Lint, LintError> {
    let mut lint = Lint::default();
    for doc in documents(source)? {
        if string(&doc, &["kind"]) != Some("Deployment") {
            continue;
        }
        lint.checked += 1;
        let name = string(&doc, &["metadata", "name"]).unwrap_or("(unnamed)");
        Deployment {
            doc: &doc,
            object: format!("Deployment/{name}"),
            options,
            findings: &mut lint.findings,
        }
        .check();
    }
    Ok(lint)
}

/// One Deployment being checked.
struct Deployment<'a> {
    doc: &'a YamlOwned,
    object: String,
    options: &'a LintOptions,
    findings: &'a mut Vec<Finding>,
}

impl Deployment<'_> {
    fn check(mut self) {
        let replicas = integer(self.doc, &["spec", "replicas"]).unwrap_or(DEFAULT_REPLICAS);
        if replicas == 1 {
            self.find(
                "spec.replicas",
                "a single replica: every rollout, eviction or node drain leaves no pod to serve"
                    .into(),
                "spec.replicas: 2 or more".into(),
            );
        }
        self.check_strategy(replicas);
        let pod = ["spec", "template", "spec"];
        let mut longest_pre_stop = Duration::ZERO;
        for (i, container) in items(self.doc, &[pod[0], pod[1], pod[2], "containers"])
            .iter()
            .enumerate()
        {
            let at = format!("spec.template.spec.containers[{i}]");
            longest_pre_stop = longest_pre_stop.max(self.check_container(container, &at));
        }
        let grace = integer(
            self.doc,
            &[pod[0], pod[1], pod[2], "terminationGracePeriodSeconds"],
        )
        .map_or(DEFAULT_GRACE, |s| {
            Duration::from_secs(s.max(0).unsigned_abs())
        });
        let needed = longest_pre_stop + self.options.drain;
        if grace <= needed {
            self.find(
                "spec.template.spec.terminationGracePeriodSeconds",
                format!(
                    "{} is not longer than the preStop ({}) plus the app's drain ({}, --drain): SIGKILL cuts the drain",
                    secs(grace),
                    secs(longest_pre_stop),
                    secs(self.options.drain)
                ),
                format!("terminationGracePeriodSeconds: {}", needed.as_secs() + 5),
            );
        }
    }

    /// `Recreate`, or a `maxUnavailable` as large as the replica count.
    fn check_strategy(&mut self, replicas: i64) {
        if string(self.doc, &["spec", "strategy", "type"]) == Some("Recreate") {
            self.find(
                "spec.strategy.type",
                "Recreate stops every pod before the new ones start: zero ready replicas".into(),
                "type: RollingUpdate with rollingUpdate.maxUnavailable: 0 and maxSurge: 1".into(),
            );
            return;
        }
        let path = ["spec", "strategy", "rollingUpdate", "maxUnavailable"];
        let written = get(self.doc, &path).and_then(text);
        let value = written.as_deref().unwrap_or(DEFAULT_MAX_UNAVAILABLE);
        // Kubernetes rounds a percentage of maxUnavailable down.
        let unavailable = match value.strip_suffix('%') {
            Some(percent) => percent
                .trim()
                .parse::<i64>()
                .ok()
                .map(|p| replicas * p / 100),
            None => value.trim().parse::<i64>().ok(),
        };
        if unavailable.is_some_and(|u| replicas > 0 && u >= replicas) {
            self.find(
                "spec.strategy.rollingUpdate.maxUnavailable",
                format!("{value} of {replicas} replicas lets the rollout stop them all: zero ready replicas"),
                "maxUnavailable: 0 with maxSurge: 1".into(),
            );
        }
    }

    /// The container's probes and `preStop`; returns the `preStop` sleep.
    fn check_container(&mut self, container: &YamlOwned, at: &str) -> Duration {
        let readiness = get(container, &["readinessProbe"]);
        if readiness.is_none() {
            self.find(
                &format!("{at}.readinessProbe"),
                "no readiness probe: a new pod gets traffic before it listens, a stopping one until it is gone".into(),
                "readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1, failureThreshold: 1}".into(),
            );
        }
        if let (Some(readiness), Some(liveness)) = (readiness, get(container, &["livenessProbe"])) {
            self.check_liveness(readiness, liveness, at);
        }
        let pre_stop = pre_stop_sleep(container);
        if pre_stop.is_some_and(|sleep| sleep < self.options.propagation) {
            let sleep = pre_stop.unwrap_or_default();
            let problem = if get(container, &["lifecycle", "preStop"]).is_none() {
                "no preStop: SIGTERM arrives while proxies still route to the pod".to_owned()
            } else {
                format!(
                    "a preStop sleep of {} is shorter than the endpoint propagation it must cover ({}, --propagation)",
                    secs(sleep),
                    secs(self.options.propagation)
                )
            };
            self.find(
                &format!("{at}.lifecycle.preStop"),
                problem,
                format!(
                    "preStop: {{sleep: {{seconds: {}}}}}",
                    self.options.propagation.as_secs().max(1)
                ),
            );
        }
        pre_stop.unwrap_or_default()
    }

    /// A liveness probe that is the readiness check and gives up within the
    /// drain restarts a pod that is only busy or shutting down.
    fn check_liveness(&mut self, readiness: &YamlOwned, liveness: &YamlOwned, at: &str) {
        let same = HANDLERS
            .iter()
            .any(|h| get(readiness, &[h]).is_some() && get(readiness, &[h]) == get(liveness, &[h]));
        let failures = integer(liveness, &["failureThreshold"]).unwrap_or(DEFAULT_FAILURES);
        let period = integer(liveness, &["periodSeconds"]).unwrap_or(DEFAULT_PERIOD);
        let gives_up = Duration::from_secs((failures * period).max(0).unsigned_abs());
        if same && gives_up < self.options.drain {
            self.find(
                &format!("{at}.livenessProbe"),
                format!(
                    "the same check as the readiness probe, failing after {}: a pod that says not-ready while it drains or is busy gets restarted",
                    secs(gives_up)
                ),
                "probe a separate liveness path (e.g. /livez) with failureThreshold: 3 and periodSeconds: 10".into(),
            );
        }
    }

    fn find(&mut self, field: &str, problem: String, fix: String) {
        self.findings.push(Finding {
            path: format!("{} {field}", self.object),
            problem,
            fix,
        });
    }
}

/// The `preStop` hook's sleep: `Some(0)` without a hook, `None` for a hook
/// whose length cannot be known (an HTTP call, a script).
fn pre_stop_sleep(container: &YamlOwned) -> Option<Duration> {
    let Some(hook) = get(container, &["lifecycle", "preStop"]) else {
        return Some(Duration::ZERO);
    };
    if let Some(seconds) = integer(hook, &["sleep", "seconds"]) {
        return Some(Duration::from_secs(seconds.max(0).unsigned_abs()));
    }
    // exec: ["sleep", "5"] or ["sh", "-c", "sleep 5"].
    let command: Vec<String> = items(hook, &["exec", "command"])
        .iter()
        .filter_map(text)
        .collect();
    let words: Vec<&str> = command
        .iter()
        .flat_map(|part| part.split_whitespace())
        .collect();
    let at = words.iter().rposition(|w| *w == "sleep")?;
    let seconds: f64 = words
        .get(at + 1)?
        .trim_end_matches(['s', ';'])
        .parse()
        .ok()?;
    Some(Duration::from_secs_f64(seconds.max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(yaml: &str) -> YamlOwned {
        documents(yaml).unwrap().remove(0)
    }

    #[test]
    fn reads_every_spelling_of_a_pre_stop_sleep() {
        let sleep = |yaml| pre_stop_sleep(&container(yaml));
        assert_eq!(sleep("name: a"), Some(Duration::ZERO));
        assert_eq!(
            sleep("lifecycle: {preStop: {sleep: {seconds: 7}}}"),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            sleep("lifecycle: {preStop: {exec: {command: [sleep, \"3\"]}}}"),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            sleep("lifecycle: {preStop: {exec: {command: [sh, -c, \"sleep 2; kill -USR1 1\"]}}}"),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            sleep("lifecycle: {preStop: {httpGet: {path: /drain, port: 80}}}"),
            None
        );
    }
}
