//! `dropless k8s lint`, `dropless swarm lint` and `dropless swarm stack`:
//! the generated files lint clean, each risky setting is reported with its
//! field path and fix, and the exit code says which case it was.

use std::path::{Path, PathBuf};

use crate::fixtures::{run, stderr};

/// Writes `text` to `dir/name` and returns its path as a string.
fn file(dir: &Path, name: &str, text: &str) -> String {
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn stdout(args: &[&str]) -> (Option<i32>, String, String) {
    let output = run(args);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr(&output),
    )
}

/// Each of `expected` (a field path and a word of its fix) is on its own
/// line of `out`, and there are exactly that many lines.
fn assert_findings(out: &str, expected: &[(&str, &str)]) {
    let lines: Vec<&str> = out.lines().collect();
    for (path, fix) in expected {
        assert!(
            lines.iter().any(|l| l.contains(&format!("{path}: "))
                && l.contains("fix: ")
                && l.contains(fix)),
            "no finding at {path} with fix {fix:?} in:\n{out}"
        );
    }
    assert_eq!(lines.len(), expected.len(), "findings:\n{out}");
}

#[test]
fn generated_manifest_and_stack_lint_clean() {
    let dir = tempfile::tempdir().unwrap();
    let (code, manifest, _) = stdout(&["k8s", "manifest", "--name", "calc", "--image", "calc:1"]);
    assert_eq!(code, Some(0));
    let manifest = file(dir.path(), "k8s.yaml", &manifest);
    let (code, stack, _) = stdout(&[
        "swarm",
        "stack",
        "--name",
        "calc",
        "--image",
        "calc:1",
        "--replicas",
        "2",
    ]);
    assert_eq!(code, Some(0));
    assert!(stack.contains("dns:tasks.calc:8080"), "{stack}");
    let stack = file(dir.path(), "stack.yaml", &stack);

    let (code, out, err) = stdout(&["k8s", "lint", &manifest]);
    assert_eq!((code, out.as_str()), (Some(0), ""), "{err}");
    let (code, out, err) = stdout(&["swarm", "lint", &stack]);
    assert_eq!((code, out.as_str()), (Some(0), ""), "{err}");

    // The assumptions are flags: a 10 s propagation outlasts the 5 s preStop.
    let (code, out, _) = stdout(&["k8s", "lint", "--propagation", "10s", &manifest]);
    assert_eq!(code, Some(3));
    assert_findings(&out, &[("containers[0].lifecycle.preStop", "seconds: 10")]);
    assert!(
        out.contains("shorter than the endpoint propagation"),
        "{out}"
    );
}

const RISKY_DEPLOYMENT: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    spec:
      containers:
        - name: web
          image: web:1
          livenessProbe: {httpGet: {path: /healthz, port: 80}}
        - name: sidecar
          image: side:1
          readinessProbe: {httpGet: {path: /healthz, port: 80}, periodSeconds: 1}
          livenessProbe: {httpGet: {path: /healthz, port: 80}, periodSeconds: 1, failureThreshold: 2}
          lifecycle:
            preStop: {exec: {command: ["sh", "-c", "sleep 2"]}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: batch}
