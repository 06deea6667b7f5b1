//! Rollouts under open-model load: zero failed requests, zero dropped
//! iterations.

use std::time::Duration;

use dropless_runtime::config::{ServiceConfig, Strategy};
use dropless_runtime::rollout::{Plan, RolloutRequest};
use dropless_runtime::signal::Shutdown;

use crate::fixtures::load::{Client, Load};
use crate::fixtures::{self, Harness, Mode};

const RATE: u32 = 200;

/// A runtime serving `service`, ready, with load running through it.
struct UnderLoad {
    _dir: tempfile::TempDir,
    h: Harness,
    load: Load,
}

impl UnderLoad {
    async fn start(service: ServiceConfig, client: Client) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let replicas = service.replicas;
        let h = Harness::start(fixtures::config(dir.path(), vec![service])).await;
        h.wait_routable(replicas).await;
        let load = Load::start(
            &h.url("/sum?a=1&b=2"),
            RATE,
            Duration::from_secs(30),
            client,
        );
        load.wait_ok(50).await;
        Self { _dir: dir, h, load }
    }

    /// Lets the load run a little longer, then asserts zero failed requests
    /// and zero dropped iterations.
    async fn finish(self) -> fixtures::load::Report {
        let before = self.load.snapshot().ok;
        self.load.wait_ok(before + 20).await;
        let report = self.load.finish().await;
        report.assert_clean(before + 20);
        self.h.stop(Shutdown::Fast).await;
        report
    }
}

fn slow_backend(mode: Mode, label: &str) -> dropless_runtime::config::Version {
    fixtures::backend(mode, label).with_env("WORK_MS", "100")
}

async fn rolling_restarts_under_load(mode: Mode, client: Client) {
    let mut service = fixtures::service("web", slow_backend(mode, "v1"), 3);
    service.retire.grace = Duration::from_millis(500);
    let run = UnderLoad::start(service, client).await;
    let control = run.h.client();
    for _ in 0..3 {
        let report = control
            .rollout(
                None,
                RolloutRequest::Restart {
                    plan: Plan::default(),
                },
            )
            .await
            .expect("restart");
        assert_eq!(
            (report.started.len(), report.retired.len()),
            (3, 3),
            "{report:?}"
        );
    }
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_rolling_restarts_exit_on_term_keepalive() {
    rolling_restarts_under_load(Mode::ExitOnTerm, Client::KeepAlive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_rolling_restarts_ignore_term_no_keepalive() {
    rolling_restarts_under_load(Mode::IgnoreTerm, Client::NoKeepAlive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_rolling_restarts_exit_on_term_h2() {
    rolling_restarts_under_load(Mode::ExitOnTerm, Client::H2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_switches_version_and_blue_green_too() {
    let service = fixtures::service("web", slow_backend(Mode::ExitOnTerm, "v1"), 2);
    let run = UnderLoad::start(service, Client::KeepAlive).await;
    let control = run.h.client();
    let v2 = slow_backend(Mode::ExitOnTerm, "v2");
    control
        .rollout(
            None,
            RolloutRequest::Deploy {
                version: v2,
                plan: Plan::default(),
            },
        )
        .await
        .expect("deploy v2");
    assert_eq!(
        fixtures::get(&run.h.url("/")).await.1.as_deref(),
        Some("v2")
    );
    let v3 = slow_backend(Mode::ExitOnTerm, "v3");
    let plan = Plan {
        strategy: Some(Strategy::BlueGreen),
        ..Plan::default()
    };
    control
        .rollout(None, RolloutRequest::Deploy { version: v3, plan })
        .await
        .expect("blue-green v3");
    assert_eq!(
        fixtures::get(&run.h.url("/")).await.1.as_deref(),
        Some("v3")
    );
    let report = run.finish().await;
    assert_eq!(report.last_version.as_deref(), Some("v3"), "{report:?}");
    assert!(
        report.versions.contains_key("v1") && report.versions.contains_key("v2"),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_two_five_one_under_load() {
    let service = fixtures::service("web", slow_backend(Mode::ExitOnTerm, "v1"), 2);
    let run = UnderLoad::start(service, Client::KeepAlive).await;
    let control = run.h.client();
    let web = run.h.router.service(None).unwrap().clone();
    control
        .rollout(None, RolloutRequest::Scale { replicas: 5 })
        .await
        .expect("scale 5");
    assert_eq!(web.routable().len(), 5);
    control
        .rollout(None, RolloutRequest::Scale { replicas: 1 })
        .await
        .expect("scale 1");
    assert_eq!(web.routable().len(), 1);
    run.finish().await;
}

async fn failed_deploy_is_aborted(bad: Mode, expect: &str) {
    let mut service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 2);
    service.probe.ready_timeout = Duration::from_millis(800);
    service.retire.grace = Duration::from_millis(300);
    let run = UnderLoad::start(service, Client::KeepAlive).await;
    let request = RolloutRequest::Deploy {
        version: fixtures::backend(bad, "v2"),
        plan: Plan::default(),
    };
    let err = run
        .h
        .client()
        .rollout(None, request)
        .await
        .expect_err("aborted");
    let message = err.to_string();
    assert!(
        message.contains("aborted")
            && message.contains("web-3")
            && message.contains("GET /healthz"),
        "{message}"
    );
    assert!(message.contains(expect), "{message}");
    let web = run.h.router.service(None).unwrap();
    assert_eq!(
        web.desired().current.generation,
        1,
        "old release still desired"
    );
    assert_eq!(
        fixtures::get(&run.h.url("/")).await.1.as_deref(),
        Some("v1")
    );
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_of_a_crashing_version_is_aborted() {
    failed_deploy_is_aborted(Mode::Crash, "exited").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_of_a_never_ready_version_is_aborted() {
    failed_deploy_is_aborted(Mode::NeverReady, "not ready after").await;
}
