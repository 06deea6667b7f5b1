//! `dropless swarm lint`: the services of a stack (compose) file, checked
//! against what a Swarm rolling update needs to drop nothing.

use std::time::Duration;

use saphyr::YamlOwned;

use super::{
    Finding, Lint, LintError, LintOptions, secs,
    yaml::{documents, duration, get, integer, items, string, text},
};

/// Docker's default `stop_grace_period`.
const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// Swarm's default `deploy.replicas`.
const DEFAULT_REPLICAS: i64 = 1;
/// Swarm's default `update_config.parallelism`.
const DEFAULT_PARALLELISM: i64 = 1;

/// Lints every service of the stack file `source`.
///
/// Swarm has no `preStop` hook: after a task leaves DNS, the app itself must
/// keep serving while the change propagates, so `stop_grace_period` must be
/// longer than the propagation plus the drain.
pub fn swarm(source: &str, options: &LintOptions) -> Result<Lint, LintError> {
    let mut lint = Lint::default();
    for doc in documents(source)? {
        let Some(services) = get(&doc, &["services"]).and_then(YamlOwned::as_mapping) else {
            continue;
        };
        for (name, service) in services {
            lint.checked += 1;
            let name = text(name).unwrap_or_default();
            check_service(
                &format!("services.{name}"),
                service,
                options,
                &mut lint.findings,
            );
        }
    }
    Ok(lint)
}

fn check_service(
    at: &str,
    service: &YamlOwned,
    options: &LintOptions,
    findings: &mut Vec<Finding>,
) {
    let mut find = |field: &str, problem: String, fix: String| {
        findings.push(Finding {
            path: format!("{at}.{field}"),
            problem,
            fix,
        })
    };
    if !has_healthcheck(service) {
        find(
            "healthcheck",
            "no health check (unless the image has a HEALTHCHECK): Swarm puts a new task in DNS as soon as its container starts, before it listens".into(),
            "healthcheck: {test: [CMD, wget, -q, -O, /dev/null, \"http://127.0.0.1:PORT/healthz\"], interval: 1s, retries: 3, start_period: 60s}".into(),
        );
    }
    let needed = options.propagation + options.drain;
    match duration(service, &["stop_grace_period"]) {
        Some(Err(written)) => find(
            "stop_grace_period",
            format!("{written:?} is not a duration"),
            format!(
                "stop_grace_period: {}",
                secs(needed + Duration::from_secs(5))
            ),
        ),
        grace => {
            let (grace, default) = match grace {
                Some(Ok(grace)) => (grace, ""),
                _ => (DEFAULT_STOP_GRACE, " (Docker's default)"),
            };
            if grace <= needed {
                find(
                    "stop_grace_period",
                    format!(
                        "{}{default} is not longer than the endpoint propagation ({}, --propagation) plus the app's drain ({}, --drain): SIGKILL cuts the drain",
                        secs(grace),
                        secs(options.propagation),
                        secs(options.drain)
                    ),
                    format!(
                        "stop_grace_period: {}",
                        secs(needed + Duration::from_secs(5))
                    ),
                );
            }
        }
    }
    if string(service, &["deploy", "mode"]) == Some("global") {
        // One task per node: the replica rules do not apply.
        return;
    }
    let replicas = integer(service, &["deploy", "replicas"]).unwrap_or(DEFAULT_REPLICAS);
    let stop_first =
        string(service, &["deploy", "update_config", "order"]).is_none_or(|o| o == "stop-first");
    if replicas == 1 {
        find(
            "deploy.replicas",
            "a single replica: every update, restart or node drain leaves no task to serve".into(),
            "deploy.replicas: 2 or more".into(),
        );
        if stop_first {
            find(
                "deploy.update_config.order",
                "stop-first (Swarm's default) with one replica: the only task stops before its replacement is ready".into(),
                "update_config: {order: start-first}".into(),
            );
        }
        return;
    }
    let parallelism = integer(service, &["deploy", "update_config", "parallelism"])
        .unwrap_or(DEFAULT_PARALLELISM);
    // 0 means every task at once.
    if stop_first && replicas > 1 && (parallelism == 0 || parallelism >= replicas) {
        find(
            "deploy.update_config.parallelism",
            format!(
                "{parallelism} with order stop-first and {replicas} replicas stops every task at once: zero ready replicas"
            ),
            "update_config: {parallelism: 1, order: start-first}".into(),
        );
    }
}

/// A `healthcheck` that is there and not disabled.
fn has_healthcheck(service: &YamlOwned) -> bool {
    let Some(check) = get(service, &["healthcheck"]) else {
        return false;
    };
    let disabled = get(check, &["disable"]).and_then(YamlOwned::as_bool) == Some(true);
    let test: Vec<String> = items(check, &["test"]).iter().filter_map(text).collect();
    !disabled && test.first().map(String::as_str) != Some("NONE")
}