spec:
  replicas: 4
  strategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: "100%"}}
  template:
    spec:
      terminationGracePeriodSeconds: 60
      containers:
        - name: batch
          image: batch:1
          readinessProbe: {tcpSocket: {port: 80}}
          lifecycle: {preStop: {sleep: {seconds: 5}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: once}
spec:
  replicas: 3
  strategy: {type: Recreate}
  template:
    spec:
      terminationGracePeriodSeconds: 45
      containers:
        - name: once
          image: once:1
          readinessProbe: {tcpSocket: {port: 80}}
          lifecycle: {preStop: {sleep: {seconds: 6}}}
"#;

#[test]
fn k8s_lint_reports_each_risky_setting_with_its_path_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(dir.path(), "risky.yaml", RISKY_DEPLOYMENT);
    let (code, out, err) = stdout(&["k8s", "lint", &path]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("8 finding(s) in 3 workload(s)"), "{err}");
    assert!(
        out.lines().all(|l| l.starts_with(&format!("{path}: "))),
        "{out}"
    );
    assert_findings(
        &out,
        &[
            ("Deployment/web spec.replicas", "2 or more"),
            (
                "Deployment/web spec.template.spec.containers[0].readinessProbe",
                "readinessProbe:",
            ),
            (
                "Deployment/web spec.template.spec.containers[0].lifecycle.preStop",
                "seconds: 5",
            ),
            (
                "Deployment/web spec.template.spec.containers[1].livenessProbe",
                "/livez",
            ),
            (
                "Deployment/web spec.template.spec.containers[1].lifecycle.preStop",
                "seconds: 5",
            ),
            (
                "Deployment/web spec.template.spec.terminationGracePeriodSeconds",
                "37",
            ),
            (
                "Deployment/batch spec.strategy.rollingUpdate.maxUnavailable",
                "maxUnavailable: 0",
            ),
            ("Deployment/once spec.strategy.type", "RollingUpdate"),
        ],
    );
}

const RISKY_STACK: &str = r#"
version: "3.8"
services:
  solo:
    image: solo:1
  herd:
    image: herd:1
    healthcheck: {test: ["CMD", "true"], interval: 1s}
    stop_grace_period: 1m
    deploy:
      replicas: 3
      update_config: {parallelism: 0}
  nocheck:
    image: nocheck:1
    healthcheck: {disable: true}
    stop_grace_period: 35s
    deploy: {replicas: 2, update_config: {order: start-first}}
  front:
    image: dropless
    healthcheck: {test: ["CMD", "dropless", "status"]}
    stop_grace_period: 1m30s
    deploy: {mode: global}
"#;

#[test]
fn swarm_lint_reports_each_risky_setting_with_its_path_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(dir.path(), "stack.yaml", RISKY_STACK);
    let (code, out, err) = stdout(&["swarm", "lint", &path]);
    assert_eq!(code, Some(3), "{err}");
    assert_findings(
        &out,
        &[
            ("services.solo.healthcheck", "start_period"),
            ("services.solo.stop_grace_period", "stop_grace_period: 40s"),
            ("services.solo.deploy.replicas", "2 or more"),
            ("services.solo.deploy.update_config.order", "start-first"),
            (
                "services.herd.deploy.update_config.parallelism",
                "parallelism: 1",
            ),
            ("services.nocheck.healthcheck", "healthcheck:"),
            ("services.nocheck.stop_grace_period", "40s"),
        ],
    );
    assert!(out.contains("(Docker's default)"), "{out}");
    assert!(out.contains("zero ready replicas"), "{out}");
}

#[test]
fn lint_exit_code_two_for_a_file_it_cannot_check() {
    let dir = tempfile::tempdir().unwrap();
    let broken = file(dir.path(), "broken.yaml", "spec: [unclosed\n");
    let service = file(
        dir.path(),
        "service.yaml",
        "kind: Service\nmetadata: {name: web}\n",
    );
    let missing = dir.path().join("missing.yaml");
    for (args, says) in [
        (vec!["k8s", "lint", &broken], "not valid YAML"),
        (vec!["swarm", "lint", &broken], "not valid YAML"),
        (
            vec!["k8s", "lint", missing.to_str().unwrap()],
            "cannot read it",
        ),
        (vec!["k8s", "lint", &service], "no file holds a Deployment"),
        (vec!["swarm", "lint", &service], "no file holds a stack"),
    ] {
        let (code, out, err) = stdout(&args);
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        assert!(
            err.contains(says) && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
    let (code, _, err) = stdout(&["swarm", "stack", "--name", "Calc", "--image", "calc:1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--name \"Calc\""), "{err}");
}
